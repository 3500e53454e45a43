"""Helpers for the CRI streaming tests: the Go SPDY client (Debian's spdystream, as kubectl
uses it) built once per source, a busybox container in namespace k8s.io, a WebSocket
exec client."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from runtime_helpers import make_rootfs, run_flags

SPDY_SOURCE = Path(__file__).parent / "spdyclient" / "main.go"
GOPATH = "/usr/share/gocode"
EXTRA_APPLETS = ("tar", "httpd", "md5sum", "seq", "wc", "head", "ls", "nc", "printf", "tr", "rm")


def spdy_client() -> str:
    """Build spdyclient/main.go with Debian's Go in GOPATH mode; cached under /var/tmp."""
    go = shutil.which("go")
    if go is None or not Path(GOPATH, "src/github.com/moby/spdystream").is_dir():
        pytest.skip("golang-go and golang-github-docker-spdystream-dev are needed (scripts/dev)")
    digest = hashlib.sha256(SPDY_SOURCE.read_bytes()).hexdigest()[:16]
    out = Path(f"/var/tmp/ctrappliance-spdyclient/{digest}/spdyclient")
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".{os.getpid()}")
        env = dict(os.environ, GO111MODULE="off", GOPATH=GOPATH, GOFLAGS="",
                   GOCACHE=str(out.parent.parent / "gocache"))
        subprocess.run([go, "build", "-o", str(tmp), str(SPDY_SOURCE)], env=env, check=True,
                       timeout=600, cwd=SPDY_SOURCE.parent)
        os.replace(tmp, out)
    return str(out)


def make_streaming_rootfs() -> Path:
    root = make_rootfs(Path(tempfile.mkdtemp(prefix="rootfs-", dir="/tmp")) / "rootfs")
    for applet in EXTRA_APPLETS:
        link = root / "bin" / applet
        if not link.exists():
            link.symlink_to("busybox")
    (root / "www").mkdir(exist_ok=True)
    (root / "www" / "index.html").write_text("hello from the pod\n")
    return root


class CtrContainer:
    """A running container made with `ctr -n k8s.io run -d` (its id is what a CRI container
    id is), optionally in a network namespace of the test's."""

    NS = "k8s.io"

    def __init__(self, daemon, cid: str, rootfs: Path, args: list[str], netns: str = "",
                 extra=()):
        self.daemon, self.id = daemon, cid
        opts = (["--with-ns", f"network:{netns}"] if netns else []) + list(extra)
        # a cgroup of its own: ctr's default (/k8s.io/<id>) is shared with any other daemon
        # on the host running a container of the same id, whose task removal kills what
        # is left in it
        opts += ["--cgroup", f"/{Path(daemon.workdir).name}-{cid}"]
        daemon.ctr("run", *run_flags(daemon.workdir), "--env", "PATH=/bin", *opts, "--rootfs",
                   "-d", str(rootfs), cid, *args, namespace=self.NS)

    def remove(self) -> None:
        ctr = self.daemon.ctr
        ctr("task", "kill", "-s", "9", self.id, namespace=self.NS, check=False)
        for _ in range(50):
            if ctr("task", "rm", self.id, namespace=self.NS, check=False).returncode == 0:
                break
            import time
            time.sleep(0.2)
        ctr("container", "rm", self.id, namespace=self.NS, check=False)


class NetNS:
    """A named network namespace of the test's own (ip netns, under a private run dir)."""

    def __init__(self, name: str):
        self.name = name
        self.dir = Path(tempfile.mkdtemp(prefix="netns-", dir="/tmp"))
        self.path = str(self.dir / name)
        Path(self.path).touch()
        subprocess.run(["unshare", f"--net={self.path}", "ip", "link", "set", "lo", "up"],
                       check=True, timeout=30)

    def close(self) -> None:
        subprocess.run(["umount", self.path], check=False, timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)


def status(raw: bytes) -> dict:
    return json.loads(raw) if raw else {}
