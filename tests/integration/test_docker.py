"""Debian's docker.io (dockerd 20.10) on a fresh ctrappliance, and the same test on
Debian's containerd 1.6.20. dockerd keeps images in its own graph driver and drives containers
through containerd's API (containers, tasks with exec/pause/resize/metrics, events).

Everything is private: dockerd's data root, exec root (runc's root too), pid file, socket,
config file (its key path), cgroup parent and the CLI's config dir. dockerd 20.10 hardcodes
/run/docker/plugins: it is removed afterwards if the test made it.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from daemon import Daemon, wait_for
from image_helpers import make_docker_archive, make_oci
from reference import Containerd
from runtime_helpers import Pty, mounts_under, remove_cgroup_dirs, shim_pids

pytestmark = pytest.mark.integration

DOCKERD = "/usr/sbin/dockerd"   # Debian's: /usr/local/bin/docker may be another docker
DOCKER = "/usr/bin/docker"
IMAGE = "localhost/busybox:latest"
PLUGINS_DIR = Path("/run/docker/plugins")  # hardcoded in dockerd 20.10


def dockerd_processes() -> dict[int, list[str]]:
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/exe") == DOCKERD:
                found[int(pid)] = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        except OSError:
            pass
    return found


class Dockerd:
    """dockerd on private paths, using the containerd-compatible daemon `backend`."""

    def __init__(self, backend, namespace: str):
        self.backend = backend
        self.namespace = namespace
        self.workdir = Path(tempfile.mkdtemp(prefix="dockerd-", dir="/tmp"))
        self.socket = self.workdir / "docker.sock"
        self.cgroup_parent = f"ca-dockerd-{os.getpid()}"
        self.env = dict(os.environ, DOCKER_HOST=f"unix://{self.socket}",
                        DOCKER_CONFIG=str(self.workdir / "cli"), DOCKER_BUILDKIT="0")
        self.proc = None

    def start(self, timeout=60.0) -> "Dockerd":
        config = self.workdir / "daemon.json"
        config.write_text(json.dumps({"deprecated-key-path": str(self.workdir / "key.json")}))
        argv = [DOCKERD, "--config-file", str(config),
                "--data-root", str(self.workdir / "data"), "--exec-root", str(self.workdir / "exec"),
                "--pidfile", str(self.workdir / "docker.pid"), "-H", f"unix://{self.socket}",
                "--containerd", self.backend.address,
                "--containerd-namespace", self.namespace,
                "--containerd-plugins-namespace", self.namespace + "-plugins",
                "--bridge=none", "--iptables=false", "--ip6tables=false",
                "--userland-proxy=false", "--storage-driver=overlay2",
                "--cgroup-parent", "/" + self.cgroup_parent]
        self.log_file = open(self.workdir / "dockerd.log", "ab")
        self.proc = subprocess.Popen(argv, stdout=self.log_file, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while self.docker("version", check=False, timeout=10).returncode != 0:
            assert self.proc.poll() is None, f"dockerd exited:\n{self.log()}"
            assert time.monotonic() < deadline, f"dockerd did not start:\n{self.log()}"
            time.sleep(0.1)
        return self

    def log(self) -> str:
        return (self.workdir / "dockerd.log").read_text(errors="replace")[-6000:]

    def docker(self, *args, input=None, check=True, timeout=60):
        result = subprocess.run([DOCKER, *args], capture_output=True, text=True, input=input,
                                env=self.env, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout}{result.stderr}\n--- dockerd log:\n{self.log()}")
        return result

    def cleanup(self):
        if self.proc and self.proc.poll() is None:
            self.docker("rm", "-f", *self.docker("ps", "-aq", check=False).stdout.split(),
                        check=False)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc:
            self.log_file.close()
        for mount in sorted(mounts_under(self.workdir), reverse=True):  # data-root binds itself
            subprocess.run(["umount", "-l", mount], capture_output=True)
        shutil.rmtree(self.workdir, ignore_errors=True)
        remove_cgroup_dirs(self.cgroup_parent)


@pytest.fixture(scope="module", params=["ctrappliance", "containerd"])
def docker(request, tmp_path_factory):
    """A fresh backend daemon with dockerd on it, and the busybox image loaded."""
    plugins_dir_existed = PLUGINS_DIR.exists()
    backend = Daemon() if request.param == "ctrappliance" else Containerd()
    dockerd = Dockerd(backend, namespace=f"dk-{os.getpid()}")
    try:
        backend.start()
        dockerd.start()
        archive = make_docker_archive(make_oci(tmp_path_factory.mktemp("image")), IMAGE)
        assert dockerd.docker("load", "-i", str(archive)).stdout == f"Loaded image: {IMAGE}\n"
        yield dockerd
    finally:
        dockerd.cleanup()
        for pid in shim_pids(backend.address):  # left by a failing test
            os.kill(pid, signal.SIGKILL)
        backend.cleanup()
        if not plugins_dir_existed:
            for path in (PLUGINS_DIR, PLUGINS_DIR.parent):
                try:
                    path.rmdir()
                except OSError:
                    pass


def test_docker_io_installed_without_starting_a_host_dockerd():
    """scripts/dev installs docker.io under a policy-rc.d that exits 101: no service starts."""
    status = subprocess.run(["dpkg-query", "-W", "-f", "${Status} ${Version}", "docker.io"],
                            capture_output=True, text=True, timeout=30).stdout
    assert re.match(r"install ok installed 20\.10\.", status), status
    # the only dockerd processes are tests' (private data roots), none on the host's paths
    host = {pid: argv for pid, argv in dockerd_processes().items() if "--data-root" not in argv}
    assert host == {}
    assert not os.path.exists("/run/docker.sock")


def test_run_rm_output_exit_code_and_stdin(docker):
    r = docker.docker("run", "--rm", IMAGE, "sh", "-c", "echo hello; echo oops >&2; exit 3",
                      check=False)
    assert (r.returncode, r.stdout, r.stderr) == (3, "hello\n", "oops\n")
    r = docker.docker("run", "--rm", "-i", IMAGE, "sh", "-c", "read x; echo got:$x; cat",
                      input="line-one\nline-two\n")
    assert r.stdout == "got:line-one\nline-two\n"
    assert docker.docker("ps", "-aq").stdout == ""


def test_run_it_under_script_with_resize(docker):
    """`script` gives docker a pty; resizing the outer pty reaches the container's tty."""
    inner = (f"{DOCKER} run -it --rm {IMAGE} sh -c "
             "'echo ready; read x; busybox stty size; read y; busybox stty size; exit 5'")
    pty = Pty(["/usr/bin/script", "-qec", inner, "/dev/null"], env=docker.env, rows=24, cols=80)
    try:
        pty.read_until(rb"ready\r*\n")
        time.sleep(0.5)  # docker sends the initial resize just after start
        pty.write(b"one\r")
        pty.read_until(rb"24 80\r*\n")
        pty.resize(30, 100)  # SIGWINCH to script, which resizes docker's pty
        time.sleep(0.5)
        pty.write(b"two\r")
        pty.read_until(rb"30 100\r*\n")
        assert pty.wait() == 5, pty.output
    finally:
        pty.close()


