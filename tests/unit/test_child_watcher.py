"""The daemon's event loop reaps its subprocesses (shim starts, CNI plugins) through a pidfd
it polls, not a thread started per child (asyncio 3.11's default watcher)."""
import asyncio
import threading

from appliance import daemon


def test_a_child_is_reaped_without_a_thread_of_its_own():
    loop = daemon._event_loop()
    try:
        async def main():
            before = threading.active_count()
            proc = await asyncio.create_subprocess_exec("sh", "-c", "sleep 0.3; exit 3")
            during = threading.active_count()
            return await asyncio.wait_for(proc.wait(), 10), during - before
        code, extra_threads = loop.run_until_complete(main())
        assert code == 3
        assert extra_threads == 0
    finally:
        loop.close()
        asyncio.set_child_watcher(None)   # other tests get asyncio's default again
