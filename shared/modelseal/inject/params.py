"""What an injection is asked for: the `modelseal.dev/*` annotations, or `modelseal inject`'s flags.

Both are read into one `Params` by the same rules, so a pod annotated by hand,
a Deployment given to `inject`, and an AdmissionReview given to the webhook
are refused for the same reasons in the same words. Every value here may come
from whoever can create a pod, so each is checked before anything is read or
built from it, and named (quoted, shortened) when refused.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, fields, replace
from fractions import Fraction
from typing import Any

from .. import __version__
from ..errors import UsageError
from ..untrusted import show
from ..uri import URI

PREFIX = "modelseal.dev/"
#: annotation -> Params field. `size` is for a webhook that may not read the source.
ANNOTATIONS = {
    "source": "source", "key-uri": "key_uri", "identity": "identity", "verify-key": "verify_key",
    "container": "container", "mount": "mount", "shape": "shape", "size": "size",
}
SHAPES = ("single", "four")
#: A Kubernetes resource quantity (resource.Quantity's grammar, without the sign).
_QUANTITY = re.compile(r"(?P<num>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
                       r"(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[kMGTPEm]|[eE][+-]?[0-9]{1,3})?", re.ASCII)
_FACTORS: dict[str | None, int | Fraction] = {
    None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18, "m": Fraction(1, 1000)}
#: A ConfigMap name (DNS subdomain) and key (ConfigMap key characters).
_CONFIGMAP = re.compile(r"(?P<name>[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?)(?:/(?P<key>[-._a-zA-Z0-9]{1,253}))?",
                        re.ASCII)


def quantity_bytes(value: Any, what: str) -> int:
    """A memory quantity ("1Gi", "1216Mi", "3e9", "1500M", a plain integer) in bytes, rounded up."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    m = _QUANTITY.fullmatch(value.strip()) if isinstance(value, str) else None
    if not m:
        raise UsageError(f"{what}: {show(value, 60)} is not a memory quantity (e.g. 1216Mi, 3Gi)")
    number = Fraction(m.group("num"))
    suffix = m.group("suffix")
    factor = Fraction(10) ** int(suffix[1:]) if suffix and suffix[0] in "eE" else _FACTORS[suffix]
    exact = number * factor
    return int(-(-exact.numerator // exact.denominator))


@dataclass(frozen=True)
class Images:
    """Where the init-container images come from (`--image-prefix`, `--image-tag`): PREFIX/<stage>:TAG
    (images/build.sh, make publish)."""

    image_prefix: str = "modelseal"
    image_tag: str = __version__

    def of(self, stage: str) -> str:
        return f"{self.image_prefix.rstrip('/')}/{stage}:{self.image_tag}"


@dataclass(frozen=True)
class Params:
    """One injection's parameters (`modelseal inject`'s flags, of the same names); `None` fields are not given."""

    source: str | None = None
    key_uri: str | None = None
    identity: str | None = None  # an age identity URI, for format v2 (issue 21): passed to the stage as --identity
    verify_key: str | None = None  # a ConfigMap holding the signer's public key: NAME or NAME/KEY
    container: str | None = None  # the serving container
    mount: str | None = None  # where the serving container sees the model (read-only)
    shape: str | None = None  # single (default) or four
    size: str | None = None  # the models volume's size (`inspect --resources`), instead of reading the header

    def over(self, base: "Params") -> "Params":
        """These parameters where given, `base`'s elsewhere (flags over annotations)."""
        return replace(base, **{f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name)})

    def given(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))

    @classmethod
    def from_annotations(cls, annotations: dict[str, Any], where: str) -> "Params":
        """The `modelseal.dev/*` annotations; an unknown one (a typo) or a value that is no string is refused."""
        values: dict[str, str] = {}
        for key, value in annotations.items():
            if not isinstance(key, str) or not key.startswith(PREFIX):
                continue
            name = ANNOTATIONS.get(key[len(PREFIX):])
            if name is None:
                known = ", ".join(PREFIX + a for a in ANNOTATIONS)
                raise UsageError(f"{where}: unknown annotation {show(key, 80)} (known: {known})")
            if not isinstance(value, str):
                raise UsageError(f"{where}: annotation {key} is not a string")
            values[name] = value
        return cls(**values)


@dataclass(frozen=True)
class Checked:
    """Parameters that passed every check (Params.check)."""

    source: str
    container: str
    mount: str
    shape: str
    key_uri: str | None
    identity: str | None
    verify_key: tuple[str, str] | None  # (ConfigMap name, key)
    size: int | None

    @property
    def scheme(self) -> str:
        return URI.parse(self.source).scheme


def check(p: Params, where: str, *, containers: list[str]) -> Checked:
    """Every rule a parameter must meet, one clear line (UsageError, exit 2) for the first it breaks.

    `containers`: the pod's app containers; the serving container defaults to the only one.
    """
    if not p.source:
        raise UsageError(f"{where}: no source: set {PREFIX}source (or --source) to the sealed model's URI")
    source = p.source.strip()
    uri = URI.parse(source)  # refuses user info (a password in a pod spec)
    if uri.scheme in ("", "-") or source == "-":
        raise UsageError(f"{where}: source {show(source, 80)} is not a URI a pod can read (s3://, https://, oci://)")
    if bool(p.key_uri) == bool(p.identity):
        raise UsageError(f"{where}: give exactly one of {PREFIX}key-uri (--key-uri) or {PREFIX}identity (--identity)")
    for value in (p.key_uri, p.identity):
        if value:
            URI.parse(value.strip())  # user info refused here too
    shape = (p.shape or "single").strip()
    if shape not in SHAPES:
        raise UsageError(f"{where}: {PREFIX}shape is {show(shape, 40)}: give single or four")
    container = (p.container or "").strip()
    if not container:
        if len(containers) != 1:
            raise UsageError(f"{where}: set {PREFIX}container (--container) to the serving container, one of "
                             f"{', '.join(map(show, containers))}")
        container = containers[0]
    if container not in containers:
        raise UsageError(f"{where}: the serving container {show(container, 80)} is not a container of this pod "
                         f"(containers: {', '.join(map(show, containers)) or 'none'})")
    mount = (p.mount or "").strip()
    if not mount:
        raise UsageError(f"{where}: set {PREFIX}mount (--mount) to the path where {show(container, 80)} reads "
                         "the model")
    if not mount.startswith("/") or posixpath.normpath(mount) != mount or mount.startswith("//") or mount == "/" \
            or not mount.isprintable() or ":" in mount:
        raise UsageError(f"{where}: {PREFIX}mount {show(mount, 80)} is not a clean absolute path (not /, no .., "
                         "no trailing /)")
    verify = None
    if p.verify_key:
        m = _CONFIGMAP.fullmatch(p.verify_key.strip())
        if not m:
            raise UsageError(f"{where}: {PREFIX}verify-key {show(p.verify_key, 80)} is not a ConfigMap NAME or "
                             "NAME/KEY holding the signer's public key")
        verify = (m.group("name"), m.group("key") or "signer.pub")
    size = None
    if p.size:
        size = quantity_bytes(p.size, f"{where}: {PREFIX}size")
        if size <= 0:
            raise UsageError(f"{where}: {PREFIX}size must be the model's unpacked size, not 0")
    return Checked(source=source, container=container, mount=mount, shape=shape,
                   key_uri=p.key_uri.strip() if p.key_uri else None,
                   identity=p.identity.strip() if p.identity else None, verify_key=verify, size=size)
