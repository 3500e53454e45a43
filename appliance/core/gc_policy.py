"""When to collect garbage: containerd's scheduling policy as a pure state machine.

Events in (`mutated`, `requested`, `started`, `finished`, `failed`, each with the time
it happened), the time of the next collection out (`next_at`, None: nothing pending).
No clock, no tasks, no I/O: the GC scheduler plugin feeds it and sleeps until `next_at`.

The policy (containerd's config keys): a collection follows a deletion (or
`deletion_threshold` of them), `mutation_threshold` mutations, or an explicit request,
after `schedule_delay`; the first comes `startup_delay` after start; between collections
triggered by mutations, the time spent collecting stays under `pause_threshold`.
"""
from __future__ import annotations

RETRY_AFTER_FAILURE = 1.0   # seconds added to the interval after a failed collection


class Policy:
    def __init__(self, now: float, *, pause_threshold: float = 0.02,
                 deletion_threshold: int = 0, mutation_threshold: int = 100,
                 schedule_delay: float = 0.0, startup_delay: float = 0.1):
        self.pause_threshold = pause_threshold
        self.deletion_threshold = deletion_threshold
        self.mutation_threshold = mutation_threshold
        self.schedule_delay = schedule_delay
        self.interval = 1.0          # the least time between collections (pause_threshold)
        self.gc_time, self.collections = 0.0, 0
        self.triggered, self.deletions, self.mutations = False, 0, 0
        self.last_start: float | None = None
        self.last_end: float | None = None
        self.next_at: float | None = now + startup_delay if startup_delay > 0 else None

    def mutated(self, ts: float, dirty: bool, now: float) -> float | None:
        """A metadata change at `ts` (dirty: something was deleted)."""
        return self._event(ts, True, dirty, now)

    def requested(self, ts: float, now: float) -> float | None:
        """An explicit request at `ts` (a --sync delete, or a schedule() call)."""
        return self._event(ts, False, False, now)

    def _event(self, ts, mutation, dirty, now) -> float | None:
        if self.last_start is not None and ts < self.last_start:
            return self.next_at   # the last collection already saw it
        self.deletions += dirty
        if mutation:
            self.mutations += 1
        else:
            self.triggered = True
        if self.triggered or (self.deletion_threshold > 0
                              and self.deletions >= self.deletion_threshold):
            want = now + self.schedule_delay
        elif ((self.deletion_threshold == 0 and self.deletions > 0)
              or (self.mutation_threshold > 0 and self.mutations >= self.mutation_threshold)):
            want = now + self.schedule_delay
            if self.last_end is not None:
                want = max(want, self.last_end + self.interval)
        else:
            return self.next_at
        if self.next_at is None or want < self.next_at:
            self.next_at = want
        return self.next_at

    def timeout(self, now: float) -> float | None:
        """How long to wait for the next event before collecting (None: no limit)."""
        return None if self.next_at is None else max(0.0, self.next_at - now)

    def started(self, now: float) -> None:
        """A collection begins: it sees every change made so far."""
        self.last_start = now
        self.triggered, self.deletions, self.mutations = False, 0, 0
        self.next_at = None

    def finished(self, now: float, elapsed: float) -> None:
        self.last_end = now
        self.gc_time += elapsed
        self.collections += 1
        if self.pause_threshold > 0:
            avg = self.gc_time / self.collections
            self.interval = avg / self.pause_threshold - avg

    def failed(self, now: float) -> float:
        """A collection failed: try again after the interval and a second."""
        self.last_end = now
        self.next_at = now + self.interval + RETRY_AFTER_FAILURE
        return self.next_at
