"""cri.events: GetContainerEvents' streams (fan-out, order, a slow client cut off, the end
when the daemon stops)."""
import asyncio

from appliance._proto.cri.v1 import api_pb2 as pb
from appliance.cri import events


def _hub():
    hub = events.ContainerEvents()
    hub.statuses = lambda sid: (pb.PodSandboxStatus(id=sid), [pb.ContainerStatus(id="c1")])
    return hub


async def _collect(hub, into, n=None):
    async for event in hub.subscribe():
        into.append(event)
        if n is not None and len(into) == n:
            return


def test_every_stream_sees_the_events_in_order_with_statuses():
    async def main():
        hub = _hub()
        a, b = [], []
        tasks = [asyncio.create_task(_collect(hub, a, 2)), asyncio.create_task(_collect(hub, b))]
        await asyncio.sleep(0)
        hub.emit("c1", "p1", events.CREATED)
        hub.emit("c1", "p1", events.STARTED)
        await tasks[0]
        hub.close()                                  # the daemon stops: b's stream ends
        await asyncio.wait_for(tasks[1], 5)
        return a, b, hub
    a, b, hub = asyncio.run(main())
    for got in (a, b):
        assert [(e.container_id, e.container_event_type) for e in got] == [
            ("c1", pb.CONTAINER_CREATED_EVENT), ("c1", pb.CONTAINER_STARTED_EVENT)]
        assert got[0].pod_sandbox_status.id == "p1"
        assert [s.id for s in got[0].containers_statuses] == ["c1"]
        assert got[0].created_at <= got[1].created_at
    assert not hub.streams


def test_nothing_is_built_without_a_stream():
    hub = events.ContainerEvents()
    hub.statuses = lambda sid: (_ for _ in ()).throw(AssertionError("built"))
    hub.emit("c1", "p1", events.CREATED)


def test_a_slow_stream_is_cut_off():
    async def main():
        hub = _hub()
        got = []
        agen = hub.subscribe()
        first = asyncio.create_task(agen.__anext__())
        await asyncio.sleep(0)
        for _ in range(events.QUEUE_LIMIT + 5):
            hub.emit("c1", "p1", events.CREATED)
        got.append(await first)
        async for event in agen:
            got.append(event)
        return hub, got
    hub, got = asyncio.run(main())
    assert len(got) == events.QUEUE_LIMIT       # then the end: the client is cut off
    assert not hub.streams


def test_a_stream_opened_after_close_ends_at_once():
    async def main():
        hub = _hub()
        hub.close()
        return [e async for e in hub.subscribe()]
    assert asyncio.run(main()) == []
