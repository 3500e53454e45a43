"""Container resources for the CRI: the OCI `linux.resources` a CreateContainer or
UpdateContainerResources request asks for (as containerd 1.6.20's WithResources), the cgroup
path a pod's cgroup_parent names (cgroupfs or systemd driver), and the cgroup files runc writes
for those resources under cgroup v1 and v2, in both directions, as pure functions.
"""
from __future__ import annotations

import copy
import json
import logging
import os

from ..errdefs import ApplianceError
from .host import Host

log = logging.getLogger(__name__)

RESOURCES_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"
HUGETLB_MISSING = ("huge pages limits are specified but hugetlb cgroup controller is missing. "
                   "Please set tolerate_missing_hugetlb_controller to `true` to ignore this error")
SANDBOX_CPU_SHARES = 2


def cgroups_path(parent: str, container_id: str) -> str:
    """A container's cgroupsPath under its pod's cgroup_parent: `<slice>:cri-containerd:<id>`
    for the systemd driver (a parent ending in .slice: runc's systemd form), else a path."""
    base = os.path.basename(parent.rstrip("/"))
    if base.endswith(".slice"):
        return f"{base}:cri-containerd:{container_id}"
    return os.path.join(parent, container_id)


def systemd_unit_path(cgroups_path_: str) -> str:
    """Where runc's systemd driver puts `slice:prefix:name` in the cgroup tree: the slice's
    ancestors expanded (a-b-c.slice lives in a.slice/a-b.slice/a-b-c.slice) and the scope
    `<prefix>-<name>.scope` under it."""
    slice_, prefix, name = cgroups_path_.split(":")
    parts, path = slice_.removesuffix(".slice").split("-"), []
    if slice_ != "-.slice":
        for i in range(1, len(parts) + 1):
            path.append("-".join(parts[:i]) + ".slice")
    return "/" + "/".join(path + [f"{prefix}-{name}.scope"])


def apply_resources(spec: dict, resources, cfg, *, host: Host | None = None) -> None:
    """A request's LinuxContainerResources on the spec's linux.resources."""
    if resources is None:
        return
    host = host or Host.probe()
    res = spec.setdefault("linux", {}).setdefault("resources", {})
    cpu, memory = res.setdefault("cpu", {}), res.setdefault("memory", {})
    for key, value in (("period", resources.cpu_period), ("quota", resources.cpu_quota),
                       ("shares", resources.cpu_shares)):
        if value:
            cpu[key] = value
    if resources.cpuset_cpus:
        cpu["cpus"] = resources.cpuset_cpus
    if resources.cpuset_mems:
        cpu["mems"] = resources.cpuset_mems
    if resources.memory_limit_in_bytes:
        memory["limit"] = resources.memory_limit_in_bytes
        # Swap equal to the limit: no swapping unless asked for.
        if not resources.memory_swap_limit_in_bytes and host.swap:
            memory["swap"] = resources.memory_limit_in_bytes
    if resources.memory_swap_limit_in_bytes:
        memory["swap"] = resources.memory_swap_limit_in_bytes
    if not cfg.disable_hugetlb_controller:
        if host.hugetlb:
            res.setdefault("hugepageLimits", []).extend(
                {"pageSize": h.page_size, "limit": h.limit} for h in resources.hugepage_limits)
        elif not cfg.tolerate_missing_hugetlb_controller:
            raise ApplianceError(HUGETLB_MISSING)
        else:
            log.warning("hugetlb cgroup controller is absent. skipping huge pages limits")
    if resources.unified:
        res.setdefault("unified", {}).update(resources.unified)


def apply_cgroup(spec: dict, parent: str, container_id: str, cfg) -> None:
    """cgroupsPath from the pod's cgroup_parent, or none at all with disable_cgroup."""
    linux = spec.setdefault("linux", {})
    if cfg.disable_cgroup:
        linux.pop("cgroupsPath", None)
    elif parent:
        linux["cgroupsPath"] = cgroups_path(parent, container_id)


