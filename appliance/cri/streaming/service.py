"""The CRI's streaming side: Exec/Attach/PortForward URLs, ExecSync, and the server
behind the URLs, started on the first URL asked for and owned by the daemon's supervisor."""
from __future__ import annotations

import asyncio
import json
import logging
import os

from ...config import parse_duration
from ...core.runtime.shim import wrap
from ...errdefs import ApplianceError, InvalidArgument, NotFound
from . import portforward, process, remotecommand

log = logging.getLogger("appliance.cri.streaming")

RUNNING = (2, 4, 5)  # containerd.v1.types.Status: running, paused, pausing (the CRI's RUNNING)
TASK_STATES = {1: "CONTAINER_CREATED", 3: "CONTAINER_EXITED"}
CRI_RUNNING = 1      # runtime.v1 ContainerState
CRI_STATES = {0: "CONTAINER_CREATED", 2: "CONTAINER_EXITED"}


class StreamingService:
    def __init__(self, cfg, containers, runtime, io_root: str, supervisor,
                 cri_container=lambda cid: None):
        self.cfg = cfg
        self.cri_container = cri_container  # cid -> the CRI's container (cri/store.py) or None
        self.containers = containers
        self.runtime = runtime
        self.io_root = io_root
        self.supervisor = supervisor
        self.server = None
        self._starting: asyncio.Future | None = None

    # --- ExecSync -----------------------------------------------------------------

    async def exec_sync(self, cid: str, cmd: list[str], timeout: int):
        try:
            await self._running_container(cid)
            os.makedirs(self.io_root, mode=0o700, exist_ok=True)
            return await process.exec_sync(self.containers, self.runtime, self.io_root, cid,
                                           cmd, timeout)
        except ApplianceError as exc:
            raise wrap(exc, "failed to exec in container") from None

    # --- URLs -----------------------------------------------------------------------

    async def exec_url(self, request) -> str:
        await self._running_container(request.container_id)  # containerd looks first
        _validate(request)
        return (await self._server()).url("exec", request)

    async def attach_url(self, request) -> str:
        state = await self._running_container(request.container_id, want_state=True)
        _validate(request)
        process.check_attachable(request.container_id, state, stdin=request.stdin,
                                 stdout=request.stdout, stderr=request.stderr, tty=request.tty)
        return (await self._server()).url("attach", request)

    async def port_forward_url(self, request) -> str:
        self.netns_of(request.pod_sandbox_id)
        return (await self._server()).url("portforward", request)

    async def _running_container(self, cid: str, want_state: bool = False):
        """Checks the container runs (containerd's errors otherwise); its task's state if
        asked for or if the CRI does not know it."""
        if not cid:  # containerd's id index refuses an empty prefix
            raise ApplianceError('failed to find container "" in store: Prefix can\'t be empty')
        cri = self.cri_container(cid)
        if cri is None or cri.id != cid:  # not the CRI's own (made by ctr, say), or a prefix
            try:
                self.containers.get(process.NAMESPACE, cid)
            except NotFound:
                raise NotFound(f'failed to find container "{cid}" in store: not found') \
                    from None
        elif cri.status.state != CRI_RUNNING:
            name = CRI_STATES.get(cri.status.state, "CONTAINER_UNKNOWN")
            raise ApplianceError(f"container is in {name} state")
        if not self.runtime.exists(process.NAMESPACE, cid):
            raise ApplianceError("container is in CONTAINER_EXITED state")
        if cri is not None and not want_state:
            return None  # the CRI's own record says running (containerd asks no more)
        shim = self.runtime.get(process.NAMESPACE, cid)
        state = await shim.call("State", process.shim_pb2.StateRequest(id=cid))
        if state.status not in RUNNING:
            name = TASK_STATES.get(state.status, "CONTAINER_UNKNOWN")
            raise ApplianceError(f"container is in {name} state")
        return state

    def netns_of(self, sandbox_id: str) -> str:
        """The pod's network namespace: the path in its sandbox container's spec ("" for a
        host-network pod, which has none)."""
        if not sandbox_id:  # containerd's id index refuses an empty prefix
            raise ApplianceError('failed to find sandbox "": Prefix can\'t be empty')
        try:
            sandbox = self.containers.get(process.NAMESPACE, sandbox_id)
        except NotFound:
            raise NotFound(f'failed to find sandbox "{sandbox_id}": not found') from None
        if not self.runtime.exists(process.NAMESPACE, sandbox_id):
            raise ApplianceError("sandbox container is not running")
        spec = json.loads(sandbox.spec.value) if sandbox.spec is not None else {}
        for ns in (spec.get("linux") or {}).get("namespaces") or []:
            if ns.get("type") == "network":
                if ns.get("path"):
                    return ns["path"]
                pid = self.runtime.get(process.NAMESPACE, sandbox_id).task_pid
                return f"/proc/{pid}/ns/net"  # one runc made (not a CRI pod)
        return ""  # a host-network pod

    async def _server(self):
        if self.server is not None:
            return self.server
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
        try:
            return await asyncio.shield(self._starting)
        except BaseException:
            self._starting = None
            raise

    async def _start(self):
        from .server import StreamServer
        cfg = self.cfg
        idle = parse_duration(cfg.stream_idle_timeout) if cfg.stream_idle_timeout else 0.0
        ssl_context = None
        if cfg.enable_tls_streaming:
            from ...process.settings import asyncio_with_ssl
            asyncio_with_ssl()  # the daemon imported asyncio without ssl (settings.py)
            from .tls import server_context
            ssl_context = await asyncio.to_thread(
                server_context, cfg.x509_key_pair_streaming, cfg.stream_server_address,
                os.path.join(os.path.dirname(self.io_root), "streaming-tls"))
        server = StreamServer({"exec": self._serve_exec, "attach": self._serve_attach,
                               "portforward": self._serve_port_forward}, idle, ssl_context)
        await server.start(cfg.stream_server_address, int(cfg.stream_server_port or 0))
        self.supervisor.task(server.serve(), "cri-streaming-server")
        self.server = server
        return server

    async def _serve_exec(self, request, upgrade) -> None:
        os.makedirs(self.io_root, mode=0o700, exist_ok=True)
        cmd = list(request.cmd)

        def start():
            return process.start_exec(self.containers, self.runtime, self.io_root,
                                      request.container_id, cmd, tty=request.tty,
                                      stdin=request.stdin, stdout=request.stdout,
                                      stderr=request.stderr)
        await remotecommand.serve_process(upgrade.session, start, cmd, stdin=request.stdin,
                                          stdout=request.stdout, stderr=request.stderr,
                                          tty=request.tty, websocket=upgrade.websocket)

    async def _serve_attach(self, request, upgrade) -> None:
        def start():
            return process.attach_task(self.runtime, request.container_id, stdin=request.stdin,
                                       stdout=request.stdout, stderr=request.stderr,
                                       tty=request.tty,
                                       container_io=getattr(
                                           self.cri_container(request.container_id), "io",
                                           None))
        await remotecommand.serve_process(upgrade.session, start, [], stdin=request.stdin,
                                          stdout=request.stdout, stderr=request.stderr,
                                          tty=request.tty, websocket=upgrade.websocket,
                                          failed=remotecommand.ATTACH_FAILED)

    async def _serve_port_forward(self, request, upgrade) -> None:
        sandbox_id = request.pod_sandbox_id
        try:
            netns = self.netns_of(sandbox_id)
        except ApplianceError as exc:
            log.info("port-forward to %s: %s", sandbox_id, exc)
            upgrade.session.abort()
            return
        if not upgrade.websocket:
            await portforward.serve_spdy(upgrade.session, netns, sandbox_id)
            return
        ports = [int(p) for v in upgrade.query.get("port", []) for p in v.split(",")
                 if p.strip().isdigit()] or list(request.port)
        await portforward.serve_websocket(upgrade.session, netns, sandbox_id, ports)


def _validate(request) -> None:
    """kubelet's streaming server's checks of an Exec or Attach request."""
    if not request.container_id:
        raise InvalidArgument("missing required container_id")
    if request.tty and request.stderr:
        raise InvalidArgument("tty and stderr cannot both be true")
    if not (request.stdin or request.stdout or request.stderr):
        raise InvalidArgument("one of stdin, stdout, or stderr must be set")
