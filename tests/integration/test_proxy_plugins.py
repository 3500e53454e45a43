"""proxy_plugins: an external snapshotter (our native one on its own socket)."""
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from daemon import CTR, REPO, Daemon, socket_accepts

pytestmark = pytest.mark.integration
HELPER = Path(__file__).with_name("proxy_services.py")


@pytest.fixture
def external(tmp_path):
    sock = str(tmp_path / "ext.sock")
    proc = subprocess.Popen([sys.executable, str(HELPER), str(tmp_path / "ext"), sock, "remote"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while not socket_accepts(sock):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
        time.sleep(0.05)
    try:
        yield sock
    finally:
        proc.terminate()
        proc.wait(10)


def test_proxy_snapshotter_listed_and_usable(external):
    d = Daemon()
    d.workdir.mkdir(parents=True, exist_ok=True)
    config = d.workdir / "config.toml"
    config.write_text(f"""version = 2
[proxy_plugins.remote]
type = "snapshot"
address = "{external}"
[proxy_plugins.blobs]
type = "content"
address = "{external}"
[proxy_plugins.odd]
type = "blob"
address = "/nonexistent"
""")
    d.config = str(config)
    try:
        d.start()
        assert "unknown proxy plugin type 'blob' for odd" in d.log()
        plugins = d.ctr("plugins", "ls").stdout
        assert any(line.split()[:2] == ["io.containerd.snapshotter.v1", "remote"]
                   and line.split()[-1] == "ok" for line in plugins.splitlines()), plugins
        assert "odd" not in plugins
        assert any(line.split() == ["io.containerd.content.v1", "blobs", "-", "ok"]
                   for line in plugins.splitlines()), plugins
        sn = ("snapshots", "--snapshotter", "remote")
        d.ctr(*sn, "prepare", "layer-1")
        mounts = d.ctr(*sn, "mounts", "/mnt", "layer-1").stdout
        assert str(Path(external).parent / "ext") in mounts  # the directory is the remote's
        d.ctr(*sn, "commit", "base", "layer-1")
        d.ctr(*sn, "prepare", "work", "base")
        listing = d.ctr(*sn, "ls").stdout.split()
        assert listing[3:] == ["base", "Committed", "work", "base", "Active"], listing
        remote = subprocess.run([CTR, "--address", external, "snapshots", "--snapshotter",
                                 "remote", "ls"], capture_output=True, text=True, timeout=30)
        assert remote.stdout.count("Committed") == 1 and remote.stdout.count("Active") == 1
        d.ctr(*sn, "rm", "work")
        d.ctr(*sn, "rm", "base")
        remote = subprocess.run([CTR, "--address", external, "snapshots", "--snapshotter",
                                 "remote", "ls"], capture_output=True, text=True, timeout=30)
        assert remote.stdout.split() == ["KEY", "PARENT", "KIND"]
    finally:
        d.cleanup()


def test_proxy_content_store_holds_the_blobs(external):
    d = Daemon()
    d.workdir.mkdir(parents=True, exist_ok=True)
    config = d.workdir / "config.toml"
    config.write_text(f"""version = 2
disabled_plugins = ["io.containerd.content.v1.content"]
[proxy_plugins.remote-blobs]
type = "content"
address = "{external}"
# no collection until the test asks for one (ctr's ingest lease would free the blob)
[plugins."io.containerd.gc.v1.scheduler"]
startup_delay = "1h"
""")
    d.config = str(config)

    def remote(*args):
        return subprocess.run([CTR, "--address", external, *args], capture_output=True,
                              timeout=30)
    data = os.urandom(3 << 20)  # several upload chunks
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    try:
        d.start()
        plugins = d.ctr("plugins", "ls").stdout
        assert any(line.split() == ["io.containerd.content.v1", "remote-blobs", "-", "ok"]
                   for line in plugins.splitlines()), plugins
        r = subprocess.run([CTR, "--address", d.address, "content", "ingest", "up-1"],
                           input=data, capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert digest.encode() in remote("content", "ls", "-q").stdout
        assert remote("content", "get", digest).stdout == data
        cache = d.root / "io.containerd.content.v1.remote-blobs" / "blobs" / "sha256" / \
            digest.split(":")[1]
        cache.unlink()  # the next read must come from the remote store
        got = subprocess.run([CTR, "--address", d.address, "content", "get", digest],
                             capture_output=True, timeout=60)
        assert got.returncode == 0 and got.stdout == data, got.stderr
        d.ctr("content", "rm", digest)
        d.ctr("leases", "create", "--id", "gc-now")
        d.ctr("leases", "delete", "--sync", "gc-now")  # a collection sweeps the blob
        assert digest.encode() not in remote("content", "ls", "-q").stdout
    finally:
        d.cleanup()
