"""io.containerd.runtime.v2.task (shims, restart recovery) and io.containerd.monitor.v1.cgroups."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ..process import metrics
from ..core.runtime.cgroup_metrics import TASK_CGROUP_DOCS, task_cgroup_values
from ..core.runtime.manager import TaskManager, Timeouts
from ..errdefs import InvalidArgument, NotFound
from ..plugin import (EVENT, LINUX_AMD64, METADATA, MONITOR, RUNTIME_V1, RUNTIME_V2, InitContext,
                      Registration, SkipPlugin)

log = logging.getLogger("appliance.runtime")


@dataclass
class RuntimeConfig:
    platforms: list[str] = field(default_factory=lambda: ["linux/amd64"])
    sched_core: bool = False
    # ours: start a container's shim at Containers.Create, so Tasks.Create finds it ready
    # (at most runtime.manager.PRESTART_MAX unclaimed at a time); off: no measurable gain
    prestart_shims: bool = False


async def _runtime(ic: InitContext) -> TaskManager:
    ic.platforms = [parse_platform(p) for p in ic.config.platforms]
    cfg = ic.server_config
    timeouts = Timeouts(load=cfg.timeout("io.containerd.timeout.shim.load") or 5.0,
                        cleanup=cfg.timeout("io.containerd.timeout.shim.cleanup") or 5.0,
                        shutdown=cfg.timeout("io.containerd.timeout.shim.shutdown") or 3.0)
    containers = ic.get(METADATA).containers

    def runtime_of(ns: str, cid: str) -> str | None:
        try:
            return containers.get(ns, cid).runtime.name
        except NotFound:
            return None

    manager = TaskManager(
        str(ic.root), str(ic.state), ic.properties["io.containerd.plugin.grpc.address"],
        ic.properties["io.containerd.plugin.ttrpc.address"], ic.get(EVENT), timeouts,
        debug=logging.getLogger().isEnabledFor(logging.DEBUG), runtime_of=runtime_of,
        prestart_shims=ic.config.prestart_shims, sched_core=ic.config.sched_core,
        supervisor=ic.supervisor, trash=ic.trash)
    if ic.config.prestart_shims:   # a container's shim starts at Containers.Create
        containers.created.subscribe(lambda ns, c: manager.prestart(
            ns, c.id, c.runtime.name, c.spec.value,
            c.runtime.options.SerializeToString() if c.runtime.options is not None else None))
        containers.deleted.subscribe(manager.discard_prestarted)
    await manager.load_existing()
    metrics.gauge_callback("ctrappliance_tasks", "Tasks with a live shim, by namespace",
                           ("namespace",), lambda: _tasks_by_namespace(manager))
    return manager


def _tasks_by_namespace(manager: TaskManager) -> dict[tuple[str], int]:
    out: dict[tuple[str], int] = {}
    for ns, _ in list(manager.tasks):
        out[(ns,)] = out.get((ns,), 0) + 1
    return out


def parse_platform(text: str) -> str:
    """An `os/arch[/variant]` platform, normalised; InvalidArgument otherwise."""
    parts = text.lower().split("/")
    if not 2 <= len(parts) <= 3 or not all(parts):
        raise InvalidArgument(f"{text!r}: unknown operating system or architecture: "
                              "invalid argument")
    return "/".join(parts)


@dataclass
class MonitorConfig:
    no_prometheus: bool = False   # true: no container_* metrics on [metrics] address


class CgroupsMonitor:
    """OOM and exit notices come from the shims' own events (/tasks/oom, /tasks/exit);
    the monitor only has to exist, as the tasks service requires one. Its config says
    whether the metrics endpoint serves the tasks' cgroup metrics."""

    def __init__(self, prometheus: bool = True):
        self.prometheus = prometheus

    def monitor(self, task) -> None:
        pass

    def stop(self, task) -> None:
        pass


def _monitor(ic: InitContext) -> CgroupsMonitor:
    monitor = CgroupsMonitor(not ic.config.no_prometheus)
    manager = ic.get_all(RUNTIME_V2).get("task")   # its type loads first
    if monitor.prometheus and manager is not None:
        metrics.gauges_callback(TASK_CGROUP_DOCS, ("container_id", "namespace"),
                                lambda: _task_cgroup_metrics(manager))
    return monitor


def _task_cgroup_metrics(manager: TaskManager) -> dict[str, dict]:
    """containerd's container_*{container_id,namespace} figures of every live task."""
    out: dict[str, dict] = {}
    for (ns, task_id), shim in list(manager.tasks.items()):
        if shim.task_pid:
            for name, value in task_cgroup_values(shim.task_pid).items():
                out.setdefault(name, {})[(task_id, ns)] = value
    return out


def _runtime_v1(ic: InitContext):
    raise SkipPlugin(RUNTIME_V1_SKIPPED)


RUNTIME_V1_SKIPPED = ("runtime v1 (containerd-shim) was removed in containerd 2.0 and is not "
                      "provided by ctrappliance: use io.containerd.runc.v2")

REGISTRATIONS = [
    Registration(RUNTIME_V1, "linux", _runtime_v1, requires=(EVENT, METADATA),
                 platforms=LINUX_AMD64),
    Registration(RUNTIME_V2, "task", _runtime, requires=(EVENT, METADATA), config=RuntimeConfig,
                 platforms=LINUX_AMD64),
    Registration(MONITOR, "cgroups", _monitor,
                 requires=(EVENT,), platforms=LINUX_AMD64, config=MonitorConfig),
]
