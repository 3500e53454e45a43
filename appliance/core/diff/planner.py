"""The pure half of layer apply: tar headers in, operations out, every path checked.

No I/O happens here. What the planner needs to know about the tree it writes
into comes through `lookup(parts) -> (kind, link_target)` with kind one of
"dir", "symlink", "other" or None (absent), so tests can drive it with a dict.

Semantics follow containerd 1.6's `archive.Apply`: names are cleaned; the
directory part of a name is resolved through existing symlinks *inside* the
root (an absolute link target restarts at the root, as in a container); the
last component is never followed. Stricter than containerd, a hostile entry is
an error instead of being clamped to the root: an absolute name, a name or
hardlink target climbing out with "..", a symlink on the way whose target
climbs above the root, and device nodes other than the harmless character ones.
"""
from __future__ import annotations

from dataclasses import dataclass

from .tarstream import BLK, CHR, DIR, FIFO, LINK, REG, AREG, SYMLINK, CONT, Header

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
MAX_LINKS = 255
# character devices a layer may carry: the overlay whiteout form and the /dev basics
SAFE_CHAR_DEVICES = {(0, 0), (1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 1), (5, 2)}


class HostileEntry(Exception):
    """The layer tries to write outside its root or carries something refused."""


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


def clean(name: str, what: str = "entry") -> tuple[str, ...]:
    """A tar name as path components; hostile if absolute or climbing above the root."""
    if name.startswith("/"):
        raise HostileEntry(f"{what} {name!r}: absolute paths are not allowed in a layer")
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise HostileEntry(f"{what} {name!r}: path climbs out of the layer root")
            parts.pop()
        else:
            parts.append(part)
    return tuple(parts)


def resolve(parts, lookup, strict: bool = True, what: str = "") -> tuple[str, ...]:
    """Follow symlinks in `parts` inside the root (chroot semantics).

    strict: a symlink whose target climbs above the root is hostile; otherwise
    ".." stops at the root (containerd's RootPath, used for lower layers).
    """
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
            elif strict and links:
                raise HostileEntry(f"{what}: a symlink on its path points outside the layer root")
            continue
        candidate = (*resolved, part)
        kind, target = lookup(candidate)
        if kind != "symlink":
            resolved.append(part)
            continue
        links += 1
        if links > MAX_LINKS:
            raise HostileEntry(f"{what}: too many levels of symbolic links")
        if target.startswith("/"):
            resolved = []
        queue[:0] = target.split("/")
    return tuple(resolved)


def plan(hdr: Header, lookup):
    """The operation for one entry (raises HostileEntry)."""
    what = f"entry {hdr.name!r}"
    parts = clean(hdr.name)
    if not parts:
        return Skip("resolves to the root")
    if hdr.type == CONT or hdr.type not in (REG, AREG, LINK, SYMLINK, CHR, BLK, DIR, FIFO):
        raise HostileEntry(f"{what}: unsupported tar entry type {hdr.type!r}")
    base = parts[-1]
    parent = resolve(parts[:-1], lookup, what=what)
    if base.startswith(WHITEOUT):
        if base == OPAQUE:
            return Opaque(parent)
        original = base[len(WHITEOUT):]
        if original in ("", ".", ".."):
            raise HostileEntry(f"{what}: invalid whiteout name: {base}")
        return Whiteout(parent, original, hdr.uid, hdr.gid)
    if hdr.type == BLK:
        raise HostileEntry(f"{what}: block device nodes are refused in layers")
    if hdr.type == CHR and (hdr.devmajor, hdr.devminor) not in SAFE_CHAR_DEVICES:
        raise HostileEntry(f"{what}: character device {hdr.devmajor}:{hdr.devminor} "
                           "is refused in layers")
    if hdr.type == LINK:
        target = clean(hdr.linkname, "hardlink target")
        if not target:
            raise HostileEntry(f"{what}: hardlink to the layer root")
        link_parent = resolve(target[:-1], lookup, what=f"hardlink target {hdr.linkname!r}")
        return Create(hdr, parent, base, link_parent, target[-1])
    return Create(hdr, parent, base)
