"""Images: local service (events, GC on delete) and gRPC adapter."""
from __future__ import annotations

import inspect

from google.protobuf import empty_pb2

from ..core.metadata.images import Descriptor, Image, ImageStore
from .. import stubs
from ..errdefs import InvalidArgument
from ..grpcutil import Adapter, namespace_of, rpc, set_timestamp
from ..plugin import EVENT, GC, GRPC, METADATA, SERVICE, InitContext, Registration

events = stubs.module("appliance._proto.containerd.api.events.image_pb2")
pb = stubs.module("appliance._proto.containerd.api.services.images.v1.images_pb2")


class ImagesService:
    def __init__(self, store: ImageStore, namespaces, exchange, gc=None):
        self.store = store
        self.namespaces = namespaces
        self.exchange = exchange
        self.gc = gc   # the GC scheduler (None when disabled): `images rm --sync` waits for it

    def get(self, ns: str, name: str) -> Image:
        return self.store.get(ns, name)

    def list(self, ns: str, filter_strings=()) -> list[Image]:
        return self.store.list(ns, filter_strings)

    def create(self, ns: str, image: Image) -> Image:
        self.namespaces.ensure(ns)
        created = self.store.create(ns, image)
        self.exchange.publish(ns, "/images/create",
                              events.ImageCreate(name=created.name, labels=created.labels))
        return created

    def update(self, ns: str, image: Image, paths) -> Image:
        updated = self.store.update(ns, image, paths)
        self.exchange.publish(ns, "/images/update",
                              events.ImageUpdate(name=updated.name, labels=updated.labels))
        return updated

    async def delete(self, ns: str, name: str, sync: bool = False) -> None:
        self.store.delete(ns, name)
        self.exchange.publish(ns, "/images/delete", events.ImageDelete(name=name))
        if sync and self.gc is not None:
            done = self.gc.schedule(wait=True)
            if inspect.isawaitable(done):
                await done


def image_to_pb(image: Image, out: pb.Image | None = None) -> pb.Image:
    """`image` as a message, or filled into `out` (a response's field: no copy)."""
    if out is None:
        out = pb.Image()
    t, target = image.target, out.target
    out.name = image.name
    out.labels.update(image.labels)
    target.media_type, target.digest, target.size = t.media_type, t.digest, t.size
    target.annotations.update(t.annotations)
    set_timestamp(out.created_at, image.created_at)
    set_timestamp(out.updated_at, image.updated_at)
    return out


def image_from_pb(msg: pb.Image) -> Image:
    t = msg.target
    return Image(msg.name, Descriptor(t.media_type, t.digest, t.size, dict(t.annotations)),
                 dict(msg.labels))


class ImagesAdapter(Adapter):
    NAME, PB = "containerd.services.images.v1.Images", pb
    service: ImagesService

    @rpc
    def Get(self, request, context):
        response = pb.GetImageResponse()
        image_to_pb(self.service.get(namespace_of(context), request.name), response.image)
        return response

    @rpc
    def List(self, request, context):
        images = self.service.list(namespace_of(context), list(request.filters))
        return pb.ListImagesResponse(images=[image_to_pb(i) for i in images])

    @rpc
    def Create(self, request, context):
        if not request.image.name:
            raise InvalidArgument("Image.Name required")
        created = self.service.create(namespace_of(context), image_from_pb(request.image))
        return pb.CreateImageResponse(image=image_to_pb(created))

    @rpc
    def Update(self, request, context):
        if not request.image.name:
            raise InvalidArgument("Image.Name required")
        paths = list(request.update_mask.paths) if request.HasField("update_mask") else []
        updated = self.service.update(namespace_of(context), image_from_pb(request.image), paths)
        return pb.UpdateImageResponse(image=image_to_pb(updated))

    @rpc
    async def Delete(self, request, context):
        await self.service.delete(namespace_of(context), request.name, request.sync)
        return empty_pb2.Empty()


def _service(ic: InitContext) -> ImagesService:
    md = ic.get(METADATA)
    try:
        gc = ic.get(GC)
    except Exception:  # the scheduler is disabled: no collection
        gc = None
    return ImagesService(md.images, md.namespaces, ic.get(EVENT), gc)


REGISTRATIONS = [
    Registration(SERVICE, "images-service", _service, requires=(METADATA, GC)),
    Registration(GRPC, "images", lambda ic: ImagesAdapter(
        ic.get_by_id(SERVICE, "images-service")), requires=(SERVICE,)),
]
