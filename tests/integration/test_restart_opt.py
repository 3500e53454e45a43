"""The restart monitor (io.containerd.internal.v1.restart) and the opt directory
(io.containerd.internal.v1.opt), against containerd 1.6.20 with the same config."""
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from daemon import Daemon, wait_for
from reference import Containerd
from runtime_helpers import make_rootfs, remove_cgroup_dirs, run_flags, shim_pids

pytestmark = pytest.mark.integration
RESTART = '\n[plugins."io.containerd.internal.v1.restart"]\n  interval = "1s"\n'


@pytest.fixture(scope="module")
def rootfs():
    d = Path(tempfile.mkdtemp(prefix="rootfs-", dir="/tmp"))
    try:
        root = make_rootfs(d / "rootfs")
        script = root / "bin" / "start-and-sleep"   # ctr c create takes no "-c" arguments
        script.write_text("#!/bin/sh\necho started\nexec sleep 1000\n")
        script.chmod(0o755)
        yield str(root)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _ours():
    d = Daemon()
    d.workdir.mkdir(parents=True, exist_ok=True)
    config = d.workdir / "restart.toml"
    config.write_text("version = 2\n" + RESTART)
    d.config = str(config)
    return d


@pytest.fixture(params=["ctrappliance", "containerd"])
def daemon(request):
    d = _ours() if request.param == "ctrappliance" else Containerd(extra_config=RESTART)
    d.start()
    ns = f"restart-{request.param}-{os.getpid()}"
    try:
        yield d, ns
    finally:
        for pid in shim_pids(d.address):
            os.kill(pid, 9)
        d.cleanup()
        remove_cgroup_dirs(ns)


def _task(d, ns, cid):
    """(pid, status) of the task, or None."""
    for line in d.ctr("tasks", "ls", namespace=ns).stdout.splitlines()[1:]:
        cols = line.split()
        if cols[0] == cid:
            return int(cols[1]), cols[2]
    return None


def test_restart_monitor_keeps_a_labelled_task_running_then_stops_it(daemon, rootfs):
    d, ns = daemon
    log = d.workdir / "restart.log"
    d.ctr("containers", "create", "--env", "PATH=/bin",
          "--label", "containerd.io/restart.status=running",
          "--label", f"containerd.io/restart.loguri=file://{log}",
          "--rootfs", rootfs, "r1", "start-and-sleep", namespace=ns)

    # no task yet: the monitor creates and starts one, its output goes to the log URI
    first = wait_for(lambda: (t := _task(d, ns, "r1")) and t[1] == "RUNNING" and t,
                     timeout=30, what="the monitor to start the task")
    wait_for(lambda: log.exists() and "started" in log.read_text(), what="output in the log")

    # the task dies: the old one is deleted and a new one started
    d.ctr("tasks", "kill", "-s", "SIGKILL", "r1", namespace=ns)
    wait_for(lambda: (t := _task(d, ns, "r1")) and t[1] == "RUNNING" and t[0] != first[0],
             timeout=30, what="a restarted task")
    wait_for(lambda: log.read_text().count("started") >= 2, what="the second start's output")

    # desired status stopped: the task is killed and deleted, the container stays
    d.ctr("containers", "label", "r1", "containerd.io/restart.status=stopped", namespace=ns)
    wait_for(lambda: _task(d, ns, "r1") is None, timeout=30, what="the task to be deleted")
    assert "r1" in d.ctr("containers", "ls", "-q", namespace=ns).stdout.split()
    d.ctr("containers", "rm", "r1", namespace=ns)


def test_opt_directory_is_private_exported_and_first_in_the_shims_paths(tmp_path, rootfs):
    host_opt_existed = os.path.exists("/opt/containerd")
    d = Daemon(workdir=str(tmp_path / "w")).start()
    ns = f"opt-{os.getpid()}"
    try:
        opt = d.workdir / "opt"
        assert (opt / "bin").is_dir() and (opt / "lib").is_dir()
        listing = d.ctr("plugins", "ls", "-d", "id==opt").stdout
        assert re.search(rf"path\s+{re.escape(str(opt))}\n", listing), listing
        assert os.path.exists("/opt/containerd") == host_opt_existed

        d.ctr("run", "-d", *run_flags(d.workdir), "--env", "PATH=/bin", "--rootfs", rootfs,
              "o1", "sleep", "1000", namespace=ns)
        [shim] = shim_pids(d.address)
        with open(f"/proc/{shim}/environ", "rb") as f:
            env = dict(i.split(b"=", 1) for i in f.read().split(b"\0") if b"=" in i)
        assert env[b"PATH"].startswith(f"{opt}/bin:".encode())
        assert env[b"LD_LIBRARY_PATH"].startswith(f"{opt}/lib:".encode())
        d.ctr("tasks", "kill", "-s", "SIGKILL", "o1", namespace=ns)
        wait_for(lambda: d.ctr("tasks", "delete", "o1", namespace=ns, check=False).returncode == 0,
                 what="the task to be deleted")
        d.ctr("containers", "rm", "o1", namespace=ns)
    finally:
        for pid in shim_pids(d.address):
            os.kill(pid, 9)
        d.cleanup()
        remove_cgroup_dirs(ns)
