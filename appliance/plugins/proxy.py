"""`proxy_plugins`: snapshotters (and content stores) served by another process over gRPC.

Each `[proxy_plugins.NAME]` with `type = "snapshot"` becomes the plugin
io.containerd.snapshotter.v1.NAME: a snapshot backend whose directories live in
the external service, reached with containerd's Snapshots API on `address`. Our
sqlite metadata still owns keys, parents, labels and namespaces, exactly as for
overlayfs and native; the remote side only sees one snapshot per backend id.
`type = "content"` is accepted as in containerd, but reported as an error plugin
until a remote content backend exists; other types are warned about and ignored.
"""
from __future__ import annotations

import hashlib
import logging
import threading

from ..core.snapshots.backends import ACTIVE, VIEW, Mount
from ..errdefs import FailedPrecondition, NotFound
from ..plugin import CONTENT, SNAPSHOT, InitContext, Registration

log = logging.getLogger("appliance.proxy")
NAMESPACE = "default"           # the namespace our calls carry on the remote side
CALL_TIMEOUT = 60.0             # seconds per remote call (a prepare may copy a tree)
_TYPES = {"snapshot": SNAPSHOT, SNAPSHOT: SNAPSHOT, "content": CONTENT, CONTENT: CONTENT}


class _Channels:
    """One gRPC channel per address, shared by every proxy plugin using it."""

    def __init__(self):
        self._lock = threading.Lock()
        self._channels = {}

    def get(self, address: str):
        import grpc
        with self._lock:
            if address not in self._channels:
                target = address if ":" in address and not address.startswith("/") \
                    else "unix:" + address
                self._channels[address] = grpc.insecure_channel(target)
            return self._channels[address]


CHANNELS = _Channels()


class ProxySnapshotBackend:
    """The Backend interface of core.snapshots (ids → remote keys), over gRPC.

    Remote keys are `<prefix>-<id>` while active or a view and `<prefix>-<id>-committed`
    once committed; the prefix is unique per local root, so two daemons can share one
    remote snapshotter.
    """

    def __init__(self, name: str, address: str, channel, local_root: str):
        from .._proto.containerd.api.services.snapshots.v1 import snapshots_pb2 as pb
        from .._proto.containerd.api.services.snapshots.v1 import snapshots_pb2_grpc as pb_grpc
        self.name, self.address, self.pb = name, address, pb
        self.stub = pb_grpc.SnapshotsStub(channel)
        self.prefix = "ca-" + hashlib.sha256(local_root.encode()).hexdigest()[:8]
        self.metadata = (("containerd-namespace", NAMESPACE),)

    # remote names
    def active_key(self, sid: int) -> str:
        return f"{self.prefix}-{sid}"

    def committed_key(self, sid: int) -> str:
        return f"{self.prefix}-{sid}-committed"

    def _call(self, method: str, request):
        import grpc
        try:
            return getattr(self.stub, method)(request, timeout=CALL_TIMEOUT,
                                              metadata=self.metadata)
        except grpc.RpcError as err:
            code = err.code()
            text = f"proxy snapshotter {self.name} ({self.address}): {method}: {err.details()}"
            if code == grpc.StatusCode.NOT_FOUND:
                raise NotFound(text) from None
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                from ..errdefs import Unavailable
                raise Unavailable(text) from None
            raise FailedPrecondition(text) from None

    # --- the Backend interface -------------------------------------------------------
    def create(self, sid: int, kind: str, parent_ids: list[int]) -> None:
        parent = self.committed_key(parent_ids[0]) if parent_ids else ""
        if kind == VIEW:
            self._call("View", self.pb.ViewSnapshotRequest(
                snapshotter=self.name, key=self.active_key(sid), parent=parent))
        else:
            self._call("Prepare", self.pb.PrepareSnapshotRequest(
                snapshotter=self.name, key=self.active_key(sid), parent=parent))

    def commit(self, sid: int) -> None:
        self._call("Commit", self.pb.CommitSnapshotRequest(
            snapshotter=self.name, name=self.committed_key(sid), key=self.active_key(sid)))

    def mounts(self, sid: int, kind: str, parent_ids: list[int]) -> list[Mount]:
        key = self.active_key(sid) if kind in (ACTIVE, VIEW) else self.committed_key(sid)
        response = self._call("Mounts", self.pb.MountsRequest(snapshotter=self.name, key=key))
        return [Mount(m.type, m.source, list(m.options), m.target) for m in response.mounts]

    def _either(self, method: str, make, sid: int):
        try:
            return self._call(method, make(self.active_key(sid)))
        except NotFound:
            return self._call(method, make(self.committed_key(sid)))

    def remove(self, sid: int) -> None:
        try:
            self._either("Remove", lambda key: self.pb.RemoveSnapshotRequest(
                snapshotter=self.name, key=key), sid)
        except NotFound:
            pass  # already gone on the remote side

    def usage(self, sid: int) -> tuple[int, int]:
        r = self._either("Usage", lambda key: self.pb.UsageRequest(
            snapshotter=self.name, key=key), sid)
        return r.size, r.inodes

    def cleanup(self, known: set[int]) -> list[str]:
        return []  # the remote snapshotter cleans its own disk

    def fs(self, sid: int) -> str:
        """A name, not a directory: the files live in the remote snapshotter."""
        return f"proxy:{self.name}/{sid}"

    def apply_target(self, mounts):
        return None  # not our directories: appliers mount them

    def owns(self, path: str):
        return None

    def close(self):
        pass


def _snapshot_init(name: str, address: str):
    def init(ic: InitContext):
        ic.exports["address"] = address
        channel = CHANNELS.get(address)
        return ProxySnapshotBackend(name, address, channel, str(ic.properties.get(
            "io.containerd.plugin.root", "")))
    return init


def _content_init(name: str, address: str):
    def init(ic: InitContext):
        ic.exports["address"] = address
        raise NotImplementedError(f"proxy content store {name} at {address}: "
                                  "remote content stores are not supported yet")
    return init


def registrations(cfg) -> list[Registration]:
    """The registrations for `cfg.proxy_plugins` (unknown types are warned about)."""
    regs = []
    for name, pp in sorted(cfg.proxy_plugins.items()):
        plugin_type = _TYPES.get(pp.type)
        if plugin_type is None:
            log.warning("unknown proxy plugin type %r for %s", pp.type, name)
            continue
        init = (_snapshot_init if plugin_type == SNAPSHOT else _content_init)(name, pp.address)
        platforms = (pp.platform,) if pp.platform else ()
        regs.append(Registration(plugin_type, name, init, platforms=platforms,
                                 exports_root=False))
    return regs
