"""RLIMIT_NOFILE as Go programs handle it.

The daemon raises its soft limit to the hard limit at start (Go ≥ 1.19 does so in every
program): outside systemd the inherited soft limit is often 1024, which a thousand idle
clients use up. Child processes get back the limit the daemon was started with, as
Go ≥ 1.21's os/exec does: programs that use select(2) need fds below 1024.

Children get it through prlimit(1) (`child_argv`): the child execs prlimit, which sets the
limit and execs the program (same pid, process group and fds). A `preexec_fn` would do it
without the extra exec, but it makes subprocess fork instead of vfork: the daemon then
copies its page tables and takes a write fault on every page it touches afterwards, ≈ 10 ms
of CPU per spawn for a 50 MB heap (bench/NOTES.md) against < 1 ms. `child_preexec` is the
fallback where no prlimit(1) is installed.
"""
from __future__ import annotations

import functools
import logging
import resource
import shutil

log = logging.getLogger("appliance.process")
_original: tuple[int, int] | None = None   # (soft, hard) at start, once raised
_restore = None                            # preexec_fn giving a child the original back
_prlimit: str | None = None                # prlimit(1), found when the limit was raised


def raise_soft_limit() -> None:
    """Soft limit := hard limit; failures are ignored, as Go does."""
    global _original, _restore, _prlimit
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
    _prlimit = shutil.which("prlimit")
    log.debug("raised the open files limit from %d to %d", soft, hard)


def child_preexec():
    """`preexec_fn` for subprocess/asyncio spawns made with `child_argv`: None unless the
    limit was raised and no prlimit(1) is installed.

    A C function (setrlimit) bound to its arguments: no Python code runs in the forked
    child but that call."""
    return _restore if _prlimit is None else None


def child_argv(argv: list[str]) -> list[str]:
    """`argv` for any spawn: run through prlimit(1) when the limit was raised (the program
    looked up in our PATH, as posix_spawnp does). Unchanged when the program is not found:
    the spawn then fails as it would without the limit."""
    if _original is None or _prlimit is None:
        return argv
    program = argv[0] if "/" in argv[0] else shutil.which(argv[0])
    if program is None:
        return argv
    return [_prlimit, f"--nofile={_original[0]}:{_original[1]}", "--", program, *argv[1:]]
