"""Test images (cached per session under /tmp) and tree fingerprints for snapshot tests."""
from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

MAKE_IMAGE = "/work/shared/anchor/make_oci_image.py"
CACHE = Path("/tmp/ca-images")


def anchor_image(variant: str) -> Path:
    """busybox (small) or the 18,000-file big image, generated once and reused."""
    CACHE.mkdir(exist_ok=True)
    path = CACHE / ("busybox.tar" if variant == "small" else "big.tar")
    if not path.exists():
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        args = [sys.executable, MAKE_IMAGE, "--variant", variant, "--out", str(tmp)]
        if variant == "big":
            args += ["--ref", "localhost/bigimage:latest"]
        subprocess.run(args, check=True, capture_output=True, timeout=600)
        os.rename(tmp, path)
    return path


def fingerprint(root: str) -> dict:
    """Everything the differential test compares: type, mode, owner, size, content hash,
    link target, xattrs, and which paths share an inode."""
    out, inodes = {}, {}
    for dirpath, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            kind = stat.S_IFMT(st.st_mode)
            extra = ""
            if stat.S_ISREG(kind):
                h = hashlib.sha256()
                with open(p, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
                extra = h.hexdigest()
                if st.st_nlink > 1:
                    inodes.setdefault(st.st_ino, []).append(rel)
            elif stat.S_ISLNK(kind):
                extra = os.readlink(p)
            elif stat.S_ISCHR(kind) or stat.S_ISBLK(kind):
                extra = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
            xattrs = {}
            try:
                for key in os.listxattr(p, follow_symlinks=False):
                    xattrs[key] = os.getxattr(p, key, follow_symlinks=False)
            except OSError:
                pass
            out[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                        st.st_size if not stat.S_ISDIR(kind) else 0, extra, sorted(xattrs.items()))
    out["<hardlinks>"] = sorted(sorted(v) for v in inodes.values())
    return out


def mounted_tree(d, image: str, namespace: str, target: Path) -> dict:
    """Fingerprint of `image`'s root filesystem through `ctr images mount` on daemon `d`."""
    target.mkdir(parents=True, exist_ok=True)
    d.ctr("images", "mount", image, str(target), namespace=namespace, timeout=120)
    try:
        return fingerprint(str(target))
    finally:
        d.ctr("images", "unmount", "--rm", str(target), namespace=namespace, timeout=60)


def mountinfo_lines(basetemp) -> list[str]:
    """Mounts under this test process's daemons and temporary directory (other sessions'
    runs share this host and its mount table)."""
    from daemon import WORKDIRS
    ours = tuple(f"{d}/" for d in (*WORKDIRS, basetemp))
    with open("/proc/self/mountinfo") as f:
        return [" ".join(line.split()[3:5]) for line in f
                if (line.split()[4] + "/").startswith(ours)]
