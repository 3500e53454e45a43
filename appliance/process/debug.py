"""The debug endpoint (`debug.address`): /debug/vars and /debug/pprof/ as far as Python allows.

`ctr pprof --debug-socket PATH goroutines` gets a dump of every thread's and every
asyncio task's stack. Go profiles (heap, profile, trace, block, threadcreate, …)
do not exist in a Python daemon: those paths answer 501 with a status line saying
so, which ctr prints ("http get failed with status: 501 …").
"""
from __future__ import annotations

import asyncio
import gc
import json
import os
import platform
import sys
import threading
import time

from .listeners import Request, Response

STARTED = time.time()
GO_ONLY_PROFILES = ("heap", "profile", "trace", "block", "threadcreate", "mutex", "allocs",
                    "symbol")
INDEX = """/debug/pprof/ (ctrappliance, a Python daemon)

goroutine?debug=2  stacks of every thread and asyncio task (ctr pprof goroutines)
cmdline            the daemon's command line, NUL-separated
/debug/vars        JSON: cmdline, memstats (process memory, Python GC), runtime counts

Go profiles (heap, profile, trace, block, threadcreate, mutex, allocs, symbol) do not
exist in a Python process and answer 501.
"""


def _proc_status() -> dict[str, int]:
    """VmRSS/VmHWM/VmSize (bytes) and Threads from /proc/self/status."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM", "VmSize", "Threads"):
                    number = int(value.split()[0])
                    out[key] = number * 1024 if key.startswith("Vm") else number
    except OSError:
        pass
    return out


def variables() -> dict:
    """/debug/vars, shaped like Go's expvar (cmdline, memstats) plus Python's own."""
    status = _proc_status()
    gc_stats = gc.get_stats()
    try:
        tasks = len(asyncio.all_tasks())
    except RuntimeError:
        tasks = 0
    return {
        "cmdline": sys.argv,
        "memstats": {
            "Sys": status.get("VmSize", 0),
            "RSS": status.get("VmRSS", 0),
            "PeakRSS": status.get("VmHWM", 0),
            "NumGC": sum(s["collections"] for s in gc_stats),
            "GCGenerations": gc_stats,
            "GCCount": list(gc.get_count()),
        },
        "runtime": {
            "implementation": platform.python_implementation(),
            "version": platform.python_version(),
            "pid": os.getpid(),
            "threads": threading.active_count(),
            "os_threads": status.get("Threads", 0),
            "asyncio_tasks": tasks,
            "uptime_seconds": round(time.time() - STARTED, 3),
        },
    }


async def handle(request: Request) -> Response:
    path = request.path
    if path == "/debug/vars":
        return Response(body=json.dumps(variables(), indent=1).encode() + b"\n",
                        content_type="application/json; charset=utf-8")
    if path in ("/debug/pprof", "/debug/pprof/"):
        return Response(body=INDEX.encode())
    if path == "/debug/pprof/goroutine":
        from .stacks import dump_stacks
        return Response(body=dump_stacks().encode() + b"\n")
    if path == "/debug/pprof/cmdline":
        return Response(body="\x00".join(sys.argv).encode())
    name = path.rsplit("/", 1)[-1]
    if path.startswith("/debug/pprof/") and name in GO_ONLY_PROFILES:
        reason = (f"Not Implemented: no Go {name} profile in ctrappliance, a Python daemon; "
                  f"use goroutines for thread and task stacks")
        return Response(501, (reason + "\n").encode(), reason=reason)
    return Response(404, b"404 page not found\n")
