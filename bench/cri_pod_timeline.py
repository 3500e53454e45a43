"""Where a CRI pod start's wall time goes, on both daemons: `python -m bench.cri_pod_timeline
[--pods N] [--cni]`. Each round, each daemon (taking turns, ABBA) starts one pod as
bench/cri_pods.py does (RunPodSandbox → CreateContainer → StartContainer → RUNNING); the
client's timestamps of each call are laid beside the fork/exec/exit times of every process
the daemon ran meanwhile (bench/proc_events.py: the shim's `start`, `runc create`/`start`,
CNI plugins), all as ms from RunPodSandbox's send, medians over the rounds. With `--cni`,
the pods get a network (Debian's bridge/host-local/loopback plugins, a scratch bridge)
instead of the host's.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from .daemons import REPO


def step_name(argv: list[str]) -> str:
    if not argv:
        return "?"
    base = os.path.basename(argv[0])
    if base == "containerd-shim-runc-v2":
        return "shim " + ("start" if "start" in argv else "delete" if "delete" in argv
                          else "daemon")
    if base == "runc":
        for verb in ("create", "start", "delete", "state", "kill", "init"):
            if verb in argv:
                return f"runc {verb}"
        return "runc ?"
    if argv[1:2] == ["init"]:
        return "runc init"
    return base


def cpu_ms(pid: int) -> float:
    """utime + stime of a process, ms."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def one_pod(client, pb, name: str, host_network: bool) -> list[int]:
    from cri_helpers import pod_config
    config = pod_config(name, host_network=host_network)
    marks = [time.monotonic_ns()]
    pod = client.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=config),
                                       timeout=120).pod_sandbox_id
    marks.append(time.monotonic_ns())
    cid = client.create(pod, config, "app", client.busybox, command=["sleep", "3600"])
    marks.append(time.monotonic_ns())
    client.start(cid)
    marks.append(time.monotonic_ns())
    while client.status(cid).status.state != pb.CONTAINER_RUNNING:
        time.sleep(0.005)
    marks.append(time.monotonic_ns())
    return marks


def timeline(events, root: int, marks: list[int]) -> list[tuple[str, float, float]]:
    """(step, exec ms, exit ms) of the processes under `root` that exec'd in the window."""
    t0, end = marks[0], marks[-1]
    out = []
    for p in list(events.procs.values()):
        if p.root != root:
            continue
        for i, (ns, argv) in enumerate(list(p.execs)):
            if not t0 <= ns <= end:
                continue
            last = i == len(p.execs) - 1
            exited = p.exited if last and p.exited else 0
            out.append((step_name(argv), (ns - t0) / 1e6,
                        (exited - t0) / 1e6 if exited else float("nan")))
    return sorted(out, key=lambda s: s[1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pods", type=int, default=20)
    parser.add_argument("--cni", action="store_true", help="pods on a CNI bridge network")
    parser.add_argument("--base", metavar="TREE", help="also ours from TREE")
    args = parser.parse_args()
    sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "integration")]
    from appliance._proto.cri.v1 import api_pb2 as pb
    from cri_helpers import Client, Registry, make_daemon, stop_daemon
    from .proc_events import ProcEvents
    registry = Registry()
    setups, net = [], None
    try:
        conf_dir = ""
        if args.cni:
            from cni_helpers import scratch_network
            net = scratch_network("ca-podtl-")
            conf_dir = str(net.__enter__().conf_dir)
        for kind in ("ctrappliance", "containerd") + (("base",) if args.base else ()):
            daemon = make_daemon("containerd" if kind == "containerd" else "ctrappliance",
                                 registry.pause, cni_conf_dir=conf_dir)
            if kind == "base":
                daemon.env = {"PYTHONPATH": args.base}
            daemon.start()
            client = Client(kind, daemon)
            client.busybox = registry.busybox
            setups.append((kind, daemon, client))
            client.pull(registry.busybox)
            one_pod(client, pb, f"warm-{kind}", not args.cni)
        events = ProcEvents([d.proc.pid for _, d, _ in setups])
        rows = {kind: {} for kind, _, _ in setups}
        totals = {kind: [] for kind, _, _ in setups}
        calls = {kind: [] for kind, _, _ in setups}
        cpu = {kind: -cpu_ms(d.proc.pid) for kind, d, _ in setups}
        try:
            for i in range(args.pods):
                order = setups[i % len(setups):] + setups[:i % len(setups)]
                order = order if i // len(setups) % 2 == 0 else order[::-1]
                for kind, daemon, client in order:
                    marks = one_pod(client, pb, f"tl-{i}", not args.cni)
                    totals[kind].append((marks[-1] - marks[0]) / 1e6)
                    calls[kind].append([(m - marks[0]) / 1e6 for m in marks[1:]])
                    seen: dict[str, int] = {}
                    for step, start, end in timeline(events, daemon.proc.pid, marks):
                        n = seen[step] = seen.get(step, 0) + 1
                        rows[kind].setdefault(f"{step} #{n}", []).append((start, end))
        finally:
            events.stop()
        for kind, d, _ in setups:
            cpu[kind] += cpu_ms(d.proc.pid)
        for kind, _, _ in setups:
            print(f"{kind}: total {statistics.median(totals[kind]):.1f} ms (median of "
                  f"{len(totals[kind])}); daemon CPU {cpu[kind] / args.pods:.1f} ms per pod; "
                  f"client marks (ms from RunPodSandbox sent):")
            names = ("RunPodSandbox", "CreateContainer", "StartContainer", "RUNNING seen")
            for j, name in enumerate(names):
                returned = statistics.median(c[j] for c in calls[kind])
                print(f"    {name:18s} returned {returned:7.1f}")
            print("  processes (exec → exit, ms from RunPodSandbox sent, medians; n):")
            for step, spans in sorted(rows[kind].items(),
                                      key=lambda kv: statistics.median(s[0] for s in kv[1])):
                if len(spans) < len(totals[kind]) // 2:
                    continue
                ends = [e for _, e in spans if e == e]
                print(f"    {step:18s} {statistics.median(s for s, _ in spans):7.1f} → "
                      f"{statistics.median(ends) if ends else float('nan'):7.1f}  "
                      f"({len(spans)})")
        theirs = statistics.median(totals["containerd"])
        for kind in totals:
            if kind != "containerd":
                ratios = [a / b for a, b in zip(totals[kind], totals["containerd"])]
                print(f"{kind}/containerd: ratio of medians "
                      f"{statistics.median(totals[kind]) / theirs:.2f}, median of per-round "
                      f"ratios {statistics.median(ratios):.2f}")
    finally:
        for _, _, client in setups:
            stop_daemon(client)       # its pods removed, the daemon stopped, its dirs gone
        if net is not None:
            net.__exit__(None, None, None)
        registry.stop()


if __name__ == "__main__":
    main()
