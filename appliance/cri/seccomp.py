"""Seccomp for CRI containers: the RuntimeDefault profile, and Localhost profiles read from disk.

RuntimeDefault is written here from what each system call does, not copied from another
runtime's profile: a container may call everything that acts only on its own process, files,
memory, descriptors, sockets and IPC objects; calls that change the host (modules, clocks,
mounts, namespaces, reboot, swap, kernel keyrings, accounting, tracing other processes, raw
I/O ports) are refused with EPERM unless the container holds the capability that governs them.
It is equivalent in effect to containerd 1.6.20's default (a test compares the two call by
call), so a pod sees the same errors under either daemon.
"""
from __future__ import annotations

import json
import os
import platform

from ..errdefs import ApplianceError

ALLOW, ERRNO = "SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO"
ENOSYS = 38

# Calls that act on the caller's own resources: allowed to every container.
SAFE_GROUPS: dict[str, tuple[str, ...]] = {
    "paths and file metadata": (
        "access", "faccessat", "faccessat2", "chdir", "fchdir", "getcwd", "umask",
        "chmod", "fchmod", "fchmodat", "chown", "chown32", "fchown", "fchown32", "fchownat",
        "lchown", "lchown32", "creat", "open", "openat", "openat2", "close", "close_range",
        "link", "linkat", "symlink", "symlinkat", "unlink", "unlinkat", "rename", "renameat",
        "renameat2", "mkdir", "mkdirat", "rmdir", "mknod", "mknodat", "readlink", "readlinkat",
        "stat", "stat64", "lstat", "lstat64", "fstat", "fstat64", "fstatat64", "newfstatat",
        "statx", "statfs", "statfs64", "fstatfs", "fstatfs64", "truncate", "truncate64",
        "ftruncate", "ftruncate64", "utime", "utimes", "utimensat", "utimensat_time64",
        "futimesat", "getdents", "getdents64", "fallocate", "fadvise64", "fadvise64_64",
        "readahead", "flock", "fcntl", "fcntl64", "fsync", "fdatasync", "sync", "syncfs",
        "sync_file_range"),
    "extended attributes": (
        "getxattr", "lgetxattr", "fgetxattr", "setxattr", "lsetxattr", "fsetxattr",
        "listxattr", "llistxattr", "flistxattr", "removexattr", "lremovexattr", "fremovexattr"),
    "reading and writing descriptors": (
        "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev",
        "preadv2", "pwritev2", "lseek", "_llseek", "sendfile", "sendfile64", "splice", "tee",
        "vmsplice", "copy_file_range", "dup", "dup2", "dup3", "pipe", "pipe2", "ioctl"),
    "waiting for events": (
        "select", "_newselect", "pselect6", "pselect6_time64", "poll", "ppoll",
        "ppoll_time64", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old",
        "epoll_wait", "epoll_wait_old", "epoll_pwait", "epoll_pwait2", "eventfd", "eventfd2",
        "signalfd", "signalfd4", "timerfd_create", "timerfd_settime", "timerfd_settime64",
        "timerfd_gettime", "timerfd_gettime64", "inotify_init", "inotify_init1",
        "inotify_add_watch", "inotify_rm_watch", "fanotify_mark"),
    "asynchronous I/O": (
        "io_setup", "io_destroy", "io_submit", "io_cancel", "io_getevents", "io_pgetevents",
        "io_pgetevents_time64", "io_uring_setup", "io_uring_enter", "io_uring_register"),
    "own memory": (
        "brk", "mmap", "mmap2", "munmap", "mremap", "mprotect", "madvise", "mincore", "msync",
        "mlock", "mlock2", "mlockall", "munlock", "munlockall", "remap_file_pages",
        "membarrier", "memfd_create", "memfd_secret", "pkey_alloc", "pkey_free",
        "pkey_mprotect"),
    "own processes and threads": (
        "fork", "vfork", "execve", "execveat", "exit", "exit_group", "wait4", "waitid",
        "waitpid", "getpid", "getppid", "gettid", "getpgid", "setpgid", "getpgrp", "getsid",
        "setsid", "set_tid_address", "prctl", "prlimit64", "getrlimit", "setrlimit",
        "ugetrlimit", "getrusage", "times", "getpriority", "setpriority", "ioprio_get",
        "ioprio_set", "capget", "capset", "seccomp", "landlock_create_ruleset",
        "landlock_add_rule", "landlock_restrict_self", "restart_syscall", "rseq",
        "set_robust_list", "get_robust_list", "futex", "futex_time64", "futex_waitv",
        "pidfd_open", "pidfd_send_signal", "process_mrelease", "get_thread_area",
        "set_thread_area", "uname", "sysinfo", "getcpu", "getrandom"),
    "scheduling": (
        "sched_yield", "sched_getaffinity", "sched_setaffinity", "sched_getattr",
        "sched_setattr", "sched_getparam", "sched_setparam", "sched_getscheduler",
        "sched_setscheduler", "sched_get_priority_max", "sched_get_priority_min",
        "sched_rr_get_interval", "sched_rr_get_interval_time64"),
    "user and group ids (bounded by the container's capabilities)": (
        "getuid", "getuid32", "geteuid", "geteuid32", "getgid", "getgid32", "getegid",
        "getegid32", "getresuid", "getresuid32", "getresgid", "getresgid32", "getgroups",
        "getgroups32", "setuid", "setuid32", "setgid", "setgid32", "setreuid", "setreuid32",
        "setregid", "setregid32", "setresuid", "setresuid32", "setresgid", "setresgid32",
        "setfsuid", "setfsuid32", "setfsgid", "setfsgid32", "setgroups", "setgroups32"),
    "signals": (
        "kill", "tkill", "tgkill", "rt_sigaction", "rt_sigprocmask", "rt_sigpending",
        "rt_sigsuspend", "rt_sigtimedwait", "rt_sigtimedwait_time64", "rt_sigqueueinfo",
        "rt_tgsigqueueinfo", "rt_sigreturn", "sigreturn", "sigprocmask", "sigaltstack",
        "pause", "alarm"),
    # adjtimex/clock_adjtime only read the clock without CAP_SYS_TIME.
    "reading clocks, sleeping, timers": (
        "time", "gettimeofday", "clock_gettime", "clock_gettime64", "clock_getres",
        "clock_getres_time64", "clock_nanosleep", "clock_nanosleep_time64", "nanosleep",
        "adjtimex", "clock_adjtime", "clock_adjtime64", "getitimer", "setitimer",
        "timer_create", "timer_delete", "timer_settime", "timer_settime64", "timer_gettime",
        "timer_gettime64", "timer_getoverrun"),
    "sockets (in the pod's network namespace)": (
        "socket", "socketpair", "socketcall", "bind", "listen", "accept", "accept4",
        "connect", "getsockname", "getpeername", "getsockopt", "setsockopt", "shutdown",
        "send", "sendto", "sendmsg", "sendmmsg", "recv", "recvfrom", "recvmsg", "recvmmsg",
        "recvmmsg_time64"),
    "System V and POSIX IPC (in the pod's IPC namespace)": (
        "ipc", "msgget", "msgsnd", "msgrcv", "msgctl", "semget", "semop", "semtimedop",
        "semtimedop_time64", "semctl", "shmget", "shmat", "shmdt", "shmctl", "mq_open",
        "mq_unlink", "mq_timedsend", "mq_timedsend_time64", "mq_timedreceive",
        "mq_timedreceive_time64", "mq_notify", "mq_getsetattr"),
}

