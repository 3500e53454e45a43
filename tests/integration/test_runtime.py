"""Containers and tasks through the real containerd-shim-runc-v2 and runc, driven by
the real ctr (`ctr run --rootfs`, so no image or snapshot is needed), next to containerd 1.6.20.
"""
import json
import os
import re
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from appliance.process import eventloop
from daemon import CTR, Daemon, wait_for
from reference import Containerd
from runtime_helpers import (Pty, assert_nothing_left, make_rootfs, remove_cgroup_dirs,
                             run_flags, shim_pid_of, shim_pids)

pytestmark = pytest.mark.integration
PATH_ENV = ["--env", "PATH=/bin"]  # --rootfs specs carry no PATH (no image config)
USED_NAMESPACES = set()


@pytest.fixture(scope="module")
def rootfs():
    d = Path(tempfile.mkdtemp(prefix="rootfs-", dir="/tmp"))
    try:
        yield str(make_rootfs(d / "rootfs"))
    finally:
        import shutil
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def ours():
    d = Daemon().start()
    try:
        yield d
    finally:
        _cleanup(d)


@pytest.fixture(scope="module")
def theirs():
    c = Containerd().start()
    try:
        yield c
    finally:
        _cleanup(c)


def _cleanup(d):
    """Stop shims of this daemon left by a failing test (by pid), then the daemon."""
    for pid in shim_pids(d.address):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    d.cleanup()
    for ns in USED_NAMESPACES:
        remove_cgroup_dirs(ns)


def ns_for(name: str) -> str:
    ns = f"rt-{name}-{os.getpid()}"
    USED_NAMESPACES.add(ns)
    return ns


def run(d, ns, rootfs, *args, opts=(), check=False, input=None, timeout=60):
    """ctr run [--rm|-d] [opts] --rootfs ROOTFS ID CMD... (flags precede the positionals)."""
    while args and args[0] in ("--rm", "-d"):
        opts, args = [args[0], *opts], args[1:]
    return d.ctr("run", *run_flags(d.workdir), *PATH_ENV, *opts, "--rootfs", rootfs, *args,
                 namespace=ns, check=check, input=input, timeout=timeout)


def task_status(d, ns, cid):
    for line in d.ctr("tasks", "ls", namespace=ns).stdout.splitlines()[1:]:
        cols = line.split()
        if cols[0] == cid:
            return cols[2]
    return None


# --- ctr run --rm ---------------------------------------------------------------


def test_run_rm_echo_hello_exit_codes_env_and_stdin(ours, rootfs):
    ns = ns_for("basic")
    r = run(ours, ns, rootfs, "--rm", "hello", "echo", "hello")
    assert (r.returncode, r.stdout, r.stderr) == (0, "hello\n", "")
    r = run(ours, ns, rootfs, "--rm", "exit3", "sh", "-c", "exit 3")
    assert r.returncode == 3
    r = run(ours, ns, rootfs, "env1", "sh", "-c", "echo $GREETING",
            opts=["--rm", "--env", "GREETING=from-env"])
    assert r.stdout == "from-env\n"
    r = run(ours, ns, rootfs, "--rm", "stdin1", "sh", "-c", "read x; echo got:$x",
            input="line-one\n")
    assert (r.returncode, r.stdout) == (0, "got:line-one\n")
    assert ours.ctr("containers", "ls", "-q", namespace=ns).stdout == ""
    assert_nothing_left(ours, ns)


@pytest.mark.parametrize("loop_kind", eventloop.LOOPS)
def test_run_rm_on_either_event_loop(loop_kind, rootfs):
    """A whole lifecycle (shim start through spawn.run, TTRPC both ways, events, delete) on
    uvloop (the default) and on asyncio's loop (CTRAPPLIANCE_EVENT_LOOP=asyncio)."""
    d = Daemon(env={eventloop.ENV: loop_kind}).start()
    try:
        ns = ns_for(f"loop-{loop_kind}")
        r = run(d, ns, rootfs, "--rm", "stdin1", "sh", "-c", "read x; echo got:$x; exit 3",
                input="line-one\n")
        assert (r.returncode, r.stdout) == (3, "got:line-one\n")
        assert d.ctr("containers", "ls", "-q", namespace=ns).stdout == ""
        assert_nothing_left(d, ns)
        with open(f"/proc/{d.proc.pid}/maps") as f:
            uses_uvloop = "/uvloop/loop." in f.read()   # its extension module
        assert uses_uvloop == (loop_kind == "uvloop")
    finally:
        _cleanup(d)


def test_run_tty_output_and_resize(ours, rootfs):
    ns = ns_for("tty")
    argv = [CTR, "--address", ours.address, "--namespace", ns, "run", *run_flags(ours.workdir),
            *PATH_ENV, "--rootfs", "-t", "--rm", rootfs, "tty1",
            "sh", "-c", "echo ready; read x; stty size; read y; stty size"]
    pty = Pty(argv, rows=24, cols=80)  # ctr with the pty as its controlling terminal
    try:
        pty.read_until(rb"ready\r*\n")
        time.sleep(0.3)  # ctr sends the initial ResizePty just after Start
        pty.write(b"one\r")
        pty.read_until(rb"24 80\r*\n")
        pty.resize(30, 100)  # SIGWINCH → ResizePty
        time.sleep(0.3)
        pty.write(b"two\r")
        pty.read_until(rb"30 100\r*\n")
        assert pty.wait() == 0, pty.output
    finally:
        pty.close()
    assert_nothing_left(ours, ns)


# --- detached tasks -------------------------------------------------------------


