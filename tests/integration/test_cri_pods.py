"""CRI pods and containers (runtime.v1), named after critest's cases, against ctrappliance and
Debian's containerd 1.6.20 with CRI on (private paths, runc with a private root), images from
a loopback docker-registry: the same answers where the behaviour is containerd's.

Pods here use the host's network (no CNI in this suite)."""
import json
import os
import re
import tempfile
import time
from pathlib import Path

import grpc
import pytest

from appliance._proto.cri.v1 import api_pb2 as pb
from cri_helpers import (CGROUP_PARENT, Answers, Client, Registry, containers, cri_answers,
                         leftovers, make_daemon, parse_log, pod_config, shims_of, snapshots,
                         stop_daemon)
from daemon import wait_for

pytestmark = pytest.mark.integration

same = Answers().same


@pytest.fixture(scope="module")
def registry():
    with Registry() as r:
        yield r


@pytest.fixture(scope="module", params=["ctrappliance", "containerd"])
def cri(request, registry):
    daemon = make_daemon(request.param, registry.pause, handlers=["other"])
    daemon.start()
    client = Client(request.param, daemon)
    try:
        client.pull(registry.busybox)
        yield client
    finally:
        stop_daemon(client)


@pytest.fixture
def logdir():
    with tempfile.TemporaryDirectory(prefix="ca-crilogs-") as d:
        yield d


@pytest.fixture(autouse=True)
def _clean_pods(request):
    """A failed case must not leave pods to the next one on the shared daemon."""
    yield
    if "cri" in request.fixturenames:
        request.getfixturevalue("cri").remove_all()


def _cgroup(path: str) -> Path:
    v2 = Path("/sys/fs/cgroup/cgroup.controllers").exists()
    return Path("/sys/fs/cgroup" if v2 else "/sys/fs/cgroup/pids") / path.lstrip("/")


def _code(call):
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


# --- runtime info ---------------------------------------------------------------------------

def test_runtime_version(cri):
    v = cri.runtime.Version(pb.VersionRequest())
    assert v.runtime_api_version == "v1"


# --- pod lifecycle --------------------------------------------------------------------------

def test_pod_lifecycle(cri, registry):
    """critest "runtime should support basic operations on PodSandbox"."""
    pod_id, config = cri.run_pod("lifecycle", labels={"app": "a"}, annotations={"k": "v"})
    status = cri.pod_status(pod_id).status
    assert status.state == pb.SANDBOX_READY
    assert status.metadata == config.metadata
    assert dict(status.labels) == {"app": "a"} and dict(status.annotations) == {"k": "v"}
    assert status.created_at > 0 and status.runtime_handler == ""
    # the pod is a containerd container in k8s.io, its pause task in its own shim
    assert pod_id in containers(cri.daemon)
    assert len(shims_of([pod_id])) == 1
    assert _cgroup(f"{CGROUP_PARENT}/{pod_id}").is_dir()     # cgroup_parent/<pod id>
    items = cri.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items
    assert [i.id for i in items] == [pod_id] and items[0].state == pb.SANDBOX_READY

    cri.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    assert cri.pod_status(pod_id).status.state == pb.SANDBOX_NOTREADY
    wait_for(lambda: not shims_of([pod_id]), what="the pod's shim to exit")
    cri.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))  # again: OK
    cri.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    assert cri.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items == []
    assert pod_id not in containers(cri.daemon)
    same("pod-lifecycle", cri.kind, (status.state, status.network.ip,
                                     status.linux.namespaces.options.network))


def test_pod_verbose_status(cri):
    pod_id, _ = cri.run_pod("verbose")
    resp = cri.pod_status(pod_id, verbose=True)
    info = json.loads(resp.info["info"])
    expected = {"pid", "processStatus", "netNamespaceClosed", "image", "snapshotKey",
                "snapshotter", "runtimeHandler", "runtimeType", "runtimeOptions", "config",
                "runtimeSpec", "cniResult"}
    assert expected <= set(info)
    spec = info["runtimeSpec"]
    annotations = spec["annotations"]
    assert annotations["io.kubernetes.cri.container-type"] == "sandbox"
    assert annotations["io.kubernetes.cri.sandbox-id"] == pod_id
    assert spec["linux"]["cgroupsPath"] == f"{CGROUP_PARENT}/{pod_id}"
    same("pod-verbose", cri.kind, (sorted(expected & set(info)), info["processStatus"],
                                   info["snapshotKey"] == pod_id, info["runtimeType"],
                                   sorted(annotations)))


