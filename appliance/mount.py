"""mount(2)/umount2(2) through the compiled cffi module, and mount-table helpers."""
from __future__ import annotations

import logging
import os

from ._mountcall import ffi, lib

log = logging.getLogger("appliance.mount")

MS_RDONLY, MS_BIND, MS_REC, MS_PRIVATE = lib.MS_RDONLY, lib.MS_BIND, lib.MS_REC, lib.MS_PRIVATE
MNT_DETACH = lib.MNT_DETACH


def _check(rc: int, what: str, target: str) -> None:
    if rc != 0:
        err = ffi.errno
        raise OSError(err, f"{what} {target}: {os.strerror(err)}")


def mount(source: str, target: str, fstype: str, flags: int = 0, data: str = "") -> None:
    _check(lib.mount(source.encode(), target.encode(), fstype.encode(), flags,
                     data.encode() if data else ffi.NULL), "mount", target)


def unmount(target: str, flags: int = 0) -> None:
    _check(lib.umount2(target.encode(), flags), "unmount", target)


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit() and i + 3 < len(field):
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mountpoints(mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    with open(mountinfo) as f:
        return [_unescape(line.split()[4]) for line in f if line.strip()]


def unmount_all_under(directory: str) -> int:
    """Detach every mount at or below `directory`, deepest first; returns how many."""
    prefix = os.path.realpath(directory).rstrip("/") + "/"
    targets = [m for m in mountpoints() if (m + "/").startswith(prefix)]
    for target in sorted(targets, key=len, reverse=True):
        try:
            unmount(target, MNT_DETACH)
        except OSError as exc:
            log.warning("failed to unmount %s: %s", target, exc)
    return len(targets)


# --- containerd mount descriptions (type, source, options) ----------------------------

_FLAGS = {  # option -> (clear?, flag), as containerd's parseMountOptions
    "ro": (False, MS_RDONLY), "rw": (True, MS_RDONLY),
    "bind": (False, MS_BIND), "rbind": (False, MS_BIND | MS_REC),
    "nosuid": (False, lib.MS_NOSUID), "suid": (True, lib.MS_NOSUID),
    "nodev": (False, lib.MS_NODEV), "dev": (True, lib.MS_NODEV),
    "noexec": (False, lib.MS_NOEXEC), "exec": (True, lib.MS_NOEXEC),
}
PAGE_SIZE = os.sysconf("SC_PAGESIZE")


def parse_options(options) -> tuple[int, list[str]]:
    flags, data = 0, []
    for opt in options:
        if opt in _FLAGS:
            clear, flag = _FLAGS[opt]
            flags = flags & ~flag if clear else flags | flag
        else:
            data.append(opt)
    return flags, data


def mount_one(mtype: str, source: str, options, target: str) -> None:
    """Mount one containerd-style mount at `target` (bind mounts made read-only by remount)."""
    flags, data = parse_options(options)
    text = ",".join(data)
    if mtype == "overlay" and len(text) >= PAGE_SIZE:
        _mount_overlay_compact(data, target, flags)
        return
    if flags & MS_BIND:
        mount(source, target, "", flags & ~MS_RDONLY, "")
        if flags & MS_RDONLY:
            mount("", target, "", flags | lib.MS_REMOUNT, "")
        return
    mount(source, target, mtype, flags, text)


def _mount_overlay_compact(data: list[str], target: str, flags: int) -> None:
    """Too long for one page: mount from the lower dirs' common parent with relative paths.

    chdir is process-wide, so the mount runs in a child (util-linux mount(8)),
    as containerd does with a forked helper.
    """
    import subprocess
    from .process import fdlimit
    lowers = next((o[len("lowerdir="):].split(":") for o in data if o.startswith("lowerdir=")), [])
    common = os.path.commonpath(lowers) if lowers else "/"
    if len(lowers) == 1:
        common = os.path.dirname(common)
    rel = [o if not o.startswith("lowerdir=") else
           "lowerdir=" + ":".join(os.path.relpath(p, common) for p in lowers) for o in data]
    if flags & MS_RDONLY:
        rel.append("ro")
    result = subprocess.run(fdlimit.child_argv(["mount", "-i", "-n", "-t", "overlay", "overlay",
                                                "-o", ",".join(rel), target]), cwd=common, capture_output=True, text=True, timeout=30,
                            preexec_fn=fdlimit.child_preexec())
    if result.returncode != 0:
        raise OSError(f"mount overlay at {target}: {result.stderr.strip()}")


class TempMount:
    """Mount `mounts` on a fresh directory under `parent`; always undone on exit."""

    def __init__(self, parent: str, mounts):
        self.parent = parent
        self.mounts = list(mounts)
        self.path = ""

    def __enter__(self) -> str:
        import tempfile
        os.makedirs(self.parent, mode=0o700, exist_ok=True)
        self.path = tempfile.mkdtemp(prefix="containerd-mount", dir=self.parent)
        done = 0
        try:
            for m in self.mounts:
                mount_one(m.type, m.source, m.options, self.path)
                done += 1
        except BaseException:
            self._undo(done)
            raise
        return self.path

    def _undo(self, count: int) -> None:
        for _ in range(count):
            try:
                unmount(self.path, 0)
            except OSError:
                unmount(self.path, MNT_DETACH)
        os.rmdir(self.path)

    def __exit__(self, *exc) -> None:
        self._undo(len(self.mounts))


CLONE_NEWNET = 0x40000000


def setns(fd: int, nstype: int) -> None:
    """setns(2) for the calling thread."""
    _check(lib.setns(fd, nstype), "setns", f"fd {fd}")
