"""The gRPC server's own work per unary call, in-process: recorded client bytes replayed.

    .venv/bin/python -m bench.grpc_percall [--calls 5000] [--profile] [--rpc version|list]

A grpcio client's bytes for `--calls` calls (with a deadline, as bench.grpcprobe makes
them) are recorded once from a real server; then they are fed to a fresh `_Connection`
on a transport that keeps nothing, on a running loop, each call awaited until answered:
h2 parsing, dispatch, the handler (the daemon's real Version adapter; `list`: a trivial
namespaced handler, the request carrying containerd-namespace metadata) and the answer,
without the selector and socket calls. Prints µs per call (process time); `--profile`
adds a cProfile by own time. For instruction counts run it under callgrind twice with
different `--calls` and take the difference (bench/NOTES.md).
"""
from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import socket
import tempfile
import threading
import time

from appliance.grpcserver.server import Server, _Connection

VERSION = "/containerd.services.version.v1.Version/Version"
LIST = "/containerd.services.containers.v1.Containers/List"


def _services():
    from appliance import stubs
    from appliance.plugins.version import VersionAdapter
    services = stubs.GrpcServices()
    VersionAdapter().register(services)

    class Containers:   # a namespaced method answering at once
        async def List(self, request, context):
            return containers_pb2.ListContainersResponse()

    containers_pb2 = stubs.module(
        "appliance._proto.containerd.api.services.containers.v1.containers_pb2")
    services.add("containerd.services.containers.v1.Containers", containers_pb2, Containers())
    return services


def record(rpc: str, calls: int) -> list[bytes]:
    """What a grpcio client sends for `calls` calls, chunked as the server read it."""
    import grpc
    from google.protobuf import empty_pb2
    from appliance._proto.containerd.api.services.containers.v1 import containers_pb2_grpc, \
        containers_pb2
    from appliance._proto.containerd.api.services.version.v1 import version_pb2_grpc
    chunks: list[bytes] = []
    original = _Connection.data_received

    def recording(conn, data):
        chunks.append(bytes(data))
        original(conn, data)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    with tempfile.TemporaryDirectory() as tmp:
        address = os.path.join(tmp, "s.sock")
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(address)
        sock.listen(16)
        server = Server()
        server.add_generic_rpc_handlers([_services()])
        _Connection.data_received = recording
        try:
            thread.start()
            asyncio.run_coroutine_threadsafe(server.serve_socket(sock), loop).result(10)
            with grpc.insecure_channel("unix://" + address) as channel:
                if rpc == "version":
                    stub = version_pb2_grpc.VersionStub(channel)
                    for _ in range(calls):
                        stub.Version(empty_pb2.Empty(), timeout=10)
                else:
                    stub = containers_pb2_grpc.ContainersStub(channel)
                    for _ in range(calls):
                        stub.List(containers_pb2.ListContainersRequest(), timeout=10,
                                  metadata=(("containerd-namespace", "bench"),))
            time.sleep(0.2)
            asyncio.run_coroutine_threadsafe(server.stop(1), loop).result(10)
        finally:
            _Connection.data_received = original
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
    return chunks


class _Transport:
    """Writes are dropped."""

    def write(self, data):
        pass

    def is_closing(self):
        return False

    def get_extra_info(self, name, default=None):
        return None

    def close(self):
        pass

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass


class _Replayed(_Connection):
    """Feeds the next chunk from a loop callback (as the selector's reader would) once
    no call is left open."""

    def end_call(self, call):
        super().end_call(call)
        self.transport.answered += 1
        if not self.calls and not self.transport.feeding:
            self.transport.loop.call_soon(self.transport.feed)


class _Feeder(_Transport):
    def __init__(self, conn, chunks, done):
        super().__init__()
        self.conn, self.chunks, self.done = conn, iter(chunks), done
        self.loop = asyncio.get_running_loop()
        self.answered = 0
        self.feeding = False

    def feed(self):
        chunk = next(self.chunks, None)
        if chunk is None:
            self.done.set_result(self.answered)
            return
        self.feeding = True
        self.conn.data_received(chunk)
        self.feeding = False
        if not self.conn.calls:   # answered at once, or nothing to answer
            self.loop.call_soon(self.feed)


async def replay(chunks: list[bytes], services) -> int:
    server = Server()
    server.add_generic_rpc_handlers([services])
    conn = _Replayed(server)
    done = asyncio.get_running_loop().create_future()
    transport = _Feeder(conn, chunks, done)
    conn.connection_made(transport)
    transport.loop.call_soon(transport.feed)
    return await done


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.grpc_percall")
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--rpc", choices=["version", "list"], default="version")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--record-only", metavar="FILE")
    parser.add_argument("--replay", metavar="FILE", help="chunks recorded with --record-only")
    parser.add_argument("--repeat", type=int, default=1,
                        help="replays measured (after one to warm up)")
    args = parser.parse_args(argv)
    import pickle
    if args.replay:
        with open(args.replay, "rb") as f:
            chunks = pickle.load(f)
    else:
        chunks = record(args.rpc, args.calls)
    if args.record_only:
        with open(args.record_only, "wb") as f:
            pickle.dump(chunks, f)
        return
    services = _services()

    async def replays(n):
        return sum([await replay(chunks, services) for _ in range(n)])
    asyncio.run(replays(1))   # warm
    t0 = time.process_time()
    answered = asyncio.run(replays(args.repeat))
    took = time.process_time() - t0
    print(f"{answered} calls, {took / answered * 1e6:.1f} µs each")
    if args.profile:
        profiler = cProfile.Profile()
        profiler.runcall(asyncio.run, replays(1))
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    main()