def test_list_pods_with_filters(cri):
    """critest "runtime should support listing PodSandbox with filters"."""
    a, _ = cri.run_pod("filter-a", labels={"group": "one"})
    b, _ = cri.run_pod("filter-b", labels={"group": "two"})
    cri.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=b))

    def ids(**flt):
        req = pb.ListPodSandboxRequest(filter=pb.PodSandboxFilter(**flt))
        return sorted(i.id for i in cri.runtime.ListPodSandbox(req).items)

    assert ids(id=a) == [a]
    assert ids(id=a[:12]) == [a]
    assert ids(label_selector={"group": "two"}) == [b]
    assert ids(state=pb.PodSandboxStateValue(state=pb.SANDBOX_READY)) == [a]
    assert ids(state=pb.PodSandboxStateValue(state=pb.SANDBOX_NOTREADY)) == [b]
    assert ids(id="nothing") == []


# --- container lifecycle --------------------------------------------------------------------

def test_container_lifecycle(cri, registry, logdir):
    """critest "runtime should support basic operations on container": create, start,
    stop (SIGTERM within the timeout), remove."""
    pod_id, config = cri.run_pod("ctr-lifecycle", logdir)
    cid = cri.create(pod_id, config, "sleeper", registry.busybox, ["sleep", "600"],
                     log_path="sleeper.log", labels={"tier": "x"})
    status = cri.status(cid).status
    assert status.state == pb.CONTAINER_CREATED and status.started_at == 0
    assert cid in containers(cri.daemon)
    cri.start(cid)
    status = cri.status(cid).status
    assert status.state == pb.CONTAINER_RUNNING and status.started_at >= status.created_at
    assert shims_of([pod_id]) and not shims_of([cid])   # the pod's shim runs it
    assert status.log_path == os.path.join(logdir, "sleeper.log")
    assert status.image.image == registry.busybox
    assert status.image_ref == f"{registry.host}/test/busybox@{registry.busybox_digest}"

    cri.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=10))
    status = cri.status(cid).status
    assert status.state == pb.CONTAINER_EXITED
    assert status.exit_code == 143 and status.reason == "Error"
    assert status.finished_at >= status.started_at

    listed = cri.runtime.ListContainers(pb.ListContainersRequest()).containers
    assert [(c.id, c.pod_sandbox_id, c.state) for c in listed] == [
        (cid, pod_id, pb.CONTAINER_EXITED)]
    assert listed[0].image_ref.startswith("sha256:")
    cri.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid))
    assert cri.runtime.ListContainers(pb.ListContainersRequest()).containers == []
    assert cid not in containers(cri.daemon)
    same("container-lifecycle", cri.kind, (status.exit_code, status.reason,
                                           dict(status.labels), status.metadata.name))


