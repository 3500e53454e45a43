"""bench/RESULTS.md (side-by-side table with ratios and targets) and bench/results.json."""
from __future__ import annotations

import json
import operator
import os
import platform
import subprocess
from pathlib import Path

from .daemons import REPO
from .stats import summary

# id, label, unit, target (op, ratio) on ctrappliance median / containerd median
METRICS = [
    ("boot_version", "boot: spawn → first `ctr version` ok", "ms", ("≤", 0.8)),
    ("boot_socket", "boot: spawn → socket accepts", "ms", None),
    ("boot_logged", "boot: daemon's own \"successfully booted in\"", "ms", None),
    ("stop", "stop: SIGTERM → exit", "ms", None),
    ("idle_rss", "idle RSS 2 s after boot (VmRSS)", "MiB", ("≤", 1.2)),
    ("idle_threads", "idle threads", "", None),
    ("ctr_version", "`ctr version`", "ms", ("≤", 1.05)),
    ("ctr_containers_ls", "`ctr containers ls`", "ms", None),
    ("ctr_client_only", "`ctr --version` (client only, no RPC)", "ms", None),
    ("par_version", "200× `ctr version`, 8-way", "calls/s", None),
    ("par_containers", "200× `ctr containers ls`, 8-way", "calls/s", None),
    ("grpc_version_p50", "in-process gRPC Version p50", "ms", ("≤", 1.6)),
    ("grpc_version_p99", "in-process gRPC Version p99", "ms", None),
    ("grpc_containers_p50", "in-process gRPC Containers.List p50", "ms", None),
    ("grpc_containers_p99", "in-process gRPC Containers.List p99", "ms", None),
    ("grpc_version_tput", "in-process gRPC Version, 8 threads, 1 channel", "calls/s", None),
    ("rr_victim_p99", "rapid reset (100k HEADERS+RST_STREAM): another client's Version p99",
     "ms", None),
    ("rr_victim_max", "rapid reset: another client's slowest Version", "ms", None),
    ("rr_cpu", "rapid reset: daemon CPU seconds", "s", None),
    ("ingest", "`ctr content ingest` 512 MiB", "MiB/s", ("≥", 1.3)),
    ("content_rm", "`ctr content rm`", "ms", None),
    ("import_small", "`ctr images import` small (1 MB)", "s", None),
    ("rm_small", "`ctr images rm --sync` small", "ms", None),
    ("import_big", "`ctr images import` big (182 MB, 18k files), ext4", "s", ("≤", 0.6)),
    ("rm_big", "`ctr images rm --sync` big", "ms", None),
    ("import_big_tmpfs", "`ctr images import` big, root on tmpfs", "s", ("≤", 0.6)),
    ("import_nounpack", "`ctr images import --no-unpack` big", "s", None),
    ("unpack", "`ctr snapshots unpack` big (uncompressed)", "MiB/s", ("≥", 1.7)),
    ("import_big_ext4j", "`ctr images import` big, root on a fresh ext4 (journal, loop)", "s", ("≤", 0.6)),
    ("import_nounpack_ext4j", "`ctr images import --no-unpack` big, fresh ext4", "s", None),
    ("unpack_ext4j", "`ctr snapshots unpack` big, fresh ext4", "MiB/s", ("≥", 1.7)),
    ("cri_pull_big", "CRI PullImage big (3 layers, 18k files), loopback registry, fresh ext4",
     "s", ("≤", 0.5)),
    ("cri_pull_layers", "CRI PullImage 6 layers (1500 files), loopback registry, fresh ext4",
     "s", ("≤", 0.5)),
    ("cri_pull_shared", "2 CRI PullImage at once (big + 6 layers, shared base)", "s",
     ("≤", 0.6)),
    ("cri_pod_start", "CRI pod start: RunPodSandbox → CreateContainer → StartContainer → "
     "RUNNING, 20 pods in turn", "ms", ("≤", 0.8)),
    ("cri_pleg_cpu", "CRI PLEG load, 30 pods: daemon CPU over 60 relists (1/s)", "s",
     ("≤", 0.7)),
    ("cri_pleg_list_p99", "CRI PLEG load: ListPodSandbox / ListContainers p99", "ms",
     ("≤", 1.0)),
    ("cri_pleg_relist_p50", "CRI PLEG load: whole relist (lists + 30 ContainerStatus) p50",
     "ms", None),
    ("cri_pods_rss", "CRI: daemon RSS with 30 pods running (VmRSS)", "MiB", ("≤", 1.0)),
    ("many_peak", "peak RSS importing a 300,000-entry layer (VmHWM)", "MiB", None),
    ("many_settled", "RSS 10 s after that import", "MiB", ("≤", 1.0)),
    ("run", "`ctr run --rm busybox /bin/true`", "ms", ("≤", 0.9)),
    ("churn", "churn: stress c=4 (create→start→wait→delete)", "containers/s", ("≥", 1.0)),
    ("density_pss", "density: shim PSS per running container", "MiB", None),
    ("density_rss", "density: shim RSS per running container", "MiB", None),
    ("rss_after", "RSS after the workload (VmRSS)", "MiB", ("≤", 1.0)),
    ("hwm_after", "peak RSS over the workload (VmHWM)", "MiB", None),
    ("cpu_workload", "daemon CPU seconds over the workload", "s", None),
    # section lifecycle (bench/lifecycle.py): 4 workers looping `ctr run --rm`
    ("lifecycle_cpu_venv", "daemon CPU per container lifecycle (`ctr run --rm`, 4 workers), venv",
     "ms", ("≤", 0.9)),
    ("lifecycle_cpu_nuitka", "daemon CPU per container lifecycle, Nuitka standalone", "ms",
     ("≤", 0.9)),
    ("lifecycle_rate_venv", "`ctr run --rm`, 4 workers, venv", "containers/s", None),
    ("lifecycle_rate_nuitka", "`ctr run --rm`, 4 workers, Nuitka standalone", "containers/s",
     None),
    ("lifecycle_faults_venv", "daemon page faults per lifecycle, venv", "", None),
    ("lifecycle_faults_nuitka", "daemon page faults per lifecycle, Nuitka standalone", "", None),
    ("churn_loaded_venv", "churn, both CPUs busy (2× `sha256sum /dev/zero`), venv",
     "containers/s", ("≥", 1.1)),
    ("churn_loaded_nuitka", "churn, both CPUs busy, Nuitka standalone", "containers/s",
     ("≥", 1.1)),
    ("churn_loaded_cpu_venv", "daemon CPU per lifecycle, both CPUs busy, venv", "ms", None),
    ("churn_loaded_cpu_nuitka", "daemon CPU per lifecycle, both CPUs busy, Nuitka standalone",
     "ms", None),
]
OPS = {"≤": operator.le, "≥": operator.ge}
KINDS = ("containerd", "ctrappliance")


