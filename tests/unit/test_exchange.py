"""The event exchange checks namespace and topic of every envelope (containerd's words);
pairs that passed are remembered, so a bad one is refused every time and a good one is
checked once. The shim's TTRPC Forward is parsed once, as the gRPC envelope."""
import asyncio
import time

import pytest
from google.protobuf import empty_pb2

from appliance._proto.containerd.api.services.events.v1 import events_pb2
from appliance._proto.containerd.api.services.ttrpc.events.v1 import events_pb2 as ttrpc_pb2
from appliance.core.events import Exchange
from appliance.errdefs import InvalidArgument
from appliance.plugins.events import EventsAdapter


def _envelope(ns, topic):
    env = events_pb2.Envelope(namespace=ns, topic=topic)
    env.timestamp.GetCurrentTime()
    return env


def test_bad_namespaces_and_topics_are_refused_every_time_good_ones_checked_once():
    exchange = Exchange()
    for _ in range(2):
        with pytest.raises(InvalidArgument, match="event envelope has invalid namespace: "
                                                  "identifier must not be empty"):
            exchange.forward(_envelope("", "/tasks/exit"))
        with pytest.raises(InvalidArgument, match=r'envelope topic "/tasks/-x": failed '
                                                  r'validation on component "-x"'):
            exchange.forward(_envelope("default", "/tasks/-x"))
        with pytest.raises(InvalidArgument, match="identifier must not be empty"):
            exchange.publish("", "/containers/create", empty_pb2.Empty())
        with pytest.raises(InvalidArgument, match="must start with '/'"):
            exchange.publish("default", "containers", empty_pb2.Empty())
    exchange.forward(_envelope("default", "/tasks/exit"))
    exchange.publish("default", "/containers/create", empty_pb2.Empty())
    assert exchange._valid == {("default", "/tasks/exit"), ("default", "/containers/create")}
    with pytest.raises(InvalidArgument, match="timestamp must be set"):
        exchange.forward(events_pb2.Envelope(namespace="default", topic="/tasks/exit"))


def test_ttrpc_forward_delivers_the_shims_envelope_unchanged():
    async def scenario():
        exchange = Exchange()
        sent = ttrpc_pb2.ForwardRequest()
        sent.envelope.namespace, sent.envelope.topic = "default", "/tasks/exit"
        sent.envelope.timestamp.FromNanoseconds(1_700_000_000_123_456_789)
        sent.envelope.event.type_url = "containerd.events.TaskExit"
        sent.envelope.event.value = b"\x0a\x02c1"
        events = exchange.subscribe()
        received = asyncio.ensure_future(events.__anext__())
        await asyncio.sleep(0)
        assert await EventsAdapter(exchange)._ttrpc_forward(sent.SerializeToString(), None) \
            == b""
        got = await asyncio.wait_for(received, 5)
        await events.aclose()
        assert isinstance(got, events_pb2.Envelope)
        assert got.SerializeToString() == sent.envelope.SerializeToString()
    asyncio.run(scenario())


def test_a_subscription_gets_what_its_filters_match_every_time():
    """The answer for a (namespace, topic) pair is remembered per subscription: the same
    pairs are delivered or skipped again, and another subscription decides for itself."""
    async def scenario():
        exchange = Exchange()
        tasks = exchange.subscribe('topic~="^/tasks/",namespace==k8s.io', "topic==/images/x")
        every = exchange.subscribe()
        got_tasks = asyncio.ensure_future(_take(tasks, 4))
        got_every = asyncio.ensure_future(_take(every, 8))
        await asyncio.sleep(0)
        sent = [("k8s.io", "/tasks/exit"), ("default", "/tasks/exit"), ("k8s.io", "/images/x"),
                ("k8s.io", "/containers/create")] * 2
        for ns, topic in sent:
            exchange.forward(_envelope(ns, topic))
        assert await asyncio.wait_for(got_tasks, 5) == [
            ("k8s.io", "/tasks/exit"), ("k8s.io", "/images/x")] * 2
        assert await asyncio.wait_for(got_every, 5) == sent
        await tasks.aclose()
        await every.aclose()
    asyncio.run(scenario())


async def _take(events, n):
    out = []
    async for env in events:
        out.append((env.namespace, env.topic))
        if len(out) == n:
            return out


def test_a_published_event_is_stamped_to_the_nanosecond_as_containerds():
    """containerd stamps an envelope with Go's time.Now() (nanoseconds); protobuf's
    GetCurrentTime goes through datetime (microseconds) and a dozen Python calls."""
    async def scenario():
        exchange = Exchange()
        every = exchange.subscribe()
        got = []

        async def take():
            async for env in every:
                got.append(env)
                if len(got) == 5:
                    return
        taking = asyncio.ensure_future(take())
        await asyncio.sleep(0)
        before = time.time_ns()
        for _ in range(5):
            exchange.publish("default", "/containers/delete", empty_pb2.Empty())
        after = time.time_ns()
        await asyncio.wait_for(taking, 5)
        stamps = [env.timestamp.ToNanoseconds() for env in got]
        assert all(before <= t <= after for t in stamps)
        assert any(t % 1000 for t in stamps)
        await every.aclose()
    asyncio.run(scenario())
