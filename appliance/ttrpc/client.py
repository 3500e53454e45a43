"""Asyncio TTRPC client: unary calls multiplexed over one unix-socket connection."""
from __future__ import annotations

import asyncio
import logging

from google.protobuf.message import DecodeError

from .. import errdefs
from ..errdefs import StatusCode
from .framing import (NAMESPACE_KEY, REQUEST, RESPONSE, FrameDecoder, FrameTooLarge, KeyValue,
                      Request, Response, encode_frame)

log = logging.getLogger("appliance.ttrpc")

_CODES = {c.value[0]: c for c in StatusCode}


def _error(code: int | StatusCode, message: str) -> errdefs.ApplianceError:
    if isinstance(code, int):
        code = _CODES.get(code, StatusCode.UNKNOWN)
    return errdefs.from_status(code, message)


class TTRPCClient(asyncio.Protocol):
    """The connection's protocol itself: a response is matched to its call as it is read
    (no reader task, no stream objects in between), a request is one transport write,
    waiting only while the transport asks the writer to pause."""

    def __init__(self, *, namespace: str | None = None, write_timeout: float = 30.0):
        """Use ``await TTRPCClient.connect(...)``."""
        self.namespace = namespace  # sent as containerd-namespace-ttrpc unless overridden
        self._write_timeout = write_timeout
        self._transport: asyncio.Transport | None = None
        self._decoder = FrameDecoder()
        self._next_id = 1  # client stream ids are odd: 1, 3, 5, ...
        self._pending: dict[int, asyncio.Future] = {}
        self._closed: errdefs.ApplianceError | None = None
        self._paused = False   # the transport's buffer is full: writers wait
        self._drain_waiters: list[asyncio.Future] = []
        self._lost = asyncio.get_running_loop().create_future()   # the socket is closed

    @classmethod
    async def connect(cls, path: str, timeout: float = 10.0, *, namespace: str | None = None,
                      write_timeout: float = 30.0) -> "TTRPCClient":
        """Dial a unix socket; ``path`` may carry the shim's ``unix://`` prefix."""
        path = path.removeprefix("unix://")
        client = cls(namespace=namespace, write_timeout=write_timeout)
        try:
            async with asyncio.timeout(timeout):
                await asyncio.get_running_loop().create_unix_connection(lambda: client, path)
        except (OSError, asyncio.TimeoutError) as exc:
            raise errdefs.Unavailable(f"ttrpc: dial {path}: {exc!r}") from exc
        return client

    @property
    def closed(self) -> bool:
        return self._closed is not None

    async def call(self, service: str, method: str, request=b"", metadata=None,
                   timeout: float | None = None) -> bytes:
        """One unary call; returns the response payload.

        ``request`` is bytes or a protobuf message. ``metadata`` maps key to a
        string or a list of strings. ``timeout`` (seconds) is sent to the server
        as timeout_nano and bounds the local wait; without it the call waits
        until answered or the connection drops. Errors are errdefs exceptions:
        the peer's status mapped by errdefs.from_status, DeadlineExceeded on
        timeout, Unavailable when the connection is or becomes closed.
        """
        if self._closed is not None:
            raise errdefs.Unavailable(self._closed.message)
        if hasattr(request, "SerializeToString"):
            request = request.SerializeToString()
        md = dict(metadata or {})
        if self.namespace and NAMESPACE_KEY not in md:
            md[NAMESPACE_KEY] = self.namespace
        req = Request(service=service, method=method, payload=bytes(request),
                      timeout_nano=int(timeout * 1e9) if timeout else 0,
                      metadata=[KeyValue(key=k, value=v) for k, vs in md.items()
                                for v in ([vs] if isinstance(vs, str) else vs)])
        stream_id = self._next_id
        self._next_id += 2
        try:
            frame = encode_frame(stream_id, REQUEST, req.SerializeToString())
        except FrameTooLarge as exc:
            raise _error(StatusCode.RESOURCE_EXHAUSTED, str(exc)) from None

        fut = asyncio.get_running_loop().create_future()
        self._pending[stream_id] = fut
        try:
            async with asyncio.timeout(timeout):
                self._transport.write(frame)   # one whole frame: calls never interleave
                if self._paused:
                    await self._drain()
                payload = await fut
        except TimeoutError:
            raise errdefs.DeadlineExceeded(
                f"{service}/{method}: context deadline exceeded") from None
        finally:
            self._pending.pop(stream_id, None)  # a late response is then dropped

        try:
            resp = Response.FromString(payload)
        except DecodeError as exc:
            raise _error(StatusCode.INTERNAL, f"ttrpc: bad response: {exc}") from None
        if resp.status.code != 0:
            raise _error(resp.status.code, resp.status.message)
        return resp.payload

    async def _drain(self) -> None:
        """Wait (bounded by the write timeout) until the transport takes writes again."""
        waiter = asyncio.get_running_loop().create_future()
        self._drain_waiters.append(waiter)
        try:
            async with asyncio.timeout(self._write_timeout):
                await waiter
        except (ConnectionError, asyncio.TimeoutError) as exc:
            self._shutdown(f"ttrpc: write failed: {exc!r}")
            raise errdefs.Unavailable(f"ttrpc: write failed: {exc!r}") from exc

    # --- asyncio.Protocol -----------------------------------------------------

    def connection_made(self, transport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        for item in self._decoder.feed(data):
            fut = self._pending.get(item.stream_id)
            if fut is None or fut.done():
                continue  # caller gave up (timeout), or a stray id
            if isinstance(item, FrameTooLarge):
                fut.set_exception(_error(StatusCode.RESOURCE_EXHAUSTED, str(item)))
            elif item.type == RESPONSE:
                fut.set_result(item.payload)
            # DATA (streaming) frames are not used by unary calls: ignored.

    def eof_received(self) -> None:
        return None   # the transport closes itself: connection_lost follows

    def connection_lost(self, exc) -> None:
        self._shutdown("ttrpc: closed" if exc is None else f"ttrpc: connection lost: {exc!r}")
        self._wake_writers(ConnectionResetError("Connection lost"))
        if not self._lost.done():
            self._lost.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake_writers(None)

    def _wake_writers(self, exc: BaseException | None) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                if exc is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(exc)

    # --- closing ----------------------------------------------------------------

    def _shutdown(self, reason: str) -> None:
        """Fail every pending call with Unavailable and close the transport."""
        if self._closed is None:
            self._closed = errdefs.Unavailable(reason)
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(errdefs.Unavailable(reason))
        if self._transport is not None:
            self._transport.close()

    async def wait_closed(self) -> None:
        """Return once the connection is closed, by the peer or by close()."""
        await asyncio.wait({self._lost})

    def close(self) -> None:
        """Close the connection; pending calls fail with Unavailable."""
        self._shutdown("ttrpc: closed")

    async def aclose(self, timeout: float = 5.0) -> None:
        """close() and wait (bounded) until the socket is really closed."""
        self.close()
        await asyncio.wait({self._lost}, timeout=timeout)

    async def __aenter__(self) -> "TTRPCClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
