"""What the host offers the CRI's spec builders, read once: the daemon's capabilities, which
security modules are on, the cgroup layout and controllers. A plain value, so that the spec
code is pure and tests can hand it any host (cgroup v2, SELinux, AppArmor) this machine lacks.
"""
from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field

# Linux capabilities by bit number (capability.h).
CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN",
    "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON",
    "CAP_BPF", "CAP_CHECKPOINT_RESTORE")


def capabilities_from_mask(mask: int) -> list[str]:
    return [name for bit, name in enumerate(CAPABILITIES) if mask >> bit & 1]


def capability_mask(names) -> int:
    return sum(1 << CAPABILITIES.index(n) for n in set(names))


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _status_field(name: str) -> str | None:
    for line in _read("/proc/self/status").splitlines():
        key, _, value = line.partition(":")
        if key == name:
            return value.strip()
    return None


def _apparmor() -> bool:
    """As containerd: the module is on, and apparmor_parser is there to load profiles."""
    if not os.path.isdir("/sys/kernel/security/apparmor"):
        return False
    if _read("/sys/module/apparmor/parameters/enabled").strip() != "Y":
        return False
    return any(os.path.exists(p) for p in ("/sbin/apparmor_parser", "/usr/sbin/apparmor_parser"))


def _selinux() -> bool:
    return _read("/sys/fs/selinux/enforce").strip() in ("0", "1")


@dataclass
class Host:
    capabilities: list[str] = field(default_factory=lambda: list(CAPABILITIES))
    apparmor: bool = False
    selinux: bool = False
    seccomp: bool = True
    oom_score_adj: int = 0
    cgroup_v2: bool = False
    hugetlb: bool = False
    swap: bool = True            # memory.memsw (v1) / memory.swap.max (v2) exists
    machine: str = "x86_64"
    kernel: str = "6.1.0"

    @classmethod
    def probe(cls) -> "Host":
        v2 = os.path.exists("/sys/fs/cgroup/cgroup.controllers")
        if v2:
            hugetlb = "hugetlb" in _read("/sys/fs/cgroup/cgroup.controllers").split()
            own = _read("/proc/self/cgroup").strip().rpartition(":")[2]
            swap = os.path.exists(f"/sys/fs/cgroup{own}/memory.swap.max")
        else:
            hugetlb = os.path.isdir("/sys/fs/cgroup/hugetlb")
            swap = os.path.exists("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes")
        oom = _read("/proc/self/oom_score_adj").strip()
        return cls(capabilities=capabilities_from_mask(int(_status_field("CapEff") or "0", 16)),
                   apparmor=_apparmor(), selinux=_selinux(),
                   seccomp=_status_field("Seccomp") is not None,
                   oom_score_adj=int(oom) if oom.lstrip("-").isdigit() else 0,
                   cgroup_v2=v2, hugetlb=hugetlb, swap=swap,
                   machine=platform.machine(), kernel=platform.release())
