"""What a daemon's store must look like after a crash and a restart: the API's lists agree
with the disk, and no task that is not running leaves a process, runc state, cgroup, bundle,
shim or mount behind."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

from runtime_helpers import CGROUP_ROOT, mounts_under, shim_pids

CONTENT = "io.containerd.content.v1.content"
SNAPSHOTTERS = ("overlayfs", "native")


def namespaces(d) -> list[str]:
    return d.ctr("namespaces", "ls", "-q").stdout.split()


def _lines(d, ns, *args) -> list[str]:
    return d.ctr(*args, namespace=ns).stdout.splitlines()


def runc_ids(runc_root: Path) -> list[str]:
    """Containers in a private runc root (`runc list` reads the same directories)."""
    if not runc_root.exists():
        return []
    out = subprocess.run(["runc", "--root", str(runc_root), "list", "-q"], capture_output=True,
                         text=True, env=dict(os.environ, PATH="/usr/sbin:/usr/bin:/sbin:/bin"))
    return sorted(out.stdout.split()) + sorted(
        f"dir:{p.name}" for p in runc_root.iterdir() if not (p / "state.json").exists())


def runc_processes(ns: str, but=()) -> list[int]:
    """`runc init` (or runc) processes in a /<ns>/<id> cgroup, but those of tasks `but`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            cgroups = Path(f"/proc/{pid}/cgroup").read_text()
        except OSError:
            continue
        if not argv or os.path.basename(argv[0]) != b"runc" or f"/{ns}/" not in cgroups:
            continue
        task = cgroups.split(f"/{ns}/", 1)[1].split("\n", 1)[0].split("/")[0]
        if task not in but:
            found.append(int(pid))
    return found


def task_cgroups(ns: str) -> list[str]:
    """Every /<ns>/<id> cgroup directory, in every hierarchy."""
    found = []
    for name in os.listdir(CGROUP_ROOT):
        base = Path(CGROUP_ROOT, name, ns)
        if not os.path.islink(os.path.join(CGROUP_ROOT, name)) and base.is_dir():
            found += [f"{name}/{ns}/{p.name}" for p in base.iterdir() if p.is_dir()]
    return sorted(found)


def cgroup_processes(ns: str) -> list[int]:
    """Processes in the namespace's task cgroups (the pids hierarchy): for test cleanup."""
    base = Path(CGROUP_ROOT, "pids", ns)
    if not base.is_dir():
        return []
    return [int(pid) for procs in base.glob("*/cgroup.procs") for pid in procs.read_text().split()]


def tasks(d, ns) -> list[str]:
    return sorted(_lines(d, ns, "tasks", "ls", "-q"))


def problems(d, runc_root: Path | None = None) -> list[str]:
    """Disagreements between what the daemon lists and what is on disk (empty: consistent)."""
    found = []
    root = Path(d.root)
    blobs_dir = root / CONTENT / "blobs" / "sha256"
    blobs = {f"sha256:{p.name}" for p in blobs_dir.iterdir()} if blobs_dir.exists() else set()
    rows, ingest_dirs_known = set(), set()
    live_tasks = {}
    for ns in namespaces(d):
        digests = set(_lines(d, ns, "content", "ls", "-q"))
        rows |= digests
        for digest in digests - blobs:
            found.append(f"content {ns}/{digest} listed, its blob missing")
        for line in _lines(d, ns, "content", "active")[1:]:
            ref = line.split()[0]
            ingest_dirs_known.add(hashlib.sha256(f"{ns}/1/{ref}".encode()).hexdigest())
        live_tasks[ns] = tasks(d, ns)
        containers = set(_lines(d, ns, "containers", "ls", "-q"))
        for t in set(live_tasks[ns]) - containers:
            found.append(f"task {ns}/{t} without a container")
    for blob in sorted(blobs - rows):
        found.append(f"blob {blob} on disk, in no namespace")
    ingest_root = root / CONTENT / "ingest"
    for p in sorted(ingest_root.iterdir()) if ingest_root.exists() else []:
        ref = (p / "ref").read_text() if (p / "ref").exists() else "?"
        if p.name not in ingest_dirs_known:
            found.append(f"ingest dir {p.name} ({ref}) not listed")
    found += snapshot_problems(d)
    found += runtime_problems(d, live_tasks, runc_root)
    tmpmounts = root / "tmpmounts"
    if tmpmounts.exists() and os.listdir(tmpmounts):
        found.append(f"tmpmounts left: {os.listdir(tmpmounts)}")
    return found


