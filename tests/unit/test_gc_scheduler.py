"""The GC scheduler's policy (containerd's config keys) with a counting collector."""
import asyncio
import time

from appliance.core.gc import Stats
from appliance.plugins.gc import Scheduler, SchedulerConfig
from appliance.supervisor import Supervisor


class CountingCollector:
    def __init__(self):
        self.runs = []

    def collect(self):
        self.runs.append(time.monotonic())
        return Stats(time.monotonic(), 0.001, {})


async def until(predicate, timeout=3.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


def run(cfg, scenario):
    async def main():
        collector = CountingCollector()
        supervisor = Supervisor()
        scheduler = Scheduler(collector, cfg, supervisor)
        await scheduler.serving()
        try:
            await scenario(scheduler, collector)
        finally:
            assert await supervisor.close() == []
    asyncio.run(asyncio.wait_for(main(), 20))


def test_startup_then_deletion_then_sync_wait():
    async def scenario(s, c):
        await until(lambda: len(c.runs) == 1)          # startup_delay
        await asyncio.sleep(0.1)
        assert len(c.runs) == 1                          # nothing dirty: no collection
        s.mutated(dirty=True)
        await until(lambda: len(c.runs) == 2)          # a deletion schedules one
        stats = await s.schedule(wait=True)              # rm --sync: waits for a fresh one
        assert len(c.runs) == 3 and stats.removed == {}
    run(SchedulerConfig(startup_delay="20ms"), scenario)


def test_mutation_threshold_and_schedule_delay():
    async def scenario(s, c):
        await until(lambda: len(c.runs) == 1)
        for _ in range(2):
            s.mutated(dirty=False)
        await asyncio.sleep(0.3)
        assert len(c.runs) == 1                          # below mutation_threshold
        s.mutated(dirty=False)
        started = time.monotonic()
        await until(lambda: len(c.runs) == 2)
        assert time.monotonic() - started >= 0.1       # schedule_delay
    run(SchedulerConfig(startup_delay="10ms", mutation_threshold=3, schedule_delay="150ms",
                        pause_threshold=0.0), scenario)


def test_deletion_threshold_waits_for_enough_deletions():
    async def scenario(s, c):
        await until(lambda: len(c.runs) == 1)
        s.mutated(dirty=True)
        await asyncio.sleep(0.2)
        assert len(c.runs) == 1
        s.mutated(dirty=True)
        await until(lambda: len(c.runs) == 2)
    run(SchedulerConfig(startup_delay="10ms", deletion_threshold=2, pause_threshold=0.0,
                        mutation_threshold=0), scenario)


def test_a_mutation_that_moves_nothing_wakes_nothing():
    """Each lifecycle makes ≈ 5 mutations: below every threshold, they only count (the
    scheduling task is not woken, no callback is queued on the loop)."""
    async def scenario(s, c):
        await until(lambda: len(c.runs) == 1)
        await asyncio.sleep(0.01)
        loop = asyncio.get_running_loop()
        assert not loop._ready
        s.mutated(dirty=False)
        assert not loop._ready
        s.mutated(dirty=True)                            # a deletion: one is due
        await until(lambda: len(c.runs) == 2)
    run(SchedulerConfig(startup_delay="10ms", pause_threshold=0.0), scenario)
