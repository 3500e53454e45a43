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
from cpython.mem cimport PyMem_Malloc, PyMem_Free

cdef extern from "<fcntl.h>" nogil:
    enum: O_NOFOLLOW
    enum: O_CLOEXEC

cdef extern from "<sys/stat.h>" nogil:
    int futimens(int fd, const timespec times[2])


cdef struct _File:
    const char *path
    const unsigned char *buf
    Py_ssize_t size
    int mode
    unsigned int uid, gid
    bint chown, chmod
    timespec times[2]


cdef int _write_one(_File *f, int *opened) noexcept nogil:
    """open, write, fchown, fchmod, futimens, close; 0 or the errno (opened: open worked)."""
    cdef int fd, err = 0
    cdef const unsigned char *buf = f.buf
    cdef Py_ssize_t left = f.size, n
    opened[0] = 0
    while True:
        fd = c_open(f.path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, f.mode)
        if fd >= 0 or errno != EINTR:
            break
    if fd < 0:
        return errno
    opened[0] = 1
    while left > 0:
        n = c_write(fd, buf, left)
        if n < 0:
            if errno == EINTR:
                continue
            err = errno
            break
        buf += n
        left -= n
    if not err and f.chown and c_fchown(fd, f.uid, f.gid) < 0:
        err = errno
    if not err and f.chmod and c_fchmod(fd, f.mode) < 0:
        err = errno
    if not err and futimens(fd, f.times) < 0:
        err = errno
    c_close(fd)
    return err


cdef object _fill(_File *f, tuple args, list keep):
    """The C view of write_file's arguments; `keep` holds what the pointers point into."""
    path, data, mode, uid, gid, chown, chmod, atime_ns, mtime_ns = args
    cdef bytes cpath = _os.fsencode(path)
    cdef const unsigned char[:] view = data
    cdef long long atime = atime_ns, mtime = mtime_ns
    if chown and not (0 <= uid <= 0xFFFFFFFE and 0 <= gid <= 0xFFFFFFFE):
        raise OverflowError("uid or gid out of range")   # as os.fchown
    keep.append(cpath)
    keep.append(view)
    f.path = cpath
    f.buf = &view[0] if view.shape[0] else NULL
    f.size = view.shape[0]
    f.mode = mode
    f.uid, f.gid = (uid, gid) if chown else (0, 0)
    f.chown, f.chmod = chown, chmod
    f.times[0].tv_sec, f.times[0].tv_nsec = atime // 1000000000, atime % 1000000000
    f.times[1].tv_sec, f.times[1].tv_nsec = mtime // 1000000000, mtime % 1000000000


cdef object _error(int err, int opened, str path):
    if not opened:
        return OSError(err, _os.strerror(err), path)
    return OSError(err, _os.strerror(err))


cpdef write_file(str path, data, int mode, long uid, long gid, bint chown, bint chmod,
                 long long atime_ns, long long mtime_ns):
    """Compiled twin of `_core_py.write_file`: the same syscalls, one GIL release."""
    cdef _File f
    cdef int err, opened
    keep = []
    _fill(&f, (path, data, mode, uid, gid, chown, chmod, atime_ns, mtime_ns), keep)
    with nogil:
        err = _write_one(&f, &opened)
    if err:
        raise _error(err, opened, path)


cpdef tuple write_files(list batch):
    """Compiled twin of `_core_py.write_files`: the whole batch under one GIL release."""
    cdef Py_ssize_t n = len(batch), i, done = n
    cdef _File *files = <_File *> PyMem_Malloc(max(n, 1) * sizeof(_File))
    cdef int err = 0, opened = 0
    if files == NULL:
        raise MemoryError()
    keep = []
    try:
        for i in range(n):
            _fill(&files[i], batch[i], keep)
        with nogil:
            for i in range(n):
                err = _write_one(&files[i], &opened)
                if err:
                    done = i
                    break
    finally:
        PyMem_Free(files)
    if err:
        return done, _error(err, opened, batch[done][0])
    return -1, None
