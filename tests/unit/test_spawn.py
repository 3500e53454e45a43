"""process.spawn.run: the shim's `start` without asyncio's subprocess transport: input in,
stdout and stderr out together, the exit code, its own process group, a deadline that
kills and reaps, and no zombie or descriptor left either way."""
import asyncio
import os

import pytest

from appliance.process import spawn


def fds():
    return sorted(os.listdir("/proc/self/fd"))


def run(argv, input=None, timeout=10.0):
    return asyncio.run(spawn.run(argv, cwd="/", env={"PATH": os.environ["PATH"]},
                                 input=input, timeout=timeout))


def test_input_output_status_and_process_group():
    before = fds()
    got = run(["sh", "-c", 'cat; echo " err" >&2; ps -o pgid= -p $$ | tr -d " "; exit 3'],
              input=b"options")
    lines = got.output.split(b"\n")
    assert got.returncode == 3 and lines[0] == b"options err"
    assert int(lines[1]) not in (os.getpgrp(), 0)          # a group of its own
    assert run(["sh", "-c", "cat"]).output == b""           # no input: /dev/null
    assert fds() == before


def test_a_child_past_its_deadline_is_killed_and_reaped():
    before = fds()

    async def main():
        task = asyncio.create_task(spawn.run(["sh", "-c", "echo $$; exec sleep 100"], cwd="/",
                                             env={"PATH": os.environ["PATH"]}, input=None,
                                             timeout=0.5))
        with pytest.raises(TimeoutError):
            await task
    asyncio.run(main())
    assert fds() == before
    with pytest.raises(ChildProcessError):   # reaped: no child left
        os.waitpid(-1, os.WNOHANG)


def test_a_missing_program_raises_and_leaves_nothing():
    before = fds()
    with pytest.raises(FileNotFoundError):
        run(["/nonexistent/program"])
    assert fds() == before
