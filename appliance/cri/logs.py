"""Container logs in the CRI format, written from the shim's stdout/stderr FIFOs.

Each line is `<RFC3339Nano UTC> <stream> <F|P> <text>\\n` (containerd's pkg/cri/io logger):
a line longer than `max_line` goes out as `P` parts of `max_line` bytes and a last `F`
part; text left without a newline when the stream ends is one `P` line. The FIFOs are
opened read-write (so a shim that has not opened its end yet gives no EOF) and read on the
event loop; the stream ends when the task is deleted (the shim has flushed by then).
"""
from __future__ import annotations

import asyncio
import logging
import os
import stat
import time

log = logging.getLogger("appliance.cri")


def timestamp(ns: int | None = None) -> str:
    """Go's time.RFC3339Nano in UTC: nanoseconds with the trailing zeros trimmed."""
    ns = time.time_ns() if ns is None else ns
    secs, frac = divmod(ns, 1_000_000_000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    if frac:
        text += "." + f"{frac:09d}".rstrip("0")
    return text + "Z"


def make_fifo(path: str) -> None:
    try:
        if stat.S_ISFIFO(os.stat(path).st_mode):
            return
        os.unlink(path)
    except FileNotFoundError:
        pass
    os.mkfifo(path, 0o700)


class LogFile:
    """The container's log file, shared by its streams; reopened by ReopenContainerLog."""

    def __init__(self, path: str):
        self.path = path
        self.fd = -1
        self.open()

    def open(self) -> None:
        if not self.path:
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        self.close()
        self.fd = fd

    def write(self, stream: str, tag: str, text: bytes) -> None:
        if self.fd < 0:
            return
        line = f"{timestamp()} {stream} {tag} ".encode() + text + b"\n"
        try:
            os.write(self.fd, line)
        except OSError as exc:
            log.error("writing log %s: %s", self.path, exc)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class StreamReader:
    """One FIFO (stdout or stderr) into the log file, on the event loop."""

    def __init__(self, fifo: str, stream: str, sink: LogFile, max_line: int):
        self.stream = stream
        self.sink = sink
        self.max_line = max_line
        self.buffer = b""
        self.taps: set = set()   # callables given each chunk, then b"" at the end (attach)
        self.fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        self._read_available()

    def _read_available(self) -> None:
        while self.fd >= 0:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            except OSError as exc:
                log.error("reading %s stream: %s", self.stream, exc)
                self.close()
                return
            if not data:
                return
            for tap in list(self.taps):
                tap(data)
            self._feed(data)

    def _feed(self, data: bytes) -> None:
        self.buffer += data
        while True:
            newline = self.buffer.find(b"\n")
            if newline < 0:
                break
            line, self.buffer = self.buffer[:newline], self.buffer[newline + 1:]
            if line.endswith(b"\r"):      # bufio.ReadLine drops the \r of \r\n
                line = line[:-1]
            self._emit(line, full=True)
        if self.max_line > 0:
            while len(self.buffer) > self.max_line:
                part, self.buffer = self.buffer[:self.max_line], self.buffer[self.max_line:]
                self.sink.write(self.stream, "P", part)

    def _emit(self, line: bytes, full: bool) -> None:
        while self.max_line > 0 and len(line) > self.max_line:
            self.sink.write(self.stream, "P", line[:self.max_line])
            line = line[self.max_line:]
        self.sink.write(self.stream, "F" if full else "P", line)

    def finish(self) -> None:
        """The stream ended: what is left, then stop (text without a newline is a P line)."""
        self._read_available()
        if self.buffer:
            self._emit(self.buffer, full=False)
            self.buffer = b""
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            self.loop.remove_reader(self.fd)
            os.close(self.fd)
            self.fd = -1
        for tap in list(self.taps):
            tap(b"")
        self.taps.clear()


class ContainerIO:
    """A container's stdout/stderr FIFOs (in its volatile dir) and its log file."""

    def __init__(self, io_dir: str, cid: str, log_path: str, max_line: int):
        self.stdout_path = os.path.join(io_dir, f"{cid}-stdout")
        self.stderr_path = os.path.join(io_dir, f"{cid}-stderr")
        self.log_path = log_path
        self.max_line = max_line
        self.sink: LogFile | None = None
        self.readers: list[StreamReader] = []

    def attach(self) -> None:
        """Make (or find again, after a restart) the FIFOs and start copying."""
        os.makedirs(os.path.dirname(self.stdout_path), mode=0o700, exist_ok=True)
        for path in (self.stdout_path, self.stderr_path):
            make_fifo(path)
        self.sink = LogFile(self.log_path)
        self.readers = [StreamReader(self.stdout_path, "stdout", self.sink, self.max_line),
                        StreamReader(self.stderr_path, "stderr", self.sink, self.max_line)]

    def reopen(self) -> None:
        if self.sink is not None:
            self.sink.open()

    def finish(self) -> None:
        for reader in self.readers:
            reader.finish()
        self.readers = []
        if self.sink is not None:
            self.sink.close()
            self.sink = None
