"""The metadata plugin as the spine: every store built once on one database, one "changed"
hook they all call, the GC's sources and the snapshot stores owned there; the unpacker hears
from the snapshot store when a layer's snapshot is settled (no polling)."""
import gzip
import os
import io
import tarfile
import threading

import pytest
from google.protobuf import any_pb2

from appliance.core import gc
from appliance.core.content.store import LocalStore
from appliance.core.diff.unpack import Unpacker
from appliance.core.metadata.containers import Container, Runtime
from appliance.core.metadata.db import DB
from appliance.core.metadata.images import Descriptor, Image
from appliance.core.snapshots.backends import NativeBackend
from appliance.core.snapshots.store import gc_graph
from appliance.plugins.metadata import Metadata

NS = "default"
GZ = "application/vnd.oci.image.layer.v1.tar+gzip"


@pytest.fixture
def md(tmp_path):
    db = DB(str(tmp_path / "meta.db"))
    md = Metadata(db, LocalStore(str(tmp_path / "content")),
                  backends={"native": NativeBackend(str(tmp_path / "native"))})
    md.namespaces.ensure(NS)
    heard = []
    md.changed.subscribe(heard.append)
    md.heard = heard
    yield md
    db.close()


def test_every_store_calls_the_one_hook(md):
    digest = "sha256:" + "a" * 64
    md.images.create(NS, Image("img", Descriptor("application/json", digest, 1)))
    md.images.delete(NS, "img")
    assert md.heard == [False, True]
    sn = md.snapshotters["native"]
    sn.prepare(NS, "k")
    sn.commit(NS, "c", "k")
    sn.remove(NS, "c")
    assert md.heard[2:] == [False, True]
    c = Container("c1", runtime=Runtime("io.containerd.runc.v2"), spec=any_pb2.Any())
    created, deleted = [], []
    md.containers.created.subscribe(lambda ns, c: created.append((ns, c.id)))
    md.containers.deleted.subscribe(lambda ns, cid: deleted.append((ns, cid)))
    md.containers.create(NS, c)
    md.containers.delete(NS, "c1")
    assert md.heard[4:] == [True] and created == deleted == [(NS, "c1")]


def test_gc_sources_are_the_metadata_plugins(md):
    """No module-level registry: a collector marks from the list it is given."""
    assert md.gc_sources[-1] is gc_graph
    assert gc.Collector(md.db, md.gc_sources).sources == md.gc_sources
    assert gc.Collector(md.db).sources == list(gc.BUILTIN_SOURCES)   # without snapshots


def test_when_settled_fires_on_commit_and_remove(md):
    sn = md.snapshotters["native"]
    fired = []
    for key in ("k1", "k2"):
        sn.prepare(NS, key)
    sid1 = sn.backend.owns(sn.mounts(NS, "k1")[0].source)
    sid2 = sn.backend.owns(sn.mounts(NS, "k2")[0].source)
    sn.when_settled(sid1, lambda: fired.append(1))
    sn.when_settled(sid2, lambda: fired.append(2))
    assert fired == []
    sn.commit(NS, "c1", "k1")
    assert fired == [1]
    sn.remove(NS, "k2")
    assert fired == [1, 2]
    sn.when_settled(sid1, lambda: fired.append(3))   # committed already: at once
    assert fired == [1, 2, 3]


def _layer_blob(tmp_path):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("hello")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    path = tmp_path / "layer.gz"
    path.write_bytes(gzip.compress(raw.getvalue()))
    return str(path)


def test_second_unpack_of_a_layer_adopts_the_first_once_committed(md, tmp_path):
    """The second Apply waits for the first's snapshot; the commit releases it at once."""
    sn = md.snapshotters["native"]
    unpacker = Unpacker(md.snapshotters, str(tmp_path / "tmpmounts"))
    blob = _layer_blob(tmp_path)
    first, second = sn.prepare(NS, "k1"), sn.prepare(NS, "k2")
    applied = unpacker.apply(blob, GZ, "sha256:l", first)
    assert len(unpacker._inflight) == 1    # held until k1 is committed or removed
    results = []
    waiter = threading.Thread(target=lambda: results.append(
        unpacker.apply(blob, GZ, "sha256:l", second)))
    waiter.start()
    sn.commit(NS, "c1", "k1")
    # released by the commit itself, not a poller; kept a while for a late twin's Apply
    assert [(e.done.is_set(), e.settled_at > 0) for e in unpacker._inflight.values()] == \
        [(True, True)]
    waiter.join(30)
    assert results == [applied]
    with pytest.raises(Exception, match="was not unpacked"):   # k2 adopted k1's layer
        md.snapshotters["native"].remove(NS, "c1")
        sn.commit(NS, "c2", "k2")


def test_a_late_apply_adopts_a_committed_extraction_only_in_its_namespace(md, tmp_path):
    """A client that looked for the layer's snapshot just before the first commit applies
    it again: the committed extraction is adopted in the same namespace, not in another."""
    sn = md.snapshotters["native"]
    unpacker = Unpacker(md.snapshotters, str(tmp_path / "tmpmounts"))
    blob = _layer_blob(tmp_path)
    applied = unpacker.apply(blob, GZ, "sha256:l", sn.prepare(NS, "k1"))
    sn.commit(NS, "c1", "k1")
    late = sn.prepare(NS, "k2")
    assert unpacker.apply(blob, GZ, "sha256:l", late) == applied
    assert not any(os.scandir(late[0].source))          # adopted: nothing written again
    other = sn.prepare("other-ns", "k3")
    assert unpacker.apply(blob, GZ, "sha256:l", other) == applied
    assert any(os.scandir(other[0].source))             # another namespace: extracted


def test_a_namespace_in_use_names_what_it_still_has_in_containerds_order(md):
    """The tables that keep a namespace are the namespace store's own list (no registry that
    other modules fill as they are imported), in containerd's order."""
    from appliance.errdefs import FailedPrecondition
    md.snapshotters["native"].prepare(NS, "k")
    md.containers.create(NS, Container("c1", runtime=Runtime("io.containerd.runc.v2"),
                                       spec=any_pb2.Any()))
    md.images.create(NS, Image("img", Descriptor("application/json", "sha256:" + "a" * 64, 1)))
    with pytest.raises(FailedPrecondition, match="still has images, containers, snapshots$"):
        md.namespaces.delete(NS)
