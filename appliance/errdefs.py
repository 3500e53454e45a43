"""Error kinds shared by every layer, and their gRPC status codes.

Services raise these; the gRPC and TTRPC adapters turn them into status codes the
way containerd's errdefs does, so `ctr` prints the same messages. The lowest layer:
it imports nothing of ours (the gRPC server takes its StatusCode from here).
"""
import enum
import errno
import os


class StatusCode(enum.Enum):
    """gRPC status codes, as numbered in the gRPC spec (names and values as grpcio's)."""
    OK = (0, "ok")
    CANCELLED = (1, "cancelled")
    UNKNOWN = (2, "unknown")
    INVALID_ARGUMENT = (3, "invalid argument")
    DEADLINE_EXCEEDED = (4, "deadline exceeded")
    NOT_FOUND = (5, "not found")
    ALREADY_EXISTS = (6, "already exists")
    PERMISSION_DENIED = (7, "permission denied")
    RESOURCE_EXHAUSTED = (8, "resource exhausted")
    FAILED_PRECONDITION = (9, "failed precondition")
    ABORTED = (10, "aborted")
    OUT_OF_RANGE = (11, "out of range")
    UNIMPLEMENTED = (12, "unimplemented")
    INTERNAL = (13, "internal")
    UNAVAILABLE = (14, "unavailable")
    DATA_LOSS = (15, "data loss")
    UNAUTHENTICATED = (16, "unauthenticated")


class ApplianceError(Exception):
    code = StatusCode.UNKNOWN

    def __init__(self, message):
        super().__init__(message)
        self.message = message


class NotFound(ApplianceError):
    code = StatusCode.NOT_FOUND


class AlreadyExists(ApplianceError):
    code = StatusCode.ALREADY_EXISTS


class FailedPrecondition(ApplianceError):
    code = StatusCode.FAILED_PRECONDITION


class InvalidArgument(ApplianceError):
    code = StatusCode.INVALID_ARGUMENT


class Unavailable(ApplianceError):
    code = StatusCode.UNAVAILABLE


class Unimplemented(ApplianceError):
    code = StatusCode.UNIMPLEMENTED


class DeadlineExceeded(ApplianceError):
    code = StatusCode.DEADLINE_EXCEEDED


class Aborted(ApplianceError):
    code = StatusCode.ABORTED


class ResourceExhausted(ApplianceError):
    """A full disk (containerd answers UNKNOWN; see README's intended differences)."""
    code = StatusCode.RESOURCE_EXHAUSTED


_BY_CODE = {cls.code: cls for cls in (NotFound, AlreadyExists, FailedPrecondition,
                                       InvalidArgument, Unavailable, Unimplemented,
                                       DeadlineExceeded, Aborted, ResourceExhausted)}


def from_status(code, message):
    """The error kind for a status received from a peer (shim, proxy plugin)."""
    return _BY_CODE.get(code, ApplianceError)(message)


def status_of(exc):
    """(StatusCode, message) for any exception raised by a service."""
    if isinstance(exc, ApplianceError):
        return exc.code, exc.message
    if isinstance(exc, TimeoutError):
        return StatusCode.DEADLINE_EXCEEDED, str(exc) or "deadline exceeded"
    full = no_space(exc)
    if full is not None:
        return StatusCode.RESOURCE_EXHAUSTED, no_space_message(full)
    return StatusCode.UNKNOWN, str(exc) or type(exc).__name__


NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def no_space(exc: BaseException | None) -> OSError | None:
    """The ENOSPC/EDQUOT OSError behind `exc`: itself or one it was raised from or during."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS:
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def no_space_message(exc: OSError, path: str | None = None, op: str = "") -> str:
    """Go's PathError text, `write /path: no space left on device`, for a full disk."""
    path = path or exc.filename
    reason = os.strerror(exc.errno)
    reason = reason[:1].lower() + reason[1:]
    where = " ".join(str(part) for part in (op, path) if part)
    return f"{where}: {reason}" if where else reason


def exhausted(exc: OSError, path: str | None = None, op: str = "") -> ResourceExhausted:
    return ResourceExhausted(no_space_message(exc, path, op))


def q(text: str) -> str:
    """Go's %q, which containerd uses in the messages ctr prints."""
    import json
    return json.dumps(text, ensure_ascii=False)


def path_error(op: str, path: str, exc: OSError) -> str:
    """An OSError as Go's *PathError prints it (containerd's start-up messages):
    "mkdir /var/lib/x: permission denied"."""
    return f"{op} {path}: {(exc.strerror or str(exc)).lower()}"


def mkdir_all(path: str, mode: int = 0o711) -> None:
    """os.makedirs(exist_ok=True); a failure is an OSError whose str() is Go's MkdirAll
    message ("mkdir PATH: not a directory" for a file in the way)."""
    try:
        os.makedirs(path, mode=mode, exist_ok=True)
    except FileExistsError:
        raise NotADirectoryError(f"mkdir {path}: not a directory") from None
    except OSError as exc:
        raise OSError(path_error("mkdir", exc.filename or path, exc)) from None
