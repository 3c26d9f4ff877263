"""`azure-skr://VAULT/keys/NAME[/VERSION]?maa=HOST`: the data key, released only to an attested pod.

For AKS confidential containers (Kata on AMD SEV-SNP). The key is an
exportable RSA key in Azure Key Vault (Premium) or Managed HSM with a key
release policy: Key Vault hands it out only against a Microsoft Azure
Attestation token whose claims match the policy (the pod's CCE policy hash
in x-ms-sevsnpvm-hostdata, and more; docs/AKS.md). The confidential sidecar
of microsoft/confidential-sidecar-containers, in the same pod, gets that token
for its own guest and asks Key Vault for the key; this backend asks the
sidecar, over the pod's loopback, and unwraps the header's data key locally.

Pod side (fetch-key, run): the sidecar's HTTP API, as its README
(cmd/skr/README.md, "HTTP API") and code (internal/httpginendpoints/
httpginendpoints.go: KeyReleaseData, PostKeyRelease) define it:
  POST {sidecar}/key/release
    {"maa_endpoint": "<MAA host>", "akv_endpoint": "<VAULT host>", "kid": "<NAME[/VERSION]>"}
  200 {"key": "<the released key as a JWK, serialised as a JSON string>"}
  403 {"error": "..."} when attestation or the release fails; 400 on a bad request.
The endpoints go without https:// (pkg/common/akv.go builds
"https://%s/keys/%s/release"); the sidecar gets its own Key Vault token
(workload identity, or the node's managed identity), so no token is sent. Its
JWK is lestrrat-go/jwx's encoding of the RSA private key (pkg/skr/skr.go,
SecureKeyRelease): kty "RSA", n, e, d, p, q, dp, dq, qi in base64url, and the
key's key_ops from Key Vault when it has any. Accepted here: kty RSA or
RSA-HSM (Key Vault's JsonWebKey types), key_ops absent or allowing unwrapKey
or decrypt, a modulus of 2048, 3072 or 4096 bits, n/e/d required and the CRT
members all present or all absent; the "key" member may also be the JWK
object itself. Anything else (not JSON, too deep, a string where a number
belongs, another key type, a key that does not open the file) exits 4. The
sidecar's address is `sidecar=` (default http://127.0.0.1:8080, its default
port; plain http only to loopback). `maa=` is the attestation provider named
in the key's release policy, e.g. sharedeus.eus.attest.azure.net.

Seal side, offline: `public_key=PATH`, the key's public part, as a PEM file
(`az keyvault key download --encoding PEM`) or a JSON file holding a JWK or
Key Vault's key bundle (`az keyvault key show` prints {"key": {...}}). The
data key is wrapped with RSA-OAEP-256 (SHA-256, MGF1-SHA-256, empty label) as
azure-kv does, over the same 64 bytes (data key, then SHA-256 of the context;
see azure-kv for what `context.NAME=VALUE` means), into the header's
`wrapped_key` (provider azure-skr, key_id https://VAULT/keys/NAME[/VERSION]:
the bundle's versioned kid when it names this key). So `seal --key-uri
azure-kv://...` and `seal --key-uri azure-skr://...?public_key=...` make
files either backend opens.
"""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import urlunsplit

from .. import retry, untrusted, web
from ..connection import Connection
from ..errors import IntegrityError, UsageError, from_os_error
from ..sealheader import WrappedKey
from ..uri import URI
from . import KeySource
from .azurekv import (
    BASE_CONTEXT,
    HOST,
    PROVIDERS,
    RSA_BITS,
    KeyRef,
    b64url_decode,
    bind,
    check_context,
    check_provider,
    unbind,
    user_context,
)

SCHEMES = ("azure-skr",)
PROVIDER = "azure-skr"
DEFAULT_SIDECAR = "http://127.0.0.1:8080"
#: The largest sidecar answer read: a 4096-bit JWK is about 3.3 KiB.
MAX_ANSWER = 64 << 10
MAX_PUBLIC_KEY_FILE = 64 << 10
#: base64url characters of the largest JWK member (a 4096-bit modulus is 683).
MAX_MEMBER = 1400
UNWRAP_OPS = ("unwrapKey", "decrypt")
WRAP_OPS = ("wrapKey", "encrypt")


def _oaep() -> Any:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    return padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def _integer(jwk: dict[str, Any], name: str, what: str) -> int:
    raw = b64url_decode(jwk.get(name), f"{what}: the JWK's {name}", MAX_MEMBER)
    if not raw:
        raise IntegrityError(f"{what}: the JWK's {name} is empty")
    return int.from_bytes(raw, "big")


