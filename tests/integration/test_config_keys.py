"""Plugin config keys containerd 1.6.20 honours, honoured here too.

Where both daemons can run the same config, they are compared side by side.
"""
import hashlib
import os
import re
import subprocess
import urllib.request

import pytest

from daemon import CTR, Daemon
from reference import Containerd
from runtime_helpers import make_rootfs, remove_cgroup_dirs, run_flags, shim_pid_of, shim_pids

pytestmark = pytest.mark.integration
SHAREABLE = "containerd.io/namespace.shareable"


class ConfiguredContainerd(Containerd):
    """containerd 1.6.20 on private paths with `extra` TOML after its usual config."""

    def __init__(self, extra: str):
        super().__init__()
        self.extra = extra

    def write_config(self):
        super().write_config()
        with open(self.config_path, "a") as f:
            f.write(self.extra)


def configured(extra: str) -> Daemon:
    d = Daemon()
    path = d.workdir / "config.toml"
    path.write_text("version = 2\n" + extra)
    d.config = str(path)
    return d


def side_by_side(extra: str):
    ours, theirs = configured(extra), ConfiguredContainerd(extra)
    try:
        ours.start()
        theirs.start()
    except BaseException:
        ours.cleanup()
        theirs.cleanup()
        raise
    return ours, theirs


def plugin_row(d, uri: str) -> list[str]:
    for line in d.ctr("plugins", "ls").stdout.splitlines()[1:]:
        kind, pid, *rest = line.split()
        if f"{kind}.{pid}" == uri:
            return rest
    raise AssertionError(f"{uri} not listed")


# --- metadata: content_sharing_policy ---------------------------------------------------

def ingest(d, namespace, ref, data: bytes, digest: str) -> bool:
    """`ctr content ingest` from a file: ctr seeks past what the writer says it has."""
    path = d.workdir / f"upload-{ref}"
    path.write_bytes(data)
    with open(path, "rb") as stdin:
        return subprocess.run([CTR, "--address", d.address, "--namespace", namespace,
                               "content", "ingest", "--expected-size", str(len(data)),
                               "--expected-digest", digest, ref], stdin=stdin,
                              capture_output=True, timeout=60).returncode == 0


def visible(d, namespace, digest) -> bool:
    return digest in d.ctr("content", "ls", "-q", namespace=namespace).stdout.split()


@pytest.mark.parametrize("policy", ["shared", "isolated"])
def test_content_sharing_policy_side_by_side(policy):
    """Namespace b commits a blob namespace a has by its digest, sending other bytes of
    the same size: "shared" lets it (no bytes are needed), "isolated" must not."""
    data = os.urandom(4096)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    garbage = bytes(len(data))
    pid = os.getpid()
    outcome = {}
    # the blobs have no references: no collection may run during the test
    daemons = side_by_side(f'[plugins."io.containerd.metadata.v1.bolt"]\n'
                           f'content_sharing_policy = "{policy}"\n'
                           f'[plugins."io.containerd.gc.v1.scheduler"]\n'
                           f'startup_delay = "1h"\n')
    try:
        for d in daemons:
            a, b, c = (f"{n}-{policy}-{pid}" for n in "abc")
            assert ingest(d, a, "first", data, digest)
            guessed = ingest(d, b, "guess", garbage, digest), visible(d, b, digest)
            # a namespace labelled shareable lets isolated namespaces take its blobs
            d.ctr("namespaces", "label", a, f"{SHAREABLE}=true")
            labelled = ingest(d, c, "guess", garbage, digest), visible(d, c, digest)
            uploaded = ingest(d, b, "honest", data, digest), visible(d, b, digest)
            outcome[type(d).__name__] = guessed + labelled + uploaded
    finally:
        for d in daemons:
            d.cleanup()
    if policy == "shared":
        assert outcome["Daemon"] == outcome["ConfiguredContainerd"] == (True,) * 6
    else:
        assert outcome["ConfiguredContainerd"] == (False, False, False, False, True, True)
        # README, intended differences: the shareable label is honoured, as in containerd 1.7
        assert outcome["Daemon"] == (False, False, True, True, True, True)


# --- diff service order, runtime platforms and sched_core ----------------------------------

def test_diff_service_order_names_a_missing_differ_as_containerd_does():
    daemons = side_by_side('[plugins."io.containerd.service.v1.diff-service"]\n'
                           'default = ["walking", "nope"]\n')
    try:
        rows = [plugin_row(d, "io.containerd.service.v1.diff-service") for d in daemons]
        errors = [d.ctr("plugins", "ls", "-d", "id==diff-service").stdout for d in daemons]
    finally:
        for d in daemons:
            d.cleanup()
    assert rows[0] == rows[1] == ["-", "error"]
    assert all("needed differ not loaded: nope" in e for e in errors), errors


