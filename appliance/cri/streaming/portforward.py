"""Port-forward: TCP to 127.0.0.1:<port> inside a pod's network namespace.

SPDY (what kubelet proxies from kubectl): the client opens a pair of streams per
connection, `streamType` error and data, with the same `port` and `requestID`
headers. WebSocket: the ports come from the `port` query parameters; channel 2n
carries the n-th port's data and 2n+1 its errors, and the server first writes the port
(little-endian uint16) on both.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import threading

from ... import mount
from .channels import Closed

log = logging.getLogger("appliance.cri.streaming")

PAIR_TIMEOUT = 30.0     # seconds for the second stream of a pair (kubelet's creation timeout)
OTHER_WAY_GRACE = 1.0   # seconds the pod→client copy gets once the client's side ended
READ_SIZE = 256 * 1024  # bytes read from the pod at once (one DATA frame)


def _sockets_in(netns: str) -> list[socket.socket]:
    """An IPv4 and an IPv6 TCP socket made inside `netns` ("": the host's). setns runs in a
    thread of its own, which then ends: it is never reused in the pod's namespace."""
    result: list = []

    def run():
        try:
            if netns:
                target = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    mount.setns(target, mount.CLONE_NEWNET)
                finally:
                    os.close(target)
            result.append([socket.socket(family, socket.SOCK_STREAM)
                           for family in (socket.AF_INET, socket.AF_INET6)])
        except OSError as exc:
            result.append(exc)
    thread = threading.Thread(target=run, name="cri-portforward-netns", daemon=True)
    thread.start()
    thread.join()
    if isinstance(result[0], OSError):
        raise result[0]
    return result[0]


def _go_error(exc: OSError) -> str:
    return (os.strerror(exc.errno) if exc.errno else str(exc)).lower()


async def dial(netns: str, sandbox_id: str, port: int):
    """(reader, writer) to localhost:`port` in `netns` ("": a host-network pod), IPv4 then
    IPv6 as containerd tries them; OSError with containerd's words."""
    loop = asyncio.get_running_loop()
    v4, v6 = await asyncio.to_thread(_sockets_in, netns)
    chosen = None
    try:
        for sock in (v4, v6):
            sock.setblocking(False)
        try:
            await loop.sock_connect(v4, ("127.0.0.1", port))
            chosen = v4
        except OSError as exc:
            err4 = f"dial tcp4 127.0.0.1:{port}: connect: {_go_error(exc)}"
            try:  # the daemon's /etc/hosts, as Go's resolver reads it
                infos = await loop.getaddrinfo("localhost", port, family=socket.AF_INET6,
                                               type=socket.SOCK_STREAM)
            except OSError:
                infos = []
            if not infos:
                err6 = "dial tcp6: address localhost: no suitable address found"
            else:
                address = infos[0][4]
                try:
                    await loop.sock_connect(v6, address[:2])
                    chosen = v6
                except OSError as exc6:
                    err6 = (f"dial tcp6 [{address[0]}]:{port}: connect: {_go_error(exc6)}")
            if chosen is None:
                raise OSError(exc.errno, f'failed to execute portforward in network namespace '
                                         f'"{netns or "host"}": failed to connect to '
                                         f'localhost:{port} inside namespace "{sandbox_id}", '
                                         f'IPv4: {err4} IPv6 {err6} ') from None
    finally:
        for sock in (v4, v6):
            if sock is not chosen:
                sock.close()
    return await asyncio.open_connection(sock=chosen, limit=READ_SIZE)


async def _forward(session, key_data, netns: str, sandbox_id: str, port: int) -> str:
    """Copy both ways between the session's data channel and the pod; '' or the error."""
    try:
        reader, writer = await dial(netns, sandbox_id, port)
    except OSError as exc:
        return f"error forwarding port {port} to pod {sandbox_id}, uid : {exc.strerror or exc}"

    async def client_to_pod():
        queue = session.input(key_data)
        while (chunk := await queue.get()) is not None:
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    async def pod_to_client():
        while chunk := await reader.read(READ_SIZE):
            await session.write(key_data, chunk)

    ins = asyncio.ensure_future(client_to_pod())
    outs = asyncio.ensure_future(pod_to_client())
    try:
        done, _ = await asyncio.wait({ins, outs}, return_when=asyncio.FIRST_COMPLETED)
        if ins in done and not ins.exception():
            await asyncio.wait({outs})   # the client is done sending: the reply may follow
        else:
            await asyncio.wait({ins, outs}, timeout=OTHER_WAY_GRACE)
        for task in (ins, outs):
            if task.done() and not task.cancelled() and task.exception() is not None:
                exc = task.exception()
                if not isinstance(exc, (Closed, ConnectionError)):
                    raise exc
        return ""
    finally:
        ins.cancel(), outs.cancel()
        writer.close()


async def serve_spdy(session, netns: str, sandbox_id: str) -> None:
    """Pairs of streams by requestID, each pair one forwarded connection."""
    pairs: dict[str, dict] = {}
    running: set[asyncio.Task] = set()

    async def one(pair: dict) -> None:
        port = pair["port"]
        error = ""
        if port is None:
            error = "unable to parse port"
        else:
            error = await _forward(session, pair["data"], netns, sandbox_id, port)
        with contextlib.suppress(Closed):
            await session.close_channel(pair["data"])
            if error:
                await session.write(pair["error"], error.encode())
            await session.close_channel(pair["error"])

    try:
        while True:
            opened = asyncio.ensure_future(session.opened.get())
            ended = asyncio.ensure_future(session.peer_done.wait())
            await asyncio.wait({opened, ended}, return_when=asyncio.FIRST_COMPLETED)
            ended.cancel()
            if not opened.done():
                opened.cancel()
                break
            sid, headers = opened.result()
            kind = (headers.get("streamtype") or [""])[0]
            request_id = (headers.get("requestid") or [str(sid)])[0]
            try:
                port = int((headers.get("port") or [""])[0])
                port = port if 0 < port < 65536 else None
            except ValueError:
                port = None
            if kind not in ("data", "error"):
                await session.reset(sid)
                continue
            pair = pairs.setdefault(request_id, {"port": port})
            pair[kind] = sid
            if "data" in pair and "error" in pair:
                del pairs[request_id]
                task = asyncio.ensure_future(one(pair))
                running.add(task)
                task.add_done_callback(running.discard)
    finally:
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running)
        session.abort()


async def serve_websocket(session, netns: str, sandbox_id: str, ports: list[int]) -> None:
    """One connection per port of the query, on channels 2n (data) and 2n+1 (errors)."""
    try:
        for i, port in enumerate(ports):
            prefix = struct.pack("<H", port)
            await session.write(2 * i, prefix)
            await session.write(2 * i + 1, prefix)

        async def one(i: int, port: int) -> None:
            error = await _forward(session, 2 * i, netns, sandbox_id, port)
            if error:
                await session.write(2 * i + 1, error.encode())
        await asyncio.gather(*(one(i, p) for i, p in enumerate(ports)))
        await session.finish()
    except Closed:
        session.abort()
