"""GC mark on plain data, and collections over a real sqlite database and blob store."""
import hashlib
import os

import pytest

from appliance.core import gc
from appliance.core.content.store import LocalStore
from appliance.core.metadata.content import ContentStore, register_gc
from appliance.core.metadata.db import DB
from appliance.core.metadata.images import Descriptor, Image, ImageStore
from appliance.core.metadata.leases import LeaseStore
from appliance.errdefs import AlreadyExists

NS = "default"
REF = gc.LABEL_REF_CONTENT


def C(d, ns=NS):
    return ("content", ns, d)


# --- mark: pure ------------------------------------------------------------------------

def test_mark_follows_labels_and_edges():
    graph = gc.Graph(
        roots=[(("image", NS, "img"), True)],
        edges={("image", NS, "img"): [C("m")]},
        labels={C("m"): {f"{REF}.config": "c", f"{REF}.l.0": "l0",
                         "containerd.io/gc.ref.snapshot.overlayfs": "chain1"},
                C("c"): {}, C("orphan"): {f"{REF}.x": "m"}})
    live = gc.mark(graph)
    assert live == {("image", NS, "img"), C("m"), C("c"), C("l0"),
                    ("snapshot", NS, "overlayfs/chain1")}
    assert C("orphan") not in live   # references from dead objects do not count


def test_mark_is_namespaced_and_survives_cycles():
    graph = gc.Graph(roots=[(C("a", "ns1"), True)],
                     labels={C("a", "ns1"): {REF: "b"}, C("b", "ns1"): {REF: "a"},
                             C("a", "ns2"): {REF: "b"}})
    assert gc.mark(graph) == {C("a", "ns1"), C("b", "ns1")}


def test_flat_lease_keeps_resources_but_not_their_children():
    labels = {C("m"): {f"{REF}.l.0": "layer"}}
    deep = gc.lease_graph(NS, "l1", {}, [("content", "m")], now_ns=0)
    flat = gc.lease_graph(NS, "l1", {gc.LABEL_FLAT: "x"}, [("content", "m")], now_ns=0)
    assert C("layer") in gc.mark(gc.Graph(deep.roots, labels))
    live = gc.mark(gc.Graph(flat.roots, labels))
    assert C("m") in live and C("layer") not in live


def test_expired_lease_is_no_root():
    resources = [("content", "d"), ("ingests", "r"), ("snapshots/overlayfs", "k")]
    now = gc.parse_expiry("2026-01-01T00:00:00Z")
    live_lease = gc.lease_graph(NS, "l", {gc.LABEL_EXPIRE: "2026-01-01T00:00:01.5Z"},
                                resources, now)
    assert {n for n, _ in live_lease.roots} == {
        ("lease", NS, "l"), C("d"), ("ingest", NS, "r"), ("snapshot", NS, "overlayfs/k")}
    expired = gc.lease_graph(NS, "l", {gc.LABEL_EXPIRE: "2025-12-31T23:59:59Z"}, resources, now)
    assert expired.roots == []


def test_parse_expiry_handles_nanoseconds_and_offsets():
    assert gc.parse_expiry("1970-01-01T00:00:01.000000002Z") == 1_000_000_002
    assert gc.parse_expiry("1970-01-01T01:00:00+01:00") == 0
    assert gc.parse_expiry("not a time") is None


def test_label_refs():
    refs = gc.label_refs("n", {"containerd.io/gc.ref.content": "a",
                               "containerd.io/gc.ref.content.m.1": "b",
                               "containerd.io/gc.ref.snapshot.native/1": "k",
                               "containerd.io/gc.ref.snapshot.": "ignored",
                               "other": "c"})
    assert sorted(refs) == [("content", "n", "a"), ("content", "n", "b"),
                            ("snapshot", "n", "native/k")]


# --- collections over sqlite and the blob store ---------------------------------------------

@pytest.fixture
def world(tmp_path):
    db = DB(str(tmp_path / "meta.db"))
    db._conn.execute("INSERT INTO namespaces VALUES (?,0,0)", (NS,))
    blobs = LocalStore(str(tmp_path / "content"))
    content = ContentStore(db, blobs)
    collector = gc.Collector(db)
    register_gc(collector, content)
    yield db, blobs, content, ImageStore(db), collector
    db.close()


