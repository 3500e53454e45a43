"""Exec over a session: stdin in, stdout/stderr out, resizes, the exit status at the end.

What kubelet's remotecommand server does for a CRI runtime: wait for the client's
streams (SPDY), start the process, copy both ways, and when the process has exited and
its output is written, put the Status on the error channel (v4: JSON; older: the
failure's text only) and close.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging

from ...errdefs import ApplianceError
from .channels import (ERROR, RESIZE, STDERR, STDIN, STDOUT, Closed, Session, parse_sizes,
                       status_json)

log = logging.getLogger("appliance.cri.streaming")

STREAM_CREATION_TIMEOUT = 30.0  # kubelet's default: the client's streams must all come
EXEC_FAILED = "error executing command in container: failed to exec in container: "
ATTACH_FAILED = "error attaching to container: "
DRAIN_TIMEOUT = 10.0  # seconds for output still in the FIFOs once the process has exited
# seconds for the output to end by itself after the exit; past that something else holds
# it (a background child): the exec is deleted, which makes the shim let go
DRAIN_BEFORE_DELETE = 1.0


def expected_channels(stdin: bool, stdout: bool, stderr: bool, tty: bool,
                      protocol: str) -> set[int]:
    want = {ERROR}
    if stdin:
        want.add(STDIN)
    if stdout:
        want.add(STDOUT)
    if stderr and not tty:
        want.add(STDERR)
    if tty and protocol not in ("v2.channel.k8s.io", "channel.k8s.io"):
        want.add(RESIZE)
    return want


async def wait_for_streams(session, want: set[int], timeout: float = STREAM_CREATION_TIMEOUT):
    """SPDY: the client opens one stream per channel; all must come within `timeout`."""
    got: set[int] = set()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not want <= got:
        left = deadline - loop.time()
        opened = asyncio.ensure_future(session.opened.get())
        ended = asyncio.ensure_future(session.peer_done.wait())
        done, _ = await asyncio.wait({opened, ended}, timeout=max(0.0, left),
                                     return_when=asyncio.FIRST_COMPLETED)
        ended.cancel()
        if opened not in done:
            opened.cancel()
            raise Closed("timed out waiting for client to create streams" if not done
                         else "connection closed while waiting for streams")
        got.add(opened.result()[0])


def _is_v4(session: Session) -> bool:
    return session.protocol.startswith(("v4.", "v5."))


async def _copy_out(session: Session, fifo, channel: int, wanted: bool) -> None:
    while chunk := await fifo.read():
        if wanted:
            await session.write(channel, chunk)


async def _copy_in(session: Session, proc) -> None:
    queue = session.input(STDIN)
    while (chunk := await queue.get()) is not None:
        if proc.stdin is None:
            continue
        try:
            await proc.stdin.write(chunk)
        except OSError:
            break
    await proc.close_stdin()


async def _resizes(session: Session, proc) -> None:
    queue = session.input(RESIZE)
    buffer = bytearray()
    while (chunk := await queue.get()) is not None:
        buffer += chunk
        for width, height in parse_sizes(buffer):
            with contextlib.suppress(ApplianceError):
                await proc.resize(width, height)


async def serve_process(session: Session, start, cmd: list[str], *, stdin: bool, stdout: bool,
                        stderr: bool, tty: bool, websocket: bool,
                        failed: str = EXEC_FAILED) -> None:
    """Run the process `start()` returns over `session`, then end the session. A start
    that fails is reported on the error channel, its message after `failed`."""
    error_text = ""
    code: int | None = None
    try:
        if not websocket:
            await wait_for_streams(session, expected_channels(stdin, stdout, stderr, tty,
                                                              session.protocol))
        else:  # the lowest output channel says "ready"
            await session.write(STDOUT if stdout else STDERR if stderr and not tty else ERROR,
                                b"")
        proc = await start()
    except Closed as exc:
        log.info("streaming: %s", exc)
        session.abort()
        return
    except (ApplianceError, OSError) as exc:
        error_text = f"{failed}{exc}"
        proc = None
    pumps = []
    try:
        if proc is not None:
            pumps = [asyncio.ensure_future(_copy_out(session, proc.stdout, STDOUT, stdout))]
            if proc.stderr is not None:
                pumps.append(asyncio.ensure_future(_copy_out(session, proc.stderr, STDERR,
                                                             stderr)))
            feeders = []
            if proc.stdin is not None:
                feeders.append(asyncio.ensure_future(_copy_in(session, proc)))
            if tty:
                feeders.append(asyncio.ensure_future(_resizes(session, proc)))
            waiting = asyncio.ensure_future(proc.wait())
            gone = asyncio.ensure_future(session.peer_done.wait())
            await asyncio.wait({waiting, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not waiting.done():  # the client went away: the process goes too
                gone.cancel()
                for task in (*feeders, *pumps):
                    task.cancel()
                waiting.cancel()
                await proc.end()
                return
            gone.cancel()
            code = waiting.result()
            # the status goes out once the output has; the exec is deleted after it
            _, pending = await asyncio.wait(pumps, timeout=DRAIN_BEFORE_DELETE)
            if pending:
                await proc.delete()
                await asyncio.wait(pending, timeout=DRAIN_TIMEOUT)
            for task in feeders:
                task.cancel()
        for channel in (STDOUT, STDERR):
            await session.close_channel(channel)
        if _is_v4(session):
            await session.write(ERROR, status_json(code, cmd, error_text))
        elif error_text or code:
            from .channels import failure_message
            text = f"Internal error occurred: {error_text}" if error_text \
                else failure_message(code, cmd)
            await session.write(ERROR, text.encode())
        await session.close_channel(ERROR)
        await session.finish()
    except Closed as exc:
        log.info("streaming: %s", exc)
        session.abort()
    finally:
        for task in pumps:
            task.cancel()
        if proc is not None:
            await asyncio.shield(proc.end())
