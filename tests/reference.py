"""A private instance of Debian's containerd 1.6.20, for differential tests and benchmarks.

It never uses /run/containerd or /var/lib/containerd (the 1.6 shim socket dir
aside, which cannot be configured) and is stopped by the pid we started.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from bench.daemons import containerd_config
from daemon import CTR, WORKDIRS

CONTAINERD = shutil.which("containerd") or "/usr/bin/containerd"


class Containerd:
    def __init__(self, workdir: str | None = None, extra_config: str = "", cri: bool = False):
        self.extra_config = extra_config   # TOML appended to the private config
        self.cri = cri                     # CRI on, with private CNI dirs and netns pins
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="cd-", dir="/tmp"))
        WORKDIRS.append(self.workdir)
        self.root = self.workdir / "root"
        self.state = self.workdir / "state"
        self.address = str(self.workdir / "containerd.sock")
        self.log_path = self.workdir / "containerd.log"
        self.config_path = self.workdir / "containerd.toml"
        self.proc = None

    def write_config(self):
        text = containerd_config(self.workdir, self.root, self.state, self.address, self.cri)
        self.config_path.write_text(text + self.extra_config)

    def start(self, timeout=30.0):
        self.write_config()
        self.log_file = open(self.log_path, "ab")
        env = dict(os.environ, PATH=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
        self.proc = subprocess.Popen([CONTAINERD, "--config", str(self.config_path)],
                                     stdout=self.log_file, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"containerd exited: {self.log_path.read_text()}")
            if self.ctr("version", check=False).returncode == 0:
                return self
            time.sleep(0.05)
        raise TimeoutError("containerd did not start")

    def ctr(self, *args, namespace="default", check=True, input=None, timeout=60):
        argv = [CTR, "--address", self.address, "--namespace", namespace, *args]
        result = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(argv)}: {result.stdout}{result.stderr}")
        return result

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc:
            self.log_file.close()

    def cleanup(self):
        self.stop()
        subprocess.run(["umount", "-R", "-l", str(self.workdir)], capture_output=True)
        shutil.rmtree(self.workdir, ignore_errors=True)