def test_relist_answers_follow_each_change(cri, registry):
    """kubelet's relist (ListPodSandbox, ListContainers, then each status) asked before and
    after every change, so that an answer kept from the last relist would show: containers
    created, started, a resources update, one exiting by itself, one stopped, the pod
    stopped."""
    pod_id, config = cri.run_pod("relist-answers")
    sleeper = cri.create(pod_id, config, "sleeper", registry.busybox, ["sleep", "600"])
    quitter = cri.create(pod_id, config, "quitter", registry.busybox, [
        "sh", "-c", "while [ ! -e /tmp/go ]; do sleep 0.1; done; exit 4"])
    rt = cri.runtime

    def relist():
        pods = [(p.id, p.state) for p in rt.ListPodSandbox(pb.ListPodSandboxRequest()).items]
        listed = sorted((c.id, c.state) for c in
                        rt.ListContainers(pb.ListContainersRequest()).containers)
        statuses = []
        for cid in (sleeper, quitter):
            s = cri.status(cid).status
            statuses.append((s.state, s.exit_code, s.reason, s.started_at > 0,
                             s.finished_at > 0, s.resources.linux.cpu_shares == 256))
        return pods, cri.pod_status(pod_id).status.state, listed, statuses

    def expect(pod, sleeper_state, quitter_state):
        return ([(pod_id, pod)], pod, sorted([(sleeper, sleeper_state[0]),
                                             (quitter, quitter_state[0])]),
                [sleeper_state, quitter_state])

    created = (pb.CONTAINER_CREATED, 0, "", False, False, False)
    running = (pb.CONTAINER_RUNNING, 0, "", True, False, False)
    assert relist() == expect(pb.SANDBOX_READY, created, created)
    cri.start(sleeper)
    cri.start(quitter)
    assert relist() == expect(pb.SANDBOX_READY, running, running)
    rt.UpdateContainerResources(pb.UpdateContainerResourcesRequest(
        container_id=sleeper, linux=pb.LinuxContainerResources(cpu_shares=256)))
    updated = running[:-1] + (True,)
    assert relist() == expect(pb.SANDBOX_READY, updated, running)
    pid = json.loads(cri.status(quitter, verbose=True).info["info"])["pid"]
    Path(f"/proc/{pid}/root/tmp/go").write_text("")
    quit_ = (pb.CONTAINER_EXITED, 4, "Error", True, True, False)
    wait_for(lambda: relist()[3][1] == quit_, what="the quitter's exit in its status")
    assert relist() == expect(pb.SANDBOX_READY, updated, quit_)
    rt.StopContainer(pb.StopContainerRequest(container_id=sleeper, timeout=0))
    killed = (pb.CONTAINER_EXITED, 137, "Error", True, True, True)
    assert relist() == expect(pb.SANDBOX_READY, killed, quit_)
    rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    assert relist() == expect(pb.SANDBOX_NOTREADY, killed, quit_)
    same("relist-answers", cri.kind, relist()[3])


def test_container_exit_codes(cri, registry):
    """An exit 0 is `Completed`, any other `Error`; StopContainer with timeout 0 kills."""
    pod_id, config = cri.run_pod("exit-codes")
    done = cri.create(pod_id, config, "done", registry.busybox, ["true"])
    failed = cri.create(pod_id, config, "failed", registry.busybox, ["sh", "-c", "exit 3"])
    killed = cri.create(pod_id, config, "killed", registry.busybox, ["sleep", "600"])
    for cid in (done, failed, killed):
        cri.start(cid)
    cri.runtime.StopContainer(pb.StopContainerRequest(container_id=killed, timeout=0))
    answers = []
    for cid in (done, failed, killed):
        s = cri.wait_exited(cid)
        answers.append((s.exit_code, s.reason))
    assert answers == [(0, "Completed"), (3, "Error"), (137, "Error")]
    same("exit-codes", cri.kind, answers)


def test_stop_uses_the_image_stop_signal(cri, registry):
    """StopContainer sends the image's StopSignal (SIGUSR1 here) before the timeout."""
    cri.pull(registry.stopsig)
    pod_id, config = cri.run_pod("stopsig")
    cid = cri.create(pod_id, config, "c", registry.stopsig,
                     ["sh", "-c", "trap 'exit 10' USR1; while true; do sleep 0.1; done"])
    cri.start(cid)
    time.sleep(0.5)                          # the trap is set
    cri.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=20))
    status = cri.status(cid).status
    assert (status.exit_code, status.reason) == (10, "Error")
    same("stop-signal", cri.kind, status.exit_code)


