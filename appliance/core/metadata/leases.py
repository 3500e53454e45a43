"""Leases: named holds on content, ingests and snapshots while work is in flight."""
from __future__ import annotations

from dataclasses import dataclass, field

from ... import identifiers
from ...errdefs import q, AlreadyExists, InvalidArgument, NotFound
from .db import DB, now_ns

KIND = "lease"
EXPIRE_LABEL = "containerd.io/gc.expire"


@dataclass
class Lease:
    id: str
    created_at: int
    labels: dict[str, str] = field(default_factory=dict)


def check_resource(rtype: str, rid: str) -> None:
    """containerd accepts content digests, ingest refs and `snapshots/<snapshotter>` keys."""
    if rtype == "content":
        if ":" not in rid:
            raise InvalidArgument(f"invalid content digest {q(rid)}")
    elif rtype == "ingests":
        if not rid:
            raise InvalidArgument("ingest ref must not be empty")
    elif rtype.startswith("snapshots/") and rtype != "snapshots/":
        if not rid:
            raise InvalidArgument("snapshot key must not be empty")
    else:
        raise InvalidArgument(f"unsupported lease resource type {q(rtype)}: invalid argument")


class LeaseStore:
    def __init__(self, db: DB):
        self.db = db

    def create(self, ns: str, lease_id: str, labels: dict[str, str]) -> Lease:
        # containerd takes any non-empty lease id: ctr's own (`<ns>-<base64url>`, e.g.
        # "961999641--doi") would fail the identifier rules
        if not lease_id:
            raise InvalidArgument("lease id must be provided")
        identifiers.validate_labels(labels)
        with self.db.write() as tx:
            if tx.execute("SELECT 1 FROM leases WHERE namespace=? AND id=?",
                          (ns, lease_id)).fetchone():
                raise AlreadyExists(f"lease {q(lease_id)}: already exists")
            lease = Lease(lease_id, now_ns(), {k: v for k, v in labels.items() if v})
            tx.execute("INSERT INTO leases VALUES (?,?,?)", (ns, lease_id, lease.created_at))
            DB.set_labels(tx, ns, KIND, lease_id, labels)
        return lease

    def list(self, ns: str) -> list[Lease]:
        with self.db.read() as conn:
            labels = DB.all_labels(conn, ns, KIND)
            return [Lease(r[0], r[1], labels.get(r[0], {})) for r in conn.execute(
                "SELECT id, created_at FROM leases WHERE namespace=? ORDER BY id", (ns,))]

    def delete(self, ns: str, lease_id: str) -> None:
        with self.db.write() as tx:
            self._require(tx, ns, lease_id)
            tx.execute("DELETE FROM leases WHERE namespace=? AND id=?", (ns, lease_id))
            tx.execute("DELETE FROM lease_resources WHERE namespace=? AND lease=?", (ns, lease_id))
            DB.set_labels(tx, ns, KIND, lease_id, {})

    def add_resource(self, ns: str, lease_id: str, rtype: str, rid: str) -> None:
        check_resource(rtype, rid)
        with self.db.write() as tx:
            self._require(tx, ns, lease_id)
            tx.execute("INSERT OR IGNORE INTO lease_resources VALUES (?,?,?,?)",
                       (ns, lease_id, rtype, rid))

    def delete_resource(self, ns: str, lease_id: str, rtype: str, rid: str) -> None:
        check_resource(rtype, rid)
        with self.db.write() as tx:
            self._require(tx, ns, lease_id)
            tx.execute("DELETE FROM lease_resources WHERE namespace=? AND lease=? AND type=? AND id=?",
                       (ns, lease_id, rtype, rid))

    def resources(self, ns: str, lease_id: str) -> list[tuple[str, str]]:
        with self.db.read() as conn:
            self._require(conn, ns, lease_id)
            return [(r[0], r[1]) for r in conn.execute(
                "SELECT type, id FROM lease_resources WHERE namespace=? AND lease=? "
                "ORDER BY type, id", (ns, lease_id))]

    @staticmethod
    def _require(conn, ns, lease_id):
        if not conn.execute("SELECT 1 FROM leases WHERE namespace=? AND id=?",
                            (ns, lease_id)).fetchone():
            raise NotFound(f"lease {q(lease_id)}: not found")
