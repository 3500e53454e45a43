"""Layer apply: the pure planner, the executor on real directories, hostile layers."""
import gzip
import io
import os
import stat
import sys
import tarfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from layers import entry, layer  # noqa: E402

from appliance.core.diff import planner  # noqa: E402
from appliance.core.diff.apply import ApplyError, apply_tar  # noqa: E402
from appliance.core.diff.decompress import DecompressError, LayerStream  # noqa: E402
from appliance.core.diff.tarstream import TarReader, REG  # noqa: E402

D, L, S, C, B, F = tarfile.DIRTYPE, tarfile.LNKTYPE, tarfile.SYMTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE


def apply_bytes(root, data: bytes, **kw):
    return apply_tar(str(root), io.BytesIO(data).read, **kw)


def tree(root):
    """path -> (type, mode, uid, gid, size/target/rdev, content) for comparisons."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            extra = None
            if stat.S_ISLNK(st.st_mode):
                extra = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                extra = open(p, "rb").read()
            elif stat.S_ISCHR(st.st_mode):
                extra = (os.major(st.st_rdev), os.minor(st.st_rdev))
            out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, extra)
    return out


# --- planner (pure) -------------------------------------------------------------------

def fake_fs(entries):
    def lookup(parts):
        value = entries.get("/".join(parts))
        if value is None:
            return None, ""
        return ("symlink", value[1]) if isinstance(value, tuple) else (value, "")
    return lookup


def hdr(name, type=REG, linkname="", major=0, minor=0):
    from appliance.core.diff.tarstream import Header
    return Header(name=name, type=type, size=0, mode=0o644, uid=0, gid=0, mtime_ns=0,
                  linkname=linkname, devmajor=major, devminor=minor)


def test_planner_resolves_parents_through_symlinks_inside_the_root():
    fs = fake_fs({"lib": ("symlink", "usr/lib"), "usr": "dir", "usr/lib": "dir",
                  "var": "dir", "var/run": ("symlink", "/run")})
    op = planner.plan(hdr("lib/x.so"), fs)
    assert (op.parent, op.name) == (("usr", "lib"), "x.so")
    op = planner.plan(hdr("var/run/pid"), fs)   # absolute target: re-rooted, as in a container
    assert op.parent == ("run",)
    assert planner.plan(hdr("./"), fs) == planner.Skip("resolves to the root")
    assert planner.plan(hdr("a/../b"), fs).name == "b"


@pytest.mark.parametrize("name,fs,parent,base", [
    ("../evil", {}, (), "evil"),
    ("/etc/passwd", {}, ("etc",), "passwd"),
    ("a/../../evil", {}, (), "evil"),
    ("../../x/../../y/z", {}, ("y",), "z"),
    ("link/pwned", {"link": ("symlink", "../../../../tmp")}, ("tmp",), "pwned"),
    ("link/pwned", {"link": ("symlink", "a/../..")}, (), "pwned"),
    ("link/pwned", {"link": ("symlink", "/../../etc"), "etc": "dir"}, ("etc",), "pwned"),
])
def test_planner_confines_names_to_the_root(name, fs, parent, base):
    """As containerd, absolute names and ".." above the root resolve inside it."""
    op = planner.plan(hdr(name), fake_fs(fs))
    assert (op.parent, op.name) == (parent, base)


def test_planner_refuses_what_containerd_refuses():
    with pytest.raises(planner.HostileEntry, match="too many levels"):
        planner.plan(hdr("loop/x"), fake_fs({"loop": ("symlink", "loop")}))
    with pytest.raises(planner.HostileEntry, match="unsupported tar entry type"):
        planner.plan(hdr("x", b"7"), fake_fs({}))
    for name in ("d/.wh..", "d/.wh...", "/.wh."):
        with pytest.raises(planner.HostileEntry, match="invalid whiteout"):
            planner.plan(hdr(name), fake_fs({"d": "dir"}))
    for target in ("..", "a/..", "/", "d/."):
        with pytest.raises(planner.HostileEntry, match="is a directory"):
            planner.plan(hdr("h", b"1", target), fake_fs({"d": "dir"}))
    assert planner.plan(hdr("../.."), fake_fs({})) == planner.Skip("resolves to the root")


def test_planner_whiteouts_hardlinks_and_devices():
    fs = fake_fs({"d": "dir", "ln": ("symlink", "d/e")})
    assert planner.plan(hdr("d/.wh.gone"), fs) == planner.Whiteout(("d",), "gone")
    assert planner.plan(hdr("d/.wh..wh..opq"), fs) == planner.Opaque(("d",))
    assert planner.plan(hdr("/../.wh.gone"), fs) == planner.Whiteout((), "gone")
    op = planner.plan(hdr("d/h", b"1", "d/target"), fs)
    assert (op.link_parent, op.link_name) == (("d",), "target")
    for target, link_parent, link_name in (("../outside", (), "outside"),
                                           ("/etc/shadow", ("etc",), "shadow"),
                                           ("ln/../f", ("d",), "f"),   # ".." after the link
                                           ("ln", (), "ln")):          # the link itself
        op = planner.plan(hdr("h", b"1", target), fs)
        assert (op.link_parent, op.link_name) == (link_parent, link_name), target
    for typ, major, minor in ((b"4", 8, 0), (b"3", 10, 200), (b"3", 1, 1)):
        op = planner.plan(hdr("/../dev", typ, major=major, minor=minor), fs)
        assert isinstance(op, planner.Create) and (op.parent, op.name) == ((), "dev")
        assert isinstance(planner.plan(hdr("x", typ, major=major, minor=minor), fs,
                                       devices=False), planner.Skip)   # in a user namespace
    assert isinstance(planner.plan(hdr("fifo", b"6"), fs, devices=False), planner.Create)


# --- executor on real directories --------------------------------------------------------

def test_apply_all_entry_kinds(tmp_path):
    long = "d/" + "n" * 150 + "/" + "f" * 120
    data = layer(
        entry("d/", D, mode=0o750, uid=1000, gid=1001),
        entry("d/file", data=b"hello", mode=0o4755, uid=7, gid=8),
        entry("d/hard", L, linkname="d/file", mode=0o4755, uid=7, gid=8),
        entry("d/sym", S, linkname="../d/file"),
        entry("d/null", C, mode=0o666, devmajor=1, devminor=3),
        entry("d/fifo", F, mode=0o600),
        entry(long, data=b"long"),
        entry("d/x", data=b"x", pax={"SCHILY.xattr.user.test": "v1", "mtime": "1704067200.5"}),
        entry("implicit/parent/file", data=b"p"),
    )
    apply_bytes(tmp_path, data)
    t = tree(tmp_path)
    assert t["d"][1:4] == (0o750, 1000, 1001)
    assert t["d/file"] == (stat.S_IFREG, 0o4755, 7, 8, b"hello")
    assert os.stat(tmp_path / "d/hard").st_ino == os.stat(tmp_path / "d/file").st_ino
    assert t["d/sym"][4] == "../d/file"
    assert t["d/null"][0] == stat.S_IFCHR and t["d/null"][4] == (1, 3)
    assert t["d/fifo"][0] == stat.S_IFIFO
    assert t[long][4] == b"long"
    assert os.getxattr(tmp_path / "d/x", "user.test") == b"v1"
    assert os.stat(tmp_path / "d/x").st_mtime_ns == 1704067200_500000000
    assert os.stat(tmp_path / "d").st_mtime == 1704067200  # directory times set last
    assert t["implicit/parent"][1] == 0o755


def test_files_written_whole_or_streamed_give_the_same_tree(tmp_path, monkeypatch):
    """Small files go through write_file in one call, big ones (or with xattrs, or ids
    os.fchown refuses) stream: the result is the same, at the size limit too."""
    from appliance.core.diff import apply as apply_mod
    limit = apply_mod.WHOLE_FILE_MAX
    data = layer(
        entry("empty", data=b""),
        entry("small", data=b"s" * 1000, mode=0o4750, uid=3, gid=4),
        entry("at-limit", data=os.urandom(limit), mode=0o600),
        entry("over-limit", data=os.urandom(limit + 1), mode=0o640),
        entry("big", data=os.urandom(3 << 20)),
        entry("xattr", data=b"x", pax={"SCHILY.xattr.user.k": "v", "mtime": "1704067200.25"}),
        entry("small", data=b"replaced", mode=0o644),
        entry("last", data=b"after the big ones"),
    )
    whole, streamed = tmp_path / "whole", tmp_path / "streamed"
    whole.mkdir()
    streamed.mkdir()
    calls = []
    real, real_batch = apply_mod.write_file, apply_mod.write_files
    monkeypatch.setattr(apply_mod, "write_file", lambda path, *a: calls.append(
        os.path.basename(path)) or real(path, *a))
    monkeypatch.setattr(apply_mod, "write_files", lambda batch: calls.extend(
        os.path.basename(args[0]) for args in batch) or real_batch(batch))
    apply_bytes(whole, data)
    assert calls == ["empty", "small", "at-limit", "small", "last"]
    monkeypatch.setattr(apply_mod, "WHOLE_FILE_MAX", -1)
    apply_bytes(streamed, data)
    assert calls == ["empty", "small", "at-limit", "small", "last"]
    for name in os.listdir(whole):   # before reading them (that moves the atime)
        a, b = os.lstat(whole / name), os.lstat(streamed / name)
        assert (a.st_atime_ns, a.st_mtime_ns) == (b.st_atime_ns, b.st_mtime_ns)
    assert tree(whole) == tree(streamed)
    assert tree(whole)["small"] == (stat.S_IFREG, 0o644, 0, 0, b"replaced")
    assert os.getxattr(whole / "xattr", "user.k") == b"v"
    with pytest.raises(ApplyError, match="truncated"):   # data cut short: no half file
        apply_bytes(tmp_path / "whole", layer(entry("cut", data=b"c" * 3000))[:1024 + 512])


def test_small_files_across_reads_of_the_stream(tmp_path):
    """A stream read in small pieces: every file's data spans reads and is joined whole."""
    files = {f"d/f{i}": os.urandom(i * 397) for i in range(40)}
    data = layer(*(entry(name, data=body) for name, body in files.items()))
    stream = io.BytesIO(data)
    apply_tar(str(tmp_path), lambda n: stream.read(min(n, 700)))
    assert {f"d/{name}": (tmp_path / "d" / name).read_bytes()
            for name in os.listdir(tmp_path / "d")} == files