def test_list_containers_with_filters(cri, registry):
    pod_a, config_a = cri.run_pod("clist-a")
    pod_b, config_b = cri.run_pod("clist-b")
    a = cri.create(pod_a, config_a, "a", registry.busybox, ["sleep", "600"],
                   labels={"k": "a"})
    b = cri.create(pod_b, config_b, "b", registry.busybox, ["sleep", "600"],
                   labels={"k": "b"})
    cri.start(a)

    def ids(**flt):
        req = pb.ListContainersRequest(filter=pb.ContainerFilter(**flt))
        return sorted(c.id for c in cri.runtime.ListContainers(req).containers)

    assert ids(id=a) == [a] and ids(pod_sandbox_id=pod_b) == [b]
    assert ids(label_selector={"k": "b"}) == [b]
    assert ids(state=pb.ContainerStateValue(state=pb.CONTAINER_RUNNING)) == [a]
    assert ids(state=pb.ContainerStateValue(state=pb.CONTAINER_CREATED)) == [b]


def test_container_verbose_status_and_spec(cri, registry):
    pod_id, config = cri.run_pod("spec")
    cid = cri.create(pod_id, config, "spec", registry.busybox, ["sleep", "600"],
                     envs=[pb.KeyValue(key="FOO", value="bar")], working_dir="/tmp")
    info = json.loads(cri.status(cid, verbose=True).info["info"])
    assert {"sandboxID", "pid", "removing", "snapshotKey", "snapshotter", "runtimeType",
            "runtimeOptions", "config", "runtimeSpec"} <= set(info)
    spec = info["runtimeSpec"]
    assert spec["process"]["args"] == ["sleep", "600"] and spec["process"]["cwd"] == "/tmp"
    assert "FOO=bar" in spec["process"]["env"]
    assert spec["linux"]["cgroupsPath"] == f"{CGROUP_PARENT}/{cid}"
    a = spec["annotations"]
    assert a["io.kubernetes.cri.container-type"] == "container"
    assert a["io.kubernetes.cri.sandbox-id"] == pod_id
    assert a["io.kubernetes.cri.container-name"] == "spec"
    # the whole specs, paths and ids aside, are containerd's
    pod_info = json.loads(cri.pod_status(pod_id, verbose=True).info["info"])
    names = {str(cri.daemon.workdir): "<dir>", pod_id: "<pod>", cid: "<cid>",
             f"/proc/{pod_info['pid']}/": "/proc/<pid>/"}
    same("container-spec", cri.kind, _normal({"pod": pod_info["runtimeSpec"],
                                              "container": spec}, names))
    same("verbose-keys", cri.kind, (sorted(info), info["runtimeOptions"] == {
        "root": f"{cri.daemon.workdir}/runc"}, info["config"]["envs"]))


def _normal(doc, names: dict):
    """`doc` with each of `names`' keys (paths, ids) replaced by its value."""
    text = json.dumps(doc, sort_keys=True)
    for value, name in names.items():
        text = text.replace(value, name)
    return json.loads(text)


def test_container_name_is_reserved(cri, registry):
    """A second CreateContainer with the same name and attempt in the pod is refused."""
    pod_id, config = cri.run_pod("reserve")
    cri.create(pod_id, config, "twin", registry.busybox, ["sleep", "600"])
    code, message = _code(lambda: cri.create(pod_id, config, "twin", registry.busybox,
                                             ["sleep", "600"]))
    name = "twin_reserve_critest_uid-reserve_0"
    assert re.fullmatch(f'failed to reserve container name "{name}": name "{name}" is '
                        'reserved for "[0-9a-f]{64}"', message), message
    # containerd 1.6 answers UNKNOWN (1.7: ALREADY_EXISTS): README's intended differences
    assert code == (grpc.StatusCode.ALREADY_EXISTS if cri.kind == "ctrappliance"
                    else grpc.StatusCode.UNKNOWN)


# --- logs -----------------------------------------------------------------------------------