def test_detached_task_lifecycle(ours, rootfs):
    ns = ns_for("detached")
    assert run(ours, ns, rootfs, "-d", "web", "sh", "-c",
               "trap 'exit 0' TERM; while true; do sleep 0.1; done").returncode == 0
    assert run(ours, ns, rootfs, "-d", "sleeper", "sleep", "1000").returncode == 0
    assert task_status(ours, ns, "web") == "RUNNING"
    task_pid = int(ours.ctr("tasks", "ls", namespace=ns).stdout.split("web")[1].split()[0])

    ps = ours.ctr("tasks", "ps", "web", namespace=ns).stdout
    assert str(task_pid) in ps.split()

    fifo = ["--fifo-dir", f"{ours.workdir}/fifo"]
    r = ours.ctr("tasks", "exec", *fifo, "--exec-id", "probe", "web", "sh", "-c",
                 "echo inside; exit 4", namespace=ns, check=False)
    assert (r.returncode, r.stdout) == (4, "inside\n")

    ours.ctr("tasks", "pause", "web", namespace=ns)
    assert task_status(ours, ns, "web") == "PAUSED"
    ours.ctr("tasks", "resume", "web", namespace=ns)
    assert task_status(ours, ns, "web") == "RUNNING"

    metrics = ours.ctr("tasks", "metrics", "web", namespace=ns).stdout
    assert re.search(r"memory\.usage_in_bytes\s+\d+", metrics)
    assert re.search(r"pids\.current\s+[1-9]", metrics)

    ours.ctr("tasks", "kill", "web", namespace=ns)  # SIGTERM, trapped by the shell
    wait_for(lambda: task_status(ours, ns, "web") == "STOPPED", what="web STOPPED")
    ours.ctr("tasks", "kill", "-s", "SIGKILL", "sleeper", namespace=ns)
    wait_for(lambda: task_status(ours, ns, "sleeper") == "STOPPED", what="sleeper STOPPED")

    for cid in ("web", "sleeper"):
        ours.ctr("tasks", "rm", cid, namespace=ns)
        ours.ctr("containers", "rm", cid, namespace=ns)
    assert ours.ctr("tasks", "ls", "-q", namespace=ns).stdout == ""
    assert ours.ctr("containers", "ls", "-q", namespace=ns).stdout == ""
    assert_nothing_left(ours, ns)


def test_containers_service_labels_filters_update(ours, rootfs):
    ns = ns_for("containers")
    ours.ctr("containers", "create", "--label", "team=a", "--rootfs", rootfs, "c1", "true",
             namespace=ns)
    ours.ctr("containers", "create", "--label", "team=b", "--rootfs", rootfs, "c2", "true",
             namespace=ns)
    assert ours.ctr("containers", "ls", "-q", "labels.team==b", namespace=ns).stdout == "c2\n"
    ours.ctr("containers", "label", "c1", "team=c", "extra=1", namespace=ns)
    info = json.loads(ours.ctr("containers", "info", "c1", namespace=ns).stdout)
    assert info["Labels"] == {"team": "c", "extra": "1"}
    assert info["Spec"]["root"]["path"] == rootfs
    assert info["Runtime"]["Name"] == "io.containerd.runc.v2"
    assert ours.ctr("containers", "ls", "-q", "runtime.name~=runc", namespace=ns).stdout \
        == "c1\nc2\n"
    ours.ctr("containers", "rm", "c1", "c2", namespace=ns)
    assert ours.ctr("containers", "ls", "-q", namespace=ns).stdout == ""
    assert_nothing_left(ours, ns)


# --- events ---------------------------------------------------------------------


