"""The owner of background work: close() cancels tasks, stops threads, waits under a
deadline and names what did not end; a failing task is logged, not lost."""
import asyncio
import os
import logging
import threading

from appliance.supervisor import Supervisor


def test_close_cancels_tasks_and_stops_threads():
    async def main():
        s = Supervisor()
        cancelled = []

        async def forever():
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.append(True)
                raise
        s.task(forever(), "forever")
        stop = threading.Event()
        thread = s.thread(lambda: stop.wait(30), "waiter", stop=stop.set)
        await asyncio.sleep(0.01)
        assert await s.close(5.0) == []
        assert cancelled == [True] and not thread.is_alive()
    asyncio.run(main())


def test_close_names_what_outlives_its_deadline(caplog):
    async def main():
        s = Supervisor()
        release = threading.Event()
        s.thread(lambda: release.wait(30), "stuck")   # no way to stop it

        async def stubborn():
            while True:
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    await asyncio.to_thread(release.wait, 30)
                    return
        s.task(stubborn(), "stubborn")
        await asyncio.sleep(0.01)
        with caplog.at_level(logging.WARNING, "appliance.supervisor"):
            left = await s.close(0.2)
        release.set()
        assert sorted(left) == ["stubborn", "stuck"]
        assert "still running at stop: " in caplog.text
    asyncio.run(main())


def test_a_failing_task_is_logged(caplog):
    async def main():
        s = Supervisor()

        async def broken():
            raise RuntimeError("boom")
        with caplog.at_level(logging.ERROR, "appliance.supervisor"):
            s.task(broken(), "broken")
            await asyncio.sleep(0.05)
        assert "background task broken failed" in caplog.text
        assert await s.close() == []
    asyncio.run(main())


def test_the_trash_drain_is_a_supervised_thread_that_close_ends(tmp_path):
    from appliance.process.trash import Trash

    async def main():
        s = Supervisor()
        trash = Trash(s.thread)
        (tmp_path / "d" / "sub").mkdir(parents=True)
        trash.discard(str(tmp_path / "d"))
        assert not (tmp_path / "d").exists()   # renamed at once
        assert trash.settle(10)
        assert os.listdir(tmp_path) == []
        assert [t.name for t in s._threads] == ["trash"]
        assert await s.close(5.0) == []
        assert s._threads == {}
    asyncio.run(main())
