"""The on-disk side of the snapshotters: one directory per snapshot id, no namespaces.

Layout under each snapshotter's root, as containerd's::

    snapshots/<id>/fs      the snapshot's files (overlay: the upper dir)
    snapshots/<id>/work    overlay's work dir (active snapshots only)
    snapshots/new-*        a directory being created (renamed into place when ready)

The metadata (keys, parents, kinds, labels) lives in the shared database
(`store.SnapshotStore`); a backend only turns ids into directories and mounts.
"""
from __future__ import annotations

import fcntl
import os
import struct
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field

from ...process import fdlimit
from ...process.trash import Trash, remove_tree

ACTIVE, VIEW, COMMITTED = "active", "view", "committed"


@dataclass
class Mount:
    type: str
    source: str
    options: list[str] = field(default_factory=list)
    target: str = ""


def disk_usage(path: str) -> tuple[int, int]:
    """(bytes in allocated blocks, inodes) below `path`, each inode counted once."""
    seen = set()
    size = 0
    stack = [path]
    while stack:
        current = stack.pop()
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            continue
        key = (st.st_dev, st.st_ino)
        if key not in seen:
            seen.add(key)
            size += st.st_blocks * 512
        if os.path.isdir(current) and not os.path.islink(current):
            with os.scandir(current) as it:
                stack.extend(e.path for e in it)
    return size, len(seen)


_FS_IOC_GETFLAGS, _FS_IOC_SETFLAGS = 0x80086601, 0x40086602
FS_TOPDIR_FL = 0x00020000


def _get_flags(fd: int) -> int:
    return struct.unpack("l", fcntl.ioctl(fd, _FS_IOC_GETFLAGS, bytes(8)))[0]


def inode_flags(path: str) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return _get_flags(fd)
    finally:
        os.close(fd)


def spread_subdirectories(path: str) -> bool:
    """Mark `path` as a top of directory hierarchies (`chattr +T`), where the filesystem knows it.

    ext4's allocator then places each snapshot directory (and so its files) in a block
    group of its own instead of next to the previous snapshot. That matters after an image
    is removed: new inodes would otherwise land in the groups just freed, and ext4 skips
    recently deleted inodes one by one (quadratic on a journal-less ext4: a big unpack
    took 2-7 s instead of 0.8 s right after `ctr images rm` of the same image).
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        flags = _get_flags(fd)
        if not flags & FS_TOPDIR_FL:
            fcntl.ioctl(fd, _FS_IOC_SETFLAGS, struct.pack("l", flags | FS_TOPDIR_FL))
        return True
    except OSError:   # tmpfs, overlay, xfs …: no such flag, nothing to gain
        return False
    finally:
        os.close(fd)


class Backend:
    """Directories and mounts by snapshot id; subclasses decide the mount shape."""
    name = ""
    mounts_error = "failed to get active mount"   # Mounts of a committed snapshot
    cleaner = True   # containerd's snapshotter implements Cleanup (native's does not)
    # create and remove are a few local syscalls (no copy, no remote call): the gRPC adapter
    # runs them on the event loop, where a thread's hop would cost more than the work
    quick = False

    def __init__(self, root: str, trash: Trash | None = None):
        self.root = root
        self.trash = trash or Trash()   # removed snapshots' directories go there
        self.snapshots = os.path.join(root, "snapshots")
        os.makedirs(self.snapshots, mode=0o700, exist_ok=True)
        spread_subdirectories(self.snapshots)

    def dir(self, sid: int) -> str:
        return os.path.join(self.snapshots, str(sid))

    def fs(self, sid: int) -> str:
        return os.path.join(self.dir(sid), "fs")

    def create(self, sid: int, kind: str, parent_ids: list[int]) -> None:
        """Make snapshots/<sid> ready; a crash leaves only a new-* directory behind."""
        tmp = tempfile.mkdtemp(prefix="new-", dir=self.snapshots)
        try:
            self._populate(tmp, kind, parent_ids)
            os.rename(tmp, self.dir(sid))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _populate(self, tmp: str, kind: str, parent_ids: list[int]) -> None:
        raise NotImplementedError

    def remove(self, sid: int) -> None:
        self.trash.discard(self.dir(sid))   # the rmtree runs off the request path

    def usage(self, sid: int) -> tuple[int, int]:
        return disk_usage(self.fs(sid))

    def cleanup(self, known: set[int]) -> list[str]:
        """Remove directories no snapshot record owns (crash leftovers, removed snapshots)."""
        removed = []
        for name in os.listdir(self.snapshots):
            if name.isdigit() and int(name) in known:
                continue
            path = os.path.join(self.snapshots, name)
            remove_tree(path)
            removed.append(path)
        return removed

    def mounts(self, sid: int, kind: str, parent_ids: list[int]) -> list[Mount]:
        raise NotImplementedError

    def apply_target(self, mounts: list[Mount]):
        """(directory, lower dirs, overlay?) when `mounts` are this backend's own, else None."""
        return None

    def labels(self, sid: int) -> dict[str, str]:
        """Labels the backend adds to a snapshot's info (under the namespace's own)."""
        return {}

    def owns(self, path: str) -> int | None:
        """The snapshot id whose fs directory is `path`, if it is one of ours."""
        parent, leaf = os.path.split(os.path.normpath(path))
        sid_dir, sid = os.path.split(parent)
        if leaf == "fs" and sid_dir == self.snapshots and sid.isdigit():
            return int(sid)
        return None


