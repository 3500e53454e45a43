"""The streaming server: one port, `/exec|attach|portforward/<token>`, SPDY or WebSocket.

The request line and headers are read with h11; a WebSocket upgrade is handed to the
`websockets` package's sans-I/O ServerProtocol, a SPDY/3.1 upgrade to our `spdy`
module. Tokens are single-use and expire (kubelet's streaming cache: 8 characters,
one minute, at most 1000 waiting).
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import secrets
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import h11

from ...errdefs import ResourceExhausted
from . import channels
from .sessions import SpdySession, WsSession

log = logging.getLogger("appliance.cri.streaming")

TOKEN_TTL = 60.0
MAX_IN_FLIGHT = 1000
HEADER_TIMEOUT = 30.0      # seconds for a client to send its request
MAX_REQUEST = 64 * 1024    # bytes of request line and headers
_PATH = re.compile(r"/(exec|attach|portforward)/([A-Za-z0-9_-]+)")


class TokenCache:
    """Requests waiting for their URL to be used, each once, for TOKEN_TTL seconds."""

    def __init__(self):
        self._entries: dict[str, tuple[float, str, object]] = {}

    def insert(self, kind: str, request) -> str:
        now = time.monotonic()
        for token in [t for t, (exp, _, _) in self._entries.items() if exp <= now]:
            del self._entries[token]
        if len(self._entries) >= MAX_IN_FLIGHT:
            raise ResourceExhausted("maximum number of in-flight requests exceeded")
        while True:
            token = base64.urlsafe_b64encode(secrets.token_bytes(6)).decode()
            if token not in self._entries:
                break
        self._entries[token] = (now + TOKEN_TTL, kind, request)
        return token

    def consume(self, kind: str, token: str):
        entry = self._entries.pop(token, None)
        if entry is None or entry[0] <= time.monotonic() or entry[1] != kind:
            return None
        return entry[2]


@dataclass
class Upgrade:
    """What a handler gets: the request's query and the upgraded session."""
    query: dict[str, list[str]]
    session: object
    websocket: bool


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> list[str]:
    return [v.decode("latin-1").strip() for k, v in headers if k.lower() == name]


def _tokens(values: list[str]) -> list[str]:
    return [p.strip() for v in values for p in v.split(",") if p.strip()]


