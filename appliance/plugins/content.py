"""Content: the blob store plugin, the content service (events) and its gRPC adapter.

In-process users (the differ, CRI, ...) take the namespaced store from the
metadata plugin, `ic.get(METADATA).content` (see core/metadata/content.py for its
API: info, reader, blob_path, writer, ...), or this service (same calls, plus the
`/content/delete` event). `ic.get(CONTENT)` is the namespace-free LocalStore.

The Write stream follows containerd's protocol: the first message names the ref;
every request gets one response carrying the offset; WRITE at the current offset
appends (offset 0 on a non-empty ingest starts over); COMMIT verifies size and
digest and publishes the blob. Big chunks are written and hashed in a worker
thread (the GIL is released), the event loop only moves messages.
"""
from __future__ import annotations

import asyncio
import os

from google.protobuf import empty_pb2

from ..core.content.store import LocalStore
from ..core.metadata.content import ContentStore, Info, Status
from .. import stubs
from ..errdefs import q, ApplianceError, AlreadyExists, InvalidArgument, NotFound, StatusCode
from ..grpcserver.status import EOF
from ..grpcutil import Adapter, lease_of, namespace_of, rpc, set_timestamp
from ..plugin import CONTENT, EVENT, GRPC, METADATA, SERVICE, InitContext, Registration

events = stubs.module("appliance._proto.containerd.api.events.content_pb2")
pb = stubs.module("appliance._proto.containerd.api.services.content.v1.content_pb2")

READ_CHUNK = 1 << 20
THREAD_THRESHOLD = 64 << 10     # smaller writes are cheaper inline than a thread hop
LIST_BATCH = 100


class OutOfRange(ApplianceError):
    code = StatusCode.OUT_OF_RANGE


class ContentService:
    """Namespaced content with events; what the adapter and in-process callers use."""

    def __init__(self, store: ContentStore, exchange, namespaces=None):
        self.store = store
        self.exchange = exchange
        self.namespaces = namespaces

    def info(self, ns: str, digest: str) -> Info:
        return self.store.info(ns, digest)

    def record(self, ns: str, digest: str) -> Info:
        return self.store.record(ns, digest)   # shared: read it at once

    def update(self, ns, digest, labels, paths) -> Info:
        return self.store.update(ns, digest, labels, paths)

    def update_many(self, ns, updates) -> None:
        """update(ns, *u) for each u of `updates`, in one transaction."""
        with self.store.db.write():
            for digest, labels, paths in updates:
                self.store.update(ns, digest, labels, paths)

    def list(self, ns, filter_strings=()) -> list[Info]:
        return self.store.list(ns, filter_strings)

    def delete(self, ns: str, digest: str) -> None:
        self.store.delete(ns, digest)
        self.exchange.publish(ns, "/content/delete", events.ContentDelete(digest=digest))

    def reader(self, ns: str, digest: str):
        return self.store.reader(ns, digest)

    def small_blob(self, ns: str, digest: str) -> bytes | None:
        return self.store.small_blob(ns, digest)

    def blob_path(self, ns: str, digest: str) -> str:
        return self.store.blob_path(ns, digest)

    def file_path(self, digest: str) -> str:
        return self.store.file_path(digest)

    def writer(self, ns, ref, expected="", size=0, lease=None):
        if self.namespaces is not None:
            self.namespaces.ensure(ns)
        return self.store.writer(ns, ref, expected, size, lease)

    def status(self, ns, ref) -> Status:
        return self.store.status(ns, ref)

    def list_statuses(self, ns, filter_strings=()) -> list[Status]:
        return self.store.list_statuses(ns, filter_strings)

    def abort(self, ns, ref) -> None:
        self.store.abort(ns, ref)


def info_to_pb(info: Info, out: pb.Info | None = None) -> pb.Info:
    """`info` as a message, or filled into `out` (a response's field: no copy)."""
    if out is None:
        out = pb.Info()
    out.digest, out.size = info.digest, info.size
    out.labels.update(info.labels)
    set_timestamp(out.created_at, info.created_at)
    set_timestamp(out.updated_at, info.updated_at)
    return out


def status_to_pb(st: Status) -> pb.Status:
    out = pb.Status(ref=st.ref, offset=st.offset, total=st.total, expected=st.expected)
    out.started_at.FromNanoseconds(st.started_at)
    out.updated_at.FromNanoseconds(st.updated_at)
    return out


