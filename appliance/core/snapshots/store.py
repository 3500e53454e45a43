"""Namespaced snapshots: keys, parents, kinds, labels and usage in the metadata database.

One row per snapshot in `snapshots`; its integer id names its directory in the
backend (`snapshots/<id>`), so a namespace's key never reaches the disk. Labels
live in the shared `labels` table (kind "snapshot", object "<snapshotter>/<key>").
Commit is one transaction (the row changes kind and key), so a crash never shows
a half-committed snapshot; directories without a row are removed by `cleanup`.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

from ... import filters, identifiers
from ...errdefs import q, AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from ...process import failpoint
from ..metadata.db import DB, now_ns
from ..metadata.hook import no_hook
from .backends import ACTIVE, COMMITTED, VIEW, Backend, Mount

KIND = "snapshot"
NOT_MEASURED = -1   # size/inodes of a committed snapshot whose usage nobody asked for yet


@dataclass
class Info:
    name: str
    parent: str
    kind: str
    created_at: int
    updated_at: int
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class Row:
    id: int
    key: str
    parent_id: int | None
    kind: str
    size: int
    inodes: int
    created_at: int
    updated_at: int


def _lease_add(tx, ns: str, lease: str | None, rtype: str, key: str) -> None:
    if not lease:
        return
    if not tx.execute("SELECT 1 FROM leases WHERE namespace=? AND id=?", (ns, lease)).fetchone():
        raise NotFound("lease does not exist: not found")
    tx.execute("INSERT OR IGNORE INTO lease_resources VALUES (?,?,?,?)", (ns, lease, rtype, key))


def _lease_remove(tx, ns: str, rtype: str, key: str) -> None:
    tx.execute("DELETE FROM lease_resources WHERE namespace=? AND type=? AND id=?", (ns, rtype, key))


class Snapshotter:
    """One snapshotter (overlayfs, native) as a namespace sees it."""

    def __init__(self, db: DB, backend: Backend, changed=no_hook):
        self.db = db
        self.backend = backend
        self.name = backend.name
        self.rtype = f"snapshots/{self.name}"
        self.changed = changed   # (dirty: bool) after a commit or remove; the metadata hook
        self._lock = threading.Lock()
        # upper dirs whose layer was adopted from a concurrent unpack (left empty on purpose)
        self._adopted: set[str] = set()
        self._on_settled: dict[int, list] = {}   # backend id -> callbacks (when_settled)

    # --- what the unpacker shares with the store -------------------------------------

    def adopt(self, upper: str) -> None:
        """`upper` stays empty: its layer is another active snapshot's (see diff/unpack.py)."""
        with self._lock:
            self._adopted.add(upper)

    def _is_adopted(self, upper: str) -> bool:
        with self._lock:
            return upper in self._adopted

    def when_settled(self, sid: int, callback) -> None:
        """Call `callback()` once the snapshot with backend id `sid` is no longer active
        (committed, removed or collected): at once if it is not active now."""
        with self._lock:
            self._on_settled.setdefault(sid, []).append(callback)
        state = self.key_of(sid)
        if state is None or state[2] != ACTIVE:
            self._settled(sid)

    def _settled(self, sid: int) -> None:
        with self._lock:
            callbacks = self._on_settled.pop(sid, [])
        for callback in callbacks:
            callback()

    # --- reading -------------------------------------------------------------------

    def _row(self, conn, ns: str, key: str) -> Row | None:
        r = conn.execute("SELECT id, key, parent_id, kind, size, inodes, created_at, updated_at "
                         "FROM snapshots WHERE snapshotter=? AND namespace=? AND key=?",
                         (self.name, ns, key)).fetchone()
        return Row(*r) if r else None

    def _require(self, conn, ns, key) -> Row:
        row = self._row(conn, ns, key)
        if row is None:
            raise NotFound(f"snapshot {key} does not exist: not found")
        return row

    def _parent_ids(self, conn, parent_id) -> list[int]:
        """The chain of parent ids, nearest first."""
        ids = []
        while parent_id is not None:
            ids.append(parent_id)
            parent_id = conn.execute("SELECT parent_id FROM snapshots WHERE id=?",
                                     (parent_id,)).fetchone()[0]
        return ids

    def _info(self, conn, ns, row: Row) -> Info:
        parent = ""
        if row.parent_id is not None:
            parent = conn.execute("SELECT key FROM snapshots WHERE id=?", (row.parent_id,)).fetchone()[0]
        labels = {**self.backend.labels(row.id),
                  **DB.get_labels(conn, ns, KIND, f"{self.name}/{row.key}")}
        return Info(row.key, parent, row.kind, row.created_at, row.updated_at, labels)

    def stat(self, ns: str, key: str) -> Info:
        with self.db.read() as conn:
            return self._info(conn, ns, self._require(conn, ns, key))

    def mounts(self, ns: str, key: str) -> list[Mount]:
        """An active snapshot's or a view's mounts; a committed one is shared by every child,
        so it has none (containerd's words, with the snapshot's internal name)."""
        with self.db.read() as conn:
            row = self._require(conn, ns, key)
            if row.kind == COMMITTED:
                raise FailedPrecondition(f"{self.backend.mounts_error}: requested snapshot "
                                         f"{ns}/{row.id}/{key} not active or view: "
                                         "failed precondition")
            parents = self._parent_ids(conn, row.parent_id)
        return self.backend.mounts(row.id, row.kind, parents)

    def usage(self, ns: str, key: str) -> tuple[int, int]:
        """(size, inodes): measured now for active snapshots; a committed one's files never
        change, so it is measured on the first request and recorded."""
        with self.db.read() as conn:
            row = self._require(conn, ns, key)
        if row.kind == ACTIVE:
            return self.backend.usage(row.id)
        if row.size != NOT_MEASURED:
            return row.size, row.inodes
        size, inodes = self.backend.usage(row.id)
        with self.db.write() as tx:
            tx.execute("UPDATE snapshots SET size=?, inodes=? WHERE id=? AND size=?",
                       (size, inodes, row.id, NOT_MEASURED))
        return size, inodes

    def list(self, ns: str, filter_strings=()) -> list[Info]:
        flt = filters.parse(*filter_strings)
        with self.db.read() as conn:
            labels = DB.all_labels(conn, ns, KIND)
            rows = conn.execute(
                "SELECT s.key, COALESCE(p.key, ''), s.kind, s.created_at, s.updated_at, s.id "
                "FROM snapshots s LEFT JOIN snapshots p ON p.id = s.parent_id "
                "WHERE s.snapshotter=? AND s.namespace=? ORDER BY s.key", (self.name, ns)).fetchall()
        infos = [Info(r[0], r[1], r[2], r[3], r[4], {**self.backend.labels(r[5]),
                                                     **labels.get(f"{self.name}/{r[0]}", {})})
                 for r in rows]
        return [i for i in infos if flt.match(filters.adapt_object(
            {"name": i.name, "parent": i.parent, "kind": i.kind, "labels": i.labels}))]

    def count_by_namespace(self) -> dict[str, int]:
        with self.db.read() as conn:
            return dict(conn.execute("SELECT namespace, COUNT(*) FROM snapshots "
                                     "WHERE snapshotter=? GROUP BY namespace", (self.name,)))

    def key_of(self, sid: int) -> tuple[str, str, str] | None:
        """(namespace, key, kind) of the snapshot with backend id `sid`."""
        with self.db.read() as conn:
            r = conn.execute("SELECT namespace, key, kind FROM snapshots WHERE id=? AND snapshotter=?",
                             (sid, self.name)).fetchone()
        return tuple(r) if r else None

    # --- writing -------------------------------------------------------------------

    def prepare(self, ns, key, parent="", labels=None, lease=None) -> list[Mount]:
        return self._create(ns, key, parent, ACTIVE, labels or {}, lease)

    def view(self, ns, key, parent="", labels=None, lease=None) -> list[Mount]:
        return self._create(ns, key, parent, VIEW, labels or {}, lease)

    def _create(self, ns, key, parent, kind, labels, lease) -> list[Mount]:
        if not key:
            raise InvalidArgument("key must not be empty: invalid argument")
        identifiers.validate_labels(labels)
        ts = now_ns()
        with self.db.write() as tx:
            target = labels.get("containerd.io/snapshot.ref")
            if target and self._row(tx, ns, target) is not None:
                raise AlreadyExists(f"target snapshot {q(target)}: already exists")
            if self._row(tx, ns, key) is not None:
                raise AlreadyExists(f"snapshot {q(key)}: already exists")
            parent_id = None
            if parent:
                prow = self._row(tx, ns, parent)
                if prow is None:
                    raise NotFound(f"parent snapshot {parent} does not exist: not found")
                if prow.kind != COMMITTED:
                    raise InvalidArgument(f"failed to create snapshot: parent {q(parent)} "
                                          "is not committed snapshot: invalid argument")
                parent_id = prow.id
            _lease_add(tx, ns, lease, self.rtype, key)
            cur = tx.execute("INSERT INTO snapshots (snapshotter, namespace, key, parent_id, kind, "
                             "size, inodes, created_at, updated_at) VALUES (?,?,?,?,?,0,0,?,?)",
                             (self.name, ns, key, parent_id, kind, ts, ts))
            sid = cur.lastrowid
            DB.set_labels(tx, ns, KIND, f"{self.name}/{key}", labels)
            parents = self._parent_ids(tx, parent_id)
            # the directory appears inside the transaction: a failure rolls both back
            self.backend.create(sid, kind, parents)
        return self.backend.mounts(sid, kind, parents)

    def commit(self, ns, name, key, labels=None, lease=None) -> None:
        labels = labels or {}
        identifiers.validate_labels(labels)
        with self.db.write() as tx:
            row = self._to_commit(tx, ns, name, key)
            if row.kind != ACTIVE:
                raise FailedPrecondition(f"failed to commit snapshot: snapshot {q(key)} "
                                         "is not active: failed precondition")
            if self._is_adopted(self.backend.fs(row.id)):
                # its layer was left to a concurrent unpack whose snapshot is gone
                raise FailedPrecondition(f"snapshot {q(key)} was not unpacked (a concurrent "
                                         "unpack of the same layer was removed): retry the unpack")
            self._committed(tx, ns, row, name, row.parent_id, labels, lease)
            backend_commit = getattr(self.backend, "commit", None)
            if backend_commit is not None:  # a proxy snapshotter commits remotely too
                backend_commit(row.id)
            failpoint.hit("snapshot.commit")
        self._settled(row.id)
        self.changed(False)

    def commit_onto(self, ns, name, key, parent, rebase, labels=None, lease=None) -> None:
        """Commit the parentless active snapshot `key` as `name` on the committed `parent`,
        in one transaction: a layer unpacked while its parent was still being unpacked (a
        pull). `rebase(mounts)` first makes its files what an unpack onto the parent would
        have made, given the mounts the snapshot would have as `parent`'s active child."""
        labels = labels or {}
        identifiers.validate_labels(labels)
        with self.db.write() as tx:
            row = self._to_commit(tx, ns, name, key)
            if row.kind != ACTIVE or row.parent_id is not None:
                raise FailedPrecondition(f"failed to commit snapshot: snapshot {q(key)} "
                                         "is not a parentless active one: failed precondition")
            prow = self._require(tx, ns, parent)
            if prow.kind != COMMITTED:
                raise InvalidArgument(f"failed to commit snapshot: parent {q(parent)} "
                                      "is not committed snapshot: invalid argument")
            rebase(self.backend.mounts(row.id, ACTIVE, [prow.id, *self._parent_ids(
                tx, prow.parent_id)]))
            self._committed(tx, ns, row, name, prow.id, labels, lease)
            failpoint.hit("snapshot.commit")
        self._settled(row.id)
        self.changed(False)

    def _to_commit(self, tx, ns, name, key) -> Row:
        row = self._require(tx, ns, key)
        if self._row(tx, ns, name) is not None:
            raise AlreadyExists(f"snapshot {q(name)}: already exists")
        return row

    def _committed(self, tx, ns, row: Row, name, parent_id, labels, lease) -> None:
        """The active snapshot `row` is the committed `name` from now on."""
        _lease_add(tx, ns, lease, self.rtype, name)
        _lease_remove(tx, ns, self.rtype, row.key)
        ts = now_ns()
        # the usage is measured when first asked for: walking a big tree takes a while
        tx.execute("UPDATE snapshots SET key=?, parent_id=?, kind=?, size=?, inodes=?, "
                   "created_at=?, updated_at=? WHERE id=?",
                   (name, parent_id, COMMITTED, NOT_MEASURED, NOT_MEASURED, ts, ts, row.id))
        DB.set_labels(tx, ns, KIND, f"{self.name}/{row.key}", {})
        DB.set_labels(tx, ns, KIND, f"{self.name}/{name}", labels)

    def remove(self, ns, key) -> None:
        with self.db.write() as tx:
            row = self._require(tx, ns, key)
            if tx.execute("SELECT 1 FROM snapshots WHERE parent_id=? LIMIT 1", (row.id,)).fetchone():
                raise FailedPrecondition("cannot remove snapshot with child: failed precondition")
            self._delete_row(tx, ns, row)
        failpoint.hit("snapshot.remove")  # the record is gone, not yet the directory
        self.backend.remove(row.id)
        with self._lock:
            self._adopted.discard(self.backend.fs(row.id))
        self._settled(row.id)
        self.changed(True)

    def _delete_row(self, tx, ns, row: Row) -> None:
        tx.execute("DELETE FROM snapshots WHERE id=?", (row.id,))
        DB.set_labels(tx, ns, KIND, f"{self.name}/{row.key}", {})
        _lease_remove(tx, ns, self.rtype, row.key)

    def update(self, ns, key, labels: dict[str, str], paths) -> Info:
        if not key:
            raise InvalidArgument("invalid argument")
        with self.db.write() as tx:
            row = self._require(tx, ns, key)
            obj = f"{self.name}/{key}"
            current = DB.update_labels(DB.get_labels(tx, ns, KIND, obj), labels, paths,
                                       f"snapshot {q(key)}")
            identifiers.validate_labels(current)
            DB.set_labels(tx, ns, KIND, obj, current)
            tx.execute("UPDATE snapshots SET updated_at=? WHERE id=?", (now_ns(), row.id))
            return self._info(tx, ns, self._require(tx, ns, key))

    def cleanup(self) -> list[str]:
        """Remove directories that no snapshot row owns."""
        with self.db.read() as conn:
            known = {r[0] for r in conn.execute("SELECT id FROM snapshots WHERE snapshotter=?",
                                                (self.name,))}
        return self.backend.cleanup(known)


