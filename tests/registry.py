"""Debian's docker-registry (distribution 2.8) on 127.0.0.1, private storage, optional
htpasswd auth; images pushed into it with skopeo. Stopped by the pid we started."""
from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

REGISTRY = "/usr/bin/docker-registry"
SKOPEO = "/usr/bin/skopeo"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRegistry:
    def __init__(self, users: dict[str, str] | None = None):
        self.workdir = Path(tempfile.mkdtemp(prefix="ca-registry-", dir="/tmp"))
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.users = users or {}
        self.proc: subprocess.Popen | None = None

    def start(self, timeout=20.0) -> "LocalRegistry":
        auth = ""
        if self.users:
            import bcrypt
            lines = [f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(5)).decode()}"
                     for u, p in self.users.items()]
            (self.workdir / "htpasswd").write_text("\n".join(lines) + "\n")
            auth = (f"auth:\n  htpasswd:\n    realm: test-realm\n"
                    f"    path: {self.workdir / 'htpasswd'}\n")
        config = self.workdir / "config.yml"
        config.write_text(f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
                          f"    rootdirectory: {self.workdir / 'data'}\n  delete:\n"
                          f"    enabled: true\nhttp:\n  addr: {self.host}\n{auth}")
        self.log = open(self.workdir / "registry.log", "wb")
        self.proc = subprocess.Popen([REGISTRY, "serve", str(config)], stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError((self.workdir / "registry.log").read_text())
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise TimeoutError("docker-registry did not start")

    def push(self, oci_archive: Path, repo_tag: str) -> str:
        """Copy an OCI archive to `<host>/<repo_tag>`; returns the manifest digest."""
        argv = [SKOPEO, "copy", "--quiet", "--dest-tls-verify=false"]
        if self.users:
            user, password = next(iter(self.users.items()))
            argv += ["--dest-creds", f"{user}:{password}"]
        digest_file = self.workdir / "digest"
        argv += ["--digestfile", str(digest_file), f"oci-archive:{oci_archive}",
                 f"docker://{self.host}/{repo_tag}"]
        subprocess.run(argv, check=True, capture_output=True, timeout=120)
        return digest_file.read_text().strip()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc:
            self.log.close()
        shutil.rmtree(self.workdir, ignore_errors=True)
