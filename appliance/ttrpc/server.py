"""Asyncio TTRPC server on a unix socket (unary methods only, like containerd's
daemon-side Events service; ttrpc streaming is not implemented)."""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
import struct
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from google.protobuf.message import DecodeError

from ..acceptor import Listener
from ..errdefs import ApplianceError, status_of
from ..errdefs import StatusCode
from .framing import (DATA, NAMESPACE_KEY, REQUEST, RESPONSE, FrameDecoder, FrameTooLarge,
                      Request, Response, Status, encode_frame)

log = logging.getLogger("appliance.ttrpc")


@dataclass
class CallContext:
    """What a handler learns about its call."""
    service: str
    method: str
    metadata: dict[str, str]  # first value per key; all pairs are in metadata_pairs
    metadata_pairs: list[tuple[str, str]] = field(default_factory=list)
    timeout: float | None = None  # seconds, from Request.timeout_nano (None = no deadline)
    peer: tuple[int, int, int] | None = None  # (pid, uid, gid) from SO_PEERCRED

    @property
    def namespace(self) -> str | None:
        return self.metadata.get(NAMESPACE_KEY) or None


Handler = Callable[[bytes, CallContext], Awaitable[bytes]]
PeerCheck = Callable[[tuple[int, int, int]], bool]  # (pid, uid, gid) -> accept?


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", raw)


def require_same_user(cred: tuple[int, int, int]) -> bool:
    """ttrpc's UnixSocketRequireSameUser, on the uid: the peer must be us."""
    return cred[1] == os.geteuid()


def _status(code: StatusCode, message: str = "") -> Status:
    return Status(code=code.value[0], message=message)


