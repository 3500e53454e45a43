# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled hot loops of the layer-apply path; `appliance._core_py` is the pure twin."""


cdef object _octal_or_256(const unsigned char[:] f):
    cdef Py_ssize_t i = 0, n = f.shape[0]
    cdef long long value = 0
    cdef bint seen = False
    if n and f[0] & 0x80:
        value_obj = int.from_bytes(bytes(f[1:]), "big")
        if f[0] & 0x40:  # negative: two's complement (Python ints, no C overflow)
            value_obj -= (<object>1) << (8 * (n - 1) + 6)
        return value_obj
    while i < n and f[i] == 32:
        i += 1
    while i < n and f[i] != 0 and f[i] != 32:
        if f[i] < 48 or f[i] > 55:
            raise ValueError("invalid octal number")
        value = value * 8 + (f[i] - 48)
        seen = True
        i += 1
    while i < n and f[i] == 32:
        i += 1
    if i < n and f[i] != 0:
        raise ValueError("invalid octal number")
    return value


cdef str _cstr(const unsigned char[:] f):
    cdef Py_ssize_t n = 0
    while n < f.shape[0] and f[n] != 0:
        n += 1
    return bytes(f[:n]).decode("utf-8", "surrogateescape")


cpdef object parse_header(bytes block):
    """Compiled twin of `_core_py.parse_header` (same fields, same errors)."""
    cdef const unsigned char[:] b = block
    cdef long long unsigned_sum = 256, signed_sum = 256, stored
    cdef Py_ssize_t i
    for i in range(148):
        unsigned_sum += b[i]
        signed_sum += <signed char> b[i]
    for i in range(156, 512):
        unsigned_sum += b[i]
        signed_sum += <signed char> b[i]
    stored = _octal_or_256(b[148:156])
    if stored != unsigned_sum and stored != signed_sum:
        return None
    name = _cstr(b[0:100])
    if (block[257:263] == b"ustar\x00" or block[257:263] == b"ustar ") and b[345] != 0:
        name = _cstr(b[345:500]) + "/" + name
    typeflag = block[156:157]
    device = typeflag == b"3" or typeflag == b"4"
    return (name, _octal_or_256(b[100:108]), _octal_or_256(b[108:116]),
            _octal_or_256(b[116:124]), _octal_or_256(b[124:136]), _octal_or_256(b[136:148]),
            typeflag, _cstr(b[157:257]),
            _octal_or_256(b[329:337]) if device else 0,
            _octal_or_256(b[337:345]) if device else 0)


# --- one regular file of a layer, written without the GIL -----------------------------

from libc.errno cimport errno, EINTR
from posix.fcntl cimport open as c_open, O_WRONLY, O_CREAT, O_TRUNC
from posix.unistd cimport write as c_write, close as c_close, fchown as c_fchown
from posix.stat cimport fchmod as c_fchmod
from posix.time cimport timespec
import os as _os

cdef extern from "<fcntl.h>" nogil:
    enum: O_NOFOLLOW
    enum: O_CLOEXEC

cdef extern from "<sys/stat.h>" nogil:
    int futimens(int fd, const timespec times[2])


cpdef write_file(str path, const unsigned char[:] data, int mode, long uid, long gid,
                 bint chown, bint chmod, long long atime_ns, long long mtime_ns):
    """Compiled twin of `_core_py.write_file`: the same syscalls, one GIL release."""
    cdef bytes cpath = _os.fsencode(path)
    cdef const char *p = cpath
    cdef const unsigned char *buf = &data[0] if data.shape[0] else NULL
    cdef Py_ssize_t left = data.shape[0], n
    cdef int fd, err = 0, step = 0
    cdef timespec times[2]
    times[0].tv_sec = atime_ns // 1000000000
    times[0].tv_nsec = atime_ns % 1000000000
    times[1].tv_sec = mtime_ns // 1000000000
    times[1].tv_nsec = mtime_ns % 1000000000
    with nogil:
        while True:
            fd = c_open(p, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, mode)
            if fd >= 0 or errno != EINTR:
                break
        if fd < 0:
            err = errno
        else:
            step = 1
            while left > 0:
                n = c_write(fd, buf, left)
                if n < 0:
                    if errno == EINTR:
                        continue
                    err = errno
                    break
                buf += n
                left -= n
            if not err and chown and c_fchown(fd, uid, gid) < 0:
                err = errno
            if not err and chmod and c_fchmod(fd, mode) < 0:
                err = errno
            if not err and futimens(fd, times) < 0:
                err = errno
            c_close(fd)
    if err:
        if step == 0:
            raise OSError(err, _os.strerror(err), path)
        raise OSError(err, _os.strerror(err))
