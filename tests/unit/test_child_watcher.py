"""The daemon's event loop reaps its subprocesses (shim starts, CNI plugins) through a pidfd
it polls, not a thread started per child (asyncio 3.11's default watcher). In a process of
its own: the child watcher is asyncio's global state."""
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import asyncio, threading
    from appliance import daemon
    loop = daemon._event_loop()
    async def main():
        before = threading.active_count()
        proc = await asyncio.create_subprocess_exec("sh", "-c", "sleep 0.3; exit 3")
        during = threading.active_count()
        return await asyncio.wait_for(proc.wait(), 10), during - before
    print(*loop.run_until_complete(main()))
""")


def test_a_child_is_reaped_without_a_thread_of_its_own():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         check=True, timeout=60).stdout.split()
    assert out == ["3", "0"]   # exit status, threads added while the child ran
