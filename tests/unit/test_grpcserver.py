"""The daemon's own gRPC server (appliance/grpcserver), driven by grpcio's real client."""
from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import socket
import struct
import tempfile
import time

import grpc
import hpack
import pytest

from appliance.grpcserver import EOF, Server, h2
from appliance.grpcutil import rpc

PAYLOAD_LIMIT = 4 << 20
VAR = contextvars.ContextVar("VAR", default="unset")


class Handlers(grpc.GenericRpcHandler):
    """Byte-level test methods (no serializers: requests and responses are bytes)."""

    def __init__(self):
        self.cancelled = asyncio.Event()
        self.finished = asyncio.Event()
        self.sum_cancelled = asyncio.Event()
        self.started = []  # methods whose handler ran
        self.methods = {
            "/t.T/Echo": grpc.unary_unary_rpc_method_handler(self.echo),
            "/t.T/Meta": grpc.unary_unary_rpc_method_handler(self.meta),
            "/t.T/Abort": grpc.unary_unary_rpc_method_handler(self.abort),
            "/t.T/Sleep": grpc.unary_unary_rpc_method_handler(self.sleep),
            "/t.T/Crash": grpc.unary_unary_rpc_method_handler(self.crash),
            "/t.T/AbortLong": grpc.unary_unary_rpc_method_handler(self.abort_long),
            "/t.T/Big": grpc.unary_stream_rpc_method_handler(self.big),
            "/t.T/Forever": grpc.unary_stream_rpc_method_handler(self.forever),
            "/t.T/Sum": grpc.stream_unary_rpc_method_handler(self.sum),
            "/t.T/Chat": grpc.stream_stream_rpc_method_handler(self.chat),
            "/t.T/Remaining": grpc.unary_unary_rpc_method_handler(self.remaining),
            "/t.T/BinMeta": grpc.unary_unary_rpc_method_handler(self.bin_meta),
            "/t.T/WrongType": grpc.unary_unary_rpc_method_handler(
                self.echo, response_serializer=lambda m: m.SerializeToString()),
            "/t.T/Parse": grpc.unary_unary_rpc_method_handler(
                self.echo, request_deserializer=lambda b: int(b)),
            "/t.T/RpcSum": grpc.stream_unary_rpc_method_handler(self.rpc_sum),
            "/t.T/BadTrailer": grpc.unary_unary_rpc_method_handler(self.bad_trailer),
            "/t.T/Where": grpc.unary_unary_rpc_method_handler(self.where),
            "/t.T/Suspend": grpc.unary_unary_rpc_method_handler(self.suspend),
            "/t.T/LateCrash": grpc.unary_unary_rpc_method_handler(self.late_crash),
            "/t.T/Timeout": grpc.unary_unary_rpc_method_handler(self.timeout),
            "/t.T/SetVar": grpc.unary_unary_rpc_method_handler(self.set_var),
        }
        self.seen = []   # what where/suspend saw

    def service(self, details):
        method = self.methods.get(details.method)
        if method is not None:
            self.started.append(details.method)
        return method

    async def echo(self, request, context):
        return request

    async def meta(self, request, context):
        return dict(context.invocation_metadata())["who"].encode()

    async def abort(self, request, context):
        await context.abort(grpc.StatusCode.NOT_FOUND, "image \"ä\": 100% not found")

    async def sleep(self, request, context):
        try:
            await asyncio.sleep(float(request))
            return b"woke"
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    async def abort_long(self, request, context):
        await context.abort(grpc.StatusCode.NOT_FOUND, "é" * int(request))

    async def crash(self, request, context):
        raise RuntimeError("boom")

    async def big(self, request, context):
        count, size = map(int, request.split(b"x"))
        for i in range(count):
            yield bytes([i % 251]) * size

    async def forever(self, request, context):
        try:
            while True:
                yield b"tick"
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    async def sum(self, requests, context):
        total = 0
        try:
            async for message in requests:
                total += len(message)
        except asyncio.CancelledError:
            self.sum_cancelled.set()
            raise
        return str(total).encode()

    @rpc  # as the daemon's services are: it turns every Exception into a status
    async def rpc_sum(self, requests, context):
        return await self.sum(requests, context)

    async def remaining(self, request, context):
        return repr(context.time_remaining()).encode()

    async def bad_trailer(self, request, context):
        context.set_trailing_metadata([(request.decode(), 5 if request == b"x" else "text")])
        return b""

    async def bin_meta(self, request, context):
        context.set_trailing_metadata([(k, v) for k, v in context.invocation_metadata()
                                       if k.endswith("-bin")])
        return b""

    async def where(self, request, context):
        self.seen.append((context.task, asyncio.current_task()))
        return b"here"

    async def suspend(self, request, context):
        await asyncio.sleep(0)
        self.seen.append((context.task, asyncio.current_task()))
        return b"back"

    async def late_crash(self, request, context):
        await asyncio.sleep(0)
        raise RuntimeError("late boom")

    async def timeout(self, request, context):
        # asyncio.timeout entered before the first await: it needs a current task
        try:
            async with asyncio.timeout(float(request)):
                await asyncio.sleep(0.5)
            return b"slept"
        except TimeoutError:
            return b"timed out"
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    async def set_var(self, request, context):
        old = VAR.get()
        VAR.set(request.decode())
        return old.encode()

    async def chat(self, request_iterator, context):
        # grpc.aio style: read() until EOF, write() each answer
        while True:
            message = await context.read()
            if message is EOF:
                break
            await context.write(message.upper())
        self.finished.set()


