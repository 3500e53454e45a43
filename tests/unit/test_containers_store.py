"""The container store keeps Container objects (not API messages) over the same row format;
the update mask is the helper every store shares."""
import threading

import pytest
from google.protobuf import any_pb2

from appliance.core.metadata.containers import Container, ContainerStore, Runtime, pb, to_pb
from appliance.core.metadata.db import DB, apply_mask
from appliance.errdefs import InvalidArgument

NS = "default"


@pytest.fixture
def store(tmp_path):
    db = DB(str(tmp_path / "meta.db"))
    yield ContainerStore(db)
    db.close()


def spec(value=b"{}"):
    return any_pb2.Any(type_url="types.containerd.io/opencontainers/runtime-spec/1/Spec",
                       value=value)


def test_create_get_and_the_row_is_containerds_message(store):
    c = Container("c1", {"a": "1"}, "img", Runtime("io.containerd.runc.v2", any_pb2.Any(
        type_url="opts", value=b"o")), spec(), "native", "key",
        {"x": any_pb2.Any(type_url="ext", value=b"v")})
    created = store.create(NS, c)
    assert isinstance(created, Container) and created.created_at > 0
    got = store.get(NS, "c1")
    assert got == created and got.runtime.options.value == b"o"
    with store.db.read() as conn:
        blob = conn.execute("SELECT data FROM containers").fetchone()[0]
    expected = to_pb(got, with_times=False)
    expected.labels.clear()
    assert pb.Container.FromString(blob) == expected
    assert store.list(NS) == [got]


def test_update_mask_over_domain_objects(store):
    store.create(NS, Container("c1", {"a": "1", "b": "2"}, "img", Runtime("rt"), spec(),
                               extensions={"x": any_pb2.Any(value=b"v"),
                                           "y": any_pb2.Any(value=b"w")}))
    change = Container("c1", {"b": ""}, "new-img", Runtime("rt"), spec(b"[]"))
    updated = store.update(NS, change, ["labels.b", "extensions.x", "image"])
    assert updated.labels == {"a": "1", "b": ""}        # the answer keeps the emptied label
    assert store.get(NS, "c1").labels == {"a": "1"}     # the record does not
    assert set(updated.extensions) == {"y"} and updated.image == "new-img"
    assert updated.spec.value == b"{}"                   # not in the mask
    with pytest.raises(InvalidArgument, match="cannot update \"runtime\" field on \"c1\""):
        store.update(NS, change, ["runtime"])


def test_apply_mask_maps_fields_and_errors():
    labels, fields = {"a": "1", "b": "2"}, {}
    apply_mask(["labels.a", "labels.c", "labels.b"], "thing",
               maps={"labels": (labels, {"a": "", "c": "3"}, True)})
    assert labels == {"c": "3"}     # emptied and missing keys go (drop_empty)
    apply_mask(["labels"], "thing", maps={"labels": (labels, {"z": ""}, True)},
               fields={"name": lambda: fields.setdefault("name", "x")})
    assert labels == {"z": ""}
    apply_mask(["name"], "thing", fields={"name": lambda: fields.setdefault("name", "x")})
    assert fields == {"name": "x"}
    with pytest.raises(InvalidArgument, match='cannot update "other" field on thing'):
        apply_mask(["other"], "thing", maps={"labels": (labels, {}, True)})


def test_get_reads_the_database_once_and_sees_every_change(store):
    """A container read again comes from memory (no query); an update, a delete and a
    create of the same id are seen at once; a read while a write is open is not kept."""
    store.create(NS, Container("c1", {"a": "1"}, "img", Runtime("io.containerd.runc.v2"),
                               spec(), "native", "key"))
    queries = []
    store.get(NS, "c1")
    store.db._reader().set_trace_callback(queries.append)
    first, second = store.get(NS, "c1"), store.get(NS, "c1")
    assert queries == [] and first == second and first is not second
    first.labels["mutated"] = "by a caller"
    assert store.get(NS, "c1").labels == {"a": "1"}

    store.update(NS, Container("c1", {"a": "2"}, runtime=Runtime("io.containerd.runc.v2"),
                               snapshotter="native"), ["labels.a"])
    assert store.get(NS, "c1").labels == {"a": "2"}
    store.delete(NS, "c1")
    with pytest.raises(Exception, match="not found"):
        store.get(NS, "c1")
    store.create(NS, Container("c1", {"b": "3"}, "img2", Runtime("io.containerd.runc.v2"),
                               spec(), "native", "key"))
    assert store.get(NS, "c1").image == "img2"

    store._rows.clear()
    with store.db.write():   # read as another thread would while this write is open
        store.db._writer = -1
        store.get(NS, "c1")
        store.db._writer = threading.get_ident()
    assert (NS, "c1") not in store._rows
    store.get(NS, "c1")
    assert (NS, "c1") in store._rows


