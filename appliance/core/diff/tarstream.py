"""A streaming tar reader for layers: ustar, GNU long names and PAX, no seeking.

`TarReader(read).next()` returns the next `Header` (with PAX and GNU long-name
records already folded in); the entry's data must then be consumed with
`copy_to(fd)` or `skip()` before asking for the next header. Malformed archives
raise `TarError` with a message naming the problem.
"""
from __future__ import annotations

from dataclasses import dataclass, field

try:
    from ..._core import parse_header
except ImportError:  # pragma: no cover - not built: the pure twin
    from ..._core_py import parse_header

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
MAX_META = 1 << 20          # PAX / long-name records larger than this are hostile
CHUNK = 1 << 20

REG, AREG, LINK, SYMLINK, CHR, BLK, DIR, FIFO, CONT = b"0", b"\0", b"1", b"2", b"3", b"4", b"5", b"6", b"7"
PAX, GLOBAL_PAX, GNU_LONGNAME, GNU_LONGLINK = b"x", b"g", b"L", b"K"


class TarError(Exception):
    pass


@dataclass
class Header:
    name: str
    type: bytes
    size: int
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    atime_ns: int | None = None
    xattrs: dict[str, bytes] = field(default_factory=dict)


def _text(field_: bytes) -> str:
    return field_.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _parse_pax(data: bytes) -> dict[str, bytes]:
    records, pos = {}, 0
    while pos < len(data):
        if data[pos] == 0:
            break
        space = data.find(b" ", pos)
        if space < 0:
            raise TarError("invalid PAX record: no length")
        try:
            length = int(data[pos:space])
        except ValueError:
            raise TarError("invalid PAX record: bad length") from None
        if length <= 0 or pos + length > len(data) or data[pos + length - 1:pos + length] != b"\n":
            raise TarError("invalid PAX record: bad length")
        key, eq, value = data[space + 1:pos + length - 1].partition(b"=")
        if not eq:
            raise TarError("invalid PAX record: no '='")
        records[key.decode("utf-8", "surrogateescape")] = value
        pos += length
    return records


