"""Diff: the changes from a lower tree to an upper tree as an OCI layer in the content store.

Both sides are mounted read-only under root/tmpmounts (always unmounted again),
walked together, and the changes written as a tar (whiteouts for deletions,
hardlinks kept) compressed with gzip while both digests are computed. The blob
is committed with the `containerd.io/uncompressed` label, as containerd does.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tarfile
import time
import secrets

from ... import mount as mountlib
from ...errdefs import AlreadyExists, Unimplemented

try:
    from isal import isal_zlib as zlib_impl
    COMPRESSION_LEVEL = 2      # ISA-L's levels are 0-3
except ImportError:  # pragma: no cover
    import zlib as zlib_impl
    COMPRESSION_LEVEL = 6

GZIP_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
TAR_TYPE = "application/vnd.oci.image.layer.v1.tar"
UNCOMPRESSED_LABEL = "containerd.io/uncompressed"


class _Sink:
    """File-like: tar bytes in; sha256 of them, gzip out to the content writer."""

    def __init__(self, writer, compress: bool):
        self.writer = writer
        self.raw = hashlib.sha256()
        self.compressor = zlib_impl.compressobj(COMPRESSION_LEVEL, zlib_impl.DEFLATED, 31) if compress else None
        self.out = hashlib.sha256()
        self.size = 0

    def _emit(self, data: bytes) -> None:
        if data:
            self.out.update(data)
            self.size += len(data)
            self.writer.write(data)

    def write(self, data) -> int:
        self.raw.update(data)
        self._emit(self.compressor.compress(data) if self.compressor else bytes(data))
        return len(data)

    def finish(self) -> None:
        if self.compressor:
            self._emit(self.compressor.flush())


def _same(a: os.stat_result, b: os.stat_result, pa: str, pb: str) -> bool:
    if stat.S_IFMT(a.st_mode) != stat.S_IFMT(b.st_mode) or a.st_mode != b.st_mode:
        return False
    if (a.st_uid, a.st_gid) != (b.st_uid, b.st_gid):
        return False
    if stat.S_ISLNK(a.st_mode):
        return os.readlink(pa) == os.readlink(pb)
    if stat.S_ISCHR(a.st_mode) or stat.S_ISBLK(a.st_mode):
        return a.st_rdev == b.st_rdev
    if stat.S_ISDIR(a.st_mode):
        return True
    if a.st_size != b.st_size or a.st_mtime_ns != b.st_mtime_ns:
        return False
    if a.st_mtime_ns % 10**9 == 0:  # coarse timestamps: compare the bytes
        with open(pa, "rb") as fa, open(pb, "rb") as fb:
            while True:
                x, y = fa.read(1 << 20), fb.read(1 << 20)
                if x != y:
                    return False
                if not x:
                    return True
    return True


def _changes(lower: str, upper: str):
    """Yield ("add"|"modify", rel) and ("delete", rel) in path order."""
    def walk(rel: str):
        up = os.path.join(upper, rel) if rel else upper
        low = os.path.join(lower, rel) if rel else lower
        names_up = set(os.listdir(up)) if os.path.isdir(up) and not os.path.islink(up) else set()
        low_is_dir = os.path.isdir(low) and not os.path.islink(low)
        names_low = set(os.listdir(low)) if low_is_dir else set()
        for name in sorted(names_up | names_low):
            child = f"{rel}/{name}" if rel else name
            pu, pl = os.path.join(upper, child), os.path.join(lower, child)
            if name not in names_up:
                yield "delete", child
                continue
            su = os.lstat(pu)
            if name not in names_low:
                yield "add", child
                if stat.S_ISDIR(su.st_mode):
                    yield from ((k, p) for k, p in _all(upper, child))
                continue
            sl = os.lstat(pl)
            if not _same(sl, su, pl, pu):
                yield "modify", child
            if stat.S_ISDIR(su.st_mode):
                if stat.S_ISDIR(sl.st_mode):
                    yield from walk(child)
                else:
                    yield from ((k, p) for k, p in _all(upper, child))
    yield from walk("")


def _all(root: str, rel: str):
    for name in sorted(os.listdir(os.path.join(root, rel))):
        child = f"{rel}/{name}"
        yield "add", child
        p = os.path.join(root, child)
        if os.path.isdir(p) and not os.path.islink(p):
            yield from _all(root, child)


def write_tar(lower: str, upper: str, out) -> None:
    tar = tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT)
    whiteout_time = time.time()
    links: dict[tuple[int, int], str] = {}
    added_dirs: set[str] = set()

    def add_parents(rel: str):
        parent = os.path.dirname(rel)
        chain = []
        while parent and parent not in added_dirs:
            chain.append(parent)
            parent = os.path.dirname(parent)
        for p in reversed(chain):
            added_dirs.add(p)
            tar.addfile(tar.gettarinfo(os.path.join(upper, p), p + "/"))

    for kind, rel in _changes(lower, upper):
        if kind == "delete":
            add_parents(rel)
            info = tarfile.TarInfo(os.path.join(os.path.dirname(rel), ".wh." + os.path.basename(rel)))
            info.mtime = whiteout_time
            tar.addfile(info)
            continue
        path = os.path.join(upper, rel)
        st = os.lstat(path)
        add_parents(rel)
        info = tar.gettarinfo(path, rel + ("/" if stat.S_ISDIR(st.st_mode) else ""))
        info.uname = info.gname = ""
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            first = links.get((st.st_dev, st.st_ino))
            if first is not None:
                info.type, info.linkname, info.size = tarfile.LNKTYPE, first, 0
                tar.addfile(info)
                continue
            links[(st.st_dev, st.st_ino)] = rel
        try:
            cap = os.getxattr(path, "security.capability", follow_symlinks=False)
            info.pax_headers["SCHILY.xattr.security.capability"] = cap.decode("latin-1")
        except OSError:
            pass
        if stat.S_ISDIR(st.st_mode):
            added_dirs.add(rel)
        if info.isreg():
            with open(path, "rb") as f:
                tar.addfile(info, f)
        else:
            tar.addfile(info)
    tar.close()


def check_media_type(media_type: str) -> str:
    """The diff's media type (gzip by default); others are not implemented."""
    media_type = media_type or GZIP_TYPE
    if media_type not in (GZIP_TYPE, TAR_TYPE):
        raise Unimplemented(f"unsupported diff media type: {media_type}: not implemented")
    return media_type


