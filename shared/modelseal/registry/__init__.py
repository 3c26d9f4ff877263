"""An OCI distribution client, as small as modelseal needs and no smaller.

Why not a registry SDK: the fetch images carry only `requests`, and what a
pod needs is four calls (a manifest, a blob with Range, a chunked upload, a
manifest PUT) plus the auth flow. Each concept is one module:

- `reference`: `oci://REGISTRY/REPO:TAG|@sha256:DIGEST` parsed and checked;
- `credentials`: the Docker config file (DOCKER_CONFIG, ~/.docker/config.json,
  a Kubernetes pull secret's `.dockerconfigjson`);
- `client`: requests to one registry with the auth flow (anonymous, basic,
  the bearer token flow), credentials only ever sent to their own origin;
- `manifest`: the sealed-model artifact (media types, building and reading
  manifests, choosing the layer that holds the `.seal`).
"""
