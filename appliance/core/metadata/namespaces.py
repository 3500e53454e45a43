"""Namespaces: the top of every object's key."""
from __future__ import annotations

from ... import identifiers
from ...errdefs import q, AlreadyExists, FailedPrecondition, NotFound
from .db import DB, now_ns

KIND = "namespace"
LABELS_CACHE = 1024   # namespaces whose labels are kept (all dropped when full)

# Tables whose rows keep a namespace from being deleted, with containerd's words for them, in
# the order its error lists them (leases do not: as in containerd, they go with the namespace).
NAMESPACED_KINDS = (("images", "images"), ("content", "blobs"), ("containers", "containers"),
                    ("snapshots", "snapshots"))


class NamespaceStore:
    def __init__(self, db: DB):
        self.db = db
        # namespaces known to exist and their labels, as committed: every namespaced write
        # checks its namespace, ctr asks for its labels twice a run. Forgotten inside the
        # write transactions that change them; kept only when read while no write was open
        # or began (DB.quiet_epoch), as the container store's rows.
        self._known: set[str] = set()
        self._labels: dict[str, dict[str, str]] = {}

    def _quiet(self, epoch: int | None) -> bool:
        return epoch is not None and epoch == self.db.quiet_epoch()

    def create(self, name: str, labels: dict[str, str]) -> None:
        identifiers.validate(name)
        identifiers.validate_labels(labels)
        with self.db.write() as tx:
            if tx.execute("SELECT 1 FROM namespaces WHERE name=?", (name,)).fetchone():
                raise AlreadyExists(f"namespace {q(name)}: already exists")
            ts = now_ns()
            self._labels.pop(name, None)
            tx.execute("INSERT INTO namespaces VALUES (?,?,?)", (name, ts, ts))
            DB.set_labels(tx, "", KIND, name, labels)

    def ensure(self, name: str) -> None:
        """Create `name` if missing (every namespaced write does this, as containerd)."""
        if name in self._known:
            return
        epoch = self.db.quiet_epoch()
        with self.db.read() as conn:
            found = conn.execute("SELECT 1 FROM namespaces WHERE name=?", (name,)).fetchone()
        if found:
            if self._quiet(epoch):
                self._known.add(name)
                if not self._quiet(epoch):   # a write began after the check (read_kept's rule)
                    self._known.discard(name)
            return
        identifiers.validate(name)
        with self.db.write() as tx:
            ts = now_ns()
            tx.execute("INSERT OR IGNORE INTO namespaces VALUES (?,?,?)", (name, ts, ts))

    def labels(self, name: str) -> dict[str, str]:
        """The labels of `name`; none for a namespace that does not exist, as containerd's
        store reads them (Namespaces.Get answers that too: the Go client calls it from New())."""
        labels = self.db.read_kept(self._labels, name,
                                   lambda conn: DB.get_labels(conn, "", KIND, name),
                                   LABELS_CACHE)   # (names asked for need not exist)
        return dict(labels)

    def list(self) -> list[str]:
        with self.db.read() as conn:
            return [r[0] for r in conn.execute("SELECT name FROM namespaces ORDER BY name")]

    def update(self, name: str, labels: dict[str, str], paths: list[str]) -> dict[str, str]:
        """Set labels: all of them (no paths), or only the `labels.<key>` paths given."""
        identifiers.validate_labels(labels)
        identifiers.validate(name)
        with self.db.write() as tx:
            # containerd creates a missing namespace on update; so do we
            ts = now_ns()
            self._labels.pop(name, None)
            tx.execute("INSERT OR IGNORE INTO namespaces VALUES (?,?,?)", (name, ts, ts))
            current = DB.update_labels(DB.get_labels(tx, "", KIND, name), labels, paths,
                                       f"namespace {q(name)}")
            DB.set_labels(tx, "", KIND, name, current)
            tx.execute("UPDATE namespaces SET updated_at=? WHERE name=?", (now_ns(), name))
            return current

    def delete(self, name: str) -> None:
        with self.db.write() as tx:
            if not tx.execute("SELECT 1 FROM namespaces WHERE name=?", (name,)).fetchone():
                raise NotFound(f"namespace {q(name)}: not found")
            still = [word for table, word in NAMESPACED_KINDS
                     if tx.execute(f"SELECT 1 FROM {table} WHERE namespace=? LIMIT 1",
                                   (name,)).fetchone()]
            if still:
                raise FailedPrecondition(f"namespace {q(name)} must be empty, but it still has "
                                         f"{', '.join(still)}")
            self._known.discard(name)
            self._labels.pop(name, None)
            tx.execute("DELETE FROM namespaces WHERE name=?", (name,))
            tx.execute("DELETE FROM leases WHERE namespace=?", (name,))
            tx.execute("DELETE FROM lease_resources WHERE namespace=?", (name,))
            tx.execute("DELETE FROM labels WHERE namespace=?", (name,))
            DB.set_labels(tx, "", KIND, name, {})
