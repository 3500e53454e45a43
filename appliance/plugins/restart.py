"""io.containerd.internal.v1.restart: keeps labelled containers' tasks in their desired state.

containerd 1.6's restart monitor. Every `interval` (10 s) it looks, in every namespace, at the
containers labelled `containerd.io/restart.status`:
- `running` without a running task: the old task, if any, is killed and deleted; a new one is
  created, with stdout and stderr going to `containerd.io/restart.loguri` (or to the file
  named by the deprecated `containerd.io/restart.logpath`), and started;
- `stopped` with a task that is not stopped: the task is killed (SIGKILL, every process) and
  deleted.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
from dataclasses import dataclass

from .. import stubs
from ..config import parse_duration
from ..errdefs import NotFound
from ..plugin import EVENT, INTERNAL, SERVICE, InitContext, Registration
from .snapshots import mount_to_pb

log = logging.getLogger("appliance.restart")

STATUS_LABEL = "containerd.io/restart.status"
LOG_URI_LABEL = "containerd.io/restart.loguri"
LOG_PATH_LABEL = "containerd.io/restart.logpath"   # deprecated in containerd 1.5
KILL_WAIT_SECONDS = 30.0    # a SIGKILLed task that has not exited by then is left for next time

tasks_pb = stubs.module("appliance._proto.containerd.api.services.tasks.v1.tasks_pb2")
task_types = stubs.module("appliance._proto.containerd.api.types.task.task_pb2")


@dataclass
class RestartConfig:
    interval: str = "10s"


class RestartMonitor:
    def __init__(self, namespaces, containers, tasks, snapshots, interval: float):
        self.namespaces = namespaces
        self.containers = containers
        self.tasks = tasks
        self.snapshots = snapshots
        self.interval = interval if interval > 0 else 10.0
        self._task: asyncio.Task | None = None

    async def serving(self) -> None:
        self._task = asyncio.create_task(self._run(), name="restart-monitor")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                await self.reconcile()
            except Exception as exc:
                log.error("reconcile: %s", exc)
            await asyncio.sleep(self.interval)

    async def reconcile(self) -> None:
        """One pass over every namespace; changes run concurrently, as in containerd."""
        changes = []
        for ns, _labels in self.namespaces.list():
            for container in self.containers.list(ns, [f'labels."{STATUS_LABEL}"']):
                desired = container.labels[STATUS_LABEL]
                if await self._status(ns, container.id) == desired:
                    continue
                if desired == "running":
                    changes.append(self._start(ns, container))
                elif desired == "stopped":
                    changes.append(self._kill(ns, container.id))
        for result in await asyncio.gather(*changes, return_exceptions=True):
            if isinstance(result, Exception):
                log.error("apply change: %s", result)

    async def _status(self, ns: str, cid: str) -> str:
        try:
            process = await self.tasks.get(ns, cid, "")
        except Exception:   # no task, or it cannot be asked: stopped, as containerd reads it
            return "stopped"
        return task_types.Status.Name(process.status).lower()

    async def _start(self, ns: str, container) -> None:
        await self._kill(ns, container.id)
        uri, path = container.labels.get(LOG_URI_LABEL, ""), container.labels.get(LOG_PATH_LABEL, "")
        if uri and path:
            log.warning("LogPathLabel=%s has been deprecated, using LogURILabel=%s", path, uri)
        elif path:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            with open(path, "a"):
                pass
            uri = path
        rootfs = []
        if container.snapshot_key:
            snapshotter = self.snapshots.get(container.snapshotter)
            rootfs = [mount_to_pb(m) for m in snapshotter.mounts(ns, container.snapshot_key)]
        await self.tasks.create(ns, tasks_pb.CreateTaskRequest(
            container_id=container.id, rootfs=rootfs, stdout=uri, stderr=uri))
        await self.tasks.start(ns, container.id, "")
        log.info("restarted task of container %s in namespace %s", container.id, ns)

    async def _kill(self, ns: str, cid: str) -> None:
        """SIGKILL every process of the task, wait for its exit, delete it."""
        try:
            process = await self.tasks.get(ns, cid, "")
        except NotFound:
            return
        if process.status != task_types.Status.STOPPED:
            exited = asyncio.ensure_future(self.tasks.wait(ns, cid, ""))
            try:
                await self.tasks.kill(ns, cid, "", signal.SIGKILL, True)
                await asyncio.wait_for(asyncio.shield(exited), KILL_WAIT_SECONDS)
            finally:
                exited.cancel()
        await self.tasks.delete(ns, cid)


def _init(ic: InitContext) -> RestartMonitor:
    ic.get(EVENT)
    services = ic.get_all(SERVICE)
    needed = ("namespaces-service", "containers-service", "tasks-service", "snapshots-service")
    for name in needed:
        if name not in services:
            raise NotFound(f"service {name!r} not found")
    return RestartMonitor(*(services[name] for name in needed),
                          interval=parse_duration(ic.config.interval))


REGISTRATIONS = [
    Registration(INTERNAL, "restart", _init, requires=(EVENT, SERVICE), config=RestartConfig),
]