def serve(test, max_receive=PAYLOAD_LIMIT):
    """Run `test(channel, handlers, server)` against a fresh server on a unix socket."""
    async def main():
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "s.sock")
            sock = socket.socket(socket.AF_UNIX)
            sock.bind(path)
            sock.listen(16)
            handlers = Handlers()
            handlers.path = path
            server = Server(max_receive=max_receive, max_send=PAYLOAD_LIMIT)
            server.add_generic_rpc_handlers((handlers,))
            await server.serve_socket(sock)
            channel = grpc.aio.insecure_channel(
                "unix:" + path, options=[("grpc.max_receive_message_length", 64 << 20)])
            try:
                async with asyncio.timeout(60):
                    await test(channel, handlers, server)
            finally:
                await channel.close()
                await server.stop(1.0)
    asyncio.run(main())


def method(channel, name, kind="unary_unary"):
    return getattr(channel, kind)(f"/t.T/{name}")


def test_unary_echo_and_metadata():
    async def test(channel, handlers, server):
        for size in (0, 1, 16379, 16380, 70000, 3 << 20):  # around frame and window sizes
            payload = os.urandom(size)
            assert await method(channel, "Echo")(payload) == payload
        assert await method(channel, "Meta")(b"", metadata=(("who", "ctr"),)) == b"ctr"
    serve(test)


def test_status_codes_and_messages():
    async def test(channel, handlers, server):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await method(channel, "Abort")(b"")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert err.value.details() == "image \"ä\": 100% not found"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await method(channel, "Nope")(b"")
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await method(channel, "Crash")(b"")
        assert err.value.code() == grpc.StatusCode.UNKNOWN
        assert "boom" in err.value.details()
        assert await method(channel, "Echo")(b"still fine") == b"still fine"
    serve(test)


def test_deadline_cancels_the_handler():
    async def test(channel, handlers, server):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await method(channel, "Sleep")(b"30", timeout=0.2)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await asyncio.wait_for(handlers.cancelled.wait(), 5)
        assert await method(channel, "Sleep")(b"0", timeout=5) == b"woke"
        # neither call left its deadline timer behind
        assert not [h for h in asyncio.get_running_loop()._scheduled if not h.cancelled()
                    and getattr(h._callback, "__self__", None).__class__.__name__ == "Call"]
    serve(test)


