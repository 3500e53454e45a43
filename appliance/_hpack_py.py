"""HPACK (RFC 7541) header block decoding for the gRPC server; pure-Python twin of
`appliance._hpack` (same class, same results, same errors). The daemon imports the
compiled one; tests run both on the same inputs (and python-hyper's `hpack` as an oracle).

    decoder = Decoder(max_header_list_size)
    decoder.decode(block) -> ((name, value), ...)   # bytes; raises HPACKError

The dynamic table is limited to 4096 bytes, the size we advertise (we never send
SETTINGS_HEADER_TABLE_SIZE); an encoder may only lower it.
"""
from __future__ import annotations

MAX_TABLE_SIZE = 4096
ENTRY_OVERHEAD = 32          # RFC 7541 §4.1
MAX_INTEGER_BYTES = 5        # continuation bytes of one integer, as python-hyper's hpack

_VALUED = {2: b"GET", 3: b"POST", 4: b"/", 5: b"/index.html", 6: b"http", 7: b"https",
           8: b"200", 9: b"204", 10: b"206", 11: b"304", 12: b"400", 13: b"404", 14: b"500",
           16: b"gzip, deflate"}
# RFC 7541 Appendix A, indices 1–61
STATIC = tuple((name.encode(), _VALUED.get(i, b"")) for i, name in enumerate((
    ":authority :method :method :path :path :scheme :scheme :status :status :status "
    ":status :status :status :status accept-charset accept-encoding accept-language "
    "accept-ranges accept access-control-allow-origin age allow authorization "
    "cache-control content-disposition content-encoding content-language content-length "
    "content-location content-range content-type cookie date etag expect expires from host "
    "if-match if-modified-since if-none-match if-range if-unmodified-since last-modified "
    "link location max-forwards proxy-authenticate proxy-authorization range referer "
    "refresh retry-after server set-cookie strict-transport-security transfer-encoding "
    "user-agent vary via www-authenticate").split(), start=1))

# RFC 7541 Appendix B: the code length of symbols 0–255 and EOS (256). The code is
# canonical (codes of a length are consecutive, in symbol order), so lengths define it.
HUFFMAN_LENGTHS = bytes.fromhex(
    "0d171c1c1c1c1c1c1c181e1c1c1e1c1c1c1c1c1c1c1c1e1c1c1c1c1c1c1c1c1c060a0a0c0d06080b0a0a08"
    "0b080606060505050606060606060607080f060c0a0d060707070707070707070707070707070707070707"
    "07070807080d130d0e060f05060506050606060507070606060506070605050607070707070f0b0e0d1c14"
    "16141416161617161717171717181718181617181717171715161716171718161514161617171517161618"
    "15161717151516151716171714161616171616171a1a1413161716191a1a1a1b1b1a181913151a1b1b1a1b"
    "1815151a1a1c1b1b1b14181415161515171616191918181a171a1b1a1a1b1b1b1b1b1c1b1b1b1b1b1a1e")
EOS = 256


class HPACKError(Exception):
    """A header block that cannot be decoded: a connection error (COMPRESSION_ERROR)."""


def huffman_tree() -> list[list[int]]:
    """The code as a binary tree: [left, right] per inner node (node 0 is the root);
    a child ≥ 0 is an inner node, a child < 0 is the leaf of symbol −child − 1."""
    order = sorted(range(EOS + 1), key=lambda s: (HUFFMAN_LENGTHS[s], s))
    tree = [[0, 0]]
    code, previous = -1, HUFFMAN_LENGTHS[order[0]]
    for symbol in order:
        length = HUFFMAN_LENGTHS[symbol]
        code = (code + 1) << (length - previous)
        previous = length
        node = 0
        for bit in range(length - 1, 0, -1):
            b = (code >> bit) & 1
            if tree[node][b] == 0:
                tree.append([0, 0])
                tree[node][b] = len(tree) - 1
            node = tree[node][b]
        tree[node][code & 1] = -symbol - 1
    return tree


