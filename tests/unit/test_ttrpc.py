"""TTRPC framing, server and client (no pytest-asyncio: each test runs asyncio.run)."""
import asyncio
import os
import socket
import stat

import pytest
from google.rpc import status_pb2
from hypothesis import given, settings, strategies as st

from appliance import errdefs
from appliance.errdefs import StatusCode
from appliance.ttrpc import (DATA, MAX_PAYLOAD, NAMESPACE_KEY, REQUEST, RESPONSE, Frame,
                             FrameDecoder, FrameTooLarge, KeyValue, Request, Response,
                             TTRPCClient, TTRPCServer, encode_frame, require_same_user)
from appliance.ttrpc.framing import HEADER

SVC = "test.v1.Echo"


# --- framing -------------------------------------------------------------------

def test_header_layout():
    assert encode_frame(1, REQUEST, b"abc") == b"\0\0\0\x03" b"\0\0\0\x01" b"\x01" b"\x00" b"abc"
    assert encode_frame(0x01020304, DATA, b"", flags=0x5) == b"\0\0\0\0\x01\x02\x03\x04\x03\x05"


def test_round_trip():
    frames = [Frame(1, REQUEST, 0, b"hello"), Frame(3, RESPONSE, 0, b""),
              Frame(5, DATA, 0x4, b"x" * 1000)]
    for f in frames:
        assert FrameDecoder().feed(encode_frame(f.stream_id, f.type, f.payload, f.flags)) == [f]


def test_partial_frames_byte_by_byte():
    wire = encode_frame(7, RESPONSE, b"partial payload", 0)
    dec, out = FrameDecoder(), []
    for i in range(len(wire)):
        out += dec.feed(wire[i:i + 1])
        if i < len(wire) - 1:
            assert out == [] and dec.pending == i + 1
    assert out == [Frame(7, RESPONSE, 0, b"partial payload")] and dec.pending == 0


def test_multiple_frames_in_one_chunk():
    wire = b"".join(encode_frame(i, REQUEST, bytes([i]) * i) for i in (1, 3, 5))
    dec = FrameDecoder()
    assert dec.feed(wire + encode_frame(7, REQUEST, b"abc")[:4]) == [
        Frame(1, REQUEST, 0, b"\1"), Frame(3, REQUEST, 0, b"\3" * 3),
        Frame(5, REQUEST, 0, b"\5" * 5)]
    assert dec.feed(encode_frame(7, REQUEST, b"abc")[4:]) == [Frame(7, REQUEST, 0, b"abc")]


def test_max_payload_is_inclusive_and_encode_refuses_more():
    big = b"\0" * MAX_PAYLOAD
    assert FrameDecoder().feed(encode_frame(1, REQUEST, big))[0].payload == big
    with pytest.raises(FrameTooLarge) as exc:
        encode_frame(9, REQUEST, big + b"\0")
    assert exc.value.stream_id == 9


def test_oversized_frame_skipped_without_desync():
    junk = b"J" * (MAX_PAYLOAD + 1)
    wire = (encode_frame(1, REQUEST, b"before") + HEADER.pack(len(junk), 3, REQUEST, 0) + junk
            + encode_frame(5, REQUEST, b"after"))
    dec, out = FrameDecoder(), []
    for i in range(0, len(wire), 65536):  # the payload straddles many chunks
        out += dec.feed(wire[i:i + 65536])
    assert out[0] == Frame(1, REQUEST, 0, b"before")
    assert isinstance(out[1], FrameTooLarge) and out[1].stream_id == 3
    assert out[1].length == MAX_PAYLOAD + 1 and "exceed maximum message size" in str(out[1])
    assert out[2:] == [Frame(5, REQUEST, 0, b"after")] and dec.pending == 0