class ContentAdapter(Adapter):
    NAME, PB = "containerd.services.content.v1.Content", pb
    service: ContentService

    @rpc
    def Info(self, request, context):
        response = pb.InfoResponse()
        info_to_pb(self.service.record(namespace_of(context), request.digest), response.info)
        return response

    @rpc
    def Update(self, request, context):
        info = self.service.update(namespace_of(context), request.info.digest,
                                   dict(request.info.labels), list(request.update_mask.paths))
        return pb.UpdateResponse(info=info_to_pb(info))

    @rpc
    async def List(self, request, context):
        infos = self.service.list(namespace_of(context), list(request.filters))
        for i in range(0, len(infos), LIST_BATCH):
            yield pb.ListContentResponse(info=[info_to_pb(x) for x in infos[i:i + LIST_BATCH]])

    @rpc
    def Delete(self, request, context):
        self.service.delete(namespace_of(context), request.digest)
        return empty_pb2.Empty()

    @rpc
    async def Read(self, request, context):
        # as containerd: a negative offset reads from 0, and each chunk's offset counts
        # from the requested offset (not from the start of the blob)
        ns = namespace_of(context)
        data = self.service.small_blob(ns, request.digest)
        if data is not None:   # (≤ 64 KiB: one chunk)
            offset = max(request.offset, 0)
            if offset > len(data):
                raise OutOfRange(f"read past object length {len(data)} bytes")
            end = len(data) if request.size <= 0 else min(len(data), offset + request.size)
            if offset < end:
                yield pb.ReadContentResponse(offset=0, data=data[offset:end])
            return
        f = self.service.reader(ns, request.digest)
        try:
            size = os.fstat(f.fileno()).st_size
            offset = max(request.offset, 0)
            if offset > size:
                raise OutOfRange(f"read past object length {size} bytes")
            end = size if request.size <= 0 else min(size, offset + request.size)
            start = offset
            while offset < end:
                data = os.pread(f.fileno(), min(READ_CHUNK, end - offset), offset)
                if not data:
                    break
                yield pb.ReadContentResponse(offset=offset - start, data=data)
                offset += len(data)
        finally:
            f.close()

    @rpc
    def Status(self, request, context):
        try:
            st = self.service.status(namespace_of(context), request.ref)
        except ApplianceError as exc:   # containerd's words around the store's error
            raise type(exc)(f"could not get status for ref {q(request.ref)}: {exc.message}")
        return pb.StatusResponse(status=status_to_pb(st))

    @rpc
    def ListStatuses(self, request, context):
        statuses = self.service.list_statuses(namespace_of(context), list(request.filters))
        return pb.ListStatusesResponse(statuses=[status_to_pb(s) for s in statuses])

    @rpc
    def Abort(self, request, context):
        self.service.abort(namespace_of(context), request.ref)
        return empty_pb2.Empty()

    @rpc
    async def Write(self, requests, context):
        # A coroutine with read()/write(): when the client goes away grpc cancels this
        # task, and the cleanup (which must not await: it can be cancelled again) releases
        # the ref, after any thread still writing.
        ns, lease = namespace_of(context), lease_of(context)
        req = await context.read()
        if req is EOF:
            return
        if not req.ref:
            raise InvalidArgument("first message must have a reference")
        ref, total, expected = req.ref, req.total, req.expected
        writer = await _in_thread(self.service.writer, ns, ref, expected, total, lease,
                                  on_cancel=lambda w: w.close())
        # A big chunk is written and hashed in a thread while the client sends the next
        # one: its response goes out at once (offset advanced, digest left empty, which
        # clients keep as "unchanged"); a write error fails the next request.
        running: asyncio.Future | None = None   # a write or commit in a worker thread
        try:
            while True:
                if running is not None:
                    await asyncio.shield(running)   # the chunk of the previous message
                    running = None
                resp = pb.WriteContentResponse(action=req.action, offset=writer.offset)
                if req.expected:
                    expected = req.expected
                    if self._present(ns, expected):
                        writer.close()
                        self.service.abort(ns, ref)
                        raise AlreadyExists(f"blob with expected digest {expected} exists")
                if req.total > 0:
                    total = req.total
                if req.action == pb.STAT:
                    st = writer.status()
                    resp.digest = writer.digest()
                    resp.started_at.FromNanoseconds(st.started_at)
                    resp.updated_at.FromNanoseconds(st.updated_at)
                    resp.total = total
                else:
                    if req.offset > 0 and req.offset != writer.offset:
                        raise OutOfRange(f"write @{req.offset} must occur at current offset "
                                         f"{writer.offset}")
                    if req.offset == 0 and writer.offset > 0:
                        writer.truncate()
                        resp.offset = 0
                    data = req.data
                    if req.action == pb.WRITE and len(data) >= THREAD_THRESHOLD:
                        running = asyncio.ensure_future(asyncio.to_thread(writer.write, data))
                        resp.offset += len(data)
                    else:
                        if data:
                            resp.offset += writer.write(data)
                        if req.action == pb.COMMIT:
                            running = asyncio.ensure_future(asyncio.to_thread(
                                writer.commit, total, expected, dict(req.labels)))
                            await asyncio.shield(running)
                            running = None
                        resp.digest = writer.digest()
                await context.write(resp)
                if req.action == pb.COMMIT:
                    return
                req = await context.read()
                if req is EOF:
                    return
        finally:
            _close_after(running, writer.close)

    def _present(self, ns, digest) -> bool:
        try:
            self.service.info(ns, digest)
            return True
        except (NotFound, InvalidArgument):
            return False


async def _in_thread(fn, *args, on_cancel=None):
    """Run `fn` in a worker thread. If the RPC is cancelled meanwhile (the client went
    away), the thread still finishes, then `on_cancel(result)` cleans up after it."""
    future = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        if on_cancel is not None:
            future.add_done_callback(
                lambda f: f.cancelled() or f.exception() or on_cancel(f.result()))
        raise


def _close_after(running, close) -> None:
    """close() now, or once the thread still at work finishes (never under it). No await:
    cleanup must not be interruptible by a second cancellation."""
    if running is None or running.done():
        close()
    else:
        running.add_done_callback(lambda _: close())


def _store(ic: InitContext) -> LocalStore:
    os.makedirs(ic.root, mode=0o711, exist_ok=True)
    return LocalStore(ic.root)


def _service(ic: InitContext) -> ContentService:
    md = ic.get(METADATA)
    if md.content is None:
        raise NotFound("no content store: the content plugin is not loaded")
    return ContentService(md.content, ic.get(EVENT), md.namespaces)


REGISTRATIONS = [
    Registration(CONTENT, "content", _store, exports_root=True),
    Registration(SERVICE, "content-service", _service, requires=(EVENT, METADATA)),
    Registration(GRPC, "content", lambda ic: ContentAdapter(
        ic.get_by_id(SERVICE, "content-service")), requires=(SERVICE,)),
]
