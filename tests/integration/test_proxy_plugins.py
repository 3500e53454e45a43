"""Issue 9: proxy_plugins — an external snapshotter (our native one on its own socket)."""
import subprocess
import sys
import time
from pathlib import Path

import pytest

from daemon import CTR, REPO, Daemon, socket_accepts

pytestmark = pytest.mark.integration
HELPER = Path(__file__).with_name("proxy_snapshotter.py")


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
        # remote content stores are registered but not supported yet: an error plugin
        assert any(line.split() == ["io.containerd.content.v1", "blobs", "-", "error"]
                   for line in plugins.splitlines()), plugins
        assert "remote content stores are not supported" in d.ctr("plugins", "ls", "-d").stdout
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
