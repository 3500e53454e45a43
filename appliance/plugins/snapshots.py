"""Snapshotter plugins (overlayfs, native and containerd's skipped ones), the snapshots service
and its gRPC adapter."""
from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from dataclasses import dataclass

from google.protobuf import empty_pb2

from ..core.snapshots.backends import Mount, NativeBackend, OverlayBackend
from ..core.snapshots.store import Info, Snapshotter
from .. import stubs
from ..config import unsupported
from ..errdefs import InvalidArgument, Unimplemented
from ..grpcutil import Adapter, lease_of, namespace_of, rpc, set_timestamp
from ..plugin import (EVENT, GRPC, LINUX_AMD64, METADATA, SERVICE, SNAPSHOT, InitContext,
                      Registration, SkipPlugin)
from ..process import fdlimit, metrics

events = stubs.module("appliance._proto.containerd.api.events.snapshot_pb2")
pb = stubs.module("appliance._proto.containerd.api.services.snapshots.v1.snapshots_pb2")
mount_pb2 = stubs.module("appliance._proto.containerd.api.types.mount_pb2")

DEFAULT_SNAPSHOTTER = "overlayfs"


class SnapshotsService:
    """Namespaced snapshotters by name; what the gRPC adapter and other plugins call."""

    def __init__(self, snapshotters: dict[str, Snapshotter], exchange, namespaces):
        self.snapshotters = snapshotters
        self.exchange = exchange
        self.namespaces = namespaces

    def get(self, name: str) -> Snapshotter:
        if not name:
            raise InvalidArgument("snapshotter argument missing: invalid argument")
        try:
            return self.snapshotters[name]
        except KeyError:
            raise InvalidArgument(f"snapshotter not loaded: {name}: invalid argument") from None

    def prepare(self, ns, snapshotter, key, parent="", labels=None, lease=None) -> list[Mount]:
        self.namespaces.ensure(ns)
        mounts = self.get(snapshotter).prepare(ns, key, parent, labels, lease)
        self.exchange.publish(ns, "/snapshot/prepare", events.SnapshotPrepare(key=key, parent=parent))
        return mounts

    def view(self, ns, snapshotter, key, parent="", labels=None, lease=None) -> list[Mount]:
        self.namespaces.ensure(ns)
        return self.get(snapshotter).view(ns, key, parent, labels, lease)

    def commit(self, ns, snapshotter, name, key, labels=None, lease=None) -> None:
        self.get(snapshotter).commit(ns, name, key, labels, lease)
        self.exchange.publish(ns, "/snapshot/commit", events.SnapshotCommit(key=key, name=name))

    def commit_onto(self, ns, snapshotter, name, key, parent, rebase, labels=None,
                    lease=None) -> None:
        self.get(snapshotter).commit_onto(ns, name, key, parent, rebase, labels, lease)
        self.exchange.publish(ns, "/snapshot/commit", events.SnapshotCommit(key=key, name=name))

    def remove(self, ns, snapshotter, key) -> None:
        self.get(snapshotter).remove(ns, key)
        self.exchange.publish(ns, "/snapshot/remove", events.SnapshotRemove(key=key))

    def counts(self) -> dict[tuple[str, str], int]:
        """Snapshots by (snapshotter, namespace): the ctrappliance_snapshots gauge."""
        return {(name, ns): count for name, sn in self.snapshotters.items()
                for ns, count in sn.count_by_namespace().items()}

    def close(self):
        pass


def mount_to_pb(m: Mount) -> mount_pb2.Mount:
    return mount_pb2.Mount(type=m.type, source=m.source, target=m.target, options=m.options)


def info_to_pb(info: Info, out: pb.Info | None = None) -> pb.Info:
    """`info` as a message, or filled into `out` (a response's field: no copy)."""
    if out is None:
        out = pb.Info()
    out.name, out.parent = info.name, info.parent
    out.kind = pb.Kind.Value(info.kind.upper())   # the Kind enum by name: "active" → ACTIVE
    out.labels.update(info.labels)
    set_timestamp(out.created_at, info.created_at)
    set_timestamp(out.updated_at, info.updated_at)
    return out