def ingest(content, data, ref=None, labels=None, lease=None):
    dgst = "sha256:" + hashlib.sha256(data).hexdigest()
    w = content.writer(NS, ref or dgst, dgst, len(data), lease=lease)
    try:
        w.write(data)
        return w.commit(len(data), dgst, labels)
    finally:
        w.close()


def test_collection_keeps_what_an_image_reaches(world):
    db, blobs, content, images, collector = world
    layer = ingest(content, b"layer")
    config = ingest(content, b"config")
    manifest = ingest(content, b"manifest", labels={f"{REF}.l.0": layer, f"{REF}.config": config})
    junk = ingest(content, b"junk")
    images.create(NS, Image("img", Descriptor("application/x", manifest, 8)))
    stats = collector.collect()
    assert stats.removed["content"] == 1
    assert not blobs.exists(junk) and all(blobs.exists(d) for d in (layer, config, manifest))
    images.delete(NS, "img")
    collector.collect()
    assert list(blobs.walk()) == [] and content.list(NS) == []


def test_collections_trim_the_heap_at_most_once_per_interval(world, monkeypatch):
    """malloc_trim after every collection (nearly every container deleted) cost page faults
    for the next container; one trim per gc.TRIM_INTERVAL is enough."""
    from appliance.process import memory
    collector = world[-1]
    trims = []
    monkeypatch.setattr(memory, "trim", lambda collect=False: trims.append(collect))
    for _ in range(3):
        collector.collect()
    assert trims == [False]
    monkeypatch.setattr(gc, "TRIM_INTERVAL", 0.0)
    collector.collect()
    assert trims == [False, False]


def test_blob_shared_by_namespaces_stays_until_the_last_goes(world):
    db, blobs, content, images, collector = world
    dgst = ingest(content, b"shared")
    # another namespace writes the same bytes: no data moves, the blob is recorded there
    w = content.writer("other", "r", dgst, 6)
    assert w.status().offset == 6
    w.commit(6, dgst)
    w.close()
    content.delete(NS, dgst)
    content.update("other", dgst, {gc.LABEL_ROOT: "x"}, ["labels"])
    collector.collect()
    assert blobs.exists(dgst)
    content.update("other", dgst, {}, ["labels"])
    collector.collect()
    assert not blobs.exists(dgst)


def test_reingest_while_collection_pending_is_not_lost(world):
    """containerd 1.6 answers "already exists" and then collects the blob: we keep it."""
    db, blobs, content, images, collector = world
    dgst = ingest(content, b"payload", labels={gc.LABEL_ROOT: "x"})
    content.delete(NS, dgst)            # the blob file waits for the next collection
    assert blobs.exists(dgst)
    ingest(content, b"payload", labels={gc.LABEL_ROOT: "x"})   # re-ingested meanwhile
    collector.collect()
    assert blobs.exists(dgst) and content.info(NS, dgst).size == 7
    with content.reader(NS, dgst) as f:
        assert f.read() == b"payload"


def test_a_collection_between_a_blobs_install_and_its_record_keeps_it(world, monkeypatch):
    """A commit moves the blob into place (fsynced) before the transaction that records it,
    outside the database lock: a collection in between leaves it alone."""
    from appliance.core.metadata.content import NamespacedWriter
    db, blobs, content, images, collector = world
    record = NamespacedWriter._record

    def collect_first(self, *args):
        assert blobs.exists(args[0])
        collector.collect()
        return record(self, *args)
    monkeypatch.setattr(NamespacedWriter, "_record", collect_first)
    dgst = ingest(content, b"installed", labels={gc.LABEL_ROOT: "x"})
    assert blobs.exists(dgst) and content.info(NS, dgst).size == 9
    monkeypatch.setattr(NamespacedWriter, "_record", record)
    content.delete(NS, dgst)            # the blob file waits for the next collection
    with blobs.installing(dgst):
        collector.collect()
    assert blobs.exists(dgst)
    collector.collect()
    assert not blobs.exists(dgst)


