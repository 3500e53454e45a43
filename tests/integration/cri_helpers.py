"""Shared by the CRI pod and container tests: a registry with busybox and a pause image built
here, both daemons with CRI on (private runc root, netns under state, OOM score restricted),
a CRI client, and checks that nothing is left behind."""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from pathlib import Path

import grpc

from appliance._proto.cri.v1 import api_pb2 as pb, api_pb2_grpc as rpc
from daemon import Daemon, wait_for
from image_helpers import make_oci, with_config
from reference import Containerd
from registry import LocalRegistry

CRI = 'plugins."io.containerd.grpc.v1.cri"'
CNI_BIN = "/usr/lib/cni"
LOG_LINE = re.compile(rb"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z) (stdout|stderr) ([FP]) (.*)$")


class Registry:
    """docker-registry on 127.0.0.1 with test/busybox:v1, test/pause:v1 (sleeps) and
    test/volume:v1 (declares volumes /data and /bin), test/stopsig:v1 (StopSignal SIGUSR1)."""

    def __init__(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="ca-cripods-")
        busybox = make_oci(Path(self.tmp.name))
        pause = with_config(busybox, "pause", Cmd=["sleep", "2147483647"])
        # /bin as a volume too: its files must be copied into the volume to run anything
        volume = with_config(busybox, "volume", Volumes={"/data": {}, "/bin": {}})
        stopsig = with_config(busybox, "stopsig", StopSignal="SIGUSR1")
        self.registry = LocalRegistry().start()
        self.host = self.registry.host
        self.busybox_digest = self.registry.push(busybox, "test/busybox:v1")
        self.registry.push(pause, "test/pause:v1")
        self.registry.push(volume, "test/volume:v1")
        self.registry.push(stopsig, "test/stopsig:v1")
        self.busybox = f"{self.host}/test/busybox:v1"
        self.pause = f"{self.host}/test/pause:v1"
        self.volume = f"{self.host}/test/volume:v1"
        self.stopsig = f"{self.host}/test/stopsig:v1"

    def stop(self):
        self.registry.stop()
        self.tmp.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def cri_keys(workdir: Path, sandbox_image: str, extra: str = "") -> str:
    """The CRI keys both daemons get (inside the CRI table)."""
    return (f'  sandbox_image = "{sandbox_image}"\n'
            f'  netns_mounts_under_state_dir = true\n'
            f'  restrict_oom_score_adj = true\n{extra}')


def runc_root_table(workdir: Path, name: str = "runc", root: str = "runc") -> str:
    """A runc runtime handler whose runc state is under `<workdir>/<root>`."""
    return (f'[{CRI}.containerd.runtimes.{name}]\n  runtime_type = "io.containerd.runc.v2"\n'
            f'[{CRI}.containerd.runtimes.{name}.options]\n  Root = "{workdir}/{root}"\n')


class CRIContainerd(Containerd):
    """containerd 1.6.20 with CRI on, our keys inserted into its CRI table."""

    def __init__(self, sandbox_image: str, extra: str = "", cni_conf_dir: str = "",
                 handlers=()):
        super().__init__(cri=True)
        self.sandbox_image, self.extra, self.cni_conf_dir = sandbox_image, extra, cni_conf_dir
        self.handlers = handlers

    def write_config(self):
        super().write_config()
        text = self.config_path.read_text()
        head = f"[{CRI}]\n"
        # (containerd_config sets netns_mounts_under_state_dir and restrict_oom_score_adj)
        text = text.replace(head, head + f'  sandbox_image = "{self.sandbox_image}"\n'
                            + self.extra)
        if self.cni_conf_dir:
            text = text.replace(f'bin_dir = "{self.workdir}/cni/bin"', f'bin_dir = "{CNI_BIN}"')
            text = text.replace(f'conf_dir = "{self.workdir}/cni/net.d"',
                                f'conf_dir = "{self.cni_conf_dir}"')
        self.config_path.write_text(text + runc_root_table(self.workdir) + "".join(
            runc_root_table(self.workdir, name, f"runc-{name}") for name in self.handlers))


def ctrappliance(sandbox_image: str, extra: str = "", cni_conf_dir: str = "",
                 handlers=()) -> Daemon:
    workdir = Path(tempfile.mkdtemp(prefix="ca-", dir="/tmp"))
    config = workdir / "config.toml"
    bin_dir = CNI_BIN if cni_conf_dir else f"{workdir}/cni/bin"
    config.write_text(f"version = 2\n[{CRI}]\n" + cri_keys(workdir, sandbox_image, extra)
                      + f"[{CRI}.cni]\n  bin_dir = \"{bin_dir}\"\n"
                      f"  conf_dir = \"{cni_conf_dir or f'{workdir}/cni/net.d'}\"\n"
                      + runc_root_table(workdir) + "".join(
                          runc_root_table(workdir, name, f"runc-{name}") for name in handlers))
    return Daemon(workdir=str(workdir), config=str(config))


def make_daemon(kind: str, sandbox_image: str, extra: str = "", cni_conf_dir: str = "",
                handlers=()):
    """Either daemon with CRI on; with `cni_conf_dir`, Debian's CNI plugins and that conf;
    `handlers`: more runc runtime handlers, each with its runc root `<workdir>/runc-<name>`."""
    if kind == "ctrappliance":
        return ctrappliance(sandbox_image, extra, cni_conf_dir, handlers)
    return CRIContainerd(sandbox_image, extra, cni_conf_dir, handlers)


