"""containerd's per-task cgroup metrics (metrics/cgroups/v1): the figures of a task's cgroups."""
from __future__ import annotations

import os

# containerd's metrics/cgroups/v1 names: (controller, file) per metric
TASK_CGROUP_FILES = {
    "container_cpu_total_nanoseconds": ("cpuacct", "cpuacct.usage"),
    "container_cpu_user_nanoseconds": ("cpuacct", "cpuacct.usage_user"),
    "container_cpu_kernel_nanoseconds": ("cpuacct", "cpuacct.usage_sys"),
    "container_memory_usage_usage_bytes": ("memory", "memory.usage_in_bytes"),
    "container_memory_usage_limit_bytes": ("memory", "memory.limit_in_bytes"),
    "container_memory_usage_max_bytes": ("memory", "memory.max_usage_in_bytes"),
    "container_pids_current": ("pids", "pids.current"),
    "container_pids_limit": ("pids", "pids.max"),
}
TASK_CGROUP_DOCS = {
    "container_cpu_total_nanoseconds": "The total cpu time",
    "container_cpu_user_nanoseconds": "The total user cpu time",
    "container_cpu_kernel_nanoseconds": "The total kernel cpu time",
    "container_memory_usage_usage_bytes": "The memory usage",
    "container_memory_usage_limit_bytes": "The memory limit",
    "container_memory_usage_max_bytes": "The memory maximum usage",
    "container_pids_current": "The current number of pids",
    "container_pids_limit": "The limit to the number of pids allowed",
}


def task_cgroup_values(pid: int, cgroup_root: str = "/sys/fs/cgroup") -> dict[str, float]:
    """The v1 cgroup figures of a task's init process (empty when it is gone)."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            paths = {}
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                for c in controllers.split(","):
                    paths[c] = path
    except OSError:
        return {}
    values = {}
    for name, (controller, filename) in TASK_CGROUP_FILES.items():
        if controller not in paths:
            continue
        mount = "cpu,cpuacct" if controller == "cpuacct" and not os.path.isdir(
            os.path.join(cgroup_root, "cpuacct")) else controller
        try:
            with open(os.path.join(cgroup_root, mount, paths[controller].lstrip("/"),
                                   filename)) as f:
                text = f.read().strip()
        except OSError:
            continue
        values[name] = 0.0 if text == "max" else float(text)
    return values