class TarReader:
    """Pull-based reader over `read(n) -> bytes` (a decompressed stream)."""

    def __init__(self, read):
        self._read = read
        self._buf = b""
        self._pos = 0
        self._remaining = 0     # data bytes of the current entry not yet consumed
        self._padding = 0
        self.eof = False

    # --- buffered input --------------------------------------------------------------

    def _fill(self, n: int) -> bool:
        """Make at least n bytes available in the buffer; False at end of stream."""
        avail = len(self._buf) - self._pos
        if avail >= n:
            return True
        parts = [self._buf[self._pos:]]
        while avail < n:
            chunk = self._read(max(CHUNK, n - avail))
            if not chunk:
                self._buf, self._pos = b"".join(parts), 0
                return False
            parts.append(chunk)
            avail += len(chunk)
        self._buf, self._pos = b"".join(parts), 0
        return True

    def _take(self, n: int) -> bytes:
        if not self._fill(n):
            raise TarError("unexpected end of archive (truncated layer)")
        out = self._buf[self._pos:self._pos + n]
        self._pos += n
        return out

    def _chunks(self, n: int):
        """Yield the next n bytes as memoryview pieces, without joining big data."""
        while n:
            avail = len(self._buf) - self._pos
            if not avail:
                chunk = self._read(CHUNK)
                if not chunk:
                    raise TarError("unexpected end of archive (truncated layer)")
                self._buf, self._pos = chunk, 0
                avail = len(chunk)
            take = min(avail, n)
            yield memoryview(self._buf)[self._pos:self._pos + take]
            self._pos += take
            n -= take

    # --- entries -------------------------------------------------------------------

    def next(self) -> Header | None:
        """The next entry's header, or None at the end of the archive."""
        if self._remaining or self._padding:
            self.skip()
        pax: dict[str, bytes] = {}
        longname = longlink = None
        while True:
            if not self._fill(BLOCK):
                if len(self._buf) - self._pos:
                    raise TarError("unexpected end of archive (truncated header)")
                self.eof = True   # a stream without the two zero blocks: accepted, as Go does
                return None
            block = self._take(BLOCK)
            if block == ZERO_BLOCK:
                self.eof = True
                return None
            try:
                fields = parse_header(block)
            except ValueError:
                raise TarError("invalid tar header: bad number field") from None
            if fields is None:
                raise TarError("invalid tar header: checksum mismatch")
            typ, size = fields[6], fields[4]
            if size < 0:
                raise TarError("invalid tar header: negative size")
            if typ in (PAX, GLOBAL_PAX, GNU_LONGNAME, GNU_LONGLINK):
                if size > MAX_META:
                    raise TarError(f"tar metadata record of {size} bytes exceeds the "
                                   f"{MAX_META}-byte limit (oversize header)")
                data = self._take(size)
                self._take(-size % BLOCK)
                if typ == PAX:
                    pax.update(_parse_pax(data))
                elif typ == GNU_LONGNAME:
                    longname = _text(data)
                elif typ == GNU_LONGLINK:
                    longlink = _text(data)
                continue   # global headers are ignored, as containerd does
            return self._header(fields, pax, longname, longlink)

    def _header(self, fields, pax, longname, longlink) -> Header:
        name, mode, uid, gid, size, mtime, typ, linkname, major, minor = fields
        hdr = Header(name=longname if longname is not None else name, type=typ, size=size,
                     mode=mode, uid=uid, gid=gid, mtime_ns=mtime * 10**9,
                     linkname=longlink if longlink is not None else linkname,
                     devmajor=major, devminor=minor)
        for key, value in pax.items():
            if key == "path":
                hdr.name = value.decode("utf-8", "surrogateescape")
            elif key == "linkpath":
                hdr.linkname = value.decode("utf-8", "surrogateescape")
            elif key == "size":
                hdr.size = _pax_int(value, key)
            elif key == "uid":
                hdr.uid = _pax_int(value, key)
            elif key == "gid":
                hdr.gid = _pax_int(value, key)
            elif key == "mtime":
                hdr.mtime_ns = _pax_time(value, key)
            elif key == "atime":
                hdr.atime_ns = _pax_time(value, key)
            elif key.startswith("SCHILY.xattr."):
                hdr.xattrs[key[len("SCHILY.xattr."):]] = value
        if hdr.type in (LINK, SYMLINK, CHR, BLK, DIR, FIFO):
            hdr.size = 0   # header-only types carry no data, whatever the size field says
        self._remaining = hdr.size
        self._padding = -hdr.size % BLOCK
        return hdr

    def data(self):
        """The current entry's data as memoryview chunks (consumes it)."""
        n, self._remaining = self._remaining, 0
        yield from self._chunks(n)
        self._skip_padding()

    def data_whole(self):
        """The current entry's data in one piece (consumes it and its padding), for small
        entries: a view into the buffer, or (across reads) only its own bytes joined."""
        n, pad = self._remaining, self._padding
        self._remaining = self._padding = 0
        need = n + pad
        if len(self._buf) - self._pos >= need:
            view = memoryview(self._buf)[self._pos:self._pos + n]
            self._pos += need
            return view
        parts = [self._buf[self._pos:]]
        got = len(parts[0])
        while got < need:
            chunk = self._read(max(CHUNK, need - got))
            if not chunk:
                raise TarError("unexpected end of archive (truncated layer)")
            take = min(len(chunk), need - got)
            parts.append(chunk[:take])
            got += take
            self._buf, self._pos = chunk, take
        return b"".join(parts)[:n]

    def skip(self) -> None:
        for _ in self.data():
            pass

    def _skip_padding(self) -> None:
        pad, self._padding = self._padding, 0
        if pad:
            self._take(pad)

    def drain(self) -> None:
        """Read the rest of the stream (trailing zeros count in the layer digest)."""
        self._buf, self._pos = b"", 0
        while self._read(CHUNK):
            pass


def _pax_int(value: bytes, key: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise TarError(f"invalid PAX record: bad {key}") from None


def _pax_time(value: bytes, key: str) -> int:
    """PAX "seconds[.fraction]" as exact nanoseconds."""
    text = value.decode("ascii", "replace")
    sec, _, frac = text.partition(".")
    try:
        whole = int(sec)
        nanos = int((frac + "000000000")[:9]) if frac else 0
    except ValueError:
        raise TarError(f"invalid PAX record: bad {key}") from None
    return whole * 10**9 - nanos if sec.startswith("-") else whole * 10**9 + nanos
