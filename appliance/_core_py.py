"""Pure-Python twin of `appliance._core`: same functions, same results.

Tests run both on the same inputs; the daemon imports the compiled one.
"""
import os


def parse_header(block: bytes):
    """The fields of one 512-byte ustar/GNU header block, or None for a checksum mismatch.

    Returns (name, mode, uid, gid, size, mtime, typeflag, linkname, devmajor, devminor);
    numbers are octal or GNU base-256; a ustar prefix is joined to the name.
    Raises ValueError for a malformed number field.
    """
    stored = _octal_or_256(block[148:156])
    unsigned = sum(block[:148]) + 256 + sum(block[156:512])
    if stored != unsigned:
        signed = sum(b - 256 if b > 127 else b for b in block[:148]) + 256 + \
            sum(b - 256 if b > 127 else b for b in block[156:512])
        if stored != signed:
            return None
    name = block[0:100].split(b"\0", 1)[0]
    if block[257:263] in (b"ustar\x00", b"ustar ") and block[345] != 0:
        name = block[345:500].split(b"\0", 1)[0] + b"/" + name
    typeflag = block[156:157]
    device = typeflag in (b"3", b"4")
    return (name.decode("utf-8", "surrogateescape"),
            _octal_or_256(block[100:108]), _octal_or_256(block[108:116]),
            _octal_or_256(block[116:124]), _octal_or_256(block[124:136]),
            _octal_or_256(block[136:148]), typeflag,
            block[157:257].split(b"\0", 1)[0].decode("utf-8", "surrogateescape"),
            _octal_or_256(block[329:337]) if device else 0,
            _octal_or_256(block[337:345]) if device else 0)


def _octal_or_256(field: bytes) -> int:
    if field and field[0] & 0x80:  # GNU base-256, two's complement when 0x40 is set
        value = int.from_bytes(field[1:], "big")
        if field[0] & 0x40:
            value -= 1 << (8 * (len(field) - 1) + 6)
        return value
    text = field.split(b"\0", 1)[0].strip(b" ")
    if text.strip(b"01234567"):
        raise ValueError("invalid octal number")
    return int(text, 8) if text else 0


_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC


def write_file(path: str, data, mode: int, uid: int, gid: int, chown: bool, chmod: bool,
               atime_ns: int, mtime_ns: int) -> None:
    """Create (or truncate) the regular file `path` (never through a symlink) with `data`,
    then fchown (if `chown`), fchmod (if `chmod`) and set its times. A failed open raises
    OSError naming the path; later steps raise it without (as the os functions do)."""
    fd = os.open(path, _WRITE_FLAGS, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if chown:
            os.fchown(fd, uid, gid)
        if chmod:
            os.fchmod(fd, mode)
        os.utime(fd, ns=(atime_ns, mtime_ns))
    finally:
        os.close(fd)


def write_files(batch):
    """write_file(*args) for each args of `batch` in order, up to the first that fails:
    returns (its index, its OSError), or (-1, None) when all were written."""
    for i, args in enumerate(batch):
        try:
            write_file(*args)
        except OSError as exc:
            return i, exc
    return -1, None
