"""Issue 5: snapshotters and the walking differ with the real ctr: import with unpack, every
`ctr snapshots` command, images mount, hostile layers, a crash mid-unpack, and the unpacked
trees compared with containerd 1.6.20's."""
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

from daemon import Daemon
from reference import Containerd
from snapshot_helpers import anchor_image, fingerprint, mounted_tree, mountinfo_lines

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from layers import entry, layer, oci_image  # noqa: E402

pytestmark = pytest.mark.integration
BUSYBOX = "localhost/busybox:latest"
BUSYBOX_CHAIN = "sha256:abd9f0c22b73f526e5b86309f76a6e152ba4ab55f31345ec679a0586b5011688"


@pytest.fixture(scope="module")
def mounts_before():
    return mountinfo_lines()


@pytest.fixture(scope="module")
def ours(mounts_before):
    d = Daemon().start()
    try:
        yield d
    finally:
        d.cleanup()


def snapshot_keys(d, ns, snapshotter="overlayfs"):
    out = d.ctr("snapshots", "--snapshotter", snapshotter, "ls", namespace=ns).stdout
    keys = []
    for line in out.splitlines()[1:]:
        words = line.split()
        if words:  # unpack keys hold a space: "extract-<unique> <chain id>"
            keys.append(" ".join(words[:2]) if words[0].startswith("extract-") else words[0])
    return keys


def test_import_with_unpack_and_snapshot_commands(ours, tmp_path):
    ns = "snap-cmds"
    out = ours.ctr("images", "import", str(anchor_image("small")), namespace=ns).stdout
    assert "unpacking localhost/busybox:latest" in out and "done" in out
    assert snapshot_keys(ours, ns) == [BUSYBOX_CHAIN]
    info = json.loads(ours.ctr("snapshots", "info", BUSYBOX_CHAIN, namespace=ns).stdout)
    assert info["Kind"] == "Committed" and info["Name"] == BUSYBOX_CHAIN
    usage = ours.ctr("snapshots", "usage", BUSYBOX_CHAIN, namespace=ns).stdout
    assert re.search(r"1\.\d+ MiB\s+\d+", usage), usage

    ours.ctr("snapshots", "prepare", "work", BUSYBOX_CHAIN, namespace=ns)
    ours.ctr("snapshots", "view", "look", BUSYBOX_CHAIN, namespace=ns)
    tree = ours.ctr("snapshots", "tree", namespace=ns).stdout
    assert f" {BUSYBOX_CHAIN}\n" in tree and "\\_ work" in tree and "\\_ look" in tree
    ours.ctr("snapshots", "rm", "look", namespace=ns)  # a view holds no gc.root: remove it now
    mount_cmd = ours.ctr("snapshots", "mounts", str(tmp_path / "m"), "work", namespace=ns).stdout
    assert mount_cmd.startswith("mount -t overlay overlay") and "index=off" in mount_cmd
    assert "upperdir=" in mount_cmd and "lowerdir=" in mount_cmd
    # change the active snapshot through its real overlay mount, then diff it
    (tmp_path / "m").mkdir()
    subprocess.run(mount_cmd.split(), check=True)
    try:
        (tmp_path / "m" / "hello.txt").write_text("hi")
        os.unlink(tmp_path / "m" / "bin" / "cat")
    finally:
        subprocess.run(["umount", str(tmp_path / "m")], check=True)
    diff = subprocess.run(
        ["ctr", "--address", ours.address, "-n", ns, "snapshots", "diff", "--media-type",
         "application/vnd.oci.image.layer.v1.tar", "work"], capture_output=True, timeout=60)
    assert diff.returncode == 0, diff.stderr
    names = tarfile.open(fileobj=__import__("io").BytesIO(diff.stdout)).getnames()
    assert "hello.txt" in names and "bin/.wh.cat" in names
    usage = ours.ctr("snapshots", "usage", "work", namespace=ns).stdout
    assert "work" in usage
    # commit the change, and `ctr snapshots rm` in child-first order
    ours.ctr("snapshots", "commit", "work-c", "work", namespace=ns)
    rm = ours.ctr("snapshots", "rm", BUSYBOX_CHAIN, namespace=ns, check=False)
    assert rm.returncode != 0 and "cannot remove snapshot with child" in rm.stderr
    ours.ctr("snapshots", "rm", "work-c", namespace=ns)
    assert snapshot_keys(ours, ns) == [BUSYBOX_CHAIN]
    # `ctr snapshots unpack` of an image's layer, and images mount/unmount
    (tmp_path / "img").mkdir()
    ours.ctr("images", "mount", BUSYBOX, str(tmp_path / "img"), namespace=ns)
    try:
        assert os.path.islink(tmp_path / "img" / "bin" / "sh")
        assert os.path.getsize(tmp_path / "img" / "bin" / "busybox") > 1 << 20
    finally:
        ours.ctr("images", "unmount", "--rm", str(tmp_path / "img"), namespace=ns)
    assert snapshot_keys(ours, ns) == [BUSYBOX_CHAIN]


