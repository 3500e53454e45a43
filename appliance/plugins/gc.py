"""io.containerd.gc.v1.scheduler: when to collect garbage (the collection is core/gc.py,
the policy core/gc_policy.py, with containerd's config keys).

An explicit request is `schedule(wait=True)` (`images rm --sync`, `leases rm --sync`);
the first collection runs `startup_delay` after the daemon serves. It hears about mutations through the metadata plugin's `changed` hook
(`scheduler.mutated(dirty)`, thread-safe); what it collects is the metadata plugin's
sources, content and snapshotters.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass

from ..config import parse_duration
from ..core.gc import Collector
from ..core.gc_policy import Policy
from ..core.metadata.content import register_gc as register_content_gc
from ..core.snapshots.store import register_gc as register_snapshot_gc
from ..errdefs import DeadlineExceeded
from ..plugin import GC, METADATA, InitContext, Registration

log = logging.getLogger("appliance.gc")
SYNC_WAIT_SECONDS = 60.0


@dataclass
class SchedulerConfig:
    pause_threshold: float = 0.02
    deletion_threshold: int = 0
    mutation_threshold: int = 100
    schedule_delay: str = "0s"
    startup_delay: str = "100ms"


class Scheduler:
    def __init__(self, collector: Collector, cfg: SchedulerConfig, supervisor):
        self.collector = collector
        self.supervisor = supervisor   # owns the scheduling task
        self.pause_threshold = min(max(cfg.pause_threshold, 0.0), 0.5)
        self.deletion_threshold = cfg.deletion_threshold
        self.mutation_threshold = max(cfg.mutation_threshold, 0)
        self.schedule_delay = max(parse_duration(cfg.schedule_delay), 0.0)
        self.startup_delay = max(parse_duration(cfg.startup_delay), 0.0)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._policy: Policy | None = None   # from serving() on; fed on the loop only
        self._wake: asyncio.Event | None = None   # set when the next collection moved
        self._held: list[tuple[float, bool, bool]] | None = None   # while one runs
        self._early: list[tuple[float, bool, bool]] = []   # mutations before serving
        self._early_lock = threading.Lock()
        self._waiters: list[asyncio.Future] = []

    # --- what other plugins call ----------------------------------------------------

    def mutated(self, dirty: bool) -> None:
        """A metadata change; `dirty` when something was deleted. Any thread."""
        event = (time.monotonic(), True, dirty)
        loop = self._loop
        if loop is None:
            with self._early_lock:
                self._early.append(event)
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._event(event)
        elif not loop.is_closed():
            loop.call_soon_threadsafe(self._event, event)

    def schedule(self, wait: bool = False):
        """Ask for a collection soon; with `wait`, an awaitable that ends after it ran."""
        if self._loop is None:   # not serving yet: collect now, synchronously
            self.collector.collect()
            return None
        event = (time.monotonic(), False, False)
        if not wait:
            self._loop.call_soon_threadsafe(self._event, event)
            return None
        future = self._loop.create_future()
        self._waiters.append(future)
        self._event(event)
        return self._wait(future)

    async def _wait(self, future):
        try:
            return await asyncio.wait_for(future, SYNC_WAIT_SECONDS)
        except asyncio.TimeoutError:
            raise DeadlineExceeded("garbage collection did not finish in time: "
                                   "deadline exceeded") from None

    def _event(self, event: tuple[float, bool, bool]) -> None:
        """Feed the policy on the loop, as it happens: the scheduling task wakes only when
        the next collection moved (not for each of a lifecycle's mutations). Events during
        a collection are fed after it finished, as they would have been queued."""
        if self._held is not None:
            self._held.append(event)
            return
        ts, mutation, dirty = event
        before = self._policy.next_at
        if mutation:
            self._policy.mutated(ts, dirty, time.monotonic())
        else:
            self._policy.requested(ts, time.monotonic())
        if self._policy.next_at != before:
            self._wake.set()

    # --- lifecycle --------------------------------------------------------------------

    async def serving(self) -> None:
        self._policy = Policy(time.monotonic(), pause_threshold=self.pause_threshold,
                              deletion_threshold=self.deletion_threshold,
                              mutation_threshold=self.mutation_threshold,
                              schedule_delay=self.schedule_delay,
                              startup_delay=self.startup_delay)
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        with self._early_lock:
            for event in self._early:
                self._event(event)
            self._early.clear()
        self.supervisor.task(self._run(), "gc-scheduler")

    async def _run(self) -> None:
        """containerd's policy (core/gc_policy.py), event-driven: no timer runs while
        nothing is pending."""
        policy = self._policy
        while True:
            timeout = policy.timeout(time.monotonic())
            if timeout != 0:
                self._wake.clear()
                try:
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()
                except asyncio.TimeoutError:
                    pass
                continue
            waiters, self._waiters = self._waiters, []
            policy.started(time.monotonic())
            self._held = []
            try:
                stats = await asyncio.to_thread(self.collector.collect)
            except Exception as exc:
                log.error("garbage collection failed: %s", exc)
                policy.failed(time.monotonic())
                for w in waiters:
                    if not w.done():
                        w.set_exception(exc)
            else:
                policy.finished(time.monotonic(), stats.elapsed)
                for w in waiters:
                    if not w.done():
                        w.set_result(stats)
            finally:
                held, self._held = self._held, None
            for event in held:
                self._event(event)


def _init(ic: InitContext) -> Scheduler:
    md = ic.get(METADATA)
    collector = Collector(md.db, md.gc_sources)
    if md.content is not None:
        register_content_gc(collector, md.content)
    if md.snapshotters:
        register_snapshot_gc(collector, md.snapshotters)
    scheduler = Scheduler(collector, ic.config, ic.supervisor)
    md.changed.subscribe(scheduler.mutated)
    ic.exports.update(PauseThreshold=f"{scheduler.pause_threshold:g}",
                      DeletionThreshold=str(scheduler.deletion_threshold),
                      MutationThreshold=str(scheduler.mutation_threshold),
                      ScheduleDelay=_go_duration_text(scheduler.schedule_delay))
    return scheduler


def _go_duration_text(seconds: float) -> str:
    from ..core.content.store import go_duration
    return go_duration(seconds) if seconds > 0 else "0s"


REGISTRATIONS = [
    Registration(GC, "scheduler", _init, requires=(METADATA,), config=SchedulerConfig),
]
