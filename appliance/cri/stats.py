"""ContainerStats, ListContainerStats, PodSandboxStats and ListPodSandboxStats, as containerd
1.6's CRI answers them.

A running container's figures come from its cgroup (found once from its task's pid), a pod's
from its `cgroup_parent` (containerd reads the same), its network from the pause process's
namespace (`eth0`) and its process count from the pause's cgroup. `usage_nano_cores` is the
rate since the previous answer for the same id (0 on the first). The writable layer's usage
is sampled in the background every `stats_collect_period` seconds (0 until then), as
containerd's snapshot syncer does: a stats call never walks a directory tree.
"""
from __future__ import annotations

import asyncio
import logging
import time

from ..errdefs import ApplianceError, NotFound
from . import cgroupstats
from .images import NAMESPACE
from .store import RUNNING, SANDBOX_READY

log = logging.getLogger("appliance.cri")
DEFAULT_INTERFACE = "eth0"


class StatsService:
    def __init__(self, rt, pb, snapshot_root: str):
        self.rt = rt
        self.pb = pb
        self.snapshot_root = snapshot_root      # writable_layer.fs_id.mountpoint
        self.samples: dict[str, tuple[int, int]] = {}    # id -> (timestamp, cpu_ns)
        self.layers: dict[str, tuple[int, int, int]] = {}  # id -> (time, bytes, inodes)
        self.cgroups: dict[str, tuple[int, dict]] = {}   # container id -> (pid, dirs)
        self.image_fs = (0, 0, 0)    # ImageFsInfo: (time, bytes, inodes) of k8s.io snapshots

    # --- containers -------------------------------------------------------------------

    def container(self, cid: str):
        if not cid:
            raise ApplianceError("failed to find container: Prefix can't be empty")
        c = self.rt.containers.find(cid)
        if c is None:
            raise NotFound("failed to find container: not found")
        stats = self._container_stats(c)
        if not stats.HasField("cpu"):       # containerd: no task metrics for it
            raise ApplianceError("unexpected metrics response: []")
        return stats

    def containers(self, flt) -> list:
        out = []
        for c in self.rt.containers.list():
            if flt is not None:
                if flt.id and c.id != self._full(self.rt.containers, flt.id):
                    continue
                if flt.pod_sandbox_id and c.sandbox_id != self._full(self.rt.sandboxes,
                                                                     flt.pod_sandbox_id):
                    continue
                if any(c.config.labels.get(k) != v for k, v in flt.label_selector.items()):
                    continue
            out.append(self._container_stats(c))
        return out

    @staticmethod
    def _full(store, id_or_prefix: str) -> str | None:
        item = store.find(id_or_prefix)
        return item.id if item is not None else None

    def _container_stats(self, c):
        pb = self.pb
        stats = pb.ContainerStats()
        _attributes(stats.attributes, c.id, c.config)
        sampled, used, inodes = self.layers.get(c.id, (0, 0, 0))
        layer = stats.writable_layer
        layer.timestamp = sampled
        layer.fs_id.mountpoint = self.snapshot_root
        layer.used_bytes.value = used
        layer.inodes_used.value = inodes
        if c.status.state == RUNNING and c.status.pid:
            usage = cgroupstats.read_usage(self._container_dirs(c))
            if usage is not None:
                now = time.time_ns()
                self._cpu(stats.cpu, c.id, usage, now)
                self._memory(stats.memory, usage, now)
        return stats

    def _container_dirs(self, c) -> dict:
        cached = self.cgroups.get(c.id)
        if cached is None or cached[0] != c.status.pid:
            cached = (c.status.pid, cgroupstats.dirs_of_pid(c.status.pid))
            self.cgroups[c.id] = cached
        return cached[1]

    def _cpu(self, out, key: str, usage, now: int) -> None:
        out.timestamp = now
        out.usage_core_nano_seconds.value = usage.cpu_ns
        last = self.samples.get(key)
        rate = 0
        if last is not None and now > last[0] and usage.cpu_ns >= last[1]:
            rate = (usage.cpu_ns - last[1]) * 1_000_000_000 // (now - last[0])
        out.usage_nano_cores.value = rate
        self.samples[key] = (now, usage.cpu_ns)

    @staticmethod
    def _memory(out, usage, now: int) -> None:
        out.timestamp = now
        out.working_set_bytes.value = usage.working_set
        out.available_bytes.value = usage.available
        out.usage_bytes.value = usage.memory_usage
        out.rss_bytes.value = usage.rss
        out.page_faults.value = usage.page_faults
        out.major_page_faults.value = usage.major_page_faults

    # --- pods -------------------------------------------------------------------------

    def pod(self, sid: str):
        if not sid:
            raise ApplianceError("an error occurred when trying to find sandbox : "
                                 "Prefix can't be empty")
        sandbox = self.rt.sandboxes.find(sid)
        if sandbox is None:
            raise NotFound(f"an error occurred when trying to find sandbox {sid}: not found")
        if sandbox.state != SANDBOX_READY:
            raise ApplianceError(f"failed to decode pod sandbox metrics {sandbox.id}: "
                                 f"{_not_ready(sandbox.id)}")
        return self._pod_stats(sandbox)

    def pods(self, flt) -> list:
        """Ready pods only: containerd 1.6.20 fails the whole call when one is not ready."""
        out = []
        for sandbox in self.rt.sandboxes.list():
            if sandbox.state != SANDBOX_READY:
                continue
            if flt is not None:
                if flt.id and sandbox.id != self._full(self.rt.sandboxes, flt.id):
                    continue
                if any(sandbox.config.labels.get(k) != v
                       for k, v in flt.label_selector.items()):
                    continue
            out.append(self._pod_stats(sandbox))
        return out

    def _pod_stats(self, sandbox):
        pb = self.pb
        stats = pb.PodSandboxStats()
        _attributes(stats.attributes, sandbox.id, sandbox.config)
        linux = stats.linux
        now = time.time_ns()
        parent = sandbox.config.linux.cgroup_parent
        if parent:
            usage = cgroupstats.read_usage(cgroupstats.dirs_of_path(parent))
            if usage is not None:
                self._cpu(linux.cpu, sandbox.id, usage, now)
                self._memory(linux.memory, usage, now)
        if sandbox.netns_path and sandbox.pid:
            counters = cgroupstats.net_dev(sandbox.pid).get(DEFAULT_INTERFACE)
            if counters is not None:        # (no timestamp: containerd 1.6.20 sets none)
                iface = linux.network.default_interface
                iface.name = DEFAULT_INTERFACE
                (iface.rx_bytes.value, iface.rx_errors.value, iface.tx_bytes.value,
                 iface.tx_errors.value) = counters
        linux.process.timestamp = now
        linux.process.process_count.value = cgroupstats.process_count(
            cgroupstats.dirs_of_pid(sandbox.pid)) if sandbox.pid else 0
        linux.containers.extend(self.containers(
            pb.ContainerStatsFilter(pod_sandbox_id=sandbox.id)))
        return stats

    # --- the writable layers' sampler --------------------------------------------------

    async def collect(self) -> None:
        """Every `stats_collect_period` s, the usage of each snapshot of the CRI's namespace:
        a container's is its writable layer's, their sum ImageFsInfo's (owned by the
        supervisor; ends when cancelled). containerd's snapshot syncer does the same: active
        snapshots measured at each pass, committed ones once (the store records theirs), and
        both answer 0 until the first pass."""
        period = max(1, self.rt.cfg.stats_collect_period)
        snapshotter = self.rt.snapshots.get(self.rt.cfg.containerd.snapshotter)
        while True:
            await asyncio.sleep(period)
            usages = await asyncio.to_thread(_usages, snapshotter)
            now = time.time_ns()
            current = {c.id for c in self.rt.containers.list()}
            for cid in current & usages.keys():
                self.layers[cid] = (now, *usages[cid])
            self.forget(lambda key: key not in current
                        and key not in self.rt.sandboxes.items)
            self.image_fs = (now, sum(u[0] for u in usages.values()),
                             sum(u[1] for u in usages.values()))

    def forget(self, gone) -> None:
        for table in (self.samples, self.layers, self.cgroups):
            for key in [k for k in table if gone(k)]:
                del table[key]


def _usages(snapshotter) -> dict[str, tuple[int, int]]:
    """key -> (bytes, inodes) of each snapshot in the CRI's namespace (one gone meanwhile
    or unreadable is left out)."""
    out = {}
    for info in snapshotter.list(NAMESPACE):
        try:
            out[info.name] = snapshotter.usage(NAMESPACE, info.name)
        except Exception as exc:
            log.debug("usage of snapshot %s: %s", info.name, exc)
    return out


def _attributes(out, item_id: str, config) -> None:
    out.id = item_id
    out.metadata.MergeFrom(config.metadata)
    out.labels.update(config.labels)
    out.annotations.update(config.annotations)


def _not_ready(sid: str) -> str:
    return (f'failed to get pod sandbox stats since sandbox container "{sid}" is not in '
            'ready state')
