"""boto3 clients for the S3, KMS and Secrets Manager backends, built the same way.

Credentials come from boto3's default chain and nothing else: environment
variables, web identity (IRSA: AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE),
EKS Pod Identity / ECS container credentials (AWS_CONTAINER_CREDENTIALS_FULL_URI),
shared config files, then the instance role (IMDS). The endpoint is
`endpoint_url` when given, else boto3's own AWS_ENDPOINT_URL[_<SERVICE>]
handling; the CA bundle is `ca`. botocore's own retries are switched off so
that modelseal.retry is the one policy (and its counts are exact); every call
has connect and read timeouts of `timeout` seconds.

boto3 is imported lazily: the decrypt and unpack images do not have it.
"""

from __future__ import annotations

import os
import re
from typing import Any

from . import extras, web
from .errors import UsageError
from .uri import Options

_ARN_REGION = re.compile(r"^arn:aws[a-zA-Z-]*:[a-z0-9-]+:([a-z0-9-]*):")


def region_of_arn(text: str) -> str | None:
    m = _ARN_REGION.match(text)
    return (m.group(1) or None) if m else None


def client(service: str, options: Options, *, region: str | None = None, require_region: bool = False) -> Any:
    boto3 = extras.require("boto3", service)
    Config = extras.require("botocore.config", service).Config
    extras.require("tenacity", service)  # the retry policy every call runs under
    what = f"{service} endpoint"
    endpoint = (options.endpoint_url or os.environ.get(f"AWS_ENDPOINT_URL_{service.upper()}")
                or os.environ.get("AWS_ENDPOINT_URL"))
    if endpoint:
        parts = endpoint.split("://", 1)
        if len(parts) != 2:
            raise UsageError(f"{what}: endpoint_url must start with https:// or http://")
        host = parts[1].split("/", 1)[0].rsplit("@", 1)[-1]
        host = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        # Plain http would carry session tokens in the clear: loopback, or allow_http.
        web.check_scheme(parts[0].lower(), host, options, what, loopback_ok=True)
    if options.ca and not os.path.isfile(options.ca):
        raise UsageError(f"CA bundle {options.ca} does not exist")
    if options.timeout <= 0:
        raise UsageError("timeout must be positive")
    session = boto3.session.Session()
    # AWS_REGION is what EKS Pod Identity and most SDKs set; botocore reads only AWS_DEFAULT_REGION.
    region = region or options.extra.get("region") or session.region_name or os.environ.get("AWS_REGION")
    if require_region and not region:
        raise UsageError(f"{service}: no AWS region; set AWS_REGION, use an ARN, or add region= to the URI")
    config = Config(
        connect_timeout=options.timeout,
        read_timeout=options.timeout,
        retries={"total_max_attempts": 1, "mode": "standard"},
        max_pool_connections=max(10, options.concurrency + 2),
        user_agent_extra="modelseal",
        s3={"addressing_style": options.extra.get("addressing_style", "auto")},
    )
    kwargs: dict[str, Any] = {"config": config}
    if options.endpoint_url:
        kwargs["endpoint_url"] = options.endpoint_url
    if region:
        kwargs["region_name"] = region
    if options.ca:
        kwargs["verify"] = options.ca
    try:
        return session.client(service, **kwargs)
    except Exception as exc:  # noqa: BLE001 - botocore configuration errors
        raise UsageError(f"{service}: cannot create a client ({type(exc).__name__})") from None
