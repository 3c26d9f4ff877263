"""The webhook's deployment: the Helm chart and the kustomize base, rendered by the real tools (issue 23).

The chart is rendered by Helm's own engine (helm-python-sdk: Helm v4's Go SDK
in a shared library, no helm binary), the base by `kubectl kustomize`. Every
rendered object validates with kubernetes-validate --strict; only
cert-manager's Certificate and Issuer have no schema there (CRDs) and are
checked here by hand. The two renders are the same objects, and they are
wired together: the webhook names the Service, the Service the pods' port,
the certificate the Secret the pods mount, the PodDisruptionBudget the pods.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import need
from modelseal.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "deploy" / "helm" / "modelseal-webhook"
BASE = REPO / "deploy" / "kustomize"
NAMESPACE = "modelseal-system"
RELEASE = "modelseal-webhook"
CRDS = {"Certificate", "Issuer"}  # cert-manager's: kubernetes-validate has no schema for them


def _helm() -> Any:
    try:
        import helm_python
    except ImportError as exc:
        need(f"helm-python-sdk is not installed ({exc}): pip install -r requirements-dev.txt")
    return helm_python


def helm_render(values: dict[str, Any] | None = None, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    helm = _helm()
    with helm.Chart.load(str(CHART)) as chart:
        rendered = chart.render(values or {}, name=RELEASE, namespace=namespace)
    return [d for text in rendered.values() for d in yaml.safe_load_all(text) if d]


def kustomize_render() -> list[dict[str, Any]]:
    need("" if shutil.which("kubectl") else "no kubectl (tools/host-packages.sh installs kubernetes-client)")
    r = subprocess.run(["kubectl", "kustomize", str(BASE)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def validate(objects: list[dict[str, Any]], directory: Path) -> None:
    """kubernetes-validate --strict; the objects it has no schema for must be exactly cert-manager's."""
    path = directory / "rendered.yaml"
    path.write_text(yaml.safe_dump_all(objects))
    exe = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent)) or "kubernetes-validate"
    r = subprocess.run([exe, "--strict", str(path)], capture_output=True, text=True)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    unknown = {line.split("kind ")[1].split()[0] for line in out.splitlines() if "Couldn't find schema" in line}
    assert unknown == CRDS & {o["kind"] for o in objects}, out
    passed = out.count("passed for resource")
    assert passed == len([o for o in objects if o["kind"] not in CRDS]), out


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    kinds = [o["kind"] for o in objects]
    assert len(kinds) == len(set(kinds)), kinds
    return {o["kind"]: o for o in objects}


def check_wiring(objects: list[dict[str, Any]], cert_manager: bool = True) -> None:
    o = by_kind(objects)
    assert not {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"} & set(o)  # no API access at all
    assert o["ServiceAccount"]["automountServiceAccountToken"] is False
    hook = o["MutatingWebhookConfiguration"]["webhooks"][0]
    assert hook["failurePolicy"] == "Fail" and hook["sideEffects"] == "None"
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["rules"] == [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                              "resources": ["pods"], "scope": "Namespaced"}]
    assert hook["namespaceSelector"]["matchLabels"] == {"modelseal.dev/injection": "enabled"}
    assert {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
            "values": [NAMESPACE]} in hook["namespaceSelector"]["matchExpressions"]
    assert "modelseal.dev/" in hook["matchConditions"][0]["expression"]
    service, deployment, pdb = o["Service"], o["Deployment"], o["PodDisruptionBudget"]
    ref = hook["clientConfig"]["service"]
    assert (ref["name"], ref["namespace"], ref["path"]) == (service["metadata"]["name"], NAMESPACE, "/mutate")
    assert service["metadata"]["namespace"] == deployment["metadata"]["namespace"] == NAMESPACE
    assert service["spec"]["ports"] == [{"name": "https", "port": ref["port"], "targetPort": "https"}]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items() and pdb["spec"]["minAvailable"] == 1
    assert deployment["spec"]["replicas"] == 2
    (c,) = pod["spec"]["containers"]
    assert c["ports"] == [{"name": "https", "containerPort": 8443}]
    args = build_parser().parse_args(["webhook", *c["args"]])
    assert args.listen.endswith(":8443") and args.tls_cert.startswith("/tls/")
    assert c["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}}
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["scheme"] == "HTTPS"
    secret = pod["spec"]["volumes"][0]["secret"]["secretName"]
    if cert_manager:
        cert = o["Certificate"]
        assert cert["spec"]["secretName"] == secret
        assert f"{ref['name']}.{NAMESPACE}.svc" in cert["spec"]["dnsNames"]
        assert cert["spec"]["issuerRef"] == {"name": o["Issuer"]["metadata"]["name"], "kind": "Issuer"}
        annotations = o["MutatingWebhookConfiguration"]["metadata"]["annotations"]
        assert annotations["cert-manager.io/inject-ca-from"] == f"{NAMESPACE}/{cert['metadata']['name']}"
    else:
        assert not CRDS & set(o) and hook["clientConfig"]["caBundle"]


def test_the_helm_chart_renders_validates_and_is_wired(shm: Path) -> None:
    objects = helm_render()
    validate(objects, shm)
    check_wiring(objects)


def test_the_helm_chart_lints_clean() -> None:
    result = _helm().lint(str(CHART))
    assert result["errors"] == [] and all(m["severity"] <= 1 for m in result["messages"]), result


def test_the_helm_chart_takes_a_provided_secret(shm: Path) -> None:
    objects = helm_render({"certificates": {"certManager": False, "secretName": "my-tls", "caBundle": "Q0E="}})
    validate(objects, shm)
    check_wiring(objects, cert_manager=False)
    assert by_kind(objects)["Deployment"]["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"] == "my-tls"
    with pytest.raises(Exception, match="certificates.caBundle is needed"):
        helm_render({"certificates": {"certManager": False}})


def test_the_helm_chart_passes_its_settings_to_the_webhook() -> None:
    objects = helm_render({"allowSources": "s3://models/", "stageImages": {"prefix": "registry.example.com/ms",
                                                                          "tag": "1.2.3"}, "replicas": 3})
    d = by_kind(objects)["Deployment"]
    args = build_parser().parse_args(["webhook", *d["spec"]["template"]["spec"]["containers"][0]["args"]])
    assert (args.allow_sources, args.image_prefix, args.image_tag) == ("s3://models/", "registry.example.com/ms",
                                                                      "1.2.3")
    assert d["spec"]["replicas"] == 3


def test_the_kustomize_base_renders_validates_and_is_wired(shm: Path) -> None:
    objects = kustomize_render()
    validate(objects, shm)
    check_wiring([o for o in objects if o["kind"] != "Namespace"])


def _comparable(o: dict[str, Any]) -> dict[str, Any]:
    if o["kind"] == "MutatingWebhookConfiguration":  # cluster-scoped: kustomize before v3 added a namespace
        o = {**o, "metadata": {k: v for k, v in o["metadata"].items() if k != "namespace"}}
    return o


def test_kustomize_and_helm_make_the_same_objects() -> None:
    kustomized = {o["kind"]: _comparable(o) for o in kustomize_render() if o["kind"] != "Namespace"}
    assert kustomized == {o["kind"]: o for o in helm_render()}