def test_messages():
    req = Request(service=SVC, method="Echo", payload=b"p", timeout_nano=5,
                  metadata=[KeyValue(key=NAMESPACE_KEY, value="ns")])
    assert Request.FromString(req.SerializeToString()) == req
    resp = Response.FromString(Response(status=status_pb2.Status(code=5, message="m"),
                                        payload=b"x").SerializeToString())
    assert isinstance(resp.status, status_pb2.Status) and resp.status.code == 5
    assert Request.DESCRIPTOR.full_name == "ttrpc.Request"
    # field numbers are the wire contract
    assert [(f.name, f.number) for f in Request.DESCRIPTOR.fields] == [
        ("service", 1), ("method", 2), ("payload", 3), ("timeout_nano", 4), ("metadata", 5)]


frames_st = st.lists(st.builds(
    Frame, stream_id=st.integers(0, 2**32 - 1), type=st.sampled_from([REQUEST, RESPONSE, DATA, 9]),
    flags=st.integers(0, 255), payload=st.binary(max_size=80)), max_size=8)


@settings(max_examples=200, deadline=None)
@given(frames=frames_st, cuts=st.lists(st.integers(0, 1000), max_size=20),
       max_payload=st.integers(0, 64))
def test_decoder_any_chunking(frames, cuts, max_payload):
    """Arbitrary chunk boundaries give the same frames; oversized ones (w.r.t. a
    small limit) are reported in place and skipped."""
    wire = b"".join(encode_frame(f.stream_id, f.type, f.payload, f.flags) for f in frames)
    bounds = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})
    dec, out = FrameDecoder(max_payload=max_payload), []
    for a, b in zip(bounds, bounds[1:]):
        out += dec.feed(wire[a:b])
    assert dec.pending == 0
    assert len(out) == len(frames)
    for got, want in zip(out, frames):
        if len(want.payload) > max_payload:
            assert isinstance(got, FrameTooLarge) and got.stream_id == want.stream_id
        else:
            assert got == want


# --- server + client -------------------------------------------------------------

def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


class Harness:
    """A server with a few handlers on a temp socket."""

    def __init__(self, path, **kw):
        self.path = str(path)
        self.server = TTRPCServer(**kw)
        self.seen = []
        self.cancelled = asyncio.Event()

        async def echo(req, ctx):
            self.seen.append(ctx)
            return req

        async def sleep(req, ctx):  # sleeps int(req) milliseconds, returns when it woke
            await asyncio.sleep(int(req) / 1000)
            return req

        async def hang(req, ctx):
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise

        async def notfound(req, ctx):
            raise errdefs.NotFound("container x: not found")

        async def boom(req, ctx):
            raise RuntimeError("boom")

        self.server.register(SVC, {"Echo": echo, "Sleep": sleep, "Hang": hang,
                                   "NotFound": notfound, "Boom": boom})

    async def __aenter__(self):
        await self.server.serve(self.path)
        return self

    async def __aexit__(self, *exc):
        await self.server.close()


async def raw_exchange(path, frames, n_replies):
    """Write raw frames, read n reply frames."""
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(b"".join(frames))
    dec, out = FrameDecoder(), []
    while len(out) < n_replies:
        data = await asyncio.wait_for(reader.read(65536), 5)
        assert data, "connection closed"
        out += dec.feed(data)
    writer.close()
    return out


def status_of_frame(frame):
    assert frame.type == RESPONSE
    return Response.FromString(frame.payload).status


def req_frame(stream_id, method="Echo", payload=b"", timeout_nano=0):
    return encode_frame(stream_id, REQUEST, Request(
        service=SVC, method=method, payload=payload, timeout_nano=timeout_nano).SerializeToString())


def test_unary_echo_with_metadata(tmp_path):
    async def main():
        async with Harness(tmp_path / "s.sock") as h:
            async with await TTRPCClient.connect(h.path, namespace="default") as c:
                md = {"k": ["a", "b"]}
                assert await c.call(SVC, "Echo", b"hi", metadata=md, timeout=5) == b"hi"
                assert await c.call(SVC, "Echo", b"", timeout=5) == b""
            ctx = h.seen[0]
            assert ctx.namespace == "default" and ctx.metadata[NAMESPACE_KEY] == "default"
            assert ctx.metadata["k"] == "a" and ("k", "b") in ctx.metadata_pairs
            assert 4 < ctx.timeout <= 5 and ctx.peer[1] == os.geteuid()
            assert ctx.service == SVC and ctx.method == "Echo"
    run(main())


