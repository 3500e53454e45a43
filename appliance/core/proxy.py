"""Backends served by another process over gRPC, for `proxy_plugins` (plugins/proxy.py
registers them): a snapshot backend and a content store.

A proxy snapshotter's directories live in the external service, reached with containerd's
Snapshots API. Our sqlite metadata still owns keys, parents, labels and namespaces, exactly
as for overlayfs and native; the remote side only sees one snapshot per backend id.
A proxy content store keeps its blobs in the external content service (containerd's
Content API); ingests are staged locally (resumable, as for the built-in store) and
uploaded when committed; reads go through a local cache.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid

from ..errdefs import AlreadyExists, FailedPrecondition, NotFound, Unavailable
from .content.store import LocalStore
from .snapshots.backends import VIEW, Mount

NAMESPACE = "default"           # the namespace our calls carry on the remote side
CALL_TIMEOUT = 60.0             # seconds per remote call (a prepare may copy a tree)


def _call(what: str, stub, method: str, request, stream: bool = False):
    """One remote call in our namespace; gRPC errors become errdefs errors naming the proxy."""
    import grpc
    try:
        result = getattr(stub, method)(request, timeout=CALL_TIMEOUT,
                                       metadata=(("containerd-namespace", NAMESPACE),))
        return list(result) if stream else result
    except grpc.RpcError as err:
        code = err.code()
        text = f"{what}: {method}: {err.details()}"
        if code == grpc.StatusCode.NOT_FOUND:
            raise NotFound(text) from None
        if code == grpc.StatusCode.ALREADY_EXISTS:
            raise AlreadyExists(text) from None
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise Unavailable(text) from None
        raise FailedPrecondition(text) from None


class ProxySnapshotBackend:
    """The Backend interface of core.snapshots (ids → remote keys), over gRPC.

    Remote keys are `<prefix>-<id>` while active or a view and `<prefix>-<id>-committed`
    once committed; the prefix is unique per local root, so two daemons can share one
    remote snapshotter.
    """

    mounts_error = "failed to get active mount"

    def __init__(self, name: str, address: str, channel, local_root: str):
        from .._proto.containerd.api.services.snapshots.v1 import snapshots_pb2 as pb
        from .._proto.containerd.api.services.snapshots.v1 import snapshots_pb2_grpc as pb_grpc
        self.name, self.address, self.pb = name, address, pb
        self.stub = pb_grpc.SnapshotsStub(channel)
        self.prefix = "ca-" + hashlib.sha256(local_root.encode()).hexdigest()[:8]

    # remote names
    def active_key(self, sid: int) -> str:
        return f"{self.prefix}-{sid}"

    def committed_key(self, sid: int) -> str:
        return f"{self.prefix}-{sid}-committed"

    def _call(self, method: str, request):
        return _call(f"proxy snapshotter {self.name} ({self.address})", self.stub, method,
                     request)

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
        """Active snapshots and views only (the store refuses committed ones)."""
        response = self._call("Mounts", self.pb.MountsRequest(snapshotter=self.name,
                                                              key=self.active_key(sid)))
        return [Mount(m.type, m.source, list(m.options), m.target) for m in response.mounts]

    def labels(self, sid: int) -> dict[str, str]:
        return {}

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


class ProxyContentStore(LocalStore):
    """The built-in store's interface with the blobs in an external content service.

    Ingests (resume, locks, status) are the local store's, under this plugin's root;
    `install` uploads the verified data instead of renaming it into place, and reads
    fill `blobs/` as a cache.
    """
    UPLOAD_CHUNK = 1 << 20

    def __init__(self, name: str, address: str, channel, root: str):
        from .._proto.containerd.api.services.content.v1 import content_pb2 as pb
        from .._proto.containerd.api.services.content.v1 import content_pb2_grpc as pb_grpc
        super().__init__(root)
        self.name, self.address, self.pb = name, address, pb
        self.stub = pb_grpc.ContentStub(channel)

    def _call(self, method, request, stream=False):
        return _call(f"proxy content store {self.name} ({self.address})", self.stub, method,
                     request, stream)

    def _cache_path(self, digest: str) -> str:
        return super().blob_path(digest)

    def exists(self, digest: str) -> bool:
        try:
            self._call("Info", self.pb.InfoRequest(digest=digest))
            return True
        except NotFound:
            return False

    def size(self, digest: str) -> int:
        try:
            return self._call("Info", self.pb.InfoRequest(digest=digest)).info.size
        except NotFound:
            raise NotFound(f"content digest {digest}: not found") from None

    def blob_path(self, digest: str) -> str:
        """A local copy of the blob (downloaded and verified on first use)."""
        path = self._cache_path(digest)
        if not os.path.exists(path):
            self._download(digest, path)
        return path

    def _download(self, digest: str, path: str) -> None:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        alg = digest.split(":", 1)[0]
        hasher = hashlib.new(alg)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".download-")
        try:
            with os.fdopen(fd, "wb") as out:
                try:
                    responses = self._call("Read", self.pb.ReadContentRequest(digest=digest),
                                           stream=True)
                except NotFound:
                    raise NotFound(f"content digest {digest}: not found") from None
                for r in responses:
                    hasher.update(r.data)
                    out.write(r.data)
            if f"{alg}:{hasher.hexdigest()}" != digest:
                raise FailedPrecondition(f"proxy content store {self.name}: blob {digest} "
                                         "read back with another digest: failed precondition")
            os.chmod(tmp, 0o444)
            os.rename(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def open(self, digest: str):
        return open(self.blob_path(digest), "rb", buffering=0)

    def delete(self, digest: str) -> bool:
        try:
            os.unlink(self._cache_path(digest))
        except FileNotFoundError:
            pass
        try:
            self._call("Delete", self.pb.DeleteContentRequest(digest=digest))
            return True
        except NotFound:
            return False

    def walk(self):
        for response in self._call("List", self.pb.ListContentRequest(), stream=True):
            for info in response.info:
                yield info.digest

    def install(self, writer, digest: str) -> bool:
        """Upload a sealed ingest; False if the remote store already had the blob."""
        data = os.path.join(writer.path, "data")
        size = os.path.getsize(data)
        ref = f"proxy-{digest}-{uuid.uuid4().hex[:8]}"  # never resumes a stale remote ingest
        pb = self.pb

        def requests():
            with open(data, "rb") as f:
                offset = 0
                while True:
                    chunk = f.read(self.UPLOAD_CHUNK)
                    last = offset + len(chunk) >= size
                    yield pb.WriteContentRequest(
                        action=pb.COMMIT if last else pb.WRITE, ref=ref, total=size,
                        expected=digest if last else "", offset=offset, data=chunk)
                    offset += len(chunk)
                    if last:
                        return
        try:
            self._call("Write", requests(), stream=True)
            installed = True
        except AlreadyExists:
            installed = False
        target = self._cache_path(digest)  # keep what we just sent as the read cache
        os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
        os.chmod(data, 0o444)
        os.replace(data, target)
        shutil.rmtree(writer.path, ignore_errors=True)
        return installed
