"""Fault injection at named steps, for crash-consistency tests (as containerd's
internal/failpoint): compiled in, off unless CTRAPPLIANCE_FAILPOINTS names some.

    CTRAPPLIANCE_FAILPOINTS="content.commit=kill;snapshot.remove=2*error(disk gone)"

Actions: `error` or `error(text)` raises an ApplianceError (UNKNOWN), `oserror(ENOSPC)` an
OSError with that errno, `kill` SIGKILLs the daemon, `sleep(ms)` blocks the caller (a thread
or, on the event loop, the whole daemon). `N*action` acts on the first N hits only.
With nothing set, `hit` is one dict test.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import signal
import threading
import time
from dataclasses import dataclass

from ..errdefs import ApplianceError

ENV = "CTRAPPLIANCE_FAILPOINTS"
log = logging.getLogger("appliance.failpoint")

_SPEC = re.compile(r"^\s*([\w.-]+)\s*=\s*(?:(\d+)\*)?(\w+)(?:\((.*)\))?\s*$")
_ACTIONS = ("error", "oserror", "kill", "sleep")


@dataclass
class Failpoint:
    name: str
    action: str
    arg: str
    remaining: int | None   # None: every hit


_points: dict[str, Failpoint] = {}
_lock = threading.Lock()


def parse(text: str) -> dict[str, Failpoint]:
    """`name=[N*]action[(arg)]` items separated by `;` (ValueError names a bad one)."""
    points = {}
    for item in filter(str.strip, text.split(";")):
        m = _SPEC.match(item)
        if not m or m.group(3) not in _ACTIONS:
            raise ValueError(f"bad failpoint {item.strip()!r} in {ENV}: expected "
                             "name=[N*]error[(text)]|oserror(ERRNO)|kill|sleep(ms)")
        name, count, action, arg = m.group(1), m.group(2), m.group(3), m.group(4) or ""
        if action == "sleep" and not arg.isdigit():
            raise ValueError(f"bad failpoint {item.strip()!r} in {ENV}: sleep needs (ms)")
        if action == "oserror" and not isinstance(getattr(errno, arg, None), int):
            raise ValueError(f"bad failpoint {item.strip()!r} in {ENV}: unknown errno {arg!r}")
        points[name] = Failpoint(name, action, arg, int(count) if count else None)
    return points


def configure(text: str) -> list[str]:
    """Arm the failpoints `text` names (replacing any); returns their names."""
    global _points
    _points = parse(text)
    return sorted(_points)


def configure_from_env(environ=os.environ) -> list[str]:
    text = environ.get(ENV, "")
    return configure(text) if text.strip() else []


def hit(name: str) -> None:
    """A named step: does nothing unless a failpoint of that name is armed."""
    if _points:
        _fire(name)


def _fire(name: str) -> None:
    point = _points.get(name)
    if point is None:
        return
    with _lock:
        if point.remaining is not None:
            if point.remaining <= 0:
                return
            point.remaining -= 1
    log.warning("failpoint %s: %s%s", name, point.action, f"({point.arg})" if point.arg else "")
    if point.action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(10)   # the signal is delivered before this returns
    elif point.action == "sleep":
        time.sleep(int(point.arg) / 1000)
    elif point.action == "oserror":
        code = getattr(errno, point.arg)
        raise OSError(code, f"{os.strerror(code)} (failpoint {name})")
    else:
        raise ApplianceError(point.arg or f"failpoint {name}: injected error")