def test_concurrent_calls_interleave(tmp_path):
    async def main():
        async with Harness(tmp_path / "s.sock") as h:
            async with await TTRPCClient.connect(h.path) as c:
                order = []

                async def one(ms):
                    out = await c.call(SVC, "Sleep", str(ms).encode(), timeout=5)
                    order.append(int(out))
                    return int(out)

                delays = [300, 200, 100, 0, 250, 50]
                assert await asyncio.gather(*map(one, delays)) == delays
                assert order == sorted(delays)  # answered out of request order
    run(main())


def test_concurrent_large_calls_while_the_socket_is_full(tmp_path):
    """Requests bigger than the socket buffer, sent at once: most wait for the transport to
    drain (the slow path), none interleave with another, every answer is its own."""
    async def main():
        async with Harness(tmp_path / "s.sock") as h:
            async with await TTRPCClient.connect(h.path) as c:
                payloads = [bytes([i]) * (1 << 20) for i in range(8)]
                small = [c.call(SVC, "Echo", b"small-%d" % i, timeout=30) for i in range(8)]
                out = await asyncio.gather(
                    *(c.call(SVC, "Echo", p, timeout=30) for p in payloads), *small)
                assert out[:8] == payloads
                assert out[8:] == [b"small-%d" % i for i in range(8)]
    run(main())


def test_unknown_service_and_method(tmp_path):
    async def main():
        async with Harness(tmp_path / "s.sock") as h:
            async with await TTRPCClient.connect(h.path) as c:
                with pytest.raises(errdefs.Unimplemented, match="method Nope"):
                    await c.call(SVC, "Nope", b"", timeout=5)
                with pytest.raises(errdefs.Unimplemented, match="service no.Such"):
                    await c.call("no.Such", "Echo", b"", timeout=5)
                assert await c.call(SVC, "Echo", b"ok", timeout=5) == b"ok"
    run(main())


def test_handler_errors_map_to_errdefs(tmp_path):
    async def main():
        async with Harness(tmp_path / "s.sock") as h:
            async with await TTRPCClient.connect(h.path) as c:
                with pytest.raises(errdefs.NotFound, match="container x: not found"):
                    await c.call(SVC, "NotFound", b"", timeout=5)
                with pytest.raises(errdefs.ApplianceError, match="boom") as exc:
                    await c.call(SVC, "Boom", b"", timeout=5)
                assert exc.value.code == StatusCode.UNKNOWN
    run(main())


def test_client_timeout(tmp_path):
    async def main():
        async with Harness(tmp_path / "s.sock") as h:
            async with await TTRPCClient.connect(h.path) as c:
                with pytest.raises(errdefs.DeadlineExceeded):
                    await c.call(SVC, "Hang", b"", timeout=0.2)
                # the server got timeout_nano too and cancelled the handler
                await asyncio.wait_for(h.cancelled.wait(), 5)
                assert await c.call(SVC, "Echo", b"still ok", timeout=5) == b"still ok"
    run(main())


def test_server_honours_timeout_nano(tmp_path):
    async def main():
        async with Harness(tmp_path / "s.sock") as h:
            [reply] = await raw_exchange(
                h.path, [req_frame(1, "Hang", timeout_nano=100_000_000)], 1)
            st = status_of_frame(reply)
            assert reply.stream_id == 1 and st.code == StatusCode.DEADLINE_EXCEEDED.value[0]
            assert h.cancelled.is_set()
    run(main())


def test_server_default_timeout(tmp_path):
    async def main():
        async with Harness(tmp_path / "s.sock", default_timeout=0.1) as h:
            async with await TTRPCClient.connect(h.path) as c:
                with pytest.raises(errdefs.DeadlineExceeded):
                    await c.call(SVC, "Hang", b"")  # no client timeout: the server's bounds it
    run(main())


