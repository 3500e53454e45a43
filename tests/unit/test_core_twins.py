"""Issue 5: each compiled function in appliance._core gives the same results as its
pure-Python twin in appliance._core_py (hypothesis-generated inputs)."""
import io
import tarfile

from hypothesis import given, settings, strategies as st

from appliance import _core, _core_py

names = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
                min_size=1, max_size=120)


@settings(max_examples=300, deadline=None)
@given(names)
def test_clean_entry_name_twins(name):
    assert _core.clean_entry_name(name) == _core_py.clean_entry_name(name)


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
