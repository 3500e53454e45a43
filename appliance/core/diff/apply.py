"""The executor half of layer apply: runs the planner's operations on a directory.

`apply_tar(root, read)` unpacks one layer stream (already decompressed) into
`root`. With `overlay=True` the root is an overlayfs upper dir and whiteouts take
overlay's form (a 0/0 character device; opaque directories get the
`trusted.overlay.opaque` xattr), with `lowers` (nearest first) giving missing
parent directories their attributes, as containerd does. Otherwise whiteouts
delete what they name.
"""
from __future__ import annotations

import errno
import logging
import os
import queue
import shutil
import stat
import threading

from ..snapshots.backends import in_user_namespace
from . import planner
from .planner import Create, HostileEntry, Opaque, Skip, Whiteout
from .tarstream import AREG, BLK, CHR, DIR, FIFO, LINK, REG, SYMLINK, TarError, TarReader

try:
    from ..._core import write_file, write_files
except ImportError:  # pragma: no cover - not built: the pure twin
    from ..._core_py import write_file, write_files

log = logging.getLogger("appliance.diff")

_NOFOLLOW_WRITE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
_DEV_KIND = {CHR: stat.S_IFCHR, BLK: stat.S_IFBLK, FIFO: stat.S_IFIFO}
MAX_TIME_NS = (1 << 63) - 1
# regular files up to this size without xattrs are written by one call (`write_file`: open,
# write, fchown, fchmod, utime and close under one release of the GIL); larger ones stream
WHOLE_FILE_MAX = 256 << 10
MAX_ID = (1 << 32) - 2     # the largest id os.fchown takes ((uid_t)-1 means "unchanged")
# New small files are handed to a writer thread in batches of this many files or bytes, so
# their syscalls (most of an apply's time, in the kernel) overlap parsing the next entries
BATCH_FILES = 64
BATCH_BYTES = 2 << 20
WRITE_TIMEOUT = 300.0      # the longest the parser waits for the writer to catch up


def _umask() -> int:
    """The process umask, read without changing it (os.umask would race other threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o777   # unknown: always chmod


UMASK = _umask()
ROOT_IDS = os.geteuid() == 0 and os.getegid() == 0
DEVICES = not in_user_namespace()   # containerd skips device nodes in a user namespace


class ApplyError(Exception):
    """The layer cannot be applied; the message says which entry and why."""


def _kind(path: str):
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None, ""
    if stat.S_ISLNK(st.st_mode):
        return "symlink", os.readlink(path)
    return ("dir" if stat.S_ISDIR(st.st_mode) else "other"), ""


def _real_dir(root: str, parts, known: dict) -> bool:
    """Whether root/parts is a directory reached through directories only (no symlink)."""
    if parts not in known:
        if not _real_dir(root, parts[:-1], known):
            known[parts] = False
        else:
            try:
                known[parts] = stat.S_ISDIR(os.lstat(_join(root, parts)).st_mode)
            except OSError:
                known[parts] = False
    return known[parts]


def _setxattr(path: str, key: str, value: bytes) -> None:
    """os.setxattr (never through a symlink) whose error names the key, as containerd's."""
    try:
        os.setxattr(path, key, value, follow_symlinks=False)
    except OSError as exc:
        raise OSError(exc.errno, f"failed to setxattr {path!r} for key {key!r}: "
                                 f"{exc.strerror}") from None


def _join(root: str, parts) -> str:
    """os.path.join for cleaned parts (no "", no "/" in them), without its per-part checks."""
    if not parts:
        return root
    return ("/" if root == "/" else root + "/") + "/".join(parts)


def _bound(ns: int) -> int:
    return ns if 0 <= ns <= MAX_TIME_NS else 0


