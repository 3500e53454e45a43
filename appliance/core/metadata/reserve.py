"""Room for metadata writes on a full filesystem.

sqlite needs free pages even to delete (the WAL grows, then the checkpoint may
grow the database), and a COMMIT that hits SQLITE_FULL is rolled back. So the
last `size` bytes of the filesystem are kept for metadata, like ext4's blocks
reserved for root: a pre-allocated file next to the database holds them. A
write transaction that starts with less than `size` free releases the file, and
takes the space back once it ended (all of `size`, or whatever is free), so data
(blobs, layers) can never fill what deletes and garbage collection need.
"""
from __future__ import annotations

import logging
import os

log = logging.getLogger("appliance.metadata")
RESERVE_BYTES = 4 << 20
PAGE = 4096


class Reserve:
    def __init__(self, path: str, size: int = RESERVE_BYTES):
        self.path = path
        self.size = size
        try:
            self.held = os.stat(path).st_blocks * 512   # what an earlier run allocated
        except FileNotFoundError:
            self.held = 0

    def _free(self) -> int:
        st = os.statvfs(os.path.dirname(self.path))
        return st.f_bavail * st.f_frsize

    def before_write(self) -> None:
        """The disk is nearly full: give the reserve to the write about to start."""
        try:
            if self.held and self._free() < self.size:
                (log.warning if self.held >= self.size else log.debug)(
                    "filesystem of %s nearly full: its reserve goes to metadata writes",
                    self.path)
                os.unlink(self.path)
                self.held = 0
        except OSError as exc:   # never fail a write over its safety margin
            log.warning("metadata space reserve %s: %s", self.path, exc)

    def after_write(self) -> None:
        """Take the reserve back: all of it, or as much as is free."""
        if self.held >= self.size:
            return
        try:
            target = min(self.size, self.held + self._free() // PAGE * PAGE)
            if target <= self.held:
                return
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.posix_fallocate(fd, 0, target)
            finally:
                self.held = os.fstat(fd).st_blocks * 512
                os.close(fd)
        except OSError as exc:   # a race with a data writer: the next write tries again
            log.debug("metadata space reserve %s: %s", self.path, exc)
