"""Our HTTP/2 layer (appliance/grpcserver/h2.py) against python-hyper's `h2`, same bytes.

    .venv/bin/python -m bench.h2_compare [--calls 10000] [--repeats 7] [--profile]
    .venv/bin/python -m bench.h2_compare p50 [--calls 3000] [--rounds 3]

`micro` (the default): a grpcio client makes its calls on one connection to our server
answering canned bytes, and every chunk the server reads is recorded. The recordings are
then fed to each library's receive + send path, alternately, on a fresh connection each
time: parse frames, decode HPACK, return flow control, emit the response HEADERS, DATA
and trailers as a gRPC server does (message handling and handlers left out). Prints the
CPU (time.process_time) per call, median of the repeats, and the ratio. `--profile`
adds a cProfile of our path. Workloads:

- `version`: unary, empty request, 45-byte answer (Version);
- `list`: unary with namespace metadata, 2 KiB answer (Containers.List);
- `upload`: client stream, 64 messages of 64 KiB on one call (Content.Write), 20 calls;
- `events`: server stream, 1,000 messages of 200 bytes on one call (Events), 20 calls.

`p50`: in-process latency of a unary Version call (canned answer, grpcio client in a
subprocess), our asyncio server against the same server with `h2` underneath instead
(a thin protocol class below), interleaved rounds.
"""
from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from appliance.grpcserver import h2 as ours
from appliance.grpcserver.server import MethodHandler, Server, _Connection

VERSION = "/containerd.services.version.v1.Version/Version"
LIST = "/containerd.services.containers.v1.Containers/List"
WRITE = "/containerd.services.content.v1.Content/Write"
SUBSCRIBE = "/containerd.services.events.v1.Events/Subscribe"
ANSWERS = {VERSION: b"\n\x061.6.20\x12(" + b"1" * 38, LIST: b"x" * 2048, WRITE: b"y" * 60}
EVENT, EVENTS_PER_CALL = b"e" * 200, 1000
UPLOAD_MESSAGE, UPLOAD_MESSAGES = b"u" * (64 << 10), 64
KIND = {VERSION: "unary", LIST: "unary", WRITE: "unary", SUBSCRIBE: "stream"}


def _identity(data):
    return data


class CannedHandlers:
    """Generic handler: canned answers, requests read and dropped."""

    def service(self, details):
        method = details.method
        if method == SUBSCRIBE:
            async def events(request, context):
                for _ in range(EVENTS_PER_CALL):
                    yield EVENT
            return MethodHandler(False, True, _identity, _identity, unary_stream=events)
        if method == WRITE:
            async def write(requests, context):
                async for _ in requests:
                    pass
                return ANSWERS[WRITE]
            return MethodHandler(True, False, _identity, _identity, stream_unary=write)
        answer = ANSWERS.get(method)
        if answer is None:
            return None

        async def unary(request, context):
            return answer
        return MethodHandler(False, False, _identity, _identity, unary_unary=unary)


# --- recording ------------------------------------------------------------------------