class TTRPCServer:
    def __init__(self, *, peer_check: PeerCheck | None = require_same_user,
                 default_timeout: float | None = None, write_timeout: float = 30.0):
        """peer_check: called with the peer's (pid, uid, gid); False closes the
        connection before anything is read. None accepts everyone.
        default_timeout: handler deadline when a request carries none.
        write_timeout: a peer that stops reading for this long is disconnected."""
        self._services: dict[str, dict[str, Handler]] = {}
        self._peer_check = peer_check
        self._default_timeout = default_timeout
        self._write_timeout = write_timeout
        self._server: Listener | None = None
        self._path: str | None = None
        self._conns: set[_Connection] = set()

    def register(self, service_name: str, methods: dict[str, Handler]) -> None:
        """Register unary handlers: ``async def handler(request_bytes, ctx) -> bytes``."""
        if service_name in self._services:
            raise ValueError(f"duplicate service {service_name} registered")
        self._services[service_name] = dict(methods)

    async def serve(self, path: str, mode: int = 0o660, uid: int | None = None,
                    gid: int | None = None) -> None:
        """Listen on ``path`` and return; connections are handled until close()."""
        if self._server is not None:
            raise RuntimeError("already serving")
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)  # stale socket from a previous run
        except FileNotFoundError:
            pass
        # Bind, fix permissions, then listen: nobody can connect before listen(),
        # so there is no window with the umask's default permissions.
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            os.chmod(path, mode)
            if uid is not None or gid is not None:
                os.chown(path, -1 if uid is None else uid, -1 if gid is None else gid)
            self._server = Listener(sock, lambda: _Connection(self))
        except BaseException:
            sock.close()
            raise
        self._path = path

    async def close(self, timeout: float = 5.0) -> None:
        """Stop listening, cancel in-flight calls, drop connections, remove the socket."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        calls = [task for conn in list(self._conns) for task in conn.drop()]
        if calls:
            await asyncio.wait(calls, timeout=timeout)
        if self._path:
            try:
                os.unlink(self._path)
            except FileNotFoundError:
                pass
            self._path = None


class _Connection(asyncio.Protocol):
    """One client connection: frames are decoded and dispatched as they are read, each
    call runs in a task of its own, answers are whole transport writes. A peer that stops
    reading is not read from until it does, and is dropped after the write timeout."""

    def __init__(self, server: TTRPCServer):
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.decoder = FrameDecoder()
        self.calls: set[asyncio.Task] = set()
        self.peer: tuple[int, int, int] | None = None
        self.last_id = 0  # request ids must increase
        self.stalled: asyncio.TimerHandle | None = None   # paused writing since

    def connection_made(self, transport) -> None:
        self.transport = transport
        try:
            self.peer = peer_credentials(transport.get_extra_info("socket"))
        except OSError as exc:
            log.debug("ttrpc connection ended: %s", exc)
            transport.close()
            return
        check = self.server._peer_check
        if check is not None and not check(self.peer):
            log.warning("ttrpc: rejecting connection from pid %d uid %d gid %d: "
                        "invalid credentials", *self.peer)
            transport.close()
            return
        self.server._conns.add(self)

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        for item in self.decoder.feed(data):
            self._dispatch(item)

    def connection_lost(self, exc) -> None:
        if exc is not None:
            log.debug("ttrpc connection ended: %s", exc)
        self.drop()   # as in ttrpc, calls die with their connection

    def drop(self) -> list[asyncio.Task]:
        """Cancel the calls and close the connection; the calls' tasks."""
        self.server._conns.discard(self)
        if self.stalled is not None:
            self.stalled.cancel()
            self.stalled = None
        calls = list(self.calls)
        for task in calls:
            task.cancel()
        self.transport.close()
        return calls

    def pause_writing(self) -> None:
        self.transport.pause_reading()
        self.stalled = asyncio.get_running_loop().call_later(
            self.server._write_timeout, self._write_timed_out)

    def resume_writing(self) -> None:
        if self.stalled is not None:
            self.stalled.cancel()
            self.stalled = None
        if not self.transport.is_closing():
            self.transport.resume_reading()

    def _write_timed_out(self) -> None:
        self.stalled = None
        log.warning("ttrpc: dropping connection, cannot write: %r", TimeoutError())
        self.drop()
        self.transport.abort()   # its unread answers are not waited for

    def _dispatch(self, item) -> None:
        # Mirrors ttrpc's serverConn.run: protocol errors answer on the offending
        # stream id with a status, and the connection carries on.
        if isinstance(item, FrameTooLarge):
            return self._send_status(item.stream_id, _status(
                StatusCode.RESOURCE_EXHAUSTED, str(item)))
        if item.stream_id % 2 != 1:
            return self._send_status(item.stream_id, _status(
                StatusCode.INVALID_ARGUMENT,
                "StreamID must be odd for client initiated streams"))
        if item.type == DATA:
            return self._send_status(item.stream_id, _status(
                StatusCode.INVALID_ARGUMENT, "StreamID is no longer active"))
        if item.type != REQUEST:
            return  # unknown types are ignored for forward compatibility
        if item.stream_id <= self.last_id:
            return self._send_status(item.stream_id, _status(
                StatusCode.INVALID_ARGUMENT, "StreamID cannot be re-used and must increment"))
        self.last_id = item.stream_id
        try:
            req = Request.FromString(item.payload)
        except DecodeError as exc:
            return self._send_status(item.stream_id, _status(
                StatusCode.INVALID_ARGUMENT, f"unmarshal request error: {exc}"))
        methods = self.server._services.get(req.service)
        if methods is None:
            return self._send_status(item.stream_id, _status(
                StatusCode.UNIMPLEMENTED, f"service {req.service}"))
        handler = methods.get(req.method)
        if handler is None:
            return self._send_status(item.stream_id, _status(
                StatusCode.UNIMPLEMENTED, f"method {req.method}"))
        task = asyncio.create_task(self._call(item.stream_id, req, handler))
        self.calls.add(task)
        task.add_done_callback(self.calls.discard)

    async def _call(self, stream_id: int, req, handler: Handler):
        pairs = [(kv.key, kv.value) for kv in req.metadata]
        md: dict[str, str] = {}
        for k, v in pairs:
            md.setdefault(k, v)
        timeout = req.timeout_nano / 1e9 if req.timeout_nano > 0 else self.server._default_timeout
        ctx = CallContext(req.service, req.method, md, pairs, timeout, self.peer)
        try:
            async with asyncio.timeout(timeout):   # (no extra task, unlike wait_for)
                result = await handler(req.payload, ctx)
            if hasattr(result, "SerializeToString"):  # allow returning a message
                result = result.SerializeToString()
            resp = Response(status=Status(code=0), payload=bytes(result or b""))
        except asyncio.TimeoutError:
            resp = Response(status=_status(StatusCode.DEADLINE_EXCEEDED,
                                           "context deadline exceeded"))
        except Exception as exc:
            if not isinstance(exc, ApplianceError):
                log.exception("ttrpc: unexpected error in %s/%s", req.service, req.method)
            code, message = status_of(exc)
            resp = Response(status=_status(code, message))
        self._send(stream_id, resp)

    def _send_status(self, stream_id: int, status) -> None:
        self._send(stream_id, Response(status=status))

    def _send(self, stream_id: int, resp) -> None:
        try:
            frame = encode_frame(stream_id, RESPONSE, resp.SerializeToString())
        except FrameTooLarge as exc:
            # ttrpc would drop the connection here; an error status is kinder.
            frame = encode_frame(stream_id, RESPONSE, Response(status=_status(
                StatusCode.RESOURCE_EXHAUSTED, str(exc))).SerializeToString())
        if not self.transport.is_closing():
            self.transport.write(frame)
