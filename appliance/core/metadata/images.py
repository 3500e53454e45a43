"""Images: a name pointing at a target descriptor (the root of what GC keeps)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from ... import filters, identifiers
from ...errdefs import q, AlreadyExists, InvalidArgument, NotFound
from ..content.store import digest_error
from .db import DB, apply_mask, now_ns
from .hook import no_hook

KIND = "image"
ROW_CACHE = 4096   # images whose record is kept in memory (all dropped when full)


@dataclass
class Descriptor:
    media_type: str = ""
    digest: str = ""
    size: int = 0
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass
class Image:
    name: str
    target: Descriptor = field(default_factory=Descriptor)
    labels: dict[str, str] = field(default_factory=dict)
    created_at: int = 0
    updated_at: int = 0


def validate(image: Image) -> None:
    if not image.name:
        raise InvalidArgument("image name must not be empty: invalid argument")
    try:
        identifiers.validate_labels(image.labels)
    except InvalidArgument as exc:
        raise InvalidArgument(f"image.Labels: {exc.message}") from None
    target = image.target
    problem = digest_error(target.digest)
    if problem:
        raise InvalidArgument(f"Target.Digest {q(target.digest)} invalid: {problem}: "
                              "invalid argument")
    if target.size <= 0:
        raise InvalidArgument("Target.Size must be greater than zero: invalid argument")
    if not target.media_type:
        raise InvalidArgument("Target.MediaType must be set: invalid argument")


def adaptor(image: Image):
    return filters.adapt_object(
        {"name": image.name, "labels": image.labels, "annotations": image.target.annotations,
         "target": {"digest": image.target.digest, "mediatype": image.target.media_type}},
        labels_key=("labels", "annotations"))


class ImageStore:
    def __init__(self, db: DB, changed=no_hook):
        self.db = db
        self.changed = changed   # (dirty: bool) after a change; the metadata plugin's hook
        # (ns, name) -> Image as committed (`ctr run` reads its image once, kubelet polls
        # ImageStatus): forgotten inside every write transaction that changes it, kept only
        # when read while no write was open or began (DB.quiet_epoch), as containers' rows.
        # get hands out copies.
        self._kept: dict[tuple[str, str], Image] = {}

    def get(self, ns: str, name: str) -> Image:
        image = self.db.read_kept(self._kept, (ns, name),
                                  lambda conn: self._get(conn, ns, name), ROW_CACHE)
        t = image.target
        return Image(image.name, Descriptor(t.media_type, t.digest, t.size,
                                            dict(t.annotations)),
                     dict(image.labels), image.created_at, image.updated_at)

    @staticmethod
    def _row_to_image(conn, ns, row) -> Image:
        return Image(row["name"], Descriptor(row["media_type"], row["digest"], row["size"],
                                             json.loads(row["annotations"])),
                     DB.get_labels(conn, ns, KIND, row["name"]), row["created_at"],
                     row["updated_at"])

    def _get(self, conn, ns, name) -> Image:
        row = conn.execute("SELECT * FROM images WHERE namespace=? AND name=?",
                           (ns, name)).fetchone()
        if row is None:
            raise NotFound(f"image {q(name)}: not found")
        return self._row_to_image(conn, ns, row)

    def list(self, ns: str, filter_strings=()) -> list[Image]:
        flt = filters.parse(*filter_strings)
        with self.db.read() as conn:
            rows = conn.execute("SELECT * FROM images WHERE namespace=? ORDER BY name",
                                (ns,)).fetchall()
            images = [self._row_to_image(conn, ns, row) for row in rows]
        return [image for image in images if flt.match(adaptor(image))]

    def create(self, ns: str, image: Image) -> Image:
        validate(image)
        with self.db.write() as tx:
            if tx.execute("SELECT 1 FROM images WHERE namespace=? AND name=?",
                          (ns, image.name)).fetchone():
                raise AlreadyExists(f"image {q(image.name)}: already exists")
            ts = now_ns()
            image.created_at = image.updated_at = ts
            self._write(tx, ns, image, insert=True)
        self.changed(False)
        return image

    def update(self, ns: str, image: Image, paths) -> Image:
        if not image.name:
            raise InvalidArgument("image name is required for update: invalid argument")
        with self.db.write() as tx:
            current = self._get(tx, ns, image.name)
            if not paths:
                updated = image
            else:
                updated = current

                def set_target():
                    updated.target = image.target
                apply_mask(paths, f"image {q(image.name)}",
                           maps={"labels": (updated.labels, image.labels, False),
                                 "annotations": (updated.target.annotations,
                                                 image.target.annotations, False)},
                           fields={"target": set_target})
            # an emptied label is removed (containerd stores none with an empty value)
            updated.labels = {k: v for k, v in updated.labels.items() if v}
            validate(updated)
            updated.created_at = current.created_at
            updated.updated_at = now_ns()
            self._write(tx, ns, updated, insert=False)
        self.changed(False)
        return updated

    def _write(self, tx, ns, image: Image, insert: bool) -> None:
        self._kept.pop((ns, image.name), None)
        t = image.target
        values = (t.media_type, t.digest, t.size, json.dumps(t.annotations, sort_keys=True),
                  image.updated_at)
        if insert:
            tx.execute("INSERT INTO images (media_type, digest, size, annotations, updated_at, "
                       "namespace, name, created_at) VALUES (?,?,?,?,?,?,?,?)",
                       values + (ns, image.name, image.created_at))
        else:
            tx.execute("UPDATE images SET media_type=?, digest=?, size=?, annotations=?, "
                       "updated_at=? WHERE namespace=? AND name=?", values + (ns, image.name))
        DB.set_labels(tx, ns, KIND, image.name, image.labels)

    def delete(self, ns: str, name: str) -> None:
        with self.db.write() as tx:
            self._kept.pop((ns, name), None)
            if not tx.execute("DELETE FROM images WHERE namespace=? AND name=?",
                              (ns, name)).rowcount:
                raise NotFound(f"image {q(name)}: not found")
            DB.set_labels(tx, ns, KIND, name, {})
        self.changed(True)
