"""Start ctrappliance on private paths and drive it with the real ctr."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import tomllib
from pathlib import Path

from bench.daemons import socket_accepts  # noqa: F401  (re-exported for the tests)

REPO = Path(__file__).resolve().parent.parent
BINARY = os.environ.get("CTRAPPLIANCE_BIN", str(REPO / ".venv" / "bin" / "ctrappliance"))
CTR = shutil.which("ctr") or "/usr/bin/ctr"
BOOT_TIMEOUT = 30.0


WORKDIRS: list[Path] = []  # of every daemon this test process made (its own mounts are there)


class Daemon:
    """One daemon process with its own root, state and socket under a temp dir."""

    def __init__(self, workdir: str | None = None, config: str | None = None,
                 extra_args=(), env=None):
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="ca-", dir="/tmp"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        WORKDIRS.append(self.workdir)
        self.root = self.workdir / "root"
        self.state = self.workdir / "state"
        self.address = str(self.workdir / "ca.sock")
        self.log_path = self.workdir / "daemon.log"
        self.config = config
        self.extra_args = list(extra_args)
        self.env = env
        self.proc: subprocess.Popen | None = None

    def argv(self):
        argv = [BINARY, "--root", str(self.root), "--state", str(self.state),
                "--address", self.address, "--log-level", "debug",
                "--config", self._config_with_private_opt()]
        return argv + self.extra_args

    def _config_with_private_opt(self) -> str:
        """The test's config plus a private opt path (the opt plugin otherwise creates
        /opt/containerd on the host). A config that sets the opt path itself, or that is no
        valid version 2 TOML (tests of config errors), is used as it is."""
        opt = f'\n[plugins."io.containerd.internal.v1.opt"]\n  path = "{self.workdir / "opt"}"\n'
        if not self.config:
            path = self.workdir / "private-opt.toml"
            path.write_text("version = 2\n" + opt)
            return str(path)
        text = Path(self.config).read_text()
        try:
            table = tomllib.loads(text)
        except tomllib.TOMLDecodeError:
            return self.config
        if table.get("version") != 2 or "io.containerd.internal.v1.opt" in text:
            return self.config
        path = Path(self.config).with_suffix(".private-opt.toml")
        path.write_text(text + opt)
        return str(path)

    def start(self, wait=True) -> "Daemon":
        self.log_file = open(self.log_path, "ab")
        self.log_offset = self.log_file.tell()  # a restart appends: wait for this boot's line
        env = dict(os.environ, **(self.env or {}))
        self.proc = subprocess.Popen(self.argv(), stdout=self.log_file, stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout=BOOT_TIMEOUT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
            if b"successfully booted" in self.log_path.read_bytes()[self.log_offset:]:
                return
            time.sleep(0.02)
        raise TimeoutError(f"daemon did not boot in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def ctr(self, *args, namespace="default", check=True, input=None, timeout=60):
        """Run the real ctr against this daemon; returns CompletedProcess (text)."""
        argv = [CTR, "--address", self.address, "--namespace", namespace, *args]
        result = subprocess.run(argv, capture_output=True, text=True, input=input,
                                timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} failed ({result.returncode}):\n"
                                 f"{result.stdout}{result.stderr}")
        return result

    def signal(self, sig):
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self, timeout=15.0) -> int | None:
        """SIGTERM the daemon we started (by pid), SIGKILL if it does not go."""
        if not self.proc:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log_file.close()
        return self.proc.returncode

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.log_file.close()

    def cleanup(self):
        self.stop()
        subprocess.run(["umount", "-R", "-l", str(self.workdir)], capture_output=True)
        shutil.rmtree(self.workdir, ignore_errors=True)


def run_cli(*args, input=None, timeout=30, env=None, cwd=None):
    """Run the ctrappliance executable with arguments (not the daemon)."""
    return subprocess.run([BINARY, *args], capture_output=True, text=True, input=input,
                          timeout=timeout, env=env, cwd=cwd)


def wait_for(predicate, timeout=20.0, what="condition"):
    """Poll `predicate` until it returns something true; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")
