"""The open files limit. The daemon raises its soft RLIMIT_NOFILE to the hard
limit (as Go programs do), children get the original back, and running out of fds
anyway backs off quietly and recovers."""
import contextlib
import resource
import socket
import time

import pytest

from appliance.process import eventloop
from daemon import Daemon, wait_for
from test_stream_processors import _tar, configure_processor, make_image

pytestmark = pytest.mark.integration
SOFT, HARD = 1024, 4096
IDLE_CLIENTS = 1100


class LimitedDaemon(Daemon):
    """A daemon started with RLIMIT_NOFILE soft:hard (prlimit execs it: same pid)."""

    def __init__(self, soft: int, hard: int, **kwargs):
        super().__init__(**kwargs)
        self.nofile = f"--nofile={soft}:{hard}"

    def argv(self):
        return ["prlimit", self.nofile, "--", *super().argv()]


def nofile_of(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
    raise AssertionError("no open files limit")


@contextlib.contextmanager
def idle_clients(address: str, count: int):
    """`count` connections that never send a byte (the test process needs the fds too)."""
    own = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(own[1], HARD), max(own[1], HARD)))
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_UNIX)
            socks.append(s)
            s.setblocking(False)
            wait_for(lambda: _connected(s, address), what="room in the listen backlog")
        yield socks
    finally:
        for s in socks:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, own)


def _connected(s: socket.socket, address: str) -> bool:
    try:
        s.connect(address)
        return True
    except BlockingIOError:  # a unix socket's listen backlog is full: try again
        return False


def test_idle_connections_beyond_the_inherited_soft_limit_and_children_get_it_back(tmp_path):
    """1,100 idle clients with an inherited soft limit of 1024 do not lock `ctr` out; a
    stream processor (a child) runs with the soft limit of 1024 the daemon started with."""
    seen = tmp_path / "child-limit"
    script = tmp_path / "b64-decoder"
    script.write_text(f"#!/bin/sh\nulimit -Sn > {seen}\nexec base64 -d\n")
    script.chmod(0o755)
    d = LimitedDaemon(SOFT, HARD)
    configure_processor(d, script)
    try:
        d.start()
        assert nofile_of(d.proc.pid) == (HARD, HARD)
        with idle_clients(d.address, IDLE_CLIENTS):
            assert "Version:" in d.ctr("version", timeout=30).stdout
        image = make_image(tmp_path / "image.tar", _tar({"a.txt": b"a\n"}))
        d.ctr("images", "import", "--snapshotter", "native", str(image))
        assert seen.read_text().strip() == str(SOFT)
    finally:
        d.cleanup()


@pytest.mark.parametrize("loop_kind", eventloop.LOOPS)
def test_out_of_fds_backs_off_logs_once_and_recovers(loop_kind):
    """soft = hard = 1024: accept fails with EMFILE. One log line (no traceback per
    attempt), and accepting resumes once the clients close; on either event loop."""
    d = LimitedDaemon(SOFT, SOFT, env={eventloop.ENV: loop_kind})
    try:
        d.start()
        with idle_clients(d.address, IDLE_CLIENTS):
            wait_for(lambda: "Too many open files" in d.log(), what="EMFILE on accept")
            time.sleep(3)  # three retries of accept(): each one used to log a traceback
            log = d.log()
        # one line for accept (other work that hits EMFILE meanwhile, e.g. a GC run, logs its own)
        accept_lines = [line for line in log.splitlines()
                        if "accept on" in line and "Too many open files" in line]
        assert len(accept_lines) == 1, log[-3000:]
        assert "Traceback" not in log[log.index("successfully booted"):]
        wait_for(lambda: d.ctr("version", check=False, timeout=10).returncode == 0,
                 what="ctr version after the clients closed")
        assert "accepting connections on" in d.log()
    finally:
        d.cleanup()


def test_a_shim_starts_with_the_original_limit_in_its_own_process_group(tmp_path):
    """The shim's `start` (spawned through prlimit(1), not a forking preexec_fn) runs with
    the soft limit the daemon started with, as its own process group's leader."""
    from runtime_helpers import make_rootfs, run_flags
    seen = tmp_path / "shim-start"
    shim = tmp_path / "containerd-shim-wrapped-v2"
    shim.write_text("#!/bin/sh\n"
                    "for last; do :; done\n"   # the command is the last argument
                    f'[ "$last" = start ] && echo "$(ulimit -Sn) $$ $(ps -o pgid= -p $$)" > {seen}\n'
                    'exec /usr/bin/containerd-shim-runc-v2 "$@"\n')
    shim.chmod(0o755)
    rootfs = make_rootfs(tmp_path / "rootfs")
    d = LimitedDaemon(SOFT, HARD)
    try:
        d.start()
        d.ctr("run", "--rm", *run_flags(d.workdir), "--runtime", str(shim), "--rootfs",
              str(rootfs), "wrapped", "/bin/true", timeout=60)
        limit, pid, pgid = seen.read_text().split()
        assert int(limit) == SOFT
        assert pgid == pid
    finally:
        d.cleanup()