class Client:
    def __init__(self, kind: str, daemon):
        self.kind = kind
        self.daemon = daemon
        self.connect()

    def connect(self):
        if getattr(self, "channel", None) is not None:
            self.channel.close()
        self.channel = grpc.insecure_channel(f"unix://{self.daemon.address}")
        self.runtime = rpc.RuntimeServiceStub(self.channel)
        self.images = rpc.ImageServiceStub(self.channel)

    def close(self):
        self.channel.close()

    # --- helpers ---------------------------------------------------------------------

    def pull(self, ref: str) -> str:
        return self.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=ref))).image_ref

    def run_pod(self, name: str, log_dir: str = "", host_network: bool = True, **fields):
        config = pod_config(name, log_dir, host_network, **fields)
        resp = self.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=120)
        return resp.pod_sandbox_id, config

    def create(self, pod_id: str, pod_config, name: str, image: str, command=(), args=(),
               log_path: str = "", **fields) -> str:
        config = pb.ContainerConfig(metadata=pb.ContainerMetadata(name=name),
                                    image=pb.ImageSpec(image=image), command=list(command),
                                    args=list(args), log_path=log_path, **fields)
        return self.runtime.CreateContainer(pb.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=config, sandbox_config=pod_config),
            timeout=60).container_id

    def start(self, cid: str):
        self.runtime.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=60)

    def status(self, cid: str, verbose=False):
        return self.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=cid,
                                                                      verbose=verbose))

    def pod_status(self, pod_id: str, verbose=False):
        return self.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id,
                                                                        verbose=verbose))

    def wait_exited(self, cid: str, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status(cid).status
            if status.state == pb.CONTAINER_EXITED:
                return status
            time.sleep(0.05)
        raise AssertionError(f"container {cid} did not exit")

    def remove_all(self):
        for pod in self.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items:
            self.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod.id),
                                        timeout=60)
            self.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod.id),
                                          timeout=60)


CGROUP_PARENT = f"/critest-{os.getpid()}"      # one per test process: helpers run at once


def remove_cgroup_parent() -> None:
    """runc leaves the pods' parent cgroup (containerd's too): remove it once it is empty."""
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        try:
            (hierarchy / CGROUP_PARENT.lstrip("/")).rmdir()
        except OSError:
            pass


def stop_daemon(client: "Client") -> None:
    """End of a test's daemon: its pods removed first (a failed test may leave some; the
    CRI may still be starting after a restart), then the daemon stopped and its dirs gone."""
    daemon = client.daemon
    try:
        if daemon.proc is not None and daemon.proc.poll() is not None:  # stopped by the test
            daemon.start()
            client.connect()
        wait_for(lambda: cri_answers(client), what="the CRI")
        client.remove_all()
    finally:
        client.close()
        daemon.cleanup()
        remove_cgroup_parent()


def pod_config(name: str, log_dir: str = "", host_network: bool = True, **fields):
    config = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, namespace="critest", uid=f"uid-{name}"),
        log_directory=log_dir, **fields)
    config.linux.cgroup_parent = CGROUP_PARENT
    if host_network:
        config.linux.security_context.namespace_options.network = pb.NODE
    return config


def shims_of(ids) -> list[int]:
    """Pids of containerd-shim-runc-v2 processes serving any of `ids`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"containerd-shim-runc-v2") and any(
                i.encode() in argv for i in ids):
            found.append(int(pid))
    return found


def mounts_under(path) -> list[str]:
    prefix = os.path.realpath(str(path)) + "/"
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if (line.split()[4] + "/").startswith(prefix)]


def leftovers(daemon) -> dict:
    """What a daemon's pods could leave: shims (their -address is the daemon's socket),
    mounts under its work dir, pinned netns, containerd containers in k8s.io."""
    netns = netns_dir(daemon)
    return {"shims": shims_of([daemon.address]), "mounts": mounts_under(daemon.workdir),
            "netns": sorted(os.listdir(netns)) if netns.is_dir() else [],
            "containers": containers(daemon)}


def netns_dir(daemon) -> Path:
    """Where the daemon pins pods' netns (`netns_mounts_under_state_dir`: the CRI's state)."""
    return Path(daemon.state) / "io.containerd.grpc.v1.cri" / "netns"


def snapshots(daemon) -> list[str]:
    out = daemon.ctr("snapshots", "ls", namespace="k8s.io").stdout.splitlines()[1:]
    return sorted(line.split()[0] for line in out if line.strip())


def containers(daemon) -> list[str]:
    return daemon.ctr("containers", "ls", "-q", namespace="k8s.io").stdout.split()


def parse_log(path) -> list[tuple[str, str, bytes]]:
    out = []
    for line in Path(path).read_bytes().splitlines():
        m = LOG_LINE.match(line)
        assert m, line
        out.append((m.group(3).decode(), m.group(4).decode(), m.group(5)))
    return out


class Answers:
    """Differential answers: `same(case, kind, answer)` asserts once both daemons gave one."""

    def __init__(self):
        self.seen: dict = {}

    def same(self, case, kind, answer):
        seen = self.seen.setdefault(case, {})
        seen[kind] = answer
        if len(seen) == 2:
            assert seen["ctrappliance"] == seen["containerd"], case


def cri_answers(client) -> bool:
    """The CRI answers (containerd says "server is not initialized yet" for a moment after
    a start)."""
    try:
        client.runtime.ListPodSandbox(pb.ListPodSandboxRequest())
        return True
    except grpc.RpcError:
        return False


@contextlib.contextmanager
def running(kind: str, registry: Registry, extra: str = "", cni_conf_dir: str = ""):
    """A started daemon of `kind` with busybox pulled, and its Client; everything it ran is
    removed and the daemon cleaned up at the end."""
    daemon = make_daemon(kind, registry.pause, extra, cni_conf_dir=cni_conf_dir)
    daemon.start()
    client = Client(kind, daemon)
    try:
        client.pull(registry.busybox)
        yield client
    finally:
        try:
            client.remove_all()
        finally:
            client.close()
            daemon.cleanup()