UPPERDIR_LABEL = "containerd.io/snapshot/overlay.upperdir"   # overlayfs' upperdir_label


class OverlayBackend(Backend):
    """overlayfs: each snapshot's fs is an upper dir; parents are the lower dirs."""
    name = "overlayfs"
    quick = True   # mkdirs to create, a rename (to the trash) to remove

    def __init__(self, root: str, upperdir_label: bool = False, trash: Trash | None = None):
        super().__init__(root, trash)
        self.upperdir_label = upperdir_label
        # containerd adds index=off whenever the kernel knows the option
        self.index_off = os.path.exists("/sys/module/overlay/parameters/index")
        self.userxattr = needs_userxattr()

    def labels(self, sid):
        return {UPPERDIR_LABEL: self.fs(sid)} if self.upperdir_label else {}

    def _populate(self, tmp, kind, parent_ids):
        os.mkdir(os.path.join(tmp, "fs"), 0o755)
        os.chmod(os.path.join(tmp, "fs"), 0o755)
        if kind == ACTIVE:
            os.mkdir(os.path.join(tmp, "work"), 0o711)
        if parent_ids:  # the new upper dir takes the owner of the parent's root
            st = os.stat(self.fs(parent_ids[0]))
            os.lchown(os.path.join(tmp, "fs"), st.st_uid, st.st_gid)

    def mounts(self, sid, kind, parent_ids):
        if not parent_ids:
            return [Mount("bind", self.fs(sid), ["ro" if kind == VIEW else "rw", "rbind"])]
        options = []
        if self.index_off:
            options.append("index=off")
        if self.userxattr:
            options.append("userxattr")
        if kind == ACTIVE:
            options += [f"workdir={os.path.join(self.dir(sid), 'work')}",
                        f"upperdir={self.fs(sid)}"]
        elif len(parent_ids) == 1:
            return [Mount("bind", self.fs(parent_ids[0]), ["ro", "rbind"])]
        options.append("lowerdir=" + ":".join(self.fs(p) for p in parent_ids))
        return [Mount("overlay", "overlay", options)]

    def apply_target(self, mounts):
        if len(mounts) != 1:
            return None
        m = mounts[0]
        if m.type == "overlay":
            upper, lowers = overlay_dirs(m.options)
            if upper and self.owns(upper) is not None:
                return upper, lowers, True
        elif m.type == "bind" and "ro" not in m.options and self.owns(m.source) is not None:
            return m.source, [], False
        return None


class NativeBackend(Backend):
    """native: every active snapshot is a full copy of its parent."""
    name = "native"
    mounts_error = "failed to get snapshot mount"
    cleaner = False

    def _populate(self, tmp, kind, parent_ids):
        fs = os.path.join(tmp, "fs")
        if kind == ACTIVE and parent_ids:
            copy_tree(self.fs(parent_ids[0]), fs)
        else:
            os.mkdir(fs, 0o755)
            os.chmod(fs, 0o755)

    def mounts(self, sid, kind, parent_ids):
        flag = "ro" if kind == VIEW else "rw"
        source = self.fs(sid) if kind == ACTIVE or not parent_ids else self.fs(parent_ids[0])
        return [Mount("bind", source, ["rbind", flag])]   # containerd's order, unlike overlay's

    def apply_target(self, mounts):
        if len(mounts) == 1 and mounts[0].type == "bind" and "ro" not in mounts[0].options \
                and self.owns(mounts[0].source) is not None:
            return mounts[0].source, [], False
        return None


def copy_tree(src: str, dst: str) -> None:
    """A faithful copy (owners, modes, times, xattrs, hardlinks, devices): GNU cp -a."""
    result = subprocess.run(fdlimit.child_argv(["cp", "-a", "--reflink=auto", "--", src, dst]),
                            capture_output=True, text=True, timeout=3600,
                            preexec_fn=fdlimit.child_preexec())
    if result.returncode != 0:
        raise OSError(f"copy {src} to {dst}: {result.stderr.strip()}")


def overlay_dirs(options: list[str]) -> tuple[str, list[str]]:
    """(upperdir, lowerdirs) from overlay mount options."""
    upper, lowers = "", []
    for opt in options:
        if opt.startswith("upperdir="):
            upper = opt[len("upperdir="):]
        elif opt.startswith("lowerdir="):
            lowers = opt[len("lowerdir="):].split(":")
    return upper, lowers


def needs_userxattr() -> bool:
    """overlayfs needs `userxattr` only inside a user namespace (rootless), as containerd."""
    return in_user_namespace()


def in_user_namespace() -> bool:
    """Whether this process runs in a user namespace other than the initial one."""
    try:
        with open("/proc/self/uid_map") as f:
            first = f.read().split()
    except OSError:
        return False
    return first[:3] != ["0", "0", "4294967295"]
