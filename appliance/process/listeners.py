"""Listeners beyond the main unix socket: TCP gRPC (TLS, mTLS) and small HTTP endpoints.

Every failure here is a `ListenerError` whose message is one line naming the
address or file, in containerd's words where it has them.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
from dataclasses import dataclass, field
from typing import Awaitable, Callable
from urllib.parse import parse_qs, urlsplit

from ..acceptor import Listener, serve_streams
from ..errdefs import mkdir_all

log = logging.getLogger("appliance.listeners")
HEADER_DEADLINE = 10.0   # seconds a client gets to send its request head
MAX_HEAD = 64 * 1024


class ListenerError(Exception):
    """A listener cannot be set up; the message is one line for the user."""


def is_local_address(address: str) -> bool:
    """containerd's rule for debug.address: an absolute path is a unix socket."""
    return os.path.isabs(address)


def split_host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ListenerError(f"listen tcp {address}: address {address}: missing port in address")
    return host.strip("[]"), int(port)


def bind_tcp(address: str, what: str) -> socket.socket:
    """A bound, listening TCP socket; `address in use` becomes one clear line."""
    host, port = split_host_port(address)
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenerError(f"failed to get listener for {what}: listen tcp {address}: "
                            f"{exc.strerror}") from None
    family, _, _, _, sockaddr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Go does; not REUSEPORT
    try:
        sock.bind(sockaddr)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ListenerError(f"failed to get listener for {what}: listen tcp {address}: "
                            f"bind: {(exc.strerror or str(exc)).lower()}") from None
    return sock


def reclaim_unix_path(path: str, what: str) -> None:
    """Remove a socket left by a crash; refuse one another process is still serving."""
    try:
        mkdir_all(os.path.dirname(path) or ".", 0o711)
    except OSError as exc:
        raise ListenerError(f"failed to get listener for {what}: {exc}") from None
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return
    except FileNotFoundError:
        return
    probe = socket.socket(socket.AF_UNIX)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listens: a leftover from a crash
    else:
        raise ListenerError(f"failed to get listener for {what}: listen unix {path}: "
                            f"bind: address already in use")
    finally:
        probe.close()


def bind_unix(path: str, what: str, uid: int = 0, gid: int = 0) -> socket.socket:
    """A listening unix socket with mode 0660 (and owner) set before listen()."""
    reclaim_unix_path(path, what)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, 0o660)
        if uid or gid:
            os.chown(path, uid, gid)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ListenerError(f"failed to get listener for {what}: listen unix {path}: "
                            f"{(exc.strerror or str(exc)).lower()}") from None
    return sock


# --- TLS for the TCP gRPC endpoint -------------------------------------------------

def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ListenerError(f"failed to load {what}: open {path}: "
                            f"{(exc.strerror or str(exc)).lower()}") from None


_SSL_REASONS = {"KEY_VALUES_MISMATCH": "private key does not match public key",
                "PEM lib": "no valid PEM data found", "NO_START_LINE": "no valid PEM data found"}


