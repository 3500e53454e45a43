# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled HPACK decoding; `appliance._hpack_py` is the pure twin (the docs, the
tables' source, the same algorithm: four bits of Huffman code at a time)."""

from ._hpack_py import EOS, STATIC, HPACKError, huffman_tree
from . import _hpack_py

# the twin's constants as C values
cdef Py_ssize_t ENTRY_OVERHEAD = _hpack_py.ENTRY_OVERHEAD
cdef int MAX_INTEGER_BYTES = _hpack_py.MAX_INTEGER_BYTES
cdef long long MAX_TABLE_SIZE = _hpack_py.MAX_TABLE_SIZE

# (node << 4 | nibble) → next node, symbol emitted (−1: none; −2: EOS, an error)
cdef short _next[256 * 16]
cdef short _emit[256 * 16]
cdef bint _end[256]


cdef void _build(list tree):
    cdef int start, nibble, shift, node, emitted, child
    for start in range(len(tree)):
        for nibble in range(16):
            node, emitted = start, -1
            for shift in range(3, -1, -1):
                child = tree[node][(nibble >> shift) & 1]
                if child < 0:
                    emitted, node = -child - 1, 0
                    if emitted == EOS:
                        emitted = -2
                        break
                else:
                    node = child
            _next[start << 4 | nibble] = node
            _emit[start << 4 | nibble] = emitted
    for node in range(256):
        _end[node] = False
    node = 0
    _end[0] = True
    for shift in range(7):
        node = tree[node][1]
        _end[node] = True


_build(huffman_tree())


cdef bytes _huffman(const unsigned char[:] data, Py_ssize_t start, Py_ssize_t end):
    cdef bytearray out = bytearray((end - start) * 8 // 5)   # codes are ≥ 5 bits
    cdef unsigned char *o = out
    cdef Py_ssize_t n = 0, i
    cdef int node = 0, step, nibble
    for i in range(2 * start, 2 * end):
        nibble = data[i >> 1] >> 4 if not i & 1 else data[i >> 1] & 15
        step = node << 4 | nibble
        if _emit[step] == -2:
            raise HPACKError("EOS in a Huffman-coded string")
        if _emit[step] >= 0:
            o[n] = <unsigned char> _emit[step]
            n += 1
        node = _next[step]
    if not _end[node]:
        raise HPACKError("bad padding of a Huffman-coded string")
    return bytes(out[:n])


def decode_huffman(bytes data):
    return _huffman(data, 0, len(data))


cdef class Decoder:
    cdef public Py_ssize_t max_header_list_size
    cdef public Py_ssize_t table_limit
    cdef list _entries
    cdef Py_ssize_t _size

    def __init__(self, Py_ssize_t max_header_list_size):
        self.max_header_list_size = max_header_list_size
        self.table_limit = MAX_TABLE_SIZE
        self._entries = []
        self._size = 0

    cdef tuple _entry(self, long long index):
        cdef Py_ssize_t dynamic
        if 0 < index <= 61:
            return <tuple> STATIC[index - 1]
        dynamic = <Py_ssize_t> (index - 62)
        if index == 0 or index - 62 >= len(self._entries):
            raise HPACKError(f"invalid table index {index}")
        return <tuple> self._entries[len(self._entries) - 1 - dynamic]

    cdef _add(self, bytes name, bytes value):
        cdef Py_ssize_t size = len(name) + len(value) + ENTRY_OVERHEAD
        if size > self.table_limit:
            self._entries.clear()
            self._size = 0
            return
        self._entries.append((name, value))
        self._size += size
        self._evict()

    cdef _evict(self):
        cdef tuple entry
        while self._size > self.table_limit:
            entry = <tuple> self._entries.pop(0)
            self._size -= len(<bytes> entry[0]) + len(<bytes> entry[1]) + ENTRY_OVERHEAD

    def decode(self, bytes block):
        cdef const unsigned char[:] b = block
        cdef Py_ssize_t pos = 0, end = len(block), total = 0
        cdef long long index, size
        cdef int first
        cdef list headers = []
        cdef tuple field
        cdef bytes name, value
        while pos < end:
            first = b[pos]
            if first & 0x80:
                index = _integer(b, &pos, 7)
                field = self._entry(index)
            elif first & 0xE0 == 0x20:
                if headers:
                    raise HPACKError("table size update after a header field")
                size = _integer(b, &pos, 5)
                if size > MAX_TABLE_SIZE:
                    raise HPACKError(f"table size {size} above {MAX_TABLE_SIZE}")
                self.table_limit = <Py_ssize_t> size
                self._evict()
                continue
            else:
                index = _integer(b, &pos, 6 if first & 0x40 else 4)
                if index:
                    name = <bytes> self._entry(index)[0]
                else:
                    name = _string(block, b, &pos)
                value = _string(block, b, &pos)
                field = (name, value)
                if first & 0x40:
                    self._add(name, value)
            headers.append(field)
            total += len(<bytes> field[0]) + len(<bytes> field[1]) + ENTRY_OVERHEAD
            if total > self.max_header_list_size:
                raise HPACKError(f"header list larger than {self.max_header_list_size}")
        return tuple(headers)


cdef long long _integer(const unsigned char[:] b, Py_ssize_t *pos, int prefix_bits) except -1:
    cdef long long limit = (1 << prefix_bits) - 1
    cdef long long value = b[pos[0]] & limit
    cdef int shift = 0, i, byte
    pos[0] += 1
    if value < limit:
        return value
    for i in range(MAX_INTEGER_BYTES):
        if pos[0] >= b.shape[0]:
            raise HPACKError("truncated integer")
        byte = b[pos[0]]
        pos[0] += 1
        value += (<long long> (byte & 0x7F)) << shift
        if byte < 0x80:
            return value
        shift += 7
    raise HPACKError("integer too long")


cdef bytes _string(bytes block, const unsigned char[:] b, Py_ssize_t *pos):
    cdef bint huffman
    cdef long long length
    cdef Py_ssize_t start
    if pos[0] >= b.shape[0]:
        raise HPACKError("truncated header block")
    huffman = b[pos[0]] & 0x80
    length = _integer(b, pos, 7)
    start = pos[0]
    if length > b.shape[0] - start:
        raise HPACKError("truncated header block")
    pos[0] = start + <Py_ssize_t> length
    if huffman:
        return _huffman(b, start, pos[0])
    return block[start:pos[0]]