def snapshot_problems(d) -> list[str]:
    """Each snapshotter's directories are exactly its listed snapshots (ids, no leftovers)."""
    found = []
    for sn in SNAPSHOTTERS:
        listed = sum(len(_lines(d, ns, "snapshots", "--snapshotter", sn, "ls")[1:])
                     for ns in namespaces(d))
        sdir = Path(d.root) / f"io.containerd.snapshotter.v1.{sn}" / "snapshots"
        names = os.listdir(sdir) if sdir.exists() else []
        if [n for n in names if not n.isdigit()] or len(names) != listed:
            found.append(f"{sn}: {listed} snapshots listed, on disk {sorted(names)}")
    return found


def runtime_problems(d, live_tasks: dict[str, list[str]], runc_root: Path | None) -> list[str]:
    found = []
    state = Path(d.state) / "io.containerd.runtime.v2.task"
    for ns_dir in sorted(state.iterdir()) if state.exists() else []:
        extra = sorted(set(os.listdir(ns_dir)) - set(live_tasks.get(ns_dir.name, [])))
        if extra:
            found.append(f"bundles {ns_dir.name}: {extra} without a task")
    work = Path(d.root) / "io.containerd.runtime.v2.task"
    for ns_dir in sorted(work.iterdir()) if work.exists() else []:
        extra = sorted(set(os.listdir(ns_dir)) - set(live_tasks.get(ns_dir.name, [])))
        if extra:
            found.append(f"work dirs {ns_dir.name}: {extra} without a task")
    count = sum(len(v) for v in live_tasks.values())
    if len(shim_pids(d.address)) != count:
        found.append(f"{len(shim_pids(d.address))} shims for {count} tasks")
    live_mounts = {str(state / ns / t / "rootfs") for ns, ts in live_tasks.items() for t in ts}
    for m in mounts_under(d.workdir):
        if m not in live_mounts:
            found.append(f"mount {m} of no task")
    for ns, ts in live_tasks.items():
        cgroups = [c for c in task_cgroups(ns) if c.rsplit("/", 1)[1] not in ts]
        if cgroups:
            found.append(f"cgroups of no task: {cgroups}")
        procs = runc_processes(ns, but=ts)
        if procs:
            found.append(f"runc processes in {ns}: {procs}")
        if runc_root is not None:
            extra = sorted(set(runc_ids(runc_root / ns)) - set(ts))
            if extra:
                found.append(f"runc state {ns}: {extra} without a task")
    return found


def missing_blobs(d) -> list[str]:
    """Content that is listed but whose blob is gone: data lost, not garbage left."""
    blobs_dir = Path(d.root) / CONTENT / "blobs" / "sha256"
    return [f"content {ns}/{digest} listed, its blob missing"
            for ns in namespaces(d) for digest in _lines(d, ns, "content", "ls", "-q")
            if not (blobs_dir / digest.split(":")[1]).exists()]


def collect_garbage(d, ns: str) -> None:
    """One synchronous garbage collection (`ctr leases rm --sync` runs one)."""
    lease = d.ctr("leases", "create", namespace=ns).stdout.split()[0]
    d.ctr("leases", "rm", "--sync", lease, namespace=ns)


def assert_consistent(d, runc_root: Path | None = None, timeout=20.0) -> None:
    """Poll until consistent (the trash drain and shim teardowns end just after a call)."""
    deadline = time.monotonic() + timeout
    while True:
        found = problems(d, runc_root)
        if not found or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not found, "\n".join(found) + "\n" + json.dumps(found)
