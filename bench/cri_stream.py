"""CRI streaming, side by side with containerd 1.6.20 (CRI on), one run:

- exec round trip: Exec URL request → SPDY upgrade → `echo hi` → exit status read, rounds
  interleaved between the daemons (taking turns, in both orders), by one long-lived Go spdystream client per
  daemon (as kubectl's; `--spawn`: a client process per exec, as before), with where the
  time goes on both sides from the kernel's process events (runc exec, the command);
- port-forward throughput: a 100 MiB file from busybox httpd in a host-network pod through
  PortForward over SPDY.

    .venv/bin/python -m bench.cri_stream [--execs 100] [--mib 100] [--spawn] [--show-runc]
        [--base TREE]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time

from .daemons import REPO


class ExecLoop:
    """One long-lived `spdyclient execloop`: a URL in, the exec's stdout and status out."""

    def __init__(self, binary: str):
        self.proc = subprocess.Popen([binary, "execloop"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE)

    def run(self, url: str) -> dict:
        self.proc.stdin.write(url.encode() + b"\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("spdyclient execloop ended")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def spread(values: list[float]) -> str:
    """median [p10–p90] in ms."""
    q = statistics.quantiles(values, n=10)
    return f"{1000 * statistics.median(values):6.1f} [{1000 * q[0]:.1f}–{1000 * q[-1]:.1f}]"


def exec_rounds(setups, client_binary: str, pb, rounds: int, spawn: bool,
                show_runc: bool = False) -> None:
    """Exec round trips, the daemons taking turns (ABBA: neither always goes first)."""
    from appliance.tools.stress import shim_pids
    from .proc_events import ProcEvents
    shims = {kind: shim_pids(daemon.address) for kind, daemon, _ in setups}
    events = ProcEvents([pid for pids in shims.values() for pid in pids])
    loops = {kind: ExecLoop(client_binary) for kind, _, _ in setups}
    parts = ("total", "url", "to runc", "runc exec", "command", "to status")
    times = {kind: {part: [] for part in parts} for kind, _, _ in setups}
    ratios: dict[str, list[float]] = {kind: [] for kind, _, _ in setups if kind != "containerd"}
    try:
        for i in range(rounds + 2):
            order = setups[i % len(setups):] + setups[:i % len(setups)]
            order = order if i // len(setups) % 2 == 0 else order[::-1]
            got = {}
            for kind, _, client in order:
                _, cid, _ = client.bench
                t0 = time.monotonic_ns()
                url = client.runtime.Exec(pb.ExecRequest(container_id=cid, cmd=["echo", "hi"],
                                                         stdout=True)).url
                t_url = time.monotonic_ns()
                if spawn:
                    r = subprocess.run([client_binary, "-url", url, "exec"],
                                       capture_output=True, timeout=120)
                    out = r.stdout.decode()
                else:
                    out = loops[kind].run(url)["stdout"]
                t1 = time.monotonic_ns()
                assert out == "hi\n", out
                if i < 2:  # warm-up: the server starts on the first Exec
                    continue
                got[kind] = t1 - t0
                row = times[kind]
                row["total"].append((t1 - t0) / 1e9)
                row["url"].append((t_url - t0) / 1e9)
                seen = [events.runc_exec(pid, t0, t1) for pid in shims[kind]]
                seen = [s for s in seen if s]
                if len(seen) == 1:
                    runc0, runc1, cmd0, cmd1 = seen[0]
                    row["to runc"].append((runc0 - t0) / 1e9)
                    row["runc exec"].append((runc1 - runc0) / 1e9)
                    row["command"].append((cmd1 - cmd0) / 1e9)
                    row["to status"].append((t1 - max(cmd1, runc1)) / 1e9)
            for kind in ratios if got else ():
                ratios[kind].append(got[kind] / got["containerd"])
        if show_runc:  # one runc exec per daemon: its command line and --process file
            shown = set()
            for p in list(events.procs.values()):
                for ns, argv in p.execs[:1]:
                    kind = next(k for k, pids in shims.items() if p.root in pids)
                    if argv and "exec" in argv and kind not in shown:
                        shown.add(kind)
                        print(kind, " ".join(argv), p.process_spec.decode(), sep="\n  ")
    finally:
        events.stop()
        for loop in loops.values():
            loop.close()
    client = "a client process per exec" if spawn else "one long-lived client"
    print(f"exec round trip ({client}), {rounds} rounds, the daemons taking turns, "
          f"ms: median [p10–p90]")
    for part in parts:
        cells = [f"{kind} {spread(times[kind][part]) if len(times[kind][part]) > 9 else '-':24s}"
                 for kind in times]
        print(f"  {part:10s} " + " ".join(cells) + " (n="
              + "/".join(str(len(times[kind][part])) for kind in times) + ")")
    theirs = statistics.median(times["containerd"]["total"])
    for kind, values in ratios.items():
        q = statistics.quantiles(values, n=4)
        print(f"  {kind} / containerd: ratio of medians "
              f"{statistics.median(times[kind]['total']) / theirs:.2f}; per-round ratio median "
              f"{statistics.median(values):.2f} [quartiles {q[0]:.2f}–{q[2]:.2f}]")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--execs", type=int, default=100)
    parser.add_argument("--mib", type=int, default=100)
    parser.add_argument("--spawn", action="store_true",
                        help="a client process per exec (its start is timed too)")
    parser.add_argument("--show-runc", action="store_true",
                        help="print a runc exec command line and process spec of each daemon")
    parser.add_argument("--base", metavar="TREE",
                        help="a third daemon, `base`: ours from another source tree (e.g. a "
                             "`git archive` of main plus appliance/_proto and the built "
                             "extensions), put first on its PYTHONPATH")
    args = parser.parse_args()
    sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "integration")]
    from appliance._proto.cri.v1 import api_pb2 as pb
    from cri_helpers import Client, Registry, make_daemon
    from streaming_helpers import spdy_client
    client_binary = spdy_client()
    registry = Registry()
    setups = []
    try:
        kinds = ["ctrappliance", "containerd"] + (["base"] if args.base else [])
        for kind in kinds:
            daemon = make_daemon("containerd" if kind == "containerd" else "ctrappliance",
                                 registry.pause)
            if kind == "base":
                daemon.env = {"PYTHONPATH": args.base}
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
        exec_rounds(setups, client_binary, pb, args.execs, args.spawn, args.show_runc)
        throughput: dict[str, list[float]] = {kind: [] for kind, _, _ in setups}
        for _ in range(5 if args.mib else 0):
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
        if args.mib:
            ours, theirs = (statistics.median(throughput[k])
                            for k in ("ctrappliance", "containerd"))
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
