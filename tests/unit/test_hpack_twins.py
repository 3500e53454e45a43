"""The compiled HPACK decoder (appliance._hpack) gives the same results and errors as its
pure-Python twin (appliance._hpack_py), and both decode as python-hyper's `hpack` does
(hypothesis-generated header lists and garbage)."""
import hpack
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hypothesis import given, settings, strategies as st

from appliance import _hpack, _hpack_py

LIMIT = 1 << 20
names = st.sampled_from([b":method", b":path", b":authority", b"content-type", b"te",
                         b"grpc-timeout", b"user-agent", b"containerd-namespace", b"x-bin"]) | \
    st.binary(min_size=1, max_size=40)
values = st.binary(max_size=300)
header_lists = st.lists(st.tuples(names, values, st.booleans()), max_size=12)


def _result(decoder, block):
    try:
        return decoder.decode(block)
    except _hpack_py.HPACKError:
        return "error"


def _oracle(decoder, block):
    try:
        return tuple((bytes(n), bytes(v)) for n, v in decoder.decode(block, raw=True))
    except hpack.HPACKError:   # (OversizedHeaderListError, InvalidTableIndex, ... too)
        return "error"


def test_tables_are_rfc_7541s():
    assert _hpack_py.HUFFMAN_LENGTHS == bytes(REQUEST_CODES_LENGTH)
    assert _hpack_py.STATIC == hpack.table.HeaderTable.STATIC_TABLE
    assert len(REQUEST_CODES) == _hpack_py.EOS + 1


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(header_lists, st.booleans(), st.sampled_from([None, 0, 100, 4096])),
                min_size=1, max_size=6))
def test_blocks_of_an_encoder_decode_alike(blocks):
    """One connection: several blocks, indexed and literal fields, Huffman or not,
    never-indexed fields, table size updates."""
    encoder = hpack.Encoder()
    compiled, pure, oracle = _hpack.Decoder(LIMIT), _hpack_py.Decoder(LIMIT), hpack.Decoder()
    oracle.max_header_list_size = LIMIT
    for fields, huffman, table_size in blocks:
        if table_size is not None:
            encoder.header_table_size = table_size
        block = encoder.encode([hpack.NeverIndexedHeaderTuple(n, v) if never else (n, v)
                                for n, v, never in fields], huffman=huffman)
        got = _result(compiled, block)
        assert got == _result(pure, block) == _oracle(oracle, block)
        assert got == tuple((n, v) for n, v, _ in fields)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=64), st.binary(max_size=64), st.integers(0, 300))
def test_garbage_decodes_alike(primer, block, limit):
    """Arbitrary bytes after an arbitrary first block, under a small list limit: the
    same headers or an error in all three."""
    decoders = [_hpack.Decoder(limit), _hpack_py.Decoder(limit)]
    oracle = hpack.Decoder()
    oracle.max_header_list_size = limit
    first = [_result(d, primer) for d in decoders]
    assert first[0] == first[1] == _oracle(oracle, primer)
    if first[0] == "error":
        return   # a decoder after an error is not used again (the connection closes)
    assert _result(decoders[0], block) == _result(decoders[1], block) == \
        _oracle(oracle, block)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_huffman_strings(data):
    encoded = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH).encode(data)
    assert _hpack.decode_huffman(encoded) == _hpack_py.decode_huffman(encoded) == data


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=40))
def test_huffman_garbage(data):
    """EOS inside a string and padding that is not 1–7 bits of EOS's prefix are errors."""
    results = []
    for fn in (_hpack.decode_huffman, _hpack_py.decode_huffman,
               hpack.huffman_table.decode_huffman):
        try:
            results.append(fn(data))
        except (_hpack_py.HPACKError, hpack.HPACKDecodingError):
            results.append("error")
    assert results[0] == results[1] == results[2]
