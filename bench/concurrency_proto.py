"""Issue 3's concurrency-model question, measured: grpc.aio (± uvloop) vs a sync grpc server + threads.

A throw-away prototype (not part of the daemon): a server with our generated stubs that
answers Version (canned) and Containers.List (empty), in each model, next to containerd.

  python -m bench.concurrency_proto compare [--reps 3]   → bench/out/concurrency.md
  python -m bench.concurrency_proto serve --mode aio|aio-uvloop|sync --address SOCK

uvloop is not a project dependency; for the aio-uvloop variant put it on PYTHONPATH
(e.g. a scratch venv's site-packages) or that variant is reported as unavailable.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

MODES = ("aio", "aio-uvloop", "sync")


def servicers():
    from appliance._proto.containerd.api.services.containers.v1 import containers_pb2, containers_pb2_grpc
    from appliance._proto.containerd.api.services.introspection.v1 import (introspection_pb2,
                                                                          introspection_pb2_grpc)
    from appliance._proto.containerd.api.services.version.v1 import version_pb2, version_pb2_grpc
    version = version_pb2.VersionResponse(version="0.1.0", revision="proto")
    empty = containers_pb2.ListContainersResponse()
    server_info = introspection_pb2.ServerResponse(uuid="00000000-0000-4000-8000-000000000000")

    class SyncIntrospection(introspection_pb2_grpc.IntrospectionServicer):  # ctr version asks it
        def Server(self, request, context):
            return server_info

    class AioIntrospection(introspection_pb2_grpc.IntrospectionServicer):
        async def Server(self, request, context):
            return server_info

    class SyncVersion(version_pb2_grpc.VersionServicer):
        def Version(self, request, context):
            return version

    class SyncContainers(containers_pb2_grpc.ContainersServicer):
        def List(self, request, context):
            dict(context.invocation_metadata())  # what namespace_of() does
            return empty

    class AioVersion(version_pb2_grpc.VersionServicer):
        async def Version(self, request, context):
            return version

    class AioContainers(containers_pb2_grpc.ContainersServicer):
        async def List(self, request, context):
            dict(context.invocation_metadata())
            return empty

    def register(server, aio):
        version_pb2_grpc.add_VersionServicer_to_server(AioVersion() if aio else SyncVersion(), server)
        containers_pb2_grpc.add_ContainersServicer_to_server(
            AioContainers() if aio else SyncContainers(), server)
        introspection_pb2_grpc.add_IntrospectionServicer_to_server(
            AioIntrospection() if aio else SyncIntrospection(), server)
    return register


def serve(mode: str, address: str, workers: int):
    import grpc
    started = time.monotonic()
    register = servicers()
    if mode == "sync":
        server = grpc.server(ThreadPoolExecutor(max_workers=workers))
        register(server, aio=False)
        server.add_insecure_port("unix:" + address)
        server.start()
        print(f"successfully booted in {time.monotonic() - started:.3f}s", flush=True)
        stop = []
        signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
        while not stop:
            time.sleep(0.2)
        server.stop(1)
        return

    async def main():
        server = grpc.aio.server()
        register(server, aio=True)
        server.add_insecure_port("unix:" + address)
        await server.start()
        print(f"successfully booted in {time.monotonic() - started:.3f}s", flush=True)
        done = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, done.set)
        await done.wait()
        await server.stop(1)
    if mode == "aio-uvloop":
        import uvloop
        uvloop.run(main())
    else:
        asyncio.run(main())


def compare(reps: int, out: Path):
    from .daemons import REPO, Target
    from .sections import python_tool, timed

    class Proto(Target):
        def _argv(self):
            return [sys.executable, "-m", "bench.concurrency_proto", "serve", "--mode", self.kind,
                    "--address", self.address]

    work = Path("/tmp/ctrappliance-bench/proto")
    shutil.rmtree(work, ignore_errors=True)
    os.chdir(REPO)
    kinds = ["containerd", *MODES]
    values: dict[str, dict[str, list]] = {k: {} for k in kinds}
    for rep in range(reps):
        for kind in (kinds if rep % 2 == 0 else kinds[::-1]):
            cls = Target if kind == "containerd" else Proto
            t = cls(kind, work / f"{kind}-{rep}")
            try:
                boot = t.start()
            except (RuntimeError, TimeoutError) as exc:
                values[kind]["error"] = [str(exc).splitlines()[-1]]
                t.cleanup()
                continue
            try:
                time.sleep(2.0)
                rec = lambda k, v: values[kind].setdefault(k, []).append(v)  # noqa: E731
                rec("boot_version_ms", 1000 * boot["spawn_to_version"])
                rec("idle_rss_mib", t.memory()["rss_mib"])
                rec("idle_threads", t.memory()["threads"])
                rec("ctr_version_ms", statistics.median(1000 * timed(t.ctr, "version") for _ in range(20)))
                for rpc in ("version", "containers"):
                    r = python_tool("bench.grpcprobe", "-a", t.address, "latency", "--rpc", rpc, "-c", "2000")
                    rec(f"grpc_{rpc}_p50_ms", r["p50_ms"])
                    rec(f"grpc_{rpc}_p99_ms", r["p99_ms"])
                r = python_tool("bench.grpcprobe", "-a", t.address, "throughput", "-c", "4000", "-j", "8")
                rec("grpc_version_8threads_per_s", r["calls_per_s"])
                m = t.memory()
                rec("rss_after_mib", m["rss_mib"])
                rec("hwm_after_mib", m["hwm_mib"])
                rec("threads_after", m["threads"])
            finally:
                t.cleanup()
    metrics = [m for m in values["containerd"] if m != "error"]
    lines = ["| metric | " + " | ".join(kinds) + " |", "| --- |" + " --- |" * len(kinds)]
    for metric in metrics:
        cells = []
        for kind in kinds:
            v = values[kind].get(metric)
            cells.append(values[kind]["error"][0][:40] if "error" in values[kind] else
                         f"{statistics.median(v):.3g}" + (f" ({min(v):.3g}–{max(v):.3g})" if len(v) > 1 else ""))
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    text = (f"Concurrency prototype, {reps} reps interleaved, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
            f"load {' '.join('%.2f' % x for x in os.getloadavg())}; median (min–max)\n\n" + "\n".join(lines) + "\n")
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)
    print(text)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.concurrency_proto")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--mode", choices=MODES, required=True)
    s.add_argument("--address", required=True)
    s.add_argument("--workers", type=int, default=8)
    c = sub.add_parser("compare")
    c.add_argument("--reps", type=int, default=3)
    c.add_argument("--out", default=str(Path(__file__).resolve().parent / "out" / "concurrency.md"))
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.mode, args.address, args.workers)
    else:
        compare(args.reps, Path(args.out))


if __name__ == "__main__":
    main()
