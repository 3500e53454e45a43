"""Exec processes in CRI containers, in-process over the task manager's shims.

The shim reads stdin from and writes stdout/stderr to FIFOs we create (as containerd's
cio does). Our ends are opened before the shim's: each output FIFO is held open
read-write as well as read-only, so reads never see a false end of file before the
shim has opened it; the shim opens its write ends before its Start returns (blocking
opens, in its copyPipes/CopyConsole), so the read-write end is let go then, and the
reader gets end of file once the shim's copies are done (the process and whatever
inherited its output have closed it), with no Delete needed first.
"""
from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil

from ... import stubs
from ...core.content.store import go_duration
from ...errdefs import ApplianceError, DeadlineExceeded, InvalidArgument, NotFound

shim_pb2 = stubs.module("appliance._proto.containerd.runtime.v2.task.shim_pb2")

NAMESPACE = "k8s.io"
PROCESS_TYPE = "types.containerd.io/opencontainers/runtime-spec/1/Process"
SIGKILL = 9
KILL_WAIT = 10.0  # seconds for a killed exec to be reaped


async def _wait_fd(fd: int, writable: bool) -> None:
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    add, remove = ((loop.add_writer, loop.remove_writer) if writable
                   else (loop.add_reader, loop.remove_reader))
    add(fd, lambda: done.done() or done.set_result(None))
    try:
        await done
    finally:
        remove(fd)


class Fifo:
    """Our end of one stdio FIFO."""

    def __init__(self, path: str, output: bool):
        os.mkfifo(path, 0o600)
        self.path = path
        self._keep = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        self.fd = (os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC) if output
                   else self._keep)

    async def read(self, size: int = 65536) -> bytes:
        """Up to `size` bytes; b"" at end of file (after `release`)."""
        while True:
            try:
                return os.read(self.fd, size)
            except BlockingIOError:
                await _wait_fd(self.fd, writable=False)

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.fd, view):]
            except BlockingIOError:
                await _wait_fd(self.fd, writable=True)

    def release(self) -> None:
        """Let go of the read-write end: the reader sees end of file once the shim is done."""
        if self._keep >= 0 and self._keep != self.fd:
            os.close(self._keep)
        self._keep = -1

    def close(self) -> None:
        self.release()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class ExecProcess:
    """One exec: started by `start_exec`, ended by `wait` and `delete`."""

    def __init__(self, shim, cid: str, exec_id: str, io_dir: str, stdin: Fifo | None,
                 stdout: Fifo | None, stderr: Fifo | None):
        self.shim, self.cid, self.exec_id, self.io_dir = shim, cid, exec_id, io_dir
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.deleted = False
        self.exited = False
        self._waiting: asyncio.Future | None = None  # the shim's Wait, asked before Start

    def _ask_wait(self) -> None:
        """Send the shim's Wait now (as containerd does before Start): its answer comes as
        soon as the process has exited, with no round trip after Start."""
        self._waiting = asyncio.ensure_future(self.shim.call(
            "Wait", shim_pb2.WaitRequest(id=self.cid, exec_id=self.exec_id), timeout=None))

    async def wait(self) -> int:
        if self._waiting is None or self._waiting.cancelled():
            self._ask_wait()
        resp = await asyncio.shield(self._waiting)
        self.exited = True
        return resp.exit_status

    async def end(self) -> None:
        """Whatever state it is in: killed if running, deleted, our FIFOs closed."""
        try:
            if not self.deleted and not self.exited:
                await self.kill()
                try:
                    await asyncio.wait_for(self.wait(), KILL_WAIT)
                except (asyncio.TimeoutError, ApplianceError):
                    pass
            await self.delete()
        finally:
            self.close()

    async def resize(self, width: int, height: int) -> None:
        await self.shim.call("ResizePty", shim_pb2.ResizePtyRequest(
            id=self.cid, exec_id=self.exec_id, width=width, height=height))

    async def close_stdin(self) -> None:
        if self.stdin is not None:
            self.stdin.close()
            self.stdin = None
            try:
                await self.shim.call("CloseIO", shim_pb2.CloseIORequest(
                    id=self.cid, exec_id=self.exec_id, stdin=True))
            except ApplianceError:
                pass  # the process is gone already

    async def kill(self) -> None:
        try:
            await self.shim.call("Kill", shim_pb2.KillRequest(id=self.cid, exec_id=self.exec_id,
                                                              signal=SIGKILL))
        except (NotFound, ApplianceError):
            pass  # exited already

    async def delete(self) -> None:
        """Delete the exec in the shim (it waits up to 2 s for its copies, then closes
        its FIFO ends) and release ours."""
        if not self.deleted:
            self.deleted = True
            try:
                await self.shim.call("Delete", shim_pb2.DeleteRequest(id=self.cid,
                                                                      exec_id=self.exec_id))
            except ApplianceError:
                pass
        for fifo in (self.stdout, self.stderr):
            if fifo is not None:
                fifo.release()

    def close(self) -> None:
        if self._waiting is not None:
            if self._waiting.done():
                if not self._waiting.cancelled():
                    self._waiting.exception()  # retrieved: an error was handled or moot
            else:
                self._waiting.cancel()
        for fifo in (self.stdin, self.stdout, self.stderr):
            if fifo is not None:
                fifo.close()
        self.stdin = None
        shutil.rmtree(self.io_dir, ignore_errors=True)


