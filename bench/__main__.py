"""./scripts/dev bench [--quick] [--sections a,b] [--profile SECTION] [--targets …]

Builds the test images, starts containerd 1.6.20 and ctrappliance on private paths, runs
the same workload on both (repetitions interleaved), stops both and writes
bench/RESULTS.md + bench/results.json (a quick, partial or other-binary run writes
bench/out/results-<time>.md/.json instead, or --output STEM).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from . import images, report, sections
from .daemons import OURS, Target, checkout_binary, remove_empty_cgroups
from .profile import Sampler, import_times, smaps_breakdown

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
SECTION_HELP = ", ".join(sections.ALL_SECTIONS)


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="./scripts/dev bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a few minutes)")
    parser.add_argument("--sections", default=",".join(sections.ALL_SECTIONS),
                        help=f"comma-separated subset of: {SECTION_HELP}")
    parser.add_argument("--targets", default="containerd,ctrappliance",
                        help="comma-separated: containerd, ctrappliance, NAME=DIR (another "
                             "ctrappliance checkout, e.g. main's: old=/work/wt/old); ratios "
                             "are the last target over the first")
    parser.add_argument("--profile", metavar="SECTION[,SECTION]", default="",
                        help="sample our daemon with py-spy during these sections (reports in bench/out/)")
    parser.add_argument("--ours-bin", default=OURS,
                        help="ctrappliance executable (e.g. the Nuitka build)")
    parser.add_argument("--nuitka-bin", default=None,
                        help="the Nuitka standalone build for section lifecycle (default: "
                             "build/nuitka-standalone/ctrappliance.dist/ctrappliance)")
    parser.add_argument("--workdir", default=str(images.CACHE / "run"))
    parser.add_argument("--output", default=None,
                        help="results file stem (default bench/RESULTS.md + bench/results.json "
                             "for a full run of both targets, else bench/out/results-<time>)")
    args = parser.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    args.checkouts = {}   # name -> directory of another ctrappliance checkout
    targets = []
    for spec in (t.strip() for t in args.targets.split(",") if t.strip()):
        name, eq, path = spec.partition("=")
        if eq:
            args.checkouts[name] = Path(path).resolve()
        targets.append(name)
    args.targets = targets
    unknown = set(args.sections) - set(sections.ALL_SECTIONS)
    known = set(report.KINDS) | set(args.checkouts)
    if (unknown or not set(args.targets) <= known or not args.targets
            or len(set(args.targets)) != len(args.targets)):
        parser.error(f"unknown section/target: {sorted(unknown) or args.targets}")
    args.profile = [s.strip() for s in args.profile.split(",") if s.strip()]
    if set(args.profile) - set(args.sections):
        parser.error(f"--profile {args.profile}: not among the sections run")
    return args


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    started, load_start = time.time(), _load()
    # profiles and memory maps: bench/out, or beside --output when that is elsewhere (tests)
    out_dir = Path(args.output).resolve().parent if args.output else OUT
    out_dir = OUT if out_dir == HERE else out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(args.workdir) / time.strftime("%Y%m%dT%H%M%S")

    binaries = {"containerd": None, "ctrappliance": args.ours_bin}
    for name, checkout in args.checkouts.items():
        binaries[name] = checkout_binary(checkout, out_dir / f"ctrappliance-{name}")

    def make_targets(section, root_fs=None):
        return [Target("containerd" if name == "containerd" else "ctrappliance",
                       workdir / section / name, binary=binaries[name], root_fs=root_fs,
                       name=name) for name in args.targets]

    bench = sections.Bench([], args.quick, out_dir)
    bench.nuitka_bin = args.nuitka_bin
    profiles: dict[str, str] = {}
    print(f"bench: images → {images.CACHE}/images", file=sys.stderr)
    images.image("small")
    if {"import", "unpack", *sections.STANDALONE_ROOTS} & set(args.sections):
        images.image("big")
    if "many_entries" in args.sections:
        images.image("many")

    def profiled(name, fn, *fn_args):
        print(f"bench: section {name}", file=sys.stderr)
        sampler = None
        if name == "boot" and name in args.profile:  # too short to sample; imports are the cost
            ours = Path(args.ours_bin)
            python = ours.parent / "python" if ours.parent.joinpath("python").exists() else sys.executable
            profiles[name] = str(import_times(str(python), out_dir / "profile-boot-imports.txt"))
        elif name in args.profile:
            ours = [t for t in bench.targets if t.name == "ctrappliance" and t.running()]
            if ours:
                sampler = Sampler(ours[0].pid, out_dir / f"profile-{name}.txt")
        try:
            fn(bench, *fn_args)
        finally:
            if sampler:
                profiles[name] = str(sampler.stop())

    try:
        if "boot" in args.sections:
            profiled("boot", sections.boot, make_targets)
        workload = [s for s in sections.WORKLOAD if s in args.sections]
        if workload:
            bench.targets = make_targets("workload")
            before = {}
            for t in bench.targets:
                t.start()
                before[t.name] = t.memory()
            try:
                for name in workload:
                    profiled(name, sections.WORKLOAD[name])
                for t in bench.targets:
                    after = t.memory()
                    bench.record("rss_after", t.name, after["rss_mib"])
                    bench.record("hwm_after", t.name, after["hwm_mib"])
                    bench.record("cpu_workload", t.name, after["cpu_s"] - before[t.name]["cpu_s"])
                    (out_dir / f"memory-{t.name}.txt").write_text(smaps_breakdown(t.pid))
            finally:
                for t in bench.targets:
                    t.cleanup()
                bench.targets = []
        for name in sections.STANDALONE:
            if name != "boot" and name in args.sections:
                profiled(name, sections.STANDALONE[name], make_targets)
    finally:
        for ns in ("bench", "stress"):
            remove_empty_cgroups(ns)
        _remove_empty_dirs(workdir)

    # only a complete run of both targets replaces the committed bench/RESULTS.md
    full = (args.targets == list(report.KINDS) and args.output is None and not args.quick
            and set(args.sections) == set(sections.ALL_SECTIONS) and args.ours_bin == OURS)
    stem = Path(args.output) if args.output else OUT / time.strftime("results-%Y%m%dT%H%M%S")
    md_path = HERE / "RESULTS.md" if full else stem.with_suffix(".md")
    json_path = HERE / "results.json" if full else stem.with_suffix(".json")
    info = {"argv": sys.argv[1:] if argv is None else argv,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
            "revision": report.revision(), "machine": report.machine(),
            "versions": report.versions(), "ctrappliance_bin": args.ours_bin,
            "sections": args.sections, "quick": args.quick, "targets": args.targets,
            "checkouts": {name: binaries[name] for name in args.checkouts},
            "load_start": load_start, "load_end": _load(), "seconds": time.time() - started}
    table = report.write(bench, info, json_path, md_path, profiles)
    print(f"bench: wrote {md_path} and {json_path}", file=sys.stderr)
    for row in table:
        if any(row.get(name) or row.get(name + "_status") for name in args.targets):
            cells = " | ".join(f"{report._cell(row, name):>28}" for name in args.targets)
            print(f"  {row['label']:<55} {cells} | "
                  f"{'%.2f×' % row['ratio'] if row['ratio'] else '—'}")
    return 0


def _remove_empty_dirs(top: Path):
    """rmdir only (never rmtree): a directory still holding something, say a mount, stays."""
    for dirpath, _, _ in sorted(os.walk(top, topdown=False), key=lambda w: -len(w[0])):
        try:
            os.rmdir(dirpath)
        except OSError:
            pass


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    sys.exit(main())
