"""CRI pods on a CNI network (Debian's bridge, host-local, loopback and portmap plugins; a
unique bridge and subnet), against ctrappliance and containerd 1.6.20: a pod reachable on its
IP from the host, two pods reaching each other, a host port, the pod's hostname, and nothing
left behind (bridge ports, veths, iptables chains, IP allocations, netns pins)."""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc
import pytest

from appliance._proto.cri.v1 import api_pb2 as pb
from cni_helpers import PLUGINS, chains_of, scratch_network, leftovers as net_leftovers
from cri_helpers import (Answers, Client, Registry, cri_answers, leftovers, make_daemon,
                         netns_dir, parse_log, shims_of, stop_daemon)
from daemon import wait_for

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not os.path.exists(f"{PLUGINS}/bridge"),
                                 reason="containernetworking-plugins is not installed")]

same = Answers().same
SERVE = ("mkdir -p /tmp/www && echo {text} > /tmp/www/index.html && "
         "exec busybox httpd -f -p 8080 -h /tmp/www")


@pytest.fixture(scope="module")
def registry():
    with Registry() as r:
        yield r


@pytest.fixture(scope="module")
def net():
    with scratch_network("ca-cripodnet-") as network:
        yield network


@pytest.fixture(scope="module", params=["ctrappliance", "containerd"])
def cri(request, registry, net):
    daemon = make_daemon(request.param, registry.pause, cni_conf_dir=str(net.conf_dir))
    daemon.start()
    client = Client(request.param, daemon)
    try:
        client.pull(registry.busybox)
        wait_for(lambda: _network_ready(client), what="NetworkReady")
        yield client
    finally:
        stop_daemon(client)


@pytest.fixture(autouse=True)
def _clean_pods(request):
    """A case must not leave pods (and IP allocations) to the next one."""
    yield
    if "cri" in request.fixturenames:
        request.getfixturevalue("cri").remove_all()


def _network_ready(client) -> bool:
    conditions = client.runtime.Status(pb.StatusRequest()).status.conditions
    return any(c.type == "NetworkReady" and c.status for c in conditions)


@pytest.fixture
def logdir():
    with tempfile.TemporaryDirectory(prefix="ca-crinetlogs-") as d:
        yield d


def _pod(cri, name, logdir="", **fields):
    return cri.run_pod(name, logdir, host_network=False, **fields)


def _netns(cri, pod_id) -> str:
    spec = json.loads(cri.pod_status(pod_id, verbose=True).info["info"])["runtimeSpec"]
    return next(n["path"] for n in spec["linux"]["namespaces"] if n["type"] == "network")


FETCH = """
import sys, time, urllib.request
deadline = time.monotonic() + float(sys.argv[2])
while True:
    try:
        print(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode().strip()); break
    except OSError:
        if time.monotonic() > deadline: break
        time.sleep(0.2)
"""


def _fetch(url: str, timeout: float = 20.0, netns: str = "") -> str:
    """An HTTP GET from the host, or from inside `netns` (Python's: busybox's static wget
    crashes on this host)."""
    prefix = ["nsenter", f"--net={netns}"] if netns else []
    out = subprocess.run(prefix + [sys.executable, "-c", FETCH, url, str(timeout)],
                         capture_output=True, text=True, timeout=timeout + 30)
    return out.stdout.strip()


def _server(cri, pod_id, config, text, image):
    """busybox httpd on port 8080 in the pod, serving `text`."""
    cid = cri.create(pod_id, config, "web", image, ["sh", "-c", SERVE.format(text=text)])
    cri.start(cid)
    return cid


def _clean(cri, net, pod_ids, chains=(), veths=()):
    assert net_leftovers(net, pod_ids, chains, veths, netns_dir=str(netns_dir(cri.daemon))) == []
    assert not shims_of(pod_ids)


def test_pod_reachable_on_its_ip(cri, registry, net):
    """critest "runtime should support networking": the pod's IP from the host."""
    pod_id, config = _pod(cri, "web")
    status = cri.pod_status(pod_id).status
    prefix = net.subnet.rsplit(".", 1)[0] + "."
    assert status.network.ip.startswith(prefix)
    netns = _netns(cri, pod_id)
    assert netns.startswith(f"{netns_dir(cri.daemon)}/cni-")
    _server(cri, pod_id, config, "hello", registry.busybox)
    assert _fetch(f"http://{status.network.ip}:8080/") == "hello"
    info = json.loads(cri.pod_status(pod_id, verbose=True).info["info"])
    veths = [name for name, i in info["cniResult"]["Interfaces"].items()
             if name.startswith("veth") and not i["Sandbox"]]
    assert info["netNamespaceClosed"] is False

    cri.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
    info = json.loads(cri.pod_status(pod_id, verbose=True).info["info"])
    assert info["netNamespaceClosed"] is True
    wait_for(lambda: not shims_of([pod_id]), what="the pod's shim to exit")
    _clean(cri, net, [pod_id], veths=veths)
    cri.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    same("pod-ip", cri.kind, (sorted(info["cniResult"]), info["netNamespaceClosed"]))


