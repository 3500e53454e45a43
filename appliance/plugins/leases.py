"""Leases: local service and gRPC adapter."""
from __future__ import annotations

import time

from google.protobuf import empty_pb2

from .. import filters, stubs
from ..core.metadata.leases import Lease, LeaseStore
from ..grpcutil import Adapter, namespace_of, rpc, set_timestamp
from ..plugin import GC, GRPC, METADATA, SERVICE, InitContext, Registration

pb = stubs.module("appliance._proto.containerd.api.services.leases.v1.leases_pb2")


class LeasesService:
    def __init__(self, store: LeaseStore, namespaces, gc=None):
        self.store = store
        self.namespaces = namespaces
        self.gc = gc   # the GC scheduler (None when disabled): a deletion schedules a collection

    def create(self, ns: str, lease_id: str, labels: dict[str, str]) -> Lease:
        self.namespaces.ensure(ns)
        if not lease_id:
            import secrets  # imported lazily: start-up cost
            lease_id = f"{time.time_ns()}-{secrets.token_hex(3)}"
        return self.store.create(ns, lease_id, labels)

    def list(self, ns: str, filter_strings) -> list[Lease]:
        flt = filters.parse(*filter_strings)
        return [lease for lease in self.store.list(ns)
                if flt.match(filters.adapt_object({"id": lease.id, "labels": lease.labels}))]

    def delete(self, ns: str, lease_id: str, sync: bool = False):
        """Returns an awaitable that ends after the collection when `sync`."""
        self.store.delete(ns, lease_id)
        if self.gc is not None:
            return self.gc.schedule(wait=sync)
        return None

    def add_resource(self, ns, lease_id, rtype, rid):
        self.store.add_resource(ns, lease_id, rtype, rid)

    def delete_resource(self, ns, lease_id, rtype, rid):
        self.store.delete_resource(ns, lease_id, rtype, rid)

    def resources(self, ns, lease_id):
        return self.store.resources(ns, lease_id)


def lease_to_pb(lease: Lease, out: pb.Lease | None = None) -> pb.Lease:
    """`lease` as a message, or filled into `out` (a response's field: no copy)."""
    if out is None:
        out = pb.Lease()
    out.id = lease.id
    out.labels.update(lease.labels)
    set_timestamp(out.created_at, lease.created_at)
    return out


class LeasesAdapter(Adapter):
    NAME, PB = "containerd.services.leases.v1.Leases", pb
    service: LeasesService

    @rpc
    def Create(self, request, context):
        lease = self.service.create(namespace_of(context), request.id, dict(request.labels))
        response = pb.CreateResponse()
        lease_to_pb(lease, response.lease)
        return response

    @rpc
    async def Delete(self, request, context):
        done = self.service.delete(namespace_of(context), request.id, request.sync)
        if done is not None:
            await done
        return empty_pb2.Empty()

    @rpc
    def List(self, request, context):
        leases = self.service.list(namespace_of(context), request.filters)
        return pb.ListResponse(leases=[lease_to_pb(lease) for lease in leases])

    @rpc
    def AddResource(self, request, context):
        self.service.add_resource(namespace_of(context), request.id,
                                  request.resource.type, request.resource.id)
        return empty_pb2.Empty()

    @rpc
    def DeleteResource(self, request, context):
        self.service.delete_resource(namespace_of(context), request.id,
                                     request.resource.type, request.resource.id)
        return empty_pb2.Empty()

    @rpc
    def ListResources(self, request, context):
        resources = self.service.resources(namespace_of(context), request.id)
        return pb.ListResourcesResponse(resources=[pb.Resource(type=t, id=i)
                                                   for t, i in resources])


def _service(ic: InitContext) -> LeasesService:
    md = ic.get(METADATA)
    gcs = ic.get_all(GC)  # loaded before the services when enabled (type order)
    return LeasesService(md.leases, md.namespaces, next(iter(gcs.values()), None))


REGISTRATIONS = [
    Registration(SERVICE, "leases-service", _service, requires=(METADATA,)),
    Registration(GRPC, "leases", lambda ic: LeasesAdapter(
        ic.get_by_id(SERVICE, "leases-service")), requires=(SERVICE,)),
]