def test_snapshots_unpack_and_native_snapshotter(ours):
    ns = "snap-native"
    ours.ctr("images", "import", "--no-unpack", str(anchor_image("small")), namespace=ns)
    manifest = ours.ctr("images", "ls", "-q", namespace=ns).stdout.strip()
    assert manifest == BUSYBOX
    ours.ctr("images", "import", "--snapshotter", "native", str(anchor_image("small")), namespace=ns)
    assert snapshot_keys(ours, ns, "native") == [BUSYBOX_CHAIN]
    assert snapshot_keys(ours, ns) == []
    digest = ours.ctr("images", "ls", namespace=ns).stdout.split("\n")[1].split()[2]
    out = ours.ctr("snapshots", "unpack", digest, namespace=ns).stdout
    assert "done" in out or out == ""
    assert snapshot_keys(ours, ns) == [BUSYBOX_CHAIN]


def test_events_for_prepare_commit_remove(ours):
    ns = "snap-events"
    proc = subprocess.Popen(["ctr", "--address", ours.address, "events"], stdout=subprocess.PIPE,
                            text=True)
    try:
        time.sleep(0.5)
        ours.ctr("snapshots", "prepare", "ev", namespace=ns)
        ours.ctr("snapshots", "commit", "ev-c", "ev", namespace=ns)
        ours.ctr("snapshots", "rm", "ev-c", namespace=ns)
        time.sleep(0.5)
    finally:
        proc.terminate()
        out = proc.communicate(timeout=10)[0]
    topics = [line.split()[5] for line in out.splitlines() if f" {ns} " in line]
    assert topics == ["/snapshot/prepare", "/snapshot/commit", "/snapshot/remove"], out


HOSTILE_LAYERS = {
    "dotdot": (layer(entry("../../../../../../../tmp/ca-escape-dotdot", data=b"x")), "climbs out"),
    "symlink-then-write": (layer(entry("ln", tarfile.SYMTYPE, linkname="../../../../../../../../tmp"),
                                 entry("ln/ca-escape-symlink", data=b"x")), "points outside"),
    "hardlink-outside": (layer(entry("h", tarfile.LNKTYPE, linkname="../../../../../etc/passwd")),
                         "climbs out"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_LAYERS))
def test_hostile_layer_import_fails_cleanly(ours, tmp_path, case):
    ns = f"hostile-{case}"
    data, message = HOSTILE_LAYERS[case]
    image = tmp_path / "hostile.tar"
    image.write_bytes(oci_image([data], ref=f"localhost/hostile-{case}:1"))
    r = ours.ctr("images", "import", str(image), namespace=ns, check=False)
    assert r.returncode != 0
    assert "hostile layer" in r.stderr and message in r.stderr, r.stderr
    assert not any(p.name.startswith("ca-escape") for p in Path("/tmp").iterdir())
    # ctr removes its extraction snapshot; nothing is left behind on disk either
    assert snapshot_keys(ours, ns) == []
    ours.ctr("snapshots", "cleanup", namespace=ns, check=False)
    snapdir = ours.root / "io.containerd.snapshotter.v1.overlayfs" / "snapshots"
    ids = {str(i) for i in range(0, 100000)}
    assert all(name in ids for name in os.listdir(snapdir))


def _medium_image(tmp_path, files=4000) -> Path:
    entries = [entry(f"d{i // 200}/f{i}", data=os.urandom(64) * 16) for i in range(files)]
    path = tmp_path / "medium.tar"
    path.write_bytes(oci_image([layer(*entries), layer(entry("top", data=b"t"))],
                               ref="localhost/medium:1"))
    return path