def server_tls_context(cert: str, key: str, ca: str = ""):
    """The TLS context for tcp_tls_cert/key (and client verification with tcp_tls_ca).

    A bad file is named in one line here instead of failing later in a handshake.
    """
    from .settings import asyncio_with_ssl
    if not cert or not key:
        raise ListenerError("tcp_tls_cert and tcp_tls_key must be set together")
    ssl = asyncio_with_ssl()  # not at the top: see settings.asyncio_without_ssl
    _read(cert, "TLS certificate")  # an unreadable file: one line naming it
    _read(key, "TLS key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.set_alpn_protocols(["h2"])
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise ListenerError(f"failed to load TLS key pair {cert} and {key}: "
                            f"{_SSL_REASONS.get(exc.reason, exc.reason or exc)}") from None
    if ca:
        ca_pem = _read(ca, "CA file")
        if b"-----BEGIN CERTIFICATE-----" not in ca_pem:
            raise ListenerError(f"failed to load CA file {ca}: no PEM certificate found")
        try:
            context.load_verify_locations(cadata=ca_pem.decode("ascii"))
        except (ssl.SSLError, UnicodeDecodeError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise ListenerError(f"failed to load CA file {ca}: {reason}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


@dataclass
class TCPListener:
    sock: socket.socket
    ssl_context: object | None   # ssl.SSLContext, or None for plain TCP
    description: str             # for the log: the port bound and the kind


def tcp_grpc_listener(grpc_cfg) -> TCPListener:
    """The socket (and TLS context) for grpc.tcp_address."""
    address = grpc_cfg.tcp_address
    context = None
    if grpc_cfg.tcp_tls_cert or grpc_cfg.tcp_tls_key:
        context = server_tls_context(grpc_cfg.tcp_tls_cert, grpc_cfg.tcp_tls_key,
                                     grpc_cfg.tcp_tls_ca)
        kind = "mTLS" if grpc_cfg.tcp_tls_ca else "TLS"
    else:
        kind = "plain TCP"
        log.warning("gRPC on %s has no TLS: anyone who can reach it controls the daemon",
                    address)
    sock = bind_tcp(address, "TCP grpc endpoint")
    port = sock.getsockname()[1]
    shown = address.rpartition(":")[0]
    return TCPListener(sock, context, f"{shown}:{port} ({kind})")  # the port bound, also for 0


# --- a small HTTP/1.1 server for /v1/metrics and /debug --------------------------

@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    reason: str = ""  # the status line's text; ctr prints it for non-200 answers


Handler = Callable[[Request], Awaitable[Response]]
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            500: "Internal Server Error", 501: "Not Implemented"}


class HTTPEndpoint:
    """Serves one handler on a listening socket (TCP or unix), one request per connection."""

    def __init__(self, sock: socket.socket, handler: Handler, name: str):
        self.sock, self.handler, self.name = sock, handler, name
        self.server: Listener | None = None
        self.unix_path = sock.getsockname() if sock.family == socket.AF_UNIX else None

    @property
    def address(self) -> str:
        if self.unix_path:
            return self.unix_path
        host, port = self.sock.getsockname()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    async def start(self) -> None:
        self.server = serve_streams(self.sock, self._on_connect)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        if self.unix_path:
            try:
                os.unlink(self.unix_path)
            except FileNotFoundError:
                pass

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEADER_DEADLINE)
            except (asyncio.TimeoutError, asyncio.IncompleteReadError,
                    asyncio.LimitOverrunError, ConnectionError):
                return
            response = await self._respond(head)
            reason = response.reason or _REASONS.get(response.status, "")
            writer.write(
                f"HTTP/1.1 {response.status} {reason}\r\n"
                f"Content-Type: {response.content_type}\r\n"
                f"Content-Length: {len(response.body)}\r\nConnection: close\r\n\r\n"
                .encode("latin-1", "replace") + response.body)
            await asyncio.wait_for(writer.drain(), 30.0)
        except (ConnectionError, asyncio.TimeoutError):
            pass
        finally:
            writer.close()

    async def _respond(self, head: bytes) -> Response:
        try:
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        except ValueError:
            return Response(400, b"malformed request line\n")
        if method not in ("GET", "HEAD"):
            return Response(405, b"only GET is served here\n")
        url = urlsplit(target)
        try:
            return await self.handler(Request(method, url.path, parse_qs(url.query)))
        except Exception as exc:  # a broken handler must not take the endpoint down
            log.exception("%s: %s %s failed", self.name, method, target)
            return Response(500, f"{exc}\n".encode())


def http_endpoint(address: str, handler: Handler, what: str, uid: int = 0,
                  gid: int = 0, unix: bool | None = None) -> HTTPEndpoint:
    """Bind `address` (unix path or host:port) for `handler`; start() serves it."""
    if unix is None:
        unix = is_local_address(address)
    sock = bind_unix(address, what, uid, gid) if unix else bind_tcp(address, what)
    sock.setblocking(False)
    return HTTPEndpoint(sock, handler, what)
