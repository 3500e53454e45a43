"""The content store driven by the real ctr, next to containerd 1.6.20, and its faults."""
import hashlib
import os
import re
import signal
import subprocess
import time

import grpc
import pytest

from appliance._proto.containerd.api.services.content.v1 import content_pb2 as pb
from appliance._proto.containerd.api.services.content.v1 import content_pb2_grpc
from daemon import CTR, Daemon, wait_for
from image_helpers import make_oci, oci_blobs
from reference import Containerd

pytestmark = pytest.mark.integration
MiB = 1 << 20


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def blobs_dir(d) -> str:
    return os.path.join(d.root, "io.containerd.content.v1.content", "blobs", "sha256")


def status(d, ref, namespace="default"):
    """(offset, total) of an ingest, straight from the Status RPC."""
    with grpc.insecure_channel("unix:" + d.address) as ch:
        st = content_pb2_grpc.ContentStub(ch).Status(
            pb.StatusRequest(ref=ref), metadata=[("containerd-namespace", namespace)],
            timeout=10).status
    return st.offset, st.total


def ingest_file(d, ref, path, *flags):
    with open(path, "rb") as f:
        return subprocess.run([CTR, "--address", d.address, "content", "ingest", *flags, ref],
                              stdin=f, capture_output=True, text=True, timeout=120)


