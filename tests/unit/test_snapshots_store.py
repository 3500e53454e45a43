"""Namespaced snapshot metadata over the overlay and native backends (real sqlite, real dirs)."""
import os
import re

import pytest

from appliance.core.metadata.db import DB
from appliance.core.snapshots.backends import NativeBackend, OverlayBackend
from appliance.core.snapshots.store import Snapshotter
from appliance.errdefs import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound


@pytest.fixture(params=[OverlayBackend, NativeBackend])
def sn(request, tmp_path):
    db = DB(str(tmp_path / "meta.db"))
    yield Snapshotter(db, request.param(str(tmp_path / request.param.name)))
    db.close()


def test_prepare_commit_chain_and_mounts(sn):
    mounts = sn.prepare("ns", "k1")
    assert mounts[0].type == "bind" and "rw" in mounts[0].options
    upper = mounts[0].source
    with open(os.path.join(upper, "a"), "w") as f:
        f.write("x" * 5000)
    sn.commit("ns", "c1", "k1", labels={"l": "v"})
    info = sn.stat("ns", "c1")
    assert (info.kind, info.parent, info.labels) == ("committed", "", {"l": "v"})
    size, inodes = sn.usage("ns", "c1")
    assert size >= 5000 and inodes == 2
    with sn.db.read() as conn:   # measured on the first request, then recorded
        assert tuple(conn.execute("SELECT size, inodes FROM snapshots WHERE key='c1'").fetchone()) \
            == (size, inodes)
    assert sn.usage("ns", "c1") == (size, inodes)
    child = sn.prepare("ns", "k2", "c1")
    if isinstance(sn.backend, OverlayBackend):
        opts = child[0].options
        assert child[0].type == "overlay" and "index=off" in opts
        assert f"lowerdir={upper}" in opts
    else:  # native copies the parent
        assert open(os.path.join(child[0].source, "a")).read() == "x" * 5000
    assert [i.name for i in sn.list("ns")] == ["c1", "k2"]
    assert [i.name for i in sn.list("ns", ["kind==active"])] == ["k2"]
    assert sn.list("other") == []
    with pytest.raises(FailedPrecondition):
        sn.remove("ns", "c1")
    with pytest.raises(AlreadyExists):
        sn.prepare("ns", "k2", "c1")
    with pytest.raises(NotFound, match="parent snapshot nope does not exist"):
        sn.prepare("ns", "k3", "nope")
    with pytest.raises(FailedPrecondition, match="is not active"):
        sn.commit("ns", "c2", "c1")
    sn.remove("ns", "k2")
    sn.remove("ns", "c1")
    assert sn.list("ns") == []
    assert sn.backend.trash.settle()   # directories are removed in the background
    assert os.listdir(sn.backend.snapshots) == []


def test_commit_onto_puts_a_parentless_snapshot_on_its_committed_parent(sn):
    """A layer unpacked before its parent was committed: one transaction makes it the
    parent's committed child, after `rebase` saw the mounts it has on that parent."""
    base = sn.prepare("ns", "base-key")[0].source
    detached = sn.prepare("ns", "detached")[0].source
    with open(os.path.join(detached, "f"), "w") as f:
        f.write("layer")
    with pytest.raises(InvalidArgument, match="not committed"):
        sn.commit_onto("ns", "c2", "detached", "base-key", lambda mounts: None)
    sn.commit("ns", "c1", "base-key")
    seen = []
    sn.commit_onto("ns", "c2", "detached", "c1", seen.append, labels={"l": "v"})
    info = sn.stat("ns", "c2")
    assert (info.kind, info.parent, info.labels) == ("committed", "c1", {"l": "v"})
    assert [i.name for i in sn.list("ns")] == ["c1", "c2"]
    child = sn.prepare("ns", "k3", "c2")
    if isinstance(sn.backend, OverlayBackend):   # the files stay where they were
        assert seen[0][0].type == "overlay" and f"upperdir={detached}" in seen[0][0].options
        assert f"lowerdir={base}" in seen[0][0].options
        assert f"lowerdir={detached}:{base}" in child[0].options
    else:  # native copies the parent
        assert open(os.path.join(child[0].source, "f")).read() == "layer"
    sn.prepare("ns", "child")
    sn.prepare("ns", "other", "c1")
    with pytest.raises(AlreadyExists):
        sn.commit_onto("ns", "c2", "child", "c1", seen.append)
    with pytest.raises(FailedPrecondition, match="not a parentless active"):
        sn.commit_onto("ns", "c3", "other", "c1", seen.append)
    with pytest.raises(FailedPrecondition, match="not a parentless active"):
        sn.commit_onto("ns", "c3", "c1", "c2", seen.append)
    assert len(seen) == 1