def _check_ops(jwk: dict[str, Any], allowed: tuple[str, ...], what: str) -> None:
    """key_ops (RFC 7517 section 4.3), when present, must allow one of `allowed`."""
    if "key_ops" not in jwk:
        return
    ops = jwk["key_ops"]
    if not isinstance(ops, list) or len(ops) > 16 or not all(isinstance(o, str) for o in ops):
        raise IntegrityError(f"{what}: the JWK's key_ops is not a list of operations")
    if not any(o in allowed for o in ops):
        raise IntegrityError(f"{what}: the JWK's key_ops do not allow {' or '.join(allowed)}")


def _check_kty(jwk: Any, what: str) -> dict[str, Any]:
    if not isinstance(jwk, dict):
        raise IntegrityError(f"{what}: the key is not a JSON object (a JWK)")
    kty = jwk.get("kty")
    if kty not in ("RSA", "RSA-HSM"):
        raise IntegrityError(f"{what}: the key is not an RSA key (kty {untrusted.show(kty, 20)})")
    return jwk


def _check_public(n: int, e: int, what: str) -> None:
    if n.bit_length() not in RSA_BITS:
        raise IntegrityError(f"{what}: the key's modulus is {n.bit_length()} bits, not 2048, 3072 or 4096")
    if not (e & 1 and 3 <= e < 1 << 32):
        raise IntegrityError(f"{what}: the key's public exponent is not usable")


