"""The workload, one function per section; each runs the same steps on every target.

Repetitions alternate the order of the targets (A B, B A, …) so drift cancels.
A target that fails a step is not retried in that section: its rows say
"n/a (not implemented yet)" when the daemon answered UNIMPLEMENTED, else the error.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import images
from .daemons import CTR, ENV, REPO, CtrError, Target

NOT_IMPLEMENTED = re.compile(r"Unimplemented|unknown service|unknown method|not implemented", re.I)
NA = "n/a (not implemented yet)"


class NotYet(Exception):
    """A capability this target lacks (so far)."""


class Bench:
    def __init__(self, targets: list[Target], quick: bool, out: Path):
        self.targets = targets
        self.quick = quick
        self.out = out
        self.values: dict[str, dict[str, list]] = {}
        self.status: dict[str, dict[str, str]] = {}
        self.notes: dict[str, dict[str, str]] = {}
        self.given_up: set = set()

    def reps(self, quick: int, full: int) -> int:
        return quick if self.quick else full

    def order(self, rep: int) -> list[Target]:
        return self.targets if rep % 2 == 0 else list(reversed(self.targets))

    def record(self, metric: str, kind: str, value):
        self.values.setdefault(metric, {}).setdefault(kind, []).append(value)

    def note(self, metric: str, kind: str, text: str):
        self.notes.setdefault(metric, {})[kind] = text

    def failed(self, metrics, kind: str) -> bool:
        return (tuple(metrics), kind) in self.given_up

    def fail(self, metrics, kind: str, exc: BaseException):
        """Give up on these metrics for this target; rows already measured keep their values."""
        self.given_up.add((tuple(metrics), kind))
        text = str(exc).strip()
        status = NA if isinstance(exc, NotYet) or NOT_IMPLEMENTED.search(text) else \
            "failed: " + text.splitlines()[-1][:160] if text else f"failed: {exc!r}"
        for metric in metrics:
            if not self.values.get(metric, {}).get(kind):
                self.status.setdefault(metric, {})[kind] = status
        print(f"bench: {kind}: {', '.join(metrics)}: {status}", file=sys.stderr)

    def each(self, rep: int, metrics: list[str], step):
        """Run `step(target)` on every target still in the running for these metrics."""
        for target in self.order(rep):
            if self.failed(metrics, target.kind):
                continue
            try:
                step(target)
            except Exception as exc:
                self.fail(metrics, target.kind, exc)


def timed(fn, *args, **kwargs) -> float:
    t0 = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - t0


def python_tool(module: str, *args, timeout=900) -> dict:
    """Run one of our client tools (own process, stubs) and parse its JSON output."""
    result = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                            timeout=timeout, cwd=REPO, env=ENV)
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f"{module} {' '.join(args)}: exit {result.returncode}: "
                           f"{(result.stdout + result.stderr).strip()[-400:]}") from None


# --- sections on running daemons -----------------------------------------------------

def version(b: Bench):
    for rep in range(b.reps(10, 20)):
        def step(t: Target):
            b.record("ctr_version", t.name, 1000 * timed(t.ctr, "version"))
            b.record("ctr_containers_ls", t.name, 1000 * timed(t.ctr, "containers", "ls"))
            b.record("ctr_client_only", t.name,
                     1000 * timed(subprocess.run, [CTR, "--version"], capture_output=True, check=True))
        b.each(rep, ["ctr_version", "ctr_containers_ls", "ctr_client_only"], step)


def parallel(b: Bench, calls=200, jobs=8):
    for rep in range(b.reps(1, 3)):
        for metric, args in (("par_version", ("version",)), ("par_containers", ("containers", "ls"))):
            def step(t: Target):
                with ThreadPoolExecutor(jobs) as pool:
                    t0 = time.perf_counter()
                    results = list(pool.map(lambda _: t.ctr(*args, check=False).returncode,
                                            range(calls)))
                    took = time.perf_counter() - t0
                failures = sum(1 for rc in results if rc)
                if failures:
                    b.note(metric, t.name, f"{failures} failed calls")
                b.record(metric, t.name, calls / took)
            b.each(rep, [metric], step)


def grpc(b: Bench):
    count = b.reps(500, 2000)
    for rep in range(b.reps(1, 3)):
        def step(t: Target):
            for rpc in ("version", "containers"):
                r = python_tool("bench.grpcprobe", "-a", t.address, "latency", "--rpc", rpc,
                                "-c", str(count))
                if "error" in r:
                    raise RuntimeError(r["error"])
                b.record(f"grpc_{rpc}_p50", t.name, r["p50_ms"])
                b.record(f"grpc_{rpc}_p99", t.name, r["p99_ms"])
            r = python_tool("bench.grpcprobe", "-a", t.address, "throughput", "--rpc", "version",
                            "-c", str(count * 2), "-j", "8")
            if "error" in r:
                raise RuntimeError(r["error"])
            b.record("grpc_version_tput", t.name, r["calls_per_s"])
        b.each(rep, ["grpc_version_p50", "grpc_version_p99", "grpc_containers_p50",
                     "grpc_containers_p99", "grpc_version_tput"], step)


def ingest(b: Bench):
    path, base = images.random_blob()
    size = path.stat().st_size + 32
    for rep in range(b.reps(1, 3)):
        def step(t: Target):
            # a different blob every time: re-ingesting a digest right after `content rm`
            # races containerd's asynchronous GC (its writer answers "already exists", then
            # GC deletes the blob)
            trailer = f"{t.name} {rep} {time.time_ns()}".ljust(32)[:32]
            digest = base.copy()
            digest.update(trailer.encode())
            digest = "sha256:" + digest.hexdigest()
            cmd = (f'{{ cat "$0"; printf %s "$1"; }} | {CTR} --address {t.address} -n bench '
                   f'content ingest --expected-size {size} --expected-digest {digest} bench-ingest-{rep}')
            t0 = time.perf_counter()
            r = subprocess.run(["bash", "-c", cmd, str(path), trailer], capture_output=True,
                               text=True, timeout=300, env=ENV)
            took = time.perf_counter() - t0
            if r.returncode:
                raise RuntimeError(r.stderr.strip() or r.stdout.strip())
            if digest not in t.ctr("content", "ls", "-q").stdout.split():
                raise RuntimeError("ingested blob is not listed by content ls")
            b.record("ingest", t.name, size / 2**20 / took)
            b.record("content_rm", t.name, 1000 * timed(t.ctr, "content", "rm", digest))
        b.each(rep, ["ingest", "content_rm"], step)


def _count(t: Target, *args) -> int:
    return len([l for l in t.ctr(*args).stdout.splitlines()[1:] if l.strip()])


def _import_big(b: Bench, metric: str, rm_metric: str | None, reps: int):
    big = images.image("big")
    for rep in range(reps):
        def step(t: Target):
            b.record(metric, t.name, timed(t.ctr, "images", "import", big["path"]))
            if rm_metric:
                b.record(rm_metric, t.name, 1000 * timed(t.ctr, "images", "rm", "--sync", images.BIG_REF))
            else:
                t.ctr("images", "rm", "--sync", images.BIG_REF)
        b.each(rep, [metric] + ([rm_metric] if rm_metric else []), step)


def import_(b: Bench):
    small = images.image("small")
    for rep in range(b.reps(2, 5)):
        def step(t: Target):
            b.record("import_small", t.name, timed(t.ctr, "images", "import", small["path"]))
            b.record("rm_small", t.name, 1000 * timed(t.ctr, "images", "rm", "--sync", images.SMALL_REF))
        b.each(rep, ["import_small", "rm_small"], step)
    _import_big(b, "import_big", "rm_big", b.reps(1, 3))
    for t in b.targets:  # nothing may be left after rm --sync
        if b.values.get("import_big", {}).get(t.name):
            left = _count(t, "snapshots", "ls"), len(t.ctr("content", "ls", "-q").stdout.split())
            if left != (0, 0):
                b.note("rm_big", t.name, f"left after rm --sync: {left[0]} snapshots, {left[1]} blobs")


def unpack(b: Bench, nounpack_metric="import_nounpack", metric="unpack"):
    big = images.image("big")
    for rep in range(b.reps(1, 3)):
        def step(t: Target):
            b.record(nounpack_metric, t.name,
                     timed(t.ctr, "images", "import", "--no-unpack", big["path"]))
            took = timed(t.ctr, "snapshots", "unpack", big["manifest_digest"])
            b.record(metric, t.name, big["uncompressed_mib"] / took)
            t.ctr("images", "rm", "--sync", images.BIG_REF)
        b.each(rep, [nounpack_metric, metric], step)


def ensure_small_image(t: Target):
    if images.SMALL_REF in t.ctr("images", "ls", "-q", check=False).stdout.split():
        return
    try:
        t.ctr("images", "import", images.image("small")["path"])
    except CtrError as exc:
        raise NotYet(str(exc)) if NOT_IMPLEMENTED.search(str(exc)) else exc


def run_opts(t: Target) -> list[str]:
    return ["--runc-root", str(t.workdir / "runc"), "--fifo-dir", str(t.workdir / "fifo")]


def run(b: Bench):
    for rep in range(b.reps(3, 10)):
        def step(t: Target):
            ensure_small_image(t)
            # one id per target: runc's cgroup /bench/<id> is shared by both daemons, and a
            # daemon still deleting its task's cgroup must not remove the other's new one
            b.record("run", t.name, 1000 * timed(
                t.ctr, "run", "--rm", *run_opts(t), images.SMALL_REF, f"bench-true-{t.name}-{rep}",
                "/bin/true"))
        b.each(rep, ["run"], step)


def stress_args(t: Target) -> list[str]:
    return ["-a", t.address, "-n", "bench", "-i", images.SMALL_REF, "--json",
            "--runc-root", str(t.workdir / "runc")]


def churn(b: Bench):
    seconds = b.reps(10, 30)

    def step(t: Target):
        ensure_small_image(t)
        r = python_tool("appliance.tools.stress", *stress_args(t), "-c", "4", "-d", str(seconds))
        if r["containers"] == 0 and r["failures"]:
            raise RuntimeError(next(iter(r["errors"])))
        b.record("churn", t.name, r["containers_per_s"])
        if r["failures"]:
            b.note("churn", t.name, f"{r['failures']} failures: {next(iter(r['errors']))[:120]}")
    for rep in range(b.reps(1, 3)):
        b.each(rep, ["churn"], step)


def density(b: Bench):
    count = b.reps(5, 20)

    def step(t: Target):
        ensure_small_image(t)
        r = python_tool("appliance.tools.stress", *stress_args(t), "density", "--count", str(count))
        if r["running"] == 0:
            raise RuntimeError(next(iter(r["errors"]), "no container started"))
        b.record("density_pss", t.name, r["shim_pss_mib_per_container"])
        b.record("density_rss", t.name, r["shim_rss_mib_per_container"])
    b.each(0, ["density_pss", "density_rss"], step)


WORKLOAD = {"version": version, "parallel": parallel, "grpc": grpc, "ingest": ingest,
            "import": import_, "unpack": unpack, "run": run, "churn": churn, "density": density}


# --- sections that start their own daemons ---------------------------------------------

def boot(b: Bench, make_targets):
    """Repeated start → `ctr version` → 2 s idle → RSS → stop, alternating the targets."""
    for rep in range(b.reps(3, 7)):
        def step(t: Target):
            try:
                timings = t.start()
                time.sleep(2.0)
                memory = t.memory()
            finally:
                stopped = t.stop()
            b.record("boot_socket", t.name, 1000 * timings["spawn_to_socket"])
            b.record("boot_version", t.name, 1000 * timings["spawn_to_version"])
            if timings["booted_in"] is not None:
                b.record("boot_logged", t.name, 1000 * timings["booted_in"])
            b.record("idle_rss", t.name, memory["rss_mib"])
            b.record("idle_threads", t.name, memory["threads"])
            if stopped is not None:
                b.record("stop", t.name, 1000 * stopped)
        saved, b.targets = b.targets, make_targets(f"boot-{rep}")
        try:
            b.each(rep, ["boot_version", "boot_socket", "idle_rss"], step)
        finally:
            for t in b.targets:
                t.cleanup()
            b.targets = saved


def _on_fresh_root(b: Bench, make_targets, root_fs: str, workload):
    saved, b.targets = b.targets, make_targets(root_fs, root_fs=root_fs)
    try:
        for t in b.targets:
            t.start()
        workload()
    finally:
        for t in b.targets:
            t.cleanup()
        b.targets = saved


def import_tmpfs(b: Bench, make_targets):
    """Big import with each daemon's root on a fresh tmpfs (takes disk noise out)."""
    _on_fresh_root(b, make_targets, "tmpfs",
                   lambda: _import_big(b, "import_big_tmpfs", None, b.reps(1, 3)))


