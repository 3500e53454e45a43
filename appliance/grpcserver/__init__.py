"""The daemon's gRPC server: asyncio + our own HTTP/2 (see server.py for why)."""
from .server import Call, MethodHandler, Server
from .status import EOF, StatusCode

__all__ = ["Call", "EOF", "MethodHandler", "Server", "StatusCode"]
