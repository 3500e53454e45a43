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