def import_ext4(b: Bench, make_targets):
    """Big import and unpack with each daemon's root on a fresh ext4 with mkfs's defaults
    (the host's ext4 here runs without a journal, which changes how inodes are allocated)."""
    def workload():
        _import_big(b, "import_big_ext4j", None, b.reps(1, 3))
        unpack(b, "import_nounpack_ext4j", "unpack_ext4j")
    _on_fresh_root(b, make_targets, "ext4", workload)


def rapid_reset(b: Bench, make_targets):
    """HTTP/2 rapid reset (HEADERS + RST_STREAM, CVE-2023-44487) on fresh daemons, one at a
    time, while another client calls Version: its latency and the daemon's CPU."""
    resets = b.reps(20_000, 100_000)
    saved, b.targets = b.targets, make_targets("rapid-reset")
    metrics = ["rr_victim_p99", "rr_victim_max", "rr_cpu"]
    try:
        for t in b.targets:
            t.start()
        for rep in range(b.reps(1, 3)):
            def step(t: Target):
                r = python_tool("bench.rapidreset", "-a", t.address, "-c", str(resets),
                                "--pid", str(t.pid))
                b.record("rr_victim_p99", t.name, r["victim_p99_ms"])
                b.record("rr_victim_max", t.name, r["victim_max_ms"])
                b.record("rr_cpu", t.name, r["cpu_s"])
                b.note("rr_cpu", t.name, f"{r['connections']} connections, GOAWAY codes "
                       f"{r['goaways'] or 'none'}, victim errors {r['victim_errors']}")
            b.each(rep, metrics, step)
    finally:
        for t in b.targets:
            t.cleanup()
        b.targets = saved


