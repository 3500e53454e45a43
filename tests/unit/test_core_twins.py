"""Each compiled function in appliance._core gives the same results as its
pure-Python twin in appliance._core_py (hypothesis-generated inputs)."""
import io
import tarfile

from hypothesis import given, settings, strategies as st

from appliance import _core, _core_py

names = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
                min_size=1, max_size=120)


def _result(fn, block):
    try:
        return fn(block)
    except ValueError:
        return "ValueError"


@settings(max_examples=300, deadline=None)
@given(name=names, mode=st.integers(0, 0o7777), uid=st.integers(0, 2**40), gid=st.integers(0, 2**21),
       size=st.integers(0, 2**36), mtime=st.integers(0, 2**33), linkname=names,
       fmt=st.sampled_from([tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]),
       typ=st.sampled_from([tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.CHRTYPE, tarfile.DIRTYPE]))
def test_parse_header_twins_on_real_headers(name, mode, uid, gid, size, mtime, linkname, fmt, typ):
    info = tarfile.TarInfo(name)
    info.mode, info.uid, info.gid, info.size, info.mtime, info.type = mode, uid, gid, size, mtime, typ
    info.linkname = linkname if typ == tarfile.SYMTYPE else ""
    info.devmajor, info.devminor = (uid % 4096, gid % 4096) if typ == tarfile.CHRTYPE else (0, 0)
    try:
        buf = info.tobuf(fmt, "utf-8", "surrogateescape")
    except ValueError:  # not representable in this format
        return
    last = buf[-512:]   # the entry's own header (after any PAX / GNU long-name records)
    got = _core.parse_header(last)
    assert got == _core_py.parse_header(last)
    assert got is not None and got[1] == mode and got[6] == typ


@settings(max_examples=500, deadline=None)
@given(st.binary(min_size=512, max_size=512), st.data())
def test_parse_header_twins_on_garbage(block, data):
    # half the time: a block with a valid checksum, so the field parsers run on garbage
    if data.draw(st.booleans()):
        b = bytearray(block)
        b[148:156] = b" " * 8
        b[148:156] = (b"%06o\0 " % (sum(b) % 0o1000000))
        block = bytes(b)
    assert _result(_core.parse_header, block) == _result(_core_py.parse_header, block)


# --- whole layers: the apply with the compiled parser and with the pure twin agree -------

import os  # noqa: E402
import stat as stat_  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from layers import entry, layer  # noqa: E402

from appliance.core.diff import apply as apply_mod, tarstream  # noqa: E402

segment = st.sampled_from(["a", "b", "c", "dir", "x.txt", ".wh.a", ".wh.b", ".wh..wh..opq"])
paths = st.lists(segment, min_size=1, max_size=3).map("/".join)


@st.composite
def layers(draw):
    entries = []
    for _ in range(draw(st.integers(1, 25))):
        name = draw(paths)
        kind = draw(st.sampled_from(["file", "dir", "symlink", "hardlink"]))
        mode = draw(st.sampled_from([0o644, 0o755, 0o600, 0o4755, 0o1777]))
        uid = draw(st.integers(0, 3))
        if kind == "file":
            entries.append(entry(name, data=draw(st.binary(max_size=64)), mode=mode, uid=uid))
        elif kind == "dir":
            entries.append(entry(name + "/", tarfile.DIRTYPE, mode=mode | 0o700, uid=uid))
        elif kind == "symlink":
            entries.append(entry(name, tarfile.SYMTYPE, linkname=draw(paths)))
        else:
            entries.append(entry(name, tarfile.LNKTYPE, linkname=draw(paths), mode=mode))
    return layer(*entries)


def _snapshot(root):
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            st_ = os.lstat(p)
            body = open(p, "rb").read() if stat_.S_ISREG(st_.st_mode) else \
                os.readlink(p) if stat_.S_ISLNK(st_.st_mode) else None
            mtime = st_.st_mtime_ns if stat_.S_ISREG(st_.st_mode) else None  # others: maybe "now"
            out[os.path.relpath(p, root)] = (st_.st_mode, st_.st_uid, st_.st_nlink, mtime, body)
    return out


