"""CRI log lines (cri/logs.py): containerd's format, the P/F split and the end of a stream,
through a real FIFO read on an event loop."""
import asyncio
import os
import re

from appliance.cri import logs

LINE = re.compile(rb"^(\S+) (stdout|stderr) ([FP]) (.*)$")


def test_timestamp_is_rfc3339nano_with_trailing_zeros_trimmed():
    assert logs.timestamp(1_764_712_217_100_521_311) == "2025-12-02T21:50:17.100521311Z"
    assert logs.timestamp(1_764_712_217_100_000_000) == "2025-12-02T21:50:17.1Z"
    assert logs.timestamp(1_764_712_217_000_000_000) == "2025-12-02T21:50:17Z"


def _copy(tmp_path, chunks, max_line):
    """Write `chunks` into a container's stdout FIFO one by one; the log's (tag, text)."""
    async def main():
        io = logs.ContainerIO(str(tmp_path / "io"), "c1", str(tmp_path / "c.log"), max_line)
        io.attach()
        writer = os.open(io.stdout_path, os.O_WRONLY)
        for chunk in chunks:
            os.write(writer, chunk)
            await asyncio.sleep(0.01)
        os.close(writer)
        io.finish()
    asyncio.run(main())
    out = []
    for line in (tmp_path / "c.log").read_bytes().splitlines():
        m = LINE.match(line)
        assert m and m.group(2) == b"stdout", line
        out.append((m.group(3).decode(), m.group(4)))
    return out


def test_lines_split_across_writes_and_the_unterminated_tail(tmp_path):
    assert _copy(tmp_path, [b"one\ntw", b"o\r\n", b"three"], 16384) == [
        ("F", b"one"), ("F", b"two"), ("P", b"three")]


def test_long_lines_are_split_into_partial_parts(tmp_path):
    """Parts of max_line bytes; a rest of exactly max_line with its newline is the F part."""
    assert _copy(tmp_path, [b"x" * 25, b"y" * 5 + b"\n", b"z" * 10 + b"\n"], 10) == [
        ("P", b"x" * 10), ("P", b"x" * 10), ("F", b"x" * 5 + b"y" * 5), ("F", b"z" * 10)]
