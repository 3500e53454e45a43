"""Every thread's and asyncio task's stack as text: SIGUSR1's log line and the debug
endpoint's goroutines page."""
from __future__ import annotations

import asyncio
import sys
import threading
import traceback


def dump_stacks() -> str:
    """Every thread's stack and every asyncio task's stack, for SIGUSR1."""
    lines = ["=== thread stacks ==="]
    names = {t.ident: t.name for t in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        lines.append(f"--- thread {names.get(ident, ident)} ---")
        lines.extend(l.rstrip() for l in traceback.format_stack(frame))
    lines.append("=== asyncio tasks ===")
    try:
        tasks = asyncio.all_tasks()
    except RuntimeError:
        tasks = set()
    for task in tasks:
        lines.append(f"--- {task.get_name()}: {task.get_coro()!r} ---")
        for frame in task.get_stack():
            lines.extend(l.rstrip() for l in traceback.format_stack(frame, limit=1))
    return "\n".join(lines)