SETTLE_SECONDS = 10.0


def many_entries(b: Bench, make_targets):
    """Memory for a layer of 300,000 entries: fresh daemons, one import each (in turn, so
    they do not share the disk), peak RSS (VmHWM) and RSS 10 s after the import."""
    many = images.image("many")

    def step(t: Target):
        t.ctr("images", "import", many["path"], timeout=1800)
        peak = t.memory()["hwm_mib"]
        time.sleep(SETTLE_SECONDS)
        b.record("many_peak", t.name, peak)
        b.record("many_settled", t.name, t.memory()["rss_mib"])

    saved, b.targets = b.targets, make_targets("many")
    try:
        for t in b.targets:
            t.start()
        b.each(0, ["many_peak", "many_settled"], step)
    finally:
        for t in b.targets:
            t.cleanup()
        b.targets = saved


def cri_pull(b: Bench, make_targets):
    """PullImage through each daemon's CRI from a loopback registry (bench/cri_pull.py)."""
    from .cri_pull import cri_pull as run
    run(b, make_targets)


def lifecycle(b: Bench, make_targets):
    """Daemon CPU per `ctr run --rm`, idle and with both CPUs busy (bench/lifecycle.py)."""
    from .lifecycle import lifecycle as run
    run(b, make_targets)


def cri_pods(b: Bench, make_targets):
    """Pod start, kubelet's relist load and RSS with pods, through each daemon's CRI
    (bench/cri_pods.py)."""
    from .cri_pods import cri_pods as run
    run(b, make_targets)


STANDALONE_ROOTS = {"import_tmpfs": import_tmpfs, "import_ext4": import_ext4,
                    "many_entries": many_entries, "cri_pull": cri_pull, "cri_pods": cri_pods}
STANDALONE = {"boot": boot, **STANDALONE_ROOTS, "rapid_reset": rapid_reset, "lifecycle": lifecycle}
ALL_SECTIONS = ["boot", *WORKLOAD, *STANDALONE_ROOTS, "rapid_reset", "lifecycle"]