def test_runtime_platforms_and_sched_core_side_by_side(tmp_path):
    """sched_core passes SCHED_CORE=1 to the shim, which asks the kernel for core
    scheduling; where the kernel has none, both daemons fail the start alike."""
    rootfs = str(make_rootfs(tmp_path / "rootfs"))
    daemons = side_by_side('[plugins."io.containerd.runtime.v2.task"]\n'
                           'platforms = ["linux/amd64", "linux/arm64/v8"]\nsched_core = true\n')
    results = []
    try:
        for d in daemons:
            results.append((plugin_row(d, "io.containerd.runtime.v2.task"),
                            d.ctr("run", *run_flags(d.workdir), "--rootfs", rootfs, "c1",
                                  "/bin/true", check=False)))
    finally:
        for d in daemons:
            for pid in shim_pids(d.address):
                os.kill(pid, 9)
            d.cleanup()
    (ours, our_run), (theirs, their_run) = results
    assert ours == theirs == ["linux/amd64,linux/arm64/v8", "ok"]
    if their_run.returncode == 0:   # a kernel with core scheduling
        assert our_run.returncode == 0, our_run.stderr
    else:
        assert "enable sched core support" in their_run.stderr, their_run.stderr
        assert our_run.returncode != 0 and "enable sched core support" in our_run.stderr, \
            our_run.stderr


# --- snapshotters: root_path, upperdir_label ---------------------------------------------

def test_snapshotter_root_path_and_overlay_upperdir_label(tmp_path):
    overlay_root, native_root = tmp_path / "overlay", tmp_path / "native"
    d = configured(f'[plugins."io.containerd.snapshotter.v1.overlayfs"]\n'
                   f'root_path = "{overlay_root}"\nupperdir_label = true\n'
                   f'[plugins."io.containerd.snapshotter.v1.native"]\n'
                   f'root_path = "{native_root}"\n')
    try:
        d.start()
        d.ctr("snapshots", "prepare", "k1")
        info = d.ctr("snapshots", "info", "k1").stdout
        upper = info.split('"containerd.io/snapshot/overlay.upperdir": "', 1)[1].split('"')[0]
        assert upper.startswith(f"{overlay_root}/snapshots/") and upper.endswith("/fs")
        assert os.path.isdir(upper)
        d.ctr("snapshots", "--snapshotter", "native", "prepare", "n1")
        assert os.listdir(native_root / "snapshots")
        assert "overlay.upperdir" not in d.ctr("snapshots", "--snapshotter", "native",
                                               "info", "n1").stdout
        assert not (d.root / "io.containerd.snapshotter.v1.overlayfs").exists()
        exports = d.ctr("plugins", "ls", "-d", "id==overlayfs").stdout
        assert str(overlay_root) in exports
    finally:
        d.cleanup()


# --- temp and the cgroups monitor's no_prometheus ------------------------------------------

def test_temp_is_tmpdir_and_no_prometheus_drops_task_metrics(tmp_path):
    rootfs = str(make_rootfs(tmp_path / "rootfs"))
    temp = tmp_path / "temp"
    d = configured(f'temp = "{temp}"\n[metrics]\naddress = "127.0.0.1:0"\n'
                   '[plugins."io.containerd.monitor.v1.cgroups"]\nno_prometheus = true\n')
    ns = f"noprom-{os.getpid()}"
    try:
        d.start()
        port = re.search(r"serving metrics endpoint on 127\.0\.0\.1:(\d+)", d.log()).group(1)
        d.ctr("run", *run_flags(d.workdir), "--env", "PATH=/bin", "-d", "--rootfs", rootfs,
              "sleeper", "sleep", "1000",
              namespace=ns)
        with open(f"/proc/{shim_pid_of(d.address, 'sleeper')}/environ", "rb") as f:
            env = f.read().split(b"\0")
        assert f"TMPDIR={temp}".encode() in env and temp.is_dir()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/metrics", timeout=10) as r:
            metrics = r.read().decode()
        assert f'ctrappliance_tasks{{namespace="{ns}"}} 1.0' in metrics
        assert "container_pids_current{" not in metrics
    finally:
        for pid in shim_pids(d.address):
            os.kill(pid, 9)
        d.cleanup()
        remove_cgroup_dirs(ns)
