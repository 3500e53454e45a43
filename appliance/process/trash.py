"""Directory removal off the request path: rename next to itself (atomic, frees the name at
once), then delete in one background thread. The hidden `.trash-*` names are swept at boot by
each owner's own cleanup of unknown entries, so a crash mid-delete leaves nothing for long."""
from __future__ import annotations

import itertools
import logging
import os
import queue
import shutil
import threading
from typing import Callable

log = logging.getLogger("appliance.trash")
PREFIX = ".trash-"
_WAKE = ""   # queued by stop(): the drain looks at its stop flag
_names = itertools.count()   # hidden names unique in the process, whichever Trash renames


def remove_tree(path: str) -> None:
    """rmtree that also removes read-only directories and immutable-free leftovers."""
    def onerror(func, p, exc_info):
        try:
            os.chmod(os.path.dirname(p), 0o700)
            func(p)
        except FileNotFoundError:
            pass
    if os.path.lexists(path):
        shutil.rmtree(path, onerror=onerror)


def _daemon_thread(target: Callable[[], None], name: str, stop: Callable[[], None]):
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread


class Trash:
    """The daemon has one, its drain thread started (on first use) under the supervisor:
    `Trash(supervisor.thread)`. Without one (a store built on its own) a daemon thread."""

    def __init__(self, start_thread=_daemon_thread):
        self._start_thread = start_thread   # (target, name, stop) -> threading.Thread
        self._queue: queue.Queue[str] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopping = False

    def discard(self, path: str) -> None:
        """Remove `path` soon; once this returns the path no longer exists under its name."""
        parent, name = os.path.split(os.path.normpath(path))
        hidden = os.path.join(parent, f"{PREFIX}{os.getpid()}-{next(_names)}-{name}")
        try:
            os.rename(path, hidden)
        except FileNotFoundError:
            return
        self._queue.put(hidden)
        with self._lock:
            if self._worker is None or not self._worker.is_alive():
                self._worker = self._start_thread(self._drain, "trash", self.stop)

    def _drain(self) -> None:
        while True:
            path = self._queue.get()
            try:
                if path != _WAKE:
                    remove_tree(path)
            except OSError as exc:  # a leftover is swept at the next boot
                log.warning("failed to remove %s: %s", path, exc)
            finally:
                self._queue.task_done()
            if self._stopping and self._queue.unfinished_tasks == 0:
                return

    def stop(self) -> None:
        """Daemon stop: the drain ends once the queue is empty (its owner waits, bounded)."""
        self._stopping = True
        self._queue.put(_WAKE)

    def settle(self, timeout: float = 10.0) -> bool:
        """Wait (bounded) until every discarded directory is gone; False on timeout."""
        with self._queue.all_tasks_done:
            return self._queue.all_tasks_done.wait_for(
                lambda: not self._queue.unfinished_tasks, timeout)
