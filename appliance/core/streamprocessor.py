"""`stream_processors`: layer media types handled by an external binary, as containerd does.

A processor is configured with the media types it `accepts`, the one it `returns`,
a `path` (looked up in PATH when bare), `args` and `env`. It reads the layer on
stdin and writes the result on stdout; it finds the input media type in
$STREAM_PROCESSOR_MEDIATYPE and, when the apply request carries a payload under
its id, the marshalled protobuf Any on fd 3. Later entries win over earlier ones.

The differ turns a blob into a tar stream with `Processors.unwrap`:

    processors = streamprocessor.from_config(ic.server_config)
    media_type, stream = processors.unwrap(desc.media_type, blob_file, payloads,
                                           is_final=lambda mt: mt in HANDLED_BY_THE_DIFFER)

A processor that exits non-zero makes the read that reaches end-of-stream raise
`StreamProcessorError` with its stderr, so a truncated layer is never applied.
"""
from __future__ import annotations

import fcntl
import io
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass

from ..process import fdlimit
from ..errdefs import ApplianceError, NotFound

log = logging.getLogger("appliance.streamprocessor")
MEDIATYPE_ENV = "STREAM_PROCESSOR_MEDIATYPE"
PAYLOAD_FD = 3
EXIT_DEADLINE = 30.0      # seconds a processor gets to exit once its output ended
STDERR_LIMIT = 4096


class StreamProcessorError(ApplianceError):
    """The external processor failed; the message is its stderr."""


@dataclass(frozen=True)
class BinaryProcessor:
    id: str
    accepts: tuple[str, ...]
    returns: str
    path: str
    args: tuple[str, ...] = ()
    env: tuple[str, ...] = ()

    def open(self, media_type: str, stream, payload=None) -> "ProcessedStream":
        """Start the binary on `stream` (a file object); its stdout is the result."""
        return ProcessedStream(self, media_type, stream, payload)


class Processors:
    """The configured processors, looked up by input media type."""

    def __init__(self, processors: list[BinaryProcessor]):
        self.processors = list(processors)

    def find(self, media_type: str) -> BinaryProcessor | None:
        for p in reversed(self.processors):
            if media_type in p.accepts:
                return p
        return None

    def unwrap(self, media_type: str, stream, payloads=None, is_final=None, max_steps=8):
        """Chain processors until `is_final(media_type)`; returns (media type, stream).

        Without `is_final` one processor is applied if any accepts `media_type`.
        """
        payloads = payloads or {}
        for _ in range(max_steps):
            if is_final is not None and is_final(media_type):
                return media_type, stream
            p = self.find(media_type)
            if p is None:
                if is_final is None:
                    return media_type, stream
                raise NotFound(f"no processor for media-type {media_type}: not found")
            stream = p.open(media_type, stream, payloads.get(p.id))
            media_type = p.returns
            if is_final is None:
                return media_type, stream
        raise StreamProcessorError(f"stream processors loop on media type {media_type}")


def from_config(cfg) -> Processors:
    """Processors from `cfg.stream_processors` (a Config or the dict itself)."""
    table = getattr(cfg, "stream_processors", cfg) or {}
    return Processors([BinaryProcessor(name, tuple(sp.accepts), sp.returns, sp.path,
                                       tuple(sp.args), tuple(sp.env))
                       for name, sp in table.items()])


def _high_fd(fd: int) -> int:
    """A close-on-exec duplicate ≥ 10, so dup2 onto 0..3 in the child never aliases."""
    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)


def _feed(source, fd: int) -> None:
    """Copy a Python file object into a pipe (for inputs without a file descriptor)."""
    try:
        with os.fdopen(fd, "wb", closefd=True) as out:
            while chunk := source.read(1 << 20):
                out.write(chunk)
    except (BrokenPipeError, ValueError, OSError):
        pass  # the processor stopped reading: its exit status tells why


def _write_payload(data: bytes, fd: int) -> None:
    try:
        with os.fdopen(fd, "wb", closefd=True) as out:
            out.write(data)
    except OSError:
        pass


