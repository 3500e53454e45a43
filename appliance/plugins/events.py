"""The event exchange plugin and the Events service (gRPC, and TTRPC Forward for shims)."""
from __future__ import annotations

import asyncio

from google.protobuf import empty_pb2

from .. import stubs
from ..core.events import Exchange
from ..errdefs import ApplianceError
from ..grpcutil import namespace_of, rpc
from ..plugin import EVENT, GRPC, InitContext, Registration

events_pb2 = stubs.module("appliance._proto.containerd.api.services.events.v1.events_pb2")

TTRPC_EVENTS_SERVICE = "containerd.services.events.ttrpc.v1.Events"


class EventsAdapter:
    def __init__(self, exchange: Exchange):
        self.exchange = exchange

    def register(self, services):
        services.add("containerd.services.events.v1.Events", events_pb2, self)

    def register_ttrpc(self, server):
        server.register(TTRPC_EVENTS_SERVICE, {"Forward": self._ttrpc_forward})

    @rpc
    def Publish(self, request, context):
        self.exchange.forward(events_pb2.Envelope(
            namespace=namespace_of(context), topic=request.topic, event=request.event,
            timestamp=_now()))
        return empty_pb2.Empty()

    @rpc
    def Forward(self, request, context):
        self.exchange.forward(request.envelope)
        return empty_pb2.Empty()

    @rpc
    async def Subscribe(self, request, context):
        try:
            async for envelope in self.exchange.subscribe(*request.filters):
                yield envelope
        except asyncio.CancelledError:
            if getattr(context, "expired", False):   # the call's deadline passed
                # containerd's words: its subscription ends with the call's context
                raise ApplianceError("subscription error: context deadline exceeded") from None
            raise

    async def _ttrpc_forward(self, payload: bytes, ctx) -> bytes:
        # the TTRPC ForwardRequest and its Envelope have the gRPC ones' fields and numbers:
        # parsed once as the gRPC type, the envelope is the exchange's own
        self.exchange.forward(events_pb2.ForwardRequest.FromString(payload).envelope)
        return b""


def _now():
    from google.protobuf import timestamp_pb2
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return ts


REGISTRATIONS = [
    Registration(EVENT, "exchange", lambda ic: Exchange()),
    Registration(GRPC, "events", lambda ic: EventsAdapter(ic.get(EVENT)), requires=(EVENT,)),
]
