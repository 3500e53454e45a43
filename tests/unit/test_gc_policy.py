"""The GC scheduling policy as a pure state machine: events and times in, next run out."""
from pytest import approx

from appliance.core.gc_policy import Policy


def test_startup_delay_then_nothing_until_a_deletion():
    p = Policy(100.0, startup_delay=0.1)
    assert p.next_at == approx(100.1) and p.timeout(100.05) == approx(0.05)
    p.started(100.1)
    p.finished(100.2, 0.01)
    assert p.next_at is None and p.timeout(200.0) is None   # idle: no timer
    assert p.mutated(101.0, dirty=False, now=101.0) is None  # a mutation alone: below threshold
    # a deletion schedules one, but not before the pause interval after the last one
    # (avg 0.01 s per collection at pause_threshold 0.02 → 0.49 s between collections)
    assert p.mutated(100.3, dirty=True, now=100.3) == approx(100.2 + 0.49)


def test_no_startup_collection_without_a_startup_delay():
    assert Policy(5.0, startup_delay=0).next_at is None


def test_a_request_runs_after_schedule_delay_regardless_of_the_interval():
    p = Policy(0.0, startup_delay=0, schedule_delay=0.5)
    p.started(1.0)
    p.finished(2.0, 1.0)    # a slow collection: a long pause interval
    assert p.requested(2.5, now=2.5) == approx(3.0)


def test_mutation_threshold():
    p = Policy(0.0, startup_delay=0, mutation_threshold=3, pause_threshold=0)
    assert p.mutated(1.0, False, 1.0) is None
    assert p.mutated(1.1, False, 1.1) is None
    assert p.mutated(1.2, False, 1.2) == 1.2


def test_deletion_threshold_waits_for_enough_deletions():
    p = Policy(0.0, startup_delay=0, deletion_threshold=2, mutation_threshold=0)
    assert p.mutated(1.0, True, 1.0) is None
    assert p.mutated(1.5, True, 1.5) == 1.5


def test_an_event_the_running_collection_saw_is_ignored():
    p = Policy(0.0, startup_delay=0)
    p.started(10.0)
    assert p.mutated(9.9, dirty=True, now=10.5) is None   # happened before the start
    assert p.mutated(10.1, dirty=True, now=10.5) is not None


def test_the_earliest_wanted_time_wins():
    p = Policy(0.0, startup_delay=0, schedule_delay=1.0)
    assert p.requested(1.0, 1.0) == 2.0
    p.schedule_delay = 0.2
    assert p.requested(1.5, 1.5) == approx(1.7)
    p.schedule_delay = 5.0
    assert p.requested(1.6, 1.6) == approx(1.7)


def test_a_failed_collection_is_retried_after_the_interval_and_a_second():
    p = Policy(0.0, startup_delay=0)
    p.started(3.0)
    assert p.failed(3.5) == approx(5.5)