def write_diff(content, tmpmounts: str, ns: str, lower_mounts, upper_mounts, media_type: str,
               ref: str, labels: dict, lease=None):
    media_type = check_media_type(media_type)
    ref = ref or f"diff-{time.time_ns()}-{secrets.token_hex(4)}"
    with contextlib.ExitStack() as stack:
        lower = (stack.enter_context(mountlib.TempMount(tmpmounts, readonly_mounts(lower_mounts)))
                 if lower_mounts else stack.enter_context(_EmptyDir(tmpmounts)))
        upper = stack.enter_context(mountlib.TempMount(tmpmounts, readonly_mounts(upper_mounts)))
        writer = content.writer(ns, ref, lease=lease)
        try:
            sink = _Sink(writer, media_type == GZIP_TYPE)
            write_tar(lower, upper, sink)
            sink.finish()
            digest = "sha256:" + sink.out.hexdigest()
            all_labels = dict(labels)
            all_labels[UNCOMPRESSED_LABEL] = "sha256:" + sink.raw.hexdigest()
            try:
                writer.commit(sink.size, digest, all_labels)
            except AlreadyExists:
                pass
        finally:
            writer.close()
    return media_type, digest, sink.size


def readonly_mounts(mounts):
    """The same mounts read-only (an overlay's upper dir becomes its top lower dir), as
    containerd's tryReadonlyMounts: for looking into a snapshot without changing it."""
    out = []
    for m in mounts:
        opts = [o for o in m.options if o != "rw"]
        if m.type == "overlay":  # a read-only overlay needs no upper/work dir
            from ..snapshots.backends import overlay_dirs
            upper, lowers = overlay_dirs(m.options)
            dirs = ([upper] if upper else []) + lowers
            if len(dirs) == 1:  # overlay wants two lower dirs without an upper one
                out.append(type(m)("bind", dirs[0], ["ro", "rbind"], m.target))
                continue
            opts = [o for o in opts if not o.startswith(("upperdir=", "workdir=", "lowerdir="))]
            opts.append("lowerdir=" + ":".join(dirs))
        elif "ro" not in opts:
            opts.append("ro")
        out.append(type(m)(m.type, m.source, opts, m.target))
    return out


class _EmptyDir:
    def __init__(self, parent):
        self.parent = parent

    def __enter__(self):
        import tempfile
        os.makedirs(self.parent, mode=0o700, exist_ok=True)
        self.path = tempfile.mkdtemp(prefix="empty-", dir=self.parent)
        return self.path

    def __exit__(self, *exc):
        os.rmdir(self.path)