@pytest.mark.parametrize("later", ["hostile", "file", "dir", "hardlink", "end"])
def test_a_file_the_writer_thread_fails_is_reported_as_in_order(tmp_path, monkeypatch, later):
    """New small files are written behind the parser: a failure still names its entry, and
    comes before whatever a later entry would have raised (as the sequential apply)."""
    from appliance.core.diff import apply as apply_mod
    follow = {"hostile": [entry("x", b"Z")], "file": [entry("d/ok", data=b"ok")],
              "dir": [entry("d/sub/", D)], "hardlink": [entry("d/h", L, linkname="d/ok")],
              "end": []}[later]
    data = layer(entry("d/", D), entry("d/ok", data=b"ok"),
                 entry("d/" + "n" * 300, data=b"too long a name"), *follow)
    messages = []
    for limit in (apply_mod.WHOLE_FILE_MAX, -1):   # behind the parser, then in order
        monkeypatch.setattr(apply_mod, "WHOLE_FILE_MAX", limit)
        root = tmp_path / str(limit)
        root.mkdir()
        with pytest.raises(ApplyError) as err:
            apply_bytes(root, data)
        messages.append(str(err.value).replace(str(root), "ROOT"))
    assert messages[0] == messages[1]
    assert messages[0].startswith("failed to apply entry 'd/nnn") and "File name too long" in messages[0]


