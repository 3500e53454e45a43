"""Where time and memory go: py-spy sampling of our daemon during a section, smaps breakdown."""
from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path


def py_spy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


class Sampler:
    """`py-spy record` attached to a pid until stop(); writes collapsed stacks + a summary."""

    def __init__(self, pid: int, out: Path, rate: int = 250):
        self.out = out
        self.raw = out.with_suffix(".folded")
        binary = py_spy()
        if binary is None:
            raise RuntimeError("py-spy not installed (.venv/bin/pip install py-spy)")
        self.proc = subprocess.Popen(
            [binary, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
             "--threads", "--nonblocking", "-o", str(self.raw)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop(self) -> Path:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.out.write_text(summarise(self.raw) if self.raw.exists()
                            else f"py-spy wrote nothing: {self.proc.stderr.read().decode()[-2000:]}")
        return self.out


def summarise(folded: Path, top: int = 30) -> str:
    """Top frames by self and by inclusive samples, from py-spy's collapsed stacks."""
    own, inclusive, total = collections.Counter(), collections.Counter(), 0
    for line in folded.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for frame in set(frames[1:]):  # frames[0] is the thread
            inclusive[frame] += n
    lines = [f"{total} samples ({folded.name})", "", "self %   frame"]
    lines += [f"{100 * n / total:6.1f}  {f}" for f, n in own.most_common(top)] if total else []
    lines += ["", "incl %   frame"]
    lines += [f"{100 * n / total:6.1f}  {f}" for f, n in inclusive.most_common(top)] if total else []
    return "\n".join(lines) + "\n"


def smaps_breakdown(pid: int, top: int = 25) -> str:
    """RSS/PSS per mapping (file or [heap]/[anon]) of a process: where its memory is."""
    rss, pss = collections.Counter(), collections.Counter()
    name = "[anon]"
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split()
            if not head:
                continue
            if "-" in head[0] and not head[0].endswith(":"):
                name = head[5] if len(head) > 5 else "[anon]"
                name = os.path.basename(name) if name.startswith("/") else name
            elif head[0] == "Rss:":
                rss[name] += int(head[1])
            elif head[0] == "Pss:":
                pss[name] += int(head[1])
    lines = [f"total RSS {sum(rss.values()) / 1024:.1f} MiB, PSS {sum(pss.values()) / 1024:.1f} MiB",
             "  RSS MiB   PSS MiB  mapping"]
    for mapping, kib in rss.most_common(top):
        lines.append(f"{kib / 1024:9.2f} {pss[mapping] / 1024:9.2f}  {mapping}")
    return "\n".join(lines) + "\n"


def import_times(python: str, out: Path, top: int = 40) -> Path:
    """Boot is mostly imports before the daemon's clock starts: `-X importtime` of its modules."""
    import subprocess
    r = subprocess.run([python, "-X", "importtime", "-c",
                        "import appliance.cli, appliance.daemon, appliance.builtins"],
                       capture_output=True, text=True, timeout=120)
    rows = []
    for line in r.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            rows.append((int(parts[1]), int(parts[0].split(":")[1]), parts[2].rstrip()))
    total = max((cum for cum, _, name in rows if not name.startswith("  ")), default=0)
    lines = [f"imports of the daemon's boot path (python -X importtime), top {top} by cumulative µs",
             "  cumul ms  self ms  module"]
    lines += [f"{cum / 1000:9.1f} {own / 1000:8.1f}  {name}" for cum, own, name in
              sorted(rows, reverse=True)[:top]]
    lines.append(f"sum of top-level imports: {sum(c for c, _, n in rows if not n.startswith('  ')) / 1000:.1f} ms"
                 f" (largest {total / 1000:.1f} ms)")
    out.write_text("\n".join(lines) + "\n")
    return out
