"""Fuzzing h2.Connection.receive: whatever a client sends, only ConnectionError_ comes
out (stream errors become Reset events), and nothing it buffers grows without bound.
Each test runs on both twins (the compiled _h2 and the pure _h2_py)."""
import asyncio
import struct

import hpack
import pytest
from h2_helpers import frames, h2_twin, header_chains, split  # noqa: F401 (h2_twin: fixture)
from hypothesis import HealthCheck, given, settings, strategies as st

from appliance.grpcserver import h2

FAST = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
pytestmark = pytest.mark.usefixtures("h2_twin")   # each test on both twins


def feed(wire: bytes, cuts: list) -> None:
    """Feed `wire` in pieces split at `cuts`, acting as the server does on events."""
    conn = h2.Connection()
    for data in split(wire, cuts):
        out = []
        try:
            events = conn.receive(data, out)
        except h2.ConnectionError_:
            return
        assert all(isinstance(chunk, bytes) for chunk in out)
        for event in events:
            if isinstance(event, h2.Data):
                conn.consumed(event.stream_id, event.flow_length)
            elif isinstance(event, h2.Request) and event.end_stream:
                conn.close_stream(event.stream_id)  # answered at once
            elif isinstance(event, h2.Reset):
                conn.close_stream(event.stream_id)
            else:
                assert isinstance(event, (h2.Request, h2.WindowOpened, h2.GoAway))
        buffered, block = len(conn._buffer), len(conn._header_block)  # (short reports)
        assert buffered < 9 + h2.DEFAULT_FRAME_SIZE  # no whole frame left unread
        assert block <= h2.MAX_HEADER_BLOCK
        assert 0 <= conn.receive_window <= h2.RECEIVE_WINDOW
        assert all(0 <= w <= h2.RECEIVE_WINDOW for w in conn.stream_receive_windows.values())
        assert set(conn.stream_receive_windows) == conn.open_streams
        assert conn.open_streams <= set(conn.stream_send_windows)


@FAST
@given(st.binary(max_size=3000), st.booleans(), st.lists(st.integers(0, 10 ** 6), max_size=8))
def test_arbitrary_bytes(data, with_preface, cuts):
    feed(h2.PREFACE + data if with_preface else data, cuts)


@FAST
@given(st.lists(st.one_of(frames(), header_chains()), max_size=12), st.lists(st.integers(0, 10 ** 7), max_size=8))
def test_random_frame_sequences(frame_list, cuts):
    feed(h2.PREFACE + h2.frame(h2.SETTINGS, 0, 0) + b"".join(frame_list), cuts)


# --- the output side: whatever the peer's settings and updates, DATA never exceeds a
# window or the peer's frame size, and carries exactly the bytes asked for, in order

output_actions = st.lists(st.one_of(
    st.tuples(st.just("send"), st.sampled_from([1, 3]), st.integers(0, 100000),
              st.integers(1, 300000)),
    st.tuples(st.just("update"), st.sampled_from([0, 1, 3]), st.integers(1, 50000)),
    st.tuples(st.just("initial_window"), st.integers(0, 200000)),
    st.tuples(st.just("frame_size"), st.integers(h2.DEFAULT_FRAME_SIZE, 70000)),
), max_size=25)


@FAST
@given(output_actions)
def test_data_out_respects_windows_and_frame_sizes(actions):
    conn = h2.Connection()
    conn.receive(h2.PREFACE + h2.frame(h2.SETTINGS, 0, 0), [])
    for sid in (1, 3):
        conn.receive(h2.frame(h2.HEADERS, h2.END_HEADERS, sid, hpack.Encoder().encode(
            [(b":method", b"POST"), (b":path", b"/s.S/M")])), [])
    credit = {0: h2.DEFAULT_WINDOW, 1: h2.DEFAULT_WINDOW, 3: h2.DEFAULT_WINDOW}  # the peer's
    initial, frame_size, counter = h2.DEFAULT_WINDOW, h2.DEFAULT_FRAME_SIZE, 0
    for action in actions:
        if action[0] == "send":
            _, sid, size, limit = action
            data = bytes((counter + i) % 251 for i in range(size))
            counter += 1
            wire, n = conn.send_data(sid, data, limit)
            assert n == max(0, min(size, limit, credit[0], credit[sid]))
            pos, sent = 0, bytearray()
            while pos < len(wire):
                length = int.from_bytes(wire[pos:pos + 3], "big")
                assert wire[pos + 3:pos + 5] == bytes((h2.DATA, 0))
                assert int.from_bytes(wire[pos + 5:pos + 9], "big") == sid
                assert 0 < length <= frame_size
                sent += wire[pos + 9:pos + 9 + length]
                pos += 9 + length
            assert sent == data[:n]
            credit[0] -= n
            credit[sid] -= n
        elif action[0] == "update":
            _, sid, increment = action
            try:
                conn.receive(h2.window_update(sid, increment), [])
            except h2.ConnectionError_:
                return
            credit[sid] += increment
        elif action[0] == "initial_window":
            try:
                conn.receive(h2.frame(h2.SETTINGS, 0, 0, struct.pack(
                    ">HI", h2.INITIAL_WINDOW_SIZE, action[1])), [])
            except h2.ConnectionError_:
                return
            for sid in (1, 3):
                credit[sid] += action[1] - initial
            initial = action[1]
        else:
            conn.receive(h2.frame(h2.SETTINGS, 0, 0, struct.pack(
                ">HI", h2.MAX_FRAME_SIZE, action[1])), [])
            frame_size = action[1]