def _apply_with(core, data, base, overlay):
    root = tempfile.mkdtemp(dir=base)
    saved = tarstream.parse_header, apply_mod.write_file, apply_mod.write_files
    tarstream.parse_header, apply_mod.write_file, apply_mod.write_files = \
        core.parse_header, core.write_file, core.write_files
    try:
        apply_mod.apply_tar(root, io.BytesIO(data).read, overlay=overlay)
        return "ok", _snapshot(root)
    except apply_mod.ApplyError as exc:
        return "error", str(exc).replace(root, "ROOT")
    finally:
        tarstream.parse_header, apply_mod.write_file, apply_mod.write_files = saved


@settings(max_examples=60, deadline=None)
@given(layers(), st.booleans())
def test_apply_twins_on_generated_layers(data, overlay):
    with tempfile.TemporaryDirectory(dir="/tmp") as base:
        compiled = _apply_with(_core, data, base, overlay)
        pure = _apply_with(_core_py, data, base, overlay)
    assert compiled == pure


# --- write_file: the same file, or the same error ---------------------------------------

def _write_with(fn, base, setup, data, mode, uid, gid, chown, chmod, atime, mtime):
    path = os.path.join(tempfile.mkdtemp(dir=base), "d", "f")
    if setup != "no parent":
        os.mkdir(os.path.dirname(path))
    if setup == "symlink":
        os.symlink("elsewhere", path)
    elif setup == "directory":
        os.mkdir(path)
    elif setup == "file":
        with open(path, "wb") as f:
            f.write(b"old contents, longer than the new")
        os.chmod(path, 0o600)
    try:
        fn(path, memoryview(data), mode, uid, gid, chown, chmod, atime, mtime)
    except OSError as exc:
        return "error", type(exc).__name__, exc.errno, str(exc).replace(path, "PATH")
    st_ = os.lstat(path)
    return "ok", st_.st_mode, st_.st_uid, st_.st_gid, st_.st_atime_ns, st_.st_mtime_ns, \
        open(path, "rb").read()


@settings(max_examples=200, deadline=None)
@given(setup=st.sampled_from(["none", "file", "symlink", "directory", "no parent"]),
       data=st.binary(max_size=3000), mode=st.integers(0, 0o7777),
       uid=st.integers(0, 2**32 - 2), gid=st.integers(0, 2**32 - 2),
       chown=st.booleans(), chmod=st.booleans(),
       atime=st.integers(0, 2**63 - 1), mtime=st.integers(0, 2**63 - 1))
def test_write_file_twins(setup, data, mode, uid, gid, chown, chmod, atime, mtime):
    with tempfile.TemporaryDirectory(dir="/tmp") as base:
        args = (base, setup, data, mode, uid, gid, chown, chmod, atime, mtime)
        compiled = _write_with(_core.write_file, *args)
        pure = _write_with(_core_py.write_file, *args)
    assert compiled == pure
    if setup in ("none", "file"):
        assert compiled[0] == "ok" and compiled[-1] == data


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["ok", "symlink", "no parent"]),
                          st.binary(max_size=100), st.integers(0, 0o7777)), max_size=6))
def test_write_files_twins(files):
    """A batch: written in order up to the first failure, which both report alike."""
    def run(fn, base):
        batch = []
        for i, (kind, data, mode) in enumerate(files):
            path = os.path.join(base, f"f{i}" if kind != "no parent" else f"none/f{i}")
            if kind == "symlink":
                os.symlink("elsewhere", path)
            batch.append((path, memoryview(data), mode, 0, 0, False, True, 0, 10**9))
        index, exc = fn(batch)
        made = sorted((name, os.lstat(os.path.join(base, name)).st_mode)
                      for name in os.listdir(base))
        return index, exc and (type(exc), exc.errno, str(exc).replace(base, "BASE")), made
    with tempfile.TemporaryDirectory(dir="/tmp") as a, tempfile.TemporaryDirectory(dir="/tmp") as b:
        assert run(_core.write_files, a) == run(_core_py.write_files, b)
