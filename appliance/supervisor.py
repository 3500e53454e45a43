"""One owner for the daemon's background work (as trio's nurseries, asyncio.TaskGroup).

Every long-lived asyncio task and worker thread is started here; `close()` at stop
cancels the tasks (and asks the threads to stop), waits for all of it under one
deadline and logs by name whatever did not end. A task that fails is logged when it
ends, not lost.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Callable

log = logging.getLogger("appliance.supervisor")
CLOSE_SECONDS = 2.0


class Supervisor:
    def __init__(self):
        self._tasks: set[asyncio.Task] = set()
        self._threads: dict[threading.Thread, Callable[[], None] | None] = {}
        self._lock = threading.Lock()

    def task(self, coro, name: str) -> asyncio.Task:
        """Start `coro` as a task on the running loop; close() cancels it."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())

    def thread(self, target: Callable[[], None], name: str,
               stop: Callable[[], None] | None = None) -> threading.Thread:
        """Start `target` in a daemon thread; close() calls `stop` and waits for it to end."""
        def run():
            try:
                target()
            except BaseException:
                log.exception("background thread %s failed", name)
            finally:
                with self._lock:
                    self._threads.pop(thread, None)
        thread = threading.Thread(target=run, name=name, daemon=True)
        with self._lock:
            self._threads[thread] = stop
        thread.start()
        return thread

    async def close(self, timeout: float = CLOSE_SECONDS) -> list[str]:
        """Cancel and stop everything, wait up to `timeout`; the names still running."""
        deadline = time.monotonic() + timeout
        tasks = [t for t in self._tasks if not t.done()]
        for task in tasks:
            task.cancel()
        with self._lock:
            threads = list(self._threads.items())
        for _, stop in threads:
            if stop is not None:
                stop()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        left = [t.get_name() for t in tasks if not t.done()]
        for thread, _ in threads:
            await asyncio.to_thread(thread.join, max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                left.append(thread.name)
        if left:
            log.warning("background work still running at stop: %s", ", ".join(left))
        return left