def machine() -> dict:
    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = 0
    with open("/proc/meminfo") as f:
        mem = int(f.readline().split()[1]) / 2**20
    return {"kernel": platform.release(), "cpus": os.cpu_count(), "cpu": cpu,
            "mem_gib": round(mem, 1), "python": platform.python_version(),
            "root_fs": _fs_type("/tmp")}


def _fs_type(path: str) -> str:
    best = ("", "")
    with open("/proc/self/mounts") as f:
        for line in f:
            _, point, fstype, *_ = line.split()
            if path.startswith(point) and len(point) > len(best[0]):
                best = (point, fstype)
    return best[1]


def revision() -> str:
    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()
    rev = git("rev-parse", "--short", "HEAD")
    return rev + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def versions() -> dict:
    def first(cmd):
        r = subprocess.run(cmd, capture_output=True, text=True)
        return (r.stdout or r.stderr).strip().splitlines()[0] if (r.stdout or r.stderr) else ""
    return {"containerd": first(["containerd", "--version"]), "ctr": first(["ctr", "--version"]),
            "runc": first(["runc", "--version"])}


def columns(targets) -> list[str]:
    """The table's columns: containerd and ctrappliance, then any other named target."""
    return list(dict.fromkeys([*KINDS, *targets]))


def rows(bench, targets=KINDS) -> list[dict]:
    """Per metric, each column's summary; ratio = the last target's median ÷ the first's
    (ctrappliance ÷ containerd by default; `--targets old=DIR,ctrappliance`: new ÷ old)."""
    out = []
    for metric, label, unit, target in METRICS:
        row = {"metric": metric, "label": label, "unit": unit, "target": target}
        for kind in columns(targets):
            row[kind] = summary(bench.values.get(metric, {}).get(kind, []))
            row[kind + "_status"] = bench.status.get(metric, {}).get(kind)
            row[kind + "_note"] = bench.notes.get(metric, {}).get(kind)
        theirs, ours = row[targets[0]], row[targets[-1]]
        row["ratio"] = (ours["median"] / theirs["median"]
                        if len(targets) > 1 and ours and theirs and theirs["median"] else None)
        row["meets_target"] = (OPS[target[0]](row["ratio"], target[1])   # against containerd
                               if target and row["ratio"] is not None
                               and targets[0] == "containerd" else None)
        out.append(row)
    return out


def _cell(row, kind) -> str:
    s, status, note = row.get(kind), row.get(kind + "_status"), row.get(kind + "_note")
    if not s:
        return status or "—"
    fmt = _fmt(s["median"])
    text = f"**{fmt(s['median'])}**" if s["n"] == 1 else \
        f"{fmt(s['min'])} / **{fmt(s['median'])}** / {fmt(s['max'])}"
    for extra in (status, note):
        if extra:
            text += f" ({extra})"
    return text


