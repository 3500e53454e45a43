"""The OCI bundle a shim runs from: state/<ns>/<id> with config.json, rootfs/ and `work`."""
from __future__ import annotations

import json
import logging
import os
import shutil

from ... import identifiers
from ...errdefs import ApplianceError, InvalidArgument
from ...process.trash import Trash

log = logging.getLogger("appliance.runtime")


class Bundle:
    def __init__(self, state: str, root: str, namespace: str, task_id: str, trash: Trash):
        self.trash = trash   # where its directories go when it is deleted
        self.namespace = namespace
        self.id = task_id
        self.path = os.path.join(state, namespace, task_id)
        self.work = os.path.join(root, namespace, task_id)  # the shim's work dir, kept in root
        # linux.cgroupsPath of config.json, noted at create (None: read the file)
        self.cgroups_path: str | None = None
        self.group = ""   # the runc shim's grouping annotation of config.json, noted at create

    @property
    def rootfs(self) -> str:
        return os.path.join(self.path, "rootfs")

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def create(self, spec: bytes) -> None:
        try:
            identifiers.validate(self.id)
        except InvalidArgument as exc:
            raise InvalidArgument(f"invalid task id {self.id}: {exc.message}") from None
        os.makedirs(os.path.dirname(self.path), mode=0o711, exist_ok=True)
        os.mkdir(self.path, 0o700)
        try:
            doc = parse_spec(spec)
            gid = remapped_gid(doc)
            if gid:  # runc, as the user namespace's root, must reach the rootfs (as containerd)
                os.chown(self.path, -1, gid)
                os.chmod(self.path, 0o710)
            os.mkdir(self.rootfs, 0o711)
            os.makedirs(os.path.dirname(self.work), mode=0o711, exist_ok=True)
            shutil.rmtree(self.work, ignore_errors=True)  # a leftover of a crash
            os.mkdir(self.work, 0o711)
            os.symlink(self.work, self.file("work"))
            with open(self.file("config.json"), "wb") as f:
                f.write(spec)
            self.cgroups_path = cgroups_path(doc)
            self.group = group_of(doc)
        except BaseException:
            self.delete()
            raise

    def unmount_rootfs(self) -> None:
        from ...mount import unmount_all_under
        if os.path.isdir(self.rootfs) and _has_mounts_under(self.rootfs):
            unmount_all_under(self.rootfs)

    def delete(self) -> None:
        """Unmount the rootfs, then remove bundle and work dir (renamed first, as containerd)."""
        self.remove_rootfs()
        self.discard()

    def remove_rootfs(self) -> None:
        self.unmount_rootfs()
        try:
            os.rmdir(self.rootfs)
        except FileNotFoundError:
            pass
        except OSError as exc:  # still mounted or not empty: keep the data, report it
            raise OSError(f"failed to remove bundle rootfs {self.rootfs}: {exc}") from exc

    def discard(self) -> None:
        for path in (self.path, self.work):
            self.trash.discard(path)   # renamed at once, removed off the request path


def cgroups_path(doc) -> str:
    """linux.cgroupsPath of a parsed spec ("" when there is none)."""
    linux = (doc.get("linux") if isinstance(doc, dict) else None) or {}
    return (linux.get("cgroupsPath") if isinstance(linux, dict) else "") or ""


GROUP_ANNOTATIONS = ("io.containerd.runc.v2.group", "io.kubernetes.cri.sandbox-id")


def group_of(doc) -> str:
    """The task group the runc v2 shim serves a spec's task in (its first grouping annotation,
    as the shim's `start` reads them); "" for none."""
    annotations = (doc.get("annotations") if isinstance(doc, dict) else None) or {}
    if not isinstance(annotations, dict):
        return ""
    for key in GROUP_ANNOTATIONS:
        if key in annotations:
            return str(annotations[key])
    return ""


def parse_spec(spec: bytes):
    try:
        return json.loads(spec)
    except ValueError as exc:
        raise ApplianceError(f"invalid spec: {exc}") from None


def remapped_gid(spec) -> int:
    """The host gid that the spec (bytes, or as parsed) maps the container's gid 0 to; 0
    without a mapping."""
    doc = parse_spec(spec) if isinstance(spec, (bytes, str)) else spec
    linux = (doc.get("linux") if isinstance(doc, dict) else None) or {}
    mappings = (linux.get("gidMappings") if isinstance(linux, dict) else None) or []
    if not isinstance(linux, dict) or not isinstance(mappings, list) \
            or not all(isinstance(m, dict) for m in mappings):
        raise ApplianceError("invalid spec: linux.gidMappings is not a list of mappings")
    for mapping in mappings:
        if mapping.get("containerID", 0) == 0:
            gid = mapping.get("hostID", 0)
            if type(gid) is not int or not 0 <= gid < 1 << 32:
                raise ApplianceError(f"invalid spec: gidMappings hostID {gid!r} is not a uint32")
            return gid
    return 0


def _has_mounts_under(path: str) -> bool:
    prefix = os.path.realpath(path).encode() + b"/"
    with open("/proc/self/mountinfo", "rb") as f:
        return any((line.split()[4] + b"/").startswith(prefix) for line in f)


def list_bundles(state: str, root: str, trash: Trash) -> list[Bundle]:
    """Every bundle left in state (skipping hidden half-deleted ones)."""
    found = []
    try:
        namespaces = sorted(os.listdir(state))
    except FileNotFoundError:
        return found
    for ns in namespaces:
        ns_dir = os.path.join(state, ns)
        if ns.startswith(".") or not os.path.isdir(ns_dir):
            continue
        for task_id in sorted(os.listdir(ns_dir)):
            if task_id.startswith("."):
                shutil.rmtree(os.path.join(ns_dir, task_id), ignore_errors=True)
                continue
            if os.path.isdir(os.path.join(ns_dir, task_id)):
                found.append(Bundle(state, root, ns, task_id, trash))
    return found
