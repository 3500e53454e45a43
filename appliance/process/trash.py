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

log = logging.getLogger("appliance.trash")
PREFIX = ".trash-"

_queue: queue.Queue[str] = queue.Queue()
_names = itertools.count()
_worker: threading.Thread | None = None
_worker_lock = threading.Lock()


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


def discard(path: str) -> None:
    """Remove `path` soon; once this returns the path no longer exists under its name."""
    parent, name = os.path.split(os.path.normpath(path))
    hidden = os.path.join(parent, f"{PREFIX}{os.getpid()}-{next(_names)}-{name}")
    try:
        os.rename(path, hidden)
    except FileNotFoundError:
        return
    _queue.put(hidden)
    _ensure_worker()


def _ensure_worker() -> None:
    global _worker
    with _worker_lock:
        if _worker is None or not _worker.is_alive():
            _worker = threading.Thread(target=_drain, name="trash", daemon=True)
            _worker.start()


def _drain() -> None:
    while True:
        path = _queue.get()
        try:
            remove_tree(path)
        except OSError as exc:  # a leftover is swept at the next boot
            log.warning("failed to remove %s: %s", path, exc)
        finally:
            _queue.task_done()


def settle(timeout: float = 10.0) -> bool:
    """Wait (bounded) until every discarded directory is gone; False on timeout."""
    with _queue.all_tasks_done:
        return _queue.all_tasks_done.wait_for(lambda: not _queue.unfinished_tasks, timeout)

