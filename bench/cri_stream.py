"""CRI streaming, side by side with containerd 1.6.20 (CRI on), one run:

- exec round trip: Exec URL request → SPDY upgrade → `echo hi` → exit status read, 50 in a
  row, interleaved between the daemons (Go spdystream client, as kubectl's);
- port-forward throughput: a 100 MiB file from busybox httpd in a host-network pod through
  PortForward over SPDY.

    .venv/bin/python -m bench.cri_stream [--execs 50] [--mib 100]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

from .daemons import REPO


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--execs", type=int, default=50)
    parser.add_argument("--mib", type=int, default=100)
    args = parser.parse_args()
    sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "integration")]
    from appliance._proto.cri.v1 import api_pb2 as pb
    from cri_helpers import Client, Registry, make_daemon
    from streaming_helpers import spdy_client
    client_binary = spdy_client()
    registry = Registry()
    setups = []
    try:
        for kind in ("ctrappliance", "containerd"):
            daemon = make_daemon(kind, registry.pause)
            daemon.start()
            client = Client(kind, daemon)
            setups.append((kind, daemon, client))
            client.pull(registry.busybox)
            pod, config = client.run_pod("bench")
            cid = client.create(pod, config, "box", registry.busybox, command=[
                "sh", "-c", f"head -c {args.mib << 20} /dev/zero > /tmp/big; sleep 100000"])
            client.start(cid)
            port = 20000 + len(setups)
            web = client.create(pod, config, "web", registry.busybox, command=[
                "sh", "-c", f"head -c {args.mib << 20} /dev/zero > /tmp/big; exec /bin/busybox "
                            f"httpd -f -p 127.0.0.1:{port} -h /tmp"])
            client.start(web)
            client.bench = (pod, cid, port)
        time.sleep(3)  # the files are written, httpd listens
        rounds: dict[str, list[float]] = {kind: [] for kind, _, _ in setups}
        for i in range(args.execs + 2):
            for kind, _, client in setups:
                _, cid, _ = client.bench
                t0 = time.perf_counter()
                url = client.runtime.Exec(pb.ExecRequest(container_id=cid, cmd=["echo", "hi"],
                                                         stdout=True)).url
                r = subprocess.run([client_binary, "-url", url, "exec"], capture_output=True,
                                   timeout=120)
                elapsed = time.perf_counter() - t0
                assert r.stdout == b"hi\n", r
                if i >= 2:  # warm-up: the server starts on the first Exec
                    rounds[kind].append(elapsed)
        throughput: dict[str, list[float]] = {kind: [] for kind, _, _ in setups}
        for _ in range(5):
            for kind, _, client in setups:
                pod, _, port = client.bench
                url = client.runtime.PortForward(pb.PortForwardRequest(pod_sandbox_id=pod,
                                                                       port=[port])).url
                t0 = time.perf_counter()
                r = subprocess.run([client_binary, "-url", url, "portforward", "-port",
                                    str(port), "-count", "-data",
                                    "GET /big HTTP/1.0\r\n\r\n"], capture_output=True,
                                   timeout=600)
                elapsed = time.perf_counter() - t0
                got = int(r.stdout.decode().split("|")[1])
                assert got > args.mib << 20, r
                throughput[kind].append(got / elapsed / (1 << 20))
        ours, theirs = (statistics.median(rounds[k]) for k in ("ctrappliance", "containerd"))
        print(f"exec round trip, median of {args.execs}: ctrappliance {1000 * ours:.1f} ms, "
              f"containerd {1000 * theirs:.1f} ms, ratio {ours / theirs:.2f}")
        ours, theirs = (statistics.median(throughput[k]) for k in ("ctrappliance", "containerd"))
        print(f"port-forward {args.mib} MiB, median of 5: ctrappliance {ours:.0f} MiB/s, "
              f"containerd {theirs:.0f} MiB/s, ratio {ours / theirs:.2f}")
    finally:
        for _, daemon, client in setups:
            try:
                client.remove_all()
            finally:
                client.close()
                daemon.cleanup()
        registry.stop()


if __name__ == "__main__":
    main()
