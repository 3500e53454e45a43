"""Crash consistency: fail or kill the daemon at an exact step (CTRAPPLIANCE_FAILPOINTS),
restart it, and check that its lists agree with the disk and that nothing leaked: ingests,
snapshot directories, bundles, mounts, runc state, runc processes, shims, cgroups."""
from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from daemon import Daemon, wait_for
from layers import entry, layer, oci_image
from runtime_helpers import make_rootfs, remove_cgroup_dirs, run_flags, shim_pids
from store_check import (assert_consistent, cgroup_processes, collect_garbage, missing_blobs,
                         runc_processes, task_cgroups)

pytestmark = pytest.mark.integration
ENV = "CTRAPPLIANCE_FAILPOINTS"
PATH_ENV = ["--env", "PATH=/bin"]


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory):
    return str(make_rootfs(tmp_path_factory.mktemp("fp-rootfs") / "rootfs"))


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("fp") / "image.tar"
    path.write_bytes(oci_image([layer(entry("a/one", data=b"1" * 5000)),
                                layer(entry("a/two", data=b"2" * 7000))], ref="localhost/fp:1"))
    return str(path)


class Case:
    """A daemon on private paths; `ns` is unique to the test (cgroups live host-wide)."""

    def __init__(self, name: str, config: str | None = None):
        self.ns = f"fp-{name}-{os.getpid()}"
        self.d = Daemon(config=config)
        self.runc_root = Path(self.d.workdir) / "runc"

    def start(self, failpoints: str = "") -> Daemon:
        self.d.env = {ENV: failpoints} if failpoints else None
        self.d.start()
        (Path(self.d.workdir) / "daemon.pid").write_text(str(self.d.proc.pid))
        return self.d

    def ctr(self, *args, check=False, **kw):
        return self.d.ctr(*args, namespace=self.ns, check=check, **kw)

    def run(self, rootfs, *args, opts=()):
        """ctr run [--rm|-d] [opts] --rootfs ROOTFS ID CMD... (flags before positionals)."""
        while args and args[0] in ("--rm", "-d"):
            opts, args = [args[0], *opts], args[1:]
        return self.ctr("run", *run_flags(self.d.workdir), *PATH_ENV, *opts, "--rootfs", rootfs,
                        *args, timeout=60)

    def died(self) -> bool:
        """The daemon killed itself (a `kill` failpoint)."""
        try:
            self.d.proc.wait(20)
        except subprocess.TimeoutExpired:
            return False
        self.d.log_file.close()
        return self.d.proc.returncode == -signal.SIGKILL

    def restart(self, failpoints: str = "") -> Daemon:
        if self.d.proc.poll() is None:
            self.d.stop()
        return self.start(failpoints)

    def check(self):
        assert_consistent(self.d, self.runc_root)

    def cleanup(self):
        for pid in shim_pids(self.d.address):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in runc_processes(self.ns) + cgroup_processes(self.ns):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.d.cleanup()
        remove_cgroup_dirs(self.ns)


@pytest.fixture
def case(request):
    made = []

    def make(name, config=None):
        made.append(Case(name, config))
        return made[-1]
    yield make
    for c in made:
        c.cleanup()


# --- item 4: a failpoint at each step ---------------------------------------------------------

def _import(c, image):
    return c.ctr("images", "import", image, timeout=120)


def _snapshot_rm(c, image):
    c.ctr("snapshots", "prepare", "scratch", "", check=True)
    return c.ctr("snapshots", "rm", "scratch")


def _gc(c, image):
    return c.ctr("images", "rm", "--sync", "localhost/fp:1")


def _prepare_image(c, image):
    _import(c, image).check_returncode()


STEPS = {  # failpoint -> (setup before arming it, the operation that hits it)
    "content.commit": (None, _import),
    "layer.apply": (None, _import),
    "snapshot.commit": (None, _import),
    "snapshot.remove": (None, _snapshot_rm),
    "gc.sweep": (_prepare_image, _gc),
}