class SnapshotsAdapter(Adapter):
    """Thin: decode, call the service (blocking disk work in a thread), encode."""

    NAME, PB = "containerd.services.snapshots.v1.Snapshots", pb
    service: SnapshotsService

    async def _disk_work(self, snapshotter: str, fn, *args):
        """`fn(*args)` in a thread, or on the loop for a snapshotter whose create and remove
        are a few syscalls (overlayfs: its metadata write is like any other RPC's)."""
        try:
            quick = getattr(self.service.get(snapshotter).backend, "quick", False)
        except InvalidArgument:   # fn reports it, after what it does first
            quick = False
        return fn(*args) if quick else await asyncio.to_thread(fn, *args)

    @rpc
    async def Prepare(self, request, context):
        mounts = await self._disk_work(
            request.snapshotter, self.service.prepare, namespace_of(context),
            request.snapshotter, request.key, request.parent, dict(request.labels),
            lease_of(context))
        return pb.PrepareSnapshotResponse(mounts=[mount_to_pb(m) for m in mounts])

    @rpc
    async def View(self, request, context):
        mounts = await self._disk_work(
            request.snapshotter, self.service.view, namespace_of(context), request.snapshotter,
            request.key, request.parent, dict(request.labels), lease_of(context))
        return pb.ViewSnapshotResponse(mounts=[mount_to_pb(m) for m in mounts])

    @rpc
    def Mounts(self, request, context):
        mounts = self.service.get(request.snapshotter).mounts(namespace_of(context), request.key)
        return pb.MountsResponse(mounts=[mount_to_pb(m) for m in mounts])

    @rpc
    async def Commit(self, request, context):
        await asyncio.to_thread(self.service.commit, namespace_of(context), request.snapshotter,
                                request.name, request.key, dict(request.labels), lease_of(context))
        return empty_pb2.Empty()

    @rpc
    async def Remove(self, request, context):
        await self._disk_work(request.snapshotter, self.service.remove, namespace_of(context),
                              request.snapshotter, request.key)
        return empty_pb2.Empty()

    @rpc
    def Stat(self, request, context):
        info = self.service.get(request.snapshotter).stat(namespace_of(context), request.key)
        response = pb.StatSnapshotResponse()
        info_to_pb(info, response.info)
        return response

    @rpc
    def Update(self, request, context):
        sn = self.service.get(request.snapshotter)
        info = sn.update(namespace_of(context), request.info.name, dict(request.info.labels),
                         list(request.update_mask.paths))
        return pb.UpdateSnapshotResponse(info=info_to_pb(info))

    @rpc
    async def List(self, request, context):
        infos = self.service.get(request.snapshotter).list(namespace_of(context), request.filters)
        for start in range(0, len(infos), 100):  # containerd sends batches of 100
            yield pb.ListSnapshotsResponse(info=[info_to_pb(i) for i in infos[start:start + 100]])

    @rpc
    async def Usage(self, request, context):
        sn = self.service.get(request.snapshotter)
        size, inodes = await asyncio.to_thread(sn.usage, namespace_of(context), request.key)
        return pb.UsageResponse(size=size, inodes=inodes)

    @rpc
    async def Cleanup(self, request, context):
        sn = self.service.get(request.snapshotter)
        if not getattr(sn.backend, "cleaner", True):
            raise Unimplemented("snapshotter does not implement Cleanup method: not implemented")
        await asyncio.to_thread(sn.cleanup)
        return empty_pb2.Empty()


# --- plugin configs and inits ---------------------------------------------------------

@dataclass
class SnapshotterConfig:
    root_path: str = ""     # the snapshotter's directory instead of <root>/<plugin uri>


@dataclass
class OverlayConfig(SnapshotterConfig):
    # label every snapshot's info with containerd.io/snapshot/overlay.upperdir
    upperdir_label: bool = False


_NO_DEVMAPPER = "the devmapper snapshotter is not implemented"


@dataclass
class DevmapperConfig(SnapshotterConfig):
    pool_name: str = unsupported("", _NO_DEVMAPPER)
    base_image_size: str = unsupported("", _NO_DEVMAPPER)
    async_remove: bool = unsupported(False, _NO_DEVMAPPER)
    discard_blocks: bool = unsupported(False, _NO_DEVMAPPER)
    fs_type: str = unsupported("", _NO_DEVMAPPER)
    fs_options: str = unsupported("", _NO_DEVMAPPER)


