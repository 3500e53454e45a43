"""Shared by the HTTP/2 tests: hypothesis strategies for client frames (malformed ones too)
and the `h2_twin` fixture, which runs a test on each twin of h2's Connection and events
(the compiled grpcserver._h2 and the pure grpcserver._h2_py)."""
import struct

import hpack
import pytest
from hypothesis import strategies as st

from appliance.grpcserver import _h2, _h2_py, h2

TWINS = {"compiled": _h2, "pure": _h2_py}

stream_ids = st.sampled_from([0, 1, 2, 3, 5, 7, 9, 0x7FFFFFFF])
header_blocks = st.lists(
    st.tuples(st.sampled_from([b":path", b":method", b"te", b"grpc-timeout", b"x-bin",
                               b"content-type"]), st.binary(max_size=20)),
    max_size=4).map(lambda fields: hpack.Encoder().encode(fields))
payloads = st.one_of(
    st.binary(max_size=40),
    header_blocks,
    st.integers(0, 2 ** 32 - 1).map(struct.Struct(">I").pack),  # WINDOW_UPDATE, RST_STREAM
    st.lists(st.tuples(st.integers(0, 8), st.integers(0, 2 ** 32 - 1)), max_size=3).map(
        lambda pairs: b"".join(struct.pack(">HI", k, v) for k, v in pairs)),  # SETTINGS
    st.integers(0, h2.DEFAULT_FRAME_SIZE).map(lambda n: b"\0" * n),  # large frames
)


@st.composite
def frames(draw):
    kind = draw(st.integers(0, 11))
    flags = draw(st.one_of(st.sampled_from([0, 0x1, 0x4, 0x5, 0x8, 0x20, 0x25, 0x2D]),
                           st.integers(0, 255)))
    wire = h2.frame(kind, flags, draw(stream_ids), draw(payloads))
    return wire * draw(st.sampled_from([1, 1, 1, 2, 80, 600]))  # floods too


@st.composite
def header_chains(draw):
    """A request's header block over HEADERS and CONTINUATION frames, maybe endless."""
    stream_id, block = draw(st.sampled_from([1, 3, 5])), draw(header_blocks)
    cut = draw(st.integers(0, len(block)))
    flags = draw(st.sampled_from([0, h2.END_STREAM]))
    wire = h2.frame(h2.HEADERS, flags, stream_id, block[:cut])
    if draw(st.booleans()):
        return wire + h2.frame(h2.CONTINUATION, h2.END_HEADERS, stream_id, block[cut:])
    return wire + h2.frame(h2.CONTINUATION, 0, stream_id, b"\0" * h2.DEFAULT_FRAME_SIZE) * 70


def split(wire: bytes, cuts: list) -> list:
    """`wire` in reads ending at `cuts` (taken modulo its length)."""
    bounds = [0, *sorted(c % (len(wire) + 1) for c in cuts), len(wire)]
    return [wire[start:end] for start, end in zip(bounds, bounds[1:])]


@pytest.fixture(params=list(TWINS))
def h2_twin(request, monkeypatch):
    """h2's Connection and events (and so the server's) are those of one twin."""
    twin = TWINS[request.param]
    for name in ("Connection", "Data", "GoAway", "Request", "Reset", "WindowOpened"):
        monkeypatch.setattr(h2, name, getattr(twin, name))
    return twin
