"""Run a child to completion on any event loop (asyncio's or uvloop): shim start/delete, CNI.

The child is spawned by CPython's `subprocess` (vfork + exec while no `preexec_fn` is
needed: forking a big daemon costs ≈ 10 ms a spawn, bench/NOTES.md "life-cpu"); its pipes
are read and its exit seen (a pidfd) through the loop's `add_reader`, so no child watcher,
no thread per child (but without pidfd: Linux < 5.3, valgrind) and no loop-specific
subprocess transport (uvloop's forks through libuv and has no `process_group`).
"""
from __future__ import annotations

import asyncio
import os
import subprocess
from dataclasses import dataclass

from . import fdlimit

READ_SIZE = 65536


@dataclass
class Completed:
    returncode: int
    stdout: bytes
    stderr: bytes   # b"" when merged into stdout


async def run(argv: list[str], *, timeout: float, input: bytes | None = None,
              merge_stderr: bool = False, cwd: str | None = None, env=None,
              process_group: int | None = None) -> Completed:
    """Run `argv` (through `fdlimit.child_argv`), feed it `input`, collect its output.

    TimeoutError after `timeout` s; then, as on cancellation, the child is killed and
    reaped by the loop once it dies. OSError when it cannot be started."""
    loop = asyncio.get_running_loop()
    proc = subprocess.Popen(
        fdlimit.child_argv(argv), stdin=subprocess.DEVNULL if input is None else subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
        cwd=cwd, env=env, process_group=process_group, preexec_fn=fdlimit.child_preexec())
    exited = _exit_of(loop, proc)
    reads = [_read_all(loop, proc.stdout)]
    if not merge_stderr:
        reads.append(_read_all(loop, proc.stderr))
    try:
        async with asyncio.timeout(timeout):
            if input is not None:
                await _write_all(loop, proc.stdin, input)
            output = [await read for read in reads]
            returncode = await asyncio.shield(exited)
    except BaseException:
        for pipe, read in zip((proc.stdout, proc.stderr), reads):
            loop.remove_reader(pipe.fileno())   # before the fd is closed and reused
            read.cancel()
        if not exited.done():
            try:
                proc.kill()   # the pidfd's reader reaps it
            except ProcessLookupError:
                pass
        raise
    finally:
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    return Completed(returncode, output[0], output[1] if len(output) > 1 else b"")


def _exit_of(loop, proc: subprocess.Popen) -> asyncio.Future:
    """The child's exit status, reaped when its pidfd becomes readable."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):   # no pidfd: a thread waits
        return asyncio.ensure_future(asyncio.to_thread(proc.wait))
    done = loop.create_future()

    def reap():
        loop.remove_reader(pidfd)
        os.close(pidfd)
        returncode = proc.wait()   # exited: does not block
        if not done.done():
            done.set_result(returncode)

    loop.add_reader(pidfd, reap)
    return done


def _read_all(loop, pipe) -> asyncio.Future:
    """Everything read from `pipe` until EOF."""
    fd = pipe.fileno()
    os.set_blocking(fd, False)
    chunks: list[bytes] = []
    done = loop.create_future()

    def readable():
        try:
            data = os.read(fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        if data:
            chunks.append(data)
            return
        loop.remove_reader(fd)
        if not done.done():
            done.set_result(b"".join(chunks))

    loop.add_reader(fd, readable)
    return done


async def _write_all(loop, pipe, data: bytes) -> None:
    """Write `data` and close the pipe; a child that closed its end took what it wanted
    (as `communicate` does)."""
    fd = pipe.fileno()
    os.set_blocking(fd, False)
    view = memoryview(data)
    try:
        while view:
            try:
                view = view[os.write(fd, view):]
            except (BlockingIOError, InterruptedError):
                writable = loop.create_future()
                loop.add_writer(fd, lambda: writable.done() or writable.set_result(None))
                try:
                    await writable
                finally:
                    loop.remove_writer(fd)
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        pipe.close()
