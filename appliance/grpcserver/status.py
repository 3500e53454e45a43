"""The end of a request stream. (gRPC status codes live beside the error kinds, in errdefs.)"""

__all__ = ["EOF"]


class _EndOfStream:
    def __repr__(self):
        return "EOF"


EOF = _EndOfStream()  # what `context.read()` returns after the client's last message
