"""The two transports of a `channels.Session`: SPDY/3.1 streams and WebSocket frames.

Each reads its socket in `run()` (the connection's reader task), hands input to the
channel queues (awaiting room there, so a consumer that does not keep up stops the
reads) and writes under the transport's flow control. `idle_timeout` closes the
connection when nothing moved either way for that long.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time

from . import spdy
from .channels import WS_CLOSE_SIGNAL, Closed, Session

log = logging.getLogger("appliance.cri.streaming")

READ_SIZE = 256 * 1024
WRITE_CHUNK = 256 * 1024
WRITE_BUFFER = 1 << 20   # bytes queued in the transport before a write waits
FINISH_GRACE = 5.0  # seconds a finished connection waits for the peer to close first


class _Transport(Session):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 protocol: str, idle_timeout: float):
        super().__init__()
        self.reader, self.writer = reader, writer
        # a few frames in flight while the next chunk is read (asyncio's default: 64 KiB)
        writer.transport.set_write_buffer_limits(high=WRITE_BUFFER)
        self.protocol = protocol
        self.idle_timeout = idle_timeout
        self.last_activity = time.monotonic()
        self.peer_done = asyncio.Event()   # the peer closed its side or the socket failed

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    async def watch_idle(self) -> None:
        """Close the connection once nothing moved for idle_timeout (0: never)."""
        if self.idle_timeout <= 0:
            return
        while not self.closed.is_set():
            left = self.last_activity + self.idle_timeout - time.monotonic()
            if left <= 0:
                log.info("streaming connection idle for %gs: closed", self.idle_timeout)
                self.abort()
                return
            await asyncio.sleep(left)

    def abort(self) -> None:
        self.closed.set()
        self.end_inputs()
        self.writer.transport.abort()

    async def _send(self, data: bytes) -> None:
        if not data:
            return
        if self.closed.is_set() or self.writer.is_closing():
            raise Closed("connection closed")
        self.writer.write(data)
        try:
            await self.writer.drain()
        except (ConnectionError, RuntimeError) as exc:
            raise Closed(str(exc)) from None
        self.touch()

    async def run(self, initial: bytes = b"") -> None:
        """Read until the peer closes; every input queue gets its end."""
        try:
            if initial:
                await self._received(initial)
            while not self.closed.is_set():
                data = await self.reader.read(READ_SIZE)
                if not data:
                    break
                self.touch()
                if not await self._received(data):
                    break
        except (ConnectionError, Closed, spdy.ProtocolError) as exc:
            log.debug("streaming connection: %s", exc)
        finally:
            self.peer_done.set()
            self.end_inputs()

    async def _received(self, data: bytes) -> bool:
        raise NotImplementedError

    async def _close_socket(self) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.peer_done.wait(), FINISH_GRACE)
        self.closed.set()
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


class SpdySession(_Transport):
    """Streams named by `classify(headers)` → key (a channel; port-forward: the stream id)."""

    def __init__(self, reader, writer, protocol: str, idle_timeout: float, classify):
        super().__init__(reader, writer, protocol, idle_timeout)
        self.conn = spdy.Connection(server=True)
        self.classify = classify
        self.key_stream: dict = {}
        self.stream_key: dict[int, object] = {}
        self.opened: asyncio.Queue = asyncio.Queue()   # (key, headers) of each new stream
        self._window = asyncio.Event()

    async def _received(self, data: bytes) -> bool:
        try:
            events = self.conn.receive(data)
        except spdy.ProtocolError as exc:
            log.info("SPDY protocol error from a streaming client: %s", exc)
            await self._send(self.conn.data_to_send())
            return False
        await self._send(self.conn.data_to_send())
        for event in events:
            if isinstance(event, spdy.StreamOpened):
                key = self.classify(event.headers, event.stream_id)
                if key is None or key in self.key_stream:
                    self.conn.reset(event.stream_id, spdy.REFUSED_STREAM)
                else:
                    self.key_stream[key] = event.stream_id
                    self.stream_key[event.stream_id] = key
                    self.conn.reply(event.stream_id)
                    self.opened.put_nowait((key, event.headers))
                    if event.fin:
                        await self.deliver(key, None)
                await self._send(self.conn.data_to_send())
            elif isinstance(event, spdy.Data):
                key = self.stream_key.get(event.stream_id)
                if key is not None:
                    if event.data:
                        await self.deliver(key, event.data)
                    if event.fin:
                        await self.deliver(key, None)
                    await self._send(self.conn.data_to_send())
            elif isinstance(event, spdy.StreamReset):
                key = self.stream_key.get(event.stream_id)
                if key is not None:
                    await self.deliver(key, None)
                self._window.set()
            elif isinstance(event, spdy.WindowOpened):
                self._window.set()
        return True

    def taken(self, key, n: int) -> None:
        """Give the peer its windows back (written at once: WINDOW_UPDATEs are small)."""
        sid = self.key_stream.get(key)
        if sid is not None and not self.writer.is_closing():
            self.conn.consumed(sid, n)
            self.writer.write(self.conn.data_to_send())

    async def write(self, key, data: bytes) -> None:
        sid = self.key_stream[key]
        view = memoryview(data)
        while view:
            n = self.conn.send_data(sid, bytes(view[:WRITE_CHUNK]))
            if n == 0:
                if self.conn.sendable(sid) == 0 and sid not in self.conn.stream_send_windows:
                    raise Closed(f"stream {sid} closed")
                self._window.clear()
                waiter = asyncio.ensure_future(self._window.wait())
                closing = asyncio.ensure_future(self.peer_done.wait())
                await asyncio.wait({waiter, closing}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel(), closing.cancel()
                if self.peer_done.is_set():
                    raise Closed("connection closed")
                continue
            view = view[n:]
            await self._send(self.conn.data_to_send())

    async def close_channel(self, key) -> None:
        sid = self.key_stream.get(key)
        if sid is not None and sid in self.conn.stream_send_windows \
                and sid not in self.conn.local_closed:
            self.conn.send_data(sid, b"", fin=True)
            with contextlib.suppress(Closed):
                await self._send(self.conn.data_to_send())

    async def reset(self, key) -> None:
        sid = self.key_stream.get(key)
        if sid is not None and sid in self.conn.open_streams:
            self.conn.reset(sid)
            with contextlib.suppress(Closed):
                await self._send(self.conn.data_to_send())

    async def finish(self) -> None:
        for key in list(self.key_stream):
            await self.close_channel(key)
        self.conn.go_away(spdy.GOAWAY_OK)
        with contextlib.suppress(Closed):
            await self._send(self.conn.data_to_send())
        await self._close_socket()


class WsSession(_Transport):
    """WebSocket frames whose first byte (or digit, base64) names the channel."""

    def __init__(self, reader, writer, protocol: str, idle_timeout: float, ws, base64_: bool):
        super().__init__(reader, writer, protocol, idle_timeout)
        self.ws = ws
        self.base64 = base64_
        self.v5 = protocol.startswith("v5.")

    async def _flush(self) -> None:
        await self._send(b"".join(self.ws.data_to_send()))

    async def _received(self, data: bytes) -> bool:
        from websockets.frames import Opcode
        self.ws.receive_data(data)
        for frame in self.ws.events_received():
            if frame.opcode not in (Opcode.BINARY, Opcode.TEXT):
                continue
            payload = bytes(frame.data)
            if not payload:
                continue
            if self.base64:
                try:
                    channel, payload = payload[0] - 0x30, base64.b64decode(payload[1:])
                except ValueError:
                    continue
            else:
                channel, payload = payload[0], payload[1:]
            if channel == WS_CLOSE_SIGNAL and self.v5:
                if payload:
                    await self.deliver(payload[0], None)
            elif payload:
                await self.deliver(channel, payload)
        await self._flush()
        return not self.ws.close_expected() and self.ws.state.name == "OPEN"

    async def write(self, channel: int, data: bytes) -> None:
        view = memoryview(data)
        while True:
            chunk = bytes(view[:WRITE_CHUNK])
            if self.base64:
                self.ws.send_text(str(channel).encode() + base64.b64encode(chunk))
            else:
                self.ws.send_binary(bytes([channel]) + chunk)
            await self._flush()
            view = view[WRITE_CHUNK:]
            if not view:
                return

    async def finish(self) -> None:
        with contextlib.suppress(Exception):
            if self.ws.state.name == "OPEN":
                self.ws.send_close(1000)
            await self._flush()
        await self._close_socket()
