"""Daemon CPU per container lifecycle and per-RPC latency, containerd 1.6.20 and ours side by side.

  python -m bench.rpc_cpu [--seconds 15] [--rounds 2] [--workers 4] [--grpc 2000]
                          [--profile out.folded] [--ours-bin PATH]

Starts both daemons on private paths, imports the small image, then per round (order
alternating): `--workers` threads loop the real `ctr run --rm busybox /bin/true` for
`--seconds`, and the daemon's own CPU time (/proc) is divided by the containers run.
`--grpc N`: in-process Version / Containers.List p50 and p99 (bench.grpcprobe) per round,
once the daemon is idle.
`--base-tree DIR`: a third daemon, ours run from another source tree (e.g. `git archive`
of an earlier commit plus appliance/_proto and the built extensions), as "before".
`--profile`: py-spy --native on our daemon during an extra first round of ours, not
counted (py-spy stops the process to sample); collapsed stacks + a summary beside them.
Prints one JSON object; ratios are ours / containerd's medians.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from . import daemons, images
from .daemons import Target, remove_empty_cgroups
from .profile import py_spy, summarise
from .sections import ensure_small_image, python_tool, run_opts


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process (its threads, not its children)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


class TreeTarget(Target):
    """Our daemon importing `appliance` from another source tree."""

    def __init__(self, tree: str, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.tree = tree

    def start(self) -> dict:
        saved = daemons.ENV.get("PYTHONPATH")
        daemons.ENV["PYTHONPATH"] = self.tree
        try:
            return super().start()
        finally:
            if saved is None:
                daemons.ENV.pop("PYTHONPATH")
            else:
                daemons.ENV["PYTHONPATH"] = saved


def settle(pid: int, timeout: float = 30.0) -> None:
    """Until the daemon is idle (< 10 ms CPU in 0.5 s): work left over from the previous
    loop (our deferred directory removals, GC) must not fall into a latency probe."""
    stop = time.monotonic() + timeout
    before = sum(cpu_times(pid))
    while time.monotonic() < stop:
        time.sleep(0.5)
        now = sum(cpu_times(pid))
        if now - before < 0.01:
            return
        before = now


def lifecycles(t: Target, seconds: float, workers: int, tag: str) -> tuple[int, int]:
    """(containers run, failures) in `seconds` with `workers` loops of `ctr run --rm`."""
    stop = time.monotonic() + seconds
    done, failed = [0], [0]
    lock = threading.Lock()

    def loop(w):
        i = 0
        while time.monotonic() < stop:
            r = t.ctr("run", "--rm", *run_opts(t), images.SMALL_REF, f"cpu-{tag}-{w}-{i}",
                      "/bin/true", check=False)
            with lock:
                if r.returncode == 0:
                    done[0] += 1
                else:
                    failed[0] += 1
            i += 1
    threads = [threading.Thread(target=loop, args=(w,)) for w in range(workers)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return done[0], failed[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.rpc_cpu")
    p.add_argument("--seconds", type=float, default=15)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--grpc", type=int, default=2000, help="calls per latency probe (0: none)")
    p.add_argument("--profile", default="", help="collapsed py-spy --native stacks of ours")
    p.add_argument("--ours-bin", default=None)
    p.add_argument("--targets", default="containerd,ctrappliance")
    p.add_argument("--base-tree", default=None)
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="rpc_cpu-", dir="/var/tmp"))
    targets = [Target(kind, work / kind, binary=args.ours_bin if kind == "ctrappliance" else None)
               for kind in args.targets.split(",")]
    for t in targets:
        t.label = t.kind
    if args.base_tree:
        base = TreeTarget(args.base_tree, "ctrappliance", work / "base")
        base.label = "base"
        targets.append(base)
    res: dict = {t.label: {"cpu_ms_per_container": [], "user_ms_per_container": [],
                          "sys_ms_per_container": [], "containers_per_s": [], "failures": 0,
                          "version_p50": [], "version_p99": [], "containers_p50": [],
                          "containers_p99": []} for t in targets}
    try:
        for t in targets:
            t.start()
            ensure_small_image(t)
        for rnd in range(-1 if args.profile else 0, args.rounds):
            order = targets if rnd % 2 == 0 else targets[::-1]
            for t in order:
                if rnd < 0 and t.label != "ctrappliance":
                    continue
                r = res[t.label] if rnd >= 0 else {k: [] for k in res[t.label]} | {"failures": 0}
                if args.grpc and rnd >= 0:
                    settle(t.pid)
                    for rpc in ("version", "containers"):
                        g = python_tool("bench.grpcprobe", "-a", t.address, "latency", "--rpc", rpc,
                                        "-c", str(args.grpc))
                        r[f"{rpc}_p50"].append(g["p50_ms"])
                        r[f"{rpc}_p99"].append(g["p99_ms"])
                spy = None
                if rnd < 0:
                    spy = subprocess.Popen([py_spy(), "record", "--pid", str(t.pid), "--rate", "200",
                                            "--native", "--format", "raw",
                                            "-o", args.profile],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    time.sleep(1)
                (u0, s0), t0 = cpu_times(t.pid), time.monotonic()
                n, failed = lifecycles(t, args.seconds, args.workers, f"{t.label}-{rnd + 1}")
                took, (u1, s1) = time.monotonic() - t0, cpu_times(t.pid)
                cpu = (u1 - u0) + (s1 - s0)
                if spy:
                    spy.send_signal(2)
                    spy.wait(60)
                    Path(args.profile).with_suffix(".txt").write_text(summarise(Path(args.profile), 40))
                r["failures"] += failed
                if n:
                    r["cpu_ms_per_container"].append(1000 * cpu / n)
                    r["user_ms_per_container"].append(1000 * (u1 - u0) / n)
                    r["sys_ms_per_container"].append(1000 * (s1 - s0) / n)
                    r["containers_per_s"].append(n / took)
                print(f"round {rnd} {t.label}: {n} containers ({failed} failed) in {took:.1f}s, "
                      f"cpu {cpu:.2f}s", file=sys.stderr)
    finally:
        for t in targets:
            t.cleanup()
        remove_empty_cgroups("bench")
    summary = {kind: {k: (statistics.median(v) if isinstance(v, list) and v else v)
                      for k, v in r.items()} for kind, r in res.items()}
    if "containerd" in summary:
        a = summary["containerd"]
        for label in ("ctrappliance", "base"):
            if label in summary:
                b = summary[label]
                summary[f"ratio_{label}"] = {k: b[k] / a[k] for k in a
                                             if isinstance(a[k], float) and a[k]}
    summary["rounds"] = res
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
