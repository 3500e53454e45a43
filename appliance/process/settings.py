"""Settings the daemon applies to its own process at boot: `oom_score`, `cgroup.path`,
and no OpenSSL until something needs it."""
from __future__ import annotations

import contextlib
import logging
import os
import sys

log = logging.getLogger("appliance.process")
CGROUP_ROOT = "/sys/fs/cgroup"


@contextlib.contextmanager
def asyncio_without_ssl():
    """Imports in this block see no `ssl` module (if it is not loaded yet).

    asyncio imports `ssl` only to offer TLS streams, which only the optional TCP/TLS gRPC
    listener uses (`asyncio_with_ssl`): importing asyncio here keeps OpenSSL (libssl +
    libcrypto, ≈ 4 MiB RSS) out of an idle daemon. Later imports of `ssl` work.
    """
    if "ssl" in sys.modules:
        yield
        return
    sys.modules["ssl"] = None
    try:
        yield
    finally:
        if "ssl" in sys.modules and sys.modules["ssl"] is None:
            del sys.modules["ssl"]


def asyncio_with_ssl():
    """Give asyncio the `ssl` module after all (for the TLS gRPC listener), when it was
    imported inside `asyncio_without_ssl`."""
    import asyncio.base_events
    import asyncio.selector_events
    import asyncio.sslproto
    import importlib
    import ssl
    if asyncio.sslproto.ssl is None:
        importlib.reload(asyncio.sslproto)  # in place: its importers see the new globals
        asyncio.base_events.ssl = asyncio.selector_events.ssl = ssl
    return ssl


class CgroupError(Exception):
    """The daemon cannot join its configured cgroup (fatal, as in containerd)."""


def set_oom_score(score: int, pid: int | None = None) -> bool:
    """Write oom_score_adj; a failure (e.g. negative without CAP_SYS_RESOURCE) is logged."""
    if not score:
        return False
    log.debug("changing OOM score to %d", score)
    try:
        with open(f"/proc/{pid or 'self'}/oom_score_adj", "w") as f:
            f.write(str(score))
        return True
    except OSError as exc:
        log.warning("failed to change OOM score to %d: %s", score, exc.strerror or exc)
        return False


def _v1_hierarchies(mountinfo: str = "/proc/self/mountinfo") -> list[tuple[str, str]]:
    """(mount point, options) of every mounted cgroup v1 hierarchy."""
    found = []
    with open(mountinfo) as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fstype, _, super_opts = (right.split() + ["", "", ""])[:3]
            if fstype == "cgroup":
                found.append((left.split()[4], super_opts))
    return found


def is_unified(root: str = CGROUP_ROOT) -> bool:
    return os.path.exists(os.path.join(root, "cgroup.controllers"))


def _make_dirs(mount: str, path: str, cpuset: bool) -> None:
    """mkdir -p under one hierarchy; new cpuset levels inherit cpus and mems from their parent
    (an empty cpuset refuses tasks)."""
    current = mount
    for part in [p for p in path.split("/") if p]:
        parent, current = current, os.path.join(current, part)
        if os.path.isdir(current):
            continue
        os.mkdir(current)
        if cpuset:
            for name in ("cpuset.cpus", "cpuset.mems"):
                with open(os.path.join(parent, name)) as src:
                    value = src.read().strip()
                with open(os.path.join(current, name), "w") as dst:
                    dst.write(value)


def join_cgroup(path: str, pid: int | None = None) -> list[str]:
    """Move the process into `path` of every v1 hierarchy (or of the unified hierarchy).

    Returns the cgroup directories joined. Creates missing directories as containerd's
    cgroups.New does; never removes them (the daemon lives in them until it exits).
    """
    pid = pid or os.getpid()
    joined = []
    try:
        if is_unified():
            targets = [(CGROUP_ROOT, False)]
        else:
            targets = [(mount, "cpuset" in opts.split(","))
                       for mount, opts in _v1_hierarchies()]
        for mount, cpuset in targets:
            _make_dirs(mount, path, cpuset)
            directory = os.path.join(mount, path.lstrip("/"))
            with open(os.path.join(directory, "cgroup.procs"), "w") as f:
                f.write(str(pid))
            joined.append(directory)
    except OSError as exc:
        raise CgroupError(f"cgroup {path}: {exc.strerror or exc}"
                          f"{': ' + exc.filename if exc.filename else ''}") from None
    log.info("moved daemon into cgroup %s (%d hierarchies)", path, len(joined))
    return joined
