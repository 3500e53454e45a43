"""In-process gRPC client (our generated stubs, no `ctr` spawn): latency and throughput.

  python -m bench.grpcprobe -a SOCK latency --rpc version -c 2000
  python -m bench.grpcprobe -a SOCK throughput --rpc containers -c 5000 -j 8
Prints one JSON object. Runs in its own process so the harness does not disturb it.
"""
from __future__ import annotations

import argparse
import json
import threading
import time

import grpc

from appliance._proto.containerd.api.services.containers.v1 import containers_pb2, containers_pb2_grpc
from appliance._proto.containerd.api.services.version.v1 import version_pb2_grpc
from google.protobuf import empty_pb2

from .stats import percentile


def make_call(channel, rpc: str, namespace: str):
    metadata = (("containerd-namespace", namespace),)
    if rpc == "version":
        stub = version_pb2_grpc.VersionStub(channel)
        request = empty_pb2.Empty()
        return lambda: stub.Version(request, timeout=10)
    stub = containers_pb2_grpc.ContainersStub(channel)
    request = containers_pb2.ListContainersRequest()
    return lambda: stub.List(request, metadata=metadata, timeout=10)


def latency(call, count: int) -> dict:
    for _ in range(50):  # connection set-up and warm caches
        call()
    samples = []
    for _ in range(count):
        t0 = time.perf_counter()
        call()
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return {"n": count, "p50_ms": percentile(samples, 0.5), "p99_ms": percentile(samples, 0.99),
            "min_ms": samples[0], "max_ms": samples[-1]}


def throughput(call, count: int, jobs: int) -> dict:
    for _ in range(50):
        call()
    errors = []

    def worker(n):
        for _ in range(n):
            try:
                call()
            except grpc.RpcError as exc:
                errors.append(exc.code().name)

    threads = [threading.Thread(target=worker, args=(count // jobs,)) for _ in range(jobs)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.perf_counter() - t0
    calls = (count // jobs) * jobs
    return {"calls": calls, "seconds": took, "calls_per_s": calls / took, "errors": len(errors)}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.grpcprobe")
    parser.add_argument("-a", "--address", required=True)
    parser.add_argument("-n", "--namespace", default="bench")
    parser.add_argument("mode", choices=["latency", "throughput"])
    parser.add_argument("--rpc", choices=["version", "containers"], default="version")
    parser.add_argument("-c", "--count", type=int, default=2000)
    parser.add_argument("-j", "--jobs", type=int, default=8)
    args = parser.parse_args(argv)
    with grpc.insecure_channel("unix://" + args.address) as channel:
        call = make_call(channel, args.rpc, args.namespace)
        try:
            out = (latency(call, args.count) if args.mode == "latency"
                   else throughput(call, args.count, args.jobs))
        except grpc.RpcError as exc:
            out = {"error": f"{exc.code().name}: {exc.details()}"}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
