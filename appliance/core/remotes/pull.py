"""Pull an image from a registry into the daemon: content, snapshots, the image record.

The steps are containerd's client-side pull with unpack, done in the daemon:
1. a lease (expiring after a day) holds what the pull writes until the image exists: the
   manifest (whose gc.ref labels keep the committed config and layers) and the snapshots;
   blobs are ingested outside it, so a failed pull's partial ingest stays for the retry;
2. the reference resolves to an index or manifest; an index yields the host's manifest;
3. the config, then every layer, stream from the registry through the content writer (which
   hashes as it writes and refuses a wrong digest), `max_concurrent_downloads` at a time
   (a download holds its slot up to its last byte, not through its commit's fsync);
   a partial ingest from an earlier (failed) pull is resumed with a range request;
4. each layer is unpacked while its bytes still arrive (core/remotes/feed.py); one whose
   parent is not committed yet goes into a parentless snapshot meanwhile, committed onto the
   parent after (overlayfs); its snapshot is committed once the blob's digest checked out;
5. the image record names the reference and points at the manifest (or index).

Blobs carry containerd's labels: the GC edges (`containerd.io/gc.ref.content.*`, the config's
`containerd.io/gc.ref.snapshot.<snapshotter>`), `containerd.io/distribution.source.<host>` and
the layers' `containerd.io/uncompressed`. Two pulls of images that share layers fetch and
unpack each shared layer once: the second waits for the first's fetch (per digest) and unpack
(per chain id), then finds the blob or snapshot in place.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import platform
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from ...errdefs import (AlreadyExists, ApplianceError, FailedPrecondition, InvalidArgument,
                        NotFound, Unimplemented, q)
from ...process import metrics
from ..metadata.images import Descriptor as ImageDescriptor, Image
from . import hosts as hostlib
from .feed import Feed
from .reference import Reference, parse as parse_reference
from .registry import (DOCKER_LIST, DOCKER_MANIFEST, MANIFEST_LIMIT, OCI_INDEX, OCI_MANIFEST,
                       Credentials, Descriptor, Registry, RegistryError, Timeouts)

log = logging.getLogger("appliance.pull")
FETCHED_BYTES = metrics.counter("ctrappliance_pull_fetched_bytes_total",
                                "Blob bytes the daemon's pulls downloaded from registries")

LEASE_EXPIRY_SECONDS = 24 * 3600
WRITE_BATCH = 1 << 20           # bytes gathered before one write+hash
# the longest an unpack waits for its layer's download to start (it is queued behind
# max_concurrent_downloads others, each bounded by the progress timeout)
FEED_WAIT_SECONDS = 3600.0
# a cancelled pull waits this long for its download or apply thread to end (told to stop)
# before closing the writer or removing the snapshot it works on
THREAD_STOP_SECONDS = 60.0
INDEXES = (OCI_INDEX, DOCKER_LIST)
MANIFESTS = (OCI_MANIFEST, DOCKER_MANIFEST)


@dataclass
class PullOptions:
    snapshotter: str = "overlayfs"
    config_path: str = ""                     # certs.d root; "" = default hosts only
    hosts: Callable[[str], list] | None = None   # domain -> hosts, instead of config_path
    credentials: Credentials | None = None
    max_concurrent_downloads: int = 3
    timeouts: Timeouts = field(default_factory=Timeouts)
    labels: dict[str, str] = field(default_factory=dict)   # on the image record
    name: str = ""                            # image name; default: the normalised ref


@dataclass
class Pulled:
    image: Image
    reference: Reference
    manifest_digest: str
    config_digest: str
    chain_id: str
    size: int                                 # compressed: config + layers, as containerd


def host_platform() -> tuple[str, str]:
    machine = platform.machine()
    return "linux", {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(machine, machine)


def chain_ids(diff_ids: list[str]) -> list[str]:
    chains = []
    for diff in diff_ids:
        chains.append(diff if not chains else
                      "sha256:" + hashlib.sha256(f"{chains[-1]} {diff}".encode()).hexdigest())
    return chains


class Puller:
    """Pulls into the daemon's own services (the ones the gRPC adapters use)."""

    def __init__(self, content, snapshots, diff, images, leases):
        self.content = content
        self.snapshots = snapshots
        self.diff = diff
        self.images = images
        self.leases = leases
        self._running: dict[tuple, asyncio.Future] = {}   # a fetch or unpack in progress

    async def pull(self, ns: str, text: str, opts: PullOptions | None = None) -> Pulled:
        opts = opts or PullOptions()
        ref = parse_reference(text)
        lease = f"pull-{secrets.token_hex(8)}"
        expire = time.strftime("%Y-%m-%dT%H:%M:%SZ",
                               time.gmtime(time.time() + LEASE_EXPIRY_SECONDS))
        self.leases.create(ns, lease, {"containerd.io/gc.expire": expire})
        hosts = opts.hosts(ref.domain) if opts.hosts else \
            hostlib.registry_hosts(ref.domain, opts.config_path)
        registry = Registry(hosts, ref.path, opts.credentials, opts.timeouts)
        try:
            return await self._pull(ns, ref, registry, lease, opts)
        finally:
            await registry.aclose()
            self.leases.delete(ns, lease)

    async def _pull(self, ns, ref: Reference, registry: Registry, lease: str,
                    opts: PullOptions) -> Pulled:
        source = {f"containerd.io/distribution.source.{ref.domain}": ref.path}
        try:
            target, body = await registry.resolve(ref)
        except ApplianceError as exc:   # containerd's words, the cause's status code
            raise type(exc)(f"failed to resolve reference {json.dumps(str(ref))}: "
                            f"{exc.message}") from None
        manifest_desc, manifest_body = target, body
        if target.media_type in INDEXES:
            manifest_desc = _pick_manifest(json.loads(body), ref)
            manifest_body = await self._read_small(registry, manifest_desc)
            await self._store(ns, target, body, lease, {
                **source, "containerd.io/gc.ref.content.m.0": manifest_desc.digest})
        elif target.media_type not in MANIFESTS:
            raise InvalidArgument(f"{ref}: unsupported media type {target.media_type}")
        manifest = json.loads(manifest_body)
        config_desc = _descriptor(manifest["config"])
        layers = [_descriptor(d) for d in manifest.get("layers", [])]
        manifest_labels = {**source, "containerd.io/gc.ref.content.config": config_desc.digest}
        manifest_labels.update({f"containerd.io/gc.ref.content.l.{i}": d.digest
                                for i, d in enumerate(layers)})
        await self._store(ns, manifest_desc, manifest_body, lease, manifest_labels)

        # the config first and beside the layers, read into memory: the unpacks need its
        # diff ids, not its commit (stored meanwhile, awaited with the layers)
        config_read = asyncio.ensure_future(self._read_config(ns, registry, config_desc))
        sem = asyncio.Semaphore(max(1, opts.max_concurrent_downloads))
        blobs = [_Blob() for _ in layers]
        fetches = [asyncio.ensure_future(self._fetch(ns, registry, d, source, sem, b))
                   for d, b in zip(layers, blobs)]
        for f, b in zip(fetches, blobs):
            b.fetched = f
        unpacks: list[asyncio.Future] = []
        stored = None
        try:
            config_body = await config_read
            stored = asyncio.ensure_future(self._one_at_a_time(
                ("fetch", config_desc.digest),
                lambda: self._store(ns, config_desc, config_body, lease, source)))
            config = json.loads(config_body)
            diff_ids = config.get("rootfs", {}).get("diff_ids", [])
            if len(diff_ids) != len(layers):
                raise InvalidArgument(f"{ref}: the config lists {len(diff_ids)} layers, the "
                                      f"manifest {len(layers)}")
            chains = chain_ids(diff_ids)
            for i, layer in enumerate(layers):
                unpacks.append(asyncio.ensure_future(self._unpack(
                    ns, opts.snapshotter, layer, chains[i - 1] if i else "", chains[i],
                    diff_ids[i], lease, blobs[i], blobs[i - 1].unpacked if i else None)))
            await asyncio.gather(*unpacks)
            await stored
            await asyncio.gather(*fetches)
        finally:
            others = [config_read, *([stored] if stored else [])]
            for f in unpacks + fetches + others:
                f.cancel()
            await asyncio.gather(*unpacks, *fetches, *others, return_exceptions=True)
        labels = [(layer.digest, "containerd.io/uncompressed", diff_ids[i])
                  for i, layer in enumerate(layers)]
        chain = chains[-1] if chains else ""
        if chain:
            labels.append((config_desc.digest,
                           f"containerd.io/gc.ref.snapshot.{opts.snapshotter}", chain))
        image = Image(opts.name or str(ref),
                      ImageDescriptor(target.media_type, target.digest, target.size),
                      dict(opts.labels))
        image = await asyncio.to_thread(self._finish, ns, labels, image)
        size = config_desc.size + sum(d.size for d in layers)
        return Pulled(image, ref, manifest_desc.digest, config_desc.digest, chain, size)

    # --- content -------------------------------------------------------------------

    async def _read_small(self, registry: Registry, desc: Descriptor) -> bytes:
        data = b"".join([chunk async for chunk in await registry.fetch(desc)])
        if "sha256:" + hashlib.sha256(data).hexdigest() != desc.digest:
            raise RegistryError(f"{desc.digest}: the registry sent other bytes")
        return data

    async def _read_config(self, ns, registry: Registry, desc: Descriptor) -> bytes:
        """The config's bytes: from the content store when it is there, else the registry
        (checked against its digest; one bigger than a manifest may be is read as a blob)."""
        try:
            return await asyncio.to_thread(self._read_blob, ns, desc.digest)
        except NotFound:
            pass
        if desc.size > MANIFEST_LIMIT:
            await self._fetch(ns, registry, desc, {}, asyncio.Semaphore(1))
            return await asyncio.to_thread(self._read_blob, ns, desc.digest)
        chunks, size = [], 0
        async for chunk in await registry.fetch(desc):
            size += len(chunk)
            if size > desc.size:
                break
            chunks.append(chunk)
        FETCHED_BYTES.inc(size)
        data = b"".join(chunks)
        # what the content writer's commit would say of the same bytes
        if size != desc.size:
            raise FailedPrecondition(f"{q('pull-' + desc.digest)} failed size validation: "
                                     f"{size} != {desc.size}: failed precondition")
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if actual != desc.digest:
            raise FailedPrecondition(f"unexpected commit digest {actual}, expected "
                                     f"{desc.digest}: failed precondition")
        return data

    async def _store(self, ns, desc: Descriptor, data: bytes, lease, labels) -> None:
        """A manifest or index we already hold in memory, into the content store."""
        def write():
            try:
                writer = self.content.writer(ns, f"pull-{desc.digest}", desc.digest,
                                             desc.size, lease)
            except AlreadyExists:
                self._label(ns, desc.digest, labels)
                return
            try:
                if writer.offset != desc.size:
                    writer.truncate()
                    writer.write(data)
                writer.commit(desc.size, desc.digest, labels)
            finally:
                writer.close()
        await asyncio.to_thread(write)

    def _label(self, ns, digest, labels) -> None:
        self.content.update(ns, digest, labels, [f"labels.{k}" for k in labels])

    def _read_blob(self, ns, digest) -> bytes:
        with self.content.reader(ns, digest) as f:
            return f.read()

    async def _one_at_a_time(self, key, work) -> None:
        """Run `work()` while no other pull runs it for `key`: a second pull waits for the
        first, then runs its own, which finds the blob or snapshot in place."""
        while (running := self._running.get(key)) is not None:
            await asyncio.shield(running)
        done = asyncio.get_running_loop().create_future()
        self._running[key] = done
        try:
            await work()
        finally:
            del self._running[key]
            done.set_result(None)

    async def _fetch(self, ns, registry: Registry, desc: Descriptor, labels, sem,
                     blob: "_Blob | None" = None) -> None:
        """The blob into this namespace's content: fetched once per daemon at a time."""
        blob = blob or _Blob()
        async def work():
            await self._download(ns, registry, desc, labels, blob, sem)
        try:
            await self._one_at_a_time(("fetch", desc.digest), work)
        finally:
            blob.started(None)        # no feed to follow (any more): read the blob

    async def _download(self, ns, registry: Registry, desc: Descriptor, labels,
                        blob: "_Blob", slot: asyncio.Semaphore) -> None:
        ref = f"pull-{desc.digest}"
        async with slot:     # one of max_concurrent_downloads, up to the last byte
            try:
                # outside the lease: a failed pull's partial ingest stays (24 h, as
                # containerd's unleased ingests), so a retry resumes it; the committed blob
                # is kept by the leased manifest's gc.ref labels
                writer = await asyncio.to_thread(self.content.writer, ns, ref, desc.digest,
                                                 desc.size, None)
            except AlreadyExists:
                self._label(ns, desc.digest, labels)
                return
            try:
                await self._receive(registry, desc, writer, blob)
            except BaseException:
                writer.close()
                raise
        if writer.offset == desc.size and writer.digest() == desc.digest:
            blob.checked()               # what its commit checks: the unpack need not wait
        # the commit (fsync, rename, metadata) leaves the slot to the next download
        try:
            await asyncio.to_thread(writer.commit, desc.size, desc.digest, labels)
        except AlreadyExists:
            self._label(ns, desc.digest, labels)
        except Exception:
            writer.close()
            try:
                self.content.abort(ns, ref)   # a wrong blob leaves nothing behind
            except NotFound:
                pass
            raise
        finally:
            writer.close()

    async def _receive(self, registry: Registry, desc: Descriptor, writer,
                       blob: "_Blob") -> None:
        """The rest of the blob's bytes into `writer` (behind a partial ingest: a range
        request), followed by the unpack as they arrive."""
        feed = None
        try:
            if writer.offset > desc.size:
                writer.truncate()
            if writer.offset >= desc.size:
                return
            offset = writer.offset
            try:
                body = await registry.open_blob(desc, offset)
            except RegistryError:
                if not offset:
                    raise
                writer.truncate()          # no range support there: from the start
                body = await registry.open_blob(desc, 0)
            if writer.local is not None:   # an unpack may read it as it arrives
                feed = Feed(os.path.join(writer.local.path, "data"),
                            lambda: self.content.file_path(desc.digest), writer.offset)
                blob.started(feed)
            stop = threading.Event()
            await _in_own_thread(lambda: _copy(body, writer, feed, stop), "blob-fetch",
                                 lambda: (stop.set(), body.abort()))
            if feed is not None:
                feed.finish()
        except BaseException as exc:
            if feed is not None:
                feed.fail(str(exc) or type(exc).__name__)
            raise

    # --- snapshots -----------------------------------------------------------------

    async def _unpack(self, ns, snapshotter: str, layer: Descriptor, parent: str, chain: str,
                      diff_id: str, lease, blob: "_Blob", parent_done=None) -> None:
        try:
            await self._one_at_a_time(("unpack", snapshotter, chain), lambda: self._extract(
                ns, snapshotter, layer, parent, chain, diff_id, lease, blob, parent_done))
        except BaseException as exc:
            blob.settle(exc)
            raise
        blob.settle(None)

    async def _extract(self, ns, snapshotter: str, layer: Descriptor, parent: str, chain: str,
                       diff_id: str, lease, blob: "_Blob", parent_done) -> None:
        """Unpack the layer while its bytes still arrive (when this pull downloads them).
        While its parent is still being unpacked (`parent_done`, this pull's), it goes into
        a parentless snapshot meanwhile and moves onto the parent once that is committed
        (overlayfs: Snapshotter.commit_onto). The snapshot is committed once the blob's
        digest checked out too."""
        sn = self.snapshots.get(snapshotter)
        try:
            sn.stat(ns, chain)
            blob.settle(None)
            return                       # unpacked before (this or another image)
        except NotFound:
            pass
        # its download under way (or over) first: the metadata writes that start it come
        # before this snapshot's, and the parent may be committed by then
        await asyncio.wait_for(asyncio.shield(blob.ready), FEED_WAIT_SECONDS)
        detached = None
        if parent_done is not None and not parent_done.done():
            detached = await self._apply_detached(ns, snapshotter, layer, lease, blob)
        try:
            if parent_done is not None:
                await parent_done        # its failure is this layer's too
            key = f"extract-{secrets.token_hex(6)} {chain}"
            labels = {"containerd.io/snapshot.ref": chain}
            if detached is not None:
                await blob.right()       # its digest checked out
                _check_diff(layer, detached.applied, diff_id)
                implicit = detached.implicit
                try:
                    await asyncio.to_thread(
                        self.snapshots.commit_onto, ns, snapshotter, chain, detached.key,
                        parent, lambda mounts: self.diff.rebase(mounts, implicit), labels, lease)
                    detached = None      # it is the snapshot `chain` now
                except AlreadyExists:   # a concurrent unpack committed it first
                    pass
                blob.settle(None)
                return
            mounts = await asyncio.to_thread(self.snapshots.prepare, ns, snapshotter, key,
                                             parent, labels, lease)
            try:
                applied = await self._apply_following(blob, lambda follow: self.diff.apply(
                    ns, layer.media_type, layer.digest, mounts, None, follow))
                await blob.right()       # its digest checked out
                _check_diff(layer, applied, diff_id)
                await asyncio.to_thread(self.snapshots.commit, ns, snapshotter, chain, key,
                                        labels, lease)
                blob.settle(None)        # the next layer goes on while the rest is removed
            except AlreadyExists:       # a concurrent unpack committed it first
                blob.settle(None)
                await asyncio.to_thread(self.snapshots.remove, ns, snapshotter, key)
            except BaseException:
                await self._remove_snapshot(ns, snapshotter, key)
                raise
        finally:
            if detached is not None:
                await self._remove_snapshot(ns, snapshotter, detached.key)

    async def _apply_detached(self, ns, snapshotter: str, layer: Descriptor, lease,
                              blob: "_Blob") -> "_Detached | None":
        """The layer applied into a parentless snapshot; None where that cannot be done
        (another snapshotter than overlayfs): the layer then waits for its parent."""
        key = f"extract-{secrets.token_hex(6)} {layer.digest} (detached)"
        mounts = await asyncio.to_thread(self.snapshots.prepare, ns, snapshotter, key, "",
                                         {}, lease)
        implicit: dict = {}
        try:
            applied = await self._apply_following(blob, lambda follow: self.diff.apply_detached(
                ns, layer.media_type, layer.digest, mounts, follow, implicit))
        except Unimplemented:
            await self._remove_snapshot(ns, snapshotter, key)
            return None
        except BaseException:
            await self._remove_snapshot(ns, snapshotter, key)
            raise
        return _Detached(key, applied, implicit)

    async def _remove_snapshot(self, ns, snapshotter: str, key: str) -> None:
        try:
            await asyncio.to_thread(self.snapshots.remove, ns, snapshotter, key)
        except Exception as exc:
            log.warning("removing snapshot %s after an unpack: %s", key, exc)

    async def _apply_following(self, blob: "_Blob", apply) -> str:
        """`apply(follow)` the layer from its download as it arrives (follow: what opens
        it), or from the committed blob (None); returns its diff id."""
        feed = await asyncio.wait_for(asyncio.shield(blob.ready), FEED_WAIT_SECONDS)
        if feed is None:
            await blob.fetched
        try:
            return await self._apply(apply, feed)
        except Unimplemented:            # a stream processor wants the whole blob
            if feed is None:
                raise
            await blob.fetched
            return await self._apply(apply, None)
        except Exception:
            if feed is not None:         # the download's own error says more (a bad digest)
                await asyncio.wait([blob.fetched], timeout=FEED_WAIT_SECONDS)
                if blob.fetched.done() and not blob.fetched.cancelled():
                    blob.fetched.result()
            raise

    async def _apply(self, apply, feed) -> str:
        """`apply` in a thread of its own (see _in_own_thread); a cancelled pull ends the
        feed, so the follower stops reading."""
        follow = feed.open if feed is not None else None
        return (await _in_own_thread(lambda: apply(follow), "layer-apply", lambda: feed and
                                     feed.fail("the pull was cancelled")))[1]

    def _finish(self, ns, labels, image: Image) -> Image:
        """The blobs' labels (one transaction), then the image record."""
        self.content.update_many(ns, [(digest, {key: value}, [f"labels.{key}"])
                                      for digest, key, value in labels])
        try:
            return self.images.create(ns, image)
        except AlreadyExists:
            return self.images.update(ns, image, [])