class _FileWriter:
    """Writes new small regular files in a thread of its own, in submission order. The
    applier calls `flush()` before anything that looks at or changes the tree other than
    creating new names: then the tree is what the sequential apply would have made."""

    def __init__(self):
        self._batch: list = []
        self._bytes = 0
        self._queue: queue.Queue = queue.Queue(2)   # bounded: the data views pin buffers
        self._cond = threading.Condition()
        self._sent = self._done = 0
        self.error: tuple[str, BaseException] | None = None   # (entry name, exception)
        self._thread: threading.Thread | None = None

    def submit(self, name: str, args: tuple, size: int) -> None:
        self._batch.append((name, args))
        self._bytes += size
        if len(self._batch) >= BATCH_FILES or self._bytes >= BATCH_BYTES:
            self._send()

    def _send(self) -> None:
        if not self._batch:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="layer-write", daemon=True)
            self._thread.start()
        batch, self._batch, self._bytes = self._batch, [], 0
        with self._cond:
            self._sent += 1
        self._queue.put(batch, timeout=WRITE_TIMEOUT)

    def flush(self) -> None:
        """Wait until every submitted file is written; raises the first failure's
        (name, exception) through `error` (the caller reports it)."""
        self._send()
        with self._cond:
            if not self._cond.wait_for(lambda: self._done == self._sent, WRITE_TIMEOUT):
                raise TimeoutError(errno.ETIMEDOUT, "the layer's file writer is stuck")

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None, timeout=WRITE_TIMEOUT)
            self._thread.join(WRITE_TIMEOUT)

    def _work(self) -> None:
        while (batch := self._queue.get()) is not None:
            if self.error is None:
                try:   # the whole batch with one release of the GIL
                    failed, exc = write_files([args for _, args in batch])
                    if exc is not None:
                        self.error = (batch[failed][0], exc)
                except BaseException as exc:   # reported by the applier's next flush
                    self.error = (batch[0][0], exc)
            with self._cond:
                self._done += 1
                self._cond.notify_all()