class _Serving:
    """Our Server with canned handlers on a unix socket, its loop in a thread."""

    def __init__(self, record: bool):
        self.dir = tempfile.TemporaryDirectory()
        self.address = os.path.join(self.dir.name, "s.sock")
        self.chunks: list[bytes] = []
        self.record = record
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self):
        import socket
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(self.address)
        sock.listen(16)
        server = self.server = Server()
        server.add_generic_rpc_handlers([CannedHandlers()])
        if self.record:
            original = _Connection.data_received
            chunks = self.chunks

            def recording(conn, data):
                chunks.append(bytes(data))
                original(conn, data)
            self._patched = original
            _Connection.data_received = recording
        self.thread.start()
        asyncio.run_coroutine_threadsafe(server.serve_socket(sock), self.loop).result(10)
        return self

    def __exit__(self, *exc):
        asyncio.run_coroutine_threadsafe(self.server.stop(1), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        if self.record:
            _Connection.data_received = self._patched
        self.dir.cleanup()


def record(workload: str, calls: int) -> list[bytes]:
    """The bytes a grpcio client sends for `calls` calls of `workload`, as the server read them."""
    import grpc
    with _Serving(record=True) as serving:
        with grpc.insecure_channel("unix://" + serving.address) as channel:
            if workload == "version":
                call = channel.unary_unary(VERSION, _identity, _identity)
                for _ in range(calls):
                    call(b"", timeout=10)
            elif workload == "list":
                call = channel.unary_unary(LIST, _identity, _identity)
                metadata = (("containerd-namespace", "bench"),)
                for _ in range(calls):
                    call(b"", metadata=metadata, timeout=10)
            elif workload == "upload":
                call = channel.stream_unary(WRITE, _identity, _identity)
                for _ in range(calls):
                    call(iter([UPLOAD_MESSAGE] * UPLOAD_MESSAGES), timeout=30)
            elif workload == "events":
                call = channel.unary_stream(SUBSCRIBE, _identity, _identity)
                for _ in range(calls):
                    assert sum(1 for _ in call(b"", timeout=30)) == EVENTS_PER_CALL
        time.sleep(0.2)  # the client's last frames (acks) reach the server
    return serving.chunks


# --- replay: ours ----------------------------------------------------------------------

_RESPONSE_HEADERS = ours.STATUS_200 + ours.encode_headers([(b"content-type", b"application/grpc")])
_OK_TRAILERS = ours.encode_headers([(b"grpc-status", b"0")])


def _message(data: bytes) -> bytes:
    return len(data).to_bytes(5, "big") + data


def replay_ours(chunks: list[bytes]) -> int:
    """Feed `chunks` to h2.Connection as server.py/call.py do; returns calls answered."""
    conn = ours.Connection()
    sent = [conn.initial_bytes()]
    paths, answered = {}, 0
    frame, headers = ours.frame, ours.headers
    for chunk in chunks:
        out: list = []
        for event in conn.receive(chunk, out):
            kind = type(event)
            if kind is ours.Request:
                paths[event.stream_id] = next(v for n, v in event.headers if n == b":path")
            elif kind is ours.Data:
                sid = event.stream_id
                if event.flow_length:
                    update = conn.consumed(sid, event.flow_length)
                    if update:
                        out.append(update)
                if event.end_stream:
                    path = paths.pop(sid).decode()
                    if KIND[path] == "unary":
                        response = _message(ANSWERS[path])
                        out.append(frame(ours.HEADERS, ours.END_HEADERS, sid, _RESPONSE_HEADERS))
                        data, n = conn.send_data(sid, response)
                        assert n == len(response)
                        out.append(data)
                    else:
                        out.append(frame(ours.HEADERS, ours.END_HEADERS, sid, _RESPONSE_HEADERS))
                        for _ in range(EVENTS_PER_CALL):
                            message = _message(EVENT)
                            data, n = conn.send_data(sid, message)
                            assert n == len(message)
                            out.append(data)
                    out.append(headers(sid, _OK_TRAILERS, True, conn.peer_frame_size))
                    conn.close_stream(sid)
                    answered += 1
        sent.append(b"".join(out))
    return answered


# --- replay: python-hyper h2 -------------------------------------------------------------

def _h2_connection():
    from h2.config import H2Configuration
    from h2.connection import H2Connection
    from h2.settings import SettingCodes
    conn = H2Connection(H2Configuration(client_side=False, header_encoding=None))
    conn.local_settings.update({  # what ours advertises
        SettingCodes.INITIAL_WINDOW_SIZE: ours.RECEIVE_WINDOW, SettingCodes.ENABLE_PUSH: 0,
        SettingCodes.MAX_HEADER_LIST_SIZE: ours.MAX_HEADER_BLOCK,
        SettingCodes.MAX_CONCURRENT_STREAMS: ours.MAX_CONCURRENT})
    conn.initiate_connection()
    conn.increment_flow_control_window(ours.RECEIVE_WINDOW - ours.DEFAULT_WINDOW)
    return conn


_H2_RESPONSE_HEADERS = [(b":status", b"200"), (b"content-type", b"application/grpc")]
_H2_TRAILERS = [(b"grpc-status", b"0")]


def replay_h2(chunks: list[bytes]) -> int:
    """The same with python-hyper's h2 (its defaults: header validation, HPACK indexing)."""
    from h2 import events as ev
    conn = _h2_connection()
    sent = [conn.data_to_send()]
    paths, answered = {}, 0
    for chunk in chunks:
        for event in conn.receive_data(chunk):
            kind = type(event)
            if kind is ev.RequestReceived:
                paths[event.stream_id] = next(v for n, v in event.headers if n == b":path")
            elif kind is ev.DataReceived:
                if event.flow_controlled_length:
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif kind is ev.StreamEnded:
                sid = event.stream_id
                path = paths.pop(sid).decode()
                conn.send_headers(sid, _H2_RESPONSE_HEADERS)
                if KIND[path] == "unary":
                    conn.send_data(sid, _message(ANSWERS[path]))
                else:
                    for _ in range(EVENTS_PER_CALL):
                        conn.send_data(sid, _message(EVENT))
                conn.send_headers(sid, _H2_TRAILERS, end_stream=True)
                answered += 1
        sent.append(conn.data_to_send())
    return answered


# --- micro-benchmark --------------------------------------------------------------------

WORKLOADS = {"version": 1.0, "list": 1.0, "upload": 0.002, "events": 0.002}  # calls per --calls


def measure(replay, chunks, calls: int) -> float:
    started = time.process_time()
    answered = replay(chunks)
    took = time.process_time() - started
    assert answered == calls, (replay.__name__, answered, calls)
    return took / calls


def micro(calls: int, repeats: int, profile: bool) -> dict:
    results = {}
    for workload, share in WORKLOADS.items():
        n = max(10, int(calls * share))
        chunks = record(workload, n)
        samples = {"ours": [], "h2": []}
        for _ in range(repeats):  # interleaved: both see the same machine load
            samples["ours"].append(measure(replay_ours, chunks, n))
            samples["h2"].append(measure(replay_h2, chunks, n))
        ours_us = statistics.median(samples["ours"]) * 1e6
        h2_us = statistics.median(samples["h2"]) * 1e6
        results[workload] = {"calls": n, "bytes_in": sum(map(len, chunks)),
                             "ours_us_per_call": round(ours_us, 2),
                             "h2_us_per_call": round(h2_us, 2),
                             "h2_over_ours": round(h2_us / ours_us, 2)}
        print(json.dumps({workload: results[workload]}), flush=True)
        if profile:
            profiler = cProfile.Profile()
            profiler.runcall(replay_ours, chunks)
            print(f"--- cProfile, ours, {workload} ({n} calls), by own time")
            pstats.Stats(profiler).sort_stats("tottime").print_stats(12)
    return results


# --- end-to-end p50 with h2 underneath ------------------------------------------------------

class _H2Adapter:
    """Just enough of h2.Connection's interface, on python-hyper's h2, for server.py on
    unary calls: receive() → our events; the answer's frames are re-issued through h2."""

    def __init__(self):
        self.conn = _h2_connection()
        self.highest_stream_id = 0
        self.peer_frame_size = ours.DEFAULT_FRAME_SIZE

    def initial_bytes(self):
        return self.conn.data_to_send()

    def receive(self, data, out):
        from h2 import events as ev
        events = []
        for event in self.conn.receive_data(data):
            kind = type(event)
            if kind is ev.RequestReceived:
                self.highest_stream_id = event.stream_id
                events.append(ours.Request(event.stream_id, tuple(map(tuple, event.headers)), False))
            elif kind is ev.DataReceived:
                events.append(ours.Data(event.stream_id, event.data,
                                        event.flow_controlled_length, False))
            elif kind is ev.StreamEnded:
                events.append(ours.Data(event.stream_id, b"", 0, True))
            elif kind is ev.StreamReset:
                events.append(ours.Reset(event.stream_id, event.error_code))
        out.append(self.conn.data_to_send())
        return events

    windows_wanted = False  # server.py sets it; h2 reports every window update anyway

    # Output: our frames (server.py's calls), parsed back and re-sent through h2 by
    # _AdaptedConnection.write; h2 keeps the flow-control accounts.
    def send_headers(self, stream_id, block, end_stream=False):
        return ours.headers(stream_id, block, end_stream, self.peer_frame_size)

    def send_data(self, stream_id, data, limit=ours.MAX_WINDOW):
        n = min(len(data), limit, self.conn.local_flow_control_window(stream_id))
        return (ours.frame(ours.DATA, 0, stream_id, bytes(data[:n])) if n > 0 else b""), n

    def unary_answer(self, *_):
        return None  # server.py then goes frame by frame

    def end_stream(self, stream_id, block, stop_peer):
        out = ours.headers(stream_id, block, True, self.peer_frame_size)
        return out + ours.rst_stream(stream_id, ours.NO_ERROR) if stop_peer else out

    def goaway(self, code, message=b""):
        return ours.goaway(self.highest_stream_id, code, message)

    def consumed(self, stream_id, n):
        try:
            self.conn.acknowledge_received_data(n, stream_id)
        except Exception:
            pass  # the stream is closed already
        return self.conn.data_to_send()

    def close_stream(self, stream_id):
        pass


class _AdaptedConnection(_Connection):
    """server.py's connection with h2 underneath: the frames call.py builds are parsed
    back and sent through h2's state machine and encoder."""

    def __init__(self, server):
        super().__init__(server)
        self.h2 = _H2Adapter()

    def write(self, data: bytes) -> None:
        conn, view, pos = self.h2.conn, memoryview(data), 0
        while pos < len(view):
            length = int.from_bytes(view[pos:pos + 3], "big")
            kind, flags = view[pos + 3], view[pos + 4]
            sid = int.from_bytes(view[pos + 5:pos + 9], "big") & 0x7FFFFFFF
            payload = bytes(view[pos + 9:pos + 9 + length])
            pos += 9 + length
            end = bool(flags & ours.END_STREAM)
            if kind == ours.HEADERS:
                conn.send_headers(sid, _decode_literals(payload), end_stream=end)
            elif kind == ours.DATA:
                conn.send_data(sid, payload, end_stream=end)
            elif kind == ours.RST_STREAM:
                conn.reset_stream(sid, int.from_bytes(payload, "big"))
        if not self.transport.is_closing():
            self.transport.write(conn.data_to_send())


_FIELDS: dict[bytes, list] = {}


def _decode_literals(block: bytes) -> list:
    """Our own encoder's output back to fields (cached: the blocks repeat)."""
    fields = _FIELDS.get(block)
    if fields is None:
        import hpack
        fields = _FIELDS[block] = hpack.Decoder().decode(block, raw=True)
    return fields


def _p50_client(address: str, calls: int) -> float:
    code = ("import grpc, time, statistics, sys\n"
            f"ch = grpc.insecure_channel('unix://{address}')\n"
            f"call = ch.unary_unary('{VERSION}', lambda b: b, lambda b: b)\n"
            "for _ in range(200): call(b'', timeout=10)\n"
            "s = []\n"
            f"for _ in range({calls}):\n"
            "    t = time.perf_counter(); call(b'', timeout=10); s.append(time.perf_counter() - t)\n"
            "print(statistics.median(s) * 1000)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=600, check=True)
    return float(out.stdout)


def p50(calls: int, rounds: int) -> dict:
    samples = {"ours": [], "h2": []}
    from appliance.grpcserver import server as server_module
    for _ in range(rounds):
        for name in ("ours", "h2"):
            # serve_socket builds connections by the module's global name
            server_module._Connection = _AdaptedConnection if name == "h2" else _Connection
            try:
                with _Serving(record=False) as serving:
                    samples[name].append(_p50_client(serving.address, calls))
            finally:
                server_module._Connection = _Connection
    result = {name: round(statistics.median(s), 4) for name, s in samples.items()}
    result["h2_over_ours"] = round(result["h2"] / result["ours"], 2)
    result["rounds"] = samples
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.h2_compare")
    parser.add_argument("mode", nargs="?", choices=["micro", "p50"], default="micro")
    parser.add_argument("--calls", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="cProfile of our path too")
    args = parser.parse_args(argv)
    if args.mode == "micro":
        print(json.dumps(micro(args.calls or 10000, args.repeats, args.profile)))
    else:
        print(json.dumps(p50(args.calls or 3000, args.rounds)))


if __name__ == "__main__":
    main()
