"""io.containerd.metadata.v1.bolt: the sqlite metadata store (named as containerd's)."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from ..core.metadata.db import DB
from ..core.metadata.content import ContentStore
from ..core.metadata.namespaces import NamespaceStore
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

    def __init__(self, db: DB, blobs=None, shared: bool = True):
        self.db = db
        self.namespaces = NamespaceStore(db)
        # namespaced content (containerd's DB.ContentStore()); None without a content plugin
        self.content = ContentStore(db, blobs, shared) if blobs is not None else None

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
    return Metadata(DB(path, lock_timeout=timeout), blobs, shared=policy == "shared")


REGISTRATIONS = [
    Registration(METADATA, "bolt", _init, requires=(CONTENT, SNAPSHOT), essential=True,
                 config=BoltConfig),
]