def huffman_tables() -> tuple[list[tuple[int, int]], frozenset]:
    """Four bits at a time: for (node << 4 | nibble), (next node, symbol emitted or −1),
    or None where the bits spell EOS; and the nodes where a string may end (the root,
    or up to 7 bits of EOS's prefix: padding)."""
    tree = huffman_tree()
    table: list = []
    for start in range(len(tree)):
        for nibble in range(16):
            node, emitted = start, -1
            for shift in (3, 2, 1, 0):
                child = tree[node][(nibble >> shift) & 1]
                if child < 0:
                    emitted, node = -child - 1, 0
                    if emitted == EOS:
                        break
                else:
                    node = child
            table.append(None if emitted == EOS else (node, emitted))
    ends, node = {0}, 0
    for _ in range(7):
        node = tree[node][1]
        ends.add(node)
    return table, frozenset(ends)


_TABLES = None


def decode_huffman(data: bytes) -> bytes:
    global _TABLES
    if _TABLES is None:      # built on first use: start-up does not pay for it
        _TABLES = huffman_tables()
    table, ends = _TABLES
    out = bytearray()
    node = 0
    for byte in data:
        for nibble in (byte >> 4, byte & 15):
            step = table[node << 4 | nibble]
            if step is None:
                raise HPACKError("EOS in a Huffman-coded string")
            node, emitted = step
            if emitted >= 0:
                out.append(emitted)
    if node not in ends:
        raise HPACKError("bad padding of a Huffman-coded string")
    return bytes(out)


def _integer(block: bytes, pos: int, prefix_bits: int) -> tuple[int, int]:
    """The integer whose prefix is in block[pos] and the position after it."""
    limit = (1 << prefix_bits) - 1
    value = block[pos] & limit
    pos += 1
    if value < limit:
        return value, pos
    shift = 0
    for _ in range(MAX_INTEGER_BYTES):
        if pos >= len(block):
            raise HPACKError("truncated integer")
        byte = block[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    raise HPACKError("integer too long")


def _string(block: bytes, pos: int) -> tuple[bytes, int]:
    if pos >= len(block):
        raise HPACKError("truncated header block")
    huffman = block[pos] & 0x80
    length, pos = _integer(block, pos, 7)
    end = pos + length
    if end > len(block):
        raise HPACKError("truncated header block")
    data = block[pos:end]
    return (decode_huffman(data) if huffman else data), end


class Decoder:
    """One connection's decoding context (its dynamic table)."""

    def __init__(self, max_header_list_size: int):
        self.max_header_list_size = max_header_list_size
        self.table_limit = MAX_TABLE_SIZE   # as lowered by the encoder's size updates
        self._entries: list[tuple[bytes, bytes]] = []   # the dynamic table, newest last
        self._size = 0

    def _entry(self, index: int) -> tuple[bytes, bytes]:
        if 0 < index <= 61:
            return STATIC[index - 1]
        dynamic = index - 62
        if index == 0 or dynamic >= len(self._entries):
            raise HPACKError(f"invalid table index {index}")
        return self._entries[-1 - dynamic]

    def _add(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value) + ENTRY_OVERHEAD
        if size > self.table_limit:   # larger than the table: it empties the table
            self._entries.clear()
            self._size = 0
            return
        self._entries.append((name, value))
        self._size += size
        self._evict()

    def _evict(self) -> None:
        entries = self._entries
        while self._size > self.table_limit:
            name, value = entries.pop(0)
            self._size -= len(name) + len(value) + ENTRY_OVERHEAD

    def decode(self, block: bytes) -> tuple:
        headers = []
        pos, end, total = 0, len(block), 0
        while pos < end:
            first = block[pos]
            if first & 0x80:                          # indexed field
                index, pos = _integer(block, pos, 7)
                field = self._entry(index)
            elif first & 0xE0 == 0x20:                # dynamic table size update
                if headers:
                    raise HPACKError("table size update after a header field")
                size, pos = _integer(block, pos, 5)
                if size > MAX_TABLE_SIZE:
                    raise HPACKError(f"table size {size} above {MAX_TABLE_SIZE}")
                self.table_limit = size
                self._evict()
                continue
            else:                                     # literal field
                indexing = first & 0x40
                index, pos = _integer(block, pos, 6 if indexing else 4)
                if index:
                    name = self._entry(index)[0]
                else:
                    name, pos = _string(block, pos)
                value, pos = _string(block, pos)
                field = (name, value)
                if indexing:
                    self._add(name, value)
            headers.append(field)
            total += len(field[0]) + len(field[1]) + ENTRY_OVERHEAD
            if total > self.max_header_list_size:
                raise HPACKError(f"header list larger than {self.max_header_list_size}")
        return tuple(headers)
