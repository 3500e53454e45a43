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

from ..acceptor import Listener, serve_streams
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
        self._conns: set[asyncio.Task] = set()

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
            self._server = serve_streams(sock, self._on_connect)
        except BaseException:
            sock.close()
            raise
        self._path = path

    async def close(self, timeout: float = 5.0) -> None:
        """Stop listening, cancel in-flight calls, drop connections, remove the socket."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for task in list(self._conns):
            task.cancel()
        if self._conns:
            await asyncio.wait(list(self._conns), timeout=timeout)
        if self._path:
            try:
                os.unlink(self._path)
            except FileNotFoundError:
                pass
            self._path = None

    # --- per connection ------------------------------------------------------

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        task = asyncio.current_task()
        self._conns.add(task)
        try:
            await _Connection(self, reader, writer).run()
        except asyncio.CancelledError:
            pass  # close() cancelled us; StreamReaderProtocol would log it otherwise
        finally:
            self._conns.discard(task)


class _Connection:
    def __init__(self, server: TTRPCServer, reader, writer):
        self.server, self.reader, self.writer = server, reader, writer
        self.write_lock = asyncio.Lock()
        self.calls: set[asyncio.Task] = set()
        self.peer: tuple[int, int, int] | None = None
        self.last_id = 0  # request ids must increase

    async def run(self):
        try:
            sock = self.writer.get_extra_info("socket")
            self.peer = peer_credentials(sock)
            check = self.server._peer_check
            if check is not None and not check(self.peer):
                log.warning("ttrpc: rejecting connection from pid %d uid %d gid %d: "
                            "invalid credentials", *self.peer)
                return
            decoder = FrameDecoder()
            while True:
                data = await self.reader.read(1 << 16)
                if not data:
                    return  # client went away
                for item in decoder.feed(data):
                    await self._dispatch(item)
        except (ConnectionError, OSError) as exc:
            log.debug("ttrpc connection ended: %s", exc)
        finally:
            # As in ttrpc, calls die with their connection (their context is cancelled).
            for task in self.calls:
                task.cancel()
            if self.calls:
                await asyncio.wait(list(self.calls), timeout=1.0)
            self.writer.close()

    async def _dispatch(self, item):
        # Mirrors ttrpc's serverConn.run: protocol errors answer on the offending
        # stream id with a status, and the connection carries on.
        if isinstance(item, FrameTooLarge):
            return await self._send_status(item.stream_id, _status(
                StatusCode.RESOURCE_EXHAUSTED, str(item)))
        if item.stream_id % 2 != 1:
            return await self._send_status(item.stream_id, _status(
                StatusCode.INVALID_ARGUMENT,
                "StreamID must be odd for client initiated streams"))
        if item.type == DATA:
            return await self._send_status(item.stream_id, _status(
                StatusCode.INVALID_ARGUMENT, "StreamID is no longer active"))
        if item.type != REQUEST:
            return  # unknown types are ignored for forward compatibility
        if item.stream_id <= self.last_id:
            return await self._send_status(item.stream_id, _status(
                StatusCode.INVALID_ARGUMENT, "StreamID cannot be re-used and must increment"))
        self.last_id = item.stream_id
        try:
            req = Request.FromString(item.payload)
        except DecodeError as exc:
            return await self._send_status(item.stream_id, _status(
                StatusCode.INVALID_ARGUMENT, f"unmarshal request error: {exc}"))
        methods = self.server._services.get(req.service)
        if methods is None:
            return await self._send_status(item.stream_id, _status(
                StatusCode.UNIMPLEMENTED, f"service {req.service}"))
        handler = methods.get(req.method)
        if handler is None:
            return await self._send_status(item.stream_id, _status(
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
        await self._send(stream_id, resp)

    async def _send_status(self, stream_id: int, status) -> None:
        await self._send(stream_id, Response(status=status))

    async def _send(self, stream_id: int, resp) -> None:
        try:
            frame = encode_frame(stream_id, RESPONSE, resp.SerializeToString())
        except FrameTooLarge as exc:
            # ttrpc would drop the connection here; an error status is kinder.
            frame = encode_frame(stream_id, RESPONSE, Response(status=_status(
                StatusCode.RESOURCE_EXHAUSTED, str(exc))).SerializeToString())
        async with self.write_lock:
            if self.writer.is_closing():
                return
            self.writer.write(frame)
            try:
                async with asyncio.timeout(self.server._write_timeout):
                    await self.writer.drain()
            except (asyncio.TimeoutError, ConnectionError) as exc:
                log.warning("ttrpc: dropping connection, cannot write: %r", exc)
                self.writer.close()
