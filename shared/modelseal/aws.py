"""boto3 clients for the S3, KMS and Secrets Manager backends, built the same way.

Credentials come from boto3's default chain and nothing else: environment
variables, web identity (IRSA: AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE),
EKS Pod Identity / ECS container credentials (AWS_CONTAINER_CREDENTIALS_FULL_URI),
shared config files, then the instance role (IMDS). The endpoint is
`endpoint_url` when given, else boto3's own AWS_ENDPOINT_URL[_<SERVICE>]
handling; the CA bundle is `ca`. botocore's own retries are switched off so
that modelseal.retry is the one policy (and its counts are exact); every call
has connect and read timeouts of `timeout` seconds.

Endpoints are checked with web.parse_endpoint (https, or plain http to
loopback or with allow_http; no user info, query or fragment) twice: as
given (endpoint_url, AWS_ENDPOINT_URL_<SERVICE>, AWS_ENDPOINT_URL), and as
botocore resolved it, so no source of configuration bypasses the check.
Answers are parsed by botocore; `call` turns what it lets escape on a
malformed answer (RecursionError, ValueError, AttributeError, ...) into
IntegrityError (exit 4).

boto3 is imported lazily: the decrypt and unpack images do not have it.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, TypeVar

from . import extras, retry, web
from .connection import Connection
from .errors import IntegrityError, UsageError

T = TypeVar("T")

_ARN_REGION = re.compile(r"^arn:aws[a-zA-Z-]*:[a-z0-9-]+:([a-z0-9-]*):")


def region_of_arn(text: str) -> str | None:
    m = _ARN_REGION.match(text)
    return (m.group(1) or None) if m else None


#: botocore's names for the per-service endpoint variables (AWS_ENDPOINT_URL_<NAME>).
_ENDPOINT_ENV = {"s3": "S3", "kms": "KMS", "secretsmanager": "SECRETS_MANAGER"}
#: What botocore lets escape when it cannot parse an answer (deep JSON, int() of a header, a string
#: where an object belongs, bytes that are not UTF-8).
_MALFORMED = (RecursionError, AttributeError, TypeError, LookupError, ValueError)
#: botocore modules that parse answers; a _MALFORMED raised inside them is about the answer.
_PARSING = ("/botocore/parsers.py", "/botocore/endpoint.py")


def session() -> Any:
    """A boto3 session: clients made from one share its loaded service models (the second costs ~10 ms)."""
    return extras.require("boto3", "AWS").session.Session()


def client(service: str, connection: Connection, *, region: str | None = None, require_region: bool = False,
           from_session: Any = None, signature_version: str | None = None) -> Any:
    boto3 = extras.require("boto3", service)
    Config = extras.require("botocore.config", service).Config
    extras.require("tenacity", service)  # the retry policy every call runs under
    what = f"{service} endpoint"
    env = f"AWS_ENDPOINT_URL_{_ENDPOINT_ENV.get(service, service.upper())}"
    checked = set()  # checked (and warned about) once each, named by where it was set
    for name, endpoint in (("endpoint_url", connection.endpoint_url), (env, os.environ.get(env)),
                           ("AWS_ENDPOINT_URL", os.environ.get("AWS_ENDPOINT_URL"))):
        if endpoint:
            # Plain http would carry session tokens in the clear: loopback, or allow_http.
            web.parse_endpoint(endpoint, f"{what} ({name})", connection, loopback_ok=True)
            checked.add(endpoint)
    if connection.ca and not os.path.isfile(connection.ca):
        raise UsageError(f"CA bundle {connection.ca} does not exist")
    if connection.timeout <= 0:
        raise UsageError("timeout must be positive")
    session = from_session or boto3.session.Session()
    # AWS_REGION is what EKS Pod Identity and most SDKs set; botocore reads only AWS_DEFAULT_REGION.
    region = region or connection.extra.get("region") or session.region_name or os.environ.get("AWS_REGION")
    if require_region and not region:
        raise UsageError(f"{service}: no AWS region; set AWS_REGION, use an ARN, or add region= to the URI")
    config = Config(
        connect_timeout=connection.timeout,
        read_timeout=connection.timeout,
        retries={"total_max_attempts": 1, "mode": "standard"},
        max_pool_connections=max(10, connection.concurrency + 2),
        user_agent_extra="modelseal",
        s3={"addressing_style": connection.extra.get("addressing_style", "auto")},
        **({"signature_version": signature_version} if signature_version else {}),
    )
    kwargs: dict[str, Any] = {"config": config}
    if connection.endpoint_url:
        kwargs["endpoint_url"] = connection.endpoint_url
    if region:
        kwargs["region_name"] = region
    if connection.ca:
        kwargs["verify"] = connection.ca
    try:
        made = session.client(service, **kwargs)
    except Exception as exc:  # noqa: BLE001 - botocore configuration errors
        raise UsageError(f"{service}: cannot create a client ({type(exc).__name__})") from None
    # The endpoint botocore itself resolved (from any of its sources: the variables
    # above, the config file's services section, AWS's own), checked the same way.
    if made.meta.endpoint_url not in checked:
        web.parse_endpoint(made.meta.endpoint_url, what, connection, loopback_ok=True)
    return made


def call(what: str, connection: Connection, method: Callable[..., T], *, sleep: Callable[[float], Any] | None = None,
         **kwargs: Any) -> T:
    """One SDK call under the retry policy; an answer botocore cannot parse is malformed (exit 4)."""
    return retry.call(what, connection, parsed(what, method), sleep=sleep, **kwargs)


def parsed(what: str, method: Callable[..., T]) -> Callable[..., T]:
    """`method` with the exceptions botocore lets escape while parsing an answer turned into IntegrityError."""

    def run(**kwargs: Any) -> T:
        try:
            return method(**kwargs)
        except _MALFORMED as exc:
            if _from_parser(exc):
                raise IntegrityError(f"{what}: the service's answer is malformed ({type(exc).__name__})") from None
            raise

    return run


def _from_parser(exc: BaseException) -> bool:
    if any(c.__module__.startswith(("botocore.exceptions", "urllib3")) for c in type(exc).__mro__):
        return False  # botocore's own errors (InvalidRegionError is a ValueError too) keep their meaning
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.endswith(_PARSING):
            return True
        tb = tb.tb_next
    return False