def process_spec(container, cmd: list[str], tty: bool) -> bytes:
    """The container's process with `cmd` as args (and TERM=xterm with a tty, as containerd)."""
    if container.spec is None:
        raise InvalidArgument(f"container {container.id} has no spec")
    process = json.loads(container.spec.value or b"{}").get("process") or {}
    process["args"] = list(cmd)
    process["terminal"] = tty
    if tty:
        env = [e for e in process.get("env") or [] if not e.startswith("TERM=")]
        process["env"] = env + ["TERM=xterm"]
    return json.dumps(process).encode()


async def start_exec(containers, runtime, io_root: str, cid: str, cmd: list[str], *,
                     tty: bool, stdin: bool, stdout: bool, stderr: bool) -> ExecProcess:
    """Exec `cmd` in the running container `cid` (namespace k8s.io) and start it."""
    if not cmd:
        raise InvalidArgument("command cannot be empty")
    container = containers.get(NAMESPACE, cid)
    try:
        shim = runtime.get(NAMESPACE, cid)
    except NotFound:
        raise NotFound(f"container {cid} is not running") from None
    exec_id = secrets.token_hex(32)
    io_dir = os.path.join(io_root, exec_id)
    os.makedirs(io_dir, mode=0o700)
    fifos = {}
    try:
        for name, wanted, output in (("stdin", stdin, False), ("stdout", True, True),
                                     ("stderr", not tty, True)):
            if wanted:
                fifos[name] = Fifo(os.path.join(io_dir, name), output)
        proc = ExecProcess(shim, cid, exec_id, io_dir, fifos.get("stdin"), fifos.get("stdout"),
                           fifos.get("stderr"))
        spec = process_spec(container, cmd, tty)
        request = shim_pb2.ExecProcessRequest(
            id=cid, exec_id=exec_id, terminal=tty,
            stdin=fifos["stdin"].path if "stdin" in fifos else "",
            stdout=fifos["stdout"].path,
            stderr=fifos["stderr"].path if "stderr" in fifos else "")
        request.spec.type_url, request.spec.value = PROCESS_TYPE, spec
        await shim.call("Exec", request)
    except BaseException as exc:
        for fifo in fifos.values():
            fifo.close()
        shutil.rmtree(io_dir, ignore_errors=True)
        if type(exc) is ApplianceError:  # the shim's own (unknown) error, as containerd words it
            raise ApplianceError(f'failed to create exec "{exec_id}": {exc.message}: unknown') \
                from None
        raise
    proc._ask_wait()
    try:
        await shim.call("Start", shim_pb2.StartRequest(id=cid, exec_id=exec_id))
    except BaseException as exc:
        await asyncio.shield(proc.end())
        if type(exc) is ApplianceError:
            raise ApplianceError(f'failed to start exec "{exec_id}": {exc.message}: unknown') \
                from None
        raise
    for fifo in (proc.stdout, proc.stderr):  # the shim holds its write ends now
        if fifo is not None:
            fifo.release()
    return proc


EXEC_SYNC_CAP = 16 << 20  # bytes of each stream kept by ExecSync (containerd's cappedWriter)


async def _read_capped(fifo: Fifo, cap: int) -> bytes:
    out = bytearray()
    while chunk := await fifo.read():
        out += chunk[:max(0, cap - len(out))]
    return bytes(out)


async def exec_sync(containers, runtime, io_root: str, cid: str, cmd: list[str],
                    timeout: int) -> tuple[bytes, bytes, int]:
    """ExecSync: run `cmd` to its end (killed past `timeout` seconds, if > 0)."""
    proc = await start_exec(containers, runtime, io_root, cid, cmd, tty=False, stdin=False,
                            stdout=True, stderr=True)
    outputs = asyncio.ensure_future(asyncio.gather(
        _read_capped(proc.stdout, EXEC_SYNC_CAP), _read_capped(proc.stderr, EXEC_SYNC_CAP)))
    # a gather cancelled through .cancel() ends with CancelledError as its exception:
    # retrieved here, or asyncio logs it as never retrieved
    outputs.add_done_callback(lambda f: f.cancelled() or f.exception())
    try:
        try:
            code = await asyncio.wait_for(proc.wait(), timeout or None)
        except asyncio.TimeoutError:
            outputs.cancel()
            await proc.end()
            raise DeadlineExceeded(f"timeout {go_duration(timeout)} exceeded: context "
                                   "deadline exceeded") from None
        await proc.delete()
        stdout, stderr = await outputs
        return stdout, stderr, code
    finally:
        outputs.cancel()
        await asyncio.shield(proc.end())