class Applier:
    def __init__(self, root: str, overlay: bool = False, lowers=(), userxattr: bool = False,
                 implicit: dict | None = None):
        self.root = os.path.normpath(root)
        self.overlay = overlay
        self.lowers = list(lowers)
        # parent directories this apply made for entries the layer did not list (in order):
        # what `inherit_parents` gives the lowers' attributes when they were not known yet
        self.implicit = implicit
        self.opaque_xattr = "user.overlay.opaque" if userxattr else "trusted.overlay.opaque"
        self.unpacked: set[tuple[str, ...]] = set()   # for opaque markers out of order
        self.dirs: list[tuple[tuple[str, ...], int, int]] = []
        self._known_dirs: set[tuple[str, ...]] = {()}
        # directories this apply created (or found empty): a name in them exists only if
        # this layer wrote it, so no lstat is needed before creating it
        self._fresh: set[tuple[str, ...]] = set() if os.listdir(self.root) else {()}
        self._created: set[tuple[str, ...]] = set()   # every path this apply made
        self._setgid: set[tuple[str, ...]] = set()  # new files there inherit the dir's group
        # one copy of each parent path: the sets above keep a path per entry, and entries
        # that share their parent's strings cost a third (300,000 entries: ~50 MiB less)
        self._parents: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._writer = _FileWriter()
        self.entries = 0
        if os.stat(self.root).st_mode & stat.S_ISGID:
            self._setgid.add(())

    def _flush(self) -> None:
        """The tree as the sequential apply would have it: every new file written (a
        failure to write one is reported as that entry's)."""
        self._writer.flush()
        if self._writer.error is not None:
            name, exc = self._writer.error
            raise ApplyError(f"failed to apply entry {name!r}: {exc}") from exc

    def lookup(self, parts):
        if parts in self._known_dirs:
            return "dir", ""
        self._flush()
        kind, target = _kind(_join(self.root, parts))
        if kind == "dir":
            self._known_dirs.add(parts)
        return kind, target

    # --- the loop --------------------------------------------------------------------

    def apply(self, reader: TarReader) -> int:
        try:
            return self._apply(reader)
        except BaseException:
            self._flush()   # an earlier entry's failure comes first, as in the sequential apply
            raise
        finally:
            self._writer.close()

    def _apply(self, reader: TarReader) -> int:
        size = 0
        while True:
            hdr = reader.next()
            if hdr is None:
                break
            self.entries += 1
            size += hdr.size
            try:
                op = planner.plan(hdr, self.lookup, DEVICES)
                self._run(op, reader)
            except HostileEntry as exc:
                raise ApplyError(f"hostile layer: {exc}") from None
            except OSError as exc:
                raise ApplyError(f"failed to apply entry {hdr.name!r}: {exc}") from None
        self._flush()
        real_dirs: dict[tuple[str, ...], bool] = {(): True}
        for parts, atime, mtime in self.dirs:  # last: creating files changed them
            # unless a later entry removed or replaced it, or one of its parents (by a
            # symlink, which must not lead these times outside the root)
            if _real_dir(self.root, parts, real_dirs):
                os.utime(_join(self.root, parts), ns=(atime, mtime), follow_symlinks=False)
        return size

    def _run(self, op, reader: TarReader) -> None:
        if isinstance(op, Create):
            self._mkparent(op.parent)
            self._create(op, reader)
        elif isinstance(op, Whiteout):
            self._mkparent(op.parent)
            self._whiteout(op)
        elif isinstance(op, Opaque):
            self._mkparent(op.dir)
            self._opaque(op)
        elif isinstance(op, Skip):
            log.debug("tar entry skipped: %s", op.reason)

    # --- parents ---------------------------------------------------------------------

    def _mkparent(self, parts) -> None:
        """Create missing parent directories; from a lower layer they take its attributes."""
        if parts in self._known_dirs:
            return
        for i in range(1, len(parts) + 1):
            sub = parts[:i]
            if sub in self._known_dirs:
                continue
            self._flush()
            path = _join(self.root, sub)
            kind, _ = _kind(path)
            if kind == "dir":
                self._known_dirs.add(sub)
                continue
            if kind is not None:
                raise NotADirectoryError(errno.ENOTDIR, "parent is not a directory", "/".join(sub))
            os.mkdir(path, 0o755)
            os.chmod(path, 0o755)
            self._copy_from_lower(sub, path)
            if self.implicit is not None:
                self.implicit[sub] = None
            self._known_dirs.add(sub)
            self._fresh.add(sub)
            self._created.add(sub)

    def _copy_from_lower(self, sub, path, mtime_ns: int | None = None) -> None:
        for lower in self.lowers:
            found = _join(lower, planner.resolve(sub, lambda p: _kind(_join(lower, p))))
            try:
                st = os.lstat(found)
            except FileNotFoundError:
                continue
            if not stat.S_ISDIR(st.st_mode):
                return
            os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)
            os.chmod(path, stat.S_IMODE(st.st_mode))
            if st.st_mode & stat.S_ISGID:
                self._setgid.add(sub)
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns if mtime_ns is None else mtime_ns),
                     follow_symlinks=False)
            for name in os.listxattr(found, follow_symlinks=False):
                if not name.startswith("trusted."):
                    _setxattr(path, name, os.getxattr(found, name, follow_symlinks=False))
            return

    # --- operations ------------------------------------------------------------------

    def _remove(self, path: str) -> None:
        self._flush()
        kind, _ = _kind(path)
        if kind == "dir":
            shutil.rmtree(path)
            self._known_dirs = {()}    # whatever was below is gone
            self._fresh.clear()
        elif kind is not None:
            os.unlink(path)

    def _whiteout(self, op: Whiteout) -> None:
        path = os.path.join(_join(self.root, op.parent), op.name)
        self._remove(path)
        if self.overlay:
            os.mknod(path, stat.S_IFCHR, 0)
            os.chown(path, op.uid, op.gid, follow_symlinks=False)
            self.unpacked.add((*op.parent, op.name))
            self._created.add((*op.parent, op.name))

    def _opaque(self, op: Opaque) -> None:
        path = _join(self.root, op.dir)
        if self.overlay:
            _setxattr(path, self.opaque_xattr, b"y")
            return
        self._flush()
        for dirpath, dirnames, filenames in os.walk(path, topdown=True):
            rel = tuple(os.path.relpath(dirpath, self.root).split(os.sep)) if dirpath != self.root else ()
            for name in list(dirnames) + filenames:
                if (*rel, name) not in self.unpacked:
                    self._remove(os.path.join(dirpath, name))
                    if name in dirnames:
                        dirnames.remove(name)

    def _create(self, op: Create, reader: TarReader) -> None:
        hdr = op.hdr
        parts = (*self._parents.setdefault(op.parent, op.parent), op.name)
        path = _join(self.root, parts)
        if op.parent in self._fresh and parts not in self._created:
            existing = None
        else:
            self._flush()
            existing, _ = _kind(path)
            if existing is not None and not (existing == "dir" and hdr.type == DIR):
                self._remove(path)
        mode = hdr.mode & 0o7777
        typ = hdr.type
        if typ in (REG, AREG):
            # a new file already has root's ids and mode & ~umask: skip what is a no-op
            chown = bool(existing is not None or hdr.uid or hdr.gid or not ROOT_IDS
                         or op.parent in self._setgid)
            chmod = bool(existing is not None or mode & ~UMASK != mode or mode & 0o7000)
            if hdr.size <= WHOLE_FILE_MAX and not hdr.xattrs and 0 <= hdr.uid <= MAX_ID \
                    and 0 <= hdr.gid <= MAX_ID:
                args = (path, reader.data_whole(), mode, hdr.uid, hdr.gid, chown, chmod,
                        *self._times(hdr))
                if existing is None:   # a new name: nothing later depends on it but a lookup
                    self._writer.submit(hdr.name, args, hdr.size)
                else:
                    write_file(*args)
            else:
                self._write_streamed(path, hdr, mode, reader, chown, chmod)
            self.unpacked.add(parts)
            self._created.add(parts)
            return
        if typ == DIR:
            if existing != "dir":
                os.mkdir(path, mode)
                self._known_dirs.add(parts)
                self._fresh.add(parts)
        elif typ == SYMLINK:
            os.symlink(hdr.linkname, path)
        elif typ == LINK:
            self._flush()
            target = _join(self.root, (*op.link_parent, op.link_name))
            os.link(target, path, follow_symlinks=False)
        else:
            os.mknod(path, mode | _DEV_KIND[typ], os.makedev(hdr.devmajor, hdr.devminor))
        os.chown(path, hdr.uid, hdr.gid, follow_symlinks=False)
        self._xattrs(path, hdr, is_dir_or_reg=typ in (DIR, LINK))
        times = self._times(hdr)
        if typ != SYMLINK:
            os.chmod(path, mode)
        os.utime(path, ns=times, follow_symlinks=False)
        if typ == DIR:
            self.dirs.append((parts, *times))
            if self.implicit is not None:
                self.implicit.pop(parts, None)   # the layer's own attributes win
            if mode & stat.S_ISGID:
                self._setgid.add(parts)
        self.unpacked.add(parts)
        self._created.add(parts)

    def _write_streamed(self, path, hdr, mode, reader: TarReader, chown, chmod) -> None:
        """A regular file written chunk by chunk (a big one, or one with xattrs)."""
        fd = os.open(path, _NOFOLLOW_WRITE, mode)
        try:
            for chunk in reader.data():
                while chunk:
                    chunk = chunk[os.write(fd, chunk):]
            if chown:
                os.fchown(fd, hdr.uid, hdr.gid)
            if hdr.xattrs:
                self._xattrs(path, hdr, is_dir_or_reg=True)
            if chmod:
                os.fchmod(fd, mode)
            os.utime(fd, ns=self._times(hdr))
        finally:
            os.close(fd)

    @staticmethod
    def _times(hdr) -> tuple[int, int]:
        mtime = _bound(hdr.mtime_ns)
        atime = hdr.atime_ns if hdr.atime_ns is not None and hdr.atime_ns > hdr.mtime_ns else hdr.mtime_ns
        return _bound(atime), mtime

    @staticmethod
    def _xattrs(path, hdr, is_dir_or_reg: bool) -> None:
        for key, value in hdr.xattrs.items():
            if key.startswith("trusted."):
                log.warning("ignored xattr %s in archive: admin attributes are not supported", key)
                continue
            try:
                _setxattr(path, key, value)
            except OSError as exc:
                if exc.errno == errno.ENOTSUP or (exc.errno == errno.EPERM and key.startswith("user.")
                                                  and not is_dir_or_reg):
                    log.warning("ignored xattr %s in archive: %s", key, exc)
                    continue
                raise


