"""Children run to completion on either event loop (spawn.run): output, input, exit status,
no thread per child, a deadline that kills and reaps."""
import asyncio
import os
import threading

import pytest

from appliance.process import eventloop, spawn

LOOPS = pytest.mark.parametrize("loop_kind", eventloop.LOOPS)


def run_on(loop_kind, monkeypatch, coro):
    monkeypatch.setenv(eventloop.ENV, loop_kind)
    with asyncio.Runner(loop_factory=eventloop.new_event_loop) as runner:
        return runner.run(coro)


@LOOPS
def test_output_status_and_no_thread_per_child(loop_kind, monkeypatch):
    async def main():
        before = threading.active_count()
        run = asyncio.ensure_future(spawn.run(
            ["sh", "-c", "sleep 0.3; echo out; echo err >&2; exit 3"], timeout=10))
        await asyncio.sleep(0.1)
        return await run, threading.active_count() - before

    done, threads = run_on(loop_kind, monkeypatch, main())
    assert (done.returncode, done.stdout, done.stderr, threads) == (3, b"out\n", b"err\n", 0)


@LOOPS
def test_input_merged_output_and_own_process_group(loop_kind, monkeypatch):
    big = b"x" * (1 << 20)   # more than a pipe holds: written as the child reads
    done = run_on(loop_kind, monkeypatch, spawn.run(
        ["sh", "-c", "wc -c; ps -o pgid= -p $$ >&2; echo $$ >&2"], timeout=10, input=big,
        merge_stderr=True, process_group=0))
    count, pgid, pid = done.stdout.split()
    assert (done.returncode, int(count), pgid, done.stderr) == (0, len(big), pid, b"")


@LOOPS
def test_a_deadline_kills_and_the_loop_reaps(loop_kind, monkeypatch, tmp_path):
    pid_file = tmp_path / "pid"

    async def main():
        with pytest.raises(TimeoutError):
            await spawn.run(["sh", "-c", f"echo $$ > {pid_file}; exec sleep 60"], timeout=0.5)
        for _ in range(100):   # the killed child's pidfd becomes readable: reaped
            if not os.path.exists(f"/proc/{pid_file.read_text().strip()}"):
                return True
            await asyncio.sleep(0.1)
        return False

    assert run_on(loop_kind, monkeypatch, main())


@LOOPS
def test_a_missing_program_fails_at_once(loop_kind, monkeypatch):
    with pytest.raises(FileNotFoundError):
        run_on(loop_kind, monkeypatch, spawn.run(["/nonexistent/program"], timeout=10))


def test_an_unknown_loop_is_refused(monkeypatch):
    monkeypatch.setenv(eventloop.ENV, "tokio")
    with pytest.raises(ValueError, match="uvloop, asyncio"):
        eventloop.kind()

