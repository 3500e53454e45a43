"""The daemon's event loop: uvloop's (libuv, Cython) unless `CTRAPPLIANCE_EVENT_LOOP=asyncio`
asks for the standard library's.

Nothing in the daemon depends on one loop's internals: listeners accept through
`acceptor.Listener` and children run through `spawn.run` (add_reader on pipes and a
pidfd), both on public loop methods. uvloop measured 26–28 % fewer instructions per gRPC
call than asyncio's selector loop (bench/NOTES.md, "uvloop").
"""
from __future__ import annotations

import asyncio
import os

ENV = "CTRAPPLIANCE_EVENT_LOOP"
LOOPS = ("uvloop", "asyncio")


def kind() -> str:
    """The loop asked for (uvloop by default); ValueError for an unknown name."""
    name = os.environ.get(ENV, "") or LOOPS[0]
    if name not in LOOPS:
        raise ValueError(f"{ENV}={name!r}: expected one of {', '.join(LOOPS)}")
    return name


def new_event_loop() -> asyncio.AbstractEventLoop:
    if kind() == "asyncio":
        return asyncio.SelectorEventLoop()
    import uvloop   # imports ssl (OpenSSL), which the stock loop leaves out until TLS is used
    return uvloop.new_event_loop()
