"""Records become response messages filled in place (no submessage built and copied):
the same messages, byte for byte, as built by keyword and FromNanoseconds."""
import pytest
from google.protobuf import any_pb2, timestamp_pb2

from appliance._proto.containerd.api.types import descriptor_pb2
from appliance.core.metadata.containers import Container, Runtime, to_pb
from appliance.core.metadata.content import Info as ContentInfo
from appliance.core.metadata.images import Descriptor, Image
from appliance.core.metadata.leases import Lease
from appliance.core.snapshots.store import Info as SnapshotInfo
from appliance.grpcutil import set_timestamp
from appliance.plugins import content, images, leases, snapshots
from appliance.plugins import containers as containers_plugin

T1, T2 = 1_700_000_000_123_456_789, 1_700_000_001_000_000_001


def _times(msg, created=T1, updated=T2):
    msg.created_at.FromNanoseconds(created)
    if updated is not None:
        msg.updated_at.FromNanoseconds(updated)
    return msg


@pytest.mark.parametrize("ns", [0, 1, T1, -1, -1_000_000_001, 253402300799_999_999_999])
def test_set_timestamp_is_from_nanoseconds(ns):
    ours, theirs = timestamp_pb2.Timestamp(), timestamp_pb2.Timestamp()
    set_timestamp(ours, ns)
    theirs.FromNanoseconds(ns)
    assert ours == theirs


def test_set_timestamp_out_of_range_is_protobufs_error():
    with pytest.raises(ValueError, match="Timestamp is not valid"):
        set_timestamp(timestamp_pb2.Timestamp(), 253402300800 * 10**9)


def test_records_fill_the_same_messages():
    info = ContentInfo("sha256:" + "a" * 64, 12, T1, T2, {"a": "b"})
    built = _times(content.pb.Info(digest=info.digest, size=12, labels={"a": "b"}))
    response = content.pb.InfoResponse()
    content.info_to_pb(info, response.info)
    assert response == content.pb.InfoResponse(info=built)
    assert content.info_to_pb(info).SerializeToString(deterministic=True) == \
        built.SerializeToString(deterministic=True)

    image = Image("docker.io/x:1", Descriptor("application/json", "sha256:" + "b" * 64, 5,
                                              {"k": "v"}), {"l": "m"}, T1, T2)
    assert images.image_to_pb(image) == _times(images.pb.Image(
        name=image.name, labels={"l": "m"}, target=descriptor_pb2.Descriptor(
            media_type="application/json", digest="sha256:" + "b" * 64, size=5,
            annotations={"k": "v"})))

    assert leases.lease_to_pb(Lease("l1", T1, {"x": "y"})) == \
        _times(leases.pb.Lease(id="l1", labels={"x": "y"}), updated=None)

    for kind in ("active", "committed", "view"):
        assert snapshots.info_to_pb(SnapshotInfo("k", "p", kind, T1, T2, {"a": "b"})) == \
            _times(snapshots.pb.Info(name="k", parent="p", kind=kind.upper(), labels={"a": "b"}))

    spec = any_pb2.Any(type_url="types.containerd.io/opencontainers/runtime-spec/1/Spec",
                       value=b"{}")
    c = Container("c1", {"a": "b"}, "img", Runtime("io.containerd.runc.v2", spec), spec,
                  "overlayfs", "c1", {"e": spec}, "", T1, T2)
    built = containers_plugin.pb.Container(id="c1", labels={"a": "b"}, image="img",
                                           snapshotter="overlayfs", snapshot_key="c1")
    built.runtime.name = "io.containerd.runc.v2"
    for field in (built.runtime.options, built.spec, built.extensions["e"]):
        field.CopyFrom(spec)
    _times(built)
    response = containers_plugin.pb.GetContainerResponse()
    to_pb(c, out=response.container)
    assert response == containers_plugin.pb.GetContainerResponse(container=built)
    assert to_pb(c).SerializeToString(deterministic=True) == \
        built.SerializeToString(deterministic=True)