# Calls each capability governs: allowed only when the container's bounding set holds it.
BY_CAPABILITY: dict[str, tuple[str, ...]] = {
    "CAP_DAC_READ_SEARCH": ("open_by_handle_at",),
    "CAP_SYS_ADMIN": (
        "mount", "umount", "umount2", "mount_setattr", "move_mount", "open_tree", "fsopen",
        "fsconfig", "fsmount", "fspick", "unshare", "setns", "clone", "clone3",
        "sethostname", "setdomainname", "quotactl", "quotactl_fd", "name_to_handle_at",
        "fanotify_init", "lookup_dcookie", "syslog", "bpf", "perf_event_open"),
    "CAP_SYS_BOOT": ("reboot",),
    "CAP_SYS_CHROOT": ("chroot",),
    "CAP_SYS_MODULE": ("init_module", "finit_module", "delete_module"),
    "CAP_SYS_PACCT": ("acct",),
    "CAP_SYS_PTRACE": ("ptrace", "kcmp", "pidfd_getfd", "process_madvise",
                       "process_vm_readv", "process_vm_writev"),
    "CAP_SYS_RAWIO": ("iopl", "ioperm"),
    "CAP_SYS_TIME": ("settimeofday", "stime", "clock_settime", "clock_settime64"),
    "CAP_SYS_TTY_CONFIG": ("vhangup",),
    "CAP_SYS_NICE": ("mbind", "set_mempolicy", "get_mempolicy"),
    "CAP_SYSLOG": ("syslog",),
    "CAP_BPF": ("bpf",),
    "CAP_PERFMON": ("perf_event_open",),
}

