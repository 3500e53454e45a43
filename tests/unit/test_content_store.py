"""The blob store on disk: ingests, locks, resume, verification."""
import hashlib
import os
import re

import pytest

from appliance.core.content.store import LocalStore, go_duration, parse_digest
from appliance.errdefs import FailedPrecondition, InvalidArgument, NotFound, Unavailable


def sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_commit_by_rename_after_verification(tmp_path):
    store = LocalStore(str(tmp_path))
    w = store.writer("ref", total=6)
    w.write(b"abc")
    w.write(memoryview(b"def"))
    assert os.listdir(store.blobs + "/sha256") == []          # nothing visible before commit
    dgst = w.seal(6, sha(b"abcdef"))
    assert store.install(w, dgst) is True
    w.committed()
    w.close()
    with store.open(dgst) as f:
        assert f.read() == b"abcdef"
    assert os.stat(store.blob_path(dgst)).st_mode & 0o222 == 0    # read-only
    assert os.listdir(store.ingests) == []


def test_one_writer_per_ref_with_containerds_message(tmp_path):
    store = LocalStore(str(tmp_path))
    w = store.writer("ns/1/ref")
    with pytest.raises(Unavailable) as err:
        store.writer("ns/1/ref")
    assert re.fullmatch(r"ref ns/1/ref locked for [0-9.]+(ns|µs|ms|s) \(since "
                        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)? \+0000 UTC\): unavailable",
                        err.value.message), err.value.message
    w.close()
    store.writer("ns/1/ref").close()


def test_resume_in_process_and_after_restart(tmp_path):
    data = os.urandom(300_000)
    store = LocalStore(str(tmp_path))
    w = store.writer("r", total=len(data))
    w.write(data[:100_000])
    w.close()
    w = store.writer("r")            # same process: the hash state was kept
    assert w.offset == 100_000
    w.write(data[100_000:200_000])
    w.close()
    restarted = LocalStore(str(tmp_path))   # a new process: the partial data is hashed once
    w = restarted.writer("r", total=len(data))
    assert (w.offset, w.total) == (200_000, len(data))
    w.write(data[200_000:])
    assert w.seal(len(data), sha(data)) == sha(data)
    w.close()


def test_bad_digest_keeps_the_ingest_for_a_right_commit(tmp_path):
    """As containerd, a wrong expected digest fails the commit and keeps the data;
    nothing is published under either digest, and the right digest commits it later."""
    store = LocalStore(str(tmp_path))
    w = store.writer("r")
    w.write(b"abc")
    with pytest.raises(FailedPrecondition, match=f"^unexpected commit digest {sha(b'abc')}, "
                       f"expected {sha(b'xyz')}: failed precondition$"):
        w.seal(3, sha(b"xyz"))
    w.close()
    assert store.status("r").offset == 3 and list(store.walk()) == []
    w = store.writer("r")
    assert w.seal(3, sha(b"abc")) == sha(b"abc")
    assert store.install(w, sha(b"abc")) is True
    w.committed()
    w.close()
    assert list(store.walk()) == [sha(b"abc")] and os.listdir(store.ingests) == []


def test_size_mismatch_keeps_the_ingest(tmp_path):
    store = LocalStore(str(tmp_path))
    w = store.writer("r")
    w.write(b"abc")
    with pytest.raises(FailedPrecondition, match="unexpected commit size 3, expected 4"):
        w.seal(4, "")
    w.close()
    assert store.status("r").offset == 3


def test_abort_and_errors(tmp_path):
    store = LocalStore(str(tmp_path))
    store.writer("r").close()
    store.abort("r")
    with pytest.raises(NotFound):
        store.abort("r")
    with pytest.raises(NotFound):
        store.status("r")
    with pytest.raises(InvalidArgument):
        parse_digest("sha256:xyz")
    assert parse_digest("sha512:" + "a" * 128) == ("sha512", "a" * 128)


def test_go_duration():
    assert go_duration(1.5) == "1.5s"
    assert go_duration(0.0123) == "12.3ms"
    assert go_duration(90) == "1m30s"
    assert go_duration(3725.25) == "1h2m5.25s"


def test_an_ingest_status_read_while_the_writer_writes_its_files_never_sees_them_empty(tmp_path):
    """`ctr content active` during a pull: the status files are replaced whole (a temporary
    file renamed over them, as containerd's writeToCompletion), never seen truncated."""
    import threading
    store = LocalStore(str(tmp_path))
    errors, stop = [], threading.Event()

    def poll():
        while not stop.is_set():
            try:
                store.status("busy")
            except NotFound:
                pass
            except Exception as exc:   # noqa: BLE001 - what the bug raised: ValueError
                errors.append(exc)
                return
    reader = threading.Thread(target=poll)
    reader.start()
    try:
        for _ in range(300):
            writer = store.writer("busy", 10)
            writer.write(b"x")
            writer.close()            # rewrites "updatedat"
            if errors:
                break
            store.abort("busy")       # the next writer writes every file afresh
    finally:
        stop.set()
        reader.join(10)
    assert errors == []
