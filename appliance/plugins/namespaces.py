"""Namespaces: local service (events) and gRPC adapter."""
from __future__ import annotations

from google.protobuf import empty_pb2

from .. import stubs
from ..grpcutil import Adapter, namespace_of, rpc
from ..plugin import EVENT, GRPC, METADATA, SERVICE, InitContext, Registration

events = stubs.module("appliance._proto.containerd.api.events.namespace_pb2")
pb = stubs.module("appliance._proto.containerd.api.services.namespaces.v1.namespace_pb2")


class NamespacesService:
    """What the gRPC adapter and in-process callers use; publishes events."""

    def __init__(self, store, exchange):
        self.store = store
        self.exchange = exchange

    def get(self, name: str) -> dict[str, str]:
        return self.store.labels(name)

    def list(self) -> list[tuple[str, dict[str, str]]]:
        return [(name, self.store.labels(name)) for name in self.store.list()]

    # create/update events go out in the caller's namespace, as containerd's do

    def create(self, name: str, labels: dict[str, str], caller: str | None = None) -> None:
        self.store.create(name, labels)
        self.exchange.publish(caller or name, "/namespaces/create",
                              events.NamespaceCreate(name=name, labels=labels))

    def update(self, name: str, labels: dict[str, str], paths: list[str],
               caller: str | None = None) -> dict[str, str]:
        updated = self.store.update(name, labels, paths)
        # the event carries the labels of the request, as containerd's does
        self.exchange.publish(caller or name, "/namespaces/update",
                              events.NamespaceUpdate(name=name, labels=labels))
        return updated

    def delete(self, name: str) -> None:
        self.store.delete(name)
        # containerd publishes this one in the deleted namespace itself
        self.exchange.publish(name, "/namespaces/delete",
                              events.NamespaceDelete(name=name))


class NamespacesAdapter(Adapter):
    NAME, PB = "containerd.services.namespaces.v1.Namespaces", pb
    service: NamespacesService

    @rpc
    def Get(self, request, context):
        labels = self.service.get(request.name)
        response = pb.GetNamespaceResponse()
        response.namespace.name = request.name
        response.namespace.labels.update(labels)
        return response

    @rpc
    def List(self, request, context):
        return pb.ListNamespacesResponse(namespaces=[
            pb.Namespace(name=name, labels=labels) for name, labels in self.service.list()])

    @rpc
    def Create(self, request, context):
        ns = request.namespace
        self.service.create(ns.name, dict(ns.labels), namespace_of(context, ns.name))
        return pb.CreateNamespaceResponse(namespace=ns)

    @rpc
    def Update(self, request, context):
        ns = request.namespace
        labels = self.service.update(ns.name, dict(ns.labels), list(request.update_mask.paths),
                                     namespace_of(context, ns.name))
        return pb.UpdateNamespaceResponse(namespace=pb.Namespace(name=ns.name, labels=labels))

    @rpc
    def Delete(self, request, context):
        self.service.delete(request.name)
        return empty_pb2.Empty()


def _service(ic: InitContext) -> NamespacesService:
    return NamespacesService(ic.get(METADATA).namespaces, ic.get(EVENT))


def _adapter(ic: InitContext) -> NamespacesAdapter:
    return NamespacesAdapter(ic.get_by_id(SERVICE, "namespaces-service"))


REGISTRATIONS = [
    Registration(SERVICE, "namespaces-service", _service, requires=(EVENT, METADATA)),
    Registration(GRPC, "namespaces", _adapter, requires=(SERVICE,)),
]