class AttachedTask:
    """A running container's own stdio for an attach: what exec's `ExecProcess` offers to
    the stream code, without ever stopping the container."""

    def __init__(self, shim, cid: str, stdin, stdout, stderr):
        self.shim, self.cid = shim, cid
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr

    async def wait(self) -> int:
        await self.shim.call("Wait", shim_pb2.WaitRequest(id=self.cid), timeout=None)
        return 0  # kubelet reports an attach that ran to the container's end as Success

    async def resize(self, width: int, height: int) -> None:
        await self.shim.call("ResizePty", shim_pb2.ResizePtyRequest(id=self.cid, width=width,
                                                                    height=height))

    async def close_stdin(self) -> None:
        if self.stdin is not None:
            self.stdin.close()
            self.stdin = None

    async def delete(self) -> None:
        pass

    async def end(self) -> None:
        for stream in (self.stdin, self.stdout, self.stderr):
            if stream is not None:
                stream.close()


class _OpenFifo(Fifo):
    """An already opened FIFO end (the task's)."""

    def __init__(self, fd: int):  # noqa: super().__init__ makes the FIFO: not wanted here
        self.path, self._keep, self.fd = "", -1, fd


class TapReader:
    """What a CRI container's log reader reads (cri/logs.py StreamReader), for an attach;
    an attach that falls MAX_BUFFERED behind is ended rather than slowing the logs."""

    MAX_BUFFERED = 16 << 20

    def __init__(self, reader):
        self.reader = reader
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.ended = False
        self._more = asyncio.Event()
        reader.taps.add(self._tap)

    def _tap(self, data: bytes) -> None:
        if not data or self.buffered > self.MAX_BUFFERED:
            self.close()
        else:
            self.chunks.append(data)
            self.buffered += len(data)
        self._more.set()

    async def read(self, size: int = 65536) -> bytes:
        while not self.chunks and not self.ended:
            self._more.clear()
            await self._more.wait()
        if not self.chunks:
            return b""
        chunk = self.chunks.pop(0)
        self.buffered -= len(chunk)
        return chunk

    def close(self) -> None:
        self.ended = True
        self.reader.taps.discard(self._tap)
        self._more.set()


async def attach_task(runtime, cid: str, *, stdin: bool, stdout: bool, stderr: bool,
                      tty: bool, container_io=None) -> AttachedTask:
    """Attach to the running container's stdio: through its CRI log readers when it has
    them (`container_io`, cri/logs.py), else its FIFOs (from the shim's State)."""
    try:
        shim = runtime.get(NAMESPACE, cid)
    except NotFound:
        raise NotFound(f"container {cid} is not running") from None
    state = await shim.call("State", shim_pb2.StateRequest(id=cid))
    check_attachable(cid, state, stdin=stdin, stdout=stdout, stderr=stderr, tty=tty)
    want_err = stderr and not state.terminal
    if container_io is not None and container_io.readers:
        out_reader, err_reader = container_io.readers[0], container_io.readers[1]
        streams = [None, TapReader(out_reader) if stdout else _empty(),
                   TapReader(err_reader) if want_err else None]
        if stdin:
            streams[0] = _OpenFifo(os.open(state.stdin, os.O_WRONLY | os.O_NONBLOCK
                                           | os.O_CLOEXEC))
        return AttachedTask(shim, cid, *streams)
    fds = []
    try:
        for path, wanted, flags in ((state.stdin, stdin, os.O_WRONLY),
                                    (state.stdout, stdout, os.O_RDONLY),
                                    (state.stderr, want_err, os.O_RDONLY)):
            fds.append(os.open(path, flags | os.O_NONBLOCK | os.O_CLOEXEC) if wanted else -1)
    except OSError as exc:
        for fd in fds:
            if fd >= 0:
                os.close(fd)
        raise ApplianceError(f"failed to attach to container {cid}: {exc}") from None
    stdin_, out, err = (_OpenFifo(fd) if fd >= 0 else None for fd in fds)
    return AttachedTask(shim, cid, stdin_, out or _empty(), err)


def _empty() -> _OpenFifo:
    """A stream at its end at once (the stream code reads stdout to its end)."""
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    os.close(w)
    return _OpenFifo(r)


def check_attachable(cid: str, state, *, stdin: bool, stdout: bool, stderr: bool,
                     tty: bool) -> None:
    if stdin and not state.stdin:
        raise InvalidArgument(f"container {cid} was not created with stdin: cannot attach "
                              "to its stdin")
    if tty and not state.terminal:
        raise InvalidArgument(f"container {cid} has no tty: attach without tty")
    if (stdout and not state.stdout) or (stderr and not state.stderr and not state.terminal):
        raise InvalidArgument(f"container {cid} has no stdout/stderr to attach to")
