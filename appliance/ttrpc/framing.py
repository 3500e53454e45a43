"""TTRPC wire format, sans I/O: frame header codec, incremental decoder, messages.

A frame is a 10-byte header -- big-endian uint32 payload length, uint32 stream
id, uint8 type, uint8 flags -- followed by the payload (a protobuf message): a Request
(service, method, payload, timeout_nano, metadata) or a Response (google.rpc.Status,
payload). Client stream ids are odd; there is no handshake on the wire (containerd/ttrpc
1.1's channel.go and types.go, PROTOCOL.md upstream).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.rpc import status_pb2

HEADER = struct.Struct(">IIBB")
HEADER_LENGTH = HEADER.size  # 10
MAX_PAYLOAD = 4 << 20  # ttrpc's messageLengthMax; exactly 4 MiB is still allowed

# Frame types.
REQUEST = 0x1
RESPONSE = 0x2
DATA = 0x3

# Flags: on REQUEST frames 0x1/0x2, on DATA frames 0x1/0x4. Zero means unary.
FLAG_REMOTE_CLOSED = 0x1
FLAG_REMOTE_OPEN = 0x2
FLAG_NO_DATA = 0x4

# The request metadata key that carries the containerd namespace (gRPC's is
# "containerd-namespace").
NAMESPACE_KEY = "containerd-namespace-ttrpc"


@dataclass(frozen=True)
class Frame:
    stream_id: int
    type: int
    flags: int = 0
    payload: bytes = b""


class FrameTooLarge(Exception):
    """A frame whose payload exceeds MAX_PAYLOAD; its payload is skipped, not read."""

    def __init__(self, stream_id: int, length: int, frame_type: int = 0, flags: int = 0):
        # Same wording as ttrpc's ResourceExhausted status, which peers may log.
        super().__init__(f"message length {length} exceed maximum message size of {MAX_PAYLOAD}")
        self.stream_id = stream_id
        self.length = length
        self.type = frame_type
        self.flags = flags


def encode_frame(stream_id: int, frame_type: int, payload: bytes = b"", flags: int = 0) -> bytes:
    """Header + payload; raises FrameTooLarge rather than send what a peer would reject."""
    if len(payload) > MAX_PAYLOAD:
        raise FrameTooLarge(stream_id, len(payload), frame_type, flags)
    return HEADER.pack(len(payload), stream_id, frame_type, flags) + payload


class FrameDecoder:
    """Incremental decoder: feed it bytes as they arrive, in chunks of any size.

    ``feed`` returns the frames completed so far, in stream order. An oversized
    frame shows up in that list as a FrameTooLarge instance (not raised), at the
    position where it occurred, so frames around it in the same chunk are kept;
    its payload is then discarded as it arrives, and decoding carries on after
    it -- the connection stays usable, as with ttrpc's channel.recv.
    """

    def __init__(self, max_payload: int = MAX_PAYLOAD):
        self._max = max_payload
        self._buf = bytearray()
        self._skip = 0  # bytes of an oversized payload still to throw away

    def feed(self, data: bytes) -> list[Frame | FrameTooLarge]:
        self._buf += data
        out: list[Frame | FrameTooLarge] = []
        while True:
            if self._skip:
                n = min(self._skip, len(self._buf))
                del self._buf[:n]
                self._skip -= n
                if self._skip:
                    return out
            if len(self._buf) < HEADER_LENGTH:
                return out
            length, stream_id, frame_type, flags = HEADER.unpack_from(self._buf)
            if length > self._max:
                del self._buf[:HEADER_LENGTH]
                self._skip = length
                out.append(FrameTooLarge(stream_id, length, frame_type, flags))
                continue
            end = HEADER_LENGTH + length
            if len(self._buf) < end:
                return out
            out.append(Frame(stream_id, frame_type, flags, bytes(self._buf[HEADER_LENGTH:end])))
            del self._buf[:end]

    @property
    def pending(self) -> int:
        """Bytes buffered for an incomplete frame (0 at a frame boundary)."""
        return len(self._buf) + self._skip


# --- messages (package ttrpc) ------------------------------------------------
# Built from a descriptor at import time so no generated file is needed. They go
# into the default pool next to google.rpc.Status, so Response.status is a real
# status_pb2.Status.

_FILE = "appliance/ttrpc/ttrpc.proto"


def _camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(w.title() for w in rest)


def _build_file() -> descriptor_pb2.FileDescriptorProto:
    F = descriptor_pb2.FieldDescriptorProto
    fd = descriptor_pb2.FileDescriptorProto(
        name=_FILE, package="ttrpc", syntax="proto3",
        dependency=[status_pb2.DESCRIPTOR.name])

    def message(name, *fields):
        m = fd.message_type.add(name=name)
        for number, (fname, ftype, *type_name) in enumerate(fields, start=1):
            repeated = fname.endswith("[]")
            fname = fname.removesuffix("[]")
            f = m.field.add(name=fname, number=number, type=ftype, json_name=_camel(fname),
                            label=F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL)
            if type_name:  # message fields only; it must stay unset otherwise
                f.type_name = type_name[0]

    message("Request",
            ("service", F.TYPE_STRING),
            ("method", F.TYPE_STRING),
            ("payload", F.TYPE_BYTES),
            ("timeout_nano", F.TYPE_INT64),
            ("metadata[]", F.TYPE_MESSAGE, ".ttrpc.KeyValue"))
    message("Response",
            ("status", F.TYPE_MESSAGE, ".google.rpc.Status"),
            ("payload", F.TYPE_BYTES))
    message("KeyValue",
            ("key", F.TYPE_STRING),
            ("value", F.TYPE_STRING))
    return fd


def _file_descriptor():
    pool = descriptor_pool.Default()
    try:  # already added (e.g. module reloaded)
        return pool.FindFileByName(_FILE)
    except KeyError:
        pool.Add(_build_file())
        return pool.FindFileByName(_FILE)


_fd = _file_descriptor()
Request = message_factory.GetMessageClass(_fd.message_types_by_name["Request"])
Response = message_factory.GetMessageClass(_fd.message_types_by_name["Response"])
KeyValue = message_factory.GetMessageClass(_fd.message_types_by_name["KeyValue"])
Status = status_pb2.Status