def _events_of_one_run(d, ns, rootfs, cid):
    events = subprocess.Popen([CTR, "--address", d.address, "events"], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    try:
        time.sleep(0.3)  # subscribed
        r = d.ctr("run", *run_flags(d.workdir), *PATH_ENV, "--rootfs", "--rm", rootfs, cid,
                  "echo", "hello", namespace=ns, check=False)
        assert r.stdout == "hello\n", r.stderr
        time.sleep(0.3)
    finally:
        events.send_signal(signal.SIGTERM)
        out, _ = events.communicate(timeout=10)
    return [line.split()[5] for line in out.splitlines() if f" {ns} " in line]


def test_event_order_of_one_run_matches_containerd(ours, theirs, rootfs):
    ns = ns_for("events")
    expected = ["/containers/create", "/tasks/create", "/tasks/start", "/tasks/exit",
                "/tasks/delete", "/containers/delete"]
    USED_NAMESPACES.add(ns + "-cd")
    assert _events_of_one_run(theirs, ns + "-cd", rootfs, "ev1") == expected
    assert _events_of_one_run(ours, ns, rootfs, "ev1") == expected


def test_delete_of_an_exited_task_answers_as_containerd(ours, theirs, rootfs):
    """Delete after the init's /tasks/exit: the same response, one /tasks/delete, nothing
    left."""
    seen = []
    for d, ns in ((theirs, ns_for("exited") + "-cd"), (ours, ns_for("exited"))):
        events = subprocess.Popen([CTR, "--address", d.address, "events"],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            time.sleep(0.3)  # subscribed
            assert run(d, ns, rootfs, "-d", "x7", "sh", "-c", "exit 7").returncode == 0
            wait_for(lambda: task_status(d, ns, "x7") == "STOPPED", what="x7 STOPPED")
            pid = int(d.ctr("tasks", "ls", namespace=ns).stdout.split("x7")[1].split()[0])
            time.sleep(0.3)  # the shim's /tasks/exit forwarded
            r = d.ctr("tasks", "rm", "x7", namespace=ns, check=False)  # prints the status
            d.ctr("containers", "rm", "x7", namespace=ns)
            time.sleep(0.3)
        finally:
            events.send_signal(signal.SIGTERM)
            out, _ = events.communicate(timeout=10)
        lines = [line for line in out.splitlines() if f" {ns} " in line]
        deleted = [json.loads(line.split(None, 6)[6]) for line in lines
                   if line.split()[5] == "/tasks/delete"]
        seen.append(((r.returncode, re.findall(r'msg="([^"]*)"', r.stderr)),
                     [line.split()[5] for line in lines],
                     [(e["container_id"], e["pid"] == pid, e["exit_status"]) for e in deleted]))
        _nothing_left_by(d, ns)
    assert seen[0] == seen[1]
    assert seen[1][0] == (0, ["task x7 exit with non-zero exit code 7"])
    assert seen[1][2] == [("x7", True, 7)]


def _pipes_and_sockets(pid: int) -> dict[str, int]:
    """The pipes/FIFOs and sockets a daemon holds (containerd's client tests count its pipes)."""
    counts = {"pipes": 0, "sockets": 0}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            mode = os.stat(f"/proc/{pid}/fd/{fd}").st_mode
        except OSError:
            continue
        if stat.S_ISFIFO(mode):
            counts["pipes"] += 1
        elif stat.S_ISSOCK(mode):
            counts["sockets"] += 1
    return counts


@pytest.mark.parametrize("which", ["ours", "theirs"])
def test_task_delete_returns_with_the_shim_gone(which, request, rootfs):
    """As containerd: when Tasks.Delete returns, the shim has exited, the daemon holds no pipe
    or socket more than before the task was created, and the bundle is gone (for a task that
    exited, one deleted right after its exit, and one killed)."""
    d = request.getfixturevalue(which)
    ns = ns_for("fds") + ("-cd" if which == "theirs" else "")
    USED_NAMESPACES.add(ns)
    api = Grpc(d.address, ns)
    api.containers.List(api.cpb.ListContainersRequest(), metadata=api.md, timeout=10)
    for cid, args in (("exited", ["true"]), ("at-once", ["true"]),
                      ("killed", ["sleep", "1000"])):
        before = _pipes_and_sockets(d.proc.pid)
        api.create_container(cid, _spec(ns, cid, args))
        api.start_task(cid, rootfs)
        shim = shim_pid_of(d.address, cid)
        bundle = d.state / "io.containerd.runtime.v2.task" / ns / cid
        assert bundle.is_dir()
        if cid == "killed":
            api.tasks.Kill(api.tpb.KillRequest(container_id=cid, signal=signal.SIGKILL),
                           metadata=api.md, timeout=10)
        api.tasks.Wait(api.tpb.WaitRequest(container_id=cid), metadata=api.md, timeout=30)
        if cid == "exited":
            time.sleep(0.3)  # the shim's /tasks/exit has reached the daemon
        api.tasks.Delete(api.tpb.DeleteTaskRequest(container_id=cid), metadata=api.md,
                         timeout=30)
        assert (bundle.exists(), _alive(shim)) == (False, False), cid
        # a `publish` the shim started for its last event may still be connected for a
        # moment (a process of its own, not the shim): a leak would never settle
        deadline = time.monotonic() + 5
        while (after := _pipes_and_sockets(d.proc.pid)) != before and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        assert after == before, cid
        api.containers.Delete(api.cpb.DeleteContainerRequest(id=cid), metadata=api.md,
                              timeout=10)
    _nothing_left_by(d, ns)


def test_oom_kill_is_reported(ours, rootfs):
    """The shim watches the memory cgroup: /tasks/oom, then exit 137 (no swap here)."""
    ns = ns_for("oom")
    events = subprocess.Popen([CTR, "--address", ours.address, "events"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        time.sleep(0.3)
        r = run(ours, ns, rootfs, "--rm", "oom1", "dd", "if=/dev/zero", "of=/dev/null",
                "bs=64M", "count=1", opts=["--memory-limit", str(16 << 20)])
        assert r.returncode == 137
        time.sleep(0.3)
    finally:
        events.send_signal(signal.SIGTERM)
        out, _ = events.communicate(timeout=10)
    topics = [line.split()[5] for line in out.splitlines() if f" {ns} " in line]
    assert topics.index("/tasks/oom") < topics.index("/tasks/exit")
    assert_nothing_left(ours, ns)


# --- leaks ----------------------------------------------------------------------


def _many_runs(d, rootfs, name, count):
    ns = ns_for(name)
    for i in range(count):
        r = run(d, ns, rootfs, "--rm", f"t{i}", "true")
        assert r.returncode == 0, r.stderr
    assert d.ctr("containers", "ls", "-q", namespace=ns).stdout == ""
    assert d.ctr("tasks", "ls", "-q", namespace=ns).stdout == ""
    assert_nothing_left(d, ns)


def test_20_runs_leave_nothing_behind(ours, rootfs):
    _many_runs(ours, rootfs, "leak20", 20)


def test_concurrent_runs_in_one_namespace(ours, rootfs):
    """8 `ctr run --rm` at once, 3 rounds: shared /<ns> cgroup parents, no lost task."""
    from concurrent.futures import ThreadPoolExecutor
    ns = ns_for("parallel")
    with ThreadPoolExecutor(8) as pool:
        for rnd in range(3):
            results = list(pool.map(
                lambda i: run(ours, ns, rootfs, "--rm", f"p{rnd}-{i}", "echo", f"n{i}"),
                range(8)))
            assert [(r.returncode, r.stdout) for r in results] == \
                [(0, f"n{i}\n") for i in range(8)], [r.stderr for r in results]
    assert ours.ctr("containers", "ls", "-q", namespace=ns).stdout == ""
    assert_nothing_left(ours, ns)


@pytest.mark.slow
def test_100_runs_leave_nothing_behind(ours, rootfs):
    _many_runs(ours, rootfs, "leak100", 100)


def test_tasks_grouped_in_one_shim(ours, theirs, rootfs):
    """Two tasks in one shim (runc's group annotation): deleting the first leaves the shim to
    the second, and Delete does not wait for that shim's exit; the last Delete ends it."""
    group = ["--annotation", "io.containerd.runc.v2.group=g1"]
    for d, ns in ((ours, ns_for("group")), (theirs, ns_for("group") + "-cd")):
        USED_NAMESPACES.add(ns)
        for cid in ("g-a", "g-b"):
            assert run(d, ns, rootfs, "-d", cid, "sleep", "1000", opts=group).returncode == 0
        assert len(_shims_in(d, ns)) == 1
        d.ctr("tasks", "kill", "-s", "SIGKILL", "g-a", namespace=ns)
        wait_for(lambda: task_status(d, ns, "g-a") == "STOPPED", what="g-a STOPPED")
        d.ctr("tasks", "rm", "g-a", namespace=ns)
        assert task_status(d, ns, "g-b") == "RUNNING" and len(_shims_in(d, ns)) == 1
        r = d.ctr("tasks", "exec", "--fifo-dir", f"{d.workdir}/fifo", "--exec-id", "x", "g-b",
                  "echo", "still-here", namespace=ns)
        assert r.stdout == "still-here\n"
        d.ctr("tasks", "kill", "-s", "SIGKILL", "g-b", namespace=ns)
        wait_for(lambda: task_status(d, ns, "g-b") == "STOPPED", what="g-b STOPPED")
        d.ctr("tasks", "rm", "g-b", namespace=ns)
        d.ctr("containers", "rm", "g-a", "g-b", namespace=ns)
        _nothing_left_by(d, ns)
    assert "did not exit after Shutdown" not in ours.log()


def test_task_joins_its_groups_shim_without_a_start(ours, theirs, rootfs, tmp_path):
    """A second task of a group whose shim runs: containerd runs the shim binary's `start`
    (which finds the group's socket in use, writes it to the bundle's `address` file and
    exits); we connect to that shim and write the file ourselves. One shim either way, the
    same `address` in both bundles."""
    wrapper = tmp_path / "containerd-shim-runc-v2"    # logs each `start`, runs the real one
    calls = tmp_path / "starts"
    wrapper.write_text(f'#!/bin/sh\nfor a in "$@"; do [ "$a" = start ] && echo "$*" >> {calls}'
                       f'; done\nexec /usr/bin/containerd-shim-runc-v2 "$@"\n')
    wrapper.chmod(0o755)
    opts = ["--runtime", str(wrapper), "--annotation", "io.containerd.runc.v2.group=g1"]
    starts = {}
    for kind, d, ns in (("ours", ours, ns_for("join")),
                        ("theirs", theirs, ns_for("join") + "-cd")):
        USED_NAMESPACES.add(ns)
        calls.write_text("")
        for cid in ("j-a", "j-b"):
            assert run(d, ns, rootfs, "-d", cid, "sleep", "1000", opts=opts).returncode == 0
        starts[kind] = len(calls.read_text().splitlines())
        assert len(_shims_in(d, ns)) == 1
        addresses = {(Path(d.state) / "io.containerd.runtime.v2.task" / ns / cid / "address")
                     .read_text() for cid in ("j-a", "j-b")}
        assert len(addresses) == 1 and addresses.pop().startswith("unix:///run/containerd/s/")
        for cid in ("j-a", "j-b"):
            d.ctr("tasks", "kill", "-s", "SIGKILL", cid, namespace=ns)
            wait_for(lambda: task_status(d, ns, cid) == "STOPPED", what=f"{cid} STOPPED")
            d.ctr("tasks", "rm", cid, namespace=ns)
        d.ctr("containers", "rm", "j-a", "j-b", namespace=ns)
        _nothing_left_by(d, ns)
    assert starts == {"ours": 1, "theirs": 2}


# --- shims started ahead (prestart_shims) ------------------------------------------


def _shims_in(d, ns) -> list[int]:
    found = []
    for pid in shim_pids(d.address):
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if ns.encode() in f.read().split(b"\0"):
                found.append(pid)
    return found


def _create_containers(d, ns, rootfs, count):
    for i in range(count):
        d.ctr("containers", "create", *PATH_ENV, "--rootfs", rootfs, f"c{i}", "true",
              namespace=ns)


def test_containers_create_starts_no_shim_by_default(ours, rootfs):
    ns = ns_for("noprestart")
    _create_containers(ours, ns, rootfs, 20)
    time.sleep(1.0)  # a shim started ahead would be running by now
    assert _shims_in(ours, ns) == []
    ours.ctr("containers", "rm", *[f"c{i}" for i in range(20)], namespace=ns)
    assert_nothing_left(ours, ns)


def test_prestarted_shims_are_bounded(rootfs, tmp_path):
    """prestart_shims = true: at most 4 shims wait unclaimed; `ctr run` claims one; removing
    the containers stops the others."""
    ns = ns_for("prestart")
    config = tmp_path / "config.toml"
    config.write_text('version = 2\n[plugins."io.containerd.runtime.v2.task"]\n'
                      '  prestart_shims = true\n')
    d = Daemon(config=str(config)).start()
    try:
        _create_containers(d, ns, rootfs, 10)
        wait_for(lambda: len(_shims_in(d, ns)) >= 4, what="4 shims started ahead")
        time.sleep(1.0)  # any more would be running by now
        assert len(_shims_in(d, ns)) == 4
        d.ctr("containers", "rm", *[f"c{i}" for i in range(10)], namespace=ns)
        wait_for(lambda: not _shims_in(d, ns), what="shims started ahead stopped")
        r = run(d, ns, rootfs, "--rm", "claimed", "echo", "hello")
        assert (r.returncode, r.stdout) == (0, "hello\n"), r.stderr
        assert_nothing_left(d, ns)
    finally:
        _cleanup(d)


# --- bad input ------------------------------------------------------------------


def _nothing_left_by(d, ns):
    """containerd leaves runc's /<ns> cgroup parents behind (we remove them): skip that."""
    def adjust(found):
        if isinstance(d, Containerd):
            found["cgroups"] = []
        return found
    assert_nothing_left(d, ns, adjust)


def _same_error(ours, theirs, ns, rootfs, *args, opts=()):
    outputs = []
    for d, d_ns in ((ours, ns), (theirs, ns + "-cd")):
        USED_NAMESPACES.add(d_ns)
        r = run(d, d_ns, rootfs, *args, opts=["--rm", *opts])
        text = r.stderr.replace(str(d.workdir), "WORKDIR").replace(str(d.state), "STATE")
        outputs.append((r.returncode, text.replace(d_ns, "NS")))
        assert d.ctr("containers", "ls", "-q", namespace=d_ns).stdout == ""
        _nothing_left_by(d, d_ns)
    assert outputs[0] == outputs[1]
    assert outputs[0][0] != 0
    return outputs[0][1]


def test_unknown_runtime_matches_containerd(ours, theirs, rootfs):
    ns = ns_for("badrt")
    text = _same_error(ours, theirs, ns, rootfs, "bad1", "true",
                       opts=["--runtime", "io.containerd.nope.v1"])
    assert "containerd-shim-nope-v1" in text


def test_bad_spec_matches_containerd(ours, theirs, rootfs):
    ns = ns_for("badspec")
    text = _same_error(ours, theirs, ns, rootfs, "bad2", "/no/such/binary")
    assert "OCI runtime create failed" in text


def test_duplicate_id_matches_containerd(ours, theirs, rootfs):
    ns = ns_for("dup")
    outputs = []
    for d, ns in ((ours, ns), (theirs, ns + "-cd")):
        USED_NAMESPACES.add(ns)
        assert run(d, ns, rootfs, "-d", "dup1", "sleep", "100").returncode == 0
        r = run(d, ns, rootfs, "--rm", "dup1", "true")
        outputs.append((r.returncode, r.stderr))
        assert task_status(d, ns, "dup1") == "RUNNING"  # the first one is untouched
        d.ctr("tasks", "kill", "-s", "SIGKILL", "dup1", namespace=ns)
        wait_for(lambda: task_status(d, ns, "dup1") == "STOPPED", what="dup1 STOPPED")
        d.ctr("tasks", "rm", "dup1", namespace=ns)
        d.ctr("containers", "rm", "dup1", namespace=ns)
        _nothing_left_by(d, ns)
    assert outputs[0] == outputs[1] == (1, 'ctr: container "dup1": already exists\n')


# --- restart --------------------------------------------------------------------


def _restart_case(rootfs, stop):
    """5 detached containers; the daemon stops (how: `stop`) and starts again."""
    ns = ns_for(f"restart-{stop}")
    d = Daemon().start()
    try:
        ids = [f"r{i}" for i in range(5)]
        for cid in ids:
            assert run(d, ns, rootfs, "-d", cid, "sleep", "1000").returncode == 0
        pids_before = dict(l.split()[:2] for l in
                           d.ctr("tasks", "ls", namespace=ns).stdout.splitlines()[1:])
        if stop == "sigkill":
            d.kill()
        else:
            d.stop()
        assert sorted(shim_pids(d.address)) and len(shim_pids(d.address)) == 5
        d.start()
        rows = [l.split() for l in d.ctr("tasks", "ls", namespace=ns).stdout.splitlines()[1:]]
        assert {(cid, pid, status) for cid, pid, status in rows} == \
            {(cid, pids_before[cid], "RUNNING") for cid in ids}
        fifo = ["--fifo-dir", f"{d.workdir}/fifo"]
        r = d.ctr("tasks", "exec", *fifo, "--exec-id", "x", "r0", "echo", "still-here",
                  namespace=ns)
        assert r.stdout == "still-here\n"
        for cid in ids:
            d.ctr("tasks", "kill", "-s", "SIGKILL", cid, namespace=ns)
        for cid in ids:
            wait_for(lambda: task_status(d, ns, cid) == "STOPPED", what=f"{cid} STOPPED")
            d.ctr("tasks", "rm", cid, namespace=ns)
            d.ctr("containers", "rm", cid, namespace=ns)
        assert_nothing_left(d, ns)
    finally:
        _cleanup(d)


def test_restart_after_sigterm_keeps_tasks(rootfs):
    _restart_case(rootfs, "sigterm")


def test_restart_after_sigkill_keeps_tasks(rootfs):
    _restart_case(rootfs, "sigkill")


def _alive(pid: int) -> bool:
    """Running (a zombie left for init to reap counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_shim_killed_while_daemon_down_is_cleaned(rootfs):
    ns = ns_for("deadshim")
    d = Daemon().start()
    try:
        ids = [f"d{i}" for i in range(5)]
        for cid in ids:
            assert run(d, ns, rootfs, "-d", cid, "sleep", "1000").returncode == 0
        before = {l.split()[0]: l.split()[1] for l in
                  d.ctr("tasks", "ls", namespace=ns).stdout.splitlines()[1:]}
        d.stop()
        victim = shim_pid_of(d.address, "d2")
        os.kill(victim, signal.SIGKILL)
        # without the recorded binary, cleanup finds the shim through the container's runtime
        (d.state / "io.containerd.runtime.v2.task" / ns / "d2" / "shim-binary-path").unlink()
        wait_for(lambda: not _alive(victim), what="shim gone")
        d.start()
        log = d.log()
        assert re.search(rf"event {ns} /tasks/exit.*\n(.*\n)*.*event {ns} /tasks/delete", log)
        rows = {l.split()[0]: (l.split()[1], l.split()[2]) for l in
                d.ctr("tasks", "ls", namespace=ns).stdout.splitlines()[1:]}
        assert rows == {cid: (before[cid], "RUNNING") for cid in ids if cid != "d2"}
        assert not os.path.exists(d.state / "io.containerd.runtime.v2.task" / ns / "d2")
        assert not _alive(int(before["d2"]))  # `shim delete` killed the container process
        assert len(shim_pids(d.address)) == 4
        for cid in ids:
            if cid != "d2":
                d.ctr("tasks", "kill", "-s", "SIGKILL", cid, namespace=ns)
        for cid in ids:
            if cid != "d2":
                wait_for(lambda: task_status(d, ns, cid) == "STOPPED", what=f"{cid} STOPPED")
                d.ctr("tasks", "rm", cid, namespace=ns)
            d.ctr("containers", "rm", cid, namespace=ns)
        def adjust(found):
            # ctr made d2's FIFOs for a task that no longer exists; only ctr would remove them
            found["fifos"] = [f for f in found["fifos"] if "/d2-" not in f]
            return found
        assert_nothing_left(d, ns, adjust)
    finally:
        _cleanup(d)


# --- rootfs mounts from CreateTaskRequest, dead shims, checkpoint (over gRPC) ----------


def _spec(ns, cid, args):
    """runc's default spec, run from the bundle's rootfs (which the shim mounts)."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["runc", "spec", "--bundle", tmp], check=True, env=_sbin_path())
        spec = json.loads(Path(tmp, "config.json").read_text())
    spec["process"].update(terminal=False, args=args, env=["PATH=/bin"])
    spec["root"] = {"path": "rootfs"}
    spec["linux"]["cgroupsPath"] = f"/{ns}/{cid}"
    return spec


def _sbin_path():
    return dict(os.environ, PATH=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


class Grpc:
    """The containers and tasks services through our generated stubs."""

    def __init__(self, address, ns):
        import grpc
        from appliance._proto.containerd.api.services.containers.v1 import (
            containers_pb2, containers_pb2_grpc)
        from appliance._proto.containerd.api.services.tasks.v1 import tasks_pb2, tasks_pb2_grpc
        self.grpc, self.cpb, self.tpb = grpc, containers_pb2, tasks_pb2
        self.channel = grpc.insecure_channel("unix:" + address)
        self.containers = containers_pb2_grpc.ContainersStub(self.channel)
        self.tasks = tasks_pb2_grpc.TasksStub(self.channel)
        self.md = (("containerd-namespace", ns),)

    def create_container(self, cid, spec):
        from google.protobuf import any_pb2
        c = self.cpb.Container(id=cid, spec=any_pb2.Any(
            type_url="types.containerd.io/opencontainers/runtime-spec/1/Spec",
            value=json.dumps(spec).encode()))
        c.runtime.name = "io.containerd.runc.v2"
        self.containers.Create(self.cpb.CreateContainerRequest(container=c), metadata=self.md,
                               timeout=10)

    def start_task(self, cid, rootfs_dir):
        from appliance._proto.containerd.api.types import mount_pb2
        mount = mount_pb2.Mount(type="bind", source=rootfs_dir, options=["rbind", "ro"])
        resp = self.tasks.Create(self.tpb.CreateTaskRequest(container_id=cid, rootfs=[mount]),
                                 metadata=self.md, timeout=30)
        self.tasks.Start(self.tpb.StartRequest(container_id=cid), metadata=self.md, timeout=30)
        return resp.pid

    def status_code(self, method, request):
        try:
            getattr(self.tasks, method)(request, metadata=self.md, timeout=10)
        except self.grpc.RpcError as err:
            return err.code(), err.details()
        return self.grpc.StatusCode.OK, ""


def test_rootfs_mounts_and_dead_shims_are_cleaned(rootfs):
    ns = ns_for("mounts")
    d = Daemon().start()
    events = subprocess.Popen([CTR, "--address", d.address, "events"], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    try:
        api = Grpc(d.address, ns)
        bundles = d.state / "io.containerd.runtime.v2.task" / ns
        for cid in ("live-kill", "down-kill"):
            api.create_container(cid, _spec(ns, cid, ["sleep", "1000"]))
            api.start_task(cid, rootfs)
            assert str(bundles / cid / "rootfs") in _mounts(d), "the shim mounts the rootfs"
        assert task_status(d, ns, "live-kill") == "RUNNING"

        # checkpoint/restore is not implemented (README, intended differences): UNIMPLEMENTED
        code, details = api.status_code("Checkpoint", api.tpb.CheckpointTaskRequest(
            container_id="live-kill"))
        assert code == api.grpc.StatusCode.UNIMPLEMENTED and "not implemented" in details

        # Update passes resources through to runc: the pids cgroup gets the new limit
        from google.protobuf import any_pb2
        resources = any_pb2.Any(
            type_url="types.containerd.io/opencontainers/runtime-spec/1/LinuxResources",
            value=json.dumps({"pids": {"limit": 42}}).encode())
        assert api.status_code("Update", api.tpb.UpdateTaskRequest(
            container_id="live-kill", resources=resources)) == (api.grpc.StatusCode.OK, "")
        assert Path(f"/sys/fs/cgroup/pids/{ns}/live-kill/pids.max").read_text() == "42\n"

        # a shim dying under a running daemon: task reported exited, bundle and mounts gone
        os.kill(shim_pid_of(d.address, "live-kill"), signal.SIGKILL)
        wait_for(lambda: not (bundles / "live-kill").exists(), what="live-kill cleaned")
        assert str(bundles / "live-kill" / "rootfs") not in _mounts(d)
        assert task_status(d, ns, "live-kill") is None
        assert task_status(d, ns, "down-kill") == "RUNNING"

        # a shim dying while the daemon is down: cleaned at the next start
        d.stop()
        os.kill(shim_pid_of(d.address, "down-kill"), signal.SIGKILL)
        d.start()
        assert not (bundles / "down-kill").exists()
        assert not [m for m in _mounts(d) if str(bundles) in m]
        assert d.ctr("tasks", "ls", "-q", namespace=ns).stdout == ""
        d.ctr("containers", "rm", "live-kill", "down-kill", namespace=ns)
        assert_nothing_left(d, ns)
    finally:
        events.send_signal(signal.SIGTERM)
        out, _ = events.communicate(timeout=10)
        _cleanup(d)
    # (ctr events ends with the daemon stop: only the live kill's events are seen)
    lines = [line for line in out.splitlines() if f" {ns} " in line]
    assert [line.split()[5] for line in lines[-2:]] == ["/tasks/exit", "/tasks/delete"]
    assert all('"live-kill"' in line for line in lines[-2:])


def _mounts(d):
    from runtime_helpers import mounts_under
    return mounts_under(d.workdir)


# --- images (needs content, snapshots and the differ) ---------------------------------


def test_missing_image_matches_containerd(ours, theirs):
    ns = ns_for("noimage")
    outputs = []
    for d in (ours, theirs):
        r = d.ctr("run", "--rm", *run_flags(d.workdir), "docker.io/library/nosuch:latest",
                  "noimg", "true", namespace=ns, check=False)
        outputs.append((r.returncode, r.stderr))
        assert d.ctr("containers", "ls", "-q", namespace=ns).stdout == ""
    assert outputs[0] == outputs[1] == (
        1, 'ctr: image "docker.io/library/nosuch:latest": not found\n')


@pytest.fixture(scope="module")
def busybox_image():
    out = Path(tempfile.mkdtemp(prefix="img-", dir="/tmp"))
    try:
        subprocess.run(["python3", "/work/shared/anchor/make_oci_image.py", "--variant", "small",
                        "--out", str(out / "busybox.tar")], check=True, capture_output=True)
        yield str(out / "busybox.tar")
    finally:
        import shutil
        shutil.rmtree(out, ignore_errors=True)


def _events_of_image_run(d, ns, cid):
    events = subprocess.Popen([CTR, "--address", d.address, "events"], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    try:
        time.sleep(0.3)
        r = d.ctr("run", "--rm", *run_flags(d.workdir), "localhost/busybox:latest", cid,
                  "echo", "hello", namespace=ns, check=False)
        time.sleep(0.3)
    finally:
        events.send_signal(signal.SIGTERM)
        out, _ = events.communicate(timeout=10)
    return r, [line.split()[5] for line in out.splitlines() if f" {ns} " in line]


def test_run_image_matches_containerd(ours, theirs, busybox_image):
    ns = ns_for("image")
    results = []
    for d, d_ns in ((ours, ns), (theirs, ns + "-cd")):
        USED_NAMESPACES.add(d_ns)
        d.ctr("images", "import", busybox_image, namespace=d_ns)
        snapshots = d.ctr("snapshots", "ls", namespace=d_ns).stdout
        r, topics = _events_of_image_run(d, d_ns, "img1")
        assert (r.returncode, r.stdout) == (0, "hello\n"), r.stderr
        r = d.ctr("run", "--rm", *run_flags(d.workdir), "localhost/busybox:latest", "img2",
                  "sh", "-c", "exit 5", namespace=d_ns, check=False)
        assert r.returncode == 5
        assert d.ctr("snapshots", "ls", namespace=d_ns).stdout == snapshots  # active one gone
        results.append(topics)
        if d is ours:
            assert_nothing_left(d, d_ns)
    assert results[0] == results[1]
    assert results[0] == ["/snapshot/prepare", "/containers/create", "/tasks/create",
                          "/tasks/start", "/tasks/exit", "/tasks/delete", "/snapshot/remove",
                          "/containers/delete"]


USERNS = ["--uidmap", "0:100000:65536", "--gidmap", "0:100000:65536"]


def test_user_namespaces_match_containerd(ours, theirs, busybox_image):
    """--uidmap/--gidmap (ctr shifts a copy of the image's snapshot to the mapped ids): the
    bundle goes to the remapped root's group, mode 0710, so runc can reach the rootfs, writable
    or read-only. --remap-labels only labels the snapshot (overlayfs ignores that): runc then
    fails on the unshifted rootfs, in both daemons alike."""
    ns = ns_for("userns")
    results = []
    for d, d_ns in ((ours, ns), (theirs, ns + "-cd")):
        USED_NAMESPACES.add(d_ns)
        os.chmod(d.workdir, 0o711)  # runc, in the user namespace, walks the state path
        d.ctr("images", "import", busybox_image, namespace=d_ns)
        got = {}
        for name, opts in (("rw", []), ("ro", ["--read-only"]), ("labels", ["--remap-labels"])):
            r = d.ctr("run", "--rm", *run_flags(d.workdir), *USERNS, *opts,
                      "localhost/busybox:latest", f"u-{name}", "sh", "-c",
                      "cat /proc/self/uid_map; ls -nd /bin; touch /x && echo wrote",
                      namespace=d_ns, check=False)
            got[name] = (r.returncode, r.stdout.split(),
                         r.stderr.replace(str(d.state), "STATE").replace(d_ns, "NS"))
        d.ctr("run", "-d", *run_flags(d.workdir), *USERNS, "localhost/busybox:latest",
              "u-bundle", "sleep", "1000", namespace=d_ns)
        st = os.stat(d.state / "io.containerd.runtime.v2.task" / d_ns / "u-bundle")
        got["bundle"] = (oct(st.st_mode & 0o7777), st.st_uid, st.st_gid)
        d.ctr("tasks", "kill", "-s", "SIGKILL", "u-bundle", namespace=d_ns)
        wait_for(lambda: task_status(d, d_ns, "u-bundle") == "STOPPED", what="u-bundle STOPPED")
        d.ctr("tasks", "rm", "u-bundle", namespace=d_ns)
        d.ctr("containers", "rm", "u-bundle", namespace=d_ns)
        _nothing_left_by(d, d_ns)
        results.append(got)
    assert results[0] == results[1]
    rc, out, _ = results[0]["rw"]
    assert (rc, out[:3], out[5:7], out[-1]) == (0, ["0", "100000", "65536"], ["0", "0"], "wrote")
    rc, out, err = results[0]["ro"]
    assert (rc, out[:3], "Read-only file system" in err) == (1, ["0", "100000", "65536"], True)
    assert results[0]["labels"][0] == 1 and "permission denied" in results[0]["labels"][2]
    assert results[0]["bundle"] == ("0o710", 0, 100000)


def test_shim_without_task_found_at_boot_is_stopped(rootfs):
    """The daemon died between `shim start` and Create: the shim is stopped, bundle removed."""
    ns = ns_for("notask")
    d = Daemon().start()
    d.stop()
    bundle = d.state / "io.containerd.runtime.v2.task" / ns / "orphan"
    try:
        bundle.mkdir(parents=True)
        (bundle / "rootfs").mkdir()
        (bundle / "config.json").write_text(json.dumps(_spec(ns, "orphan", ["true"])))
        os.mkfifo(bundle / "log")
        log_fd = os.open(bundle / "log", os.O_RDWR | os.O_NONBLOCK)
        env = dict(_sbin_path(), TTRPC_ADDRESS=d.address + ".ttrpc")
        started = subprocess.run(
            ["containerd-shim-runc-v2", "-namespace", ns, "-address", d.address,
             "-publish-binary", "/bin/true", "-id", "orphan", "start"],
            cwd=bundle, env=env, capture_output=True, text=True, timeout=20)
        os.close(log_fd)
        assert started.returncode == 0, started.stderr
        (bundle / "shim-binary-path").write_text("/usr/bin/containerd-shim-runc-v2")
        orphan = shim_pid_of(d.address, "orphan")
        d.start()
        wait_for(lambda: not _alive(orphan), what="orphan shim stopped")
        assert not bundle.exists()
        assert d.ctr("tasks", "ls", "-q", namespace=ns).stdout == ""
    finally:
        _cleanup(d)


def test_unresponsive_shims_are_dialled_in_parallel_under_the_load_timeout(tmp_path):
    """Shims that accept but never answer: each dial gives up after shim.load, all at once."""
    import socket
    ns = ns_for("hung")
    config = tmp_path / "config.toml"
    config.write_text('version = 2\n[timeouts]\n  "io.containerd.timeout.shim.load" = "1s"\n')
    d = Daemon(config=str(config))
    listeners = []
    try:
        for i in range(4):
            bundle = d.state / "io.containerd.runtime.v2.task" / ns / f"hung{i}"
            bundle.mkdir(parents=True)
            (bundle / "config.json").write_text("{}")
            sock = socket.socket(socket.AF_UNIX)
            sock.bind(str(tmp_path / f"hung{i}.sock"))
            sock.listen(8)  # connects succeed, nothing is ever answered
            listeners.append(sock)
            (bundle / "address").write_text(f"unix://{tmp_path}/hung{i}.sock")
        d.start()
        booted = float(re.findall(r"successfully booted in ([0-9.]+)s", d.log())[-1])
        assert 1.0 <= booted < 3.0, f"4 hung shims at 1 s each: boot took {booted}s"
        assert re.search(r"reconnected 0 of 4 shims", d.log())
        task_dir = d.state / "io.containerd.runtime.v2.task" / ns
        # the bundles go through the background trash drain: gone soon, not at once
        wait_for(lambda: not task_dir.exists() or not os.listdir(task_dir),
                 what="the hung shims' bundles removed")
        assert len(re.findall(rf"event {ns} /tasks/exit", d.log())) == 4
    finally:
        for sock in listeners:
            sock.close()
        _cleanup(d)


def test_containers_grpc_update_fieldpaths_liststream_and_sandbox(ours):
    from google.protobuf import any_pb2, field_mask_pb2
    ns = ns_for("cgrpc")
    api = Grpc(ours.address, ns)
    spec = any_pb2.Any(type_url="types.containerd.io/opencontainers/runtime-spec/1/Spec",
                       value=b'{"ociVersion":"1.0.2"}')
    c = api.cpb.Container(id="g1", spec=spec, image="img:1", labels={"a": "1", "b": "2"},
                          sandbox="sb-1")
    c.runtime.name = "io.containerd.runc.v2"
    c.extensions["x"].CopyFrom(any_pb2.Any(type_url="ext", value=b"v"))
    api.containers.Create(api.cpb.CreateContainerRequest(container=c), metadata=api.md, timeout=10)
    update = api.cpb.Container(id="g1", image="img:2", labels={"a": "9"})
    resp = api.containers.Update(api.cpb.UpdateContainerRequest(
        container=update, update_mask=field_mask_pb2.FieldMask(paths=["image", "labels.a"])),
        metadata=api.md, timeout=10)
    got = resp.container
    assert (got.image, dict(got.labels), got.sandbox) == ("img:2", {"a": "9", "b": "2"}, "sb-1")
    assert got.extensions["x"].value == b"v" and got.spec.value == spec.value
    assert got.updated_at.ToNanoseconds() > got.created_at.ToNanoseconds()
    try:
        api.containers.Update(api.cpb.UpdateContainerRequest(
            container=update, update_mask=field_mask_pb2.FieldMask(paths=["runtime"])),
            metadata=api.md, timeout=10)
        raise AssertionError("runtime is not updatable")
    except api.grpc.RpcError as err:
        assert err.code() == api.grpc.StatusCode.INVALID_ARGUMENT
        assert err.details() == 'cannot update "runtime" field on "g1": invalid argument'
    streamed = [m.container.id for m in api.containers.ListStream(
        api.cpb.ListContainersRequest(filters=["image==img:2"]), metadata=api.md, timeout=10)]
    assert streamed == ["g1"]
    api.containers.Delete(api.cpb.DeleteContainerRequest(id="g1"), metadata=api.md, timeout=10)
    assert_nothing_left(ours, ns)


def test_a_prestarted_shim_is_stopped_when_its_tasks_create_is_cancelled(rootfs, tmp_path):
    """A Tasks.Create that gives up (client deadline) while it waits for the container's shim
    started ahead: that shim, ready later, is stopped; none is left once the container is gone."""
    ns = ns_for("prestart-cancel")
    shim = tmp_path / "slow-shim"   # the real runc shim, whose `start` begins 3 s late
    shim.write_text('#!/bin/sh\ncase "$*" in *" start") sleep 3;; esac\n'
                    'exec containerd-shim-runc-v2 "$@"\n')
    shim.chmod(0o755)
    config = tmp_path / "config.toml"
    config.write_text('version = 2\n[plugins."io.containerd.runtime.v2.task"]\n'
                      '  prestart_shims = true\n')
    d = Daemon(config=str(config)).start()
    try:
        d.ctr("containers", "create", *PATH_ENV, "--runtime", str(shim), "--rootfs", rootfs,
              "c0", "sleep", "60", namespace=ns)
        r = d.ctr("--timeout", "1s", "tasks", "start", "-d", "c0", namespace=ns, check=False)
        assert r.returncode != 0
        time.sleep(4.0)   # the shim's start has ended by now
        d.ctr("containers", "rm", "c0", namespace=ns)
        wait_for(lambda: not _shims_in(d, ns), timeout=15, what="the shim started ahead stopped")
        assert_nothing_left(d, ns)
    finally:
        _cleanup(d)
