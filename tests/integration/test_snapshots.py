"""Snapshotters and the walking differ with the real ctr: import with unpack, every
`ctr snapshots` command, images mount, hostile and odd layers, a crash mid-unpack, and the unpacked
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


ESCAPES = {   # containerd confines the first two to the root, and so do we
    "dotdot": layer(entry("../../../../../../../tmp/ca-escape-dotdot", data=b"x")),
    "symlink-then-write": layer(entry("ln", tarfile.SYMTYPE, linkname="../../../../../../../../tmp"),
                                entry("ln/ca-escape-symlink", data=b"x")),
    "hardlink-outside": layer(entry("h", tarfile.LNKTYPE, linkname="../../../../../etc/passwd")),
}


@pytest.mark.parametrize("case", sorted(ESCAPES))
def test_escaping_layer_stays_inside_like_containerd(ours, theirs, tmp_path, case):
    ns, ref = f"escape-{case}", f"localhost/escape-{case}:1"
    image = tmp_path / "escape.tar"
    image.write_bytes(oci_image([ESCAPES[case]], ref=ref))
    results = []
    for d in (ours, theirs):
        r = d.ctr("images", "import", str(image), namespace=ns, check=False)
        tree = mounted_tree(d, ref, ns, tmp_path / "mnt") if r.returncode == 0 else None
        results.append((r.returncode, tree))
        assert not any(p.name.startswith("ca-escape") for p in Path("/tmp").iterdir())
    assert results[0] == results[1]
    if case == "hardlink-outside":   # /etc/passwd is not in the layer: the link fails
        assert results[0][0] != 0
        # ctr removes its extraction snapshot; nothing is left behind on disk either
        assert snapshot_keys(ours, ns) == []
        ours.ctr("snapshots", "cleanup", namespace=ns, check=False)
        snapdir = ours.root / "io.containerd.snapshotter.v1.overlayfs" / "snapshots"
        assert all(name.isdigit() for name in os.listdir(snapdir))
    else:
        assert any(p.startswith("tmp/ca-escape") for p in results[0][1])


def test_odd_layer_entries_unpack_like_containerd(ours, theirs, tmp_path):
    """Absolute names, ".." above the root, links through them, and device nodes
    unpack (onto a lower layer too) into the tree containerd 1.6.20 makes."""
    T = tarfile
    base = layer(
        entry("/abs/", T.DIRTYPE, mode=0o750), entry("/abs/file", data=b"abs"),
        entry("../../../climb/file", data=b"climbed"), entry("a/../../b/file", data=b"b"),
        entry("./../c", data=b"c"), entry("/", T.DIRTYPE, mode=0o755),
        entry("up", T.SYMTYPE, linkname="../../../../.."),
        entry("up/via-up", data=b"via"),
        entry("etc", T.SYMTYPE, linkname="/../../abs"),
        entry("etc/through-abs-link", data=b"t"),
        entry("/hard-abs", T.LNKTYPE, linkname="/abs/file"),
        entry("hard-climb", T.LNKTYPE, linkname="../../../climb/file"),
        entry("dev/sda", T.BLKTYPE, mode=0o660, devmajor=8, devminor=0),
        entry("dev/mem", T.CHRTYPE, mode=0o640, devmajor=1, devminor=1),
        entry("/dev/../dev/tun", T.CHRTYPE, mode=0o600, devmajor=10, devminor=200),
        entry("dev/fifo", T.FIFOTYPE, mode=0o600),
        entry("gone/file", data=b"g"), entry("opq/old", data=b"o"))
    top = layer(
        entry("/../../.wh.c"), entry("../gone/.wh.file"), entry("/opq/.wh..wh..opq"),
        entry("/opq/new", data=b"n"), entry("../../abs/file", data=b"replaced"),
        entry("/new-dir/../../new", data=b"new"),
        entry("dev/loop0", T.BLKTYPE, mode=0o660, devmajor=7, devminor=0),
        entry("up/top-via-up", data=b"v"),
        entry("/hard-top", T.LNKTYPE, linkname="../../new"))
    ref = "localhost/odd-entries:1"
    image = tmp_path / "odd.tar"
    image.write_bytes(oci_image([base, top], ref=ref))
    trees = []
    for d in (ours, theirs):
        d.ctr("images", "import", str(image), namespace="odd")
        trees.append(mounted_tree(d, ref, "odd", tmp_path / type(d).__name__))
    assert trees[0] == trees[1]
    tree = trees[0]
    assert {"abs/file", "climb/file", "b/file", "via-up", "abs/through-abs-link", "hard-abs",
            "hard-climb", "dev/sda", "dev/mem", "dev/tun", "dev/loop0", "new", "up/top-via-up",
            "hard-top", "opq/new"} <= set(tree)
    assert "c" not in tree and "gone/file" not in tree and "opq/old" not in tree
    assert tree["dev/sda"][5] == "8:0" and tree["dev/tun"][5] == "10:200"


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
        result = ours.ctr("images", "import", str(image), namespace=ns, check=False,
                          timeout=120)
        if "already exists" in result.stderr:   # ctr's own race: Update, then Create, of
            result = ours.ctr("images", "import", str(image), namespace=ns,  # the same name
                              check=False, timeout=120)
        results.append(result)
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


def test_zz_no_mount_left_behind(ours, mounts_before, tmp_path_factory):
    """Nothing mounted under this module's daemon or this run's temporary directories is
    left (other engineers' runs mount under the same /tmp prefixes meanwhile)."""
    ours.ctr("version")
    mine = (str(ours.workdir), str(tmp_path_factory.getbasetemp()))

    def ours_only(lines):
        return [line for line in lines if line.split()[1].startswith(mine)]
    assert ours_only(mountinfo_lines()) == ours_only(mounts_before)


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


from test_images import registry  # noqa: E402,F401  (the loopback docker-registry fixture)


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


# --- committed layers are never writable through a mount the daemon hands out ----

TWO_LAYERS = "localhost/two-layers:1"
GC_ROOT = {"containerd.io/gc.root": "1"}


def _snapshots_call(d, method, ns, **fields):
    """One Snapshots RPC (overlayfs): (response, None) or (None, (code name, details))."""
    import grpc
    from appliance._proto.containerd.api.services.snapshots.v1 import snapshots_pb2 as pb
    from appliance._proto.containerd.api.services.snapshots.v1 import snapshots_pb2_grpc
    request = getattr(pb, {"Mounts": "MountsRequest", "Remove": "RemoveSnapshotRequest"}.get(
        method, f"{method}SnapshotRequest"))(snapshotter="overlayfs", **fields)
    with grpc.insecure_channel("unix:" + d.address) as ch:
        try:
            return getattr(snapshots_pb2_grpc.SnapshotsStub(ch), method)(
                request, metadata=[("containerd-namespace", ns)], timeout=60), None
        except grpc.RpcError as err:
            return None, (err.code().name, err.details())


def _shape(d, mounts) -> list:
    """Mount descriptions with the daemon's root and snapshot ids taken out."""
    def norm(text):
        return re.sub(r"snapshots/\d+/", "snapshots/N/", text.replace(str(d.root), "ROOT"))
    return [(m.type, norm(m.source), [norm(o) for o in m.options]) for m in mounts]


def _write_through(root: Path) -> list[str]:
    """Try to change every kind of thing under `root`; what each attempt gave."""
    attempts = [("append", lambda: (root / "l1" / "file").open("ab").write(b"!")),
                ("append-shadowed", lambda: (root / "shared").open("ab").write(b"!")),
                ("chmod", lambda: os.chmod(root / "l1" / "file", 0o600)),
                ("unlink", lambda: os.unlink(root / "l1" / "gone")),
                ("create", lambda: (root / "new").write_bytes(b"new")),
                ("mkdir", lambda: os.mkdir(root / "newdir"))]
    outcomes = []
    for name, attempt in attempts:
        try:
            attempt()
            outcomes.append(f"{name}: ok")
        except OSError as exc:
            outcomes.append(f"{name}: {errno_name(exc.errno)}")
    return outcomes


def errno_name(number: int) -> str:
    import errno
    return errno.errorcode.get(number, str(number))


def test_mounts_of_committed_native_snapshot_like_containerd(ours, theirs, tmp_path):
    results = []
    for d in (ours, theirs):
        ns, native = "ro-native", ("snapshots", "--snapshotter", "native")
        d.ctr("images", "import", "--snapshotter", "native", str(anchor_image("small")),
              namespace=ns)
        r = d.ctr(*native, "mounts", str(tmp_path), BUSYBOX_CHAIN, namespace=ns, check=False)
        view = d.ctr(*native, "view", "--mounts", "look", BUSYBOX_CHAIN, namespace=ns).stdout
        d.ctr(*native, "rm", "look", namespace=ns, check=False)   # no gc.root: GC may take it
        # README's intended difference 10: native keeps a snapshot's files in snapshots/<id>/fs
        view = re.sub(r"snapshots/\d+(/fs)?\"", 'snapshots/N"', view.replace(str(d.root), "ROOT"))
        results.append((r.returncode, re.sub(r"/\d+/", "/N/", r.stderr), view))
    assert results[0] == results[1]
    assert results[0][:2] == (1, "ctr: failed to get snapshot mount: requested snapshot "
                                 f"ro-native/N/{BUSYBOX_CHAIN} not active or view: "
                                 "failed precondition\n")
    assert '"rbind",\n            "ro"' in results[0][2]


def _committed_trees(d, ns, keys, tmp_path) -> dict:
    """Each committed snapshot as a fresh view shows it."""
    from appliance.mount import TempMount
    trees = {}
    for key in keys:
        resp, err = _snapshots_call(d, "View", ns, key=f"fp-{key}", parent=key)
        assert err is None, err
        with TempMount(str(tmp_path / "fp"), resp.mounts) as path:
            trees[key] = fingerprint(path)
        _snapshots_call(d, "Remove", ns, key=f"fp-{key}")
    return trees


def test_no_mount_writes_a_committed_layer_like_containerd(ours, theirs, tmp_path):
    from appliance.mount import TempMount
    from runtime_helpers import remove_cgroup_dirs, run_flags
    ns = "ro-layers"
    image = tmp_path / "two.tar"
    image.write_bytes(oci_image([
        layer(entry("l1/", tarfile.DIRTYPE, mode=0o755), entry("l1/file", data=b"one"),
              entry("l1/gone", data=b"bye"), entry("shared", data=b"lower")),
        layer(entry("l2/", tarfile.DIRTYPE, mode=0o755), entry("l2/file", data=b"two"),
              entry("shared", data=b"upper"))], ref=TWO_LAYERS))
    seen = []
    for d in (ours, theirs):
        d.ctr("images", "import", str(image), namespace=ns)
        d.ctr("images", "import", str(anchor_image("small")), namespace=ns)
        chains = [k for k in snapshot_keys(d, ns) if k != BUSYBOX_CHAIN]
        parents = {json.loads(d.ctr("snapshots", "info", k, namespace=ns).stdout).get("Parent")
                   for k in chains}
        top = next(k for k in chains if k not in parents)
        base = next(k for k in chains if k != top)
        committed = [base, top, BUSYBOX_CHAIN]
        before = _committed_trees(d, ns, committed, tmp_path)
        answers, outcomes = {}, {}
        # Mounts of a committed snapshot is refused
        for name, key in (("base", base), ("top", top)):
            resp, err = _snapshots_call(d, "Mounts", ns, key=key)
            answers[f"mounts {name}"] = err and (err[0], re.sub(r"/\d+/", "/N/", err[1]))
            if resp is not None:    # were it handed out, write through it as a client would
                with TempMount(str(tmp_path / "w"), resp.mounts) as path:
                    outcomes[f"mounts {name}"] = _write_through(Path(path))
        # every mount an active snapshot or a view gets, from Prepare/View and from Mounts
        for method, key, parent in (("Prepare", "a-base", base), ("Prepare", "a-top", top),
                                    ("View", "v-base", base), ("View", "v-top", top)):
            resp, err = _snapshots_call(d, method, ns, key=key, parent=parent, labels=GC_ROOT)
            assert err is None, err
            again, err = _snapshots_call(d, "Mounts", ns, key=key)
            assert err is None, err
            for via, mounts in ((method, resp.mounts), ("Mounts", again.mounts)):
                answers[f"{via} {key}"] = _shape(d, mounts)
                with TempMount(str(tmp_path / "w"), mounts) as path:
                    outcomes[f"{via} {key}"] = _write_through(Path(path))
            _snapshots_call(d, "Remove", ns, key=key)
        # ctr images mount, read-only and --rw
        for flags in ((), ("--rw",)):
            target = tmp_path / "img"
            target.mkdir(exist_ok=True)
            d.ctr("images", "mount", *flags, TWO_LAYERS, str(target), namespace=ns)
            try:
                outcomes[f"images mount {flags}"] = _write_through(target)
            finally:
                d.ctr("images", "unmount", "--rm", str(target), namespace=ns)
        # a task's rootfs, from its container's snapshot
        r = d.ctr("run", "--rm", *run_flags(d.workdir), BUSYBOX, "ro-task", "sh", "-c",
                  "echo x >> /bin/busybox; rm /bin/ls; chmod 700 /bin; touch /new; echo done",
                  namespace=ns, check=False, timeout=120)
        assert (r.returncode, r.stdout) == (0, "done\n"), r.stderr
        remove_cgroup_dirs(ns)
        after = _committed_trees(d, ns, committed, tmp_path)
        for key in committed:
            assert after[key] == before[key], f"{type(d).__name__} changed committed {key}"
        seen.append((answers, outcomes))
    (ours_answers, ours_outcomes), (their_answers, their_outcomes) = seen
    assert ours_answers == their_answers
    assert ours_outcomes == their_outcomes
    assert ours_answers["mounts base"] == (
        "FAILED_PRECONDITION", f"failed to get active mount: requested snapshot {ns}/N/{base} "
        "not active or view: failed precondition")
    assert ours_outcomes["View v-top"][0] == "append: EROFS"