class _Blob:
    """One layer of this pull: `ready` gives the Feed to follow while it downloads (None
    once there is nothing to follow: read the committed blob); `fetched` is its fetch;
    `unpacked` is done once its snapshot is committed (or failed), which is what the next
    layer waits for, not the removal of what the unpack used."""

    def __init__(self):
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future = loop.create_future()
        self.fetched: asyncio.Future | None = None
        self.verified: asyncio.Future = loop.create_future()   # see checked()
        self.unpacked: asyncio.Future = loop.create_future()
        self.unpacked.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved

    def checked(self) -> None:
        if not self.verified.done():
            self.verified.set_result(None)

    async def right(self) -> None:
        """Until the blob's bytes matched its digest (its commit, the fsync, may still be
        running) or its fetch is over (a failure is raised here)."""
        await asyncio.wait([self.verified, self.fetched], return_when=asyncio.FIRST_COMPLETED)
        if not self.verified.done():
            self.fetched.result()

    def settle(self, exc: BaseException | None) -> None:
        if not self.unpacked.done():
            if exc is None:
                self.unpacked.set_result(None)
            elif isinstance(exc, asyncio.CancelledError):
                self.unpacked.cancel()
            else:
                self.unpacked.set_exception(exc)

    def started(self, feed: Feed | None) -> None:
        if not self.ready.done():
            self.ready.set_result(feed)


