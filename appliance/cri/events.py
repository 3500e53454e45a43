"""GetContainerEvents (kubelet's evented PLEG): CONTAINER_CREATED, STARTED, STOPPED and DELETED
for containers and sandboxes, each with the pod's status and its containers' statuses taken
when it happens, as containerd 1.7 sends them (1.6.20 answers UNIMPLEMENTED).

Fed by the CRI's own lifecycle steps and its task-exit monitor (the in-memory view, never the
database). Each stream has a bounded queue: a client too slow to keep up is cut off rather
than let the daemon's memory grow; every stream ends when the daemon stops (close()).
"""
from __future__ import annotations

import asyncio
import logging
import time

log = logging.getLogger("appliance.cri")

CREATED, STARTED, STOPPED, DELETED = 0, 1, 2, 3      # runtime.v1 ContainerEventType
QUEUE_LIMIT = 1000                                   # containerd 1.7's channel size
_END = object()


class ContainerEvents:
    def __init__(self):
        self.streams: set[asyncio.Queue] = set()
        self.closed = False
        # set by the CRI plugin: sandbox id -> (PodSandboxStatus or None, [ContainerStatus])
        self.statuses = None

    def emit(self, container_id: str, sandbox_id: str, kind: int) -> None:
        """An event for every open stream (nothing is built without one)."""
        if not self.streams or self.statuses is None:
            return
        pb_event = self.build(container_id, sandbox_id, kind)
        for queue in list(self.streams):
            if queue.qsize() >= QUEUE_LIMIT:
                log.warning("container event stream too slow: cut off")
                self.streams.discard(queue)
                queue.put_nowait(_END)
            else:
                queue.put_nowait(pb_event)

    def build(self, container_id: str, sandbox_id: str, kind: int):
        from .. import stubs
        pb = stubs.module("appliance._proto.cri.v1.api_pb2")
        pod, containers = self.statuses(sandbox_id)
        out = pb.ContainerEventResponse(container_id=container_id, container_event_type=kind,
                                        created_at=time.time_ns(),
                                        containers_statuses=containers)
        if pod is not None:
            out.pod_sandbox_status.CopyFrom(pod)
        return out

    async def subscribe(self):
        """Yield events until the client goes (the caller stops) or the daemon stops."""
        if self.closed:
            return
        queue: asyncio.Queue = asyncio.Queue()     # bounded by emit()
        self.streams.add(queue)
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    return
                yield item
        finally:
            self.streams.discard(queue)

    def close(self) -> None:
        self.closed = True
        for queue in list(self.streams):
            queue.put_nowait(_END)
        self.streams.clear()