# --- garbage collection --------------------------------------------------------------

def gc_graph(conn, now_ns_):
    """Snapshots as GC nodes: each keeps its parent and whatever its gc.ref labels name."""
    from ..gc import Graph, LABEL_ROOT
    graph = Graph()
    rows = conn.execute("SELECT s.snapshotter, s.namespace, s.key, p.key FROM snapshots s "
                        "LEFT JOIN snapshots p ON p.id = s.parent_id").fetchall()
    for ns, obj, k, v in conn.execute(
            "SELECT namespace, object, key, value FROM labels WHERE kind=?", (KIND,)):
        node = ("snapshot", ns, obj)
        graph.labels.setdefault(node, {})[k] = v
        if k == LABEL_ROOT:
            graph.roots.append((node, True))
    for snapshotter, ns, key, parent in rows:
        if parent is not None:
            graph.edges[("snapshot", ns, f"{snapshotter}/{key}")] = [
                ("snapshot", ns, f"{snapshotter}/{parent}")]
    return graph


def register_gc(collector, snapshotters: dict[str, Snapshotter]) -> None:
    """Unreferenced snapshots are swept (children before parents), their directories after."""
    doomed: list[tuple[Snapshotter, int]] = []

    def all_nodes(conn):
        return [("snapshot", ns, f"{sn}/{key}") for sn, ns, key in conn.execute(
            "SELECT snapshotter, namespace, key FROM snapshots")]

    def sweep(conn, dead) -> int:
        removed = 0
        pending = {n for n in dead if n[2].split("/", 1)[0] in snapshotters}
        while pending:
            progress = False
            for node in sorted(pending):
                _, ns, obj = node
                name, key = obj.split("/", 1)
                sn = snapshotters[name]
                row = sn._row(conn, ns, key)
                if row is None:
                    pending.discard(node)
                    continue
                if conn.execute("SELECT 1 FROM snapshots WHERE parent_id=? LIMIT 1",
                                (row.id,)).fetchone():
                    continue  # a child goes first (or is alive: then this one stays)
                sn._delete_row(conn, ns, row)
                doomed.append((sn, row.id))
                pending.discard(node)
                removed += 1
                progress = True
            if not progress:
                break
        return removed

    def remove_dirs():
        while doomed:
            sn, sid = doomed.pop()
            sn.backend.remove(sid)
            sn._settled(sid)

    collector.register_collectible("snapshot", all_nodes, sweep)
    collector.after_sweep.append(remove_dirs)