def test_view_and_update_labels(sn):
    sn.prepare("ns", "k1")
    sn.commit("ns", "c1", "k1")
    m = sn.view("ns", "v", "c1")
    assert m[0].type == "bind" and "ro" in m[0].options
    info = sn.update("ns", "v", {"a": "1", "b": "2"}, [])
    assert info.labels == {"a": "1", "b": "2"} and info.kind == "view"
    info = sn.update("ns", "v", {"a": ""}, ["labels.a"])
    assert info.labels == {"b": "2"}


def _directory(sn, ns, key) -> str:
    """The backend directory of snapshot `key`."""
    with sn.db.read() as conn:
        sid, = conn.execute("SELECT id FROM snapshots WHERE snapshotter=? AND namespace=? "
                            "AND key=?", (sn.name, ns, key)).fetchone()
    return sn.backend.fs(sid)


def test_committed_snapshots_have_no_mounts(sn):
    """A committed snapshot is shared by its children: Mounts refuses it, as
    containerd does, and no mount handed out makes committed data writable."""
    sn.prepare("ns", "k1")
    sn.commit("ns", "c1", "k1")
    sn.prepare("ns", "k2", "c1")
    sn.commit("ns", "c2", "k2")
    prefix = "active" if isinstance(sn.backend, OverlayBackend) else "snapshot"
    for key in ("c1", "c2"):
        with pytest.raises(FailedPrecondition) as err:
            sn.mounts("ns", key)
        assert re.fullmatch(rf"failed to get {prefix} mount: requested snapshot ns/\d+/{key} "
                            "not active or view: failed precondition", err.value.message)
    committed = {_directory(sn, "ns", key) for key in ("c1", "c2")}
    handed_out = [sn.prepare("ns", "a0"), sn.prepare("ns", "a1", "c1"), sn.prepare("ns", "a2", "c2"),
                  sn.view("ns", "v0"), sn.view("ns", "v1", "c1"), sn.view("ns", "v2", "c2")]
    handed_out += [sn.mounts("ns", key) for key in ("a0", "a1", "a2", "v0", "v1", "v2")]
    for mounts in handed_out:
        for m in mounts:
            if m.type == "bind" and m.source in committed:
                assert "ro" in m.options and "rw" not in m.options, m
            upper = [o for o in m.options if o.startswith("upperdir=")]
            assert not upper or upper[0][len("upperdir="):] not in committed, m


def test_cleanup_removes_orphan_directories(sn):
    sn.prepare("ns", "k1")
    os.makedirs(os.path.join(sn.backend.snapshots, "new-123", "fs"))
    os.makedirs(os.path.join(sn.backend.snapshots, "999", "fs"))
    removed = sn.cleanup()
    assert sorted(os.path.basename(p) for p in removed) == ["999", "new-123"]
    assert os.listdir(sn.backend.snapshots) == ["1"]


def test_deep_chain_mounts_beyond_one_page(tmp_path):
    """70 layers under a long root: the lowerdir list passes a page; the temp mount still works."""
    from appliance import mount as mountlib
    root = tmp_path / ("long-directory-name-" * 4)
    db = DB(str(tmp_path / "meta.db"))
    sn = Snapshotter(db, OverlayBackend(str(root)))
    parent = ""
    for i in range(70):
        m = sn.prepare("ns", f"k{i}", parent)
        upper = m[0].source if m[0].type == "bind" else \
            [o for o in m[0].options if o.startswith("upperdir=")][0][len("upperdir="):]
        with open(os.path.join(upper, f"f{i}"), "w") as f:
            f.write(str(i))
        sn.commit("ns", f"c{i}", f"k{i}")
        parent = f"c{i}"
    mounts = sn.view("ns", "v", parent)
    assert len(",".join(mounts[0].options)) > mountlib.PAGE_SIZE
    with mountlib.TempMount(str(tmp_path / "tmpmounts"), mounts) as target:
        assert sorted(os.listdir(target)) == sorted(f"f{i}" for i in range(70))
        assert open(os.path.join(target, "f0")).read() == "0"
    assert os.listdir(tmp_path / "tmpmounts") == []
    db.close()
