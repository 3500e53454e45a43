"""Kubernetes' stream protocols over one upgraded connection, SPDY or WebSocket.

A `Session` is what exec, attach and port-forward see: input arriving per channel
(stdin, resize, port-forward data), output written per channel, and the end. The two
transports (`spdy_session.py`, `ws_session.py`) fill it in.

Channel numbers are the WebSocket ones (`k8s.io/apimachinery/pkg/util/remotecommand`):
0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize; port-forward uses 2n (data) and 2n+1
(error) for its n-th port. On SPDY, a channel is a stream named by its `streamType`.
"""
from __future__ import annotations

import asyncio
import collections
import json

STDIN, STDOUT, STDERR, ERROR, RESIZE = range(5)
STREAM_TYPES = {"stdin": STDIN, "stdout": STDOUT, "stderr": STDERR, "error": ERROR,
                "resize": RESIZE}

# SPDY: X-Stream-Protocol-Version values, ours first (kubelet's order)
SPDY_EXEC_PROTOCOLS = ("v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io",
                       "channel.k8s.io")
PORT_FORWARD_PROTOCOL = "portforward.k8s.io"
# WebSocket subprotocols: name → base64 text frames
WS_EXEC_PROTOCOLS = {"v5.channel.k8s.io": False, "v4.channel.k8s.io": False,
                     "v4.base64.channel.k8s.io": True, "channel.k8s.io": False,
                     "base64.channel.k8s.io": True}
WS_PORT_FORWARD_PROTOCOLS = {"v4.channel.k8s.io": False, "v4.base64.channel.k8s.io": True}
WS_CLOSE_SIGNAL = 255  # v5: [255, channel] closes the client's side of a channel

INPUT_CAP = 4 << 20  # bytes of one channel's input held before the connection stops reading


class Closed(Exception):
    """The connection is gone (peer closed, reset, idle timeout or server stop)."""


class InputQueue:
    """One channel's input: bytes, then None at its end. `get` reports what was taken (SPDY
    gives the peer's window back then), and `put` waits while INPUT_CAP bytes are held: a
    peer that keeps windows never gets there, so its WINDOW_UPDATEs are always read."""

    def __init__(self, taken):
        self.items: collections.deque = collections.deque()
        self.size = 0
        self.taken = taken
        self._more, self._room = asyncio.Event(), asyncio.Event()

    async def put(self, data: bytes | None) -> None:
        if data is None:
            self.end()
            return
        while self.size >= INPUT_CAP:
            self._room.clear()
            await self._room.wait()
        self.items.append(data)
        self.size += len(data)
        self._more.set()

    def end(self) -> None:
        self.items.append(None)
        self._more.set()

    async def get(self) -> bytes | None:
        while not self.items:
            self._more.clear()
            await self._more.wait()
        item = self.items.popleft()
        if item:
            self.size -= len(item)
            self._room.set()
            self.taken(len(item))
        return item


class Session:
    """Channels of one upgraded connection; subclasses write and close."""

    protocol: str = ""

    def __init__(self):
        self.inputs: dict = {}
        self.closed = asyncio.Event()

    def input(self, channel) -> InputQueue:
        """The queue of `channel`'s input: bytes, then None at its end."""
        queue = self.inputs.get(channel)
        if queue is None:
            queue = self.inputs[channel] = InputQueue(lambda n: self.taken(channel, n))
        return queue

    def taken(self, channel, n: int) -> None:
        """The application took `n` bytes of `channel`'s input."""

    async def deliver(self, channel, data: bytes | None) -> None:
        await self.input(channel).put(data)

    def end_inputs(self) -> None:
        for queue in self.inputs.values():
            queue.end()

    async def write(self, channel: int, data: bytes) -> None:
        raise NotImplementedError

    async def close_channel(self, channel: int) -> None:
        """Our side of `channel` is done (SPDY: FIN; WebSocket: nothing to say)."""

    async def finish(self) -> None:
        """Everything written: close the connection in good order."""
        raise NotImplementedError


def status_json(exit_code: int | None, cmd: list[str], error: str = "") -> bytes:
    """The v1 Status kubelet writes on the error channel (field order as Go's encoder)."""
    if error:
        status = {"metadata": {}, "status": "Failure",
                  "message": f"Internal error occurred: {error}", "reason": "InternalError",
                  "details": {"causes": [{"message": error}]}, "code": 500}
    elif exit_code:
        status = {"metadata": {}, "status": "Failure", "message": failure_message(exit_code, cmd),
                  "reason": "NonZeroExitCode",
                  "details": {"causes": [{"reason": "ExitCode", "message": str(exit_code)}]}}
    else:
        status = {"metadata": {}, "status": "Success"}
    return json.dumps(status, separators=(",", ":")).encode()


def failure_message(exit_code: int, cmd: list[str]) -> str:
    return (f"command terminated with non-zero exit code: error executing command "
            f"[{' '.join(cmd)}], exit code {exit_code}")


def parse_sizes(buffer: bytearray) -> list[tuple[int, int]]:
    """Whole `{"Width":w,"Height":h}` objects at the start of `buffer` (consumed)."""
    out = []
    decoder = json.JSONDecoder()
    text = buffer.decode("utf-8", "replace")
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            break
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            if len(text) - pos > 4096:  # garbage, not a partial object
                pos = len(text)
            break
        if isinstance(obj, dict):
            try:
                out.append((int(obj.get("Width", 0)), int(obj.get("Height", 0))))
            except (TypeError, ValueError):
                pass
    del buffer[:len(text[:pos].encode())]
    return out