@pytest.mark.parametrize("action", ["kill", "error"])
@pytest.mark.parametrize("step", sorted(STEPS))
def test_failpoint_in_the_store_leaves_it_consistent(case, image, step, action):
    # the first GC after a boot runs an hour later: what a crash left is seen as it is
    config = Path(tempfile.mkdtemp(prefix="fp-conf-", dir="/tmp")) / "config.toml"
    config.write_text('version = 2\n[plugins."io.containerd.gc.v1.scheduler"]\n'
                      '  startup_delay = "1h"\n')
    c = case(step.replace(".", "-") + "-" + action, str(config))
    setup, operation = STEPS[step]
    if setup:
        c.start()
        setup(c, image)
        c.d.stop()
    c.start(f"{step}={action}")
    result = operation(c, image)
    assert f"failpoint {step}: {action}" in c.d.log()
    if action == "kill":
        assert c.died()
    else:
        assert result.returncode != 0
        assert "Traceback" not in c.d.log().split(f"failpoint {step}")[1]
        assert missing_blobs(c.d) == []
    c.restart()
    assert missing_blobs(c.d) == []   # before any GC: nothing listed has lost its data
    collect_garbage(c.d, c.ns)        # what a crash left as garbage goes with the next GC
    c.check()
    # and the store still works: the image imports (again) and is removed by GC
    _import(c, image).check_returncode()
    c.ctr("images", "rm", "--sync", "localhost/fp:1", check=True)
    c.check()


