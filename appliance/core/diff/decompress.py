"""Layer streams: decompression in a worker thread, pipelined with the tar parser.

The worker reads the blob, inflates it (ISA-L, else zlib-ng, else zlib; zstd
with `zstandard`), hashes the uncompressed bytes (the layer's diff id) and
hands bounded chunks to the consumer through a small queue. Inflate and
sha256 release the GIL, so they run in parallel with tar parsing and writes;
the output is bounded per step, so a gzip bomb costs disk, never memory.
"""
from __future__ import annotations

import functools
import queue
import threading

from ...errdefs import DeadlineExceeded, NotFound
from ..content.store import sha256

# Inflated bytes in flight: at most QUEUE_DEPTH + 2 chunks of OUT_SIZE (queued, being
# made, being parsed). A layer of tiny files inflates far faster than it is written, so the
# queue is full all along: this is memory held for the whole unpack.
READ_SIZE = 256 << 10
OUT_SIZE = 1 << 20
QUEUE_DEPTH = 4
PUT_TIMEOUT = 0.2
# the longest the reader waits for the next chunk: a stream processor that hangs (or a
# blob on a stalled filesystem) fails the unpack instead of blocking its thread for ever
STALL_TIMEOUT = 300.0

LAYER_TYPES = {
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.foreign.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
}
GZIP_MAGIC = b"\x1f\x8b\x08"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class DecompressError(Exception):
    pass


@functools.cache
def _zlib():
    """The fastest inflate available; imported lazily: start-up cost."""
    try:
        from isal import isal_zlib
        return isal_zlib
    except ImportError:  # pragma: no cover - the fallbacks
        try:
            from zlib_ng import zlib_ng
            return zlib_ng
        except ImportError:
            import zlib
            return zlib


def check_media_type(media_type: str) -> None:
    base = media_type.split("+", 1)[0]
    ext = media_type[len(base) + 1:] if "+" in media_type else ""
    if base not in LAYER_TYPES or ext not in ("", "gzip", "zstd"):
        raise NotFound(f"failed to get stream processor for {media_type}: "
                       "no processor for media-type")


def _gzip_chunks(f, stop):
    d = _zlib().decompressobj(31)
    data = b""
    while not stop.is_set():
        if not data:
            data = f.read(READ_SIZE)
            if not data:
                if not d.eof:
                    raise DecompressError("unexpected end of gzip stream (truncated layer)")
                return
        out = d.decompress(data, OUT_SIZE)
        data = d.unconsumed_tail
        if out:
            yield out
        if d.eof:  # another member may follow (pigz, concatenated gzip)
            data = d.unused_data + data or f.read(READ_SIZE)
            if not data.startswith(GZIP_MAGIC[:2]):
                return  # end of the stream (trailing bytes after the last member ignored)
            d = _zlib().decompressobj(31)


def _zstd_chunks(f, stop):
    import zstandard  # imported lazily: start-up cost
    reader = zstandard.ZstdDecompressor().stream_reader(f, read_size=READ_SIZE,
                                                        read_across_frames=True)
    while not stop.is_set():
        try:
            out = reader.read(OUT_SIZE)
        except zstandard.ZstdError as exc:
            raise DecompressError(f"invalid zstd stream: {exc}") from None
        if not out:
            return
        yield out


def _raw_chunks(f, stop):
    while not stop.is_set():
        out = f.read(OUT_SIZE)
        if not out:
            return
        yield out


class _Prefixed:
    """`head` then the rest of a non-seekable file."""

    def __init__(self, head: bytes, f):
        self._head, self._f = head, f

    def read(self, n: int = -1) -> bytes:
        if self._head:
            if n is None or n < 0:
                head, self._head = self._head, b""
                return head + self._f.read()
            head, self._head = self._head[:n], self._head[n:]
            return head
        return self._f.read(n)


class LayerStream:
    """`read(n)` over the uncompressed layer; `digest()` once it is fully read."""

    def __init__(self, path: str, opener=None):
        self._path = path
        # a stream processor's output instead of the blob file (see core/streamprocessor.py)
        self._opener = opener or (lambda: open(path, "rb", buffering=0))
        self._queue: queue.Queue = queue.Queue(QUEUE_DEPTH)
        self._stop = threading.Event()
        self._hash = sha256()
        self._size = 0
        self._done = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="layer-inflate", daemon=True)
        self._thread.start()

    def _work(self):
        try:
            with self._opener() as f:
                head = f.read(4)
                if f.seekable():
                    f.seek(0)
                else:  # a pipe: put the magic bytes back in front
                    f = _Prefixed(head, f)
                if head.startswith(GZIP_MAGIC):
                    chunks = _gzip_chunks(f, self._stop)
                elif head.startswith(ZSTD_MAGIC):
                    chunks = _zstd_chunks(f, self._stop)
                else:
                    chunks = _raw_chunks(f, self._stop)
                for chunk in chunks:
                    self._hash.update(chunk)
                    self._size += len(chunk)
                    self._put(chunk)
        except BaseException as exc:  # delivered to the reader
            self._put(exc)
            return
        self._put(b"")

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=PUT_TIMEOUT)
                return
            except queue.Full:
                continue

    def read(self, n: int = -1) -> bytes:
        if self._done:
            return b""
        try:
            item = self._queue.get(timeout=STALL_TIMEOUT)
        except queue.Empty:
            self._done = True
            raise DeadlineExceeded(f"layer {self._path}: no data for {STALL_TIMEOUT:g}s "
                                   "(a stalled stream processor?): deadline exceeded") from None
        if isinstance(item, BaseException):
            self._done = True
            if isinstance(item, (DecompressError, _zlib().error)):
                raise DecompressError(f"invalid layer: {item}") from None
            raise item
        if not item:
            self._done = True
        return item

    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()

    @property
    def size(self) -> int:
        return self._size

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