def _root(ic: InitContext) -> str:
    root = ic.config.root_path or str(ic.root)
    if "root" in ic.exports:
        ic.exports["root"] = root
    return root


def _overlay(ic: InitContext) -> OverlayBackend:
    if "overlay" not in _filesystems():
        raise SkipPlugin("overlayfs is not supported")
    return OverlayBackend(_root(ic), upperdir_label=ic.config.upperdir_label,
                          trash=ic.trash)


def _native(ic: InitContext) -> NativeBackend:
    return NativeBackend(_root(ic), trash=ic.trash)


def _filesystems() -> set[str]:
    try:
        with open("/proc/filesystems") as f:
            return {line.split()[-1] for line in f if line.strip()}
    except OSError:
        return set()


def _fstype(path: str) -> str:
    """The type of the filesystem holding `path` (longest mountinfo prefix)."""
    real = os.path.realpath(path)
    best, fstype = "", ""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point = fields[4]
            sep = fields.index("-")
            if (real == point or real.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
                best, fstype = point, fields[sep + 1]
    return fstype


def _aufs(ic: InitContext):
    if "aufs" not in _filesystems():
        modprobe = shutil.which("modprobe")
        if modprobe is None:
            detail = 'exec: "modprobe": executable file not found in $PATH ""'
        else:
            r = subprocess.run(fdlimit.child_argv([modprobe, "aufs"]), capture_output=True, text=True, timeout=10,
                               preexec_fn=fdlimit.child_preexec())
            if r.returncode == 0:
                detail = ""
            else:
                detail = f'exit status {r.returncode} "{(r.stdout + r.stderr).strip()}"'
        if detail:
            raise SkipPlugin(f"aufs is not supported (modprobe aufs failed: {detail})")
    raise SkipPlugin("aufs snapshotter is not implemented")


def _btrfs(ic: InitContext):
    root = _root(ic)
    os.makedirs(root, mode=0o700, exist_ok=True)
    fstype = _fstype(root)
    if fstype != "btrfs":
        raise SkipPlugin(f"path {root} ({fstype}) must be a btrfs filesystem to be used "
                         "with the btrfs snapshotter")
    raise SkipPlugin("btrfs snapshotter is not implemented")


def _zfs(ic: InitContext):
    root = _root(ic)
    os.makedirs(root, mode=0o700, exist_ok=True)
    if _fstype(root) != "zfs":
        raise SkipPlugin(f"path {root} must be a zfs filesystem to be used with the zfs "
                         "snapshotter")
    raise SkipPlugin("zfs snapshotter is not implemented")


def _devmapper(ic: InitContext):
    if ic.config.pool_name:
        raise RuntimeError(_NO_DEVMAPPER)
    raise RuntimeError("devmapper not configured")


def _service(ic: InitContext) -> SnapshotsService:
    md = ic.get(METADATA)
    for sn in md.snapshotters.values():  # directories a crash left without a record
        sn.cleanup()
    service = SnapshotsService(md.snapshotters, ic.get(EVENT), md.namespaces)
    metrics.gauge_callback("ctrappliance_snapshots", "Snapshots by snapshotter and namespace",
                           ("snapshotter", "namespace"), service.counts)
    return service


REGISTRATIONS = [
    Registration(SNAPSHOT, "aufs", _aufs, platforms=LINUX_AMD64, exports_root=True,
                 config=SnapshotterConfig),
    Registration(SNAPSHOT, "btrfs", _btrfs, platforms=LINUX_AMD64, exports_root=True,
                 config=SnapshotterConfig),
    Registration(SNAPSHOT, "devmapper", _devmapper, platforms=LINUX_AMD64, config=DevmapperConfig),
    Registration(SNAPSHOT, "native", _native, platforms=LINUX_AMD64, config=SnapshotterConfig),
    Registration(SNAPSHOT, "overlayfs", _overlay, platforms=LINUX_AMD64, exports_root=True,
                 config=OverlayConfig),
    Registration(SNAPSHOT, "zfs", _zfs, platforms=LINUX_AMD64, exports_root=True,
                 config=SnapshotterConfig),
    Registration(SERVICE, "snapshots-service", _service, requires=(EVENT, METADATA)),
    Registration(GRPC, "snapshots", lambda ic: SnapshotsAdapter(
        ic.get_by_id(SERVICE, "snapshots-service")), requires=(SERVICE,)),
]