def test_sigkill_during_unpack_leaves_no_half_committed_snapshot(tmp_path):
    image = _medium_image(tmp_path, files=6000)
    d = Daemon().start()
    try:
        proc = subprocess.Popen(["ctr", "--address", d.address, "-n", "crash", "images", "import",
                                 str(image)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # kill while the first layer is being extracted
            if any(k.startswith("extract-") for k in snapshot_keys(d, "crash")):
                break
            time.sleep(0.02)
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait(10)
        d.log_file.close()
        proc.wait(30)
        d.start()
        keys = snapshot_keys(d, "crash")
        for key in keys:  # an interrupted extraction is never committed under its chain id
            info = json.loads(d.ctr("snapshots", "info", key, namespace="crash").stdout)
            if key.startswith("extract-"):
                assert info["Kind"] == "Active"
            else:   # a committed chain is complete: the 6,000-file layer is all there
                inodes = int(d.ctr("snapshots", "usage", key, namespace="crash").stdout.split()[-1])
                assert info["Kind"] == "Committed" and (inodes > 6000 or info.get("Parent"))
        # whatever is committed is complete: the next import unpacks and the tree is whole
        d.ctr("images", "import", str(image), namespace="crash", timeout=120)
        tree = mounted_tree(d, "localhost/medium:1", "crash", tmp_path / "mnt")
        assert sum(1 for p in tree if p.startswith("d")) == 6000 + 30 and "top" in tree
    finally:
        d.cleanup()


def test_concurrent_imports_unpack_each_layer_once(ours, tmp_path):
    image = _medium_image(tmp_path)
    before = ours.log().count("applied layer")
    results = []

    def run(ns):
        results.append(ours.ctr("images", "import", str(image), namespace=ns, check=False,
                                timeout=120))
    threads = [threading.Thread(target=run, args=("dedupe",)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(130)
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    assert ours.log().count("applied layer") - before == 2   # two layers, each once
    assert len([k for k in snapshot_keys(ours, "dedupe") if not k.startswith("extract-")]) == 2
    tree = mounted_tree(ours, "localhost/medium:1", "dedupe", tmp_path / "mnt")
    assert sum(1 for p in tree if p.startswith("d")) == 4000 + 20


@pytest.fixture(scope="module")
def theirs():
    d = Containerd()
    try:
        yield d.start()
    finally:
        d.cleanup()


def _differential(ours, theirs, variant, image_ref, tmp_path):
    trees = []
    for d in (ours, theirs):
        d.ctr("images", "import", str(anchor_image(variant)), namespace="diffy", timeout=600)
        trees.append(mounted_tree(d, image_ref, "diffy", tmp_path / type(d).__name__))
    assert len(trees[0]) > 10
    assert trees[0] == trees[1]


def test_unpacked_tree_matches_containerd_small(ours, theirs, tmp_path):
    _differential(ours, theirs, "small", BUSYBOX, tmp_path)


@pytest.mark.slow
def test_unpacked_tree_matches_containerd_big(tmp_path):
    ours, theirs = Daemon(), Containerd()
    try:
        _differential(ours.start(), theirs.start(), "big", "localhost/bigimage:latest", tmp_path)
    finally:
        ours.cleanup()
        theirs.cleanup()


def _plugin_blocks(d) -> dict:
    text = d.ctr("plugins", "ls", "-d").stdout.replace(str(d.root), "ROOT")
    blocks = {}
    for block in text.split("Type:")[1:]:
        lines = [line.rstrip() for line in block.strip().splitlines() if line.strip()]
        ptype, pid = lines[0].strip(), lines[1].split(":", 1)[1].strip()
        if ptype in ("io.containerd.snapshotter.v1", "io.containerd.differ.v1") or \
                pid in ("snapshots-service", "diff-service", "snapshots", "diff"):
            blocks[(ptype, pid)] = lines
    return blocks


def test_plugins_ls_matches_containerd_for_snapshotters_and_differ(ours, theirs):
    mine, reference = _plugin_blocks(ours), _plugin_blocks(theirs)
    assert len(reference) == 11
    assert mine == reference


def test_zz_no_mount_left_behind(ours, mounts_before):
    ours.ctr("version")
    assert mountinfo_lines() == mounts_before


def test_image_removal_collects_its_snapshots(ours):
    ns = "snap-gc"
    ours.ctr("images", "import", str(anchor_image("small")), namespace=ns)
    assert snapshot_keys(ours, ns) == [BUSYBOX_CHAIN]
    ours.ctr("snapshots", "prepare", "held", BUSYBOX_CHAIN, namespace=ns)  # ctr labels it gc.root
    ours.ctr("images", "rm", "--sync", BUSYBOX, namespace=ns)
    assert sorted(snapshot_keys(ours, ns)) == ["held", BUSYBOX_CHAIN]   # the child keeps its parent
    ours.ctr("snapshots", "rm", "held", namespace=ns)
    ours.ctr("images", "import", "--no-unpack", str(anchor_image("small")), namespace=ns)
    ours.ctr("images", "rm", "--sync", BUSYBOX, namespace=ns)
    assert snapshot_keys(ours, ns) == []


from test_images import registry  # noqa: E402,F401  (issue 4's loopback docker-registry fixture)


def test_pull_plain_http_unpacks(registry, tmp_path):
    d = Daemon().start()
    try:
        d.ctr("images", "import", "--no-unpack", str(anchor_image("small")), namespace="src")
        remote = f"{registry}/test/busybox:latest"
        d.ctr("images", "push", "--plain-http", remote, BUSYBOX, namespace="src", timeout=120)
        out = d.ctr("images", "pull", "--plain-http", remote, namespace="pulled", timeout=120).stdout
        assert "unpacking linux/amd64" in out and "done" in out
        assert snapshot_keys(d, "pulled") == [BUSYBOX_CHAIN]
        info = json.loads(d.ctr("snapshots", "info", BUSYBOX_CHAIN, namespace="pulled").stdout)
        assert info["Kind"] == "Committed"
        tree = mounted_tree(d, remote, "pulled", tmp_path / "mnt")
        assert tree["bin/sh"][5] == "busybox"
        # pulling again finds the chain already unpacked (the snapshot.ref target exists)
        d.ctr("images", "pull", "--plain-http", remote, namespace="pulled", timeout=120)
        assert snapshot_keys(d, "pulled") == [BUSYBOX_CHAIN]
    finally:
        d.cleanup()
