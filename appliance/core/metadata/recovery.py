"""The metadata database's files at open: what a crash or a damaged disk left.

A crash leaves the WAL behind (a clean close removes it); sqlite replays its complete
transactions and drops a torn last one by itself: that is logged. What sqlite would not
notice, or would answer with a traceback deep in some later request, is refused at start
with one line that says what to do: a truncated database file, a WAL that is not one, a
database that fails sqlite's quick check after a crash.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import struct

from ...errdefs import ApplianceError

log = logging.getLogger("appliance.metadata")

WAL_MAGIC = (0x377F0682, 0x377F0683)
WAL_HEADER = 32
FRAME_HEADER = 24


class DamagedDatabase(ApplianceError):
    pass


def damaged(path: str, what: str) -> DamagedDatabase:
    return DamagedDatabase(
        f"metadata database {path} is damaged ({what}): restore it from a backup, or move "
        f"{os.path.basename(path)} and its -wal and -shm files aside to start with empty "
        "metadata (the content and snapshots it recorded are then deleted as unreferenced)")


def inspect_files(path: str) -> bool:
    """Check the files before sqlite opens them; True when a crash left a WAL to replay."""
    wal = path + "-wal"
    try:
        size = os.path.getsize(wal)
    except FileNotFoundError:
        _check_size(path)
        return False
    if size <= WAL_HEADER:
        _check_size(path)
        return True
    # With frames in the WAL, a database file shorter than its header says is a checkpoint
    # cut short (a full disk): the pages are still in the WAL, and sqlite copies them again.
    with open(wal, "rb") as f:
        header = f.read(WAL_HEADER)
    magic, _, page_size = struct.unpack(">III", header[:12].ljust(12, b"\0"))
    if (len(header) < WAL_HEADER or magic not in WAL_MAGIC or page_size < 512
            or page_size & (page_size - 1)):
        raise damaged(path, f"{wal} is not a sqlite WAL: the changes since the last "
                      "checkpoint cannot be read")
    if os.path.getsize(path) == 0:
        raise damaged(path, "the database file is empty, its WAL is not")
    torn = (size - WAL_HEADER) % (FRAME_HEADER + page_size)
    if torn:
        log.warning("metadata WAL %s ends in a torn write (%d bytes): recovering the "
                    "transactions committed before it", wal, torn)
    else:
        log.info("metadata WAL %s left by an unclean stop: recovering", wal)
    return True


def _check_size(path: str) -> None:
    """A database file shorter than its header says is truncated (the header's page count
    is valid when its version-valid-for number equals the change counter)."""
    try:
        with open(path, "rb") as f:
            header = f.read(100)
    except FileNotFoundError:
        return
    if not header:
        return
    if len(header) < 100 or not header.startswith(b"SQLite format 3\0"):
        raise damaged(path, "not a sqlite database")
    page_size = struct.unpack(">H", header[16:18])[0]
    page_size = 65536 if page_size == 1 else page_size
    changes, pages = struct.unpack(">II", header[24:32])
    valid_for = struct.unpack(">I", header[92:96])[0]
    if valid_for == changes and os.path.getsize(path) < pages * page_size:
        raise damaged(path, f"truncated: {os.path.getsize(path)} bytes of "
                      f"{pages * page_size}")


def quick_check(conn: sqlite3.Connection, path: str) -> None:
    """sqlite's quick check (after a crash only: it reads every page once)."""
    rows = [tuple(r) for r in conn.execute("PRAGMA quick_check(1)")]
    if rows != [("ok",)]:
        raise damaged(path, f"quick check: {rows[0][0] if rows else 'no answer'}")
