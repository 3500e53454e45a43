"""io.containerd.internal.v1.restart: keeps labelled containers' tasks in the wanted state.

containerd 1.6's restart monitor: every `interval` (and once at start) each container
labelled `containerd.io/restart.status` is compared with its task. `running` and no running
task: any old task is killed and deleted, and a new one is created (rootfs from the
container's snapshot; stdout and stderr to `containerd.io/restart.loguri`, else to the file
`containerd.io/restart.logpath`, else nowhere) and started. `stopped` and a task that is
not stopped: the task is killed and deleted.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import urllib.parse
from dataclasses import dataclass

from .. import stubs
from ..config import parse_duration
from ..errdefs import ApplianceError, InvalidArgument, NotFound
from ..plugin import EVENT, INTERNAL, SERVICE, InitContext, Registration

log = logging.getLogger("appliance.restart")

STATUS_LABEL = "containerd.io/restart.status"
LOG_URI_LABEL = "containerd.io/restart.loguri"
LOG_PATH_LABEL = "containerd.io/restart.logpath"  # deprecated in 1.5, still read
KILL_WAIT = 30.0  # containerd waits for the killed task without a limit

tasks_pb = stubs.module("appliance._proto.containerd.api.services.tasks.v1.tasks_pb2")
task_pb2 = stubs.module("appliance._proto.containerd.api.types.task.task_pb2")
mount_pb2 = stubs.module("appliance._proto.containerd.api.types.mount_pb2")


@dataclass
class RestartConfig:
    interval: str = "10s"


def log_uri(labels: dict[str, str]) -> str:
    """The stdout/stderr URI of a restarted task ("": none), as containerd's cio builds it."""
    uri, path = labels.get(LOG_URI_LABEL, ""), labels.get(LOG_PATH_LABEL, "")
    if uri and path:
        log.warning("LogPathLabel=%s has been deprecated, using LogURILabel=%s", path, uri)
    if uri:
        return uri
    if path:
        path = os.path.normpath(path)
        if not path.startswith("/"):
            raise InvalidArgument("absolute path needed")
        return "file://" + urllib.parse.quote(path)
    return ""


class RestartMonitor:
    def __init__(self, namespaces, containers, tasks, snapshots, interval: float, supervisor):
        self.namespaces = namespaces
        self.containers = containers
        self.tasks = tasks
        self.snapshots = snapshots
        self.interval = interval or 10.0
        self.supervisor = supervisor   # owns the monitor's task

    async def serving(self) -> None:
        self.supervisor.task(self._run(), "restart-monitor")

    async def _run(self) -> None:
        while True:
            try:
                await self.reconcile()
            except Exception as exc:
                log.error("reconcile: %s", exc)
            await asyncio.sleep(self.interval)

    async def reconcile(self) -> None:
        names = [name for name, _ in self.namespaces.list()]
        await asyncio.gather(*(self._reconcile_namespace(ns) for ns in names))

    async def _reconcile_namespace(self, ns: str) -> None:
        try:
            changes = await self._changes(ns)
        except Exception as exc:
            log.error("monitor for changes in %s: %s", ns, exc)
            return
        results = await asyncio.gather(*changes, return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                log.error("apply change in %s: %s", ns, result)

    async def _changes(self, ns: str) -> list:
        changes = []
        for container in self.containers.list(ns, [f'labels."{STATUS_LABEL}"']):
            wanted = container.labels[STATUS_LABEL]
            if await self._status(ns, container.id) == wanted:
                continue
            if wanted == "running":
                changes.append(self._start(ns, container))
            elif wanted == "stopped":
                changes.append(self._kill(ns, container.id))
        return changes

    async def _status(self, ns: str, cid: str) -> str:
        try:
            process = await self.tasks.get(ns, cid, "")
        except ApplianceError:
            return "stopped"
        return task_pb2.Status.Name(process.status).lower()

    async def _start(self, ns: str, container) -> None:
        stdio = log_uri(dict(container.labels))
        try:
            await self._kill(ns, container.id)
        except Exception as exc:  # containerd goes on to create the task regardless
            log.debug("restart %s/%s: removing the old task: %s", ns, container.id, exc)
        request = tasks_pb.CreateTaskRequest(container_id=container.id, stdout=stdio,
                                             stderr=stdio, rootfs=self._rootfs(ns, container))
        await self.tasks.create(ns, request)
        await self.tasks.start(ns, container.id, "")

    def _rootfs(self, ns: str, container) -> list:
        if not container.snapshot_key:
            return []
        if not container.snapshotter:
            raise InvalidArgument("unable to resolve rootfs mounts without snapshotter on "
                                  "container: invalid argument")
        mounts = self.snapshots.get(container.snapshotter).mounts(ns, container.snapshot_key)
        return [mount_pb2.Mount(type=m.type, source=m.source, target=m.target,
                                options=m.options) for m in mounts]

    async def _kill(self, ns: str, cid: str) -> None:
        """SIGKILL every process of the task, wait for its exit, delete it (no task: done)."""
        try:
            await self.tasks.get(ns, cid, "")
        except NotFound:
            return
        waiter = asyncio.ensure_future(self.tasks.wait(ns, cid, ""))
        try:
            try:
                await self.tasks.kill(ns, cid, "", signal.SIGKILL, True)
            except ApplianceError:
                try:  # it has exited already
                    await self.tasks.delete(ns, cid)
                    return
                except ApplianceError:
                    pass
                raise
            await asyncio.wait_for(waiter, KILL_WAIT)
        finally:
            waiter.cancel()
        await self.tasks.delete(ns, cid)


def _init(ic: InitContext) -> RestartMonitor:
    return RestartMonitor(ic.get_by_id(SERVICE, "namespaces-service"),
                          ic.get_by_id(SERVICE, "containers-service"),
                          ic.get_by_id(SERVICE, "tasks-service"),
                          ic.get_by_id(SERVICE, "snapshots-service"),
                          parse_duration(ic.config.interval), ic.supervisor)


REGISTRATIONS = [
    Registration(INTERNAL, "restart", _init, requires=(EVENT, SERVICE), config=RestartConfig),
]