def update_resources(spec: dict, resources, cfg, *,
                     host: Host | None = None) -> tuple[dict, tuple[str, bytes]]:
    """UpdateContainerResources: the new spec to record (the old one is left alone, to be put
    back if the update fails) and the OCI LinuxResources, as the Any the task manager's Update
    sends to the shim (runc update)."""
    new = copy.deepcopy(spec)
    new.setdefault("linux", {})
    try:
        apply_resources(new, resources, cfg, host=host)
    except ApplianceError as exc:
        raise ApplianceError(f"failed to update resources: failed to update resource in spec: "
                             f"unable to set linux container resources: {exc}") from None
    body = json.dumps(new["linux"].get("resources", {}), separators=(",", ":")).encode()
    return new, (RESOURCES_TYPE_URL, body)


def status_resources(spec: dict) -> dict:
    """ContainerStatus.resources.linux from the recorded spec, as keyword arguments of
    LinuxContainerResources (hugepage limits as (page_size, limit) pairs)."""
    linux = spec.get("linux")
    if linux is None:
        return {}
    out = {}
    adj = spec.get("process", {}).get("oomScoreAdj")
    if adj is not None:
        out["oom_score_adj"] = adj
    res = linux.get("resources") or {}
    cpu, memory = res.get("cpu"), res.get("memory") or {}
    if cpu is not None:
        for key, name in (("period", "cpu_period"), ("quota", "cpu_quota"),
                          ("shares", "cpu_shares")):
            if key in cpu:
                out[name] = cpu[key]
        out["cpuset_cpus"], out["cpuset_mems"] = cpu.get("cpus", ""), cpu.get("mems", "")
    if "limit" in memory:
        out["memory_limit_in_bytes"] = memory["limit"]
    if "swap" in memory:
        out["memory_swap_limit_in_bytes"] = memory["swap"]
    if res.get("hugepageLimits") is not None:
        out["hugepage_limits"] = [(h["pageSize"], h["limit"]) for h in res["hugepageLimits"]]
    if res.get("unified") is not None:
        out["unified"] = dict(res["unified"])
    return out


# --- cgroup files: OCI resources <-> cgroupfs under v1 and v2 (what runc writes) ---

V1_UNLIMITED = "9223372036854771712"   # memory.limit_in_bytes with no limit (page-rounded)


def shares_to_weight(shares: int) -> int:
    """cgroup v2's cpu.weight for v1 cpu.shares: [2, 262144] mapped linearly onto
    [1, 10000]; 0 (unset) stays 0."""
    if shares == 0:
        return 0
    return 1 + ((shares - 2) * 9999) // 262142


def weight_to_shares(weight: int) -> int:
    """The inverse, rounded as the forward mapping floors (2 + (w-1)*262142/9999)."""
    if weight == 0:
        return 0
    return 2 + ((weight - 1) * 262142 + 9998) // 9999


