"""`modelseal webhook`: a real HTTPS server (the test CA), real AdmissionReview v1 requests (issue 23).

Each answer's JSON Patch, applied by an independent implementation (the
`jsonpatch` package), gives exactly what `modelseal inject` prints for the
same object (one function behind both), and validates with
kubernetes-validate --strict. Annotated objects that cannot be injected are
denied (fail closed); a malformed review is answered 400; the certificate
is re-read when its files change, without a restart.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import http.client
import json
import os
import shutil
import ssl
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
import yaml

from conftest import modelseal
from modelseal.inject.patch import diff
from support.injection import ANNOTATIONS, keyed_seal, pod_spec, serving, spec_of, validate_strict, workload
from support.models import make_model
from support.objects import ObjectServer
from support.pki import make_pki
from support.processes import LOCAL, die_with_parent, make_shm_dir, stop_process

MIB = 1 << 20
GROUPS = {"Pod": ("", "v1", "pods"), "Deployment": ("apps", "v1", "deployments"),
          "InferenceService": ("serving.kserve.io", "v1beta1", "inferenceservices")}


class Webhook:
    """`python -m modelseal webhook` as a child process; its log goes to a file on tmpfs."""

    def __init__(self, directory: Path, cert: str, key: str, ca: str, *extra: str) -> None:
        self.log = directory / f"webhook-{uuid.uuid4().hex[:8]}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSEAL_")}
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "modelseal", "webhook", "--tls-cert", cert, "--tls-key", key,
                 "--listen", f"{LOCAL}:0", "--ca", ca, "--timeout", "5", "--retries", "1", *extra],
                stdout=subprocess.DEVNULL, stderr=log, env=env, preexec_fn=die_with_parent)
        deadline = time.monotonic() + 30
        while (port := self._port()) is None:
            assert self.proc.poll() is None and time.monotonic() < deadline, self.log.read_text()[-2000:]
            time.sleep(0.05)
        self.port = port

    def _port(self) -> int | None:
        for line in self.log.read_text().splitlines():
            record = json.loads(line)
            if record.get("event") == "listening":
                return int(record["port"])
        return None

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.log.read_text().splitlines()]

    def connection(self, ca: str) -> http.client.HTTPSConnection:
        ctx = ssl.create_default_context(cafile=ca)
        return http.client.HTTPSConnection(LOCAL, self.port, context=ctx, timeout=30)

    def post(self, ca: str, body: bytes, path: str = "/mutate") -> tuple[int, dict[str, Any]]:
        conn = self.connection(ca)
        try:
            conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read() or b"{}")
        finally:
            conn.close()

    def get(self, ca: str, path: str) -> tuple[int, bytes]:
        conn = self.connection(ca)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def peer_certificate(self, ca: str) -> bytes:
        conn = self.connection(ca)
        try:
            conn.connect()
            return conn.sock.getpeercert(binary_form=True)
        finally:
            conn.close()

    def stop(self) -> None:
        stop_process(self.proc)


def review(obj: Any, uid: str | None = None) -> dict[str, Any]:
    kind = obj.get("kind", "Pod") if isinstance(obj, dict) else "Pod"
    group, version, resource = GROUPS.get(kind, ("", "v1", "pods"))
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": uid or str(uuid.uuid4()), "kind": {"group": group, "version": version, "kind": kind},
                        "resource": {"group": group, "version": version, "resource": resource},
                        "namespace": "models", "operation": "CREATE", "userInfo": {"username": "test"},
                        "object": obj, "oldObject": None, "dryRun": False}}


def answer_of(hook: Webhook, ca: str, obj: Any) -> dict[str, Any]:
    r = review(obj)
    status, answer = hook.post(ca, json.dumps(r).encode())
    assert status == 200, answer
    assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
    assert answer["response"]["uid"] == r["request"]["uid"]
    return answer["response"]


def patched(obj: Any, response: dict[str, Any]) -> Any:
    assert response["allowed"] is True, response
    if "patch" not in response:
        return obj
    assert response["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(response["patch"]))
    return jsonpatch.JsonPatch(ops).apply(copy.deepcopy(obj))


@pytest.fixture(scope="module")
def model(pki):
    """A sealed model of about 3 MiB served over HTTPS (the test CA); its .seal on tmpfs."""
    d = Path(make_shm_dir("modelseal-webhook-"))
    try:
        seal, _ = keyed_seal(d, make_model(d / "resnet", tree_bytes=3 * MIB, shards=2, small=20), "--compress", "zstd")
        with ObjectServer({"/models/resnet.seal": seal.read_bytes()}, tls=pki.server_context()) as server:
            yield server, seal, d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def hook(model, pki):
    server, _, d = model
    w = Webhook(d, pki.server_cert, pki.server_key, pki.ca, "--allow-sources", server.url + "/models")
    yield w
    w.stop()


def annotated(kind: str, model, spec: dict[str, Any] | None = None, **notes: str) -> dict[str, Any]:
    server = model[0]
    values = {**ANNOTATIONS, "modelseal.dev/source": f"{server.url}/models/resnet.seal", **notes}
    return workload(kind, {k: v for k, v in values.items() if v}, spec)


def inject_cli(obj: dict[str, Any], d: Path, ca: str) -> dict[str, Any]:
    path = d / f"obj-{uuid.uuid4().hex[:8]}.yaml"
    path.write_text(yaml.safe_dump(obj))
    r = modelseal("inject", "-f", str(path), "--ca", ca)
    assert r.code == 0, r.stderr
    return yaml.safe_load(r.stdout)


# ---- the right patch: what inject makes ------------------------------------------------------------------

def two_containers() -> dict[str, Any]:
    proxy = {"name": "proxy", "image": "envoyproxy/envoy:v1.30", "securityContext": {"readOnlyRootFilesystem": True},
             "resources": {"limits": {"memory": "128Mi"}}}
    return pod_spec(proxy, serving())


CASES = {
    "a Deployment": ("Deployment", None, {}),
    "a Pod with two containers": ("Pod", two_containers, {}),
    "an InferenceService": ("InferenceService", None, {}),
    "a four-stage Pod": ("Pod", None, {"modelseal.dev/shape": "four"}),
}


@pytest.mark.parametrize("case", CASES)
def test_the_patch_gives_what_inject_prints(hook: Webhook, model, pki, case: str) -> None:
    kind, spec, notes = CASES[case]
    obj = annotated(kind, model, spec() if spec else None, **notes)
    before = model[0].count()
    mutated = patched(obj, answer_of(hook, pki.ca, obj))
    assert model[0].count() > before  # the header came from the source
    assert mutated == inject_cli(obj, model[2], pki.ca)
    assert mutated != obj and spec_of(mutated)["initContainers"]
    if spec is two_containers:
        containers = spec_of(mutated)["containers"]
        assert containers[0] == obj["spec"]["containers"][0]  # the proxy is left alone
        assert containers[1]["volumeMounts"][0]["name"] == "modelseal-models"
    validate_strict([mutated], model[2])


def test_an_injected_object_gets_no_patch(hook: Webhook, model, pki) -> None:
    once = patched(annotated("Pod", model), answer_of(hook, pki.ca, annotated("Pod", model)))
    response = answer_of(hook, pki.ca, once)
    assert response["allowed"] is True and "patch" not in response


def test_an_object_without_annotations_is_allowed_unchanged(hook: Webhook, model, pki) -> None:
    before = model[0].count()
    response = answer_of(hook, pki.ca, workload("Pod", annotations={}))
    assert response == {"uid": response["uid"], "allowed": True}
    assert model[0].count() == before


def test_a_review_without_an_object_is_allowed(hook: Webhook, pki) -> None:
    r = review(None)
    status, answer = hook.post(pki.ca, json.dumps(r).encode())
    assert status == 200 and answer["response"] == {"uid": r["request"]["uid"], "allowed": True}


# ---- denials: fail closed ------------------------------------------------------------------------------

DENIALS = {
    "a missing container": ({"modelseal.dev/container": "server"}, 400, "'server' is not a container of this pod"),
    "an unreadable source": ({"modelseal.dev/source": "MISSING"}, 403, "404"),
    "a source the webhook may not read": ({"modelseal.dev/source": "file:///etc/passwd"}, 400,
                                          "reads no header from that file: source"),
    # the hook reads under URL/models (no trailing /): a name that only begins the same, and a path
    # that a server resolves to outside it, are not under it
    "a source beside the allowed prefix": ({"modelseal.dev/source": "URL/models-private/resnet.seal"}, 400,
                                           "reads no header from that https: source (it reads only under"),
    "a dot segment out of the allowed prefix": ({"modelseal.dev/source": "URL/models/../resnet.seal"}, 400,
                                                "reads no header from that https: source (it reads only under"),
    "an encoded dot segment out of it": ({"modelseal.dev/source": "URL/models/%2E%2E/resnet.seal"}, 400,
                                         "reads no header from that https: source (it reads only under"),
    "a limit below the model": ({"modelseal.dev/container": "serving", "LIMIT": "8Mi"}, 400, "below the model's"),
}


@pytest.mark.parametrize("case", DENIALS)
def test_an_annotated_object_that_cannot_be_injected_is_denied(hook: Webhook, model, pki, case: str) -> None:
    notes, code, message = DENIALS[case]
    notes = dict(notes)
    limit = notes.pop("LIMIT", None)
    if notes.get("modelseal.dev/source") == "MISSING":
        notes["modelseal.dev/source"] = f"{model[0].url}/models/missing.seal"
    if "modelseal.dev/source" in notes:
        notes["modelseal.dev/source"] = notes["modelseal.dev/source"].replace("URL/", f"{model[0].url}/")
    obj = annotated("Pod", model, pod_spec(serving(memory=limit)) if limit else None, **notes)
    response = answer_of(hook, pki.ca, obj)
    assert response["allowed"] is False and "patch" not in response
    assert response["status"]["code"] == code
    text = response["status"]["message"]
    assert message in text and "\n" not in text, text


MALFORMED = {
    "not JSON": b"{not json",
    "not a review": json.dumps({"apiVersion": "v1", "kind": "Pod"}).encode(),
    "no uid": json.dumps({**review(workload("Pod")), "request": {"object": workload("Pod")}}).encode(),
    "a request that is a list": json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                                            "request": []}).encode(),
    "nested too deep": b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":' + b"[" * 100
                       + b"]" * 100 + b"}",
}


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_review_is_answered_400_with_the_reason(hook: Webhook, pki, case: str) -> None:
    status, answer = hook.post(pki.ca, MALFORMED[case])
    assert status == 400 and set(answer) == {"error"}, answer
    assert answer["error"] and "\n" not in answer["error"]


def test_an_object_that_is_not_a_mapping_is_denied(hook: Webhook, pki) -> None:
    r = review(["not", "an", "object"])
    status, answer = hook.post(pki.ca, json.dumps(r).encode())
    assert status == 200 and answer["response"]["allowed"] is False, answer


def test_a_body_over_the_limit_is_refused_unread(hook: Webhook, pki) -> None:
    conn = hook.connection(pki.ca)
    try:
        conn.putrequest("POST", "/mutate")
        conn.putheader("Content-Length", str(64 << 20))
        conn.endheaders()
        resp = conn.getresponse()
        assert resp.status == 413
    finally:
        conn.close()


def test_a_client_without_tls_gets_nothing_and_the_server_goes_on(hook: Webhook, pki) -> None:
    plain = http.client.HTTPConnection(LOCAL, hook.port, timeout=30)
    try:
        with pytest.raises((http.client.HTTPException, OSError)):
            plain.request("POST", "/mutate", body=json.dumps(review(workload("Pod"))).encode())
            plain.getresponse().read()
    finally:
        plain.close()
    assert hook.get(pki.ca, "/healthz") == (200, b"ok\n")


def test_health_endpoints(hook: Webhook, pki) -> None:
    assert hook.get(pki.ca, "/healthz") == (200, b"ok\n")
    assert hook.get(pki.ca, "/readyz") == (200, b"ok\n")
    assert hook.get(pki.ca, "/metrics")[0] == 404


def test_the_log_names_each_review_and_no_annotation_values(hook: Webhook, model, pki) -> None:
    answer_of(hook, pki.ca, annotated("Pod", model, None, **{"modelseal.dev/container": "server"}))
    reviews = [r for r in hook.records() if r.get("event") == "review"]
    assert reviews and reviews[-1]["allowed"] is False and "is not a container" in reviews[-1]["error"]


# ---- the certificate, reloaded ------------------------------------------------------------------------

def _replace(src: str, dst: Path) -> None:
    """Swap a file in with one rename, as the kubelet swaps a Secret volume's files."""
    tmp = dst.with_suffix(".new")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def test_a_renewed_certificate_is_served_without_a_restart(pki, shm: Path) -> None:
    cert, key = shm / "tls.crt", shm / "tls.key"
    _replace(pki.server_cert, cert)
    _replace(pki.server_key, key)
    hook = Webhook(shm, str(cert), str(key), pki.ca)
    try:
        first = hook.peer_certificate(pki.ca)
        assert hashlib.sha256(first).digest() == hashlib.sha256(
            ssl.PEM_cert_to_DER_cert(Path(pki.server_cert).read_text())).digest()
        (shm / "renewed").mkdir()
        renewed = make_pki(str(shm / "renewed"))  # another CA and server certificate
        # a half-written pair (the new certificate, the old key) does not load: the old pair is kept
        _replace(renewed.server_cert, cert)
        assert hook.peer_certificate(pki.ca) == first
        _replace(renewed.server_key, key)
        second = hook.peer_certificate(renewed.ca)
        assert second != first
        assert second == ssl.PEM_cert_to_DER_cert(Path(renewed.server_cert).read_text())
        assert hook.proc.poll() is None  # the same process
        assert hook.get(renewed.ca, "/readyz") == (200, b"ok\n")
        loads = [r for r in hook.records() if r.get("event") == "certificate_loaded"]
        assert [r["loads"] for r in loads] == [1, 2]
        assert any(r.get("event") == "certificate_not_loaded" for r in hook.records())
    finally:
        hook.stop()


