"""io.containerd.runtime.v2.task (shims, restart recovery) and io.containerd.monitor.v1.cgroups."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

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
        prestart_shims=ic.config.prestart_shims, sched_core=ic.config.sched_core)
    if ic.config.prestart_shims:   # a container's shim starts at Containers.Create
        containers.created.subscribe(lambda ns, c: manager.prestart(
            ns, c.id, c.runtime.name, c.spec.value,
            c.runtime.options.SerializeToString() if c.runtime.HasField("options") else None))
        containers.deleted.subscribe(manager.discard_prestarted)
    await manager.load_existing()
    return manager


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


def _runtime_v1(ic: InitContext):
    raise SkipPlugin(RUNTIME_V1_SKIPPED)


RUNTIME_V1_SKIPPED = ("runtime v1 (containerd-shim) was removed in containerd 2.0 and is not "
                      "provided by ctrappliance: use io.containerd.runc.v2")

REGISTRATIONS = [
    Registration(RUNTIME_V1, "linux", _runtime_v1, requires=(EVENT, METADATA),
                 platforms=LINUX_AMD64),
    Registration(RUNTIME_V2, "task", _runtime, requires=(EVENT, METADATA), config=RuntimeConfig,
                 platforms=LINUX_AMD64),
    Registration(MONITOR, "cgroups", lambda ic: CgroupsMonitor(not ic.config.no_prometheus),
                 requires=(EVENT,), platforms=LINUX_AMD64, config=MonitorConfig),
]
