"""The pure half of layer apply: tar headers in, operations out, every path checked.

No I/O happens here. What the planner needs to know about the tree it writes
into comes through `lookup(parts) -> (kind, link_target)` with kind one of
"dir", "symlink", "other" or None (absent), so tests can drive it with a dict.

Semantics follow containerd 1.6's `archive.Apply`: names are cleaned, and an
absolute name or one climbing above the root with ".." stays inside it (as if the
root were "/"); the directory part of a name is resolved through existing symlinks
*inside* the root (an absolute link target restarts at the root, ".." stops there,
as in a container); the last component is never followed. So every resolved path
is below the root. Device nodes are created as containerd does (skipped where it
skips them: in a user namespace). What containerd refuses is refused: unknown
entry types, whiteouts naming "." or "..", a hardlink to the root, link loops.
"""
from __future__ import annotations

from dataclasses import dataclass

from .tarstream import BLK, CHR, DIR, FIFO, LINK, REG, AREG, SYMLINK, CONT, Header

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
MAX_LINKS = 255


class HostileEntry(Exception):
    """The layer carries an entry containerd refuses too."""


@dataclass(frozen=True)
class Create:
    hdr: Header
    parent: tuple[str, ...]           # resolved directory, relative to the root
    name: str
    link_parent: tuple[str, ...] = ()  # hardlinks: the resolved target
    link_name: str = ""


@dataclass(frozen=True)
class Whiteout:
    parent: tuple[str, ...]
    name: str                          # the name to delete
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class Opaque:
    dir: tuple[str, ...]


@dataclass(frozen=True)
class Skip:
    reason: str


def clean(name: str) -> tuple[str, ...]:
    """A tar name as path components below the root: a leading "/" and any ".." that
    would climb above the root are dropped (Go's filepath.Clean of "/" + name)."""
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
        else:
            parts.append(part)
    return tuple(parts)


def resolve(parts, lookup, what="") -> tuple[str, ...]:
    """Follow symlinks in `parts` inside the root (chroot semantics, containerd's RootPath):
    an absolute target restarts at the root, ".." stops at the root. `what` names the
    entry in errors (or makes that name: it is only needed then)."""
    resolved: list[str] = []
    queue = list(parts)
    links = 0
    while queue:
        part = queue.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = (*resolved, part)
        kind, target = lookup(candidate)
        if kind != "symlink":
            resolved.append(part)
            continue
        links += 1
        if links > MAX_LINKS:
            raise HostileEntry(f"{what() if callable(what) else what}: too many levels of "
                               "symbolic links")
        if target.startswith("/"):
            resolved = []
        queue[:0] = target.split("/")
    return tuple(resolved)


def plan(hdr: Header, lookup, devices: bool = True):
    """The operation for one entry (raises HostileEntry). devices=False: device nodes
    are skipped (in a user namespace, where they cannot be created)."""
    def what() -> str:
        return f"entry {hdr.name!r}"
    if hdr.type in (CHR, BLK) and not devices:
        return Skip("device nodes cannot be created in a user namespace")
    parts = clean(hdr.name)
    if not parts:
        return Skip("resolves to the root")
    base = parts[-1]
    parent = resolve(parts[:-1], lookup, what=what)
    if base.startswith(WHITEOUT):
        if base == OPAQUE:
            return Opaque(parent)
        original = base[len(WHITEOUT):]
        if original in ("", ".", ".."):
            raise HostileEntry(f"{what()}: invalid whiteout name: {base}")
        return Whiteout(parent, original, hdr.uid, hdr.gid)
    if hdr.type == CONT or hdr.type not in (REG, AREG, LINK, SYMLINK, CHR, BLK, DIR, FIFO):
        raise HostileEntry(f"{what()}: unsupported tar entry type {hdr.type!r}")
    if hdr.type == LINK:   # as the name's: the directory part resolved, the last part kept
        head, _, link_name = hdr.linkname.rpartition("/")
        if link_name in ("", ".", ".."):
            raise HostileEntry(f"{what()}: hardlink target {hdr.linkname!r} is a directory")
        link_parent = resolve(head.split("/"), lookup, what=f"hardlink target {hdr.linkname!r}")
        return Create(hdr, parent, base, link_parent, link_name)
    return Create(hdr, parent, base)
