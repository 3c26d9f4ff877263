"""URIs of keys and model sources, and how their backends are found.

Backends are selected by scheme, the way rclone selects remotes; query
parameters override flags so one URI can carry everything a pod spec needs.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from dataclasses import dataclass, field
from types import ModuleType
from urllib.parse import parse_qsl, urlsplit

from .errors import UsageError

#: `scheme://USER:SECRET@` at the start of a URI, read the way a person writes it: USER runs to the
#: first `:` and has no `/`; SECRET runs to the last `@` before a space and may hold `/` (AWS secret
#: keys often do), where a URL parser ends the authority, so `s3://AKIA...:abc/def@bucket/key` would
#: pass as host `AKIA...`, port `abc` and a path, and be logged whole. `HOST:PORT/PATH@...` (an
#: `oci://127.0.0.1:5000/repo@sha256:...` reference) is not user info: a port is 1 to 5 digits, then
#: the path; a secret that itself starts so reads as one, the one spelling left ambiguous. The
#: lengths are bounded so that scanning any text costs linear time (forged header fields are logged).
_USER_INFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]{0,31}://)(?P<user>[^/?#@:\[\]\s]{0,256}):"
                        r"(?P<secret>\S{0,1024})@")
#: How far past a cut a user info may reach and still be recognised (the lengths above, and then some).
USER_INFO_REACH = 1400
_PORT_THEN_PATH = re.compile(r"[0-9]{1,5}[/?#]")


def _is_user_info(m: re.Match) -> bool:
    return not _PORT_THEN_PATH.match(m.group("secret"))


def has_user_info(raw: str) -> bool:
    """Whether `raw` starts with `scheme://USER:SECRET@` (_USER_INFO), or has user info in its authority."""
    m = _USER_INFO.match(raw)
    return (m is not None and _is_user_info(m)) or "@" in urlsplit(raw).netloc


def redact_user_info(text: str) -> str:
    """`text` with every `scheme://USER:SECRET@` in it (anywhere, any scheme) cut down to `scheme://[redacted]@`.

    For log lines, errors and the termination message: a URI quoted by a
    message we did not write (an SDK's, a parser's) never carries a secret out."""
    if "@" not in text:
        return text
    return _USER_INFO.sub(lambda m: m.group("scheme") + "[redacted]@" if _is_user_info(m) else m.group(0), text)


@dataclass(frozen=True)
class URI:
    raw: str
    scheme: str
    netloc: str
    path: str
    query: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: str) -> "URI":
        if raw == "-":
            return cls(raw, "file", "", "-")
        if "://" not in raw and ":" in raw and not raw.startswith("/"):
            scheme, _, rest = raw.partition(":")  # opaque form, e.g. env:VAR
            path, _, q = rest.partition("?")
            return cls(raw, scheme.lower(), "", path, dict(parse_qsl(q, keep_blank_values=True)))
        if "://" not in raw:
            return cls(raw, "file", "", raw)  # a plain path
        parts = urlsplit(raw)
        scheme = parts.scheme.lower()
        if has_user_info(raw):
            # No scheme of ours has a use for user info; it would be a password in a pod
            # spec, in `ps` and in every message that names the URI. Not repeated here.
            raise UsageError(f"{scheme}:// URI: user info (user:password@) is refused; credentials come from "
                             "token files, key files or the cloud SDK's credential chain")
        return cls(raw, scheme, parts.netloc, parts.path, dict(parse_qsl(parts.query, keep_blank_values=True)))

    def check_local(self) -> None:
        """A file:// URI names a path on this machine: `file://model.key` (two slashes) reads as the host
        "model.key" with no path, which would fail later as a missing file named nothing."""
        if self.scheme == "file" and self.netloc not in ("", "localhost"):
            raise UsageError(f"{self.raw}: a file URI takes an absolute path after three slashes "
                             f"(file:///abs/path/{self.netloc}); for a relative path give the path itself "
                             "(--key PATH, --source PATH)")

    @property
    def hostname(self) -> str:
        """The host as URL clients connect to it (lower case, no brackets, no port)."""
        return urlsplit(f"//{self.netloc}").hostname or ""

    @classmethod
    def for_path(cls, path: str) -> "URI":
        """A local path taken as it is: `#`, `?` and `:` are file-name characters, not URI syntax."""
        return cls(path, "file", "", path)

    def redacted(self) -> str:
        """For logs: scheme, host and path; never query values or userinfo."""
        host = self.netloc.rsplit("@", 1)[-1]  # parse() refuses user info; kept for URIs built by hand
        if self.raw == "-":
            return "-"
        keys = ",".join(sorted(self.query))
        sep = "://" if "://" in self.raw else ":"
        return f"{self.scheme}{sep}{host}{self.path}" + (f"?[{keys}]" if keys else "")


def discover(package: ModuleType) -> dict[str, ModuleType]:
    """Map scheme -> backend module for every module of `package` with SCHEMES.

    Backends import their SDKs lazily, so discovery costs little and the
    decrypt image needs no cloud SDK installed.
    """
    found: dict[str, ModuleType] = {}
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for scheme in getattr(module, "SCHEMES", ()):
            found[scheme] = module
    return found


def find_backend(package: ModuleType, scheme: str) -> ModuleType | None:
    """The backend module of `package` for `scheme`, or None.

    The module named after the scheme (`aws-kms` -> awskms) is tried first:
    importing every backend to find one costs each command ~50 ms of start-up
    (web, ssl, http.cookiejar) that decrypt and unpack never use. Any other
    module declaring the scheme is still found by full discovery.
    """
    name = scheme.replace("-", "").replace(".", "")
    if name.isidentifier():
        try:
            module = importlib.import_module(f"{package.__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{package.__name__}.{name}":
                raise
        else:
            if scheme in getattr(module, "SCHEMES", ()):
                return module
    return discover(package).get(scheme)
