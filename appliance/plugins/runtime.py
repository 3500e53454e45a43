"""io.containerd.runtime.v2.task (shims, restart recovery) and io.containerd.monitor.v1.cgroups."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ..core.metadata.containers import ContainerStore
from ..core.runtime.manager import TaskManager, Timeouts
from ..errdefs import NotFound
from ..plugin import EVENT, LINUX_AMD64, METADATA, MONITOR, RUNTIME_V2, InitContext, Registration

log = logging.getLogger("appliance.runtime")


@dataclass
class RuntimeConfig:
    platforms: list[str] = field(default_factory=lambda: ["linux/amd64"])
    sched_core: bool = False
    # ours: start a container's shim at Containers.Create, so Tasks.Create finds it ready
    prestart_shims: bool = True


async def _runtime(ic: InitContext) -> TaskManager:
    cfg = ic.server_config
    timeouts = Timeouts(load=cfg.timeout("io.containerd.timeout.shim.load") or 5.0,
                        cleanup=cfg.timeout("io.containerd.timeout.shim.cleanup") or 5.0,
                        shutdown=cfg.timeout("io.containerd.timeout.shim.shutdown") or 3.0)
    containers = ContainerStore(ic.get(METADATA).db)

    def runtime_of(ns: str, cid: str) -> str | None:
        try:
            return containers.get(ns, cid).runtime.name
        except NotFound:
            return None

    manager = TaskManager(
        str(ic.root), str(ic.state), ic.properties["io.containerd.plugin.grpc.address"],
        ic.properties["io.containerd.plugin.ttrpc.address"], ic.get(EVENT), timeouts,
        debug=logging.getLogger().isEnabledFor(logging.DEBUG), runtime_of=runtime_of,
        prestart_shims=ic.config.prestart_shims)
    await manager.load_existing()
    return manager


class CgroupsMonitor:
    """OOM and exit notices come from the shims' own events (/tasks/oom, /tasks/exit);
    the monitor only has to exist, as the tasks service requires one."""

    def monitor(self, task) -> None:
        pass

    def stop(self, task) -> None:
        pass


REGISTRATIONS = [
    Registration(RUNTIME_V2, "task", _runtime, requires=(EVENT, METADATA), config=RuntimeConfig,
                 platforms=LINUX_AMD64),
    Registration(MONITOR, "cgroups", lambda ic: CgroupsMonitor(), requires=(EVENT,),
                 platforms=LINUX_AMD64),
]