def test_server_stream_larger_than_every_window():
    async def test(channel, handlers, server):
        received = [m async for m in method(channel, "Big", "unary_stream")(b"24x1048576")]
        assert len(received) == 24
        assert all(m == bytes([i % 251]) * (1 << 20) for i, m in enumerate(received))
    serve(test)


def test_client_stream_larger_than_the_receive_window():
    async def test(channel, handlers, server):
        async def chunks():
            for _ in range(40):
                yield b"z" * (1 << 20)
        assert await method(channel, "Sum", "stream_unary")(chunks()) == str(40 << 20).encode()
    serve(test)


def test_bidirectional_stream_with_read_and_write():
    async def test(channel, handlers, server):
        call = method(channel, "Chat", "stream_stream")()
        for word in (b"a", b"bc", b"def"):
            await call.write(word)
            assert await call.read() == word.upper()
        await call.done_writing()
        assert await call.read() is grpc.aio.EOF
        await asyncio.wait_for(handlers.finished.wait(), 5)
    serve(test)


def test_too_large_request_is_resource_exhausted():
    async def test(channel, handlers, server):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await method(channel, "Echo")(b"x" * (2 << 20))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert await method(channel, "Echo")(b"ok") == b"ok"
    serve(test, max_receive=1 << 20)


def test_client_cancel_reaches_the_handler():
    async def test(channel, handlers, server):
        call = method(channel, "Forever", "unary_stream")(b"")
        assert await call.read() == b"tick"
        call.cancel()
        await asyncio.wait_for(handlers.cancelled.wait(), 5)
    serve(test)


def test_stop_lets_running_calls_finish_and_refuses_new_ones():
    async def test(channel, handlers, server):
        running = asyncio.ensure_future(method(channel, "Sleep")(b"0.3"))
        await asyncio.sleep(0.1)
        stopping = asyncio.ensure_future(server.stop(5))
        assert await running == b"woke"
        await stopping
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await method(channel, "Echo")(b"late", timeout=2)
        assert err.value.code() in (grpc.StatusCode.UNAVAILABLE,
                                    grpc.StatusCode.DEADLINE_EXCEEDED)
    serve(test)


# --- what grpcio's client cannot do: raw HTTP/2 frames ----------------------------------