def test_two_pods_reach_each_other(cri, registry, net, logdir):
    a, config_a = _pod(cri, "pod-a", logdir)
    b, _ = _pod(cri, "pod-b", logdir)
    _server(cri, a, config_a, "from-a", registry.busybox)
    ip_a = cri.pod_status(a).status.network.ip
    assert _fetch(f"http://{ip_a}:8080/", netns=_netns(cri, b)) == "from-a"
    cri.remove_all()
    wait_for(lambda: not shims_of([a, b]), what="the pods' shims to exit")
    _clean(cri, net, [a, b])


def test_host_port_mapping(cri, registry, net):
    """critest "runtime should support port mapping with host port"."""
    host_port = 31000 + os.getpid() % 20000
    mapping = pb.PortMapping(protocol=pb.TCP, container_port=8080, host_port=host_port)
    pod_id, config = _pod(cri, "mapped", port_mappings=[mapping])
    _server(cri, pod_id, config, "mapped", registry.busybox)
    chains = chains_of([pod_id])
    assert any(c.startswith("CNI-DN-") for c in chains), chains
    assert _fetch(f"http://{net.gateway}:{host_port}/") == "mapped"
    cri.remove_all()
    wait_for(lambda: not shims_of([pod_id]), what="the pod's shim to exit")
    _clean(cri, net, [pod_id], chains)
    assert _fetch(f"http://{net.gateway}:{host_port}/", timeout=1) == ""


def test_pod_hostname(cri, registry, net, logdir):
    """critest "runtime should support set hostname": the pod's hostname, /etc/hostname."""
    pod_id, config = _pod(cri, "named", logdir, hostname="critest-host")
    cid = cri.create(pod_id, config, "name", registry.busybox,
                     ["sh", "-c", "hostname; cat /etc/hostname; echo $HOSTNAME"],
                     log_path="name.log")
    cri.start(cid)
    cri.wait_exited(cid)
    lines = [t.decode() for _, _, t in parse_log(Path(logdir, "name.log"))]
    assert lines == ["critest-host"] * 3
    same("hostname", cri.kind, lines)


def test_restart_keeps_the_ip_and_stop_releases_it(registry, net, logdir):
    """After a daemon restart the pod keeps its IP; StopPodSandbox then still releases the
    netns and the CNI allocation."""
    answers = {}
    for kind in ("ctrappliance", "containerd"):
        daemon = make_daemon(kind, registry.pause, cni_conf_dir=str(net.conf_dir))
        daemon.start()
        client = Client(kind, daemon)
        try:
            client.pull(registry.busybox)
            wait_for(lambda: _network_ready(client), what="NetworkReady")
            pod_id, config = _pod(client, f"restart-{kind}")
            _server(client, pod_id, config, "still", registry.busybox)
            ip = client.pod_status(pod_id).status.network.ip
            client.close()
            daemon.stop()
            daemon.start()
            client.connect()
            wait_for(lambda: cri_answers(client), what="the CRI after the restart")
            status = client.pod_status(pod_id).status
            assert (status.state, status.network.ip) == (pb.SANDBOX_READY, ip)
            assert _fetch(f"http://{ip}:8080/") == "still"
            client.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id),
                                          timeout=60)
            wait_for(lambda: not shims_of([pod_id]), what="the pod's shim to exit")
            assert ip not in net.allocations(), kind
            assert os.listdir(netns_dir(daemon)) == []
            answers[kind] = status.state
            client.remove_all()
        finally:
            stop_daemon(client)
    assert answers["ctrappliance"] == answers["containerd"]


def test_host_port_already_taken(cri, registry, net):
    """A second pod asking for a host port another pod maps: containerd 1.6 (portmap) does
    not refuse it; either way nothing stays once both pods are gone."""
    host_port = 32000 + os.getpid() % 20000
    mapping = pb.PortMapping(protocol=pb.TCP, container_port=8080, host_port=host_port)
    first, _ = _pod(cri, "port-first", port_mappings=[mapping])
    try:
        second, _ = _pod(cri, "port-second", port_mappings=[mapping])
        answer = ("ok", cri.pod_status(second).status.state)
    except grpc.RpcError as exc:
        answer = ("refused", exc.code())
    chains = chains_of([first])
    ids = [p.id for p in cri.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items]
    cri.remove_all()
    wait_for(lambda: not shims_of(ids), what="the pods' shims to exit")
    _clean(cri, net, ids, chains)
    same("host-port-taken", cri.kind, answer)


