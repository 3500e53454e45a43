"""Helpers for runtime tests: a busybox rootfs, ctr run flags, and leftover checks."""
from __future__ import annotations

import fcntl
import os
import re
import select
import shutil
import signal
import struct
import termios
import time
from pathlib import Path

from appliance.tools.stress import shim_pids  # noqa: F401  (re-exported for the tests)

BUSYBOX = "/bin/busybox"
APPLETS = ("sh", "echo", "true", "false", "sleep", "cat", "stty", "env", "ps", "dd")
CGROUP_ROOT = "/sys/fs/cgroup"


def make_rootfs(path: Path) -> Path:
    """A minimal rootfs: static busybox and symlinks, plus the usual mount points."""
    (path / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy(BUSYBOX, path / "bin" / "busybox")
    for applet in APPLETS:
        link = path / "bin" / applet
        if not link.exists():
            link.symlink_to("busybox")
    for d in ("proc", "sys", "dev", "etc", "tmp"):
        (path / d).mkdir(exist_ok=True)
    return path


def run_flags(workdir) -> list[str]:
    """Keep runc state and FIFOs under the test's dir (ctr defaults to /run/containerd)."""
    return ["--runc-root", f"{workdir}/runc", "--fifo-dir", f"{workdir}/fifo"]


def shim_pid_of(address: str, task_id: str) -> int:
    for pid in shim_pids(address):
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        if task_id.encode() in argv:
            return pid
    raise LookupError(f"no shim for {task_id}")


def mounts_under(path) -> list[str]:
    prefix = os.path.realpath(str(path)) + "/"
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if (line.split()[4] + "/").startswith(prefix)]


def cgroup_dirs(namespace: str) -> list[str]:
    found = []
    for name in os.listdir(CGROUP_ROOT):
        path = os.path.join(CGROUP_ROOT, name, namespace)
        if not os.path.islink(os.path.join(CGROUP_ROOT, name)) and os.path.isdir(path):
            found.append(path)
    return found


def remove_cgroup_dirs(namespace: str) -> None:
    """Test cleanup: empty per-namespace cgroup dirs (only those of our test namespaces)."""
    for path in cgroup_dirs(namespace):
        for child in sorted(Path(path).glob("*/"), reverse=True):
            try:
                os.rmdir(child)
            except OSError:
                pass
        try:
            os.rmdir(path)
        except OSError:
            pass


def leftovers(daemon, namespace: str) -> dict[str, list]:
    """What a finished run may not leave: shims, mounts, bundles, FIFOs, cgroups."""
    bundles = daemon.state / "io.containerd.runtime.v2.task" / namespace
    fifo = Path(daemon.workdir) / "fifo"
    return {
        "shims": shim_pids(daemon.address),
        "mounts": mounts_under(daemon.workdir),
        "bundles": sorted(os.listdir(bundles)) if bundles.exists() else [],
        "fifos": [str(p) for p in fifo.rglob("*") if p.is_fifo()] if fifo.exists() else [],
        "cgroups": cgroup_dirs(namespace),
    }


NOTHING_LEFT = {"shims": [], "mounts": [], "bundles": [], "fifos": [], "cgroups": []}


def assert_nothing_left(daemon, namespace: str, adjust=lambda found: found, timeout=5.0):
    """Shims stop and bundles go just after Delete answers: poll, then compare."""
    deadline = time.monotonic() + timeout
    while True:
        found = adjust(leftovers(daemon, namespace))
        if found == NOTHING_LEFT or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert found == NOTHING_LEFT, found


class Pty:
    """`argv` on a new pty of `rows`x`cols` (its controlling terminal), with its output."""

    def __init__(self, argv: list[str], env=None, rows=24, cols=80):
        self.pid, self.master = os.forkpty()
        if self.pid == 0:
            try:
                fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
                os.execve(argv[0], argv, env if env is not None else os.environ)
            finally:
                os._exit(127)
        self.output = b""

    def read_until(self, pattern: bytes, timeout=30.0) -> None:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.output):
            left = deadline - time.monotonic()
            assert left > 0, f"no {pattern!r} in {self.output!r}"
            if select.select([self.master], [], [], left)[0]:
                try:
                    self.output += os.read(self.master, 4096)
                except OSError:  # the child has gone
                    break

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def resize(self, rows: int, cols: int) -> None:
        """The kernel sends the child SIGWINCH."""
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def wait(self) -> int:
        _, status = os.waitpid(self.pid, 0)
        return os.waitstatus_to_exitcode(status)

    def close(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(self.master)
