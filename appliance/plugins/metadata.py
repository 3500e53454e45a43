"""io.containerd.metadata.v1.bolt: the sqlite metadata store (named as containerd's).

The spine of the daemon, as containerd's metadata DB: it builds every store once, on one
database, and owns the hook they call after a change (`changed(dirty)`: the GC scheduler
subscribes), the GC's reference sources and the namespaced snapshotters. Other plugins
take what they need from `ic.get(METADATA)` at their init.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from ..core import gc
from ..core.metadata.containers import ContainerStore
from ..core.metadata.content import ContentStore
from ..core.metadata.db import DB
from ..core.metadata.hook import Hook
from ..core.metadata.images import ImageStore
from ..core.metadata.leases import LeaseStore
from ..core.metadata.namespaces import NamespaceStore
from ..core.snapshots.store import Snapshotter, gc_graph
from ..errdefs import InvalidArgument
from ..plugin import CONTENT, METADATA, SNAPSHOT, InitContext, Registration

log = logging.getLogger("appliance.metadata")
SHARING_POLICIES = ("shared", "isolated")


@dataclass
class BoltConfig:
    # "shared": a blob in any namespace may be committed in another by its digest alone;
    # "isolated": the other namespace must upload every byte (unless a namespace that has
    # it is labelled containerd.io/namespace.shareable=true, as in containerd 1.7)
    content_sharing_policy: str = "shared"


class Metadata:
    """The database and the per-kind stores on top of it."""

    def __init__(self, db: DB, blobs=None, shared: bool = True, backends=None):
        self.db = db
        self.changed = Hook("metadata changed")   # (dirty: bool); dirty: something deleted
        self.namespaces = NamespaceStore(db)
        # namespaced content (containerd's DB.ContentStore()); None without a content plugin
        self.content = (ContentStore(db, blobs, shared, self.changed)
                        if blobs is not None else None)
        self.images = ImageStore(db, self.changed)
        self.leases = LeaseStore(db)
        self.containers = ContainerStore(db, self.changed)
        # snapshotter name -> its namespaced store over the backend the snapshot plugin made
        self.snapshotters = {name: Snapshotter(db, backend, self.changed)
                             for name, backend in (backends or {}).items()}
        self.gc_sources = [*gc.BUILTIN_SOURCES, gc_graph]   # what the GC marks from

    def close(self):
        self.db.close()


def _init(ic: InitContext) -> Metadata:
    os.makedirs(ic.root, mode=0o711, exist_ok=True)
    path = os.path.join(ic.root, "meta.db")
    timeout = ic.server_config.timeout("io.containerd.timeout.bolt.open")
    policy = ic.config.content_sharing_policy
    if policy:
        if policy not in SHARING_POLICIES:
            raise InvalidArgument(f"unknown policy: {policy}: invalid argument")
        log.info("metadata content store policy set: policy=%s", policy)
    policy = policy or "shared"
    ic.exports.update(path=path, policy=policy)
    try:
        blobs = ic.get(CONTENT)
    except Exception:  # the content plugin is disabled
        blobs = None
    return Metadata(DB(path, lock_timeout=timeout), blobs, shared=policy == "shared",
                    backends=ic.get_all(SNAPSHOT))


REGISTRATIONS = [
    Registration(METADATA, "bolt", _init, requires=(CONTENT, SNAPSHOT), essential=True,
                 config=BoltConfig),
]
