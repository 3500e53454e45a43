"""The metadata database: sqlite3 in WAL mode, one writer, versioned schema.

Writes go through one connection behind a lock; reads through a connection of the reading
thread's own, each `read()` one consistent snapshot that never waits on the writer (WAL), so
the event loop does not wait while a GC sweep or a snapshot commit holds the write lock.

bbolt's `v1/<namespace>/<kind>` buckets become tables keyed by (namespace, id);
labels live in one table so List filters can use them. Schema changes are
appended to MIGRATIONS and applied in place at open (PRAGMA user_version).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
import time

from ...errdefs import InvalidArgument, ResourceExhausted, Unavailable, q
from . import recovery
from .reserve import Reserve

MIGRATIONS = [
    # 1: namespaces, labels, leases
    """
    CREATE TABLE namespaces (
        name TEXT PRIMARY KEY,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE labels (
        namespace TEXT NOT NULL,
        kind TEXT NOT NULL,
        object TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (namespace, kind, object, key)
    ) WITHOUT ROWID;
    CREATE TABLE leases (
        namespace TEXT NOT NULL,
        id TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (namespace, id)
    ) WITHOUT ROWID;
    CREATE TABLE lease_resources (
        namespace TEXT NOT NULL,
        lease TEXT NOT NULL,
        type TEXT NOT NULL,
        id TEXT NOT NULL,
        PRIMARY KEY (namespace, lease, type, id)
    ) WITHOUT ROWID;
    """,
    # containers: GC/filter fields as columns, the rest of the message in `data`
    """
    CREATE TABLE containers (
        namespace TEXT NOT NULL,
        id TEXT NOT NULL,
        image TEXT NOT NULL,
        runtime TEXT NOT NULL,
        snapshotter TEXT NOT NULL,
        snapshot_key TEXT NOT NULL,
        data BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (namespace, id)
    ) WITHOUT ROWID;
    """,
    # content, ingests and images; labels in `labels` (kinds content, image)
    """
    CREATE TABLE content (
        namespace TEXT NOT NULL,
        digest TEXT NOT NULL,
        size INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (namespace, digest)
    ) WITHOUT ROWID;
    CREATE TABLE ingests (
        namespace TEXT NOT NULL,
        ref TEXT NOT NULL,
        bref TEXT NOT NULL,
        expected TEXT NOT NULL,
        size INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        PRIMARY KEY (namespace, ref)
    ) WITHOUT ROWID;
    CREATE TABLE images (
        namespace TEXT NOT NULL,
        name TEXT NOT NULL,
        media_type TEXT NOT NULL,
        digest TEXT NOT NULL,
        size INTEGER NOT NULL,
        annotations TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (namespace, name)
    ) WITHOUT ROWID;
    """,
    # snapshots: one row per snapshot of every snapshotter; `id` names its directory
    """
    CREATE TABLE snapshots (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        snapshotter TEXT NOT NULL,
        namespace TEXT NOT NULL,
        key TEXT NOT NULL,
        parent_id INTEGER REFERENCES snapshots(id),
        kind TEXT NOT NULL,
        size INTEGER NOT NULL,
        inodes INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        UNIQUE (snapshotter, namespace, key)
    );
    CREATE INDEX snapshots_by_parent ON snapshots(parent_id);
    """,
]

def apply_mask(paths, what: str, maps=None, fields=None) -> None:
    """containerd's update mask (fieldpaths) over one object, shared by the stores.

    `maps`: name -> (current, new, drop_empty) for map fields: "<name>" replaces the map,
    "<name>.<key>" copies that key from `new` (a missing key copies as "", which
    `drop_empty` turns into removing the key). `fields`: name -> a function that copies
    that plain field. Any other path is InvalidArgument naming `what`.
    """
    maps, fields = maps or {}, fields or {}
    for path in paths:
        name, dot, key = path.partition(".")
        if dot and name in maps:
            current, new, drop_empty = maps[name]
            value = new.get(key, "")
            if drop_empty and not value:
                current.pop(key, None)
            else:
                current[key] = value
        elif path in maps:
            current, new, _ = maps[path]
            current.clear()
            current.update(new)
        elif path in fields:
            fields[path]()
        else:
            raise InvalidArgument(f"cannot update {q(path)} field on {what}: invalid argument")


def now_ns() -> int:
    return time.time_ns()


class DB:
    """One writing sqlite connection, guarded by a lock, and a reading one per thread.

    Reads are microseconds; writes commit with synchronous=FULL so an
    acknowledged change survives a crash.
    """

    def __init__(self, path: str, lock_timeout: float = 5.0):
        self.path = path
        self._lock_fd = self._acquire_lock(path + ".lock", lock_timeout)
        self._timeout = lock_timeout or 5.0
        self._mutex = threading.RLock()
        self._depth = 0
        self._writer: int | None = None   # the thread inside write(), which reads its own writes
        self._writes = 0                  # write transactions begun (see quiet_epoch)
        self._local = threading.local()   # .conn: this thread's reading connection
        self._readers: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._readers_lock = threading.Lock()
        self._conn = None
        self.reserve = Reserve(path + ".reserve")
        self.reserve.before_write()   # a full disk: free it before sqlite opens its WAL
        try:
            crashed = recovery.inspect_files(path)
            self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                         timeout=lock_timeout or 5.0)
            self._conn.row_factory = sqlite3.Row
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            if crashed:
                recovery.quick_check(self._conn, path)
            self.migrate()
        except BaseException as exc:
            if self._conn is not None:
                self._conn.close()
            os.close(self._lock_fd)
            if isinstance(exc, sqlite3.DatabaseError):
                raise recovery.damaged(path, str(exc)) from None
            raise
        self.reserve.after_write()

    @staticmethod
    def _acquire_lock(path: str, timeout: float) -> int:
        """Exclusive flock on the database, polled until `timeout` (0 = 5 s)."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + (timeout or 5.0)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise Unavailable(f"timeout waiting for the lock on {path}: "
                                      "is another daemon using this root?") from None
                time.sleep(0.05)

    @property
    def schema_version(self) -> int:
        return self._conn.execute("PRAGMA user_version").fetchone()[0]

    def migrate(self) -> None:
        with self._mutex:
            current = self.schema_version
            for version, script in enumerate(MIGRATIONS[current:], start=current + 1):
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    for statement in script.split(";"):
                        if statement.strip():
                            self._conn.execute(statement)
                    self._conn.execute(f"PRAGMA user_version={version}")
                    self._conn.execute("COMMIT")
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise

    @contextlib.contextmanager
    def write(self):
        """A write transaction (nested calls join the outer one)."""
        with self._mutex:
            if self._depth:
                self._depth += 1
                try:
                    yield self._conn
                finally:
                    self._depth -= 1
                return
            self.reserve.before_write()
            self._conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            self._writes += 1
            self._writer = threading.get_ident()
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException as exc:
                if self._conn.in_transaction:   # SQLITE_FULL rolls back by itself
                    self._conn.execute("ROLLBACK")
                if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
                    raise ResourceExhausted(f"write {self.path}: database or disk is full") from exc
                raise
            finally:
                self._depth = 0
                self._writer = None
                self.reserve.after_write()

    @contextlib.contextmanager
    def read(self):
        """One consistent snapshot of the committed data (nested reads join it); inside this
        thread's own write(), that transaction (it sees its uncommitted writes)."""
        if self._writer == threading.get_ident():
            yield self._conn
            return
        conn = self._reader()
        if conn.in_transaction:
            yield conn
            return
        conn.execute("BEGIN")   # deferred: a read snapshot from the first SELECT to COMMIT
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    def read_kept(self, kept: dict, key, read, limit: int):
        """`kept[key]`, else `read(conn)` in a read transaction, kept under `key` when no
        write was open or began meanwhile (all of `kept` dropped at `limit` entries). The
        stores' caches: their writers drop the key inside the write transaction that
        changes it, so a value kept this way is what is committed."""
        got = kept.get(key)
        if got is None:
            epoch = self.quiet_epoch()
            with self.read() as conn:
                got = read(conn)
            if epoch is not None and epoch == self.quiet_epoch():
                if len(kept) >= limit:
                    kept.clear()
                kept[key] = got
                if epoch != self.quiet_epoch():   # a write began after the check: its drop
                    kept.pop(key, None)           # of the key may have come before ours
        return got

    def quiet_epoch(self) -> int | None:
        """None while a write transaction is open, else how many have begun: a value read
        between two equal epochs was committed data no write was changing (a cache may keep
        it; reads do not wait for writes, so a read alone cannot tell)."""
        return None if self._writer is not None else self._writes

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=self._timeout)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA query_only=ON")
            with self._readers_lock:   # not the write lock: a writer may hold that
                # threads that ended (a pull's per-layer threads) leave their connection:
                # close those, so each reading thread costs one open file only while it lives
                alive = []
                for thread, reader in self._readers:
                    if thread.is_alive():
                        alive.append((thread, reader))
                    else:
                        reader.close()
                self._readers = alive + [(threading.current_thread(), conn)]
            self._local.conn = conn
        return conn

    @contextlib.contextmanager
    def exclusive(self):
        """No other thread writes meanwhile (GC: until its after-commit work is done)."""
        with self._mutex:
            yield

    def close(self) -> None:
        with self._mutex, self._readers_lock:
            for _, conn in self._readers:
                conn.close()
            self._conn.close()
        os.close(self._lock_fd)

    # --- labels, shared by every object kind ---------------------------------

    @staticmethod
    def get_labels(conn, namespace: str, kind: str, obj: str) -> dict[str, str]:
        rows = conn.execute("SELECT key, value FROM labels WHERE namespace=? AND kind=? AND object=?",
                            (namespace, kind, obj))
        return {r[0]: r[1] for r in rows}

    @staticmethod
    def set_labels(conn, namespace: str, kind: str, obj: str, labels: dict[str, str]) -> None:
        conn.execute("DELETE FROM labels WHERE namespace=? AND kind=? AND object=?",
                     (namespace, kind, obj))
        # an empty value means "no such label", as in containerd
        conn.executemany("INSERT INTO labels VALUES (?,?,?,?,?)",
                         [(namespace, kind, obj, k, v) for k, v in labels.items() if v])

    @staticmethod
    def update_labels(current: dict[str, str], labels: dict[str, str], paths,
                      what: str) -> dict[str, str]:
        """Apply an update mask to labels, as containerd's fieldpaths do.

        No paths: replace them all. "labels": the same. "labels.<key>": set that
        key, or drop it when the new value is empty. Anything else names a field
        this object does not let you update (`what` says which object, for the error).
        """
        if not paths:
            return dict(labels)
        updated = dict(current)
        apply_mask(paths, what, maps={"labels": (updated, labels, True)})
        return updated

    @staticmethod
    def all_labels(conn, namespace: str, kind: str) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        for obj, key, value in conn.execute(
                "SELECT object, key, value FROM labels WHERE namespace=? AND kind=?",
                (namespace, kind)):
            out.setdefault(obj, {})[key] = value
        return out