def test_leases_protect_content_and_ingests(world):
    db, blobs, content, images, collector = world
    leases = LeaseStore(db)
    leases.create(NS, "pull", {})
    dgst = ingest(content, b"fetched", lease="pull")
    w = content.writer(NS, "half", "", 0, lease="pull")
    w.write(b"partial")
    w.close()
    collector.collect()
    assert blobs.exists(dgst) and [s.ref for s in content.list_statuses(NS)] == ["half"]
    leases.delete(NS, "pull")
    collector.collect()
    assert not blobs.exists(dgst)   # the lease held the ingest, which goes with it
    assert content.list_statuses(NS) == [] and os.listdir(blobs.ingests) == []


def test_unleased_ingest_expires_after_a_day(world):
    db, blobs, content, images, collector = world
    w = content.writer(NS, "half", "", 0)
    w.write(b"partial")
    w.close()
    collector.collect()
    assert [s.offset for s in content.list_statuses(NS)] == [7]
    collector.collect(now_ns=2**62)
    assert content.list_statuses(NS) == [] and os.listdir(blobs.ingests) == []


def test_expired_lease_is_removed(world):
    db, blobs, content, images, collector = world
    leases = LeaseStore(db)
    leases.create(NS, "old", {gc.LABEL_EXPIRE: "2000-01-01T00:00:00Z"})
    leases.create(NS, "new", {})
    stats = collector.collect()
    assert stats.removed["lease"] == 1 and [lease.id for lease in leases.list(NS)] == ["new"]


def test_existing_content_is_already_exists(world):
    db, blobs, content, images, collector = world
    dgst = ingest(content, b"x")
    with pytest.raises(AlreadyExists):
        content.writer(NS, "again", dgst, 1)


def test_already_existing_content_joins_the_writers_lease(world):
    """As containerd: a pull that finds a blob already there holds it by its lease, so the
    image it is about to create cannot lose it to a collection meanwhile."""
    db, blobs, content, images, collector = world
    leases = LeaseStore(db)
    leases.create(NS, "pull", {})
    dgst = ingest(content, b"config")   # unreferenced: the next collection takes it
    with pytest.raises(AlreadyExists):
        content.writer(NS, "again", dgst, 6, lease="pull")
    collector.collect()
    assert blobs.exists(dgst) and content.info(NS, dgst).size == 6
    assert content.list_statuses(NS) == []
    leases.delete(NS, "pull")
    collector.collect()
    assert not blobs.exists(dgst)


def test_collectibles_registry_lets_other_kinds_join(world):
    db, blobs, content, images, collector = world
    swept = []
    collector.register_collectible("snapshot", lambda conn: [("snapshot", NS, "native/a"),
                                                             ("snapshot", NS, "native/b")],
                                   lambda conn, dead: swept.extend(dead) or len(dead))
    ingest(content, b"keep", labels={gc.LABEL_ROOT: "1",
                                     "containerd.io/gc.ref.snapshot.native": "a"})
    collector.collect()
    assert swept == [("snapshot", NS, "native/b")]


def test_containers_keep_their_snapshot_and_labelled_content(world):
    db, blobs, content, images, collector = world
    kept = ingest(content, b"spec-ref")
    junk = ingest(content, b"junk")
    with db.write() as tx:
        tx.execute("INSERT INTO containers (namespace, id, image, runtime, snapshotter, "
                   "snapshot_key, data, created_at, updated_at) VALUES (?,?,?,?,?,?,?,0,0)",
                   (NS, "c1", "", "io.containerd.runc.v2", "overlayfs", "c1-snap", b""))
        DB.set_labels(tx, NS, "container", "c1", {f"{REF}.x": kept})
    swept = []
    collector.register_collectible("snapshot", lambda conn: [("snapshot", NS, "overlayfs/c1-snap"),
                                                             ("snapshot", NS, "overlayfs/old")],
                                   lambda conn, dead: swept.extend(dead) or len(dead))
    collector.collect()
    assert blobs.exists(kept) and not blobs.exists(junk)
    assert swept == [("snapshot", NS, "overlayfs/old")]