# --- the server's handling of those events, over a transport that records writes ------

class _Transport:
    def __init__(self):
        self.written, self.closing = bytearray(), False

    def write(self, data):
        self.written += data

    def close(self):
        self.closing = True

    abort = close

    def is_closing(self):
        return self.closing

    def get_extra_info(self, name):
        return None

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass


def _fuzz_server():
    from appliance.grpcserver import MethodHandler, Server

    async def echo(request, context):
        return request

    async def total(requests, context):
        return str(sum([len(m) async for m in requests])).encode()

    async def chunks(request, context):
        for _ in range(3):
            yield request

    methods = {
        "/t.T/Echo": MethodHandler(False, False, None, None, unary_unary=echo),
        "/t.T/Sum": MethodHandler(True, False, None, None, stream_unary=total),
        "/t.T/Chunks": MethodHandler(False, True, None, None, unary_stream=chunks),
    }

    class Generic:
        def service(self, details):
            return methods.get(details.method)

    class Recording(Server):
        async def handle(self, call):
            self.tasks.append(asyncio.current_task())
            await super().handle(call)

    server = Recording(max_receive=1 << 16, max_send=1 << 16)
    server.tasks = []
    server.add_generic_rpc_handlers([Generic()])
    return server


request_fields = st.tuples(
    st.sampled_from([b"/t.T/Echo", b"/t.T/Sum", b"/t.T/Chunks", b"/t.T/Nope", b"", b"x"]),
    st.lists(st.tuples(st.sampled_from([b"grpc-timeout", b"x-bin", b"x", b"grpc-encoding",
                                        b"user-agent"]),
                       st.one_of(st.sampled_from([b"1S", b"100m", b"0n", b"gzip", b"99999999H",
                                                  b"1" + b"0" * 400 + b"S"]),
                                 st.binary(max_size=12))), max_size=3))
messages = st.tuples(st.integers(0, 1), st.binary(max_size=30), st.integers(-3, 3)).map(
    lambda m: bytes([m[0]]) + max(0, len(m[1]) + m[2]).to_bytes(4, "big") + m[1])
requests = st.tuples(st.just("request"), st.sampled_from([1, 3, 5, 7]), request_fields,
                     st.sampled_from([h2.END_HEADERS, h2.END_HEADERS | h2.END_STREAM]))
actions = st.one_of(
    requests, requests,  # twice as likely as the rest
    st.tuples(st.just("data"), st.sampled_from([1, 3, 5, 7]), messages,
              st.sampled_from([0, h2.END_STREAM])),
    st.tuples(st.just("frame"), frames()),
)


def _wire(action_list, encoder):
    wire = [h2.PREFACE, h2.frame(h2.SETTINGS, 0, 0)]
    for action in action_list:
        if action[0] == "request":
            _, sid, (path, extra), flags = action
            block = encoder.encode([(b":method", b"POST"), (b":path", path), *extra])
            wire.append(h2.frame(h2.HEADERS, flags, sid, block))
        elif action[0] == "data":
            wire.append(h2.frame(h2.DATA, action[3], action[1], action[2]))
        else:
            wire.append(action[1])
    return b"".join(wire)


@settings(FAST, max_examples=100)
@given(st.lists(actions, max_size=10), st.lists(st.integers(0, 10 ** 6), max_size=6))
def test_the_server_survives_random_requests(action_list, cuts):
    from appliance.grpcserver.server import _Connection
    reads = split(_wire(action_list, hpack.Encoder()), cuts)

    async def run():
        server, transport = _fuzz_server(), _Transport()
        conn = _Connection(server)
        conn.connection_made(transport)
        for data in reads:
            conn.data_received(data)  # must not raise
            if transport.closing:
                break
            await asyncio.sleep(0)
        await asyncio.sleep(0.005)
        conn.connection_lost(None)
        if server.tasks:
            await asyncio.wait(server.tasks, timeout=2)
        for task in server.tasks:  # every handler ended, none with an escaped exception
            assert task.done() and (task.cancelled() or task.exception() is None)
        assert not conn.calls
    asyncio.run(run())