class StreamServer:
    """Serves upgraded connections with `handlers[kind](request, upgrade)`."""

    def __init__(self, handlers: dict, idle_timeout: float, ssl_context=None):
        self.handlers = handlers
        self.idle_timeout = idle_timeout
        self.ssl_context = ssl_context
        self.tokens = TokenCache()
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[asyncio.Task] = set()
        self.base_url = ""

    async def start(self, address: str, port: int) -> None:
        self._server = await asyncio.start_server(self._connection, address, port,
                                                  ssl=self.ssl_context)
        host, bound = self._server.sockets[0].getsockname()[:2]
        scheme = "https" if self.ssl_context else "http"
        shown = f"[{host}]" if ":" in host else host
        self.base_url = f"{scheme}://{shown}:{bound}"

    def url(self, kind: str, request) -> str:
        return f"{self.base_url}/{kind}/{self.tokens.insert(kind, request)}"

    async def serve(self) -> None:
        """Run until cancelled (the supervisor's task); then end every connection."""
        try:
            await self._server.serve_forever()
        finally:
            self._server.close()
            for task in list(self._connections):
                task.cancel()
            if self._connections:
                await asyncio.wait(list(self._connections), timeout=2.0)

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._connections.add(task)
        try:
            await self._serve_one(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError) as exc:
            log.debug("streaming connection: %r", exc)
        except Exception:
            log.exception("streaming connection failed")
        finally:
            self._connections.discard(task)
            writer.close()

    async def _read_request(self, reader, http: h11.Connection) -> tuple[h11.Request, bytes]:
        raw = bytearray()
        while True:
            event = http.next_event()
            if isinstance(event, h11.Request):
                return event, bytes(raw)
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                if not data or len(raw) + len(data) > MAX_REQUEST:
                    raise ConnectionError("incomplete or oversized request")
                raw += data
                http.receive_data(data)
            else:
                raise ConnectionError(f"unexpected {event!r}")

    async def _serve_one(self, reader, writer) -> None:
        http = h11.Connection(h11.SERVER)
        try:
            request, raw = await asyncio.wait_for(self._read_request(reader, http),
                                                  HEADER_TIMEOUT)
        except h11.RemoteProtocolError as exc:
            body = f"bad request: {exc}\n".encode()
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8"
                         b"\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(body), body))
            await writer.drain()
            return
        target = urlsplit(request.target.decode("latin-1"))
        match = _PATH.fullmatch(target.path)
        if match is None or request.method not in (b"GET", b"POST"):
            await self._reply(writer, http, 404, "404 page not found\n")
            return
        kind, token = match.groups()
        cached = self.tokens.consume(kind, token)
        if cached is None:
            await self._reply(writer, http, 404, "404 page not found\n")
            return
        query = parse_qs(target.query)
        upgrade = [u.lower() for u in _tokens(_header(request.headers, b"upgrade"))]
        if "websocket" in upgrade:
            session = await self._websocket(kind, raw, reader, writer)
            websocket = True
        else:
            session = await self._spdy(kind, request, http, reader, writer)
            websocket = False
        if session is None:
            return
        readers = [asyncio.ensure_future(session.run(http.trailing_data[0]
                                                     if not websocket else b"")),
                   asyncio.ensure_future(session.watch_idle())]
        try:
            await self.handlers[kind](cached, Upgrade(query, session, websocket))
        finally:
            session.closed.set()
            for task in readers:
                task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(*readers, return_exceptions=True)

    async def _reply(self, writer, http, status: int, body: str, headers=()) -> None:
        data = body.encode()
        out = http.send(h11.Response(status_code=status, headers=[
            ("content-type", "text/plain; charset=utf-8"),
            ("x-content-type-options", "nosniff"),
            ("content-length", str(len(data))), ("connection", "close"), *headers]))
        out += http.send(h11.Data(data=data)) + http.send(h11.EndOfMessage())
        writer.write(out)
        with contextlib.suppress(ConnectionError):
            await writer.drain()

    async def _spdy(self, kind, request, http, reader, writer):
        offered = _tokens(_header(request.headers, b"x-stream-protocol-version"))
        server = ((channels.PORT_FORWARD_PROTOCOL,) if kind == "portforward"
                  else channels.SPDY_EXEC_PROTOCOLS)
        if not offered:  # Kubernetes 1.0 clients did not negotiate
            chosen = "" if kind != "portforward" else channels.PORT_FORWARD_PROTOCOL
        else:
            chosen = next((p for p in offered if p in server), None)
            if chosen is None:
                await self._reply(
                    writer, http, 403,
                    f"unable to upgrade: unable to negotiate protocol: client supports "
                    f"[{' '.join(offered)}], server accepts [{' '.join(server)}]\n",
                    [("x-accepted-stream-protocol-versions", p) for p in server])
                return None
        connection = [c.lower() for c in _tokens(_header(request.headers, b"connection"))]
        upgrade = [u.lower() for u in _tokens(_header(request.headers, b"upgrade"))]
        if "upgrade" not in connection or "spdy/3.1" not in upgrade:
            await self._reply(writer, http, 400,
                              "unable to upgrade: missing upgrade headers in request\n")
            return None
        headers = [("connection", "Upgrade"), ("upgrade", "SPDY/3.1")]
        if chosen:
            headers.append(("x-stream-protocol-version", chosen))
        writer.write(http.send(h11.InformationalResponse(status_code=101, headers=headers)))
        await writer.drain()
        classify = _classify_port_forward if kind == "portforward" else _classify_exec
        return SpdySession(reader, writer, chosen or "channel.k8s.io", self.idle_timeout,
                           classify)

    async def _websocket(self, kind, raw: bytes, reader, writer):
        from websockets.server import ServerProtocol
        table = (channels.WS_PORT_FORWARD_PROTOCOLS if kind == "portforward"
                 else channels.WS_EXEC_PROTOCOLS)
        chosen: list[str | None] = [None]

        def select(_protocol, offered):
            if not offered:
                return None
            for name in offered:
                if name in table:
                    chosen[0] = name
                    return name
            from websockets.exceptions import NegotiationError
            raise NegotiationError(f"requested protocol(s) are not supported: {offered}; "
                                   f"supports {list(table)}")

        ws = ServerProtocol(subprotocols=list(table), select_subprotocol=select,
                            max_size=2 ** 20)
        ws.receive_data(raw)
        events = ws.events_received()
        if not events:
            return None
        response = ws.accept(events[0])
        if response.status_code == 400 and "not supported" in response.body.decode(errors="ignore"):
            response = ws.reject(403, response.body.decode(errors="ignore"))
        ws.send_response(response)
        writer.write(b"".join(ws.data_to_send()))
        await writer.drain()
        if response.status_code != 101:
            return None
        protocol = chosen[0] or ""
        return WsSession(reader, writer, protocol, self.idle_timeout, ws,
                         table.get(protocol, False))


def _classify_exec(headers: dict, stream_id: int):
    kind = (headers.get("streamtype") or [""])[0]
    return channels.STREAM_TYPES.get(kind)


def _classify_port_forward(headers: dict, stream_id: int):
    return stream_id