def test_failed_xattr_write_names_the_key(tmp_path):
    """Not only "[Errno 22] Invalid argument: <path>" (a capability needs 20+ bytes)."""
    data = layer(entry("bin/ping", data=b"x", pax={"SCHILY.xattr.security.capability": "bad"}))
    with pytest.raises(ApplyError) as err:
        apply_bytes(tmp_path, data)
    path = str(tmp_path / "bin" / "ping")
    assert str(err.value) == (f"failed to apply entry 'bin/ping': [Errno 22] failed to setxattr "
                              f"{path!r} for key 'security.capability': Invalid argument")


def test_whiteouts_and_opaque_dirs_plain_and_overlay(tmp_path):
    base = layer(entry("keep/a", data=b"a"), entry("gone", data=b"g"), entry("opq/old", data=b"o"))
    top = layer(entry("gone", data=b""), entry(".wh.gone"), entry("opq/new", data=b"n"),
                entry("opq/.wh..wh..opq"))
    plain = tmp_path / "plain"
    plain.mkdir()
    apply_bytes(plain, base)
    apply_bytes(plain, top)
    assert sorted(tree(plain)) == ["keep", "keep/a", "opq", "opq/new"]
    # overlay form: the upper gets a 0/0 char device and the opaque xattr
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    lower.mkdir(), upper.mkdir()
    apply_bytes(lower, base)
    os.chmod(lower / "opq", 0o711)
    apply_bytes(upper, layer(entry(".wh.gone"), entry("opq/.wh..wh..opq"), entry("keep/b", data=b"b")),
                overlay=True, lowers=[str(lower)])
    st = os.lstat(upper / "gone")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert os.getxattr(upper / "opq", "trusted.overlay.opaque") == b"y"
    assert stat.S_IMODE(os.stat(upper / "opq").st_mode) == 0o711  # copied from the lower dir