def to_cgroup_files(resources: dict, v2: bool) -> dict[str, str]:
    """The cgroup files (relative to the container's cgroup directories, v1 files prefixed by
    their controller) and the values the OCI resources give them."""
    cpu, memory = resources.get("cpu") or {}, resources.get("memory") or {}
    files: dict[str, str] = {}
    if v2:
        if cpu.get("shares"):
            files["cpu.weight"] = str(shares_to_weight(cpu["shares"]))
        if cpu.get("quota") or cpu.get("period"):
            quota = cpu.get("quota", 0)
            files["cpu.max"] = f"{quota if quota > 0 else 'max'} {cpu.get('period') or 100000}"
        if cpu.get("cpus"):
            files["cpuset.cpus"] = cpu["cpus"]
        if cpu.get("mems"):
            files["cpuset.mems"] = cpu["mems"]
        if "limit" in memory:
            files["memory.max"] = _max(memory["limit"])
        if "swap" in memory:
            # v2 counts swap alone: the OCI value is memory+swap.
            limit = memory.get("limit", -1)
            swap = memory["swap"]
            files["memory.swap.max"] = ("max" if swap == -1 else
                                        str(swap - limit) if limit > 0 else str(swap))
        for h in resources.get("hugepageLimits") or []:
            files[f"hugetlb.{h['pageSize']}.max"] = _max(h["limit"])
        if resources.get("pids"):
            files["pids.max"] = _max(resources["pids"].get("limit", 0) or -1)
        files.update(resources.get("unified") or {})
        return files
    if cpu.get("shares"):
        files["cpu/cpu.shares"] = str(cpu["shares"])
    if cpu.get("period"):
        files["cpu/cpu.cfs_period_us"] = str(cpu["period"])
    if cpu.get("quota"):
        files["cpu/cpu.cfs_quota_us"] = str(cpu["quota"])
    if cpu.get("cpus"):
        files["cpuset/cpuset.cpus"] = cpu["cpus"]
    if cpu.get("mems"):
        files["cpuset/cpuset.mems"] = cpu["mems"]
    if "limit" in memory:
        files["memory/memory.limit_in_bytes"] = (V1_UNLIMITED if memory["limit"] == -1
                                                 else str(memory["limit"]))
    if "swap" in memory:
        files["memory/memory.memsw.limit_in_bytes"] = (V1_UNLIMITED if memory["swap"] == -1
                                                       else str(memory["swap"]))
    for h in resources.get("hugepageLimits") or []:
        files[f"hugetlb/hugetlb.{h['pageSize']}.limit_in_bytes"] = str(h["limit"])
    if resources.get("pids"):
        files["pids/pids.max"] = _max(resources["pids"].get("limit", 0) or -1)
    return files


def _max(value: int) -> str:
    return "max" if value == -1 else str(value)


def from_cgroup_files(files: dict[str, str], v2: bool) -> dict:
    """OCI resources read back from a cgroup's files (the keys as to_cgroup_files names them);
    unlimited values are left out."""
    get = {k: v.strip() for k, v in files.items()}
    cpu, memory, out = {}, {}, {}
    if v2:
        if get.get("cpu.weight") not in (None, "100"):
            cpu["shares"] = weight_to_shares(int(get["cpu.weight"]))
        if "cpu.max" in get:
            quota, _, period = get["cpu.max"].partition(" ")
            if quota != "max":
                cpu["quota"] = int(quota)
            cpu["period"] = int(period)
        limit = _int(get.get("memory.max"))
        if limit is not None:
            memory["limit"] = limit
        swap = _int(get.get("memory.swap.max"))
        if swap is not None:
            memory["swap"] = swap + (limit or 0)
        pids = _int(get.get("pids.max"))
    else:
        if get.get("cpu/cpu.shares") not in (None, "1024"):
            cpu["shares"] = int(get["cpu/cpu.shares"])
        quota = _int(get.get("cpu/cpu.cfs_quota_us"))
        if quota is not None and quota > 0:
            cpu["quota"] = quota
        if "cpu/cpu.cfs_period_us" in get:
            cpu["period"] = int(get["cpu/cpu.cfs_period_us"])
        for key, name in (("memory/memory.limit_in_bytes", "limit"),
                          ("memory/memory.memsw.limit_in_bytes", "swap")):
            value = get.get(key)
            if value is not None and value != V1_UNLIMITED:
                memory[name] = int(value)
        pids = _int(get.get("pids/pids.max"))
    for key in ("cpuset.cpus", "cpuset.mems"):
        value = get.get(key if v2 else f"cpuset/{key}")
        if value:
            cpu[key.split(".")[1]] = value
    if cpu:
        out["cpu"] = cpu
    if memory:
        out["memory"] = memory
    if pids is not None:
        out["pids"] = {"limit": pids}
    return out


def _int(value: str | None) -> int | None:
    if value is None or value in ("max", "-1", ""):
        return None
    return int(value)


def read_cgroup_files(directories: dict[str, str], names) -> dict[str, str]:
    """Read the named files: v1 names `controller/file` from directories[controller], v2 names
    from directories[""]. Missing files are left out."""
    out = {}
    for name in names:
        controller, _, file = name.rpartition("/")
        try:
            with open(os.path.join(directories[controller], file)) as f:
                out[name] = f.read().strip()
        except (OSError, KeyError):
            continue
    return out
