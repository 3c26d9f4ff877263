"""The one retry policy of every network backend, and how network errors map to exit codes.

Policy (tenacity): exponential backoff with full jitter (a random wait between
0 and base * 2**(attempt-1), capped), on transient errors only: connection
refused/reset, timeouts, a body cut short, HTTP 5xx/408/429, S3 SlowDown,
RequestTimeout, InternalError, botocore EndpointConnectionError/ReadTimeout
and friends. After `Connection.retries` attempts it gives up with
UnavailableError (exit 5). Denials (401/403/404, NoSuchKey, AccessDenied) and
TLS handshake failures are raised at once as DeniedError (exit 3): retrying
them only delays the same answer. Everything else that is not transient is
mapped to the closest category and raised at once.

Classification goes by class names (module-qualified, over the MRO) so this
module imports neither requests nor botocore: the decrypt and unpack images
carry no cloud SDK. tenacity itself is imported only when a call is made.

Streams retry per read: each `readinto` gets the full budget of attempts, and
resumes from the last good byte, so a long download survives any number of
drops as long as each one is followed by progress.

Messages name the object (a redacted URI) and the error class or HTTP status,
never exception texts that could quote URLs with signatures, tokens or keys.
"""

from __future__ import annotations

import os
import re
import ssl
import threading
import time
from typing import Any, Callable, Iterator, TypeVar

from . import extras, untrusted
from .connection import Connection
from .errors import (
    DeniedError,
    IntegrityError,
    ModelsealError,
    UnavailableError,
    UsageError,
    from_os_error,
)
from .log import Log

T = TypeVar("T")

#: Base and cap of the exponential backoff, in seconds. `backoff=` and
#: `backoff_max=` in a URI query (Connection.extra) override them.
BACKOFF_BASE = 0.5
BACKOFF_MAX = 20.0
#: A server's Retry-After is honoured up to this many seconds.
RETRY_AFTER_MAX = 60.0

TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
DENIED_STATUS = frozenset({401, 403, 404})

# AWS error codes (S3, KMS, Secrets Manager, STS).
AWS_TRANSIENT = frozenset({
    "SlowDown", "RequestTimeout", "RequestTimeoutException", "InternalError", "InternalFailure",
    "InternalServiceError", "InternalServiceErrorException", "ServiceUnavailable",
    "ServiceUnavailableException", "Throttling", "ThrottlingException", "ThrottledException",
    "RequestThrottled", "RequestThrottledException", "RequestLimitExceeded", "TooManyRequestsException",
    "ProvisionedThroughputExceededException", "EC2ThrottledException", "PriorRequestNotComplete",
    "BandwidthLimitExceeded", "KMSInternalException", "DependencyTimeoutException",
    "KeyUnavailableException", "IDPCommunicationError", "503", "500", "502", "504",
})
AWS_DENIED = frozenset({
    "NoSuchKey", "NoSuchBucket", "NoSuchVersion", "NoSuchUpload", "NotFound", "NotFoundException",
    "ResourceNotFoundException", "AccessDenied", "AccessDeniedException", "AllAccessDisabled",
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "ExpiredTokenException",
    "InvalidToken", "InvalidClientTokenId", "UnrecognizedClientException", "AuthFailure",
    "DisabledException", "KMSInvalidStateException", "InvalidGrantTokenException",
    "InvalidIdentityToken", "InvalidObjectState", "DecryptionFailure", "403", "404", "401",
})
AWS_INTEGRITY = frozenset({
    "InvalidCiphertextException", "IncorrectKeyException", "PreconditionFailed", "BadDigest",
    "InvalidDigest", "XAmzContentSHA256Mismatch",
})

# Exception classes (module.qualname over the MRO) that are transient.
_TRANSIENT_CLASSES = frozenset({
    "builtins.ConnectionError",  # reset, refused, aborted, broken pipe
    "builtins.TimeoutError",  # socket.timeout is TimeoutError
    "http.client.IncompleteRead",
    "http.client.RemoteDisconnected",
    "http.client.BadStatusLine",
    "requests.exceptions.ConnectionError",
    "requests.exceptions.Timeout",
    "requests.exceptions.ChunkedEncodingError",
    "urllib3.exceptions.ProtocolError",
    "urllib3.exceptions.TimeoutError",
    "urllib3.exceptions.NewConnectionError",
    "urllib3.exceptions.IncompleteRead",
    "botocore.exceptions.HTTPClientError",  # EndpointConnectionError, ConnectionClosedError, ...
    "botocore.exceptions.ConnectTimeoutError",
    "botocore.exceptions.ReadTimeoutError",
    "botocore.exceptions.EndpointConnectionError",
    "botocore.exceptions.ResponseStreamingError",
    "botocore.exceptions.IncompleteReadError",
    "modelseal.retry.TransientError",
})
_AWS_CODE = re.compile(r"[A-Za-z0-9.]{1,64}", re.ASCII)
# TLS failures that are really a dropped connection, not a refused peer.
_TLS_TRANSIENT = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)