def test_container_logs(cri, registry, logdir):
    """critest "runtime should support ContainerLogs": the CRI log format, both streams."""
    pod_id, config = cri.run_pod("logs", logdir)
    cid = cri.create(pod_id, config, "logger", registry.busybox,
                     ["sh", "-c", "echo hello; echo oops >&2; printf 'a'; sleep 0.2; "
                                  "echo b; printf 'tail'"], log_path="logger/0.log")
    cri.start(cid)
    cri.wait_exited(cid)
    entries = parse_log(Path(logdir, "logger/0.log"))
    by_stream = {s: [(t, x) for st, t, x in entries if st == s] for s in ("stdout", "stderr")}
    assert by_stream["stdout"] == [("F", b"hello"), ("F", b"ab"), ("P", b"tail")]
    assert by_stream["stderr"] == [("F", b"oops")]
    same("logs", cri.kind, by_stream)


def test_container_long_log_lines(cri, registry, logdir):
    """A line longer than max_container_log_line_size (16384) comes as P parts, then F."""
    pod_id, config = cri.run_pod("longlogs", logdir)
    cid = cri.create(pod_id, config, "long", registry.busybox,
                     ["sh", "-c", "head -c 40000 /dev/zero | tr '\\0' x; echo; echo short"],
                     log_path="long.log")
    cri.start(cid)
    cri.wait_exited(cid)
    entries = [(tag, len(text)) for _, tag, text in parse_log(Path(logdir, "long.log"))]
    assert entries == [("P", 16384), ("P", 16384), ("F", 7232), ("F", 5)]
    same("long-lines", cri.kind, entries)


def test_reopen_container_log(cri, registry, logdir):
    """critest "runtime should support reopening container log"."""
    pod_id, config = cri.run_pod("reopen", logdir)
    cid = cri.create(pod_id, config, "reopen", registry.busybox,
                     ["sh", "-c", "while true; do echo tick; sleep 0.1; done"],
                     log_path="reopen.log")
    cri.start(cid)
    path = Path(logdir, "reopen.log")
    wait_for(lambda: path.exists() and path.stat().st_size > 0, what="first log lines")
    path.rename(path.with_suffix(".old"))
    cri.runtime.ReopenContainerLog(pb.ReopenContainerLogRequest(container_id=cid))
    wait_for(lambda: path.exists() and path.stat().st_size > 0, what="the reopened log")
    assert all(text == b"tick" for _, _, text in parse_log(path))
    cri.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0))
    code, _ = _code(lambda: cri.runtime.ReopenContainerLog(
        pb.ReopenContainerLogRequest(container_id=cid)))
    same("reopen-stopped", cri.kind, code)


# --- DNS, hostname, mounts ------------------------------------------------------------------

def test_dns_config(cri, registry, logdir):
    """critest "runtime should support DNS config": resolv.conf from the pod's DNSConfig."""
    dns = pb.DNSConfig(servers=["10.10.10.10", "10.10.10.11"], searches=["a.example", "b"],
                       options=["ndots:2"])
    pod_id, config = cri.run_pod("dns", logdir, dns_config=dns)
    cid = cri.create(pod_id, config, "dns", registry.busybox, ["cat", "/etc/resolv.conf"],
                     log_path="dns.log")
    cri.start(cid)
    cri.wait_exited(cid)
    lines = [text.decode() for _, _, text in parse_log(Path(logdir, "dns.log"))]
    assert lines == ["search a.example b", "nameserver 10.10.10.10", "nameserver 10.10.10.11",
                     "options ndots:2"]
    same("dns", cri.kind, lines)


def test_host_path_mount_and_image_volume(cri, registry, logdir):
    """critest "runtime should support mount": a host path, read-only; an image volume."""
    cri.pull(registry.volume)
    with tempfile.TemporaryDirectory(prefix="ca-crimount-") as host:
        Path(host, "file").write_text("from host\n")
        pod_id, config = cri.run_pod("mounts", logdir)
        mount = pb.Mount(container_path="/mnt/host", host_path=host, readonly=True)
        cid = cri.create(pod_id, config, "mounts", registry.volume,
                         ["sh", "-c", "cat /mnt/host/file; touch /mnt/host/x || echo ro; "
                                      "touch /data/y && echo volume"],
                         log_path="mounts.log", mounts=[mount])
        cri.start(cid)
        cri.wait_exited(cid)
        lines = [t.decode() for _, _, t in parse_log(Path(logdir, "mounts.log"))
                 if not t.startswith(b"touch")]
        assert lines == ["from host", "ro", "volume"]
        status = cri.status(cid).status
        assert [(m.container_path, m.host_path, m.readonly) for m in status.mounts] == [
            ("/mnt/host", host, True)]
        cri.remove_all()
    same("mounts", cri.kind, lines)


