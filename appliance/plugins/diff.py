"""The walking differ (io.containerd.differ.v1.walking), the diff service and its gRPC adapter."""
from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field

from .. import stubs
from ..core.diff.unpack import LAYER_MEDIA_TYPE, Unpacker
from ..core.snapshots.backends import Mount
from ..errdefs import NotFound, Unimplemented
from ..grpcutil import Adapter, lease_of, namespace_of, rpc
from ..plugin import DIFF, GRPC, LINUX_AMD64, METADATA, SERVICE, InitContext, Registration

pb = stubs.module("appliance._proto.containerd.api.services.diff.v1.diff_pb2")
descriptor_pb2 = stubs.module("appliance._proto.containerd.api.types.descriptor_pb2")


class WalkingDiffer:
    """Apply: unpack a layer blob from the content store onto mounts. Diff: see compare.py."""

    def __init__(self, content, unpacker: Unpacker, tmpmounts: str):
        self.content = content
        self.unpacker = unpacker
        self.tmpmounts = tmpmounts

    def apply(self, ns: str, media_type: str, digest: str, mounts: list[Mount],
              payloads=None, follow=None) -> tuple[str, str, int]:
        """`follow`: the blob is still being written (a pull): read it through that."""
        path = self.content.blob_path(ns, digest) if follow is None else digest
        applied = self.unpacker.apply(path, media_type, digest, mounts, payloads, follow)
        return LAYER_MEDIA_TYPE, applied.digest, applied.size

    def apply_detached(self, ns: str, media_type: str, digest: str, mounts: list[Mount],
                       follow=None, implicit=None) -> tuple[str, str, int]:
        """Apply before the parent is committed (a pull); `rebase` finishes it (see
        Snapshotter.commit_onto)."""
        path = self.content.blob_path(ns, digest) if follow is None else digest
        applied = self.unpacker.apply_detached(path, media_type, mounts, follow, implicit)
        return LAYER_MEDIA_TYPE, applied.digest, applied.size

    def rebase(self, mounts: list[Mount], implicit) -> None:
        self.unpacker.rebase(mounts, implicit)

    def diff(self, ns, lower, upper, media_type, ref, labels, lease=None):
        from ..core.diff.compare import write_diff
        return write_diff(self.content, self.tmpmounts, ns, lower, upper, media_type, ref,
                          labels, lease)


@dataclass
class DiffServiceConfig:
    default: list[str] = field(default_factory=lambda: ["walking"])  # differs, preferred first


class DiffService:
    """The differs in the configured order: the first that does not answer
    Unimplemented wins (with no differ at all, an empty descriptor, as containerd)."""

    def __init__(self, differs: list[WalkingDiffer]):
        self.differs = differs

    def apply(self, *args):
        return self._first("apply", *args)

    def diff(self, *args, **kwargs):
        return self._first("diff", *args, **kwargs)

    def apply_detached(self, *args):
        return self._first("apply_detached", *args)

    def rebase(self, *args):
        return self._first("rebase", *args)

    def _first(self, method, *args, **kwargs):
        for i, differ in enumerate(self.differs):
            try:
                return getattr(differ, method)(*args, **kwargs)
            except Unimplemented:
                if i == len(self.differs) - 1:
                    raise
        return "", "", 0


def _service(ic: InitContext) -> DiffService:
    loaded = {p.registration.id: p for p in ic.plugins.results if p.registration.type == DIFF}
    differs = []
    for name in ic.config.default:
        if name not in loaded:
            raise RuntimeError(f"needed differ not loaded: {name}")
        if loaded[name].status != "ok":
            raise RuntimeError(f"could not load required differ due plugin init error: {name}: "
                               f"{loaded[name].error}")
        differs.append(loaded[name].instance)
    return DiffService(differs)


def _mounts(pb_mounts) -> list[Mount]:
    return [Mount(m.type, m.source, list(m.options), m.target) for m in pb_mounts]


class DiffAdapter(Adapter):
    NAME, PB = "containerd.services.diff.v1.Diff", pb
    service: DiffService

    @rpc
    async def Apply(self, request, context):
        media_type, digest, size = await asyncio.to_thread(
            self.service.apply, namespace_of(context), request.diff.media_type,
            request.diff.digest, _mounts(request.mounts),
            {k: v.SerializeToString() for k, v in request.payloads.items()})
        return pb.ApplyResponse(applied=descriptor_pb2.Descriptor(
            media_type=media_type, digest=digest, size=size))

    @rpc
    async def Diff(self, request, context):
        from ..core.diff.compare import check_media_type
        check_media_type(request.media_type)  # before the namespace, as containerd does
        media_type, digest, size = await asyncio.to_thread(
            self.service.diff, namespace_of(context), _mounts(request.left),
            _mounts(request.right), request.media_type, request.ref, dict(request.labels),
            lease_of(context))
        return pb.DiffResponse(diff=descriptor_pb2.Descriptor(
            media_type=media_type, digest=digest, size=size))


def _walking(ic: InitContext) -> WalkingDiffer:
    md = ic.get(METADATA)
    if md.content is None:
        raise NotFound("no content store: walking differ needs io.containerd.content.v1")
    tmpmounts = os.path.join(ic.server_config.root, "tmpmounts")
    from ..core import streamprocessor
    processors = streamprocessor.from_config(ic.server_config)
    return WalkingDiffer(md.content, Unpacker(md.snapshotters, tmpmounts, processors), tmpmounts)


REGISTRATIONS = [
    Registration(DIFF, "walking", _walking, requires=(METADATA,), platforms=LINUX_AMD64),
    Registration(SERVICE, "diff-service", _service, requires=(DIFF,), config=DiffServiceConfig),
    Registration(GRPC, "diff", lambda ic: DiffAdapter(ic.get_by_id(SERVICE, "diff-service")),
                 requires=(SERVICE,)),
]
