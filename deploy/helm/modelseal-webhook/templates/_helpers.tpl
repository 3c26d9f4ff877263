{{- define "modelseal-webhook.name" -}}{{ .Release.Name | trunc 52 | trimSuffix "-" }}{{- end -}}
{{- define "modelseal-webhook.labels" -}}
app.kubernetes.io/name: modelseal-webhook
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
{{- define "modelseal-webhook.secret" -}}{{ .Values.certificates.secretName | default (printf "%s-tls" (include "modelseal-webhook.name" .)) }}{{- end -}}
