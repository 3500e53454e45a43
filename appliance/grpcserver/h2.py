"""HTTP/2 for a gRPC server, sans I/O (RFC 9113, what gRPC needs): bytes in → events out,
frames out as bytes, flow control both ways. The protocol's description is in _h2_py.py.

Two twins with the same results, errors and state (tests/unit/test_h2_twins.py): the
Connection and its events compiled from _h2.pyx where built (the per-frame work of every
call), else _h2_py.py's pure Python (a source checkout without the build). Constants,
errors and frame builders are _h2_py's in both.
"""
from ._h2_py import *  # noqa: F401,F403 (constants, errors, frame builders)

try:
    from ._h2 import Connection, Data, GoAway, Request, Reset, WindowOpened
except ImportError:   # not built: the pure twin
    from ._h2_py import Connection, Data, GoAway, Request, Reset, WindowOpened  # noqa: F401