def test_armed_failpoints_are_announced_and_bad_ones_refused(case):
    c = case("announce")
    c.start("gc.sweep=error;task.delete=kill")
    assert "FAILPOINTS ARMED" in c.d.log() and "gc.sweep, task.delete" in c.d.log()
    c.d.stop()
    c.d.env = {ENV: "gc.sweep=explode"}
    r = subprocess.run(c.d.argv(), env=dict(os.environ, **c.d.env), capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 1 and "Traceback" not in r.stdout + r.stderr
    assert "bad failpoint 'gc.sweep=explode' in CTRAPPLIANCE_FAILPOINTS" in r.stdout + r.stderr


# --- tasks: a failpoint at each step of create and delete -------------------------------------

TASK_STEPS = [("task.create.after-shim-start", "kill"),
              ("task.create.after-shim-start", "error"),
              ("task.create.before-runc-create", "kill"),
              ("task.create.before-runc-create", "error"),
              ("task.delete", "kill")]


def _keep_running(c, rootfs):
    """A task that must come through every crash and cleanup untouched."""
    assert c.run(rootfs, "-d", "keep", "sleep", "1000").returncode == 0
    return c.ctr("tasks", "ls", check=True).stdout.split("keep")[1].split()[0]


@pytest.mark.parametrize("step,action", TASK_STEPS)
def test_failpoint_in_a_task_leaves_nothing_behind(case, rootfs, step, action):
    c = case(step.replace(".", "-") + "-" + action)
    c.start()
    keep_pid = _keep_running(c, rootfs)
    c.d.stop()
    c.start(f"{step}={action}")
    r = c.run(rootfs, "--rm", "victim", "echo", "hi")
    if action == "kill":   # (a Delete's teardown may run after ctr is done)
        assert c.died()
    assert f"failpoint {step}: {action}" in c.d.log()
    if action == "error":
        assert r.returncode != 0 and "failpoint" in r.stderr
        c.check()
    c.restart()
    c.check()
    assert c.ctr("tasks", "ls", check=True).stdout.split("keep")[1].split()[:2] == \
        [keep_pid, "RUNNING"]
    # the id can be used again, and the store is still whole once everything is gone
    c.ctr("containers", "rm", "victim")
    assert c.run(rootfs, "--rm", "victim", "echo", "again").stdout == "again\n"
    c.ctr("tasks", "kill", "-s", "SIGKILL", "keep", check=True)
    wait_for(lambda: "STOPPED" in c.ctr("tasks", "ls").stdout, what="keep STOPPED")
    c.ctr("tasks", "rm", "keep", check=True)
    c.ctr("containers", "rm", "keep", check=True)
    c.check()
    assert task_cgroups(c.ns) == []


# --- item 3: a `runc init` left waiting by a crash --------------------------------------------

RUNC_WRAPPER = """#!/bin/sh
# runc, except that `create` succeeds and then its caller hears of a failure (after {how}):
# the shim keeps no container, while a `runc init` waiting for `runc start` is left, as a
# crash in the middle of the shim's Create leaves it
root=/run/runc
for arg; do
    case "$prev" in --root) root="$arg" ;; esac
    prev="$arg"
    if [ "$arg" = create ]; then
        /usr/sbin/runc "$@" || exit $?
        id=$(eval echo \\${$#})
        {how}
        echo "create interrupted" >&2
        exit 1
    fi
done
exec /usr/sbin/runc "$@"
"""
CRASHES = {
    "daemon-killed": 'kill -9 "$(cat {workdir}/daemon.pid)"',
    "create-failed": ":",
    # runc died before writing its state: only the cgroup still knows of the `runc init`
    "state-lost": 'rm "$root/$id/state.json"; kill -9 "$(cat {workdir}/daemon.pid)"',
}


@pytest.mark.parametrize("crash", sorted(CRASHES))
def test_interrupted_runc_create_leaves_no_runc_init(case, rootfs, crash):
    c = case("runcinit-" + crash)
    wrapper = Path(c.d.workdir) / "runc-wrapper"
    Path(c.d.workdir).mkdir(parents=True, exist_ok=True)
    how = CRASHES[crash].replace("{workdir}", str(c.d.workdir))
    wrapper.write_text(RUNC_WRAPPER.replace("{how}", how))
    wrapper.chmod(0o755)
    crash = "kill" in how
    c.start()
    keep_pid = _keep_running(c, rootfs)
    r = c.run(rootfs, "-d", "victim", "sleep", "1000", opts=["--runc-binary", str(wrapper)])
    assert r.returncode != 0
    if crash:
        assert c.died()
        assert runc_processes(c.ns), "the crash left a `runc init` waiting"
        c.restart()
    c.check()   # no runc process, runc state, cgroup, bundle, mount or shim of `victim`
    assert c.ctr("tasks", "ls", check=True).stdout.split("keep")[1].split()[:2] == \
        [keep_pid, "RUNNING"]
    assert "victim" not in str(task_cgroups(c.ns))


# --- a damaged metadata database at start ------------------------------------------------------

def _meta(c) -> Path:
    return Path(c.d.root) / "io.containerd.metadata.v1.bolt" / "meta.db"


def _crash_with_data(c, image):
    """An image imported, then SIGKILL: the WAL holds the last transactions."""
    c.start()
    _import(c, image).check_returncode()
    c.d.kill()
    assert os.path.getsize(f"{_meta(c)}-wal") > 32


def _torn_wal(c, image):
    _crash_with_data(c, image)
    wal = f"{_meta(c)}-wal"
    os.truncate(wal, os.path.getsize(wal) - 100)   # the last frame is cut in half


def _garbage_wal(c, image):
    _crash_with_data(c, image)
    with open(f"{_meta(c)}-wal", "r+b") as f:
        f.write(os.urandom(32))


def _truncated_db(c, image):
    c.start()
    _import(c, image).check_returncode()
    c.d.stop()   # a clean stop checkpoints the WAL into the database file
    assert not os.path.exists(f"{_meta(c)}-wal")
    os.truncate(_meta(c), os.path.getsize(_meta(c)) // 2)


def _garbage_db(c, image):
    c.start()
    c.d.stop()
    _meta(c).write_bytes(os.urandom(16384))


def _bad_pages_after_crash(c, image):
    """Pages damaged under a database a crash left with its (empty) WAL: the quick check."""
    c.start()
    _import(c, image).check_returncode()
    c.d.stop()
    with open(_meta(c), "r+b") as f:
        f.seek(4096)
        f.write(b"\xff" * (os.path.getsize(_meta(c)) - 4096))
    Path(f"{_meta(c)}-wal").write_bytes(b"")


DAMAGE = {"torn-wal": (_torn_wal, "ends in a torn write"),
          "garbage-wal": (_garbage_wal, "is not a sqlite WAL"),
          "truncated-db": (_truncated_db, "truncated"),
          "garbage-db": (_garbage_db, "not a sqlite database"),
          "bad-pages-after-crash": (_bad_pages_after_crash, "quick check")}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_metadata_files_at_start(case, image, damage):
    """A torn WAL is crash recovery (logged); other damage stops the start with one line
    that says what to do, never a traceback."""
    c = case(damage)
    make, expected = DAMAGE[damage]
    make(c, image)
    if damage == "torn-wal":
        c.start()
        assert expected in c.d.log()
        collect_garbage(c.d, c.ns)
        c.check()
        _import(c, image).check_returncode()
        return
    offset = len(c.d.log())
    with pytest.raises(RuntimeError, match="daemon exited with 1"):
        c.start()
    log = c.d.log()[offset:]
    # (--log-level debug logs a failed plugin's traceback: devmapper's, which is not set up)
    assert not [line for line in log.splitlines() if "Traceback" in line
                and "devmapper not configured" not in line], log
    errors = [line for line in log.splitlines() if "level=error" in line]
    assert len(errors) == 1 and expected in errors[0], log
    assert "is damaged" in errors[0] and "move meta.db and its -wal and -shm files aside" \
        in errors[0]


# --- random crashes under churn -------------------------------------------------------------

def _churn(c, rootfs, image, stop, worker):
    """`ctr run --rm` in a loop (worker 0 imports and removes the image instead)."""
    i = 0
    while not stop.is_set():
        i += 1
        try:
            if worker == 0:
                _import(c, image)
                c.ctr("images", "rm", "localhost/fp:1")
            else:
                c.run(rootfs, "--rm", f"w{worker}-{i}", "true")
        except subprocess.TimeoutExpired:
            pass   # ctr waits for a daemon that is down: it may outlast the restart


def _clear_tasks(c):
    for cid in c.ctr("tasks", "ls", "-q").stdout.split():
        c.ctr("tasks", "kill", "-s", "SIGKILL", cid)
    for cid in c.ctr("containers", "ls", "-q").stdout.split():
        wait_for(lambda: c.ctr("tasks", "rm", "-f", cid).returncode == 0
                 or cid not in c.ctr("tasks", "ls", "-q").stdout, what=f"{cid} deleted")
        c.ctr("containers", "rm", cid)


@pytest.mark.slow
def test_random_kills_under_churn_leave_a_consistent_store(case, rootfs, image):
    """SIGKILL the daemon at a random moment of container and image churn, ten times:
    each restart finds lists that agree with the disk and no leftovers of dead tasks."""
    import random
    import threading
    c = case("churn")
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    for round_ in range(10):
        c.start()
        stop = threading.Event()
        workers = [threading.Thread(target=_churn, args=(c, rootfs, image, stop, w))
                   for w in range(4)]
        for w in workers:
            w.start()
        stop.wait(rng.uniform(0.5, 4.0))
        c.d.kill()
        stop.set()
        c.start()   # ctr calls wait for the daemon: they end against the new one
        for w in workers:
            w.join(120)
        try:
            c.check()
        except AssertionError as exc:
            raise AssertionError(f"round {round_}, seed {seed}: {exc}") from None
        _clear_tasks(c)
        collect_garbage(c.d, c.ns)
        c.check()
        assert task_cgroups(c.ns) == [] and runc_processes(c.ns) == []
        c.d.stop()
