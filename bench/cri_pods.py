"""Section `cri_pods`: Kubernetes' pod lifecycle and kubelet's relist (PLEG) through the CRI
API of each daemon (containerd with its CRI plugin on), both configured alike: host-network
pods, a pause image and busybox from Debian's docker-registry on 127.0.0.1 (pulled once),
runc with a private root. Each daemon runs the workload in turn, the other idle.

- pod start: RunPodSandbox → CreateContainer → StartContainer → ContainerStatus RUNNING,
  `PODS_START` pods one after another (each one's time is a sample), then all torn down.
- PLEG load: `PODS_PLEG` pods running; every second for `PLEG_SECONDS` (20 in --quick),
  ListPodSandbox + ListContainers + ContainerStatus of each container, as kubelet's relist.
  Daemon CPU over the window (its own process, not the shims), p99 of the list calls.
- RSS of the daemon with those pods running, after the window.
"""
from __future__ import annotations

import sys
import time

from .daemons import REPO, Target, remove_empty_cgroups
from .stats import percentile

PODS_START = 20
PODS_PLEG = 30
CALL_TIMEOUT = 120.0
CRI = 'plugins."io.containerd.grpc.v1.cri"'
METRICS = ["cri_pod_start", "cri_pleg_cpu", "cri_pleg_list_p99", "cri_pleg_relist_p50",
           "cri_pods_rss"]


def _harness():
    """The tests' registry with busybox and a pause image (tests/integration/cri_helpers)."""
    paths = [str(REPO / "tests"), str(REPO / "tests" / "integration")]
    sys.path[:0] = paths
    try:
        from cri_helpers import Registry
    finally:
        for p in paths:
            sys.path.remove(p)
    return Registry()


def cri_table(workdir, pause: str) -> tuple[str, str]:
    """(keys inside the CRI table, tables after it) for both daemons (containerd's table
    already has netns_mounts_under_state_dir and restrict_oom_score_adj: ours gets them in
    Target._argv)."""
    keys = f'  sandbox_image = "{pause}"\n'
    runc = (f'[{CRI}.containerd.runtimes.runc]\n  runtime_type = "io.containerd.runc.v2"\n'
            f'[{CRI}.containerd.runtimes.runc.options]\n  Root = "{workdir}/runc"\n')
    return keys, runc


class Client:
    def __init__(self, target: Target, images):
        import grpc
        from appliance._proto.cri.v1 import api_pb2, api_pb2_grpc
        self.pb = api_pb2
        self.channel = grpc.insecure_channel(f"unix://{target.address}")
        self.rt = api_pb2_grpc.RuntimeServiceStub(self.channel)
        self.images = api_pb2_grpc.ImageServiceStub(self.channel)
        self.busybox = images.busybox
        self.seq = 0

    def pull(self, ref: str) -> None:
        self.images.PullImage(self.pb.PullImageRequest(image=self.pb.ImageSpec(image=ref)),
                              timeout=CALL_TIMEOUT)

    def start_pod(self) -> tuple[str, str]:
        """One pod with one sleeping container, until ContainerStatus says RUNNING."""
        pb = self.pb
        self.seq += 1
        name = f"bench-{self.seq}"
        config = pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(
            name=name, namespace="bench", uid=f"uid-{name}"))
        config.linux.cgroup_parent = "/bench-cri-pods"
        config.linux.security_context.namespace_options.network = pb.NODE
        pod = self.rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config),
                                    timeout=CALL_TIMEOUT).pod_sandbox_id
        cid = self.rt.CreateContainer(pb.CreateContainerRequest(
            pod_sandbox_id=pod, sandbox_config=config, config=pb.ContainerConfig(
                metadata=pb.ContainerMetadata(name="app"),
                image=pb.ImageSpec(image=self.busybox), command=["sleep", "3600"])),
            timeout=CALL_TIMEOUT).container_id
        self.rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=CALL_TIMEOUT)
        deadline = time.monotonic() + CALL_TIMEOUT
        while self.rt.ContainerStatus(pb.ContainerStatusRequest(container_id=cid),
                                      timeout=CALL_TIMEOUT).status.state != pb.CONTAINER_RUNNING:
            if time.monotonic() > deadline:
                raise TimeoutError(f"container {cid} not running")
            time.sleep(0.005)
        return pod, cid

    def relist(self) -> tuple[float, list[float]]:
        """kubelet's relist: (whole cycle, [ListPodSandbox, ListContainers] latencies) s."""
        pb = self.pb
        t0 = time.perf_counter()
        self.rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=CALL_TIMEOUT)
        t1 = time.perf_counter()
        containers = self.rt.ListContainers(pb.ListContainersRequest(),
                                            timeout=CALL_TIMEOUT).containers
        t2 = time.perf_counter()
        for c in containers:
            self.rt.ContainerStatus(pb.ContainerStatusRequest(container_id=c.id),
                                    timeout=CALL_TIMEOUT)
        return time.perf_counter() - t0, [t1 - t0, t2 - t1]

    def remove_all(self) -> None:
        pb = self.pb
        for pod in self.rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=60).items:
            self.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod.id),
                                   timeout=CALL_TIMEOUT)
            self.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod.id),
                                     timeout=CALL_TIMEOUT)

    def close(self) -> None:
        self.channel.close()


def cri_pods(b, make_targets):
    harness = _harness()
    saved, b.targets = b.targets, make_targets("cri_pods")
    clients = {}
    seconds = 20 if b.quick else 60
    try:
        for t in b.targets:
            t.cri = True
            t.cri_config = cri_table(t.workdir, harness.pause)
            t.start()
            clients[t.kind] = Client(t, harness)
            clients[t.kind].pull(harness.busybox)
            clients[t.kind].start_pod()              # warm-up: pause image, first shim
            clients[t.kind].remove_all()

        def pod_start(t):
            client = clients[t.kind]
            try:
                for _ in range(PODS_START):
                    t0 = time.perf_counter()
                    client.start_pod()
                    b.record("cri_pod_start", t.kind, (time.perf_counter() - t0) * 1000)
            finally:
                client.remove_all()

        def pleg(t):
            client = clients[t.kind]
            try:
                for _ in range(PODS_PLEG):
                    client.start_pod()
                time.sleep(2.0)                      # start-up work settles
                before = t.memory()["cpu_s"]
                cycles, lists = [], []
                start = time.monotonic()
                for tick in range(seconds):
                    cycle, calls = client.relist()
                    cycles.append(cycle)
                    lists.extend(calls)
                    time.sleep(max(0.0, start + tick + 1 - time.monotonic()))
                b.record("cri_pleg_cpu", t.kind, t.memory()["cpu_s"] - before)
                b.record("cri_pleg_list_p99", t.kind, percentile(sorted(lists), 0.99) * 1000)
                b.record("cri_pleg_relist_p50", t.kind, percentile(sorted(cycles), 0.5) * 1000)
                b.record("cri_pods_rss", t.kind, t.memory()["rss_mib"])
            finally:
                client.remove_all()

        for rep in range(b.reps(1, 2)):
            b.each(rep, ["cri_pod_start"], pod_start)
            b.each(rep, ["cri_pleg_cpu", "cri_pleg_list_p99", "cri_pleg_relist_p50",
                         "cri_pods_rss"], pleg)
    finally:
        for client in clients.values():
            client.close()
        for t in b.targets:
            t.cleanup()
        b.targets = saved
        harness.stop()
        remove_empty_cgroups("bench-cri-pods")