@dataclass
class _Detached:
    """A layer applied into a parentless snapshot, waiting for its parent's commit."""
    key: str
    applied: str                 # its diff id
    implicit: dict               # parents it made without knowing the lowers


def _copy(body, writer, feed: Feed | None, stop: threading.Event) -> None:
    """The body into the content writer (in a worker thread), in batches of WRITE_BATCH
    bytes; what arrived before a failure is written too: a retried pull resumes behind it."""
    batch: list[bytes] = []
    pending = 0
    try:
        for chunk in body.chunks():
            if stop.is_set():
                raise RegistryError("the pull was cancelled")
            batch.append(chunk)
            pending += len(chunk)
            if pending >= WRITE_BATCH:
                writer.write(b"".join(batch))
                FETCHED_BYTES.inc(pending)
                batch, pending = [], 0
                if feed is not None:
                    feed.grew(writer.offset)
    finally:
        if batch:
            writer.write(b"".join(batch))
            FETCHED_BYTES.inc(pending)
        if feed is not None:
            feed.grew(writer.offset)


async def _in_own_thread(fn, name: str, stop):
    """fn() in a thread of its own: long work (a download, an apply that follows one) must
    not hold a worker of the loop's pool, which the other's short writes need. A cancelled
    caller calls stop() and waits (bounded) for the thread to end before going on: what it
    works on (a writer, a snapshot) is closed or removed after."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def run():
        try:
            result = fn()
        except BaseException as exc:   # delivered to the awaiting caller
            loop.call_soon_threadsafe(_settle, done, None, exc)
        else:
            loop.call_soon_threadsafe(_settle, done, result, None)
    threading.Thread(target=run, name=name, daemon=True).start()
    try:
        return await asyncio.shield(done)
    except asyncio.CancelledError:
        stop()
        await asyncio.wait([done], timeout=THREAD_STOP_SECONDS)
        raise


def _settle(future: asyncio.Future, result, exc) -> None:
    if not future.done():
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)


def _check_diff(layer: Descriptor, applied: str, diff_id: str) -> None:
    if applied != diff_id:
        raise InvalidArgument(f"layer {layer.digest}: unpacked to {applied}, the image config "
                              f"says {diff_id}")


def _descriptor(d: dict) -> Descriptor:
    try:
        return Descriptor(d["mediaType"], d["digest"], int(d["size"]))
    except (KeyError, TypeError, ValueError):
        raise InvalidArgument(f"invalid descriptor in manifest: {d!r}") from None


def _pick_manifest(index: dict, ref: Reference) -> Descriptor:
    want_os, want_arch = host_platform()
    for m in index.get("manifests", []):
        p = m.get("platform") or {}
        if p.get("os") == want_os and p.get("architecture") == want_arch:
            return _descriptor(m)
    raise NotFound(f"{ref}: no match for platform {want_os}/{want_arch} in manifest: "
                   "not found")