class TransientError(Exception):
    """A failure worth retrying: a body cut short, an HTTP 5xx/429 answer."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class HTTPStatusError(TransientError):
    def __init__(self, status: int, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}", retry_after)
        self.status = status


def _class_names(exc: BaseException) -> set[str]:
    return {f"{c.__module__}.{c.__qualname__}" for c in type(exc).__mro__}


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """exc and every exception it wraps (cause, context, args, urllib3 reason, botocore error)."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        linked = [e.__cause__, e.__context__, getattr(e, "reason", None)]
        kwargs = getattr(e, "kwargs", None)
        if isinstance(kwargs, dict):
            linked.append(kwargs.get("error"))
        linked.extend(a for a in getattr(e, "args", ()) if isinstance(a, BaseException))
        todo.extend(x for x in linked if isinstance(x, BaseException))


def _tls_failure(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error behind exc when the handshake or the peer's certificate failed."""
    for e in _chain(exc):
        if isinstance(e, ssl.SSLError) and not isinstance(e, _TLS_TRANSIENT):
            return e
    return None


def _code(code: str) -> str:
    """An AWS error code for a message: as is when it looks like one, else quoted and shortened."""
    if not code:
        return "error"
    return code if _AWS_CODE.fullmatch(code) else untrusted.show(code, 60)


def _aws_error(exc: BaseException) -> tuple[str, int] | None:
    response = getattr(exc, "response", None)
    if "botocore.exceptions.ClientError" not in _class_names(exc) or not isinstance(response, dict):
        return None
    code = str((response.get("Error") or {}).get("Code") or "")
    status = int((response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)
    return code, status


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, ModelsealError) or _tls_failure(exc) is not None:
        return False
    aws = _aws_error(exc)
    if aws is not None:
        code, status = aws
        return code in AWS_TRANSIENT or (code not in AWS_DENIED and code not in AWS_INTEGRITY
                                         and (status >= 500 or status == 429))
    if isinstance(exc, HTTPStatusError):
        return exc.status in TRANSIENT_STATUS or exc.status >= 500
    return bool(_class_names(exc) & _TRANSIENT_CLASSES)


def reason(exc: BaseException) -> str:
    """A short, safe description: class names, HTTP status, AWS code, OS error text."""
    if isinstance(exc, ModelsealError):
        return str(exc)
    if isinstance(exc, TransientError):
        return exc.reason
    aws = _aws_error(exc)
    if aws is not None:
        return f"{_code(aws[0])} (HTTP {aws[1]})"
    tls = _tls_failure(exc)
    if tls is not None:
        detail = getattr(tls, "verify_message", None) or getattr(tls, "reason", None) or type(tls).__name__
        return f"TLS {detail}"
    outer = type(exc).__name__
    for e in _chain(exc):
        if isinstance(e, OSError) and e.strerror and type(e).__module__ == "builtins":
            return f"{outer}: {e.strerror}" if e is exc else f"{outer} ({type(e).__name__}: {e.strerror})"
        if e is not exc and type(e).__module__ in ("builtins", "socket", "http.client"):
            return f"{outer} ({type(e).__name__})"
    return outer


def mapped(exc: BaseException, what: str) -> BaseException:
    """The exception to raise for a failure that is not retried (or no longer)."""
    if isinstance(exc, ModelsealError):
        return exc
    tls = _tls_failure(exc)
    if tls is not None:
        return DeniedError(f"{what}: TLS handshake failed ({reason(exc)}); check the CA bundle and client certificate")
    aws = _aws_error(exc)
    if aws is not None:
        code, status = aws
        if code in AWS_INTEGRITY:
            if code == "PreconditionFailed":
                return IntegrityError(f"{what}: the object changed while it was being read ({code})")
            return IntegrityError(f"{what}: {code} (the ciphertext, key or encryption context does not match)")
        if code in AWS_DENIED or status in DENIED_STATUS:
            return DeniedError(f"{what}: denied or not found: {_code(code)} (HTTP {status})")
        if 300 <= status < 500:
            return UsageError(f"{what}: request rejected: {_code(code)} (HTTP {status})")
        return IntegrityError(f"{what}: unexpected answer: {_code(code)} (HTTP {status})")
    if isinstance(exc, HTTPStatusError):
        if exc.status in DENIED_STATUS:
            return DeniedError(f"{what}: denied or not found (HTTP {exc.status})")
        if 300 <= exc.status < 500:
            return UsageError(f"{what}: request rejected (HTTP {exc.status})")
        # A 1xx/2xx where another answer was due, or a status outside HTTP's range.
        return IntegrityError(f"{what}: unexpected answer (HTTP {exc.status})")
    names = _class_names(exc)
    if names & {"botocore.exceptions.NoCredentialsError", "botocore.exceptions.PartialCredentialsError",
                "botocore.exceptions.CredentialRetrievalError", "botocore.exceptions.UnauthorizedSSOTokenError",
                "botocore.exceptions.TokenRetrievalError"}:
        return DeniedError(f"{what}: no usable AWS credentials ({type(exc).__name__})")
    if names & {"botocore.exceptions.NoRegionError", "botocore.exceptions.ParamValidationError",
                "botocore.exceptions.InvalidRegionError", "botocore.exceptions.InvalidEndpointConfigurationError",
                "botocore.exceptions.ProfileNotFound", "requests.exceptions.InvalidURL",
                "requests.exceptions.MissingSchema", "requests.exceptions.InvalidSchema",
                "requests.exceptions.TooManyRedirects", "requests.exceptions.InvalidHeader",
                "urllib3.exceptions.LocationParseError"}:
        return UsageError(f"{what}: {type(exc).__name__}")
    if is_transient(exc):
        return UnavailableError(f"{what} unavailable: {reason(exc)}")
    if isinstance(exc, OSError) and exc.errno is not None:
        return from_os_error(exc, what)
    return exc


def status_error(status: int, headers: Any = None) -> HTTPStatusError:
    # Retry-After in seconds (an HTTP date is ignored); at most 6 digits, so never inf or nan.
    retry_after = untrusted.decimal(headers.get("Retry-After"), 6) if headers is not None else None
    return HTTPStatusError(status, None if retry_after is None else float(retry_after))


def check_status(status: int, what: str, headers: Any = None, ok: tuple[int, ...] = (200,)) -> None:
    """Raise for an HTTP status that is not in `ok`: denied at once, transient to retry, else usage."""
    if status in ok:
        return
    err = status_error(status, headers)
    if is_transient(err):
        raise err
    raise mapped(err, what)


def _float(connection: Connection, name: str, default: float) -> float:
    try:
        return max(0.0, float(connection.extra.get(name, default)))
    except (TypeError, ValueError):
        raise UsageError(f"bad value for query parameter {name}") from None


def log() -> Log:
    """A log for backends; the stage name comes from the CLI's MODELSEAL_STAGE when set."""
    return Log(os.environ.get("MODELSEAL_STAGE") or "modelseal")


def retrying(what: str, connection: Connection, *, sleep: Callable[[float], Any] | None = None) -> Any:
    """The tenacity Retrying object of the policy (for `call`, or to iterate)."""
    tenacity = extras.require("tenacity", "retrying network calls")

    attempts = max(1, int(connection.retries))
    base = _float(connection, "backoff", BACKOFF_BASE)
    cap = _float(connection, "backoff_max", BACKOFF_MAX)
    jitter = tenacity.wait_random_exponential(multiplier=base, max=cap)

    def wait(state: Any) -> float:
        seconds = jitter(state)
        exc = state.outcome.exception() if state.outcome is not None else None
        hint = getattr(exc, "retry_after", None)
        if hint:
            seconds = max(seconds, min(float(hint), RETRY_AFTER_MAX))
        return seconds

    def before_sleep(state: Any) -> None:
        exc = state.outcome.exception()
        log().warning("retry", what=what, attempt=state.attempt_number, of=attempts,
                      reason=reason(exc), wait_s=round(state.next_action.sleep, 3))

    return tenacity.Retrying(
        stop=tenacity.stop_after_attempt(attempts),
        wait=wait,
        retry=tenacity.retry_if_exception(is_transient),
        before_sleep=before_sleep,
        sleep=sleep or time.sleep,
        reraise=False,
    )


def call(what: str, connection: Connection, fn: Callable[..., T], *args: Any,
         sleep: Callable[[float], Any] | None = None, **kwargs: Any) -> T:
    """Run fn under the policy; raise DeniedError/IntegrityError/UsageError/UnavailableError."""
    tenacity = extras.require("tenacity", "retrying network calls")

    try:
        return retrying(what, connection, sleep=sleep)(fn, *args, **kwargs)
    except tenacity.RetryError as gave_up:
        last = gave_up.last_attempt.exception()
        n = gave_up.last_attempt.attempt_number
        raise UnavailableError(f"{what} unavailable after {n} attempts: {reason(last)}") from None
    except BaseException as exc:  # noqa: BLE001 - mapped or re-raised as is
        if not isinstance(exc, Exception):
            raise
        err = mapped(exc, what)
        if err is exc:
            raise
        raise err from None


class Cancelled(Exception):
    """Raised inside a worker when its stream was closed; never retried."""


def interruptible_sleep(event: threading.Event) -> Callable[[float], None]:
    """A sleep for `call` that ends early when `event` is set (the stream was closed)."""

    def sleep(seconds: float) -> None:
        if event.wait(seconds):
            raise Cancelled()

    return sleep
