"""RLIMIT_NOFILE as Go programs handle it.

The daemon raises its soft limit to the hard limit at start (Go ≥ 1.19 does so in every
program): outside systemd the inherited soft limit is often 1024, which a thousand idle
clients use up. Child processes get back the limit the daemon was started with, as
Go ≥ 1.21's os/exec does: programs that use select(2) need fds below 1024.
"""
from __future__ import annotations

import functools
import logging
import resource

log = logging.getLogger("appliance.process")
_original: tuple[int, int] | None = None   # (soft, hard) at start, once raised
_restore = None                            # preexec_fn giving a child the original back


def raise_soft_limit() -> None:
    """Soft limit := hard limit; failures are ignored, as Go does."""
    global _original, _restore
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard or _original is not None:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError) as exc:   # e.g. an infinite hard limit above fs.nr_open
        log.debug("cannot raise the open files limit to %d: %s", hard, exc)
        return
    _original = (soft, hard)
    _restore = functools.partial(resource.setrlimit, resource.RLIMIT_NOFILE, _original)
    log.debug("raised the open files limit from %d to %d", soft, hard)


def child_preexec():
    """`preexec_fn` for subprocess/asyncio spawns: None unless the limit was raised.

    A C function (setrlimit) bound to its arguments: no Python code runs in the forked
    child but that call."""
    return _restore


def child_argv(argv: list[str]) -> list[str]:
    """`argv` for posix_spawnp, which cannot set limits: run through prlimit(1) when the
    limit was raised (the program looked up in our PATH, as posix_spawnp does)."""
    import shutil
    prlimit = shutil.which("prlimit") if _original is not None else None
    if prlimit is None:
        return argv
    return [prlimit, f"--nofile={_original[0]}:{_original[1]}", "--",
            shutil.which(argv[0]) or argv[0], *argv[1:]]
