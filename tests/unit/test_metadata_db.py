"""The metadata database's one writer and per-thread readers: a read never waits for a write
transaction held by another thread (the event loop while a GC sweep or a commit runs), sees
only committed data as one snapshot, and a thread inside its own write sees that write."""
import os
import threading

import pytest

from appliance.core.metadata.db import DB


@pytest.fixture
def db(tmp_path):
    db = DB(str(tmp_path / "meta.db"))
    yield db
    db.close()


def names(conn):
    return [r[0] for r in conn.execute("SELECT name FROM namespaces ORDER BY name")]


def test_a_read_does_not_wait_for_another_threads_write(db):
    with db.write() as tx:
        tx.execute("INSERT INTO namespaces VALUES ('a', 1, 1)")
    inside, release, seen = threading.Event(), threading.Event(), []

    def writer():
        with db.write() as tx:
            tx.execute("INSERT INTO namespaces VALUES ('b', 1, 1)")
            inside.set()
            release.wait(30)
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert inside.wait(10)
        def read():
            with db.read() as conn:
                seen.append(names(conn))
        reader = threading.Thread(target=read)
        reader.start()
        reader.join(5)
        assert not reader.is_alive(), "the read waited for the writer"
        assert seen == [["a"]]   # the uncommitted row is not seen
    finally:
        release.set()
        thread.join(10)
    with db.read() as conn:
        assert names(conn) == ["a", "b"]


def test_a_thread_reads_its_own_write_and_a_read_is_one_snapshot(db):
    with db.write() as tx:
        tx.execute("INSERT INTO namespaces VALUES ('a', 1, 1)")
        with db.read() as conn:
            assert names(conn) == ["a"]
    with db.read() as conn:
        first = names(conn)
        def write():
            with db.write() as tx:
                tx.execute("INSERT INTO namespaces VALUES ('z', 1, 1)")
        t = threading.Thread(target=write)
        t.start()
        t.join(10)
        assert names(conn) == first == ["a"]   # committed meanwhile, not in this snapshot
    with db.read() as conn:
        assert names(conn) == ["a", "z"]


def _open_files(path: str) -> int:
    return sum(1 for fd in os.listdir("/proc/self/fd")
               if os.path.realpath(f"/proc/self/fd/{fd}") == path)


def test_a_finished_threads_reading_connection_is_closed(db):
    """Threads that read once and end (a pull's per-layer threads) do not each leave a
    connection open for the daemon's lifetime."""
    def read():
        with db.read() as conn:
            conn.execute("SELECT 1").fetchone()
    for _ in range(20):
        t = threading.Thread(target=read)
        t.start()
        t.join()
    read()   # a new reader in this thread drops those of threads that ended
    assert _open_files(db.path) <= 3, _open_files(db.path)   # writer, this reader (+1 spare)


def test_read_kept_keeps_no_value_a_write_changed_after_its_check(tmp_path):
    """A write that begins and ends between read_kept's epoch check and its keeping (another
    thread, interleaved there) changed the value read: it is not kept."""
    db = DB(str(tmp_path / "meta.db"))
    stored = {"value": "old"}

    class Interleaved(dict):
        def __len__(self):    # read_kept asks for the size between its check and keeping
            if stored["value"] == "old":
                with db.write():             # the writer's rule: drop the key inside
                    self.pop("key", None)
                    stored["value"] = "new"
            return dict.__len__(self)

    kept = Interleaved()
    try:
        assert db.read_kept(kept, "key", lambda conn: stored["value"], 10) == "old"
        assert kept.get("key") in (None, "new")
    finally:
        db.close()