def start_piped_ingest(d, ref, *flags):
    """ctr content ingest fed through a pipe we control (so it can be stopped mid-way)."""
    return subprocess.Popen([CTR, "--address", d.address, "content", "ingest", *flags, ref],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def settled(d, collections_before=0):
    """Wait for the start-up collection: content nobody references (a bare `content ingest`)
    is garbage, in containerd too, and must not race it."""
    wait_for(lambda: d.log().count("garbage collected") > collections_before,
             what="the start-up collection")
    return d


@pytest.fixture(scope="module")
def both():
    ours, theirs = Daemon(), Containerd()
    try:
        settled(ours.start())
        theirs.start()
        time.sleep(0.3)   # containerd's start-up collection runs 100 ms after boot
        yield ours, theirs
    finally:
        ours.cleanup()
        theirs.cleanup()


@pytest.fixture
def payload(tmp_path):
    data = os.urandom(3 * MiB + 17)
    path = tmp_path / "payload"
    path.write_bytes(data)
    return data, str(path)


def normalise(d, text):
    text = text.replace(str(d.root), "ROOT")
    # ctr prints label maps in Go's random map order
    text = re.sub(r"\S+=\S*(,\S+=\S*)+", lambda m: ",".join(sorted(m.group(0).split(","))), text)
    return re.sub(r"(Less than a second|About a minute|\d+ seconds)", "AGE", text)


def test_ingest_ls_get_label_rm_active(both, payload):
    data, path = payload
    dgst = sha(data)
    outputs = []
    for d in both:
        ns = ["--namespace", "c-basic"]
        run = lambda *a, **k: subprocess.run([CTR, "--address", d.address, *ns, *a],
                                             capture_output=True, **k)
        with open(path, "rb") as f:
            assert run("content", "ingest", "--expected-size", str(len(data)),
                       "--expected-digest", dgst, "ref-a", stdin=f).returncode == 0
        got = run("content", "get", dgst)
        assert got.returncode == 0 and got.stdout == data
        steps = [run("content", "ls"),
                 run("content", "label", dgst, "team=blue", "tier=1"),
                 run("content", "label", dgst, "tier="),
                 run("content", "ls", "labels.team==blue"),
                 run("content", "ls", "-q"),
                 run("content", "active"),
                 run("content", "get", "sha256:" + "0" * 64),
                 run("content", "label", "sha256:" + "0" * 64, "a=b"),
                 run("content", "rm", dgst),
                 run("content", "ls", "-q"),
                 run("content", "rm", dgst)]
        outputs.append([(r.returncode, normalise(d, (r.stdout + r.stderr).decode()))
                        for r in steps])
    assert outputs[0] == outputs[1]
    listing = outputs[0][0][1]
    assert dgst in listing and "3.146MB" in listing
    assert "team=blue" in outputs[0][3][1] and "tier" not in outputs[0][3][1]
    assert outputs[0][9] == (0, "")


def test_wrong_expected_digest_is_failed_precondition(both, payload):
    """The failed commit keeps the ingest (listed as active, nothing published);
    a commit with the right digest then succeeds, as in containerd."""
    data, path = payload
    wrong = sha(b"something else")
    results = []
    for d in both:
        ns = "c-wrong"

        def ingest(expected):
            with open(path, "rb") as f:
                return subprocess.run([CTR, "--address", d.address, "-n", ns, "content", "ingest",
                                       "--expected-digest", expected, "ref-wrong"], stdin=f,
                                      capture_output=True, text=True, timeout=120)
        r = ingest(wrong)
        steps = [(r.returncode, r.stderr.replace(sha(data), "ACTUAL"))]
        active = d.ctr("content", "active", namespace=ns).stdout
        steps.append(normalise(d, active))
        steps.append(d.ctr("content", "ls", "-q", namespace=ns).stdout)
        steps.append(status(d, "ref-wrong", ns))
        r = ingest(sha(data))
        steps.append((r.returncode, r.stderr))
        steps.append(d.ctr("content", "active", namespace=ns).stdout)
        got = subprocess.run([CTR, "--address", d.address, "-n", ns, "content", "get", sha(data)],
                             capture_output=True, timeout=60)
        steps.append(got.stdout == data)
        d.ctr("content", "rm", sha(data), namespace=ns)
        results.append(steps)
    assert results[0] == results[1]
    failed, active, listed, offset, right, active_after, same = results[0]
    assert failed == (1, 'ctr: failed commit on ref "ref-wrong": commit failed: unexpected '
                         f"commit digest ACTUAL, expected {wrong}: failed precondition\n")
    assert "ref-wrong" in active and listed == "" and offset == (len(data), 0)
    assert right == (0, "") and active_after.split() == ["REF", "SIZE", "AGE"] and same


def open_writer(channel, ref):
    """A Write stream with one STAT sent; returns (responses iterator, send queue)."""
    import queue
    q = queue.Queue()
    q.put(pb.WriteContentRequest(action=pb.STAT, ref=ref))

    def requests():
        while True:
            item = q.get()
            if item is None:
                return
            yield item
    responses = content_pb2_grpc.ContentStub(channel).Write(
        requests(), metadata=[("containerd-namespace", "default")], timeout=30)
    return responses, q


def test_second_writer_on_a_ref_is_locked(both):
    messages = []
    for d in both:
        with grpc.insecure_channel("unix:" + d.address) as ch:
            first, q1 = open_writer(ch, "locked-ref")
            assert next(first).action == pb.STAT
            second, q2 = open_writer(ch, "locked-ref")
            with pytest.raises(grpc.RpcError) as err:
                next(second)
            q1.put(None)
            q2.put(None)
        messages.append((err.value.code(), err.value.details()))
    pattern = (r"ref default/1/locked-ref locked for [0-9.]+(ns|µs|ms|s) "
               r"\(since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)? \+0000 UTC[^)]*\): unavailable")
    for code, text in messages:
        assert code == grpc.StatusCode.UNAVAILABLE and re.fullmatch(pattern, text), text


def test_stream_cut_by_client_stays_resumable(tmp_path):
    d = settled(Daemon().start())
    try:
        data = os.urandom(12 * MiB + 5)
        path = tmp_path / "data"
        path.write_bytes(data)
        ctr = start_piped_ingest(d, "cut")
        ctr.stdin.write(data[:6 * MiB])
        ctr.stdin.flush()
        wait_for(lambda: d.ctr("content", "active").stdout.count("cut") and
                 status(d, "cut")[0] >= 5 * MiB, what="5 MiB written")
        ctr.kill()                      # the client goes away mid-stream
        ctr.wait(10)
        ctr.stdin.close()
        offset = wait_for(lambda: status(d, "cut")[0], what="ingest status")
        assert 5 * MiB <= offset <= 6 * MiB
        assert "cut" in d.ctr("content", "active").stdout
        r = ingest_file(d, "cut", str(path), "--expected-digest", sha(data))
        assert r.returncode == 0, r.stderr
        assert d.ctr("content", "ls", "-q").stdout.split() == [sha(data)]
        got = subprocess.run([CTR, "--address", d.address, "content", "get", sha(data)],
                             capture_output=True, timeout=60)
        assert got.stdout == data
    finally:
        d.cleanup()


def kill_daemon_mid_ingest(tmp_path, size):
    """SIGKILL the daemon during an ingest, restart it, resume, commit the right digest."""
    d = settled(Daemon().start())
    try:
        data = os.urandom(size)
        path = tmp_path / "data"
        path.write_bytes(data)
        ctr = start_piped_ingest(d, "big", "--expected-size", str(size))
        half = size // 2
        ctr.stdin.write(data[:half])
        ctr.stdin.flush()
        wait_for(lambda: status(d, "big")[0] >= half - MiB, timeout=120, what="half written")
        assert os.listdir(blobs_dir(d)) == []      # no partial blob is ever visible
        d.signal(signal.SIGKILL)
        d.proc.wait(10)
        ctr.kill()
        ctr.wait(10)
        d.log_file.close()
        settled(d.start(), d.log().count("garbage collected"))
        active = d.ctr("content", "active").stdout
        assert re.search(r"^big\s+\S+", active, re.M), active
        offset, total = status(d, "big")
        assert half - MiB <= offset <= half and total == size
        assert os.listdir(blobs_dir(d)) == []
        started = time.monotonic()
        r = ingest_file(d, "big", str(path), "--expected-size", str(size),
                        "--expected-digest", sha(data))
        assert r.returncode == 0, r.stderr
        assert d.ctr("content", "ls", "-q").stdout.split() == [sha(data)]
        with open(os.path.join(blobs_dir(d), sha(data)[7:]), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == sha(data)[7:]
        assert d.ctr("content", "active").stdout.strip() == "REF\tSIZE\tAGE"
        return time.monotonic() - started
    finally:
        d.cleanup()


def test_sigkill_daemon_mid_ingest_64mib(tmp_path):
    kill_daemon_mid_ingest(tmp_path, 64 * MiB)


@pytest.mark.slow
def test_sigkill_daemon_mid_ingest_512mib(tmp_path):
    kill_daemon_mid_ingest(tmp_path, 512 * MiB)


def test_reingest_while_collection_pending_is_kept(tmp_path):
    """containerd 1.6 can lose a blob re-ingested right after `content rm` (seen with its
    asynchronous GC): the write answers "already exists", then the pending collection
    deletes the file."""
    oci = make_oci(tmp_path)
    blobs = oci_blobs(oci)
    layer = max(blobs, key=lambda k: len(blobs[k]))
    (tmp_path / "layer").write_bytes(blobs[layer])
    config = tmp_path / "config.toml"
    config.write_text('version = 2\n[plugins."io.containerd.gc.v1.scheduler"]\n'
                      '  pause_threshold = 0.0\n')   # collections on a fixed 1 s tick
    d = settled(Daemon(config=str(config)).start())
    try:
        d.ctr("images", "import", "--no-unpack", str(oci))
        for _ in range(3):   # the image references the layer; rm drops its record
            d.ctr("content", "rm", layer)
            r = ingest_file(d, "again", str(tmp_path / "layer"), "--expected-digest", layer)
            assert r.returncode == 0, r.stderr
            marker = d.log().count("garbage collected")
            wait_for(lambda: d.log().count("garbage collected") > marker, what="a collection")
            got = subprocess.run([CTR, "--address", d.address, "content", "get", layer],
                                 capture_output=True, timeout=60)
            assert got.returncode == 0 and got.stdout == blobs[layer], got.stderr
            assert "complete (2/2)" in d.ctr("images", "check", check=False).stdout
    finally:
        d.cleanup()


def write_in_lease(d, lease, ref, data, commit=True):
    """A Write stream under a lease (as a pull does); returns the last response."""
    reqs = [pb.WriteContentRequest(action=pb.STAT, ref=ref),
            pb.WriteContentRequest(action=pb.WRITE, ref=ref, offset=0, data=data)]
    if commit:
        reqs.append(pb.WriteContentRequest(action=pb.COMMIT, ref=ref, offset=len(data),
                                           total=len(data), expected=sha(data)))
    with grpc.insecure_channel("unix:" + d.address) as ch:
        responses = list(content_pb2_grpc.ContentStub(ch).Write(
            iter(reqs), metadata=[("containerd-namespace", "default"),
                                  ("containerd-lease", lease)], timeout=30))
    return responses[-1]


def collect(d):
    """Force a full collection and wait for it (`leases rm --sync` of a throwaway lease)."""
    d.ctr("leases", "create", "--id", "throwaway")
    d.ctr("leases", "rm", "--sync", "throwaway")


def test_leases_protect_in_flight_content(tmp_path):
    d = settled(Daemon().start())
    try:
        d.ctr("leases", "create", "--id", "pull")
        blob, partial = os.urandom(2 * MiB), os.urandom(MiB)
        assert write_in_lease(d, "pull", "layer-1", blob).digest == sha(blob)
        write_in_lease(d, "pull", "layer-2", partial, commit=False)
        collect(d)
        assert d.ctr("content", "ls", "-q").stdout.split() == [sha(blob)]
        assert status(d, "layer-2")[0] == MiB
        resources = d.ctr("leases", "ls").stdout
        assert "pull" in resources
        d.ctr("leases", "rm", "--sync", "pull")      # the pull is over: all of it goes
        assert d.ctr("content", "ls", "-q").stdout == ""
        assert d.ctr("content", "active").stdout.strip() == "REF\tSIZE\tAGE"
        assert os.listdir(blobs_dir(d)) == []
    finally:
        d.cleanup()


def test_content_events_match_containerd(both, payload):
    data, path = payload
    topics = []
    for d in both:
        events = subprocess.Popen([CTR, "--address", d.address, "events"],
                                  stdout=subprocess.PIPE, text=True)
        try:
            time.sleep(0.3)
            assert ingest_file(d, "ev", path).returncode == 0
            d.ctr("content", "rm", sha(data))
            d.ctr("namespaces", "create", "ev-end")   # a marker: the last event we wait for
            lines = []
            for line in events.stdout:
                lines.append(line)
                if "/namespaces/create" in line:
                    break
        finally:
            events.kill()
            events.wait(5)
        topics.append([line.split()[4:6] for line in lines[:-1]])   # not the marker
        d.ctr("namespaces", "rm", "ev-end")
    assert topics[0] == topics[1] == [["default", "/content/delete"]]


def test_read_ranges_status_and_abort_match_containerd(both):
    data = os.urandom(3 * MiB)
    seen = []
    for d in both:
        meta = [("containerd-namespace", "c-rpc")]
        with grpc.insecure_channel("unix:" + d.address) as ch:
            stub = content_pb2_grpc.ContentStub(ch)
            list(stub.Write(iter([
                pb.WriteContentRequest(action=pb.WRITE, ref="whole", data=data),
                pb.WriteContentRequest(action=pb.COMMIT, ref="whole", offset=len(data),
                                       total=len(data), expected=sha(data),
                                       labels={"containerd.io/gc.root": "test"})]),
                metadata=meta, timeout=30))   # a root: collections of other tests keep it
            list(stub.Write(iter([pb.WriteContentRequest(action=pb.WRITE, ref="part",
                                                         data=data[:1000])]),
                            metadata=meta, timeout=30))
            out = []
            for offset, size in ((0, 0), (MiB + 3, 10), (2 * MiB, 0), (len(data), 0)):
                chunks = list(stub.Read(pb.ReadContentRequest(digest=sha(data), offset=offset,
                                                              size=size), metadata=meta, timeout=30))
                got = b"".join(c.data for c in chunks)
                out.append((chunks[0].offset if chunks else None, got == data[offset:offset + size]
                            if size else got == data[offset:]))
            st = stub.Status(pb.StatusRequest(ref="part"), metadata=meta, timeout=10).status
            out.append((st.ref, st.offset))
            out.append([s.ref for s in stub.ListStatuses(pb.ListStatusesRequest(
                filters=["ref==part"]), metadata=meta, timeout=10).statuses])
            stub.Abort(pb.AbortRequest(ref="part"), metadata=meta, timeout=10)
            for call, request in ((stub.Abort, pb.AbortRequest(ref="part")),
                                  (stub.Status, pb.StatusRequest(ref="part")),
                                  (stub.Info, pb.InfoRequest(digest=sha(b"none")))):
                with pytest.raises(grpc.RpcError) as err:
                    call(request, metadata=meta, timeout=10)
                out.append((err.value.code(), err.value.details()))
            stub.Delete(pb.DeleteContentRequest(digest=sha(data)), metadata=meta, timeout=10)
        seen.append(out)
    assert seen[0] == seen[1]
    assert seen[0][1] == (0, True) and seen[0][4] == ("part", 1000)


def test_write_protocol_errors_match_containerd(both):
    data = b"hello world"
    existing = os.urandom(64)
    streams = {
        "no ref": [pb.WriteContentRequest(action=pb.STAT)],
        "bad offset": [pb.WriteContentRequest(action=pb.WRITE, ref="w1", offset=5, data=data)],
        "exists": [pb.WriteContentRequest(action=pb.STAT, ref="w2", expected=sha(existing))],
        "size": [pb.WriteContentRequest(action=pb.WRITE, ref="w3", data=data),
                 pb.WriteContentRequest(action=pb.COMMIT, ref="w3", offset=len(data),
                                        total=len(data) + 1)],
        "digest": [pb.WriteContentRequest(action=pb.WRITE, ref="w4", data=data),
                   pb.WriteContentRequest(action=pb.COMMIT, ref="w4", offset=len(data),
                                          expected=sha(b"other"))],
        "restart at 0": [pb.WriteContentRequest(action=pb.WRITE, ref="w5", data=b"junk"),
                         pb.WriteContentRequest(action=pb.WRITE, ref="w5", offset=0, data=data),
                         pb.WriteContentRequest(action=pb.COMMIT, ref="w5", offset=len(data),
                                                expected=sha(data))],
    }
    seen = []
    for d in both:
        meta = [("containerd-namespace", "c-proto")]
        out = {}
        with grpc.insecure_channel("unix:" + d.address) as ch:
            stub = content_pb2_grpc.ContentStub(ch)
            list(stub.Write(iter([pb.WriteContentRequest(
                action=pb.COMMIT, ref="seed", data=existing, expected=sha(existing),
                labels={"containerd.io/gc.root": "1"})]), metadata=meta, timeout=30))
            for name, reqs in streams.items():
                try:
                    got = [(r.action, r.offset, r.digest)
                           for r in stub.Write(iter(reqs), metadata=meta, timeout=30)]
                    # containerd's deferred Send repeats the last response as the stream
                    # ends (a quirk clients ignore: they read one per request); we send one
                    if len(got) > len(reqs) and got[-1] == got[-2]:
                        got.pop()
                    out[name] = got
                except grpc.RpcError as err:
                    out[name] = (err.code(), err.details())
            for ref in ("w1", "w3"):
                stub.Abort(pb.AbortRequest(ref=ref), metadata=meta, timeout=10)
            stub.Delete(pb.DeleteContentRequest(digest=sha(existing)), metadata=meta, timeout=10)
        seen.append(out)
    ours, theirs = seen
    for name in streams:
        assert ours[name] == theirs[name], f"{name}: ours {ours[name]!r}\n theirs {theirs[name]!r}"
    assert ours["bad offset"][0] == grpc.StatusCode.OUT_OF_RANGE
    assert ours["restart at 0"][-1] == (pb.COMMIT, len(data), sha(data))
