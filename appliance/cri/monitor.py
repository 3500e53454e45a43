"""The CRI's event monitor: task exits and OOMs in namespace `k8s.io` keep the in-memory view
current (a container's exit code, time and reason; a sandbox going NOTREADY; image changes
drop ContainerStatus's image view), as containerd's
CRI event monitor does; each exit is handled in its own task (its task delete may take a
while)."""
from __future__ import annotations

import logging

from .. import stubs
from . import events
from .images import NAMESPACE
from .store import SANDBOX_NOTREADY

task_events = stubs.module("appliance._proto.containerd.api.events.task_pb2")

log = logging.getLogger("appliance.cri")


class EventMonitor:
    def __init__(self, rt, containers):
        self.rt = rt
        self.containers = containers

    async def run(self, subscription) -> None:
        async for envelope in subscription:
            try:
                self._dispatch(envelope)
            except Exception:   # one bad event must not end the monitor
                log.exception("CRI event %s", envelope.topic)

    def _dispatch(self, envelope) -> None:
        if envelope.topic == "/tasks/exit":
            event = task_events.TaskExit.FromString(envelope.event.value)
            if event.id != event.container_id:
                return                          # an exec process: not ours to handle here
            self.rt.spawn(self.handle_exit(event), f"cri-exit-{event.container_id[:12]}")
        elif envelope.topic.startswith("/images/"):
            images = self.rt.plugin.__dict__.get("images")   # only once it was built
            if images is not None:
                images.invalidate()
        elif envelope.topic == "/tasks/oom":
            event = task_events.TaskOOM.FromString(envelope.event.value)
            self.containers.handle_oom(event.container_id)

    async def handle_exit(self, event) -> None:
        cid = event.container_id
        sandbox = self.rt.sandboxes.find(cid)
        if sandbox is not None and sandbox.id == cid:
            await self.rt.delete_task(cid)
            sandbox.state, sandbox.pid = SANDBOX_NOTREADY, 0
            self.rt.events.emit(cid, cid, events.STOPPED)
            return
        await self.containers.handle_exit(cid, event.exit_status,
                                          event.exited_at.ToNanoseconds())


SUBSCRIPTION = (f'namespace=="{NAMESPACE}",topic=="/tasks/exit"',
                f'namespace=="{NAMESPACE}",topic=="/tasks/oom"',
                f'namespace=="{NAMESPACE}",topic~="^/images/"')
