"""The namespace store keeps what every namespaced write checks (the namespace exists) and
what ctr asks twice a run (its labels) in memory, by the container store's rule: dropped
inside every write that changes them, kept only when read while no write was open."""
import threading

import pytest

from appliance.core.metadata.db import DB
from appliance.core.metadata.namespaces import NamespaceStore


@pytest.fixture
def store(tmp_path):
    db = DB(str(tmp_path / "meta.db"))
    yield NamespaceStore(db)
    db.close()


def reads(store):
    queries = []
    store.db._reader().set_trace_callback(queries.append)
    return queries


def test_ensure_reads_once_and_sees_a_delete(store):
    store.ensure("a")
    store.ensure("a")          # read and kept
    queries = reads(store)
    store.ensure("a")
    assert queries == [] and store.list() == ["a"]
    store.delete("a")
    store.ensure("a")          # created again, not taken from memory
    assert store.list() == ["a"]

    store.db._reader().set_trace_callback(None)
    store.delete("a")
    store.create("a", {})
    with store.db.write():     # read as another thread would while this write is open
        store.db._writer = -1
        store.ensure("a")
        store.db._writer = threading.get_ident()
    assert "a" not in store._known
    store.ensure("a")
    assert "a" in store._known


def test_labels_read_once_and_see_every_change(store):
    assert store.labels("a") == {}   # none for a namespace that does not exist
    store.create("a", {"x": "1"})
    assert store.labels("a") == {"x": "1"}
    queries = reads(store)
    first, second = store.labels("a"), store.labels("a")
    assert queries == [] and first == second == {"x": "1"}
    first["mutated"] = "by a caller"
    assert store.labels("a") == {"x": "1"}
    store.db._reader().set_trace_callback(None)

    assert store.update("a", {"x": "2", "y": "3"}, []) == {"x": "2", "y": "3"}
    assert store.labels("a") == {"x": "2", "y": "3"}
    store.delete("a")
    assert store.labels("a") == {}
    store.update("a", {"z": "4"}, [])     # an update creates it
    assert store.labels("a") == {"z": "4"}



def test_ensure_keeps_no_namespace_deleted_after_its_check(store):
    """A delete that runs between ensure's epoch check and its keeping (another thread,
    interleaved there): the namespace is not kept as existing, the next ensure makes it."""
    store.create("gone", {})

    class Interleaved(set):
        def add(self, name):   # ensure keeps the name here, after its check
            if store.list() == ["gone"]:
                store.delete("gone")
            super().add(name)

    store._known = Interleaved()
    store.ensure("gone")
    store.ensure("gone")
    assert store.list() == ["gone"]