def test_list_reads_the_database_once_and_sees_every_change(store):
    """A namespace's list comes from memory while nothing changed in it (Containers.List is
    what clients poll); a create, an update and a delete in that namespace are seen at once,
    other namespaces keep theirs; a list read while a write is open is not kept."""
    def ids():
        return [(c.id, c.labels.get("a")) for c in store.list(NS)]
    assert ids() == []
    store.create(NS, Container("c1", {"a": "1"}, "img", Runtime("io.containerd.runc.v2"),
                               spec(), "native", "key"))
    assert ids() == [("c1", "1")]
    queries = []
    store.db._reader().set_trace_callback(queries.append)
    first, second = store.list(NS), store.list(NS)
    assert queries == [] and first == second and first[0] is not second[0]
    first[0].labels["mutated"] = "by a caller"
    assert store.list(NS)[0].labels == {"a": "1"}
    store.db._reader().set_trace_callback(None)

    store.create(NS, Container("c0", {"a": "0"}, "img", Runtime("io.containerd.runc.v2"),
                               spec(), "native", "key0"))
    assert ids() == [("c0", "0"), ("c1", "1")]
    store.update(NS, Container("c1", {"a": "2"}, runtime=Runtime("io.containerd.runc.v2"),
                               snapshotter="native"), ["labels.a"])
    assert ids() == [("c0", "0"), ("c1", "2")]
    store.list("other")
    store.delete(NS, "c0")
    assert ids() == [("c1", "2")] and "other" in store._lists

    store._lists.clear()
    with store.db.write():   # read as another thread would while this write is open
        store.db._writer = -1
        store.list(NS)
        store.db._writer = threading.get_ident()
    assert NS not in store._lists
    store.list(NS)
    assert NS in store._lists


def test_get_into_and_message_are_gets_record(store):
    """Containers.Get fills its response from the stored row, Tasks.Create reads the stored
    message: the same fields as the Container that get builds."""
    c = Container("c1", {"a": "1"}, "img", Runtime("io.containerd.runc.v2", any_pb2.Any(
        type_url="opts", value=b"o")), spec(b'{"x": 1}'), "native", "key",
        {"x": any_pb2.Any(type_url="ext", value=b"v")}, "sb")
    store.create(NS, c)
    for _ in range(2):   # read, then from memory
        out = pb.GetContainerResponse()
        store.get_into(NS, "c1", out.container)
        assert out.container == to_pb(store.get(NS, "c1"))
        msg = store.message(NS, "c1")
        assert (msg.spec, msg.runtime, msg.snapshot_key) == (c.spec, to_pb(c).runtime, "key")
    with pytest.raises(Exception, match="not found"):
        store.get_into(NS, "c2", pb.GetContainerResponse().container)


def test_require_answers_from_memory(store):
    store.create(NS, Container("c1", runtime=Runtime("io.containerd.runc.v2"), spec=spec()))
    store.get(NS, "c1")
    queries = []
    store.db._reader().set_trace_callback(queries.append)
    store.require(NS, "c1")
    assert queries == []
    store.delete(NS, "c1")
    with pytest.raises(Exception, match="not found"):
        store.require(NS, "c1")


def test_list_into_is_lists_records(store):
    """Containers.List without filters fills its response from the stored rows: the same
    messages, in the same order, as list's Containers converted."""
    for cid in ("b", "a"):
        store.create(NS, Container(cid, {"k": cid}, "img", Runtime("io.containerd.runc.v2"),
                                   spec(b'{"id": "%s"}' % cid.encode()), "native", cid))
    for _ in range(2):   # read, then from memory
        out = pb.ListContainersResponse()
        store.list_into(NS, out.containers)
        assert list(out.containers) == [to_pb(c) for c in store.list(NS)]
        assert [c.id for c in out.containers] == ["a", "b"]
    out = pb.ListContainersResponse()
    store.list_into("other", out.containers)
    assert len(out.containers) == 0
