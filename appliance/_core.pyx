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
