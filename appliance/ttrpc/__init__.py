"""containerd's TTRPC protocol (the shim <-> daemon transport), in asyncio."""
from .client import TTRPCClient
from .framing import (DATA, FLAG_NO_DATA, FLAG_REMOTE_CLOSED, FLAG_REMOTE_OPEN, HEADER_LENGTH,
                      MAX_PAYLOAD, NAMESPACE_KEY, REQUEST, RESPONSE, Frame, FrameDecoder,
                      FrameTooLarge, KeyValue, Request, Response, Status, encode_frame)
from .server import CallContext, Handler, TTRPCServer, peer_credentials, require_same_user

__all__ = [
    "TTRPCClient", "TTRPCServer", "CallContext", "Handler", "NAMESPACE_KEY",
    "peer_credentials", "require_same_user",
    "Frame", "FrameDecoder", "FrameTooLarge", "encode_frame", "HEADER_LENGTH", "MAX_PAYLOAD",
    "REQUEST", "RESPONSE", "DATA", "FLAG_REMOTE_CLOSED", "FLAG_REMOTE_OPEN", "FLAG_NO_DATA",
    "Request", "Response", "KeyValue", "Status",
]
