"""A full disk never wedges the daemon.

Root or state on a small tmpfs of the test's own. A failed ingest or layer apply gives
its space back at once; deletes, garbage collection and `ctr version` work on a disk
filled to the last byte (the metadata database keeps a reserve); a full disk answers
RESOURCE_EXHAUSTED naming the path, with no traceback in the log.
"""
import os
import subprocess

import grpc
import pytest

from appliance._proto.containerd.api.services.content.v1 import content_pb2 as pb
from appliance._proto.containerd.api.services.content.v1 import content_pb2_grpc
from daemon import Daemon
from image_helpers import make_oci, make_random_image

MiB = 1 << 20
ROOT_MIB = 40
SMALL = "localhost/busybox:latest"
NO_SPACE = "no space left on device"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    return {"small": make_oci(d, SMALL),
            "ingest": make_random_image(d, "localhost/too-big:1", 48),     # > ROOT_MIB
            "unpack": make_random_image(d, "localhost/fits-once:1", 24)}   # fits, not twice


@pytest.fixture
def on_tmpfs(tmp_path):
    """A daemon whose root or state (`on_tmpfs(where, mib)`) is a tmpfs mounted here."""
    daemons, mounts = [], []

    def start(where, mib):
        d = Daemon(workdir=str(tmp_path / "d"))
        path = d.root if where == "root" else d.state
        path.mkdir(parents=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(path)],
                       check=True)
        mounts.append(path)
        daemons.append(d.start())
        return d
    try:
        yield start
    finally:
        for d in daemons:
            d.cleanup()   # stops it and unmounts what is under its workdir
        for path in mounts:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(directory) -> str:
    """Fill the filesystem of `directory` to the last byte with a file of the test's own."""
    path = os.path.join(directory, "filler")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        chunk = b"\0" * MiB
        while True:
            try:
                os.write(fd, chunk)
            except OSError:
                if len(chunk) == 1:
                    break
                chunk = chunk[:len(chunk) // 2]
    finally:
        os.close(fd)
    assert os.statvfs(directory).f_bavail == 0
    return path


def import_and_fill(d, images, directory) -> str:
    """The small image imported, then `directory`'s filesystem full; `ctr version` answers."""
    d.ctr("images", "import", str(images["small"]), timeout=120)
    filler = fill(directory)
    d.ctr("version")
    return filler


def big_files(directory, over=MiB) -> list[str]:
    return [os.path.join(dirpath, name) for dirpath, _, names in os.walk(directory)
            for name in names if os.lstat(os.path.join(dirpath, name)).st_size > over
            and name != "meta.db.reserve"]


def no_traceback(d) -> None:
    """None but the boot's warnings about plugins that do not load here (devmapper)."""
    lines = [line for line in d.log().splitlines()
             if "Traceback" in line and "failed to load plugin" not in line]
    assert lines == []


def write_blob(d, data):
    """One Content.Write of `data` (the error a full disk gives, as grpcio sees it)."""
    ref = "full-disk-probe"
    reqs = [pb.WriteContentRequest(action=pb.WRITE, ref=ref, offset=0, data=data)]
    with grpc.insecure_channel("unix:" + d.address) as ch:
        list(content_pb2_grpc.ContentStub(ch).Write(
            iter(reqs), metadata=[("containerd-namespace", "default")], timeout=30))


@pytest.mark.parametrize("fails_in", ["ingest", "unpack"])
def test_import_filling_root_leaves_a_working_daemon(on_tmpfs, images, fails_in):
    d = on_tmpfs("root", ROOT_MIB)
    failed = d.ctr("images", "import", str(images[fails_in]), check=False, timeout=120)
    assert failed.returncode != 0
    assert NO_SPACE in failed.stderr and str(d.root) in failed.stderr, failed.stderr

    # the failed ingest or apply gave its partial data back at once
    ingests = d.root / "io.containerd.content.v1.content" / "ingest"
    assert os.listdir(ingests) == []
    assert big_files(d.root / "io.containerd.snapshotter.v1.overlayfs") == []

    d.ctr("version")
    d.ctr("images", "rm", "--sync", "localhost/fits-once:1", "localhost/too-big:1")
    d.ctr("leases", "create", "--id", "gc")
    d.ctr("leases", "rm", "--sync", "gc")
    assert d.ctr("content", "ls", "-q").stdout == ""
    assert big_files(d.root) == []

    d.ctr("images", "import", str(images["small"]), timeout=120)
    assert "complete" in d.ctr("images", "check").stdout
    no_traceback(d)


def test_deletes_work_on_a_root_full_to_the_last_byte(on_tmpfs, images):
    d = on_tmpfs("root", 24)
    d.ctr("leases", "create", "--id", "kept")
    filler = import_and_fill(d, images, d.root)
    with pytest.raises(grpc.RpcError) as err:
        write_blob(d, os.urandom(MiB))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert NO_SPACE in err.value.details() and str(d.root) in err.value.details()
    assert os.listdir(d.root / "io.containerd.content.v1.content" / "ingest") == []

    d.stop()   # a restart on the full disk boots, too
    d.start()
    d.ctr("leases", "rm", "--sync", "kept")
    d.ctr("images", "rm", "--sync", SMALL)
    assert d.ctr("content", "ls", "-q").stdout == ""
    assert d.ctr("snapshots", "ls").stdout.count("\n") == 1   # the header only

    os.unlink(filler)
    d.ctr("images", "import", str(images["small"]), timeout=120)
    reserve = d.root / "io.containerd.metadata.v1.bolt" / "meta.db.reserve"
    assert reserve.stat().st_blocks * 512 >= 4 * MiB   # taken back once space came back
    no_traceback(d)


def test_full_state_dir(on_tmpfs, images):
    d = on_tmpfs("state", 4)
    filler = import_and_fill(d, images, d.state)
    run = d.ctr("run", "--rm", SMALL, "full-state", "/bin/true", check=False)
    assert run.returncode != 0
    assert NO_SPACE in run.stderr and str(d.state) in run.stderr, run.stderr
    bundles = d.state / "io.containerd.runtime.v2.task" / "default"
    assert not bundles.exists() or os.listdir(bundles) == []
    assert "full-state" not in d.ctr("containers", "ls", "-q").stdout

    d.stop()   # a restart on the full state dir boots, too
    d.start()
    d.ctr("images", "rm", "--sync", SMALL)
    d.ctr("images", "import", str(images["small"]), timeout=120)

    os.unlink(filler)
    out = d.ctr("run", "--rm", SMALL, "full-state", "/bin/echo", "ran", timeout=60).stdout
    assert out.strip() == "ran"
    no_traceback(d)
