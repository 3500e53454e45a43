"""The restart monitor (io.containerd.internal.v1.restart) and the opt
directory (io.containerd.internal.v1.opt), driven by the real ctr on ctrappliance and on
containerd 1.6.20 side by side, each with a 1 s reconcile interval and a private opt path.
"""
import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest

from daemon import Daemon, wait_for
from reference import Containerd
from runtime_helpers import make_rootfs, remove_cgroup_dirs, run_flags, shim_pid_of, shim_pids

pytestmark = pytest.mark.integration

RESTART_CONFIG = '[plugins."io.containerd.internal.v1.restart"]\n  interval = "1s"\n'
NS = f"restart-{os.getpid()}"
STATUS = "containerd.io/restart.status"


def _host_opt():
    """What the host's /opt/containerd looks like (a test daemon may not touch it)."""
    path = Path("/opt/containerd")
    if not path.exists():
        return None
    return sorted((str(p), p.stat().st_mtime_ns) for p in [path, *path.rglob("*")])


@pytest.fixture(scope="module")
def host_opt_before():
    return _host_opt()


@pytest.fixture(scope="module", params=["ctrappliance", "containerd"])
def daemon_and_rootfs(request, host_opt_before):
    scratch = Path(tempfile.mkdtemp(prefix="rs-", dir="/tmp"))
    if request.param == "ctrappliance":
        config = scratch / "config.toml"
        config.write_text("version = 2\n" + RESTART_CONFIG)
        d = Daemon(config=str(config))
    else:
        d = Containerd(extra_config=RESTART_CONFIG)
    try:
        d.start()
        yield d, str(make_rootfs(scratch / "rootfs")), scratch
    finally:
        for pid in shim_pids(d.address):
            os.kill(pid, signal.SIGKILL)
        d.cleanup()
        remove_cgroup_dirs(NS)
        shutil.rmtree(scratch, ignore_errors=True)


def ctr(d, *args, check=True):
    return d.ctr(*args, namespace=NS, check=check)


def task_state(d, cid):
    """(pid, status) of the container's task, or None without one."""
    for line in ctr(d, "tasks", "ls").stdout.splitlines()[1:]:
        task, pid, status = line.split()
        if task == cid:
            return int(pid), status
    return None


def run_detached(d, rootfs, cid, *argv):
    ctr(d, "run", "-d", *run_flags(d.workdir), "--env", "PATH=/bin", "--rootfs", rootfs, cid,
        *argv)


def forget(d, cid):
    """Clear the restart label, then remove the task and container."""
    ctr(d, "containers", "label", cid, f"{STATUS}=")
    if task_state(d, cid):
        ctr(d, "tasks", "kill", "-s", "KILL", cid, check=False)
        wait_for(lambda: task_state(d, cid)[1] == "STOPPED", what=f"{cid} to stop")
        ctr(d, "tasks", "rm", cid)
    ctr(d, "containers", "rm", cid)


def test_killed_task_is_restarted_with_output_to_the_log_path(daemon_and_rootfs):
    d, rootfs, scratch = daemon_and_rootfs
    logfile = scratch / "logs" / "svc.log"
    run_detached(d, rootfs, "svc", "sh", "-c", "echo up; exec sleep 1000")
    first_pid, _ = task_state(d, "svc")
    ctr(d, "containers", "label", "svc", f"{STATUS}=running",
        f"containerd.io/restart.logpath={logfile}")
    ctr(d, "tasks", "kill", "-s", "KILL", "svc")

    def restarted():
        state = task_state(d, "svc")
        return state and state[0] != first_pid and state[1] == "RUNNING"
    wait_for(restarted, what="the monitor to restart the task")
    wait_for(lambda: logfile.exists() and logfile.read_text() == "up\n",
             what="the restarted task's output in the log file")
    # wanted stopped: the monitor kills the task and deletes it
    ctr(d, "containers", "label", "svc", f"{STATUS}=stopped")
    wait_for(lambda: task_state(d, "svc") is None, what="the monitor to stop the task")
    ctr(d, "containers", "rm", "svc")


def test_container_without_task_is_started_with_output_to_the_log_uri(daemon_and_rootfs):
    d, rootfs, scratch = daemon_and_rootfs
    logfile = scratch / "uri.log"
    # run, then remove the task: `ctr containers create` cannot give runc a private root
    run_detached(d, rootfs, "idle", "sh", "-c", "echo from-uri; exec sleep 1000")
    ctr(d, "tasks", "kill", "-s", "KILL", "idle")
    wait_for(lambda: task_state(d, "idle")[1] == "STOPPED", what="idle to stop")
    ctr(d, "tasks", "rm", "idle")
    ctr(d, "containers", "label", "idle", f"{STATUS}=running",
        f"containerd.io/restart.loguri=file://{logfile}")
    wait_for(lambda: (task_state(d, "idle") or (0, ""))[1] == "RUNNING",
             what="the monitor to start a task")
    wait_for(lambda: logfile.exists() and logfile.read_text() == "from-uri\n",
             what="the task's output at the log URI")
    forget(d, "idle")


def test_opt_dirs_are_private_and_first_in_the_shims_paths(daemon_and_rootfs, host_opt_before):
    d, rootfs, _ = daemon_and_rootfs
    opt = d.workdir / "opt"
    listing = d.ctr("plugins", "ls", "-d", "id==opt").stdout
    assert f"path      {opt}\n" in listing
    for sub in ("bin", "lib"):
        assert (opt / sub).stat().st_mode & 0o777 == 0o711
    # shims look runc up in the PATH they inherit: a runc in <opt>/bin comes first
    marker = d.workdir / "runc-from-opt"
    wrapper = opt / "bin" / "runc"
    wrapper.write_text(f'#!/bin/sh\necho "$1" >> {marker}\nexec /usr/sbin/runc "$@"\n')
    wrapper.chmod(0o755)
    try:
        run_detached(d, rootfs, "viaopt", "sleep", "1000")
    finally:
        wrapper.unlink()
    assert marker.exists()
    environ = Path(f"/proc/{shim_pid_of(d.address, 'viaopt')}/environ").read_bytes()
    env = dict(item.split("=", 1) for item in environ.decode().split("\0") if "=" in item)
    assert env["PATH"].split(":")[0] == str(opt / "bin")
    assert env["LD_LIBRARY_PATH"].split(":")[0] == str(opt / "lib")
    forget(d, "viaopt")
    assert _host_opt() == host_opt_before
