"""Containers: local service (events) and gRPC adapter."""
from __future__ import annotations

from google.protobuf import empty_pb2

from .. import filters, stubs
from ..core.metadata.containers import Container, ContainerStore, from_pb, to_pb
from ..errdefs import InvalidArgument
from ..grpcutil import Adapter, namespace_of, rpc
from ..plugin import EVENT, GRPC, METADATA, SERVICE, InitContext, Registration

events = stubs.module("appliance._proto.containerd.api.events.container_pb2")
pb = stubs.module("appliance._proto.containerd.api.services.containers.v1.containers_pb2")


def _adaptor(c: Container):
    """containerd's container filter fields: id, image, runtime.name, labels.*."""
    return filters.adapt_object({"id": c.id, "image": c.image,
                                 "runtime": {"name": c.runtime.name}, "labels": c.labels})


class ContainersService:
    def __init__(self, store: ContainerStore, namespaces, exchange):
        self.store = store
        self.namespaces = namespaces
        self.exchange = exchange

    def get(self, ns: str, cid: str) -> Container:
        return self.store.get(ns, cid)

    def get_into(self, ns: str, cid: str, out: pb.Container) -> None:
        self.store.get_into(ns, cid, out)

    def list(self, ns: str, filter_strings) -> list[Container]:
        flt = filters.parse(*filter_strings)
        if not filter_strings:
            return self.store.list(ns)
        return [c for c in self.store.list(ns) if flt.match(_adaptor(c))]

    def list_into(self, ns: str, filter_strings, out) -> None:
        """list's containers added to a response's repeated field (unfiltered: from the
        stored rows, no Container between)."""
        if filter_strings:
            for c in self.list(ns, filter_strings):
                to_pb(c, out=out.add())
        else:
            self.store.list_into(ns, out)

    def create(self, ns: str, container: Container) -> Container:
        self.namespaces.ensure(ns)
        created = self.store.create(ns, container)
        runtime = events.ContainerCreate.Runtime(name=created.runtime.name)
        if created.runtime.options is not None:
            runtime.options.CopyFrom(created.runtime.options)
        self.exchange.publish(ns, "/containers/create", events.ContainerCreate(
            id=created.id, image=created.image, runtime=runtime))
        return created

    def update(self, ns: str, container: Container, paths: list[str]) -> Container:
        if not container.id:
            raise InvalidArgument("Container.ID required")
        updated = self.store.update(ns, container, paths)
        self.exchange.publish(ns, "/containers/update", events.ContainerUpdate(
            id=updated.id, image=updated.image, labels=updated.labels,
            snapshot_key=updated.snapshot_key))
        return updated

    def delete(self, ns: str, cid: str) -> None:
        self.store.delete(ns, cid)
        self.exchange.publish(ns, "/containers/delete", events.ContainerDelete(id=cid))


class ContainersAdapter(Adapter):
    NAME, PB = "containerd.services.containers.v1.Containers", pb
    service: ContainersService

    @rpc
    def Get(self, request, context):
        response = pb.GetContainerResponse()
        self.service.get_into(namespace_of(context), request.id, response.container)
        return response

    @rpc
    def List(self, request, context):
        response = pb.ListContainersResponse()
        self.service.list_into(namespace_of(context), request.filters, response.containers)
        return response

    @rpc
    async def ListStream(self, request, context):
        for c in self.service.list(namespace_of(context), request.filters):
            yield pb.ListContainerMessage(container=to_pb(c))

    @rpc
    def Create(self, request, context):
        created = self.service.create(namespace_of(context), from_pb(request.container))
        response = pb.CreateContainerResponse()
        to_pb(created, out=response.container)
        return response

    @rpc
    def Update(self, request, context):
        updated = self.service.update(namespace_of(context), from_pb(request.container),
                                      list(request.update_mask.paths))
        return pb.UpdateContainerResponse(container=to_pb(updated))

    @rpc
    def Delete(self, request, context):
        self.service.delete(namespace_of(context), request.id)
        return empty_pb2.Empty()


def _service(ic: InitContext) -> ContainersService:
    md = ic.get(METADATA)
    return ContainersService(md.containers, md.namespaces, ic.get(EVENT))


REGISTRATIONS = [
    Registration(SERVICE, "containers-service", _service, requires=(EVENT, METADATA)),
    Registration(GRPC, "containers", lambda ic: ContainersAdapter(
        ic.get_by_id(SERVICE, "containers-service")), requires=(SERVICE,)),
]
