"""A blob's bytes read while they are being downloaded: the unpack follows the ingest file.

The download writes the ingest (hashing as it writes) and tells the `Feed` how far the file
has grown; a `Follower` (a file-like object for the layer inflater, in its worker thread)
reads the same file behind it and waits for more. So decompression and apply run while the
blob is still arriving; the snapshot is committed only after the blob's digest checked out.
"""
from __future__ import annotations

import os
import threading
from typing import Callable

WAIT_SLICE = 1.0      # a follower wakes this often while it waits (every wait is bounded)


class FeedFailed(Exception):
    """The download behind the feed stopped (its own error says why)."""


class Feed:
    def __init__(self, path: str, committed: Callable[[], str], size: int = 0):
        self.path = path              # the ingest's data file
        self.committed = committed    # the blob's path once the commit moved it there
        self._cond = threading.Condition()
        self._size = size             # bytes written so far
        self._ended = False
        self._error = ""

    def grew(self, size: int) -> None:
        with self._cond:
            self._size = size
            self._cond.notify_all()

    def finish(self) -> None:
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def fail(self, why: str) -> None:
        with self._cond:
            if not self._ended:
                self._ended, self._error = True, why or "download stopped"
            self._cond.notify_all()

    def open(self) -> "Follower":
        return Follower(self)

    def _wait_beyond(self, pos: int) -> bool:
        """Until the file holds more than `pos` bytes (True) or the download ended (False).
        The download always ends, by its own progress timeout at the latest."""
        with self._cond:
            while self._size <= pos and not self._ended:
                self._cond.wait(WAIT_SLICE)
            if self._size > pos:
                return True
            if self._error:
                raise FeedFailed(self._error)
            return False


class Follower:
    """`read(n)` from the start of the ingest file, waiting for bytes not written yet."""

    def __init__(self, feed: Feed):
        self._feed = feed
        try:
            self._fd = os.open(feed.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:     # committed already (a rename: one of them exists)
            self._fd = os.open(feed.committed(), os.O_RDONLY | os.O_CLOEXEC)
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        n = n if n and n > 0 else 1 << 20
        while True:
            data = os.pread(self._fd, n, self._pos)
            if data:
                self._pos += len(data)
                return data
            if not self._feed._wait_beyond(self._pos):
                return b""

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
