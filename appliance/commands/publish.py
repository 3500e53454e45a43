"""`ctrappliance publish`: forward one event from stdin to a daemon over TTRPC."""
from __future__ import annotations

import asyncio
import sys

from google.protobuf import any_pb2

PUBLISH_TIMEOUT = 5.0


async def _forward(address: str, namespace: str, topic: str, event: any_pb2.Any) -> None:
    from .._proto.containerd.api.services.ttrpc.events.v1 import events_pb2
    from ..core.events import validate_topic
    from ..ttrpc import TTRPCClient
    validate_topic(topic)
    envelope = events_pb2.Envelope(namespace=namespace, topic=topic, event=event)
    envelope.timestamp.GetCurrentTime()
    request = events_pb2.ForwardRequest(envelope=envelope)
    client = await TTRPCClient.connect(address.removeprefix("unix://"), timeout=PUBLISH_TIMEOUT)
    try:
        await client.call("containerd.services.events.ttrpc.v1.Events", "Forward",
                          request.SerializeToString(), timeout=PUBLISH_TIMEOUT)
    finally:
        await client.aclose()


def run(args) -> int:
    data = sys.stdin.buffer.read()
    event = any_pb2.Any()
    try:
        event.ParseFromString(data)
    except Exception as exc:
        print(f"ctrappliance: publish: stdin is not a protobuf Any: {exc}", file=sys.stderr)
        return 1
    try:
        asyncio.run(_forward(args.address, args.namespace, args.topic, event))
    except Exception as exc:
        print(f"ctrappliance: publish: {exc}", file=sys.stderr)
        return 1
    return 0
