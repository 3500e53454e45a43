"""Tasks: local service over the v2 runtime, and the gRPC adapter.

Task events (/tasks/create, /tasks/start, /tasks/exit, ...) are the shim's own,
forwarded over TTRPC and republished by the exchange, as with containerd.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from google.protobuf import empty_pb2, timestamp_pb2

from .. import filters, identifiers, stubs
from ..config import unsupported
from ..core.metadata.containers import ContainerStore
from ..core.runtime.manager import CreateOpts, TaskManager
from ..core.runtime.shim import Shim, wrap
from ..errdefs import AlreadyExists, InvalidArgument, NotFound, Unimplemented
from ..grpcutil import Adapter, namespace_of, rpc
from ..plugin import (EVENT, GRPC, METADATA, MONITOR, RUNTIME_V1, RUNTIME_V2, SERVICE, InitContext,
                      Registration)

pb = stubs.module("appliance._proto.containerd.api.services.tasks.v1.tasks_pb2")
metrics_pb2 = stubs.module("appliance._proto.containerd.api.types.metrics_pb2")
task_pb2 = stubs.module("appliance._proto.containerd.api.types.task.task_pb2")
shim_pb2 = stubs.module("appliance._proto.containerd.runtime.v2.task.shim_pb2")

log = logging.getLogger("appliance.tasks")

CHECKPOINT_UNSUPPORTED = ("checkpoint/restore is not implemented in ctrappliance "
                          "(see the README's list of intended differences)")


class TasksService:
    def __init__(self, containers: ContainerStore, runtime: TaskManager, state_timeout: float):
        self.containers = containers
        self.runtime = runtime
        self.state_timeout = state_timeout

    def _task(self, ns: str, cid: str) -> Shim:
        self.containers.require(ns, cid)  # NOT_FOUND for an unknown container first, as containerd
        return self.runtime.get(ns, cid)

    async def create(self, ns: str, req: pb.CreateTaskRequest) -> int:
        container = self.containers.message(ns, req.container_id)
        if req.HasField("checkpoint"):
            raise Unimplemented(CHECKPOINT_UNSUPPORTED)
        if self.runtime.exists(ns, req.container_id):
            raise AlreadyExists(f"task {req.container_id}: already exists")
        runtime = container.runtime
        opts = CreateOpts(
            spec=container.spec, runtime=req.runtime_path or runtime.name,
            runtime_options=runtime.options if runtime.HasField("options") else None,
            task_options=req.options if req.HasField("options") else None,
            rootfs=list(req.rootfs), stdin=req.stdin, stdout=req.stdout, stderr=req.stderr,
            terminal=req.terminal)
        shim = await self.runtime.create(ns, req.container_id, opts)
        return shim.task_pid

    async def start(self, ns: str, cid: str, exec_id: str) -> int:
        shim = self._task(ns, cid)
        if exec_id:
            await self._process_state(shim, exec_id)
        resp = await shim.call("Start", shim_pb2.StartRequest(id=cid, exec_id=exec_id))
        return resp.pid

    async def delete(self, ns: str, cid: str) -> pb.DeleteResponse:
        self.containers.require(ns, cid)
        resp = await self.runtime.delete(ns, cid)
        return pb.DeleteResponse(id=cid, pid=resp.pid, exit_status=resp.exit_status,
                                 exited_at=resp.exited_at)

    async def delete_process(self, ns: str, cid: str, exec_id: str) -> pb.DeleteResponse:
        shim = self._task(ns, cid)
        await self._process_state(shim, exec_id)
        resp = await shim.call("Delete", shim_pb2.DeleteRequest(id=cid, exec_id=exec_id))
        return pb.DeleteResponse(id=exec_id, pid=resp.pid, exit_status=resp.exit_status,
                                 exited_at=resp.exited_at)

    async def _process_state(self, shim: Shim, exec_id: str = "",
                             out: task_pb2.Process | None = None) -> task_pb2.Process:
        """The process's state as a message, or filled into `out` (a response's field)."""
        state = await shim.state(exec_id, timeout=self.state_timeout or None)
        if out is None:
            out = task_pb2.Process()
        out.id, out.pid, out.status = exec_id or shim.id, state.pid, state.status
        out.stdin, out.stdout, out.stderr = state.stdin, state.stdout, state.stderr
        out.terminal, out.exit_status = state.terminal, state.exit_status
        out.exited_at.CopyFrom(state.exited_at)   # present even when unset, as before
        return out

    async def get(self, ns: str, cid: str, exec_id: str,
                  out: task_pb2.Process | None = None) -> task_pb2.Process:
        return await self._process_state(self._task(ns, cid), exec_id, out)

    async def list(self, ns: str) -> list[task_pb2.Process]:
        shims = self.runtime.list(ns)
        states = await asyncio.gather(*(self._process_state(s) for s in shims),
                                      return_exceptions=True)
        out = []
        for shim, state in zip(shims, states):
            if isinstance(state, BaseException):
                if not isinstance(state, NotFound):  # NotFound: raced with a delete
                    log.error("state of task %s: %s", shim.id, state)
                continue
            out.append(state)
        return out

    async def kill(self, ns: str, cid: str, exec_id: str, signal: int, all_: bool) -> None:
        shim = self._task(ns, cid)
        if exec_id:
            await self._process_state(shim, exec_id)
        await shim.call("Kill", shim_pb2.KillRequest(id=cid, exec_id=exec_id, signal=signal,
                                                     all=all_ and not exec_id))

    async def exec(self, ns: str, req: pb.ExecProcessRequest) -> None:
        if not req.exec_id:
            raise InvalidArgument("exec id cannot be empty")
        shim = self._task(ns, req.container_id)
        try:
            identifiers.validate(req.exec_id)
        except InvalidArgument as exc:
            raise wrap(exc, f"invalid exec id {req.exec_id}") from None
        await shim.call("Exec", shim_pb2.ExecProcessRequest(
            id=req.container_id, exec_id=req.exec_id, terminal=req.terminal, stdin=req.stdin,
            stdout=req.stdout, stderr=req.stderr, spec=req.spec))

    async def resize_pty(self, ns: str, req: pb.ResizePtyRequest) -> None:
        shim = self._task(ns, req.container_id)
        if req.exec_id:
            await self._process_state(shim, req.exec_id)
        await shim.call("ResizePty", shim_pb2.ResizePtyRequest(
            id=req.container_id, exec_id=req.exec_id, width=req.width, height=req.height))

    async def close_io(self, ns: str, req: pb.CloseIORequest) -> None:
        shim = self._task(ns, req.container_id)
        if req.exec_id:
            await self._process_state(shim, req.exec_id)
        if req.stdin:
            await shim.call("CloseIO", shim_pb2.CloseIORequest(
                id=req.container_id, exec_id=req.exec_id, stdin=True))

    async def pause(self, ns: str, cid: str) -> None:
        await self._task(ns, cid).call("Pause", shim_pb2.PauseRequest(id=cid))

    async def resume(self, ns: str, cid: str) -> None:
        await self._task(ns, cid).call("Resume", shim_pb2.ResumeRequest(id=cid))

    async def pids(self, ns: str, cid: str) -> list[task_pb2.ProcessInfo]:
        resp = await self._task(ns, cid).call("Pids", shim_pb2.PidsRequest(id=cid))
        return list(resp.processes)

    async def update(self, ns: str, req: pb.UpdateTaskRequest) -> None:
        shim = self._task(ns, req.container_id)
        request = shim_pb2.UpdateTaskRequest(id=req.container_id,
                                             annotations=dict(req.annotations))
        if req.HasField("resources"):
            request.resources.CopyFrom(req.resources)
        await shim.call("Update", request)

    async def metrics(self, ns: str, filter_strings) -> list[metrics_pb2.Metric]:
        flt = filters.parse(*filter_strings)
        shims = [s for s in self.runtime.list(ns) if flt.match(filters.adapt_object(
            {"id": s.id, "namespace": s.namespace}))]

        async def one(shim):
            collected = timestamp_pb2.Timestamp()
            collected.GetCurrentTime()
            resp = await shim.call("Stats", shim_pb2.StatsRequest(id=shim.id))
            return metrics_pb2.Metric(timestamp=collected, id=shim.id, data=resp.stats)

        results = await asyncio.gather(*(one(s) for s in shims), return_exceptions=True)
        out = []
        for shim, result in zip(shims, results):
            if isinstance(result, BaseException):
                if not isinstance(result, NotFound):
                    log.error("collecting metrics for %s: %s", shim.id, result)
                continue
            out.append(result)
        return out

    async def wait(self, ns: str, cid: str, exec_id: str) -> shim_pb2.WaitResponse:
        shim = self._task(ns, cid)
        if exec_id:
            await self._process_state(shim, exec_id)
        return await shim.call("Wait", shim_pb2.WaitRequest(id=cid, exec_id=exec_id),
                               timeout=None)  # until the process exits or the caller gives up

    def checkpoint(self, ns: str, cid: str) -> None:
        self._task(ns, cid)
        raise Unimplemented(CHECKPOINT_UNSUPPORTED)


class TasksAdapter(Adapter):
    NAME, PB = "containerd.services.tasks.v1.Tasks", pb
    service: TasksService

    @rpc
    async def Create(self, request, context):
        pid = await self.service.create(namespace_of(context), request)
        return pb.CreateTaskResponse(container_id=request.container_id, pid=pid)

    @rpc
    async def Start(self, request, context):
        pid = await self.service.start(namespace_of(context), request.container_id,
                                       request.exec_id)
        return pb.StartResponse(pid=pid)

    @rpc
    async def Delete(self, request, context):
        return await self.service.delete(namespace_of(context), request.container_id)

    @rpc
    async def DeleteProcess(self, request, context):
        return await self.service.delete_process(namespace_of(context), request.container_id,
                                                 request.exec_id)

    @rpc
    async def Get(self, request, context):
        response = pb.GetResponse()
        await self.service.get(namespace_of(context), request.container_id, request.exec_id,
                               response.process)
        return response

    @rpc
    async def List(self, request, context):
        return pb.ListTasksResponse(tasks=await self.service.list(namespace_of(context)))

    @rpc
    async def Kill(self, request, context):
        await self.service.kill(namespace_of(context), request.container_id, request.exec_id,
                                request.signal, request.all)
        return empty_pb2.Empty()

    @rpc
    async def Exec(self, request, context):
        await self.service.exec(namespace_of(context), request)
        return empty_pb2.Empty()

    @rpc
    async def ResizePty(self, request, context):
        await self.service.resize_pty(namespace_of(context), request)
        return empty_pb2.Empty()

    @rpc
    async def CloseIO(self, request, context):
        await self.service.close_io(namespace_of(context), request)
        return empty_pb2.Empty()

    @rpc
    async def Pause(self, request, context):
        await self.service.pause(namespace_of(context), request.container_id)
        return empty_pb2.Empty()

    @rpc
    async def Resume(self, request, context):
        await self.service.resume(namespace_of(context), request.container_id)
        return empty_pb2.Empty()

    @rpc
    async def ListPids(self, request, context):
        processes = await self.service.pids(namespace_of(context), request.container_id)
        return pb.ListPidsResponse(processes=processes)

    @rpc
    def Checkpoint(self, request, context):
        self.service.checkpoint(namespace_of(context), request.container_id)

    @rpc
    async def Update(self, request, context):
        await self.service.update(namespace_of(context), request)
        return empty_pb2.Empty()

    @rpc
    async def Metrics(self, request, context):
        metrics = await self.service.metrics(namespace_of(context), request.filters)
        return pb.MetricsResponse(metrics=metrics)

    @rpc
    async def Wait(self, request, context):
        resp = await self.service.wait(namespace_of(context), request.container_id,
                                       request.exec_id)
        return pb.WaitResponse(exit_status=resp.exit_status, exited_at=resp.exited_at)


@dataclass
class TasksServiceConfig:
    rdt_config_file: str = unsupported("", "Intel RDT is not implemented")


def _service(ic: InitContext) -> TasksService:
    ic.get(MONITOR)
    return TasksService(ic.get(METADATA).containers, ic.get_by_id(RUNTIME_V2, "task"),
                        ic.server_config.timeout("io.containerd.timeout.task.state"))


REGISTRATIONS = [
    Registration(SERVICE, "tasks-service", _service,
                 requires=(EVENT, RUNTIME_V1, RUNTIME_V2, METADATA, MONITOR),
                 config=TasksServiceConfig),
    Registration(GRPC, "tasks", lambda ic: TasksAdapter(ic.get_by_id(SERVICE, "tasks-service")),
                 requires=(SERVICE,)),
]
