"""Daemon CPU per container lifecycle, and churn while both CPUs are busy (issue 24).

Section `lifecycle`: three daemons side by side in one run — containerd 1.6.20, ctrappliance
interpreted (`--ours-bin`, the venv by default) and the Nuitka standalone build
(`--nuitka-bin`) — each driven by four workers looping the real `ctr run --rm busybox
/bin/true` for a fixed time, the targets taking turns (rotating order) for several rounds:

- idle machine: the daemon's own CPU time (utime + stime from /proc/<pid>/stat, not its
  children, the shims being Debian's binary for all three) divided by the lifecycles done,
  the containers/s, and the daemon's page faults per lifecycle;
- loaded machine: the same loops while two `sha256sum /dev/zero` processes (started and
  killed by pid here) keep both CPUs busy, containers/s: what a busy node gets.

Each ctrappliance build has its own rows; containerd's figures of the same rounds are its
column in both.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from . import images
from .daemons import CTR, ENV, REPO, Target
from .sections import Bench, ensure_small_image, run_opts

NUITKA = REPO / "build" / "nuitka-standalone" / "ctrappliance.dist" / "ctrappliance"
WORKERS = 4
SETTLE = 1.0  # s after a loop: background work of the last lifecycles is counted too
VARIANTS = ("venv", "nuitka")
METRICS = ("lifecycle_cpu", "lifecycle_rate", "lifecycle_faults", "churn_loaded",
           "churn_loaded_cpu")


def proc_counters(pid: int) -> dict:
    """CPU seconds and page faults of one process (not its children)."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return {"cpu_s": (int(stat[11]) + int(stat[12])) / ticks,
            "minflt": int(stat[7]), "majflt": int(stat[9])}


def run_loop(t: Target, seconds: float, tag: str, workers: int = WORKERS) -> dict:
    """`workers` threads each looping `ctr run --rm` for `seconds`; the daemon's counters."""
    ok, failures, errors = [0], [0], []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def worker(w: int):
        i = 0
        while time.monotonic() < deadline:
            argv = [CTR, "--address", t.address, "--namespace", "bench", "run", "--rm",
                    *run_opts(t), images.SMALL_REF, f"lc-{tag}-{w}-{i}", "/bin/true"]
            r = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=ENV)
            with lock:
                if r.returncode == 0:
                    ok[0] += 1
                else:
                    failures[0] += 1
                    errors.append((r.stderr or r.stdout).strip()[-200:])
            i += 1

    before, t0 = proc_counters(t.pid), time.monotonic()
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(workers)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.monotonic() - t0
    time.sleep(SETTLE)
    after = proc_counters(t.pid)
    return {"containers": ok[0], "failures": failures[0], "errors": errors[:3],
            "rate": ok[0] / elapsed,
            "cpu_s": after["cpu_s"] - before["cpu_s"],
            "faults": (after["minflt"] - before["minflt"]) + (after["majflt"] - before["majflt"]),
            "majflt": after["majflt"] - before["majflt"]}


def busy_cpus(count: int) -> list[subprocess.Popen]:
    """An unrelated CPU load: `count` × `sha256sum /dev/zero` (the caller kills them)."""
    return [subprocess.Popen(["sha256sum", "/dev/zero"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL) for _ in range(count)]


def stop_all(procs: list[subprocess.Popen]):
    for p in procs:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
        p.wait(10)


def _record(b: Bench, name: str, values):
    """(metric prefix, value) pairs of one loop of target `name`; containerd's figures go
    into the rows of both builds."""
    for prefix, value in values:
        if name == "containerd":
            for variant in VARIANTS:
                b.record(f"{prefix}_{variant}", "containerd", value)
        else:
            b.record(f"{prefix}_{name}", "ctrappliance", value)


def _rounds(b: Bench, targets: dict[str, Target], rounds: int, seconds: float, phase: str,
            record):
    """Rotate the order of the targets every round; record(name, result) per loop."""
    names = list(targets)
    for rep in range(rounds):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            r = run_loop(targets[name], seconds, f"{phase}{rep}-{name}")
            print(f"bench: lifecycle {phase} round {rep} {name}: {r['containers']} runs, "
                  f"{r['rate']:.1f}/s, cpu {r['cpu_s']:.2f}s, faults {r['faults']} "
                  f"({r['majflt']} major), {r['failures']} failures", file=sys.stderr)
            if r["failures"]:
                metric = "lifecycle_rate" if phase == "lifecycle" else "churn_loaded"
                kind = "containerd" if name == "containerd" else "ctrappliance"
                for variant in VARIANTS if name == "containerd" else [name]:
                    b.note(f"{metric}_{variant}", kind,
                           f"{r['failures']} failures: {r['errors'][0][:100]}")
            if r["containers"]:
                record(name, r)


def lifecycle(b: Bench, make_targets):
    seconds = b.reps(4, 15)
    rounds = b.reps(2, 5)
    targets: dict[str, Target] = {}
    for t in make_targets("lifecycle"):
        targets["containerd" if t.kind == "containerd" else "venv"] = t
    nuitka = Path(getattr(b, "nuitka_bin", None) or NUITKA)
    if nuitka.exists() and "venv" in targets:
        targets["nuitka"] = Target("ctrappliance", targets["venv"].workdir.parent / "nuitka",
                                   binary=str(nuitka))
    else:
        for metric in METRICS:
            b.status.setdefault(f"{metric}_nuitka", {})["ctrappliance"] = \
                f"n/a: no Nuitka build at {nuitka} (--nuitka-bin)"
    loads: list[subprocess.Popen] = []
    try:
        for t in targets.values():
            t.start()
            ensure_small_image(t)
        time.sleep(2.0)  # past the post-boot page-out (appliance/process/memory.py)
        for name, t in targets.items():  # warm-up: lazily imported code, first shim
            run_loop(t, 0.1, f"warm-{name}", workers=1)

        def idle(name, r):
            _record(b, name, (("lifecycle_cpu", 1000 * r["cpu_s"] / r["containers"]),
                              ("lifecycle_rate", r["rate"]),
                              ("lifecycle_faults", r["faults"] / r["containers"])))

        def loaded(name, r):
            _record(b, name, (("churn_loaded", r["rate"]),
                              ("churn_loaded_cpu", 1000 * r["cpu_s"] / r["containers"])))

        _rounds(b, targets, rounds, seconds, "lifecycle", idle)
        loads = busy_cpus(2)
        print(f"bench: lifecycle load pids {[p.pid for p in loads]}", file=sys.stderr)
        _rounds(b, targets, rounds, seconds, "churn_loaded", loaded)
    finally:
        stop_all(loads)
        for t in targets.values():
            t.cleanup()