# --- hostile layers: confined to the root, or a clear error; nothing outside ---------------

HOSTILE = {   # case: (layer, what lands inside the root, or the error containerd gives too)
    "dotdot": (layer(entry("../escape", data=b"x")), "escape", None),
    "absolute": (layer(entry("/abs-escape", data=b"x")), "abs-escape", None),
    "symlink-then-write": (layer(entry("ln", S, linkname="../../../../../../OUTSIDE"),
                                 entry("ln/pwned", data=b"x")), "OUTSIDE/pwned", None),
    "absolute-hardlink": (layer(entry("f", data=b"x"), entry("h", L, linkname="/../f")), "h", None),
    "block-device": (layer(entry("sda", B, devmajor=8, devminor=0)), "sda", None),
    "char-device": (layer(entry("mem", C, devmajor=1, devminor=1)), "mem", None),
    "hardlink-outside": (layer(entry("h", L, linkname="../../../../etc/passwd")), None,
                         "No such file"),
    "whiteout-dotdot": (layer(entry(".wh..")), None, "invalid whiteout"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_layer_lands_inside_the_root_or_fails(tmp_path, case):
    """Confined as containerd confines it, or refused; never anything outside."""
    data, inside, error = HOSTILE[case]
    root = tmp_path / "a" / "b" / "c" / "root"
    root.mkdir(parents=True)

    def outside():
        return sorted(p for p in tmp_path.rglob("*") if root not in p.parents and p != root)
    before = outside()
    if error:
        with pytest.raises(ApplyError, match=error):
            apply_bytes(root, data)
    else:
        apply_bytes(root, data)
        assert os.path.lexists(root / inside)
    assert outside() == before


def test_symlinked_hardlink_target_is_not_followed(tmp_path):
    outside = tmp_path / "secret"
    outside.write_text("s")
    root = tmp_path / "root"
    root.mkdir()
    (root / "ln").symlink_to(outside)
    apply_bytes(root, layer(entry("h", L, linkname="ln")))
    assert os.path.islink(root / "h")          # the link itself, never the file it names
    assert os.stat(outside).st_nlink == 1


def test_directory_times_never_follow_a_parent_replaced_by_a_symlink(tmp_path):
    outside = tmp_path / "outside"
    (outside / "b").mkdir(parents=True)
    os.utime(outside / "b", ns=(7, 7))
    root = tmp_path / "root"
    root.mkdir()
    apply_bytes(root, layer(entry("a/", D, mode=0o755), entry("a/b/", D, mode=0o755, mtime=2000),
                            entry("a", S, linkname=str(outside))))
    assert os.path.islink(root / "a")
    assert os.stat(outside / "b").st_mtime_ns == 7   # the layer's times stayed inside


def test_oversize_header_truncated_and_bad_streams(tmp_path):
    big_pax = layer(entry("f", data=b"x", pax={"comment": "y" * (2 << 20)}))
    with pytest.raises(ApplyError, match="oversize header"):
        apply_bytes(tmp_path, big_pax)
    good = layer(entry("f", data=b"x" * 5000))
    with pytest.raises(ApplyError, match="truncated"):
        apply_bytes(tmp_path, good[:1024])
    gz = tmp_path / "t.gz"
    gz.write_bytes(gzip.compress(good)[:-20])
    s = LayerStream(str(gz))
    with pytest.raises(DecompressError, match="truncated"):
        (tmp_path / "x").mkdir()
        apply_tar(str(tmp_path / "x"), s.read)
    s.close()


def test_gzip_bomb_within_limits_streams_in_bounded_memory(tmp_path):
    """200 MiB of zeros in a 200 KiB gzip: unpacked in bounded chunks, digest correct."""
    import hashlib
    import resource
    size = 200 << 20
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("zeros")
        info.size = size
        tar.addfile(info, io.BytesIO(bytes(size)))
    data = raw.getvalue()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = tmp_path / "bomb.gz"
    path.write_bytes(gzip.compress(data, 9))
    del raw, data
    assert path.stat().st_size < 400 << 10
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    s = LayerStream(str(path))
    (tmp_path / "root").mkdir()
    apply_tar(str(tmp_path / "root"), s.read)
    s.close()
    assert s.digest() == digest
    assert os.path.getsize(tmp_path / "root" / "zeros") == size
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert grown < 100 << 10  # KiB: well under the 200 MiB the layer expands to


def test_tar_reader_handles_gnu_long_names_and_base256(tmp_path):
    name = "x/" * 80 + "end"
    data = layer(entry(name, data=b"1", uid=0o10000000), fmt=tarfile.GNU_FORMAT)
    r = TarReader(io.BytesIO(data).read)
    h = r.next()
    assert h.name == name and h.uid == 0o10000000
    assert bytes(b"".join(r.data())) == b"1"
    assert r.next() is None


@pytest.mark.parametrize("compress", ["gzip", "zstd", "none", "gzip-multimember"])
def test_layer_stream_formats_and_diff_id(tmp_path, compress):
    import hashlib
    import zstandard
    raw = layer(entry("a", data=b"a" * 100000), entry("b/c", data=os.urandom(5000)))
    blob = {"gzip": lambda: gzip.compress(raw),
            "zstd": lambda: zstandard.ZstdCompressor().compress(raw),
            "none": lambda: raw,
            "gzip-multimember": lambda: gzip.compress(raw[:3000]) + gzip.compress(raw[3000:])}[compress]()
    (tmp_path / "blob").write_bytes(blob)
    (tmp_path / "root").mkdir()
    s = LayerStream(str(tmp_path / "blob"))
    apply_tar(str(tmp_path / "root"), s.read)
    s.close()
    assert s.digest() == "sha256:" + hashlib.sha256(raw).hexdigest() and s.size == len(raw)
    assert (tmp_path / "root" / "a").read_bytes() == b"a" * 100000


def test_unpacker_applies_through_a_temp_mount_for_foreign_mounts(tmp_path):
    """Mounts that are not our snapshots are mounted under tmpmounts, applied, and unmounted."""
    from appliance.core.diff.unpack import Unpacker
    from appliance.core.snapshots.backends import Mount
    target = tmp_path / "foreign"
    target.mkdir()
    blob = tmp_path / "layer.gz"
    blob.write_bytes(gzip.compress(layer(entry("etc/hello", data=b"hi"))))
    tmpmounts = tmp_path / "tmpmounts"
    u = Unpacker({}, str(tmpmounts))
    applied = u.apply(str(blob), "application/vnd.oci.image.layer.v1.tar+gzip", "sha256:x",
                      [Mount("bind", str(target), ["rw", "rbind"])])
    assert (target / "etc" / "hello").read_bytes() == b"hi"
    assert applied.size == len(gzip.decompress(blob.read_bytes()))
    assert os.listdir(tmpmounts) == []
    assert str(tmpmounts) not in open("/proc/self/mountinfo").read()
    from appliance.errdefs import NotFound
    with pytest.raises(NotFound, match="no processor for media-type"):
        u.apply(str(blob), "application/x-unknown", "sha256:x", [])


def test_an_unpack_gives_memory_back(tmp_path, monkeypatch):
    """After every unpack, malloc_trim; after one of many entries, a full collection first
    (CPython's free lists otherwise pin the pymalloc arenas its per-entry objects used); a
    layer of a few big files does not need it."""
    import gc
    from appliance.process import memory
    from appliance.core.diff import unpack
    from appliance.core.snapshots.backends import Mount
    calls, real_trim = [], memory.trim
    monkeypatch.setattr(memory, "trim", lambda collect=False: (calls.append(collect),
                                                               real_trim(collect))[1])
    u = unpack.Unpacker({}, str(tmp_path / "tmpmounts"))
    many = [entry(f"d{i // 500}/f{i}") for i in range(unpack.COLLECT_AFTER_ENTRIES)]
    for name, entries in (("small", [entry("zeros", data=bytes(4096))]),
                          ("big", [entry("zeros", data=bytes(32 << 20))]), ("many", many)):
        target = tmp_path / name
        target.mkdir()
        blob = tmp_path / f"{name}.gz"
        blob.write_bytes(gzip.compress(layer(*entries)))
        collections = gc.get_stats()[2]["collections"]
        u.apply(str(blob), "application/vnd.oci.image.layer.v1.tar+gzip", "sha256:x",
                [Mount("bind", str(target), ["rw", "rbind"])])
        full = gc.get_stats()[2]["collections"] - collections
        assert (calls, full >= 1) == ([name == "many"], name == "many"), name
        calls.clear()


def test_entries_out_of_order_and_replaced(tmp_path):
    """A directory entry after its children, a file replaced twice, a dir replaced by a file."""
    apply_bytes(tmp_path, layer(
        entry("a/b/file", data=b"1"),
        entry("a/b/", D, mode=0o700),
        entry("a/b/file", data=b"2", mode=0o600),
        entry("x/y", data=b"y"),
        entry("x", data=b"now a file"),
        entry("n", data=b""),
        entry(".wh.n"),
    ))
    t = tree(tmp_path)
    assert t["a/b"][1] == 0o700 and t["a/b/file"][1:] == (0o600, 0, 0, b"2")
    assert t["x"][4] == b"now a file" and "x/y" not in t and "n" not in t


def test_a_stalled_layer_stream_fails_the_read_after_its_deadline(monkeypatch):
    """A stream processor that writes nothing: the reader gets DEADLINE_EXCEEDED, not a hang."""
    import threading
    from appliance.core.diff import decompress
    from appliance.errdefs import DeadlineExceeded
    monkeypatch.setattr(decompress, "STALL_TIMEOUT", 0.2)
    r, w = os.pipe()
    stream = LayerStream("stalled", opener=lambda: os.fdopen(r, "rb", buffering=0))
    outcome = []

    def read():
        try:
            stream.read(1)
        except BaseException as exc:
            outcome.append(exc)
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(10)
    os.close(w)   # the processor ends: the inflate thread sees EOF
    stream.close()
    assert outcome and isinstance(outcome[0], DeadlineExceeded), outcome
    assert "no data for 0.2s" in str(outcome[0])


def test_a_detached_overlay_apply_rebased_matches_the_apply_onto_its_lowers(tmp_path):
    """A pull applies a layer before its parent is committed: into an empty upper dir with
    no lowers, then `inherit_parents` gives the directories it made for unlisted parents the
    lowers' attributes. The result is the upper dir the apply onto the lowers makes: the same
    entries, whiteouts, opaque markers, owners, modes, xattrs and times."""
    from appliance.core.diff.apply import inherit_parents
    lower = tmp_path / "lower"
    lower.mkdir()
    apply_bytes(lower, layer(
        entry("etc", D, mode=0o750, uid=7, gid=8, mtime=1000), entry("etc/passwd", data=b"p"),
        entry("srv", D, mode=0o2775, gid=50, mtime=2000), entry("srv/www", D, mode=0o700, uid=33),
        entry("opq", D, mode=0o711, mtime=3000), entry("opq/old", data=b"o"),
        entry("gone", data=b"g"), entry("listed", D, mode=0o755, uid=1)))
    os.setxattr(lower / "etc", "user.origin", b"lower")
    top = layer(entry("etc/hosts", data=b"h", uid=3, gid=4),          # implicit etc
                entry("srv/www/index.html", data=b"i"),                # implicit srv, srv/www
                entry(".wh.gone"), entry("opq/.wh..wh..opq"),          # implicit opq (empty)
                entry("listed/x", data=b"x"), entry("listed", D, mode=0o700, uid=2, mtime=5),
                entry("fresh/dir/f", data=b"f"))                       # in no lower either
    sequential, detached = tmp_path / "sequential", tmp_path / "detached"
    sequential.mkdir(), detached.mkdir()

    def times(root):   # before anything lists a directory (which may move its atime)
        return {rel: (os.lstat(root / rel).st_atime_ns,
                      os.lstat(root / rel).st_mtime_ns if rel == "opq" else None)
                for rel in ("etc", "srv", "srv/www", "opq")}

    def full(root):   # times of "now" (whiteouts, parents in no lower, written dirs) left out
        out = {}
        for rel, value in tree(root).items():
            p = root / rel
            st = os.lstat(p)
            xattrs = {k: os.getxattr(p, k, follow_symlinks=False)
                      for k in os.listxattr(p, follow_symlinks=False)}
            dated = stat.S_ISREG(st.st_mode) or rel == "listed"
            out[rel] = (value, xattrs, st.st_mtime_ns if dated else None)
        return out
    apply_bytes(sequential, top, overlay=True, lowers=[str(lower)])
    expected_times = times(sequential)
    implicit: dict = {}
    apply_bytes(detached, top, overlay=True, lowers=[], implicit=implicit)
    assert full(detached) != full(sequential)   # the parents' attributes are not known yet
    inherit_parents(str(detached), implicit, [str(lower)])
    assert times(detached) == expected_times
    assert full(detached) == full(sequential)
    assert stat.S_IMODE(os.lstat(detached / "srv").st_mode) == 0o2775
    assert os.lstat(detached / "opq").st_mtime_ns == 3000 * 10**9