class RawClient:
    """A bare HTTP/2 client over the server's unix socket, frame by frame."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()

    @classmethod
    async def connect(cls, path, settings=(), window=0):
        """Connect with our SETTINGS `settings` and the connection window grown by `window`."""
        client = cls(*await asyncio.open_unix_connection(path))
        payload = b"".join(struct.pack(">HI", k, v) for k, v in settings)
        client.send(h2.PREFACE + h2.frame(h2.SETTINGS, 0, 0, payload) +
                    (h2.window_update(0, window) if window else b""))
        return client

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    def headers(self, stream_id, path, end_stream=False, extra=()):
        fields = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", path),
                  (b":authority", b"x"), (b"content-type", b"application/grpc"),
                  (b"te", b"trailers"), *extra]
        return h2.frame(h2.HEADERS, h2.END_HEADERS | (h2.END_STREAM if end_stream else 0),
                        stream_id, self.encoder.encode(fields))

    @staticmethod
    def message(stream_id, body, end_stream=True):
        return h2.frame(h2.DATA, h2.END_STREAM if end_stream else 0, stream_id,
                        b"\0" + len(body).to_bytes(4, "big") + body)

    async def frame(self):
        head = await self.reader.readexactly(9)
        length = int.from_bytes(head[:3], "big")
        assert length <= h2.DEFAULT_FRAME_SIZE  # what we did not raise with SETTINGS
        stream_id = int.from_bytes(head[5:], "big") & 0x7FFFFFFF
        return head[3], head[4], stream_id, await self.reader.readexactly(length)

    async def responses(self, stream_ids, on_frame=None):
        """{stream id: (DATA bytes, {trailer: value})} once each stream has ended."""
        data = {sid: bytearray() for sid in stream_ids}
        trailers, pending, block, ends = {}, set(stream_ids), b"", False
        while pending:
            kind, flags, sid, payload = await self.frame()
            if on_frame is not None:
                on_frame(kind, flags, sid, payload)
            if kind in (h2.HEADERS, h2.CONTINUATION):
                block += payload
                ends = ends or kind == h2.HEADERS and flags & h2.END_STREAM
                if flags & h2.END_HEADERS:
                    fields = dict(self.decoder.decode(block, raw=True))
                    if ends:
                        trailers[sid] = fields
                        pending.discard(sid)
                    block, ends = b"", False
                continue
            elif kind == h2.DATA and sid in data:
                data[sid] += payload
            if flags & h2.END_STREAM and kind == h2.DATA or kind == h2.RST_STREAM:
                pending.discard(sid)
        return {sid: (bytes(data[sid]), trailers.get(sid, {})) for sid in stream_ids}

    def close(self):
        self.writer.close()


def leftovers(server) -> list:
    """What the server still holds for calls; empty once every call has ended."""
    held = []
    for conn in server.connections:
        held += [conn.calls, conn.h2.stream_send_windows, conn.h2._unacked_streams,
                 conn.h2.stream_receive_windows, conn.h2.open_streams, conn.blocked]
    return [h for h in held if h]


def _server_task(task) -> bool:
    code = getattr(task.get_coro(), "cr_code", None)
    return code is not None and code.co_filename.startswith(os.path.dirname(h2.__file__))


async def settled(server, deadline=5.0):
    """Wait until no call is left on the server and none of its tasks runs; returns
    what is left then (nothing, if all is well)."""
    stop = time.monotonic() + deadline
    while True:
        tasks = [t for t in asyncio.all_tasks() if _server_task(t)]
        left = leftovers(server) + tasks
        if not left or time.monotonic() > stop:
            return left
        await asyncio.sleep(0.02)


def test_many_concurrent_calls_on_one_connection_leave_nothing_behind():
    async def test(channel, handlers, server):
        payloads = [os.urandom(i * 97) for i in range(200)]
        answers = await asyncio.gather(*(method(channel, "Echo")(p) for p in payloads))
        assert answers == payloads
        streams = [method(channel, "Big", "unary_stream")(b"3x100000") for _ in range(10)]

        async def collect(call):
            return [m async for m in call]
        results = await asyncio.gather(*map(collect, streams))
        assert all(len(r) == 3 for r in results)
        assert await settled(server) == []
    serve(test)


def test_client_gone_mid_server_stream_and_mid_client_stream(caplog):
    async def test(channel, handlers, server):
        client = await RawClient.connect(handlers.path)
        client.send(client.headers(1, b"/t.T/Forever") + client.message(1, b""))
        client.send(client.headers(3, b"/t.T/Sum") + client.message(3, b"x", end_stream=False))
        while (await client.frame())[0] != h2.DATA:  # the stream runs
            pass
        client.close()
        await asyncio.wait_for(handlers.cancelled.wait(), 5)
        await asyncio.wait_for(handlers.sum_cancelled.wait(), 5)
        assert await settled(server) == []
    with caplog.at_level(logging.DEBUG):
        serve(test)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_client_that_stops_reading_is_not_buffered_for_without_bound():
    async def test(channel, handlers, server):
        # windows as large as can be: only the transport's pause holds the server back
        client = await RawClient.connect(
            handlers.path, [(h2.INITIAL_WINDOW_SIZE, h2.MAX_WINDOW)],
            h2.MAX_WINDOW - h2.DEFAULT_WINDOW)
        streams = range(1, 17, 2)
        for sid in streams:
            client.send(client.headers(sid, b"/t.T/Big") + client.message(sid, b"3x4000000"))
        await asyncio.sleep(0.5)
        conn, = server.connections
        assert conn.paused
        assert conn.transport.get_write_buffer_size() < 4 << 20  # not 8 × 4 MB messages
        results = await client.responses(list(streams))  # now read: every stream ends
        for data, trailers in results.values():
            assert len(data) == 3 * (5 + 4000000) and trailers[b"grpc-status"] == b"0"
        client.close()
        assert await settled(server) == []
    serve(test)


def test_rst_stream_before_the_handler_started():
    async def test(channel, handlers, server):
        client = await RawClient.connect(handlers.path)
        client.send(client.headers(1, b"/t.T/Sleep") + client.message(1, b"30") +
                    h2.rst_stream(1, h2.CANCEL) +
                    client.headers(3, b"/t.T/Echo") + client.message(3, b"after"))
        (data, trailers), = (await client.responses([3])).values()
        assert data == b"\0\0\0\0\5after" and trailers[b"grpc-status"] == b"0"
        assert handlers.started == ["/t.T/Echo"]
        client.close()
        assert await settled(server) == []
    serve(test)


def test_unknown_method_with_a_body_and_the_rest_of_it_after_the_answer():
    async def test(channel, handlers, server):
        client = await RawClient.connect(handlers.path)
        client.send(client.headers(1, b"/t.T/Nope") + client.message(1, b"x" * 1000))
        client.send(client.headers(3, b"/t.T/Nope") + client.message(3, b"y", end_stream=False))
        results = await client.responses([1, 3])
        assert all(t[b"grpc-status"] == b"12" for _, t in results.values())
        # the client had sent more of stream 3 before it saw the answer: a whole window
        chunk = h2.frame(h2.DATA, 0, 3, b"z" * h2.DEFAULT_FRAME_SIZE)
        client.send(chunk * (h2.RECEIVE_WINDOW // h2.DEFAULT_FRAME_SIZE - 1))
        returned, resets = 0, []
        client.send(client.headers(5, b"/t.T/Echo") + client.message(5, b"ok"))

        def watch(kind, flags, sid, payload):
            nonlocal returned
            if kind == h2.WINDOW_UPDATE and sid == 0:
                returned += int.from_bytes(payload, "big")
            elif kind == h2.RST_STREAM and payload != b"\0\0\0\0":  # NO_ERROR: our answer
                resets.append(sid)
        (data, trailers), = (await client.responses([5], watch)).values()
        assert trailers[b"grpc-status"] == b"0"
        assert returned >= h2.RECEIVE_WINDOW // 2  # the window comes back for the next call
        assert resets == []  # late DATA on a stream we ended is ignored, not reset
        client.close()
    serve(test)


def test_end_stream_in_a_separate_packet_or_in_trailers():
    async def test(channel, handlers, server):
        client = await RawClient.connect(handlers.path)
        client.send(client.headers(1, b"/t.T/Echo") + client.message(1, b"a", end_stream=False))
        await asyncio.sleep(0.1)
        client.send(h2.frame(h2.DATA, h2.END_STREAM, 1))
        client.send(client.headers(3, b"/t.T/Echo") + client.message(3, b"b", end_stream=False))
        await asyncio.sleep(0.1)
        client.send(h2.frame(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, 3,
                             client.encoder.encode([(b"x-trailer", b"1")])))
        results = await client.responses([1, 3])
        assert results[1] == (b"\0\0\0\0\1a", {b"grpc-status": b"0"})
        assert results[3] == (b"\0\0\0\0\1b", {b"grpc-status": b"0"})
        client.close()
        assert await settled(server) == []
    serve(test)


def test_grpc_timeout_in_every_unit_and_malformed_ones_ignored():
    units = {b"2H": 7200, b"3M": 180, b"40S": 40, b"5000m": 5, b"6000000u": 6,
             b"90000000n": 0.09}
    malformed = [b"-5S", b" 5S", b"1_0S", b"+5S", b"5", b"S", b"123456789S", b"5s",
                 b"1" + b"0" * 400 + b"H"]

    async def test(channel, handlers, server):
        client = await RawClient.connect(handlers.path)
        values = list(units) + malformed
        sids = range(1, 2 * len(values), 2)
        for sid, value in zip(sids, values):
            client.send(client.headers(sid, b"/t.T/Remaining", extra=[(b"grpc-timeout", value)]) +
                        client.message(sid, b""))
        results = await client.responses(list(sids))
        for sid, value in zip(sids, values):
            data, trailers = results[sid]
            assert trailers[b"grpc-status"] == b"0", value
            remaining = eval(data[5:])
            if value in units:
                assert units[value] - 1 < remaining <= units[value], value
            else:
                assert remaining is None, value
        client.close()
    serve(test)


def test_the_server_itself_ends_an_expired_call_with_deadline_exceeded():
    """Not the client's own timer: the trailers say DEADLINE_EXCEEDED (status 4), the
    handler was cancelled, and a call answered in time is not affected."""
    async def test(channel, handlers, server):
        client = await RawClient.connect(handlers.path)
        client.send(client.headers(1, b"/t.T/Sleep", extra=[(b"grpc-timeout", b"200m")]) +
                    client.message(1, b"30") +
                    client.headers(3, b"/t.T/Sleep", extra=[(b"grpc-timeout", b"20S")]) +
                    client.message(3, b"0"))
        results = await client.responses([1, 3])
        assert results[1][1][b"grpc-status"] == b"4"
        assert results[1][1][b"grpc-message"] == b"Deadline Exceeded"
        assert results[3][1][b"grpc-status"] == b"0" and results[3][0][5:] == b"woke"
        await asyncio.wait_for(handlers.cancelled.wait(), 5)
        assert await settled(server) == []
        client.close()
    serve(test)


def test_binary_metadata_round_trip():
    async def test(channel, handlers, server):
        value = bytes(range(256))
        call = method(channel, "BinMeta")(b"", metadata=(("x-blob-bin", value),
                                                         ("y-bin", b""), ("z-bin", b"\0")))
        await call
        trailing = list(await call.trailing_metadata())
        assert ("x-blob-bin", value) in trailing and ("z-bin", b"\0") in trailing
    serve(test)


def test_stop_ends_server_streams_at_once_and_lets_unary_calls_finish():
    async def test(channel, handlers, server):
        stream = method(channel, "Forever", "unary_stream")(b"")
        assert await stream.read() == b"tick"
        running = asyncio.ensure_future(method(channel, "Sleep")(b"0.5"))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        stopping = asyncio.ensure_future(server.stop(5))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            while True:
                await stream.read()
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - started < 0.3  # not after the unary call or the grace
        assert await running == b"woke"
        await stopping
        assert time.monotonic() - started < 2
    serve(test)


def test_stop_cancels_a_never_ending_stream_within_the_grace():
    async def test(channel, handlers, server):
        call = method(channel, "Forever", "unary_stream")(b"")
        assert await call.read() == b"tick"
        started = time.monotonic()
        await server.stop(0.5)
        assert time.monotonic() - started < 1.5
        assert handlers.cancelled.is_set()
        assert await settled(server) == []
    serve(test)


def test_a_larger_initial_window_from_settings_unblocks_a_stream():
    async def test(channel, handlers, server):
        client = await RawClient.connect(handlers.path, [(h2.INITIAL_WINDOW_SIZE, 10)])
        client.send(client.headers(1, b"/t.T/Big") + client.message(1, b"1x1000"))
        await asyncio.sleep(0.2)  # 10 bytes out, then the stream waits for its window
        client.send(h2.frame(h2.SETTINGS, 0, 0, struct.pack(">HI", h2.INITIAL_WINDOW_SIZE, 1 << 20)))
        (data, trailers), = (await asyncio.wait_for(client.responses([1]), 5)).values()
        assert len(data) == 1005 and trailers[b"grpc-status"] == b"0"
        client.close()
    serve(test)


def test_failures_around_the_handler_end_the_call(caplog):
    async def test(channel, handlers, server):
        with pytest.raises(grpc.aio.AioRpcError) as err:  # the response can't be serialized
            await method(channel, "WrongType")(b"x", timeout=5)
        assert err.value.code() == grpc.StatusCode.UNKNOWN
        with pytest.raises(grpc.aio.AioRpcError) as err:  # the request can't be parsed
            await method(channel, "Parse")(b"not a number", timeout=5)
        assert err.value.code() == grpc.StatusCode.INTERNAL
        assert "unmarshalling" in err.value.details()

        async def chunks():
            yield b"small"
            yield b"x" * (2 << 20)
        with pytest.raises(grpc.aio.AioRpcError) as err:  # through grpcutil.rpc
            await method(channel, "RpcSum", "stream_unary")(chunks(), timeout=5)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        for key in ("x", "x-bin"):  # trailing metadata that can't be sent
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await method(channel, "BadTrailer")(key.encode(), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNKNOWN
        assert await settled(server) == []
    with caplog.at_level(logging.DEBUG):
        serve(test, max_receive=1 << 20)
    unexpected = [r.getMessage() for r in caplog.records if "unexpected" in r.getMessage()]
    assert unexpected == ["unexpected error in /t.T/WrongType"] + \
        ["unexpected error in /t.T/BadTrailer"] * 2


def test_a_ping_flood_from_a_client_that_does_not_read_is_not_buffered():
    async def test(channel, handlers, server):
        client = await RawClient.connect(handlers.path)
        count, ping = 150_000, h2.frame(h2.PING, 0, 0, b"12345678")
        client.send(ping * count)
        await asyncio.sleep(0.5)
        conn, = server.connections
        assert conn.transport.get_write_buffer_size() < 1 << 20  # not 2.5 MB of acks
        while (await client.frame())[0] != h2.PING:  # the server's SETTINGS and window
            pass
        acks = await asyncio.wait_for(client.reader.readexactly((count - 1) * len(ping)), 10)
        assert acks == h2.frame(h2.PING, h2.ACK, 0, b"12345678") * (count - 1)
        client.send(client.headers(1, b"/t.T/Echo") + client.message(1, b"still"))
        (data, trailers), = (await client.responses([1])).values()
        assert data == b"\0\0\0\0\5still"
        client.close()
    serve(test)


def test_compressed_messages_and_a_decompression_bomb():
    import gzip

    async def test(channel, handlers, server):
        client = await RawClient.connect(handlers.path)
        gzip_header = [(b"grpc-encoding", b"gzip")]

        def compressed(sid, body):
            message, step = b"\1" + len(body).to_bytes(4, "big") + body, h2.DEFAULT_FRAME_SIZE
            return b"".join(h2.frame(h2.DATA, 0, sid, message[i:i + step])
                            for i in range(0, len(message), step)) + \
                h2.frame(h2.DATA, h2.END_STREAM, sid)
        small, bomb = gzip.compress(b"a" * 1000), gzip.compress(bytes(64 << 20))
        assert len(bomb) < 1 << 20  # under the limit as sent, 64 MiB once inflated
        client.send(client.headers(1, b"/t.T/Sum", extra=gzip_header) + compressed(1, small))
        client.send(client.headers(3, b"/t.T/Sum", extra=gzip_header) + compressed(3, bomb))
        client.send(client.headers(5, b"/t.T/Sum", extra=gzip_header) +
                    compressed(5, small[:-10]))  # truncated
        results = await client.responses([1, 3, 5])
        assert results[1] == (b"\0\0\0\0\x041000", {b"grpc-status": b"0"})
        assert results[3][1][b"grpc-status"] == b"8"  # RESOURCE_EXHAUSTED
        assert results[5][1][b"grpc-status"] == b"13"  # INTERNAL
        client.close()
    serve(test, max_receive=1 << 20)


def test_a_status_larger_than_a_frame():
    async def test(channel, handlers, server):
        # grpcio's own limits on metadata are lower than what we test here
        big = [("grpc.max_metadata_size", 1 << 20), ("grpc.absolute_max_metadata_size", 1 << 20)]
        async with grpc.aio.insecure_channel("unix:" + handlers.path, options=big) as channel:
            for size in (3000, 6000):  # 6 bytes on the wire each (percent-encoded): > 16 KiB
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await method(channel, "AbortLong")(str(size).encode(), timeout=5)
                assert err.value.code() == grpc.StatusCode.NOT_FOUND
                assert err.value.details() == "é" * size
            assert await method(channel, "Echo")(b"same connection") == b"same connection"
        # a client keeping the default frame size (as grpc-go's, so ctr's, does)
        client = await RawClient.connect(handlers.path)
        client.send(client.headers(1, b"/t.T/AbortLong") + client.message(1, b"6000"))
        client.send(client.headers(3, b"/t.T/Echo") + client.message(3, b"after"))
        results = await client.responses([1, 3])
        assert results[1][1][b"grpc-message"] == b"%C3%A9" * 6000
        assert results[3] == (b"\0\0\0\0\5after", {b"grpc-status": b"0"})
        client.close()
    serve(test)


# --- around the handler's awaits: tasks, deadlines, resets, context -------------------

def test_a_handler_runs_in_its_call_s_task():
    async def test(channel, handlers, server):
        assert await method(channel, "Where")(b"", timeout=5) == b"here"
        assert await method(channel, "Suspend")(b"", timeout=5) == b"back"
        for task, current in handlers.seen:
            assert isinstance(task, asyncio.Task) and task is current
        conn, = server.connections
        assert not conn.calls
    serve(test)


def test_a_handler_that_raises_before_or_after_suspending(caplog):
    async def test(channel, handlers, server):
        for name, words in (("Crash", "boom"), ("LateCrash", "late boom")):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await method(channel, name)(b"", timeout=5)
            assert err.value.code() == grpc.StatusCode.UNKNOWN
            assert words in err.value.details()
        assert await method(channel, "Echo")(b"fine") == b"fine"
    serve(test)


def test_asyncio_timeout_and_the_deadline_inside_a_handler():
    async def test(channel, handlers, server):
        assert await method(channel, "Timeout")(b"5", timeout=5) == b"slept"
        assert await method(channel, "Timeout")(b"0.01", timeout=5) == b"timed out"
        # the call's deadline, with an asyncio.timeout still open
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await method(channel, "Timeout")(b"30", timeout=0.2)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await asyncio.wait_for(handlers.cancelled.wait(), 5)
    serve(test)


def test_a_unary_call_reset_by_the_client_mid_await_cancels_its_handler():
    async def test(channel, handlers, server):
        call = method(channel, "Sleep")(b"30")
        await asyncio.sleep(0.2)
        conn, = server.connections
        assert len(conn.calls) == 1 and next(iter(conn.calls.values())).task is not None
        call.cancel()
        await asyncio.wait_for(handlers.cancelled.wait(), 5)
        await asyncio.sleep(0.05)
        assert not conn.calls
    serve(test)


def test_context_variables_set_by_a_handler_stay_its_own():
    async def test(channel, handlers, server):
        assert await method(channel, "SetVar")(b"first") == b"unset"
        assert await method(channel, "SetVar")(b"second") == b"unset"
    serve(test)


def test_handlers_are_remembered_by_path_only_from_stable_generic_handlers():
    async def test(channel, handlers, server):
        for _ in range(2):
            assert await method(channel, "Echo")(b"a") == b"a"
        assert handlers.started == ["/t.T/Echo"] * 2   # asked on every call
        handlers.stable_handlers = True   # as stubs.GrpcServices
        for _ in range(2):
            assert await method(channel, "Meta")(b"", metadata=(("who", "me"),)) == b"me"
        assert handlers.started == ["/t.T/Echo"] * 2 + ["/t.T/Meta"]
        with pytest.raises(grpc.aio.AioRpcError):
            await method(channel, "Nope")(b"")
    serve(test)
