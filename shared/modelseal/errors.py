"""The error hierarchy, and the one place where errors become exit codes.

Every failure a user can cause or meet is one of these classes; the CLI maps
the class to the documented exit code. Messages are one line, name what was
wrong, and never carry key material.
"""

from __future__ import annotations

import errno
import signal

OK = 0
INTERNAL = 1


class ModelsealError(Exception):
    """Base class: a failure with a category, a one-line message and an exit code."""

    exit_code = INTERNAL
    category = "internal"

    def __init__(self, message: str) -> None:
        # One line, always: these end up in JSON logs and termination messages.
        super().__init__(" ".join(str(message).split()))


class UsageError(ModelsealError):
    """Bad flags, bad URIs, bad configuration."""

    exit_code = 2
    category = "usage"


class DeniedError(ModelsealError):
    """Denied or not found (401/403/404, NoSuchKey, a missing file). Never retried."""

    exit_code = 3
    category = "denied"


class IntegrityError(ModelsealError):
    """Authentication tag, wrong key, digest mismatch, malformed or truncated input."""

    exit_code = 4
    category = "integrity"


class UnavailableError(ModelsealError):
    """A service stayed unavailable after retries."""

    exit_code = 5
    category = "unavailable"


class CapacityError(ModelsealError):
    """No space left, or a configured limit exceeded."""

    exit_code = 6
    category = "capacity"


class UnsafeError(ModelsealError):
    """Refused as unsafe: plaintext to a non-memory filesystem, a hostile archive entry."""

    exit_code = 7
    category = "unsafe"


class Stopped(BaseException):
    """Raised in the main thread when SIGTERM (the kubelet) or SIGINT (a terminal) arrives (cli.py).

    A BaseException, like KeyboardInterrupt, so that no `except Exception` on
    the way takes it for a failure to handle, while every `finally` and `with`
    on the way runs: the stage removes what it made (NAME.partial, the
    staging directory, an upload) exactly as it does on any error.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class StoppedError(ModelsealError):
    """The stage was stopped by a signal: exit 128 + its number (143 for SIGTERM, 130 for SIGINT)."""

    category = "stopped"

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}; what this stage had begun to write is removed")
        self.exit_code = 128 + signum


def from_os_error(exc: OSError, what: str = "") -> ModelsealError:
    """Classify an OSError that escaped a stage.

    The message names the path and the system's reason but never the data.
    """
    where = what or (exc.filename and str(exc.filename)) or "file"
    reason = exc.strerror or type(exc).__name__
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return CapacityError(f"{where}: {reason}")
    if exc.errno in (errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOTDIR):
        return DeniedError(f"{where}: {reason}")
    if exc.errno in (errno.EISDIR, errno.EINVAL, errno.ENAMETOOLONG):
        return UsageError(f"{where}: {reason}")
    if exc.errno in (errno.ELOOP, errno.EXDEV):
        return UnsafeError(f"{where}: {reason}")
    return ModelsealError(f"{where}: {reason}")


def classify(exc: BaseException) -> ModelsealError:
    """Turn any exception into a ModelsealError for reporting."""
    if isinstance(exc, ModelsealError):
        return exc
    if isinstance(exc, Stopped):
        return StoppedError(exc.signum)
    if isinstance(exc, KeyboardInterrupt):  # SIGINT before cli.py's handler was in place
        return StoppedError(signal.SIGINT)
    if isinstance(exc, MemoryError):
        return CapacityError("out of memory")
    if isinstance(exc, OSError):
        return from_os_error(exc)
    # An unexpected exception: report its type and where, not its text, which
    # could quote data we were handling.
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = f" at {tb.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno}" if tb else ""
    return ModelsealError(f"internal error: {type(exc).__name__}{where}")


class NotARecipient(IntegrityError):
    """No stanza of a `.seal` v2 header is addressed to the key given (exit 4, as a wrong key)."""
