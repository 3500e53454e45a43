"""The figures CRI stats take from cgroups and the network (pure reading and parsing).

CPU in core nanoseconds and memory as containerd 1.6's CRI reports them (cadvisor's working
set: usage minus inactive file pages; available = limit - working set under a limit), from
cgroup v1 (`cpuacct.usage`, `memory.usage_in_bytes`, `memory.stat`'s `total_*`) or v2
(`cpu.stat` usage_usec, `memory.current`, `memory.stat`). Network counters from
`/proc/<pid>/net/dev`, which shows the interfaces of that process's network namespace: the
daemon never enters the pod's namespace.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

CGROUP_ROOT = "/sys/fs/cgroup"
UNLIMITED = 1 << 62       # a v1 memory limit this high means none (it prints 2^63 - 4096)


@dataclass
class Usage:
    cpu_ns: int = 0
    memory_usage: int = 0
    working_set: int = 0
    available: int = 0
    rss: int = 0
    page_faults: int = 0
    major_page_faults: int = 0


def is_v2(root: str = CGROUP_ROOT) -> bool:
    return os.path.exists(os.path.join(root, "cgroup.controllers"))


def dirs_of_pid(pid: int, root: str = CGROUP_ROOT) -> dict[str, str]:
    """controller -> cgroup directory of a process ("" -> its v2 directory on a v2 host);
    empty when the process is gone."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    v2 = is_v2(root)
    out = {}
    for line in lines:
        hid, controllers, path = line.split(":", 2)
        if v2 and hid == "0":
            out[""] = os.path.join(root, path.lstrip("/"))
        elif not v2 and controllers:
            for c in controllers.split(","):
                out[c] = os.path.join(root, c, path.lstrip("/"))
    return out


def dirs_of_path(path: str, root: str = CGROUP_ROOT) -> dict[str, str]:
    """The directories of a cgroup path (a pod's cgroup_parent) on this host's hierarchy."""
    rel = path.lstrip("/")
    if is_v2(root):
        return {"": os.path.join(root, rel)}
    return {c: os.path.join(root, c, rel) for c in ("cpuacct", "memory", "pids")}


def _read(directory: str | None, name: str) -> str | None:
    if directory is None:
        return None
    try:
        with open(os.path.join(directory, name)) as f:
            return f.read()
    except OSError:
        return None


def _stat(text: str | None) -> dict[str, int]:
    out = {}
    for line in (text or "").splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            out[key] = int(value)
    return out


def read_usage(dirs: dict[str, str]) -> Usage | None:
    """The cgroup's figures; None when it is gone (no CPU file)."""
    if "" in dirs:
        return parse_v2(_read(dirs[""], "cpu.stat"), _read(dirs[""], "memory.current"),
                        _read(dirs[""], "memory.max"), _read(dirs[""], "memory.stat"))
    memory = dirs.get("memory")
    return parse_v1(_read(dirs.get("cpuacct"), "cpuacct.usage"),
                    _read(memory, "memory.usage_in_bytes"),
                    _read(memory, "memory.limit_in_bytes"), _read(memory, "memory.stat"))


def parse_v1(cpu: str | None, usage: str | None, limit: str | None,
             stat: str | None) -> Usage | None:
    if cpu is None:
        return None
    s = _stat(stat)
    used = int(usage) if usage and usage.strip().isdigit() else 0
    return _memory(Usage(cpu_ns=int(cpu)), used, _limit(limit), s.get("total_inactive_file", 0),
                   s.get("total_rss", 0), s.get("total_pgfault", 0),
                   s.get("total_pgmajfault", 0))


def parse_v2(cpu_stat: str | None, current: str | None, maximum: str | None,
             stat: str | None) -> Usage | None:
    cpu = _stat(cpu_stat)
    if "usage_usec" not in cpu:
        return None
    s = _stat(stat)
    used = int(current) if current and current.strip().isdigit() else 0
    return _memory(Usage(cpu_ns=cpu["usage_usec"] * 1000), used, _limit(maximum),
                   s.get("inactive_file", 0), s.get("anon", 0), s.get("pgfault", 0),
                   s.get("pgmajfault", 0))


def _limit(text: str | None) -> int | None:
    text = (text or "").strip()
    if not text.isdigit() or int(text) >= UNLIMITED:
        return None         # "max" (v2) or v1's huge default
    return int(text)


def _memory(u: Usage, used: int, limit: int | None, inactive_file: int, rss: int,
            faults: int, major: int) -> Usage:
    u.memory_usage = used
    u.working_set = used - inactive_file if inactive_file < used else used
    u.available = limit - u.working_set if limit is not None and limit > u.working_set else 0
    u.rss, u.page_faults, u.major_page_faults = rss, faults, major
    return u


def process_count(dirs: dict[str, str]) -> int:
    """Processes in the cgroup (the pids controller's, or the v2 directory's)."""
    text = _read(dirs.get("pids", dirs.get("")), "cgroup.procs")
    return len((text or "").split())


def net_dev(pid: int) -> dict[str, tuple[int, int, int, int]]:
    """interface -> (rx_bytes, rx_errors, tx_bytes, tx_errors) in the process's netns."""
    return parse_net_dev(_read(f"/proc/{pid}/net", "dev") or "")


def parse_net_dev(text: str) -> dict[str, tuple[int, int, int, int]]:
    out = {}
    for line in text.splitlines()[2:]:
        name, _, counters = line.partition(":")
        fields = counters.split()
        if len(fields) >= 11:
            out[name.strip()] = (int(fields[0]), int(fields[2]), int(fields[8]),
                                 int(fields[10]))
    return out
