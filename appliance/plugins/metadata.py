"""io.containerd.metadata.v1.bolt: the sqlite metadata store (named as containerd's)."""
from __future__ import annotations

import os

from ..core.metadata.db import DB
from ..core.metadata.content import ContentStore
from ..core.metadata.namespaces import NamespaceStore
from ..plugin import CONTENT, METADATA, SNAPSHOT, InitContext, Registration


class Metadata:
    """The database and the per-kind stores on top of it."""

    def __init__(self, db: DB, blobs=None):
        self.db = db
        self.namespaces = NamespaceStore(db)
        # namespaced content (containerd's DB.ContentStore()); None without a content plugin
        self.content = ContentStore(db, blobs) if blobs is not None else None

    def close(self):
        self.db.close()


def _init(ic: InitContext) -> Metadata:
    os.makedirs(ic.root, mode=0o711, exist_ok=True)
    path = os.path.join(ic.root, "meta.db")
    timeout = ic.server_config.timeout("io.containerd.timeout.bolt.open")
    ic.exports.update(path=path, policy="shared")
    try:
        blobs = ic.get(CONTENT)
    except Exception:  # the content plugin is disabled
        blobs = None
    return Metadata(DB(path, lock_timeout=timeout), blobs)


REGISTRATIONS = [
    Registration(METADATA, "bolt", _init, requires=(CONTENT, SNAPSHOT),
                 essential=True),
]
