"""The tasks service checks that a task's container exists before each call (containerd's
NOT_FOUND first); `require` answers that without decoding the record, in get's words."""
import pytest
from google.protobuf import any_pb2

from appliance.core.metadata.containers import Container, ContainerStore, Runtime
from appliance.core.metadata.db import DB
from appliance.errdefs import NotFound


def test_require_is_gets_existence_check(tmp_path):
    db = DB(str(tmp_path / "meta.db"))
    try:
        store = ContainerStore(db)
        spec = any_pb2.Any(type_url="types.containerd.io/opencontainers/runtime-spec/1/Spec",
                           value=b"{}")
        store.create("default", Container("c1", runtime=Runtime("io.containerd.runc.v2"),
                                          spec=spec))
        assert store.require("default", "c1") is None
        for ns, cid in (("default", "c2"), ("other", "c1")):
            with pytest.raises(NotFound) as by_get:
                store.get(ns, cid)
            with pytest.raises(NotFound) as by_require:
                store.require(ns, cid)
            assert str(by_require.value) == str(by_get.value)
        store.delete("default", "c1")
        with pytest.raises(NotFound):
            store.require("default", "c1")
    finally:
        db.close()
