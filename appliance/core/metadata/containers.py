"""Containers: metadata records (spec, runtime, snapshot, image) that tasks run from.

The store keeps `Container` objects. A row keeps the fields GC and filters need as
columns and the rest (spec, runtime options, extensions) as one protobuf blob of
containerd's Container message, the same bytes as before this store had its own type.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf import any_pb2

from ... import identifiers, stubs
from ...errdefs import q, AlreadyExists, InvalidArgument, NotFound
from ...grpcutil import set_timestamp
from .db import DB, apply_mask, now_ns
from .hook import Hook, no_hook

pb = stubs.module("appliance._proto.containerd.api.services.containers.v1.containers_pb2")

KIND = "container"
ROW_CACHE = 4096   # containers whose row is kept in memory (the whole cache is dropped when full)
LIST_CACHE = 64    # namespaces whose list is kept (likewise)

# Fields a blank update mask replaces, as containerd's store.
DEFAULT_UPDATE_PATHS = ("labels", "spec", "extensions", "image", "snapshotkey")


@dataclass
class Runtime:
    name: str = ""
    options: any_pb2.Any | None = None     # typed runtime options (runc's, e.g.)


@dataclass
class Container:
    id: str
    labels: dict[str, str] = field(default_factory=dict)
    image: str = ""
    runtime: Runtime = field(default_factory=Runtime)
    spec: any_pb2.Any | None = None        # the OCI runtime spec, typed
    snapshotter: str = ""
    snapshot_key: str = ""
    extensions: dict[str, any_pb2.Any] = field(default_factory=dict)
    sandbox: str = ""
    created_at: int = 0
    updated_at: int = 0


def from_pb(msg: pb.Container) -> Container:
    return Container(
        msg.id, dict(msg.labels), msg.image,
        Runtime(msg.runtime.name, _copy(msg.runtime.options)
                if msg.runtime.HasField("options") else None),
        _copy(msg.spec) if msg.HasField("spec") else None, msg.snapshotter, msg.snapshot_key,
        {k: _copy(v) for k, v in msg.extensions.items()}, msg.sandbox,
        msg.created_at.ToNanoseconds(), msg.updated_at.ToNanoseconds())


def to_pb(c: Container, with_times: bool = True,
          out: pb.Container | None = None) -> pb.Container:
    """`c` as a message, or filled into `out` (a response's field: no copy of the spec)."""
    msg = pb.Container() if out is None else out
    msg.id, msg.image, msg.snapshotter = c.id, c.image, c.snapshotter
    msg.snapshot_key, msg.sandbox = c.snapshot_key, c.sandbox
    msg.labels.update(c.labels)
    msg.runtime.name = c.runtime.name
    if c.runtime.options is not None:
        msg.runtime.options.CopyFrom(c.runtime.options)
    if c.spec is not None:
        msg.spec.CopyFrom(c.spec)
    for key, value in c.extensions.items():
        msg.extensions[key].CopyFrom(value)
    if with_times:
        set_timestamp(msg.created_at, c.created_at)
        set_timestamp(msg.updated_at, c.updated_at)
    return msg


def _fill(out: pb.Container, cid: str, data: bytes, labels: dict[str, str], created_at: int,
          updated_at: int) -> None:
    """A stored row into a response's message: what to_pb(get(...)) would be."""
    out.MergeFromString(data)
    out.id = cid
    out.labels.clear()
    out.labels.update(labels)
    set_timestamp(out.created_at, created_at)
    set_timestamp(out.updated_at, updated_at)


def _copy(msg: any_pb2.Any) -> any_pb2.Any:
    out = any_pb2.Any()
    out.CopyFrom(msg)
    return out


def validate(c: Container) -> None:
    try:
        identifiers.validate(c.id)
    except InvalidArgument as exc:
        raise InvalidArgument(f"container.ID: {exc.message}") from None
    if any(not key for key in c.extensions):
        raise InvalidArgument("container.Extension keys must not be zero-length: invalid argument")
    try:
        identifiers.validate_labels(c.labels)
    except InvalidArgument as exc:
        raise InvalidArgument(f"containers.Labels: {exc.message}: invalid argument") from None
    if not c.runtime.name:
        raise InvalidArgument("container.Runtime.Name must be set: invalid argument")
    if c.spec is None:
        raise InvalidArgument("container.Spec must be set: invalid argument")
    if c.snapshot_key and not c.snapshotter:
        raise InvalidArgument("container.Snapshotter must be set if container.SnapshotKey is set: "
                              "invalid argument")


def _blob(c: Container) -> bytes:
    body = to_pb(c, with_times=False)
    body.labels.clear()
    return body.SerializeToString(deterministic=True)


class ContainerStore:
    def __init__(self, db: DB, changed=no_hook):
        self.db = db
        self.changed = changed   # (dirty: bool) after a deletion; the metadata plugin's hook
        # (ns, container) after a create, (ns, id) after a delete: the runtime starts
        # shims ahead on these
        self.created = Hook("container created")
        self.deleted = Hook("container deleted")
        # (ns, id) -> (data, labels, created_at, updated_at) as committed: a `ctr run` reads
        # its container ≈ 10 times (a read transaction and two queries each). Forgotten inside
        # every write transaction that changes it; kept only when read while no write was open
        # or begun (DB.quiet_epoch). Each get builds a new Container from it.
        self._rows: dict[tuple[str, str], tuple] = {}
        # ns -> ((id, data, labels, created_at, updated_at), ...): a namespace's whole list,
        # kept and forgotten by the same rule (Containers.List is what clients poll)
        self._lists: dict[str, tuple] = {}

    @staticmethod
    def _row_to_container(conn, ns, row, labels=None) -> Container:
        c = from_pb(pb.Container.FromString(row["data"]))
        c.id = row["id"]
        c.labels = DB.get_labels(conn, ns, KIND, row["id"]) if labels is None \
            else labels.get(row["id"], {})
        c.created_at, c.updated_at = row["created_at"], row["updated_at"]
        return c

    def _row(self, ns: str, cid: str) -> tuple:
        """(data, labels, created_at, updated_at) as committed: from memory, or read (and
        kept while no write was open or began); NotFound as get's."""
        return self.db.read_kept(self._rows, (ns, cid),
                                 lambda conn: self._read_row(conn, ns, cid), ROW_CACHE)

    @staticmethod
    def _read_row(conn, ns: str, cid: str) -> tuple:
        row = conn.execute("SELECT data, created_at, updated_at FROM containers "
                           "WHERE namespace=? AND id=?", (ns, cid)).fetchone()
        if row is None:
            raise NotFound(f"container {q(cid)} in namespace {q(ns)}: not found")
        return (row[0], DB.get_labels(conn, ns, KIND, cid), row[1], row[2])

    def get(self, ns: str, cid: str) -> Container:
        data, labels, created_at, updated_at = self._row(ns, cid)
        c = from_pb(pb.Container.FromString(data))
        c.id, c.labels, c.created_at, c.updated_at = cid, dict(labels), created_at, updated_at
        return c

    def get_into(self, ns: str, cid: str, out: pb.Container) -> None:
        """get's record filled straight into a response's message (no Container between)."""
        _fill(out, cid, *self._row(ns, cid))

    def message(self, ns: str, cid: str) -> pb.Container:
        """The stored message without id, labels and times (spec, runtime, snapshot...):
        what starting a task reads."""
        return pb.Container.FromString(self._row(ns, cid)[0])

    def _list_rows(self, ns: str) -> tuple:
        return self.db.read_kept(self._lists, ns, lambda conn: self._read_list(conn, ns),
                                 LIST_CACHE)

    @staticmethod
    def _read_list(conn, ns: str) -> tuple:
        found = conn.execute("SELECT id, data, created_at, updated_at FROM containers "
                             "WHERE namespace=? ORDER BY id", (ns,)).fetchall()
        labels = DB.all_labels(conn, ns, KIND) if found else {}  # one query for all
        return tuple((r[0], r[1], labels.get(r[0], {}), r[2], r[3]) for r in found)

    def list(self, ns: str) -> list[Container]:
        out = []
        for cid, data, labels, created_at, updated_at in self._list_rows(ns):
            c = from_pb(pb.Container.FromString(data))
            c.id, c.labels, c.created_at, c.updated_at = cid, dict(labels), created_at, updated_at
            out.append(c)
        return out

    def list_into(self, ns: str, out) -> None:
        """list's records added straight to a response's repeated field."""
        for row in self._list_rows(ns):
            _fill(out.add(), *row)

    def create(self, ns: str, c: Container) -> Container:
        try:
            validate(c)
        except InvalidArgument as exc:
            raise InvalidArgument(f"create container failed validation: {exc.message}") from None
        with self.db.write() as tx:
            if tx.execute("SELECT 1 FROM containers WHERE namespace=? AND id=?",
                          (ns, c.id)).fetchone():
                raise AlreadyExists(f"container {q(c.id)}: already exists")
            ts = now_ns()
            self._rows.pop((ns, c.id), None)
            self._lists.pop(ns, None)
            tx.execute("INSERT INTO containers VALUES (?,?,?,?,?,?,?,?,?)",
                       (ns, c.id, c.image, c.runtime.name, c.snapshotter, c.snapshot_key,
                        _blob(c), ts, ts))
            DB.set_labels(tx, ns, KIND, c.id, c.labels)
            c.created_at = c.updated_at = ts
        self.created(ns, c)
        return c

    def update(self, ns: str, c: Container, paths: list[str]) -> Container:
        if not c.id:
            raise InvalidArgument("must specify a container id: invalid argument")
        with self.db.write() as tx:
            row = tx.execute("SELECT * FROM containers WHERE namespace=? AND id=?",
                             (ns, c.id)).fetchone()
            if row is None:
                raise NotFound(f"container {q(c.id)}: not found")
            updated = self._row_to_container(tx, ns, row)
            if not paths:
                paths = list(DEFAULT_UPDATE_PATHS)
                if updated.snapshotter != c.snapshotter:
                    raise InvalidArgument("container.Snapshotter field is immutable: "
                                          "invalid argument")
                if updated.runtime.name != c.runtime.name:
                    raise InvalidArgument("container.Runtime.Name field is immutable: "
                                          "invalid argument")

            def copy(name):
                return lambda: setattr(updated, name, getattr(c, name))
            apply_mask(paths, q(c.id),
                       maps={"labels": (updated.labels, c.labels, False),
                             "extensions": (updated.extensions, c.extensions, True)},
                       fields={"spec": copy("spec"), "image": copy("image"),
                               "snapshotkey": copy("snapshot_key")})
            try:
                validate(updated)
            except InvalidArgument as exc:
                raise InvalidArgument(f"update failed validation: {exc.message}") from None
            ts = now_ns()
            self._rows.pop((ns, c.id), None)
            self._lists.pop(ns, None)
            tx.execute("UPDATE containers SET image=?, snapshot_key=?, data=?, updated_at=? "
                       "WHERE namespace=? AND id=?",
                       (updated.image, updated.snapshot_key, _blob(updated), ts, ns, c.id))
            DB.set_labels(tx, ns, KIND, c.id, updated.labels)
            updated.updated_at = ts
            return updated

    def delete(self, ns: str, cid: str) -> None:
        with self.db.write() as tx:
            self._rows.pop((ns, cid), None)
            self._lists.pop(ns, None)
            cur = tx.execute("DELETE FROM containers WHERE namespace=? AND id=?", (ns, cid))
            if cur.rowcount == 0:
                raise NotFound(f"container {cid}: not found")
            DB.set_labels(tx, ns, KIND, cid, {})
        self.deleted(ns, cid)
        self.changed(True)   # its snapshot may be garbage now

    def require(self, ns: str, cid: str) -> None:
        """NotFound, in get's words, unless the container exists (nothing decoded: the
        tasks service checks this before every task call, as containerd); a container
        kept in memory exists."""
        if (ns, cid) in self._rows:
            return
        with self.db.read() as conn:
            if conn.execute("SELECT 1 FROM containers WHERE namespace=? AND id=?",
                            (ns, cid)).fetchone() is None:
                raise NotFound(f"container {q(cid)} in namespace {q(ns)}: not found")