SLOWFAIL = """#!/bin/sh
cat > /dev/null
case "$CNI_COMMAND" in
ADD) sleep 0.5; echo '{"cniVersion": "1.0.0", "code": 100, "msg": "slowfail: refused"}'; exit 1;;
VERSION) echo '{"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0"]}';;
esac
"""


def _plugins(tmp_path, monkeypatch, **scripts) -> None:
    """The daemons made next get Debian's plugins with `scripts` (name -> text) beside or
    instead of them."""
    import cri_helpers
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in os.listdir(PLUGINS):
        if name not in scripts:
            (bin_dir / name).symlink_to(f"{PLUGINS}/{name}")
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setattr(cri_helpers, "CNI_BIN", str(bin_dir))


@pytest.mark.parametrize("kind", ["ctrappliance", "containerd"])
def test_cni_add_failing_late_leaves_nothing(kind, registry, tmp_path, monkeypatch):
    """A pod whose CNI ADD fails after the bridge plugin made its veth and IP, half a
    second in (we create the pause container's task meanwhile): RunPodSandbox fails with
    the network's error, and nothing stays (netns pin, shim, runc state, snapshot,
    container, veth, IP)."""
    _plugins(tmp_path, monkeypatch, slowfail=SLOWFAIL)
    with scratch_network("ca-cnifail-", portmap=False) as network:
        conf = network.conflist()
        conf["plugins"].append({"type": "slowfail"})
        network.write(conf)
        daemon = make_daemon(kind, registry.pause, cni_conf_dir=str(network.conf_dir))
        daemon.start()
        client = Client(kind, daemon)
        try:
            wait_for(lambda: _network_ready(client), what="NetworkReady")
            with pytest.raises(grpc.RpcError) as failed:
                _pod(client, "cni-fails")
            details = failed.value.details()
            assert "failed to setup network for sandbox" in details and "slowfail: refused" \
                in details, details
            assert not client.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items
            runc = subprocess.run(["runc", "--root", f"{daemon.workdir}/runc", "list", "-q"],
                                  capture_output=True, text=True, timeout=30)
            snapshots = daemon.ctr("snapshots", "ls", namespace="k8s.io").stdout.splitlines()
            active = [line for line in snapshots[1:] if "Active" in line]   # not the image's
            assert (leftovers(daemon), active, runc.stdout.split()) == (
                {"shims": [], "mounts": [], "netns": [], "containers": []}, [], [])
            assert net_leftovers(network, []) == []
            same("cni-add-fails", kind, failed.value.code())
        finally:
            stop_daemon(client)


TIMED = """#!/bin/sh
echo "$CNI_COMMAND start $(date +%s.%N)" >> {log}
[ "$CNI_COMMAND" = ADD ] && sleep 0.5
{plugin}
rc=$?
echo "$CNI_COMMAND end $(date +%s.%N)" >> {log}
exit $rc
"""


@pytest.mark.parametrize("kind", ["ctrappliance", "containerd"])
def test_cni_networks_are_added_at_once(kind, registry, tmp_path, monkeypatch):
    """The loopback network and the pod's are ADDed at the same time (go-cni's Setup), each
    ADD here taking half a second at least."""
    logs = {name: tmp_path / f"{name}.log" for name in ("loopback", "bridge")}
    _plugins(tmp_path, monkeypatch, **{name: TIMED.format(log=log, plugin=f"{PLUGINS}/{name}")
                                       for name, log in logs.items()})
    with scratch_network("ca-cniboth-", portmap=False) as network:
        daemon = make_daemon(kind, registry.pause, cni_conf_dir=str(network.conf_dir))
        daemon.start()
        client = Client(kind, daemon)
        try:
            wait_for(lambda: _network_ready(client), what="NetworkReady")
            _pod(client, "both-nets")
            spans = {}
            for name, log in logs.items():
                marks = dict(line.split()[1:] for line in log.read_text().splitlines()
                             if line.startswith("ADD "))
                spans[name] = (float(marks["start"]), float(marks["end"]))
            (lo_start, lo_end), (net_start, net_end) = spans["loopback"], spans["bridge"]
            assert lo_start < net_end and net_start < lo_end, spans
            client.remove_all()
            assert net_leftovers(network, []) == []
        finally:
            stop_daemon(client)