# --- missing ids and bad input -----------------------------------------------------------------

def test_missing_ids(cri):
    """StopContainer/StopPodSandbox/the statuses of a missing id: NOT_FOUND; the removes: OK."""
    missing = "0" * 64
    r = cri.runtime
    answers = [
        _code(lambda: r.StopContainer(pb.StopContainerRequest(container_id=missing)))[0],
        _code(lambda: r.ContainerStatus(pb.ContainerStatusRequest(container_id=missing)))[0],
        _code(lambda: r.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=missing)))[0],
        _code(lambda: r.PodSandboxStatus(pb.PodSandboxStatusRequest(
            pod_sandbox_id=missing)))[0],
        _code(lambda: r.StartContainer(pb.StartContainerRequest(container_id=missing)))[0],
    ]
    assert answers[:4] == [grpc.StatusCode.NOT_FOUND] * 4
    r.RemoveContainer(pb.RemoveContainerRequest(container_id=missing))
    r.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=missing))
    same("missing-ids", cri.kind, answers)


def _nothing_left(cri, before_snapshots):
    assert leftovers(cri.daemon) == {"shims": [], "mounts": [], "netns": [], "containers": []}
    assert snapshots(cri.daemon) == before_snapshots


def test_nothing_left_after_pods_are_removed(cri, registry, logdir):
    before = snapshots(cri.daemon)
    pod_id, config = cri.run_pod("tidy", logdir)
    cid = cri.create(pod_id, config, "c", registry.busybox, ["sleep", "600"])
    cri.start(cid)
    assert leftovers(cri.daemon)["shims"] and leftovers(cri.daemon)["mounts"]
    cri.remove_all()
    wait_for(lambda: not shims_of([pod_id]), what="the pod's shim to exit")
    _nothing_left(cri, before)


def test_unknown_runtime_handler(cri):
    before = snapshots(cri.daemon)
    code, message = _code(lambda: cri.runtime.RunPodSandbox(pb.RunPodSandboxRequest(
        config=pod_config("handler"), runtime_handler="nope")))
    assert code == grpc.StatusCode.UNKNOWN
    assert 'failed to get sandbox runtime: no runtime for "nope" is configured' in message
    _nothing_left(cri, before)
    # the name is free again
    pod_id, _ = cri.run_pod("handler")
    assert cri.pod_status(pod_id).status.state == pb.SANDBOX_READY
    same("unknown-handler", cri.kind, code)


def test_runtime_handler_options(cri, registry):
    """A pod of runtime handler "other" runs with that handler's options (its runc Root),
    its containers too; the status names the handler."""
    config = pod_config("handled")
    pod_id = cri.runtime.RunPodSandbox(pb.RunPodSandboxRequest(
        config=config, runtime_handler="other"), timeout=120).pod_sandbox_id
    cid = cri.create(pod_id, config, "c", registry.busybox, ["sleep", "600"])
    cri.start(cid)
    runc_root = Path(cri.daemon.workdir) / "runc-other" / "k8s.io"
    assert sorted(os.listdir(runc_root)) == sorted([pod_id, cid])
    status = cri.pod_status(pod_id).status
    assert status.runtime_handler == "other"
    items = cri.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items
    same("handler", cri.kind, (status.runtime_handler, [i.runtime_handler for i in items]))


def test_container_in_missing_pod(cri, registry):
    before = snapshots(cri.daemon)
    code, message = _code(lambda: cri.create("0" * 64, pod_config("ghost"), "c",
                                             registry.busybox, ["true"]))
    assert code == grpc.StatusCode.NOT_FOUND
    _nothing_left(cri, before)
    same("missing-pod", cri.kind, code)


