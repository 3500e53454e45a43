"""Blobs on disk, without namespaces (the metadata layer adds those).

Layout under the content plugin's root, as containerd's::

    blobs/sha256/<hex>                committed blobs, read-only
    ingest/<sha256(ref)>/ref          the ingest's key
                        /data         the bytes written so far (its size is the offset)
                        /startedat    nanoseconds since the epoch
                        /updatedat
                        /total        the expected size, when known

A blob appears under `blobs/` only by rename(2) of a data file that was written,
fsynced and hashed to the expected digest, so a crash never leaves a partial
blob. The digest is computed while the bytes are written (hashlib releases the
GIL on big buffers); a blob is never read back to verify it. A writer that
closes without committing keeps its hash state in memory, so resuming in the
same process costs nothing; after a restart the partial data is hashed once.
One writer per ref: a second one gets containerd's "ref ... locked" (UNAVAILABLE).
"""
from __future__ import annotations

import contextlib
import datetime
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass

from ...errdefs import (q, FailedPrecondition, InvalidArgument, NotFound, Unavailable, exhausted,
                       no_space)

_DIGEST = re.compile(r"^(sha256):([a-f0-9]{64})$|^(sha384):([a-f0-9]{96})$|^(sha512):([a-f0-9]{128})$")
CANONICAL = "sha256"
READ_CHUNK = 4 << 20
MAX_CACHED_HASHERS = 256


_ALGORITHMS = {"sha256": 64, "sha384": 96, "sha512": 128}
_GENERIC_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")


def sha256(data: bytes = b""):
    """hashlib.sha256, imported on first use: hashlib loads OpenSSL (≈ 4 MiB RSS, see
    process.settings.asyncio_without_ssl), which an idle daemon does without."""
    import hashlib
    return hashlib.sha256(data)


def digest_error(digest: str) -> str | None:
    """go-digest's Validate: None when well formed, else its error text."""
    alg, sep, encoded = digest.partition(":")
    if not alg or not sep or not encoded:
        return "invalid checksum digest format"
    if alg not in _ALGORITHMS:
        if not _GENERIC_DIGEST.match(digest):
            return "invalid checksum digest format"
        return "unsupported digest algorithm"
    if len(encoded) != _ALGORITHMS[alg]:
        return "invalid checksum digest length"
    if not re.fullmatch(r"[a-f0-9]+", encoded):
        return "invalid checksum digest format"
    return None


def parse_digest(digest: str) -> tuple[str, str]:
    """("sha256", hex) for a well-formed digest; InvalidArgument otherwise."""
    m = _DIGEST.match(digest or "")
    if not m:
        raise InvalidArgument(f"{q(digest)} failed validation")
    groups = [g for g in m.groups() if g]
    return groups[0], groups[1]


def go_duration(seconds: float) -> str:
    """Go's time.Duration.String for positive durations (as containerd prints them)."""
    ns = int(seconds * 1e9)
    if ns < 1000:
        return f"{ns}ns"
    if ns < 1_000_000:
        return f"{ns / 1e3:g}µs"
    if ns < 1_000_000_000:
        return f"{ns / 1e6:g}ms"
    hours, rest = divmod(ns, 3600 * 10**9)
    minutes, rest = divmod(rest, 60 * 10**9)
    secs = f"{rest / 1e9:.9f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{secs}"
    if minutes:
        return f"{minutes}m{secs}"
    return secs


