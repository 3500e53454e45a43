"""The daemon's gRPC server: asyncio + our own HTTP/2 (see server.py for why).

h2.py: HTTP/2 framing and flow control both ways, sans I/O (compiled _h2.pyx, pure twin
_h2_py.py); call.py: one call (the handlers' context); server.py: connections, dispatch,
listeners and graceful stop; status.py: EOF. Status codes live in errdefs, beside the error
kinds: import them from there.
"""
from .call import Call
from .server import MethodHandler, Server
from .status import EOF

__all__ = ["Call", "EOF", "MethodHandler", "Server"]