def test_even_stream_id_rejected(tmp_path):
    async def main():
        async with Harness(tmp_path / "s.sock") as h:
            # As ttrpc: an InvalidArgument status on the even id, and the connection goes on.
            replies = await raw_exchange(
                h.path, [req_frame(2, payload=b"x"), req_frame(1, payload=b"y")], 2)
            good, bad = sorted(replies, key=lambda f: f.stream_id)
            assert bad.stream_id == 2
            assert status_of_frame(bad).code == StatusCode.INVALID_ARGUMENT.value[0]
            assert "must be odd" in status_of_frame(bad).message
            assert good.stream_id == 1 and Response.FromString(good.payload).payload == b"y"
            assert h.seen and len(h.seen) == 1  # the handler never saw the even one
    run(main())


def test_stream_ids_must_increase(tmp_path):
    async def main():
        async with Harness(tmp_path / "s.sock") as h:
            replies = await raw_exchange(
                h.path, [req_frame(5, payload=b"a"), req_frame(3, payload=b"b")], 2)
            b, a = sorted(replies, key=lambda f: f.stream_id)  # replies may come in any order
            assert (a.stream_id, status_of_frame(a).code) == (5, 0)
            assert b.stream_id == 3
            assert status_of_frame(b).code == StatusCode.INVALID_ARGUMENT.value[0]
    run(main())


def test_oversized_request_over_the_wire(tmp_path):
    async def main():
        async with Harness(tmp_path / "s.sock") as h:
            junk = b"\0" * (MAX_PAYLOAD + 10)
            too_big, ok = sorted(await raw_exchange(
                h.path, [HEADER.pack(len(junk), 1, REQUEST, 0), junk, req_frame(3, payload=b"z")],
                2),
                key=lambda f: f.stream_id)
            assert too_big.stream_id == 1
            assert status_of_frame(too_big).code == StatusCode.RESOURCE_EXHAUSTED.value[0]
            assert ok.stream_id == 3 and Response.FromString(ok.payload).payload == b"z"
            # and the client refuses to send one
            async with await TTRPCClient.connect(h.path) as c:
                with pytest.raises(errdefs.ApplianceError, match="exceed maximum"):
                    await c.call(SVC, "Echo", junk, timeout=5)
                assert await c.call(SVC, "Echo", b"fine", timeout=5) == b"fine"
    run(main())


def test_connection_drop_fails_pending_calls(tmp_path):
    async def main():
        async with Harness(tmp_path / "s.sock") as h:
            c = await TTRPCClient.connect(h.path)
            pending = [asyncio.create_task(c.call(SVC, "Hang", b"")) for _ in range(3)]
            await asyncio.sleep(0.1)
            await h.server.close()
            for t in pending:
                with pytest.raises(errdefs.Unavailable):
                    await t
            assert c.closed
            with pytest.raises(errdefs.Unavailable):
                await c.call(SVC, "Echo", b"", timeout=1)
            await c.aclose()
        with pytest.raises(errdefs.Unavailable):  # socket removed by close()
            await TTRPCClient.connect(h.path, timeout=1)
    run(main())


def test_client_close_fails_pending_calls(tmp_path):
    async def main():
        async with Harness(tmp_path / "s.sock") as h:
            c = await TTRPCClient.connect(h.path)
            t = asyncio.create_task(c.call(SVC, "Hang", b""))
            await asyncio.sleep(0.1)
            c.close()
            with pytest.raises(errdefs.Unavailable):
                await t
            await asyncio.wait_for(h.cancelled.wait(), 5)  # server cancels the orphaned call
    run(main())


def test_peer_check(tmp_path):
    assert require_same_user((1, os.geteuid(), 0))
    assert not require_same_user((1, os.geteuid() + 1, 0))
    creds = []

    def deny(cred):
        creds.append(cred)
        return False

    async def main():
        async with Harness(tmp_path / "s.sock", peer_check=deny) as h:
            async with await TTRPCClient.connect(h.path) as c:
                with pytest.raises(errdefs.Unavailable):
                    await c.call(SVC, "Echo", b"", timeout=5)
            assert creds == [(os.getpid(), os.geteuid(), os.getegid())]
            assert not h.seen
    run(main())


