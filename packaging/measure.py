"""Boot time and idle RSS of the builds side by side, plus product sizes.

    .venv/bin/python packaging/measure.py [--reps 5] [--out build]

Targets: the interpreted daemon (.venv), the Nuitka standalone dist, the onefile
binary (RSS of bootstrap + child) and containerd 1.6.20. Boot = spawn until
`ctr version` answers (bench.daemons.Target). Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.daemons import Target, process_memory  # noqa: E402

IDLE_SECONDS = 3.0


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except FileNotFoundError:
        return []


def tree_rss_mib(pid: int) -> float:
    """The daemon and its descendants (the onefile bootstrap runs the daemon as a child)."""
    return process_memory(pid)["rss_mib"] + sum(tree_rss_mib(c) for c in children(pid))


def measure(kind: str, binary: str | None, reps: int) -> dict:
    boots, rss = [], []
    for _ in range(reps):
        with tempfile.TemporaryDirectory(prefix="ca-measure-", dir="/tmp") as tmp:
            target = Target(kind, Path(tmp), binary=binary)
            try:
                boots.append(target.start()["spawn_to_version"])
                time.sleep(IDLE_SECONDS)
                rss.append(tree_rss_mib(target.pid))
            finally:
                target.cleanup()
    return {"boot_ms": 1000 * statistics.median(boots), "rss_mib": statistics.median(rss)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", default=str(REPO / "build"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    targets = [("interpreted (.venv)", "ctrappliance", str(REPO / ".venv/bin/ctrappliance")),
               ("Nuitka standalone (.deb)", "ctrappliance",
                str(out / "nuitka-standalone/ctrappliance.dist/ctrappliance")),
               ("Nuitka onefile", "ctrappliance", str(out / "ctrappliance")),
               ("containerd 1.6.20", "containerd", None)]
    print("| build | boot to `ctr version` (median) | idle RSS (median) |")
    print("|---|---|---|")
    for label, kind, binary in targets:
        if binary and not Path(binary).exists():
            continue
        m = measure(kind, binary, args.reps)
        print(f"| {label} | {m['boot_ms']:.0f} ms | {m['rss_mib']:.1f} MiB |", flush=True)
    print()
    for product in sorted(out.glob("ctrappliance_*.deb")) + [out / "ctrappliance"]:
        if product.exists():
            print(f"- {product.name}: {product.stat().st_size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
