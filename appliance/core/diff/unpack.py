"""Apply a layer blob onto mounts, with the fast path into our own snapshot dirs and
one unpack per (snapshotter, parent chain, layer) at a time.

containerd unpacks the same layer twice when two clients pull or import the
same image at once. Here the second Apply of the same layer onto the same
parents waits for the first extraction's snapshot: once that is committed the
second returns the same descriptor without writing (the client's Commit then
finds the chain id taken, which every containerd client treats as done); if
the first fails or is removed, the second does the work itself. The snapshot store
tells us when the first one's snapshot is committed or removed (`when_settled`).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass

from ... import mount as mountlib
from ...errdefs import (DeadlineExceeded, InvalidArgument, NotFound, ResourceExhausted,
                        Unimplemented, exhausted, no_space)
from ...process import failpoint, memory, metrics
from .decompress import DecompressError, LayerStream, check_media_type

log = logging.getLogger("appliance.diff")
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"
DEDUPE_WAIT_SECONDS = 600.0   # the longest a second unpack waits for the first's snapshot
# A client that looked for the layer's snapshot just before the first unpack committed it
# applies the same layer again a moment later: a committed extraction stays adoptable this
# long (each adoption checks that its snapshot is still committed).
KEEP_COMMITTED_SECONDS = 60.0
# Unpacks of this many entries or more are followed by a full collection: see memory.py.
# Below, the objects they free pin little (a layer of a few big files makes few objects;
# the collection holds the GIL for 40-120 ms in a daemon, so it is not done for them).
COLLECT_AFTER_ENTRIES = 4096


@dataclass
class Applied:
    digest: str
    size: int


@dataclass
class _InFlight:
    snapshotter: object     # store.Snapshotter owning the first extraction
    sid: int
    done: threading.Event
    result: Applied | None = None
    settled_at: float = 0.0   # when its snapshot was committed (it stays adoptable a while)


class Unpacker:
    def __init__(self, snapshotters: dict, tmpmounts: str, processors=None):
        self.snapshotters = snapshotters      # name -> store.Snapshotter
        self.tmpmounts = tmpmounts
        self.processors = processors          # core.streamprocessor.Processors (config)
        self._inflight: dict[tuple, _InFlight] = {}
        self._lock = threading.Lock()

    def _ours(self, mounts):
        """(snapshotter, directory, lowers, overlay?) when the mounts are one of our snapshots."""
        for sn in self.snapshotters.values():
            target = sn.backend.apply_target(mounts)
            if target is not None:
                return (sn, *target)
        return None

    def _opener(self, blob_path: str, media_type: str, payloads, follow=None):
        """`follow` (None: the blob file) for the media types we inflate ourselves; else what
        opens the output of the configured stream processors (which win over the built-in
        handling, as containerd's)."""
        if self.processors is None or self.processors.find(media_type) is None:
            check_media_type(media_type)
            return follow
        if follow is not None:
            raise Unimplemented(f"a stream processor for {media_type} reads the whole blob: "
                                "unimplemented")

        def native(mt):
            try:
                check_media_type(mt)
                return self.processors.find(mt) is None
            except NotFound:
                return False

        def opener():
            with open(blob_path, "rb") as blob:  # the processor holds its own descriptor
                return self.processors.unwrap(media_type, blob, payloads, is_final=native)[1]
        return opener

    def apply(self, blob_path: str, media_type: str, digest: str, mounts,
              payloads=None, follow=None) -> Applied:
        """`follow` opens the blob's bytes while they still arrive (core/remotes/feed.py)."""
        opener = self._opener(blob_path, media_type, payloads, follow)
        ours = self._ours(mounts)
        if ours is None:  # somebody else's mounts: mount them, as containerd does
            if len(mounts) == 1 and mounts[0].type == "overlay":
                upper, lowers = _overlay_dirs(mounts[0].options)
                if upper:
                    return self._run(blob_path, upper, lowers, True, opener=opener)
            with mountlib.TempMount(self.tmpmounts, mounts) as root:
                return self._run(blob_path, root, [], False, opener=opener)
        sn, directory, lowers, overlay = ours
        key = (sn.name, tuple(lowers), digest)
        sid = sn.backend.owns(directory)
        while True:
            with self._lock:
                self._forget_expired()
                first = self._inflight.get(key)
                if first is None:
                    mine = _InFlight(sn, sid, threading.Event())
                    self._inflight[key] = mine
                    break
            adopted = self._wait_for(key, first, sid)
            if adopted is not None:
                sn.adopt(directory)
                log.info("layer %s already unpacked by a concurrent unpack", digest)
                return adopted
            with self._lock:   # the first failed, went, or is another namespace's: ours now
                if self._inflight.get(key) is first:
                    del self._inflight[key]
        try:
            mine.result = self._run(blob_path, directory, lowers, overlay,
                                    userxattr=getattr(sn.backend, "userxattr", False),
                                    opener=opener)
            return mine.result
        except BaseException as exc:
            if isinstance(exc, ResourceExhausted) and sn.backend.name == "overlayfs":
                _empty(directory)   # the partial layer: an upper dir holds nothing else
            with self._lock:
                self._inflight.pop(key, None)
            mine.done.set()
            raise
        finally:
            if mine.result is not None:   # the entry stays until its snapshot is settled
                sn.when_settled(sid, lambda: self._release(key, mine))

    def _release(self, key, mine: _InFlight) -> None:
        """The first unpack's snapshot settled: committed, the entry stays adoptable for
        KEEP_COMMITTED_SECONDS; removed, it goes."""
        state = mine.snapshotter.key_of(mine.sid)
        with self._lock:
            if state is not None and state[2] == "committed" and mine.result is not None:
                mine.settled_at = time.monotonic()
            elif self._inflight.get(key) is mine:
                del self._inflight[key]
        mine.done.set()

    def _forget_expired(self) -> None:
        """Drop committed extractions kept longer than KEEP_COMMITTED_SECONDS (under _lock)."""
        now = time.monotonic()
        for key in [k for k, e in self._inflight.items()
                    if e.settled_at and now - e.settled_at > KEEP_COMMITTED_SECONDS]:
            del self._inflight[key]

    def _wait_for(self, key, first: _InFlight, sid: int) -> Applied | None:
        if not first.done.wait(DEDUPE_WAIT_SECONDS):
            if first.result is None:
                raise DeadlineExceeded("timed out waiting for a concurrent unpack of the same "
                                       "layer")
            self._release(key, first)   # its snapshot stays active: stop waiting for it
            return None
        state = first.snapshotter.key_of(first.sid)
        if first.result is None or state is None or state[2] != "committed":
            return None   # the first one failed or went away: do it ourselves
        if first.settled_at:   # committed before we came: only a late twin in its namespace
            mine = first.snapshotter.key_of(sid)
            if mine is None or mine[0] != state[0]:
                return None
        return first.result

    # --- a layer applied before its parent is committed ---------------------------------

    def _detached_dir(self, mounts):
        """(snapshotter, fs dir) of a parentless active overlayfs snapshot of ours."""
        ours = self._ours(mounts)
        if ours is None or ours[0].backend.name != "overlayfs" or ours[2] or ours[3]:
            raise Unimplemented("a detached apply needs a parentless overlayfs snapshot: "
                                "unimplemented")
        return ours[0], ours[1]

    def apply_detached(self, blob_path: str, media_type: str, mounts, follow=None,
                       implicit: dict | None = None) -> Applied:
        """Apply a layer into a parentless overlayfs snapshot as the upper dir it will be
        (whiteouts as overlay's), while its parent is still being unpacked; `rebase` fits it
        to the parent once that is committed. `implicit` collects what rebase needs."""
        sn, directory = self._detached_dir(mounts)
        opener = self._opener(blob_path, media_type, None, follow)
        return self._run(blob_path, directory, [], True, userxattr=sn.backend.userxattr,
                         opener=opener, implicit=implicit)

    def rebase(self, mounts, implicit) -> None:
        """A detached apply's upper dir, now on lowers (`mounts`: the overlay it would have
        as an active snapshot on its committed parent), made what the apply onto them would
        have made: the upper dir takes the parent's owner (as prepare gives it), its
        unlisted parents the lowers' attributes."""
        from .apply import inherit_parents
        ours = self._ours(mounts)
        if ours is None or ours[0].backend.name != "overlayfs" or not ours[3] or not ours[2]:
            raise InvalidArgument("rebase: the target is not an overlayfs snapshot on a parent")
        upper, lowers = ours[1], ours[2]
        st = os.lstat(lowers[0])          # a layer's "./" is skipped: the upper dir keeps
        os.lchown(upper, st.st_uid, st.st_gid)    # what prepare gives it
        inherit_parents(upper, implicit, lowers)

    @staticmethod
    def _run(blob_path, root, lowers, overlay, userxattr=False, opener=None,
             implicit=None) -> Applied:
        from .apply import ApplyError, apply_tar  # imported on the first unpack: start-up cost
        stream = LayerStream(blob_path, opener)
        started = time.monotonic()
        stats = {"entries": 0}
        try:
            apply_tar(root, stream.read, overlay=overlay, lowers=lowers, userxattr=userxattr,
                      implicit=implicit, stats=stats)
        except Exception as exc:
            full = no_space(exc)
            if full is not None:
                raise exhausted(full, full.filename or root, "write") from None
            if isinstance(exc, (ApplyError, DecompressError)):
                raise InvalidArgument(str(exc)) from None
            raise
        finally:
            stream.close()
            # the worker threads' freed buffers sit in their malloc arenas; a big layer's
            # per-entry objects in pymalloc's
            memory.trim(collect=stats["entries"] >= COLLECT_AFTER_ENTRIES)
        failpoint.hit("layer.apply")
        elapsed = time.monotonic() - started
        metrics.UNPACK_BYTES.inc(stream.size)
        metrics.UNPACK_DURATION.observe(elapsed)
        log.debug("applied layer %s: %d bytes in %.3fs (%.0f MiB/s)", stream.digest(), stream.size,
                  elapsed, stream.size / max(elapsed, 1e-9) / 2**20)
        return Applied(stream.digest(), stream.size)


def _empty(directory: str) -> None:
    """Remove everything in `directory` now (a full disk wants the space back at once)."""
    from ...process.trash import remove_tree
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    remove_tree(entry.path)
                else:
                    os.unlink(entry.path)
    except OSError as exc:
        log.warning("failed to empty %s after a full disk: %s", directory, exc)


def _overlay_dirs(options):
    from ..snapshots.backends import overlay_dirs
    return overlay_dirs(options)