def test_container_with_missing_image(cri, registry):
    pod_id, config = cri.run_pod("noimage")
    before = snapshots(cri.daemon)
    code, _ = _code(lambda: cri.create(pod_id, config, "c", f"{registry.host}/no/such:v1",
                                       ["true"]))
    assert code == grpc.StatusCode.NOT_FOUND
    assert snapshots(cri.daemon) == before
    same("missing-image", cri.kind, code)


def test_remove_ready_pod_force_stops_it(cri, registry):
    pod_id, config = cri.run_pod("force")
    cid = cri.create(pod_id, config, "c", registry.busybox, ["sleep", "600"])
    cri.start(cid)
    cri.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id),
                                 timeout=60)
    assert cri.runtime.ListContainers(pb.ListContainersRequest()).containers == []
    assert cri.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items == []
    wait_for(lambda: not shims_of([pod_id]), what="the pod's shim to exit")
    assert containers(cri.daemon) == []


def test_missing_sandbox_image(registry):
    """A sandbox image that cannot be pulled: an error naming it, nothing left behind."""
    answers = {}
    for kind in ("ctrappliance", "containerd"):
        daemon = make_daemon(kind, f"{registry.host}/no/pause:v1")
        daemon.start()
        client = Client(kind, daemon)
        try:
            code, message = _code(lambda: client.runtime.RunPodSandbox(
                pb.RunPodSandboxRequest(config=pod_config("nopause")), timeout=60))
            assert f'failed to get sandbox image "{registry.host}/no/pause:v1"' in message
            assert leftovers(daemon) == {"shims": [], "mounts": [], "netns": [],
                                         "containers": []}
            assert snapshots(daemon) == []
            answers[kind] = code
        finally:
            stop_daemon(client)
    assert answers["ctrappliance"] == answers["containerd"]


# --- restart recovery -----------------------------------------------------------------------

def test_restart_recovery(registry, logdir):
    """After a daemon restart: the pod READY, a running container RUNNING with the same
    started_at, one that exited while the daemon was down EXITED with its code and time,
    and its logs still written."""
    answers = {}
    for kind in ("ctrappliance", "containerd"):
        daemon = make_daemon(kind, registry.pause)
        daemon.start()
        client = Client(kind, daemon)
        try:
            client.pull(registry.busybox)
            pod_id, config = client.run_pod(f"restart-{kind}", logdir)
            runner = client.create(pod_id, config, "runner", registry.busybox,
                                   ["sh", "-c", "while true; do echo tick; sleep 0.2; done"],
                                   log_path=f"{kind}-runner.log")
            quitter = client.create(pod_id, config, "quitter", registry.busybox,
                                    ["sh", "-c", "sleep 2; exit 7"])
            client.start(runner)
            client.start(quitter)
            before = client.status(runner).status
            client.close()
            daemon.stop()
            time.sleep(3)                     # the quitter exits while the daemon is down
            down_at = time.time_ns()
            daemon.start()
            client.connect()
            wait_for(lambda: cri_answers(client), what="the CRI after the restart")
            pod = client.pod_status(pod_id).status
            after = client.status(runner).status
            quit_status = client.status(quitter).status
            assert pod.state == pb.SANDBOX_READY
            assert after.state == pb.CONTAINER_RUNNING
            assert after.started_at == before.started_at
            assert quit_status.state == pb.CONTAINER_EXITED
            assert quit_status.exit_code == 7 and quit_status.finished_at < down_at
            log = Path(logdir, f"{kind}-runner.log")
            size = log.stat().st_size
            wait_for(lambda: log.stat().st_size > size, what="logs after the restart")
            answers[kind] = (pod.state, after.state, quit_status.exit_code,
                             quit_status.reason)
            client.remove_all()
            wait_for(lambda: not shims_of([pod_id]), what="the pod's shim to exit")
        finally:
            stop_daemon(client)
    assert answers["ctrappliance"] == answers["containerd"]