def go_time(ns: int) -> str:
    """Go's time.Time.String in UTC, without the monotonic clock reading."""
    dt = datetime.datetime.fromtimestamp(ns // 10**9, datetime.timezone.utc)
    frac = f"{ns % 10**9:09d}".rstrip("0")
    return dt.strftime("%Y-%m-%d %H:%M:%S") + (f".{frac}" if frac else "") + " +0000 UTC"


@dataclass
class Ingest:
    """The status of one ingest, as Status/ListStatuses report it."""
    ref: str
    offset: int
    total: int
    started_at: int
    updated_at: int


class LocalStore:
    def __init__(self, root: str):
        self.root = root
        self.blobs = os.path.join(root, "blobs")
        self.ingests = os.path.join(root, "ingest")
        os.makedirs(os.path.join(self.blobs, CANONICAL), mode=0o755, exist_ok=True)
        os.makedirs(self.ingests, mode=0o755, exist_ok=True)
        self._mutex = threading.Lock()
        self._locks: dict[str, int] = {}          # ref -> locked since (ns)
        self._hashers: dict[str, tuple[int, object]] = {}  # ref -> (offset, sha256 state)
        self._installing: dict[str, int] = {}     # digest -> writers installing it

    # --- blobs ------------------------------------------------------------------

    def blob_path(self, digest: str) -> str:
        alg, hexd = parse_digest(digest)
        return os.path.join(self.blobs, alg, hexd)

    def exists(self, digest: str) -> bool:
        return os.path.exists(self.blob_path(digest))

    def size(self, digest: str) -> int:
        try:
            return os.stat(self.blob_path(digest)).st_size
        except FileNotFoundError:
            raise NotFound(f"content digest {digest}: not found") from None

    def open(self, digest: str):
        """A binary file object over the blob (the caller closes it)."""
        try:
            return open(self.blob_path(digest), "rb", buffering=0)
        except FileNotFoundError:
            raise NotFound(f"content digest {digest}: not found") from None

    def delete(self, digest: str) -> bool:
        try:
            os.unlink(self.blob_path(digest))
            return True
        except FileNotFoundError:
            return False

    def collect(self, digest: str) -> bool:
        """The collector's delete: a blob being installed stays (see installing)."""
        with self._mutex:
            return digest not in self._installing and self.delete(digest)

    @contextlib.contextmanager
    def installing(self, digest: str):
        """While a writer's blob is installed and recorded: the collector (which deletes
        blobs no record names) keeps it, from before `install` looks whether it exists."""
        with self._mutex:
            self._installing[digest] = self._installing.get(digest, 0) + 1
        try:
            yield
        finally:
            with self._mutex:
                self._installing[digest] -= 1
                if not self._installing[digest]:
                    del self._installing[digest]

    def being_installed(self) -> set[str]:
        with self._mutex:
            return set(self._installing)

    def walk(self):
        """Every committed blob's digest."""
        for alg in os.listdir(self.blobs):
            for name in os.listdir(os.path.join(self.blobs, alg)):
                yield f"{alg}:{name}"

    # --- ingests ------------------------------------------------------------------

    def ingest_path(self, ref: str) -> str:
        return os.path.join(self.ingests, sha256(ref.encode()).hexdigest())

    def _lock(self, ref: str) -> None:
        with self._mutex:
            since = self._locks.get(ref)
            if since is None:
                self._locks[ref] = time.time_ns()
                return
        held = (time.time_ns() - since) / 1e9
        raise Unavailable(f"ref {ref} locked for {go_duration(held)} (since {go_time(since)}): "
                          "unavailable")

    def _unlock(self, ref: str) -> None:
        with self._mutex:
            self._locks.pop(ref, None)

    def locked(self, ref: str) -> bool:
        with self._mutex:
            return ref in self._locks

    def writer(self, ref: str, total: int = 0) -> "Writer":
        """Open (or resume) the ingest `ref`; may hash the partial data once (blocking)."""
        if not ref:
            raise InvalidArgument("ref must not be empty: invalid argument")
        self._lock(ref)
        try:
            return self._open(ref, total)
        except BaseException:
            self._unlock(ref)
            raise

    def _open(self, ref: str, total: int) -> "Writer":
        path = self.ingest_path(ref)
        data = os.path.join(path, "data")
        try:
            os.mkdir(path, 0o755)
            fresh = True
        except FileExistsError:
            fresh = not self._resumable(path, ref, total)
            if fresh:  # unreadable or foreign: start over, as containerd does
                shutil.rmtree(path, ignore_errors=True)
                os.mkdir(path, 0o755)
        if fresh:
            now = time.time_ns()
            try:
                _write_small(os.path.join(path, "ref"), ref)
                _write_small(os.path.join(path, "startedat"), str(now))
                _write_small(os.path.join(path, "updatedat"), str(now))
                if total > 0:
                    _write_small(os.path.join(path, "total"), str(total))
            except OSError as exc:
                shutil.rmtree(path, ignore_errors=True)
                if no_space(exc):
                    raise exhausted(exc, exc.filename or path, "write") from None
                raise
        fd = os.open(data, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            offset = os.fstat(fd).st_size
            hasher = self._resume_hasher(ref, data, offset)
            os.lseek(fd, offset, os.SEEK_SET)
            status = self._read_status(path, ref)
        except BaseException:
            os.close(fd)
            raise
        return Writer(self, ref, path, fd, hasher, status)

    def _resumable(self, path: str, ref: str, total: int) -> bool:
        try:
            status = self._read_status(path, ref)
        except (OSError, ValueError):
            return False
        return status.ref == ref and not (total > 0 and status.total > 0 and total != status.total)

    def _resume_hasher(self, ref: str, data: str, offset: int):
        with self._mutex:
            cached = self._hashers.pop(ref, None)
        if cached is not None and cached[0] == offset:
            return cached[1]
        hasher = sha256()
        with open(data, "rb", buffering=0) as f:  # after a restart: the partial data, once
            remaining = offset
            while remaining:
                chunk = f.read(min(READ_CHUNK, remaining))
                if not chunk:
                    raise FailedPrecondition(f"ingest {ref} shrank while resuming")
                hasher.update(chunk)
                remaining -= len(chunk)
        return hasher

    def _cache_hasher(self, ref: str, offset: int, hasher) -> None:
        with self._mutex:
            if len(self._hashers) >= MAX_CACHED_HASHERS:
                self._hashers.pop(next(iter(self._hashers)))
            self._hashers[ref] = (offset, hasher)

    def _forget(self, ref: str) -> None:
        with self._mutex:
            self._hashers.pop(ref, None)

    @staticmethod
    def _read_status(path: str, ref: str | None = None) -> Ingest:
        def read(name, default=None):
            try:
                with open(os.path.join(path, name)) as f:
                    return f.read()
            except FileNotFoundError:
                if default is None:
                    raise
                return default
        stored_ref = read("ref")
        try:
            offset = os.stat(os.path.join(path, "data")).st_size
        except FileNotFoundError:
            offset = 0
        return Ingest(stored_ref, offset, int(read("total", "0")),
                      int(read("startedat", "0")), int(read("updatedat", "0")))

    def status(self, ref: str) -> Ingest:
        path = self.ingest_path(ref)
        try:
            status = self._read_status(path)
        except FileNotFoundError:
            raise NotFound(f"reference {ref}: not found") from None
        if status.ref != ref:
            raise NotFound(f"reference {ref}: not found")
        return status

    def abort(self, ref: str) -> None:
        path = self.ingest_path(ref)
        if not os.path.isdir(path):
            raise NotFound(f"ingest ref {q(ref)}: not found")
        if self.locked(ref):
            self._lock(ref)  # raises the "locked" error
        self._forget(ref)
        shutil.rmtree(path, ignore_errors=True)

    def install(self, writer: "Writer", digest: str) -> bool:
        """Move a sealed writer's data to its blob path, durably (the directory fsynced);
        False if the blob already existed. The caller holds `installing(digest)`, so that
        garbage collection leaves the blob until its record is written."""
        target = self.blob_path(digest)
        data = os.path.join(writer.path, "data")
        if os.path.exists(target):
            shutil.rmtree(writer.path, ignore_errors=True)
            return False
        os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
        os.chmod(data, 0o444)
        os.rename(data, target)
        _fsync_dir(os.path.dirname(target))
        shutil.rmtree(writer.path, ignore_errors=True)
        return True


class Writer:
    """One open ingest; holds the ref lock until close()."""

    def __init__(self, store: LocalStore, ref: str, path: str, fd: int, hasher, status: Ingest):
        self.store = store
        self.ref = ref
        self.path = path
        self._fd = fd
        self._hasher = hasher
        self.offset = status.offset
        self.total = status.total
        self.started_at = status.started_at
        self.updated_at = status.updated_at
        self._closed = False

    def status(self) -> Ingest:
        return Ingest(self.ref, self.offset, self.total, self.started_at, self.updated_at)

    def digest(self) -> str:
        return f"{CANONICAL}:{self._hasher.hexdigest()}"

    def write(self, data) -> int:
        """Append `data` (bytes or memoryview): write it and hash it, both without the GIL."""
        if self._fd < 0:
            raise FailedPrecondition("cannot write to a closed writer: failed precondition")
        view = memoryview(data)
        done = 0
        try:
            while done < len(view):
                done += os.write(self._fd, view[done:])
        except OSError as exc:
            if no_space(exc):   # a full disk: give the space back at once
                self._discard()
                raise exhausted(exc, os.path.join(self.path, "data"), "write") from None
            raise
        self._hasher.update(view)
        self.offset += done
        self.updated_at = time.time_ns()
        return done

    def truncate(self) -> None:
        os.ftruncate(self._fd, 0)
        os.lseek(self._fd, 0, os.SEEK_SET)
        self._hasher = sha256()
        self.offset = 0

    def seal(self, size: int, expected: str) -> str:
        """Flush the data to disk and verify it; returns the digest.

        A size or digest mismatch keeps the ingest, as containerd does: a later writer
        resumes it and may commit it with the right digest.
        """
        if self._fd < 0:
            raise FailedPrecondition("cannot commit on closed writer: failed precondition")
        os.fsync(self._fd)
        if size > 0 and size != self.offset:
            raise FailedPrecondition(f"unexpected commit size {self.offset}, expected {size}: "
                                     "failed precondition")
        actual = self.digest()
        if expected and expected != actual:
            raise FailedPrecondition(f"unexpected commit digest {actual}, expected {expected}: "
                                     "failed precondition")
        return actual

    def _discard(self) -> None:
        """Drop the ingest's data: it can never commit (the writer stays locked until close)."""
        os.close(self._fd)
        self._fd = -1
        self.store._forget(self.ref)
        shutil.rmtree(self.path, ignore_errors=True)

    def committed(self) -> None:
        """The data now lives under blobs/ (or was a duplicate): nothing to resume."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.store._forget(self.ref)

    def close(self) -> None:
        """Release the ref; an uncommitted ingest stays resumable from its offset."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
                if os.path.isdir(self.path):
                    _write_small(os.path.join(self.path, "updatedat"), str(self.updated_at))
                    self.store._cache_hasher(self.ref, self.offset, self._hasher)
        finally:
            self.store._unlock(self.ref)


def _write_small(path: str, text: str) -> None:
    """Replace the file whole (as containerd's writeToCompletion): a status read that runs
    meanwhile (`ctr content active` during a pull) never finds it empty."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