# personality(2): the plain Linux and 32-bit personas, with or without UNAME26, and the query.
PER_LINUX, PER_LINUX32, UNAME26, PERSONALITY_QUERY = 0x0, 0x0008, 0x0020000, 0xFFFFFFFF
PERSONAS = (PER_LINUX, PER_LINUX32, UNAME26, UNAME26 | PER_LINUX32, PERSONALITY_QUERY)

# clone(2) flags that create namespaces: without CAP_SYS_ADMIN clone is allowed only without them.
CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS = 0x00020000, 0x02000000, 0x04000000
CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = (0x08000000, 0x10000000,
                                                          0x20000000, 0x40000000)
NAMESPACE_FLAGS = (CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER
                   | CLONE_NEWPID | CLONE_NEWNET)

# Per machine: the seccomp architectures a process may run as, and machine-specific calls.
ARCHITECTURES = {
    "x86_64": ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"),
    "aarch64": ("SCMP_ARCH_ARM", "SCMP_ARCH_AARCH64"),
}
MACHINE_CALLS = {
    "x86_64": ("arch_prctl", "modify_ldt"),
    "aarch64": ("arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint",
                "cacheflush", "set_tls"),
}


def _allow(names, args=None) -> dict:
    rule = {"names": sorted(names), "action": ALLOW}
    if args:
        rule["args"] = args
    return rule


def _kernel_at_least(release: str, major: int, minor: int) -> bool:
    try:
        parts = [int(p) for p in release.split("-")[0].split(".")[:2]]
    except ValueError:
        return False
    return tuple(parts) >= (major, minor)


def runtime_default(capabilities: list[str], machine: str | None = None,
                    kernel: str | None = None) -> dict:
    """The RuntimeDefault profile for a process whose bounding set is `capabilities`."""
    machine = machine or platform.machine()
    kernel = kernel or platform.release()
    caps = set(capabilities)
    rules = [_allow({n for group in SAFE_GROUPS.values() for n in group})]
    rules += [_allow(["personality"], [{"index": 0, "value": p, "op": "SCMP_CMP_EQ"}])
              for p in PERSONAS]
    if _kernel_at_least(kernel, 4, 8):
        # Before 4.8 a traced process could use ptrace to escape seccomp.
        rules.append(_allow(["ptrace"]))
    if MACHINE_CALLS.get(machine):
        rules.append(_allow(MACHINE_CALLS[machine]))
    gated = {n for cap, names in BY_CAPABILITY.items() if cap in caps for n in names}
    if gated:
        rules.append(_allow(gated))
    if "CAP_SYS_ADMIN" not in caps:
        rules.append(_allow(["clone"], [{"index": 0, "value": NAMESPACE_FLAGS,
                                         "op": "SCMP_CMP_MASKED_EQ"}]))
        # clone3's flags are in memory seccomp cannot read: ENOSYS makes libc fall back to clone.
        rules.append({"names": ["clone3"], "action": ERRNO, "errnoRet": ENOSYS})
    return {"defaultAction": ERRNO, "architectures": list(ARCHITECTURES.get(machine, ())),
            "syscalls": rules}


def load_localhost(path: str) -> dict:
    """A Localhost profile: OCI runtime-spec `linux.seccomp` JSON, read at create time."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ApplianceError(f'cannot load seccomp profile "{path}": open {path}: '
                             f'{os.strerror(exc.errno).lower()}') from None
    try:
        profile = json.loads(data)
        if not isinstance(profile, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        raise ApplianceError(f'decoding seccomp profile failed "{path}": {exc}') from None
    return profile
