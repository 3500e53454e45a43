"""The daemon's own gRPC server (appliance/grpcserver), driven by grpcio's real client."""
from __future__ import annotations

import asyncio
import os
import socket
import tempfile

import grpc
import pytest

from appliance.grpcserver import EOF, Server

PAYLOAD_LIMIT = 4 << 20


class Handlers(grpc.GenericRpcHandler):
    """Byte-level test methods (no serializers: requests and responses are bytes)."""

    def __init__(self):
        self.cancelled = asyncio.Event()
        self.finished = asyncio.Event()
        self.methods = {
            "/t.T/Echo": grpc.unary_unary_rpc_method_handler(self.echo),
            "/t.T/Meta": grpc.unary_unary_rpc_method_handler(self.meta),
            "/t.T/Abort": grpc.unary_unary_rpc_method_handler(self.abort),
            "/t.T/Sleep": grpc.unary_unary_rpc_method_handler(self.sleep),
            "/t.T/Crash": grpc.unary_unary_rpc_method_handler(self.crash),
            "/t.T/Big": grpc.unary_stream_rpc_method_handler(self.big),
            "/t.T/Forever": grpc.unary_stream_rpc_method_handler(self.forever),
            "/t.T/Sum": grpc.stream_unary_rpc_method_handler(self.sum),
            "/t.T/Chat": grpc.stream_stream_rpc_method_handler(self.chat),
        }

    def service(self, details):
        return self.methods.get(details.method)

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
        async for message in requests:
            total += len(message)
        return str(total).encode()

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
