"""The daemon's gRPC server: asyncio + our own HTTP/2 (see server.py for why)."""
from .server import Call, Server

__all__ = ["Call", "Server"]