def test_cached_records_and_small_blobs_follow_every_change(world):
    """Info and small blobs are answered from memory after the first read (issue 24);
    updates, deletes, collections and re-ingests are seen at once all the same."""
    from appliance.errdefs import NotFound
    db, blobs, content, images, collector = world
    dgst = ingest(content, b"manifest", labels={gc.LABEL_ROOT: "x"})
    assert content.info(NS, dgst).labels == {gc.LABEL_ROOT: "x"}
    assert content.small_blob(NS, dgst) == b"manifest"
    content.info(NS, dgst).labels["mutated"] = "by a caller"   # a copy each time
    assert content.info(NS, dgst).labels == {gc.LABEL_ROOT: "x"}
    updated = content.update(NS, dgst, {gc.LABEL_ROOT: "y", "a": "b"}, [])
    assert content.info(NS, dgst) == updated and updated.labels["a"] == "b"
    with pytest.raises(NotFound):
        content.info("other", dgst)            # another namespace does not see it
    with pytest.raises(NotFound):
        content.small_blob("other", dgst)
    content.delete(NS, dgst)
    with pytest.raises(NotFound):
        content.info(NS, dgst)
    with pytest.raises(NotFound):
        content.small_blob(NS, dgst)
    again = ingest(content, b"manifest")       # unreferenced: the next collection takes it
    assert content.info(NS, again).labels == {} and content.small_blob(NS, again) == b"manifest"
    collector.collect()
    assert not blobs.exists(dgst)
    with pytest.raises(NotFound):
        content.info(NS, dgst)
    big = ingest(content, os.urandom(100_000))
    assert content.small_blob(NS, big) is None and content.info(NS, big).size == 100_000


def test_a_record_read_outside_any_write_is_cached_and_none_read_during_one(world):
    """Info is kept in memory once read while no write was open (reads never wait for
    writes, so one that overlaps a write may see the data it is changing: not kept)."""
    db, blobs, content, images, collector = world
    dgst = ingest(content, b"config")
    content.forget(NS, dgst)
    with db.write():                     # a write open meanwhile: not kept
        content.info(NS, dgst)
    assert (NS, dgst) not in content._infos
    content.info(NS, dgst)
    assert (NS, dgst) in content._infos


def test_record_is_infos_record_without_a_copy(world):
    """Content.Info fills its response from the kept record itself (no copy per call); it
    is info's record and follows every change as info does."""
    db, blobs, content, images, collector = world
    dgst = ingest(content, b"index", labels={"a": "1"})
    first = content.record(NS, dgst)
    assert content.record(NS, dgst) is first and content.info(NS, dgst) == first
    content.update(NS, dgst, {"a": "2"}, [])
    assert content.record(NS, dgst).labels == {"a": "2"} and first.labels == {"a": "1"}


def test_an_image_read_again_comes_from_memory_and_follows_every_change(world):
    """Images.Get (once a `ctr run`, kubelet's ImageStatus polls) from memory after the
    first read; create, update and delete are seen at once; a read during a write is not
    kept; each get hands out its own copy."""
    import threading
    from appliance.errdefs import NotFound
    db, blobs, content, images, collector = world
    target = Descriptor("application/vnd.oci.image.index.v1+json", "sha256:" + "a" * 64, 10,
                        {"x": "1"})
    images.create(NS, Image("img", target, {"l": "1"}))
    first = images.get(NS, "img")
    queries = []
    db._reader().set_trace_callback(queries.append)
    again = images.get(NS, "img")
    assert queries == [] and again == first and again is not first
    again.labels["mutated"] = "by a caller"
    again.target.annotations["mutated"] = "too"
    assert images.get(NS, "img") == first
    db._reader().set_trace_callback(None)
    images.update(NS, Image("img", target, {"l": "2"}), ["labels.l"])
    assert images.get(NS, "img").labels == {"l": "2"}
    images.delete(NS, "img")
    with pytest.raises(NotFound):
        images.get(NS, "img")
    images.create(NS, Image("img", target, {"l": "3"}))
    images._kept.clear()
    with db.write():   # read as another thread would while this write is open
        db._writer = -1
        images.get(NS, "img")
        db._writer = threading.get_ident()
    assert (NS, "img") not in images._kept
    assert images.get(NS, "img").labels == {"l": "3"} and (NS, "img") in images._kept