def private_key_of_jwk(jwk: Any, what: str) -> Any:
    """An RSA private key (cryptography) from a JWK as Key Vault and the sidecar write it."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    jwk = _check_kty(jwk, what)
    _check_ops(jwk, UNWRAP_OPS, what)
    for name in ("n", "e", "d"):
        if name not in jwk:
            raise IntegrityError(f"{what}: the JWK has no {name} (not a private key)")
    n, e, d = (_integer(jwk, k, what) for k in ("n", "e", "d"))
    _check_public(n, e, what)
    if not 1 < d < n:
        raise IntegrityError(f"{what}: the JWK's private exponent is out of range")
    crt = ("p", "q", "dp", "dq", "qi")
    present = [k for k in crt if k in jwk]
    try:
        if present and len(present) != len(crt):
            raise IntegrityError(f"{what}: the JWK has some of p, q, dp, dq, qi but not all")
        if present:
            p, q, dp, dq, qi = (_integer(jwk, k, what) for k in crt)
        else:
            p, q = rsa.rsa_recover_prime_factors(n, e, d)
            dp, dq, qi = rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q), rsa.rsa_crt_iqmp(p, q)
        # private_key() checks the members against each other (OpenSSL's RSA key check).
        return rsa.RSAPrivateNumbers(p, q, d, dp, dq, qi, rsa.RSAPublicNumbers(e, n)).private_key()
    except ValueError:
        raise IntegrityError(f"{what}: the JWK's members do not form an RSA private key") from None


def public_key_of(data: bytes, what: str) -> tuple[Any, str | None]:
    """(RSA public key, the file's kid or None) from a PEM, a JWK, or Key Vault's key bundle {"key": JWK}."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise UsageError(f"{what}: not a PEM public key") from None
        if not isinstance(key, rsa.RSAPublicKey):
            raise UsageError(f"{what}: not an RSA public key")
        numbers = key.public_numbers()
        try:
            _check_public(numbers.n, numbers.e, what)
        except IntegrityError as exc:
            raise UsageError(str(exc)) from None
        return key, None
    try:
        doc = untrusted.json_document(data, what, UsageError)
        jwk = doc.get("key") if isinstance(doc, dict) and isinstance(doc.get("key"), dict) else doc
        jwk = _check_kty(jwk, what)
        _check_ops(jwk, WRAP_OPS, what)
        n, e = _integer(jwk, "n", what), _integer(jwk, "e", what)
        _check_public(n, e, what)
    except IntegrityError as exc:  # our own file, not an answer from outside: a usage error
        raise UsageError(str(exc)) from None
    kid = jwk.get("kid")
    return rsa.RSAPublicNumbers(e, n).public_key(), kid if isinstance(kid, str) else None


class Backend(KeySource):
    unwraps = True
    provider = PROVIDER
    providers = PROVIDERS

    def __init__(self, uri: URI, connection: Connection) -> None:
        super().__init__(uri, connection)
        self.ref = KeyRef.of_uri(uri)
        self.what = f"azure-skr://{self.ref.vault}/keys/{self.ref.name}" + (f"/{self.ref.version}"
                                                                            if self.ref.version else "")
        self.user_context = user_context(self.connection)
        self._client: web.Client | None = None
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- seal side

    def wrap(self, data_key: bytes) -> WrappedKey:
        path = self.connection.extra.get("public_key")
        if not path:
            raise UsageError(f"{self.what}: sealing needs the key's public part: add public_key=PATH (a PEM, a JWK, "
                             "or `az keyvault key show` output)")
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_PUBLIC_KEY_FILE + 1)
        except OSError as exc:
            raise from_os_error(exc, f"public key file {path}") from None
        if len(data) > MAX_PUBLIC_KEY_FILE:
            raise UsageError(f"public key file {path} is too large")
        key, kid = public_key_of(data, f"public key file {path}")
        ref = self.ref
        if kid is not None:
            named = KeyRef.of_id(kid)
            if named is None or not ref.same_key(named) or \
                    (ref.version and named.version and named.version.lower() != ref.version.lower()):
                raise UsageError(f"{self.what}: the public key file is for another key "
                                 f"({untrusted.show(kid, 120)})")
            ref = KeyRef(ref.vault, ref.name, ref.version or named.version)
        context = dict(BASE_CONTEXT)
        context.update(self.user_context)
        ciphertext = key.encrypt(bind(data_key, context), _oaep())
        return WrappedKey(provider=PROVIDER, key_id=ref.kid, ciphertext=ciphertext, context=context)

    def wrapped_by(self, key_id: str) -> bool:
        return self.ref.names(key_id)

    # ---------------------------------------------------------------- pod side

    def _sidecar(self) -> str:
        url = self.connection.extra.get("sidecar", DEFAULT_SIDECAR)
        parts = web.parse_endpoint(url, f"{self.what} sidecar", self.connection, loopback_ok=True)
        return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))

    def _maa(self) -> str:
        maa = self.connection.extra.get("maa", "").lower()
        host = maa[len("https://"):].rstrip("/") if maa.startswith("https://") else maa
        if not HOST.fullmatch(host):
            raise UsageError(f"{self.what}: give maa=HOST, the attestation provider of the key's release policy "
                             "(e.g. sharedeus.eus.attest.azure.net)")
        return host

    def _release(self, ref: KeyRef) -> bytearray:
        """POST /key/release; the raw answer, in a buffer we own (zeroed by the caller)."""
        url = f"{self._sidecar()}/key/release"
        body = {"maa_endpoint": self._maa(), "akv_endpoint": ref.vault,
                "kid": ref.name + (f"/{ref.version}" if ref.version else "")}
        with self._lock:
            if self._client is None:
                # The pod's loopback, never through a proxy, plain http as parse_endpoint allowed.
                self._client = web.Client(self.connection, use_env=False, loopback_http=True)
        client = self._client
        what = f"{self.what} (key release)"

        def once() -> bytearray:
            resp = client.request("POST", url, what, json=body)
            try:
                retry.check_status(resp.status_code, what, resp.headers)
                length = web.content_length(resp.headers, what)
                buf = bytearray(MAX_ANSWER + 1)
                got = 0
                while got < len(buf):
                    n = resp.raw.readinto(memoryview(buf)[got:])
                    if not n:
                        break
                    got += n
                if got > MAX_ANSWER:
                    buf[:] = bytes(len(buf))
                    raise IntegrityError(f"{what}: the sidecar's answer is larger than {MAX_ANSWER} bytes")
                if length is not None and length != got:
                    buf[:] = bytes(len(buf))
                    raise retry.TransientError(f"body cut short ({got} of {length} bytes)")
                del buf[got:]
                return buf
            finally:
                resp.close()

        return retry.call(what, self.connection, once)

    def material(self, wrapped: WrappedKey | None) -> bytes:
        assert wrapped is not None  # KeySource.data_key checks
        check_provider(wrapped, "azure-skr")
        check_context(wrapped, self.user_context, self.what)
        ref = self.ref.of_header(wrapped, self.what)
        answer = self._release(ref)
        try:
            key = self._released_key(answer)
        finally:
            answer[:] = bytes(len(answer))
        # What Python cannot zero: the JSON text decoded from the answer, the JWK's base64url
        # strings and the big integers made of them (str and int objects are immutable; CPython
        # frees them without clearing, so their bytes linger in freed heap until reused), and
        # whatever urllib3 and the TLS layer buffered. They are dropped as soon as the key is
        # built (before any other network call). The key object's OpenSSL RSA structure clears
        # its private numbers when freed (BN_clear_free), right after this unwrap. In a
        # confidential pod all of it is in the guest's encrypted memory.
        try:
            plaintext = bytearray(key.decrypt(wrapped.ciphertext, _oaep()))
        except ValueError:
            raise IntegrityError(f"{self.what}: the released key does not unwrap this file's data key (another key, "
                                 "or a changed wrapped_key)") from None
        finally:
            del key
        try:
            return unbind(plaintext, wrapped.context, self.what)
        finally:
            plaintext[:] = bytes(len(plaintext))

    def _released_key(self, answer: bytearray) -> Any:
        what = f"{self.what}: the sidecar's answer"
        doc = untrusted.json_document(answer, what)
        jwk = doc.get("key") if isinstance(doc, dict) else None
        if isinstance(jwk, str):  # the sidecar's form: the JWK serialised into a string member
            jwk = untrusted.json_document(jwk, f"{what}'s key")
        if jwk is None:
            raise IntegrityError(f"{what} has no key")
        try:
            return private_key_of_jwk(jwk, what)
        finally:
            del doc, jwk
