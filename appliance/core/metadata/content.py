"""Namespaced content: which blobs a namespace sees, their labels, and its ingests.

This is the in-process content API other plugins use (containerd's
`metadata.DB.ContentStore()`); reach it as `ic.get(METADATA).content`::

    info = content.info(ns, digest)                  # Info(digest, size, created_at, updated_at, labels)
    with content.reader(ns, digest) as f: f.read()   # a binary file object
    path = content.blob_path(ns, digest)             # the committed file (read-only)
    w = content.writer(ns, ref, expected_digest, expected_size, lease=None)
    w.write(data); w.commit(size, expected, labels); w.close()   # close() always

A blob lives once on disk (the LocalStore); a namespace sees it only when a row
in `content` records it. Deleting removes the row; the blob file goes with the
next garbage collection when no namespace records it. Commits and the
collector's sweep run in metadata transactions, so a blob re-ingested while a
collection is pending is never lost.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from ... import filters, identifiers
from ...errdefs import q, AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from ...process import failpoint, metrics
from ..content.store import Ingest, LocalStore, Writer, parse_digest
from .db import DB, now_ns
from .hook import no_hook

KIND = "content"
# Small committed blobs (indexes, manifests, configs: `ctr run` reads each of them a few
# times) are answered from memory: their bytes never change, being named by digest. The
# namespace's record (size, times, labels) is remembered too, and forgotten by every
# write to it, inside the transaction, under the database lock that reads hold as well.
SMALL_BLOB = 64 << 10
SMALL_BLOBS_BUDGET = 2 << 20     # bytes of small blobs kept; past it, the cache starts over
INFO_CACHE = 4096                # namespace records kept; past it, the cache starts over
INGEST_EXPIRY_NS = 24 * 3600 * 10**9   # an ingest outside any lease expires after 24 h


@dataclass
class Info:
    digest: str
    size: int
    created_at: int
    updated_at: int
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class Status:
    ref: str
    offset: int
    total: int
    expected: str
    started_at: int
    updated_at: int


def backend_ref(ns: str, ref: str) -> str:
    """The ingest key in the shared blob store (containerd's `<ns>/<seq>/<ref>`)."""
    return f"{ns}/1/{ref}"


def check_lease(conn, ns: str, lease: str | None) -> None:
    if lease and not conn.execute("SELECT 1 FROM leases WHERE namespace=? AND id=?",
                                  (ns, lease)).fetchone():
        raise NotFound("lease does not exist: not found")


def add_lease_resource(conn, ns: str, lease: str | None, rtype: str, rid: str) -> None:
    if lease:
        check_lease(conn, ns, lease)
        conn.execute("INSERT OR IGNORE INTO lease_resources VALUES (?,?,?,?)",
                     (ns, lease, rtype, rid))


SHAREABLE_LABEL = "containerd.io/namespace.shareable"


class ContentStore:
    def __init__(self, db: DB, blobs: LocalStore, shared: bool = True, changed=no_hook):
        self.db = db
        self.blobs = blobs
        self.shared = shared   # content_sharing_policy "shared" (else "isolated")
        self.changed = changed   # (dirty: bool) after a change; the metadata plugin's hook
        self._infos: dict[tuple[str, str], Info] = {}   # (ns, digest) → record (see SMALL_BLOB)
        self._small: dict[str, bytes] = {}              # digest → bytes of a small blob
        self._small_bytes = 0

    # --- committed content --------------------------------------------------------

    def record(self, ns: str, digest: str) -> Info:
        """info's record as committed, shared with the cache (not a copy): to read at once,
        not to keep or change (Content.Info fills its response from it, ≈ 10 a `ctr run`)."""
        got = self._infos.get((ns, digest))
        if got is None:
            parse_digest(digest)
            got = self.db.read_kept(self._infos, (ns, digest),
                                    lambda conn: self._info(conn, ns, digest), INFO_CACHE)
        return got

    def info(self, ns: str, digest: str) -> Info:
        got = self.record(ns, digest)
        return Info(got.digest, got.size, got.created_at, got.updated_at, dict(got.labels))

    def forget(self, ns: str, digest: str) -> None:
        """Drop a cached record; called inside the write transaction that changes it."""
        self._infos.pop((ns, digest), None)

    @staticmethod
    def _info(conn, ns, digest) -> Info:
        row = conn.execute("SELECT size, created_at, updated_at FROM content "
                           "WHERE namespace=? AND digest=?", (ns, digest)).fetchone()
        if row is None:
            raise NotFound(f"content digest {digest}: not found")
        return Info(digest, row[0], row[1], row[2], DB.get_labels(conn, ns, KIND, digest))

    def list(self, ns: str, filter_strings=()) -> list[Info]:
        flt = filters.parse(*filter_strings)
        with self.db.read() as conn:
            labels = DB.all_labels(conn, ns, KIND)
            infos = [Info(r[0], r[1], r[2], r[3], labels.get(r[0], {})) for r in conn.execute(
                "SELECT digest, size, created_at, updated_at FROM content WHERE namespace=? "
                "ORDER BY digest", (ns,))]
        return [i for i in infos
                if flt.match(filters.adapt_object({"digest": i.digest, "labels": i.labels}))]

    def update(self, ns: str, digest: str, labels: dict[str, str], paths) -> Info:
        parse_digest(digest)
        identifiers.validate_labels(labels)
        with self.db.write() as tx:
            info = self._info(tx, ns, digest)
            current = DB.update_labels(info.labels, labels, paths, f"content info {q(digest)}")
            DB.set_labels(tx, ns, KIND, digest, current)
            updated = now_ns()
            self.forget(ns, digest)
            tx.execute("UPDATE content SET updated_at=? WHERE namespace=? AND digest=?",
                       (updated, ns, digest))
        self.changed(False)
        return Info(digest, info.size, info.created_at, updated, current)

    def delete(self, ns: str, digest: str) -> None:
        parse_digest(digest)
        with self.db.write() as tx:
            self.forget(ns, digest)
            if not tx.execute("DELETE FROM content WHERE namespace=? AND digest=?",
                              (ns, digest)).rowcount:
                raise NotFound(f"content digest {digest}: not found")
            DB.set_labels(tx, ns, KIND, digest, {})
        self.changed(True)

    def blob_path(self, ns: str, digest: str) -> str:
        self.record(ns, digest)
        return self.blobs.blob_path(digest)

    def file_path(self, digest: str) -> str:
        """Where a blob's bytes are once its ingest was installed, with no record check: a
        follower of a download reads them while the commit's transaction is still open
        (reads do not wait for it)."""
        return self.blobs.blob_path(digest)

    def reader(self, ns: str, digest: str):
        self.record(ns, digest)
        return self.blobs.open(digest)

    def forget_bytes(self, digest: str) -> None:
        data = self._small.pop(digest, None)
        if data is not None:
            self._small_bytes -= len(data)

    def small_blob(self, ns: str, digest: str) -> bytes | None:
        """The bytes of a blob of at most SMALL_BLOB bytes that the namespace has, from
        memory after the first read; None for a larger blob."""
        if self.record(ns, digest).size > SMALL_BLOB:
            return None
        data = self._small.get(digest)
        if data is None:
            with self.blobs.open(digest) as f:
                data = f.read(SMALL_BLOB + 1)
            if len(data) > SMALL_BLOB:
                return None
            if self._small_bytes + len(data) > SMALL_BLOBS_BUDGET:
                self._small.clear()
                self._small_bytes = 0
            self._small[digest] = data
            self._small_bytes += len(data)
        return data

    # --- ingests --------------------------------------------------------------------

    def writer(self, ns: str, ref: str, expected: str = "", size: int = 0,
               lease: str | None = None) -> "NamespacedWriter":
        """Open or resume the ingest `ref`; AlreadyExists when `expected` is already here.

        Blocking (a resume after a restart hashes the partial data): call it in a thread
        from async code.
        """
        if not ref:
            raise InvalidArgument("ref must not be empty: invalid argument")
        if expected:
            parse_digest(expected)
        bref = backend_ref(ns, ref)
        shared = exists = False
        with self.db.write() as tx:
            check_lease(tx, ns, lease)
            if expected and tx.execute("SELECT 1 FROM content WHERE namespace=? AND digest=?",
                                       (ns, expected)).fetchone():
                # the lease holds the blob from now on: raised after the commit, which an
                # exception inside the transaction would roll back
                add_lease_resource(tx, ns, lease, "content", expected)
                exists = True
            else:
                if expected and self.blobs.exists(expected) and (
                        self.shared or self._in_shareable_namespace(tx, expected)):
                    on_disk = self.blobs.size(expected)
                    if size in (0, on_disk):   # another namespace has it: no bytes to move
                        shared, size = True, on_disk
                tx.execute(
                    "INSERT INTO ingests VALUES (?,?,?,?,?,?) ON CONFLICT(namespace, ref) DO "
                    "UPDATE SET expected=excluded.expected, size=excluded.size",
                    (ns, ref, bref, expected if shared else "", size,
                     0 if lease else now_ns() + INGEST_EXPIRY_NS))
                add_lease_resource(tx, ns, lease, "ingests", ref)
        if exists:
            raise AlreadyExists(f"content {expected}: already exists")
        self.changed(False)
        if shared:
            self.blobs._lock(bref)
            return NamespacedWriter(self, ns, ref, bref, lease, None, expected, size)
        return NamespacedWriter(self, ns, ref, bref, lease, self.blobs.writer(bref, size),
                                "", size)

    @staticmethod
    def _in_shareable_namespace(conn, digest: str) -> bool:
        """Whether a namespace labelled shareable has the blob (isolated policy only)."""
        return conn.execute(
            "SELECT 1 FROM content c JOIN labels l ON l.namespace = '' "
            "AND l.kind = 'namespace' AND l.object = c.namespace "
            "WHERE c.digest = ? AND l.key = ? AND l.value = 'true' LIMIT 1",
            (digest, SHAREABLE_LABEL)).fetchone() is not None

    def status(self, ns: str, ref: str) -> Status:
        with self.db.read() as conn:
            row = conn.execute("SELECT bref, expected, size FROM ingests WHERE namespace=? AND ref=?",
                               (ns, ref)).fetchone()
        if row is None:
            raise NotFound(f"reference {ref}: not found")
        return self._status(ref, row[0], row[1], row[2])

    def _status(self, ref, bref, expected, size) -> Status:
        if expected:  # a shared ingest has no data of its own
            return Status(ref, size, size, expected, 0, 0)
        try:
            st = self.blobs.status(bref)
        except NotFound:
            st = Ingest(bref, 0, size, 0, 0)
        return Status(ref, st.offset, st.total, "", st.started_at, st.updated_at)

    def list_statuses(self, ns: str, filter_strings=()) -> list[Status]:
        flt = filters.parse(*filter_strings)
        with self.db.read() as conn:
            rows = conn.execute("SELECT ref, bref, expected, size FROM ingests WHERE namespace=? "
                                "ORDER BY ref", (ns,)).fetchall()
        out = [self._status(*row) for row in rows]
        return [s for s in out if flt.match(filters.adapt_object({"ref": s.ref}))]

    def abort(self, ns: str, ref: str) -> None:
        with self.db.write() as tx:
            row = tx.execute("SELECT bref FROM ingests WHERE namespace=? AND ref=?",
                             (ns, ref)).fetchone()
            if row is None:
                raise NotFound(f"reference {ref}: not found")
            try:
                self.blobs.abort(row[0])
            except NotFound:
                pass  # a shared ingest, or its data already gone
            tx.execute("DELETE FROM ingests WHERE namespace=? AND ref=?", (ns, ref))
            tx.execute("DELETE FROM lease_resources WHERE namespace=? AND type='ingests' AND id=?",
                       (ns, ref))
        self.changed(True)


class NamespacedWriter:
    """A writer in one namespace; `local` is None for a blob shared from another namespace."""

    def __init__(self, store: ContentStore, ns, ref, bref, lease, local: Writer | None,
                 expected: str, size: int):
        self.store = store
        self.ns = ns
        self.ref = ref
        self.bref = bref
        self.lease = lease
        self.local = local
        self.expected = expected
        self.size = size
        self.started_at = time.time_ns()
        self._closed = False

    def status(self) -> Status:
        if self.local is None:
            return Status(self.ref, self.size, self.size, self.expected, self.started_at,
                          self.started_at)
        st = self.local.status()
        return Status(self.ref, st.offset, st.total, "", st.started_at, st.updated_at)

    def digest(self) -> str:
        return self.local.digest() if self.local is not None else self.expected

    @property
    def offset(self) -> int:
        return self.local.offset if self.local is not None else self.size

    def write(self, data) -> int:
        if self.local is None:
            if not len(data):
                return 0
            self._unshare()
        return self.local.write(data)

    def truncate(self) -> None:
        if self.local is None:
            self._unshare()
        self.local.truncate()

    def _unshare(self) -> None:
        """The client writes after all: give up the shared blob and take the bytes."""
        self.store.blobs._unlock(self.bref)
        self.local = self.store.blobs.writer(self.bref, 0)
        self.local.truncate()
        self.expected, self.size = "", 0
        with self.store.db.write() as tx:
            tx.execute("UPDATE ingests SET expected='', size=0 WHERE namespace=? AND ref=?",
                       (self.ns, self.ref))

    def commit(self, size: int = 0, expected: str = "", labels: dict[str, str] | None = None) -> str:
        """Verify and publish the blob in this namespace; returns its digest.

        AlreadyExists when the namespace already had it (the ingest is gone either way).
        """
        labels = dict(labels or {})
        identifiers.validate_labels(labels)
        if expected:
            parse_digest(expected)
        if self.local is None:
            if size and size != self.size:
                raise FailedPrecondition(f"{q(self.ref)} failed size validation: {self.size} != "
                                         f"{size}: failed precondition")
            if expected and expected != self.expected:
                raise FailedPrecondition(f"{q(self.ref)} unexpected digest: failed precondition")
            actual, size = self.expected, self.size
        else:
            if size and size != self.local.offset:
                raise FailedPrecondition(f"{q(self.ref)} failed size validation: "
                                         f"{self.local.offset} != {size}: failed precondition")
            size = self.local.offset
            actual = self.local.seal(size, expected)   # fsync + verify, outside the DB lock
        return self._publish(actual, size, labels)

    def _publish(self, actual: str, size: int, labels: dict[str, str]) -> str:
        if self.local is None:
            return self._record(actual, size, labels)
        # the blob in place (renamed, its directory fsynced) before the transaction that
        # records it, outside the database lock; the collector leaves it alone meanwhile
        with self.store.blobs.installing(actual):
            if self.store.blobs.install(self.local, actual):
                metrics.CONTENT_INGESTED_BYTES.inc(size)
            self.local.committed()
            return self._record(actual, size, labels)

    def _record(self, actual: str, size: int, labels: dict[str, str]) -> str:
        ns = self.ns
        duplicate = False
        with self.store.db.write() as tx:   # serialised with the collector's sweep
            if self.local is None and not self.store.blobs.exists(actual):
                raise NotFound(f"content digest {actual}: not found")
            failpoint.hit("content.commit")
            if tx.execute("SELECT 1 FROM content WHERE namespace=? AND digest=?",
                          (ns, actual)).fetchone():
                duplicate = True
            else:
                ts = now_ns()
                self.store.forget(ns, actual)
                tx.execute("INSERT INTO content VALUES (?,?,?,?,?)", (ns, actual, size, ts, ts))
                DB.set_labels(tx, ns, KIND, actual, labels)
            self._forget_ingest(tx)
            add_lease_resource(tx, ns, self.lease, "content", actual)
        self.store.changed(False)
        if duplicate:
            raise AlreadyExists(f"content {actual}: already exists")
        return actual

    def _forget_ingest(self, tx=None) -> None:
        if tx is None:
            with self.store.db.write() as tx:
                return self._forget_ingest(tx)
        tx.execute("DELETE FROM ingests WHERE namespace=? AND ref=?", (self.ns, self.ref))
        tx.execute("DELETE FROM lease_resources WHERE namespace=? AND type='ingests' AND id=?",
                   (self.ns, self.ref))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.local is not None:
            self.local.close()
        else:
            self.store.blobs._unlock(self.bref)


def register_gc(collector, store: ContentStore) -> None:
    """Content rows, blob files, ingests and expired leases as collectible kinds."""

    def all_content(conn):
        return [("content", ns, d) for ns, d in conn.execute("SELECT namespace, digest FROM content")]

    doomed: list[str] = []

    def sweep_content(conn, dead) -> int:
        for _, ns, digest in dead:
            store.forget(ns, digest)
            conn.execute("DELETE FROM content WHERE namespace=? AND digest=?", (ns, digest))
            DB.set_labels(conn, ns, KIND, digest, {})
        # a blob file goes once no namespace records it and no shared ingest waits for it:
        # after the commit (delete_blobs), so that a failed one keeps every listed blob
        keep = {r[0] for r in conn.execute("SELECT DISTINCT digest FROM content")}
        keep |= {r[0] for r in conn.execute("SELECT DISTINCT expected FROM ingests")}
        keep |= store.blobs.being_installed()
        doomed[:] = [d for d in store.blobs.walk() if d not in keep]
        for digest in doomed:
            store.forget_bytes(digest)
        return len(doomed)

    def delete_blobs():
        while doomed:
            store.blobs.collect(doomed.pop())

    def all_ingests(conn):
        return [("ingest", ns, ref) for ns, ref in conn.execute("SELECT namespace, ref FROM ingests")]

    def sweep_ingests(conn, dead) -> int:
        removed = 0
        for _, ns, ref in dead:
            bref = backend_ref(ns, ref)
            if store.blobs.locked(bref):
                continue  # a writer is on it right now
            conn.execute("DELETE FROM ingests WHERE namespace=? AND ref=?", (ns, ref))
            try:
                store.blobs.abort(bref)
            except NotFound:
                pass
            removed += 1
        return removed

    def all_leases(conn):
        return [("lease", ns, lid) for ns, lid in conn.execute("SELECT namespace, id FROM leases")]

    def sweep_leases(conn, dead) -> int:
        for _, ns, lid in dead:  # only expired leases are unmarked
            conn.execute("DELETE FROM leases WHERE namespace=? AND id=?", (ns, lid))
            conn.execute("DELETE FROM lease_resources WHERE namespace=? AND lease=?", (ns, lid))
            DB.set_labels(conn, ns, "lease", lid, {})
        return len(dead)

    collector.register_collectible("lease", all_leases, sweep_leases)
    collector.register_collectible("ingest", all_ingests, sweep_ingests)
    collector.register_collectible("content", all_content, sweep_content)
    collector.after_commit.append(delete_blobs)