def test_v1alpha2_pod_and_container(cri, registry):
    """runtime.v1alpha2 (containerd 1.6 serves it too): the same pods and containers."""
    from appliance._proto.cri.v1alpha2 import api_pb2 as a2, api_pb2_grpc as a2rpc
    runtime = a2rpc.RuntimeServiceStub(cri.channel)
    config = a2.PodSandboxConfig.FromString(pod_config("alpha").SerializeToString())
    pod_id = runtime.RunPodSandbox(a2.RunPodSandboxRequest(config=config),
                                   timeout=120).pod_sandbox_id
    cconfig = a2.ContainerConfig(metadata=a2.ContainerMetadata(name="alpha"),
                                 image=a2.ImageSpec(image=registry.busybox),
                                 command=["sh", "-c", "exit 5"])
    cid = runtime.CreateContainer(a2.CreateContainerRequest(
        pod_sandbox_id=pod_id, config=cconfig, sandbox_config=config)).container_id
    runtime.StartContainer(a2.StartContainerRequest(container_id=cid))
    status = cri.wait_exited(cid)
    alpha = runtime.ContainerStatus(a2.ContainerStatusRequest(container_id=cid)).status
    assert (alpha.state, alpha.exit_code, alpha.reason) == (a2.CONTAINER_EXITED, 5, "Error")
    assert alpha.started_at == status.started_at
    pods = runtime.ListPodSandbox(a2.ListPodSandboxRequest()).items
    assert [(p.id, p.metadata.name) for p in pods] == [(pod_id, "alpha")]
    same("v1alpha2", cri.kind, (alpha.exit_code, alpha.reason))


def test_oom_killed_reason(cri, registry):
    """A container the kernel kills for memory reports reason OOMKilled (the limit is set on
    its cgroup by hand here: resources are part 3)."""
    pod_id, config = cri.run_pod("oom")
    cid = cri.create(pod_id, config, "hog", registry.busybox, ["sh", "-c",
                     "while [ ! -e /tmp/go ]; do sleep 0.1; done; "
                     "busybox head -c 400m /dev/zero | busybox tail"])
    cri.start(cid)
    memory = Path("/sys/fs/cgroup/memory") / CGROUP_PARENT.lstrip("/") / cid
    if not memory.is_dir():
        pytest.skip("no cgroup v1 memory controller")
    (memory / "memory.limit_in_bytes").write_text(str(32 << 20))
    pid = json.loads(cri.status(cid, verbose=True).info["info"])["pid"]
    Path(f"/proc/{pid}/root/tmp/go").write_text("")
    status = cri.wait_exited(cid, timeout=60)
    assert (status.exit_code, status.reason) == (137, "OOMKilled")
    same("oom", cri.kind, (status.exit_code, status.reason))


def test_create_cut_off_by_its_deadline_leaves_nothing(cri, registry):
    """A CreateContainer whose deadline passes while it prepares the container (dirs,
    snapshot, spec in a worker thread) is undone after that step, not beside it, and to the
    end though the client's reset of the stream cancels it again: no snapshot or directory
    of the container is left. On both daemons."""
    pod_id, config = cri.run_pod("cut-off")
    before = snapshots(cri.daemon)
    dirs = Path(cri.daemon.root) / "io.containerd.grpc.v1.cri" / "containers"
    cut_off = 0
    for step in range(120):
        try:
            cid = cri.runtime.CreateContainer(pb.CreateContainerRequest(
                pod_sandbox_id=pod_id, sandbox_config=config, config=pb.ContainerConfig(
                    metadata=pb.ContainerMetadata(name=f"c{step}"),
                    image=pb.ImageSpec(image=registry.busybox), command=["true"])),
                timeout=0.001 * (step % 30 + 1)).container_id
            cri.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid))
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED, exc
            cut_off += 1
    assert cut_off
    time.sleep(2)   # a step still running in a worker thread would have ended by now
    for c in cri.runtime.ListContainers(pb.ListContainersRequest()).containers:
        # one the deadline cut off only after it was made
        cri.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=c.id))
    assert snapshots(cri.daemon) == before
    assert (sorted(os.listdir(dirs)) if dirs.is_dir() else []) == []