def test_the_webhook_stops_cleanly_on_sigterm(pki, shm: Path) -> None:
    hook = Webhook(shm, pki.server_cert, pki.server_key, pki.ca)
    hook.proc.terminate()
    assert hook.proc.wait(30) == 0
    assert hook.records()[-1]["event"] == "done"


# ---- the patch itself ------------------------------------------------------------------------------------

def test_the_patch_escapes_member_names_and_round_trips() -> None:
    old = {"metadata": {"annotations": {"a/b": "1", "c~d": "2", "gone": "x"}}, "spec": {"list": [1, 2],
                                                                                          "same": [{"a": 1}]}}
    new = {"metadata": {"annotations": {"a/b": "3", "c~d": "2", "e/f~g": "4"}}, "spec": {"list": [1, 2, 3, 4],
                                                                                          "same": [{"a": 1.0}],
                                                                                          "new": {"x": [True]}}}
    ops = diff(old, new)
    assert jsonpatch.JsonPatch(ops).apply(copy.deepcopy(old)) == new
    assert {"op": "add", "path": "/metadata/annotations/e~1f~0g", "value": "4"} in ops
    assert {"op": "add", "path": "/spec/list/-", "value": 3} in ops
    assert not [op for op in ops if op["path"].startswith("/spec/same")]
    assert diff(new, new) == []
    shrunk = {**new, "spec": {**new["spec"], "list": [4]}}
    assert jsonpatch.JsonPatch(diff(new, shrunk)).apply(copy.deepcopy(new)) == shrunk
    assert jsonpatch.JsonPatch(diff({"v": True}, {"v": 1})).apply({"v": True}) == {"v": 1}