LOOP = "trap 'exit 0' TERM; echo started; while true; do sleep 0.2; done"


def test_detached_exec_logs_stats_events_pause_restart_rm(docker):
    since = str(int(time.time()) - 1)
    cid = docker.docker("run", "-d", "--name", "web", IMAGE, "sh", "-c", LOOP).stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", cid)
    r = docker.docker("exec", "web", "sh", "-c", "echo in-exec; exit 4", check=False)
    assert (r.returncode, r.stdout) == (4, "in-exec\n")
    assert docker.docker("exec", "-i", "web", "cat", input="via-stdin\n").stdout == "via-stdin\n"
    wait_for(lambda: docker.docker("logs", "web").stdout == "started\n", what="docker logs")

    stats = docker.docker("stats", "--no-stream", "--format",
                          "{{.Name}} {{.MemUsage}} {{.PIDs}}", "web").stdout.split()
    assert stats[0] == "web" and int(stats[-1]) >= 1, stats
    assert re.fullmatch(r"[\d.]+[KMG]iB", stats[1]) and float(re.sub("[^\\d.]", "", stats[1])) > 0

    def state():
        return docker.docker("inspect", "-f", "{{.State.Status}}", "web").stdout.strip()

    docker.docker("pause", "web")
    assert state() == "paused"
    docker.docker("unpause", "web")
    assert state() == "running"
    docker.docker("restart", "-t", "5", "web")
    assert state() == "running"
    wait_for(lambda: docker.docker("logs", "web").stdout == "started\nstarted\n",
             what="the restarted container's output")
    assert docker.docker("exec", "web", "echo", "again").stdout == "again\n"
    docker.docker("rm", "-f", "web")
    assert docker.docker("ps", "-aq").stdout == ""

    events = docker.docker("events", "--since", since, "--until", str(int(time.time()) + 1),
                           "--filter", "container=web", "--format", "{{.Action}}").stdout
    actions = [line.split(":")[0] for line in events.splitlines()]
    exec_ = ["exec_create", "exec_start", "exec_die"]
    expected = ["create", "start", *exec_, *exec_, "pause", "unpause",
                "die", "stop", "start", "restart", *exec_, "die", "destroy"]
    assert [a for a in actions if a in expected] == expected, actions


def test_build_one_run_dockerfile(docker, tmp_path):
    (tmp_path / "Dockerfile").write_text(f"FROM {IMAGE}\nRUN echo built > /built.txt\n")
    r = docker.docker("build", "-t", "localhost/built:1", str(tmp_path), timeout=180)
    assert "Successfully tagged localhost/built:1" in r.stdout
    assert docker.docker("run", "--rm", "localhost/built:1", "cat", "/built.txt").stdout == \
        "built\n"
    docker.docker("rmi", "localhost/built:1")


def test_backend_restart_while_a_container_runs(docker):
    docker.docker("run", "-d", "--name", "survivor", IMAGE, "sh", "-c", LOOP)
    docker.backend.stop()
    docker.backend.start()
    # dockerd's gRPC channel retries with a backoff; until it reconnects, calls fail fast
    wait_for(lambda: docker.docker("top", "survivor", check=False).returncode == 0,
             what="dockerd to reconnect to the restarted daemon")
    ps = docker.docker("ps", "--format", "{{.Names}} {{.Status}}").stdout
    assert re.fullmatch(r"survivor Up .*\n", ps), ps
    assert docker.docker("exec", "survivor", "echo", "after-restart").stdout == "after-restart\n"
    docker.docker("stop", "-t", "10", "survivor")
    assert docker.docker("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}",
                         "survivor").stdout == "exited 0\n"
    docker.docker("rm", "survivor")