def _fmt(value):
    if value >= 100:
        return lambda v: f"{v:.0f}"
    if value >= 10:
        return lambda v: f"{v:.1f}"
    if value >= 1:
        return lambda v: f"{v:.2f}"
    return lambda v: f"{v:.3f}"


def write(bench, info: dict, json_path: Path, md_path: Path, profiles: dict):
    table = rows(bench, info["targets"])
    data = {"info": info, "rows": table, "profiles": profiles}
    json_path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    md_path.write_text(render(data, notes=NOTES if md_path.name == "RESULTS.md" else None))
    return table


NOTES = Path(__file__).resolve().parent / "NOTES.md"


def render(data: dict, notes: Path | None = NOTES) -> str:
    """The Markdown page; the hand-written analysis in bench/NOTES.md (if any) follows the table."""
    info, table, profiles = data["info"], data["rows"], data["profiles"]
    # containerd and ctrappliance always; with other checkouts, the targets run
    shown = list(KINDS) if set(info["targets"]) <= set(KINDS) else list(info["targets"])
    base, compared = info["targets"][0], info["targets"][-1]
    lines = [
        "# ctrappliance vs containerd 1.6.20, side by side"
        + ("" if info["ctrappliance_bin"].endswith("/.venv/bin/ctrappliance")
           else " (compiled ctrappliance)"),
        "",
        f"Generated by `./scripts/dev bench {' '.join(info['argv'])}` on {info['date']} "
        f"(git {info['revision']}); both daemons ran the same workload in the same run, "
        f"repetitions interleaved. Figures are min / **median** / max; ratio = {compared} median ÷ "
        f"{base} median (for calls/s, MiB/s and containers/s higher is better, so the target is ≥).",
        "",
        f"Machine: {info['machine']['cpus']} CPU ({info['machine']['cpu']}), "
        f"{info['machine']['mem_gib']} GiB RAM, kernel {info['machine']['kernel']}, "
        f"work dirs on {info['machine']['root_fs']}, Python {info['machine']['python']}. "
        f"Load average at start {info['load_start']}, at end {info['load_end']} "
        "(the machine is shared with other engineers' test runs: expect ±10% on CPU-bound rows "
        "and more on disk-bound ones).",
        "",
        f"containerd: `{info['versions']['containerd']}` (CRI disabled, except in sections "
        f"cri_pull and cri_pods); "
        f"ctr: `{info['versions']['ctr']}`; ctrappliance: `{info['ctrappliance_bin']}`"
        + "".join(f"; {name}: `{path}`" for name, path in info.get("checkouts", {}).items())
        + ". "
        f"Sections: {', '.join(info['sections'])}; {'quick' if info['quick'] else 'full'} run, "
        f"{info['seconds']:.0f} s.",
        "",
        f"| measurement | unit | {' | '.join(shown)} | ratio | target |",
        "| --- | --- | " + "--- | " * len(shown) + "--- | --- |",
    ]
    for row in table:
        if not any(row.get(k) or row.get(k + "_status") for k in shown):
            continue
        ratio = f"{row['ratio']:.2f}×" if row["ratio"] is not None else "—"
        target = ""
        if row["target"] and base == "containerd":
            mark = {True: " ✓", False: " ✗", None: ""}[row["meets_target"]]
            target = f"{row['target'][0]} {row['target'][1]}×{mark}"
        cells = " | ".join(_cell(row, k) for k in shown)
        lines.append(f"| {row['label']} | {row['unit']} | {cells} | {ratio} | {target} |")
    missing = [r["label"] for r in table if r["target"] and r["meets_target"] is None]
    if missing and base == "containerd":
        lines += ["", "Target rows without a ratio yet: " + "; ".join(missing) + "."]
    if profiles:
        lines += ["", "Profiles (under `bench/out/`): " +
                  ", ".join(f"{k}: `{Path(v).name}`" for k, v in profiles.items()) + "."]
    text = "\n".join(lines) + "\n"
    if notes and notes.exists():
        text += "\n" + notes.read_text()
    return text


def main():
    """python -m bench.report [results.json [RESULTS.md]]: re-render after editing NOTES.md."""
    import sys
    here = Path(__file__).resolve().parent
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else here / "results.json"
    dst = Path(sys.argv[2]) if len(sys.argv) > 2 else src.with_name("RESULTS.md")
    dst.write_text(render(json.loads(src.read_text()), notes=NOTES if dst.name == "RESULTS.md" else None))
    print(f"wrote {dst}")


if __name__ == "__main__":
    main()