def test_serve_replaces_stale_socket_and_sets_mode(tmp_path):
    path = tmp_path / "sub" / "s.sock"
    path.parent.mkdir()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays behind, nobody listens

    async def main():
        async with Harness(path) as h:
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
            async with await TTRPCClient.connect("unix://" + h.path) as c:
                assert await c.call(SVC, "Echo", b"x", timeout=5) == b"x"
        assert not path.exists()
    run(main())


def test_serve_refuses_to_remove_non_socket(tmp_path):
    path = tmp_path / "file"
    path.write_text("keep me")

    async def main():
        with pytest.raises(OSError):
            await TTRPCServer().serve(str(path))
    run(main())
    assert path.read_text() == "keep me"


def test_duplicate_service():
    s = TTRPCServer()
    s.register(SVC, {})
    with pytest.raises(ValueError):
        s.register(SVC, {})


def test_the_client_reads_without_a_task_of_its_own(tmp_path):
    """A shim's client is its connection's protocol: responses are matched to their calls
    as they are read (no reader task per connection, ≈ 6 calls a container); the peer's
    close is seen, and wait_closed returns."""
    async def main():
        peer = []

        class Answer(asyncio.Protocol):   # a server without a task per connection
            def connection_made(self, transport):
                peer.append(transport)
                self.decoder = FrameDecoder()

            def data_received(self, data):
                for frame in self.decoder.feed(data):
                    req = Request.FromString(frame.payload)
                    peer[0].write(encode_frame(frame.stream_id, RESPONSE, Response(
                        payload=req.payload).SerializeToString()))

        loop = asyncio.get_running_loop()
        server = await loop.create_unix_server(Answer, str(tmp_path / "s.sock"))
        before = asyncio.all_tasks()
        c = await TTRPCClient.connect(str(tmp_path / "s.sock"))
        assert await c.call(SVC, "Echo", b"one", timeout=5) == b"one"
        assert asyncio.all_tasks() == before   # (the server's accept has ended too)
        assert await asyncio.gather(*(c.call(SVC, "Echo", b"%d" % i, timeout=5)
                                      for i in range(5))) == [b"%d" % i for i in range(5)]
        peer[0].close()
        await asyncio.wait_for(c.wait_closed(), 5)
        assert c.closed
        server.close()
    run(main())


def test_the_server_reads_without_a_task_per_connection(tmp_path):
    """A shim's event connection is read by its protocol (no task waiting on it between
    events); only a call's handler runs in a task, for as long as it runs."""
    async def main():
        async with Harness(tmp_path / "s.sock") as h:
            async with await TTRPCClient.connect(h.path) as c:
                assert await c.call(SVC, "Echo", b"x", timeout=5) == b"x"
                await asyncio.sleep(0.05)
                assert [t for t in asyncio.all_tasks()
                        if t is not asyncio.current_task() and not t.done()
                        and "wait_for" not in repr(t.get_coro())] == []
    run(main())


def test_a_peer_that_stops_reading_is_dropped_after_the_write_timeout(tmp_path):
    """Answers pile up for a client that sends but never reads: the server stops reading
    it, drops it after `write_timeout`, and serves others meanwhile."""
    async def main():
        async with Harness(tmp_path / "s.sock", write_timeout=0.5) as h:
            reader, writer = await asyncio.open_unix_connection(h.path)
            big = b"\0" * (1 << 20)
            for i in range(16):
                writer.write(req_frame(2 * i + 1, payload=big))
            async with await TTRPCClient.connect(h.path) as c:
                assert await c.call(SVC, "Echo", b"other", timeout=5) == b"other"
            await asyncio.sleep(1.5)
            got = 0
            with pytest.raises((ConnectionError, AssertionError)):
                while True:   # what was sent before the drop, then the end
                    data = await asyncio.wait_for(reader.read(1 << 20), 5)
                    assert data
                    got += len(data)
            assert got < 16 * len(big)
            writer.close()
    run(main())
