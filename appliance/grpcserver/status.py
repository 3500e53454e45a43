"""gRPC status codes (kept beside the error kinds, in errdefs) and the end of a request stream."""
from ..errdefs import StatusCode

__all__ = ["EOF", "StatusCode"]


class _EndOfStream:
    def __repr__(self):
        return "EOF"


EOF = _EndOfStream()  # what `context.read()` returns after the client's last message