class ProcessedStream(io.RawIOBase):
    """The stdout of one running processor, as a readable binary file."""

    def __init__(self, processor: BinaryProcessor, media_type: str, stream, payload=None):
        super().__init__()
        self.processor, self.media_type = processor, processor.returns
        self.upstream = stream if isinstance(stream, ProcessedStream) else None
        self.pid, self._fd, self._status = None, -1, None
        self._stderr = tempfile.TemporaryFile()
        parent_fds, actions = [], []

        def give(fd: int, target: int) -> None:
            actions.append((os.POSIX_SPAWN_DUP2, _high_fd(fd), target))
        try:
            executable = self._executable()
            give(self._input_fd(stream, parent_fds), 0)
            self._fd, out_w = os.pipe()
            parent_fds.append(out_w)
            give(out_w, 1)
            give(self._stderr.fileno(), 2)
            if payload is not None:
                data = payload if isinstance(payload, bytes) else payload.SerializeToString()
                pay_r, pay_w = os.pipe()
                parent_fds.append(pay_r)
                give(pay_r, PAYLOAD_FD)
                threading.Thread(target=_write_payload, args=(data, pay_w), daemon=True,
                                 name=f"payload-{processor.id}").start()
            argv = fdlimit.child_argv([executable, *processor.args])
            self.pid = os.posix_spawnp(argv[0], argv, self._environment(media_type),
                                       file_actions=actions)
        except BaseException:
            self.close()
            raise
        finally:
            for fd in parent_fds + [a[1] for a in actions]:
                os.close(fd)
        if self.upstream is not None:
            self.upstream.detach()  # the child holds its pipe now; we only wait for it
        log.debug("stream processor %s (pid %d) on %s", processor.id, self.pid, media_type)

    def _executable(self) -> str:
        path = self.processor.path
        if os.sep not in path and shutil.which(path) is None:
            raise StreamProcessorError(f'exec: "{path}": executable file not found in $PATH')
        return path

    def _environment(self, media_type: str) -> dict[str, str]:
        env = dict(os.environ)
        for item in self.processor.env:
            key, _, value = item.partition("=")
            env[key] = value
        env[MEDIATYPE_ENV] = media_type
        return env

    def _input_fd(self, stream, parent_fds: list[int]) -> int:
        try:
            return stream.fileno()
        except (AttributeError, io.UnsupportedOperation, OSError):
            r, w = os.pipe()
            parent_fds.append(r)
            threading.Thread(target=_feed, args=(stream, w), daemon=True,
                             name=f"feed-{self.processor.id}").start()
            return r

    # --- reading ---------------------------------------------------------------------
    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        if self._fd < 0:
            raise ValueError("stream processor output already handed on")
        return self._fd

    def readinto(self, buffer) -> int:
        n = os.readv(self._fd, [buffer])
        if n == 0:
            self.check()
        return n

    def detach(self) -> None:
        """Close our end of the output (a next processor reads it directly)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def check(self) -> None:
        """Wait for the processor (and those before it); raise if one failed."""
        if self.upstream is not None:
            self.upstream.check()
        status = self._wait(EXIT_DEADLINE)
        if status != 0:
            self._stderr.seek(0)
            text = self._stderr.read(STDERR_LIMIT).decode(errors="replace").strip()
            raise StreamProcessorError(
                text or f"stream processor {self.processor.id} exited with status {status}")

    def _wait(self, deadline: float) -> int:
        if self._status is None:
            end = time.monotonic() + deadline
            while True:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self._status = os.waitstatus_to_exitcode(status)
                    break
                if time.monotonic() >= end:
                    os.kill(self.pid, signal.SIGKILL)
                    deadline, end = 5.0, time.monotonic() + 5.0
                time.sleep(0.01)
        return self._status

    def close(self) -> None:
        """Stop reading: a processor still running is killed, as containerd does."""
        if self.closed:
            return
        self.detach()
        if self._status is None and self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._wait(5.0)
        if self.upstream is not None:
            self.upstream.close()
        self._stderr.close()
        super().close()