def apply_tar(root: str, read, overlay=False, lowers=(), userxattr=False,
              implicit: dict | None = None, stats: dict | None = None) -> int:
    """Unpack one uncompressed layer from `read(n)` into `root`; returns the entries' data size.
    `implicit` collects the parent directories made for unlisted parents (see Applier);
    `stats["entries"]` gets the number of entries read."""
    reader = TarReader(read)
    applier = Applier(root, overlay, lowers, userxattr, implicit)
    try:
        size = applier.apply(reader)
        reader.drain()
    except TarError as exc:
        raise ApplyError(f"invalid layer: {exc}") from None
    finally:
        if stats is not None:
            stats["entries"] = applier.entries
    return size


def inherit_parents(root: str, implicit, lowers) -> None:
    """Give the directories an overlay apply made for unlisted parents, without knowing the
    lowers then, what the apply onto those lowers would have given them: the lower's owner,
    mode, atime and xattrs. In an upper dir that is the only use of the lowers, so the
    result is that apply's. The mtime stays where creating entries inside left it; an
    empty one (an opaque marker's directory) takes the lower's, as the apply would."""
    applier = Applier(root, True, lowers)
    real: dict[tuple[str, ...], bool] = {(): True}
    for sub in implicit:
        if not _real_dir(applier.root, sub, real):
            continue   # removed or replaced later in the layer
        path = _join(applier.root, sub)
        with os.scandir(path) as entries:
            empty = next(entries, None) is None
        applier._copy_from_lower(sub, path, None if empty else os.lstat(path).st_mtime_ns)
