"""HTTP/2 rapid reset (CVE-2023-44487). A client resetting streams beyond
the token bucket (burst 1000, 33/s) gets GOAWAY ENHANCE_YOUR_CALM; a client that
cancels many streams the way ctr does (event subscriptions, waits) does not."""
import grpc
import pytest

from appliance._proto.containerd.api.services.events.v1 import events_pb2, events_pb2_grpc
from appliance._proto.containerd.api.services.version.v1 import version_pb2_grpc
from bench.rapidreset import Attacker
from google.protobuf import empty_pb2

pytestmark = pytest.mark.integration
ENHANCE_YOUR_CALM = 0xB


def test_rapid_reset_gets_goaway_and_others_are_served(shared_daemon):
    attacker = Attacker(shared_daemon.address)
    try:
        sent = attacker.run(5000)
        assert attacker.closed.wait(20), "the connection stays open"
    finally:
        attacker.close()
    assert attacker.goaway == ENHANCE_YOUR_CALM, (sent, attacker.goaway)
    assert "too many stream resets" in shared_daemon.log()
    assert "Version:" in shared_daemon.ctr("version").stdout


def test_cancelling_many_streams_is_not_abuse(shared_daemon):
    """600 event subscriptions and unary calls cancelled on one connection: no GOAWAY,
    the connection keeps serving."""
    before = shared_daemon.log().count("too many stream resets")
    with grpc.insecure_channel("unix:" + shared_daemon.address) as channel:
        events = events_pb2_grpc.EventsStub(channel)
        version = version_pb2_grpc.VersionStub(channel)
        for _ in range(300):
            stream = events.Subscribe(events_pb2.SubscribeRequest())
            stream.cancel()                       # ctr events interrupted
            call = version.Version.future(empty_pb2.Empty())
            call.cancel()
        stream = events.Subscribe(events_pb2.SubscribeRequest(), timeout=0.5)
        with pytest.raises(grpc.RpcError) as err:  # a subscription is still served …
            next(stream)
        # the client's own deadline, or the server's first: containerd's subscription error
        assert (err.value.code(), err.value.details()) in (
            (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"),
            (grpc.StatusCode.UNKNOWN, "subscription error: context deadline exceeded"))
        assert version.Version(empty_pb2.Empty(), timeout=10).version  # … and a call
    assert shared_daemon.log().count("too many stream resets") == before
