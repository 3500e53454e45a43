"""Containers: metadata records (spec, runtime, snapshot, image) that tasks run from.

A row keeps the fields GC and filters need as columns and the rest of the
Container message (spec, runtime options, extensions) as one protobuf blob.
"""
from __future__ import annotations

from ... import identifiers, stubs
from ...errdefs import q, AlreadyExists, InvalidArgument, NotFound
from .db import DB, now_ns, register_namespaced_kind
from .hook import Hook, no_hook

pb = stubs.module("appliance._proto.containerd.api.services.containers.v1.containers_pb2")

KIND = "container"
register_namespaced_kind("containers", "containers")

# Fields a blank update mask replaces, as containerd's store.
DEFAULT_UPDATE_PATHS = ("labels", "spec", "extensions", "image", "snapshotkey")


def validate(c: pb.Container) -> None:
    try:
        identifiers.validate(c.id)
    except InvalidArgument as exc:
        raise InvalidArgument(f"container.ID: {exc.message}") from None
    if any(not key for key in c.extensions):
        raise InvalidArgument("container.Extension keys must not be zero-length: invalid argument")
    try:
        identifiers.validate_labels(dict(c.labels))
    except InvalidArgument as exc:
        raise InvalidArgument(f"containers.Labels: {exc.message}: invalid argument") from None
    if not c.runtime.name:
        raise InvalidArgument("container.Runtime.Name must be set: invalid argument")
    if not c.HasField("spec"):
        raise InvalidArgument("container.Spec must be set: invalid argument")
    if c.snapshot_key and not c.snapshotter:
        raise InvalidArgument("container.Snapshotter must be set if container.SnapshotKey is set: "
                              "invalid argument")


def _blob(c: pb.Container) -> bytes:
    body = pb.Container()
    body.CopyFrom(c)
    body.labels.clear()
    body.ClearField("created_at")
    body.ClearField("updated_at")
    return body.SerializeToString(deterministic=True)


class ContainerStore:
    def __init__(self, db: DB, changed=no_hook):
        self.db = db
        self.changed = changed   # (dirty: bool) after a deletion; the metadata plugin's hook
        # (ns, container) after a create, (ns, id) after a delete: the runtime starts
        # shims ahead on these
        self.created = Hook("container created")
        self.deleted = Hook("container deleted")

    def _row_to_pb(self, conn, ns, row) -> pb.Container:
        c = pb.Container.FromString(row["data"])
        c.id = row["id"]
        c.labels.update(DB.get_labels(conn, ns, KIND, row["id"]))
        c.created_at.FromNanoseconds(row["created_at"])
        c.updated_at.FromNanoseconds(row["updated_at"])
        return c

    def get(self, ns: str, cid: str) -> pb.Container:
        with self.db.read() as conn:
            row = conn.execute("SELECT * FROM containers WHERE namespace=? AND id=?",
                               (ns, cid)).fetchone()
            if row is None:
                raise NotFound(f"container {q(cid)} in namespace {q(ns)}: not found")
            return self._row_to_pb(conn, ns, row)

    def list(self, ns: str) -> list[pb.Container]:
        with self.db.read() as conn:
            rows = conn.execute("SELECT * FROM containers WHERE namespace=? ORDER BY id",
                                (ns,)).fetchall()
            return [self._row_to_pb(conn, ns, row) for row in rows]

    def create(self, ns: str, c: pb.Container) -> pb.Container:
        try:
            validate(c)
        except InvalidArgument as exc:
            raise InvalidArgument(f"create container failed validation: {exc.message}") from None
        with self.db.write() as tx:
            if tx.execute("SELECT 1 FROM containers WHERE namespace=? AND id=?",
                          (ns, c.id)).fetchone():
                raise AlreadyExists(f"container {q(c.id)}: already exists")
            ts = now_ns()
            tx.execute("INSERT INTO containers VALUES (?,?,?,?,?,?,?,?,?)",
                       (ns, c.id, c.image, c.runtime.name, c.snapshotter, c.snapshot_key,
                        _blob(c), ts, ts))
            DB.set_labels(tx, ns, KIND, c.id, dict(c.labels))
            out = pb.Container()
            out.CopyFrom(c)
            out.created_at.FromNanoseconds(ts)
            out.updated_at.FromNanoseconds(ts)
        self.created(ns, out)
        return out

    def update(self, ns: str, c: pb.Container, paths: list[str]) -> pb.Container:
        if not c.id:
            raise InvalidArgument("must specify a container id: invalid argument")
        with self.db.write() as tx:
            row = tx.execute("SELECT * FROM containers WHERE namespace=? AND id=?",
                             (ns, c.id)).fetchone()
            if row is None:
                raise NotFound(f"container {q(c.id)}: not found")
            updated = self._row_to_pb(tx, ns, row)
            if not paths:
                paths = list(DEFAULT_UPDATE_PATHS)
                if updated.snapshotter != c.snapshotter:
                    raise InvalidArgument("container.Snapshotter field is immutable: "
                                          "invalid argument")
                if updated.runtime.name != c.runtime.name:
                    raise InvalidArgument("container.Runtime.Name field is immutable: "
                                          "invalid argument")
            for path in paths:
                if path.startswith("labels."):
                    key = path[len("labels."):]
                    updated.labels[key] = c.labels.get(key, "")
                elif path.startswith("extensions."):
                    key = path[len("extensions."):]
                    if key in c.extensions:
                        updated.extensions[key].CopyFrom(c.extensions[key])
                    else:
                        updated.extensions.pop(key, None)
                elif path == "labels":
                    updated.labels.clear()
                    updated.labels.update(c.labels)
                elif path == "spec":
                    if c.HasField("spec"):
                        updated.spec.CopyFrom(c.spec)
                    else:
                        updated.ClearField("spec")
                elif path == "extensions":
                    updated.extensions.clear()
                    for key, value in c.extensions.items():
                        updated.extensions[key].CopyFrom(value)
                elif path == "image":
                    updated.image = c.image
                elif path == "snapshotkey":
                    updated.snapshot_key = c.snapshot_key
                else:
                    raise InvalidArgument(f"cannot update {q(path)} field on {q(c.id)}: "
                                          "invalid argument")
            try:
                validate(updated)
            except InvalidArgument as exc:
                raise InvalidArgument(f"update failed validation: {exc.message}") from None
            ts = now_ns()
            tx.execute("UPDATE containers SET image=?, snapshot_key=?, data=?, updated_at=? "
                       "WHERE namespace=? AND id=?",
                       (updated.image, updated.snapshot_key, _blob(updated), ts, ns, c.id))
            DB.set_labels(tx, ns, KIND, c.id, dict(updated.labels))
            updated.updated_at.FromNanoseconds(ts)
            return updated

    def delete(self, ns: str, cid: str) -> None:
        with self.db.write() as tx:
            cur = tx.execute("DELETE FROM containers WHERE namespace=? AND id=?", (ns, cid))
            if cur.rowcount == 0:
                raise NotFound(f"container {cid}: not found")
            DB.set_labels(tx, ns, KIND, cid, {})
        self.deleted(ns, cid)
        self.changed(True)   # its snapshot may be garbage now
