"""Pod networking: network namespace pins and CNI with Debian's real plugins (bridge,
host-local, loopback, portmap), each test on its own bridge, subnet, conf, IPAM and netns
dirs, checking that nothing stays behind; then the RuntimeService's Status,
UpdateRuntimeConfig and RuntimeConfig against containerd 1.6.20 with CRI on."""
import asyncio
import json
import os
import subprocess
import uuid

import grpc
import pytest

from appliance._proto.cri.v1 import api_pb2 as pb, api_pb2_grpc as rpc
from appliance._proto.cri.v1alpha2 import api_pb2 as pb_alpha, api_pb2_grpc as rpc_alpha
from appliance.cri.cni import CNIError, CNIManager, PortMapping
from appliance.cri.config import CRIConfig
from appliance.cri.netns import NetNS
from cni_helpers import (CONF_TEMPLATE, PLUGINS, Listener, TestNetwork, chains_of, connect,
                         host_veths, leftovers)
from cri_helpers import Answers
from daemon import Daemon, wait_for
from reference import Containerd

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not os.path.exists(f"{PLUGINS}/bridge"),
                                 reason="containernetworking-plugins is not installed")]


def _config(net: TestNetwork, **cni) -> CRIConfig:
    cfg = CRIConfig()
    cfg.cni.conf_dir = str(net.conf_dir)
    cfg.cni.bin_dir = PLUGINS
    for key, value in cni.items():
        setattr(cfg.cni, key, value)
    return cfg


@pytest.fixture
def net(tmp_path):
    network = TestNetwork(tmp_path)
    try:
        yield network
    finally:
        network.cleanup()


@pytest.fixture
def pins(tmp_path):
    """A private netns base dir; every pin made in it is removed at the end."""
    base = tmp_path / "netns"
    made: list[NetNS] = []

    def create():
        ns = NetNS.create(str(base))
        made.append(ns)
        return ns
    create.base = str(base)
    try:
        yield create
    finally:
        for ns in made:
            ns.remove()


def _sandbox_id() -> str:
    return uuid.uuid4().hex * 2          # 64 hex characters, as the CRI's ids


async def _setup(manager, sandbox_id, ns, mappings=()):
    return await manager.setup(sandbox_id, ns.path, pod_name="web", pod_namespace="default",
                               pod_uid=f"uid-{sandbox_id[:8]}", port_mappings=list(mappings))


def _netns_inode(path: str) -> int:
    return os.stat(path).st_ino


# --- network namespaces ----------------------------------------------------------------


def test_netns_create_at_remove(pins):
    ns = pins()
    assert os.path.dirname(ns.path) == pins.base
    assert os.path.basename(ns.path).startswith("cni-") and len(os.path.basename(ns.path)) == 40
    assert not ns.closed()
    assert _netns_inode(ns.path) != _netns_inode("/proc/self/ns/net")
    links = subprocess.run(["nsenter", f"--net={ns.path}", "ip", "-o", "link"],
                           capture_output=True, text=True, check=True).stdout
    assert [line.split(":")[1].strip() for line in links.splitlines()] == ["lo"]

    again = NetNS.at(ns.path)             # after a daemon restart: the same namespace
    assert not again.closed() and _netns_inode(again.path) == _netns_inode(ns.path)
    other = pins()
    assert _netns_inode(other.path) != _netns_inode(ns.path)

    again.remove()
    assert again.closed() and ns.closed() and not os.path.exists(ns.path)
    again.remove()                        # idempotent
    assert sorted(os.listdir(pins.base)) == [os.path.basename(other.path)]


def test_netns_closed_removes_an_unmounted_pin(tmp_path):
    stale = tmp_path / "cni-stale"
    stale.write_text("")                  # a pin whose mount went (a reboot, a lazy unmount)
    assert NetNS.at(str(stale)).closed()
    assert not stale.exists()


# --- CNI -------------------------------------------------------------------------------


def test_add_gives_a_reachable_ip_and_del_leaves_nothing(tmp_path, net, pins):
    net.write()
    manager = CNIManager(_config(net), str(tmp_path / "state"))
    assert manager.status() == (True, "", "")
    ns, sid = pins(), _sandbox_id()

    network = asyncio.run(_setup(manager, sid, ns))
    assert network.ip.startswith(net.subnet.rsplit(".", 1)[0] + ".")
    assert network.additional_ips == []
    eth0 = network.result["Interfaces"]["eth0"]
    assert eth0["IPConfigs"] == [{"IP": network.ip, "Gateway": net.gateway}]
    assert eth0["Sandbox"] == ns.path
    assert network.result["Interfaces"]["lo"]["IPConfigs"][0]["IP"] == "127.0.0.1"
    veths = host_veths(network.result)
    assert len(veths) == 1 and net.ports() == veths
    # lo is up inside (the loopback network), eth0 holds the IP
    inside = subprocess.run(["nsenter", f"--net={ns.path}", "ip", "-o", "-4", "addr"],
                            capture_output=True, text=True, check=True).stdout
    assert "127.0.0.1/8" in inside and f"{network.ip}/24" in inside
    chains = chains_of([sid])
    assert chains, "ipMasq makes a per-pod chain"

    with Listener(ns.path, 8080, "hello from the pod"):
        assert connect(network.ip, 8080) == "hello from the pod"

    asyncio.run(manager.check(sid, ns.path))
    subprocess.run(["nsenter", f"--net={ns.path}", "ip", "route", "del", "default"],
                   check=True)                    # CHECK compares the routes ADD returned
    with pytest.raises(CNIError) as err:
        asyncio.run(manager.check(sid, ns.path))
    assert err.value.message.startswith('plugin type="bridge" failed (check): ')
    asyncio.run(manager.teardown(sid, ns.path))
    assert leftovers(net, [sid], chains, veths) == []
    assert manager.cached(sid) is None
    asyncio.run(manager.teardown(sid, ns.path))       # idempotent


def test_two_pods_reach_each_other(tmp_path, net, pins):
    net.write()
    manager = CNIManager(_config(net), str(tmp_path / "state"))
    (ns_a, a), (ns_b, b) = (pins(), _sandbox_id()), (pins(), _sandbox_id())
    net_a = asyncio.run(_setup(manager, a, ns_a))
    net_b = asyncio.run(_setup(manager, b, ns_b))
    try:
        assert net_a.ip != net_b.ip
        with Listener(ns_a.path, 9000, "from a"), Listener(ns_b.path, 9000, "from b"):
            assert connect(net_a.ip, 9000, netns=ns_b.path) == "from a"
            assert connect(net_b.ip, 9000, netns=ns_a.path) == "from b"
    finally:
        asyncio.run(manager.teardown(a, ns_a.path))
        asyncio.run(manager.teardown(b, ns_b.path))
    assert leftovers(net, [a, b]) == []


def test_host_port_mapping_and_its_chains_go_on_del(tmp_path, net, pins):
    net.write()
    manager = CNIManager(_config(net), str(tmp_path / "state"))
    ns, sid = pins(), _sandbox_id()
    host_port = 30000 + os.getpid() % 20000
    network = asyncio.run(_setup(manager, sid, ns,
                                 [PortMapping("TCP", 8080, host_port, ""),
                                  PortMapping("tcp", 9999, 0, "")]))   # no host port: skipped
    cached = manager.cached(sid)["networks"][1]["capabilityArgs"]["portMappings"]
    assert cached == [{"hostPort": host_port, "containerPort": 8080, "protocol": "tcp",
                       "hostIP": ""}]
    chains = chains_of([sid])
    assert any(c.startswith("CNI-DN-") for c in chains), chains
    try:
        with Listener(ns.path, 8080, "mapped"):
            # the host's own address on the bridge: OUTPUT's DNAT to the pod
            assert connect(net.gateway, host_port) == "mapped"
            # and from another namespace, through PREROUTING
            other, oid = pins(), _sandbox_id()
            asyncio.run(_setup(manager, oid, other))
            try:
                assert connect(net.gateway, host_port, netns=other.path) == "mapped"
            finally:
                asyncio.run(manager.teardown(oid, other.path))
    finally:
        asyncio.run(manager.teardown(sid, ns.path))
    assert leftovers(net, [sid], chains) == []
    assert connect(net.gateway, host_port, timeout=1).startswith("failed")


def test_plugins_get_the_spec_environment_and_stdin(tmp_path, net, pins):
    """A wrapper records what the real portmap plugin is given: the CNI_* environment and its
    conf with name, cniVersion, prevResult and only the capabilities it declares; DEL gets
    what ADD returned as prevResult."""
    bin_dir, record = tmp_path / "bin", tmp_path / "record"
    bin_dir.mkdir()
    record.mkdir()
    wrapper = bin_dir / "portmap"
    wrapper.write_text(f"#!/bin/sh\ncat > {record}/$CNI_COMMAND.json\n"
                       f"env | grep ^CNI_ | sort > {record}/$CNI_COMMAND.env\n"
                       f"exec {PLUGINS}/portmap < {record}/$CNI_COMMAND.json\n")
    wrapper.chmod(0o755)
    net.write()
    manager = CNIManager(_config(net, bin_dir=f"{bin_dir}:{PLUGINS}"), str(tmp_path / "state"))
    ns, sid = pins(), _sandbox_id()
    mapping = {"hostPort": 33000, "containerPort": 80, "protocol": "udp", "hostIP": "127.0.0.1"}
    network = asyncio.run(manager.setup(
        sid, ns.path, pod_name="web", pod_namespace="prod", pod_uid="u-1",
        port_mappings=[PortMapping("UDP", 80, 33000, "127.0.0.1")], annotations={"a": "b"}))
    env = dict(line.split("=", 1) for line in (record / "ADD.env").read_text().splitlines())
    assert env == {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": sid, "CNI_NETNS": ns.path,
                   "CNI_IFNAME": "eth0", "CNI_PATH": f"{bin_dir}:{PLUGINS}",
                   "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=prod;K8S_POD_NAME=web;"
                               f"K8S_POD_INFRA_CONTAINER_ID={sid};K8S_POD_UID=u-1"}
    add = json.loads((record / "ADD.json").read_text())
    assert (add["name"], add["cniVersion"], add["type"]) == (net.name, "1.0.0", "portmap")
    assert add["runtimeConfig"] == {"portMappings": [mapping]}
    assert add["prevResult"]["ips"][0]["address"] == f"{network.ip}/24"   # bridge's result

    asyncio.run(manager.teardown(sid, ns.path))
    delete = json.loads((record / "DEL.json").read_text())
    # the list's result is portmap's, which passes bridge's on unchanged
    assert delete["prevResult"] == add["prevResult"]
    assert delete["runtimeConfig"] == {"portMappings": [mapping]}
    assert "CNI_COMMAND=DEL" in (record / "DEL.env").read_text()
    assert leftovers(net, [sid]) == []


def test_bandwidth_annotations_shape_the_pod(tmp_path, pins):
    """kubernetes.io/{ingress,egress}-bandwidth reach the bandwidth plugin: a tbf qdisc on the
    host veth and an ifb device for egress, both gone after DEL; a bad value is refused
    before any plugin runs."""
    net = TestNetwork(tmp_path, bandwidth=True)
    try:
        net.write()
        manager = CNIManager(_config(net), str(tmp_path / "state"))
        ns, sid = pins(), _sandbox_id()
        links_before = set(os.listdir("/sys/class/net"))
        network = asyncio.run(manager.setup(
            sid, ns.path, pod_name="web", pod_namespace="default", pod_uid="u", port_mappings=[],
            annotations={"kubernetes.io/ingress-bandwidth": "10M",
                         "kubernetes.io/egress-bandwidth": "1Mi"}))
        caps = manager.cached(sid)["networks"][1]["capabilityArgs"]
        assert caps["bandwidth"] == {"ingressRate": 10_000_000, "ingressBurst": 2**32 - 1,
                                     "egressRate": 1_048_576, "egressBurst": 2**32 - 1}
        (veth,) = host_veths(network.result)
        qdiscs = subprocess.run(["tc", "qdisc", "show", "dev", veth], capture_output=True,
                                text=True, check=True).stdout
        assert "tbf" in qdiscs and "rate 10Mbit" in qdiscs
        ifbs = [n for n in set(os.listdir("/sys/class/net")) - links_before
                if n.startswith("bwp")]
        assert len(ifbs) == 1
        asyncio.run(manager.teardown(sid, ns.path))
        assert leftovers(net, [sid], veths=[veth, *ifbs]) == []

        with pytest.raises(CNIError) as err:
            asyncio.run(manager.setup(
                sid, ns.path, pod_name="web", pod_namespace="default", pod_uid="u",
                port_mappings=[], annotations={"kubernetes.io/ingress-bandwidth": "10"}))
        assert err.value.message == ("get cni namespace options: reading pod bandwidth "
                                     "annotations: resource is unreasonably small (< 1kbit)")
        assert net.ports() == [] and manager.cached(sid) is None
    finally:
        net.cleanup()


def test_del_after_a_restart_uses_the_cache(tmp_path, net, pins):
    """A fresh manager (the daemon restarted) releases what the first one added, even with
    the conf file gone from the conf dir, and with the netns gone (CNI_NETNS empty)."""
    net.write()
    state = str(tmp_path / "state")
    ns, sid = pins(), _sandbox_id()
    network = asyncio.run(_setup(CNIManager(_config(net), state), sid, ns,
                                 [PortMapping("tcp", 80, 31000 + os.getpid() % 20000, "")]))
    chains, veths = chains_of([sid]), host_veths(network.result)
    assert chains and veths and net.allocations()
    for f in net.conf_dir.iterdir():
        f.unlink()

    restarted = CNIManager(_config(net), state)
    assert not restarted.status()[0]
    asyncio.run(restarted.teardown(sid, ns.path))
    assert leftovers(net, [sid], chains, veths) == []

    # a pod whose namespace went before DEL (a reboot): the IP and portmap's rules are still
    # released (bridge's ipMasq rule needs the namespace to find the IP: the plugin's limit,
    # and a reboot clears iptables anyway)
    net.write(net.conflist(ipMasq=False))
    ns2, sid2 = pins(), _sandbox_id()
    asyncio.run(_setup(restarted, sid2, ns2, [PortMapping("udp", 53, 53000, "")]))
    chains2 = chains_of([sid2])
    assert chains2
    ns2.remove()
    open(ns2.path, "w").close()          # a stale pin: the file without its mount
    asyncio.run(CNIManager(_config(net), state).teardown(sid2, ns2.path))
    assert leftovers(net, [sid2], chains2) == []


def test_missing_plugin_is_a_clear_error_and_leaves_nothing(tmp_path, net, pins):
    conf = net.conflist()
    conf["plugins"].append({"type": "no-such-plugin"})
    net.write(conf)
    manager = CNIManager(_config(net), str(tmp_path / "state"))
    ns, sid = pins(), _sandbox_id()
    with pytest.raises(CNIError) as err:
        asyncio.run(_setup(manager, sid, ns, [PortMapping("tcp", 80, 32000, "")]))
    assert err.value.message == (f'plugin type="no-such-plugin" failed (add): failed to find '
                                 f'plugin "no-such-plugin" in path [{PLUGINS}]')
    assert leftovers(net, [sid]) == []
    assert manager.cached(sid) is None


def test_bad_plugin_config_is_a_clear_error_and_leaves_nothing(tmp_path, net, pins):
    conf = net.conflist()
    conf["plugins"][0]["ipam"]["ranges"] = [[{"subnet": "10.1.2.0/33"}]]
    net.write(conf)
    manager = CNIManager(_config(net), str(tmp_path / "state"))
    ns, sid = pins(), _sandbox_id()
    with pytest.raises(CNIError) as err:
        asyncio.run(_setup(manager, sid, ns))
    assert err.value.message.startswith('plugin type="bridge" failed (add): ')
    assert "10.1.2.0/33" in err.value.message
    assert leftovers(net, [sid]) == [] and manager.cached(sid) is None


def test_plugin_deadline(tmp_path, net, pins, monkeypatch):
    """A plugin that hangs is killed at the deadline and named in the error."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "hang").write_text("#!/bin/sh\nexec sleep 600\n")
    (bin_dir / "hang").chmod(0o755)
    net.write({"cniVersion": "1.0.0", "name": "slow", "plugins": [{"type": "hang"}]})
    monkeypatch.setattr("appliance.cri.cni.PLUGIN_SECONDS", 1.0)
    manager = CNIManager(_config(net, bin_dir=f"{bin_dir}:{PLUGINS}"), str(tmp_path / "state"))
    ns, sid = pins(), _sandbox_id()
    with pytest.raises(CNIError) as err:
        asyncio.run(_setup(manager, sid, ns))
    assert err.value.message == 'plugin type="hang" failed (add): netplugin did not finish ' \
                                'ADD within 1s'
    assert subprocess.run(["pgrep", "-f", str(bin_dir / "hang")]).returncode == 1


def test_conf_dir_changes_are_seen(tmp_path, net):
    manager = CNIManager(_config(net), str(tmp_path / "state"))
    assert manager.status() == (False, "NetworkPluginNotReady",
                                "Network plugin returns error: cni plugin not initialized")
    info = manager.verbose_status()
    assert info["lastCNILoadStatus"] == (f"cni config load failed: no network config found in "
                                         f"{net.conf_dir}: cni plugin not initialized: failed "
                                         f"to load cni config")
    broken = net.conf_dir / "05-broken.conflist"
    broken.write_text("{not json")
    assert not manager.status()[0]
    assert manager.verbose_status()["lastCNILoadStatus"].startswith(
        f"cni config load failed: failed to load CNI config list file {broken}: error parsing "
        f"configuration list: ")
    broken.unlink()
    tmp = net.conf_dir / "x.tmp"
    tmp.write_text(json.dumps(net.conflist()))
    tmp.rename(net.conf_dir / "10-net.conflist")     # renamed in: seen as well
    assert manager.status() == (True, "", "")
    config = json.loads(manager.verbose_status()["cniconfig"])
    assert [(n["Config"]["Name"], n["IFName"]) for n in config["Networks"]] == \
        [("cni-loopback", "lo"), (net.name, "eth0")]
    assert manager.verbose_status()["lastCNILoadStatus"] == "OK"


def test_max_conf_num_and_single_conf_files(tmp_path, net, pins):
    """A .conf file is a one-plugin list; max_conf_num networks are attached as eth0, eth1."""
    second = TestNetwork(tmp_path / "second", name="second", portmap=False)
    try:
        conf = net.conflist()["plugins"][0]
        net.write(dict(conf, cniVersion="0.4.0", name="first"), "10-first.conf")
        net.write(dict(second.conflist()["plugins"][0], cniVersion="0.4.0", name="second"),
                  "20-second.json")
        manager = CNIManager(_config(net, max_conf_num=2), str(tmp_path / "state"))
        ns, sid = pins(), _sandbox_id()
        network = asyncio.run(_setup(manager, sid, ns))
        assert network.ip.startswith(net.subnet.rsplit(".", 1)[0] + ".")
        eth1 = network.result["Interfaces"]["eth1"]["IPConfigs"][0]["IP"]
        assert eth1.startswith(second.subnet.rsplit(".", 1)[0] + ".")
        asyncio.run(manager.teardown(sid, ns.path))
        assert leftovers(net, [sid]) == [] and leftovers(second, [sid]) == []
    finally:
        second.cleanup()


# --- RuntimeService: Status, UpdateRuntimeConfig, RuntimeConfig ----------------------------




def _with_template(text: str, template: str) -> str:
    """A config with `conf_template` added to its `[...cri".cni]` table."""
    marker = '[plugins."io.containerd.grpc.v1.cri".cni]\n'
    return text.replace(marker, f'{marker}  conf_template = "{template}"\n')


class OurCRI(Daemon):
    """ctrappliance configured as tests/reference.py configures containerd's CRI."""

    def __init__(self, template: str = "", extra: str = ""):
        super().__init__()
        self.cni_conf = self.workdir / "cni" / "net.d"
        text = (f'version = 2\n[plugins."io.containerd.grpc.v1.cri"]\n'
                f'  netns_mounts_under_state_dir = true\n'
                f'[plugins."io.containerd.grpc.v1.cri".cni]\n'
                f'  bin_dir = "{self.workdir}/cni/bin"\n  conf_dir = "{self.cni_conf}"\n')
        (self.workdir / "cri.toml").write_text((_with_template(text, template) if template
                                                else text) + extra)
        self.config = str(self.workdir / "cri.toml")


class TheirCRI(Containerd):
    def __init__(self, template: str = "", extra: str = ""):
        super().__init__(cri=True, extra_config=extra)
        self.template = template
        self.cni_conf = self.workdir / "cni" / "net.d"

    def write_config(self):
        super().write_config()
        if self.template:
            self.config_path.write_text(_with_template(self.config_path.read_text(),
                                                       self.template))


@pytest.fixture(params=["ctrappliance", "containerd"])
def kind(request):
    return request.param


def _start(kind, template="", extra=""):
    d = (OurCRI if kind == "ctrappliance" else TheirCRI)(template, extra)
    d.start()
    return d


same = Answers().same


def _network_condition(runtime):
    status = runtime.Status(pb.StatusRequest(verbose=True), timeout=30)
    conditions = {c.type: c for c in status.status.conditions}
    assert list(conditions) == ["RuntimeReady", "NetworkReady"]
    assert conditions["RuntimeReady"].status
    c = conditions["NetworkReady"]
    return (c.status, c.reason, c.message), status.info


# the same for both daemons (their Status shows it); no pod runs, so no bridge is made
STATUS_CONF = {"cniVersion": "1.0.0", "name": "status", "plugins": [
    {"type": "bridge", "bridge": "ctnstatus0", "ipam": {"type": "host-local", "ranges": [
        [{"subnet": "10.250.250.0/24"}]]}},
    {"type": "portmap", "capabilities": {"portMappings": True}}]}


def test_status_before_and_after_a_conf_appears(kind):
    d = _start(kind)
    try:
        with grpc.insecure_channel(f"unix://{d.address}") as channel:
            runtime = rpc.RuntimeServiceStub(channel)
            before, info = _network_condition(runtime)
            assert before == (False, "NetworkPluginNotReady",
                              "Network plugin returns error: cni plugin not initialized")
            assert sorted(info) == ["cniconfig", "config", "golang", "lastCNILoadStatus",
                                    "lastCNILoadStatus.default"]
            assert info["lastCNILoadStatus"] == (
                f"cni config load failed: no network config found in {d.cni_conf}: cni plugin "
                f"not initialized: failed to load cni config")
            config = json.loads(info["config"])
            assert config["cni"]["confDir"] == str(d.cni_conf)
            assert config["netnsMountsUnderStateDir"] is True
            cniconfig = json.loads(info["cniconfig"])
            alpha = rpc_alpha.RuntimeServiceStub(channel).Status(pb_alpha.StatusRequest())
            assert [(c.type, c.status, c.reason, c.message) for c in alpha.status.conditions] \
                == [("RuntimeReady", True, "", ""), ("NetworkReady", *before)]
            same("before", kind, (before, sorted(info), cniconfig["Networks"],
                                  sorted(config), sorted(config["containerd"])))

            # written in place, as containerd's inotify watch sees it
            (d.cni_conf / "10-net.conflist").write_text(json.dumps(STATUS_CONF))
            wait_for(lambda: _network_condition(runtime)[0][0], what="NetworkReady")
            after, info = _network_condition(runtime)
            assert after == (True, "", "")
            networks = json.loads(info["cniconfig"])["Networks"]
            assert [n["IFName"] for n in networks] == ["lo", "eth0"]
            same("after", kind, (after, info["lastCNILoadStatus"], networks))
    finally:
        d.cleanup()


def test_runtime_handler_with_its_own_cni_conf_dir(kind, tmp_path):
    """`containerd.runtimes.<name>.cni_conf_dir`: its own networks, its own load status."""
    own = tmp_path / "own.d"
    runtimes = '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes'
    # runc again: containerd replaces the default runtimes when the config names any
    d = _start(kind, extra=f'{runtimes}.runc]\n  runtime_type = "io.containerd.runc.v2"\n'
                           f'{runtimes}.other]\n  runtime_type = "io.containerd.runc.v2"\n'
                           f'  cni_conf_dir = "{own}"\n')
    try:
        with grpc.insecure_channel(f"unix://{d.address}") as channel:
            runtime = rpc.RuntimeServiceStub(channel)
            _, info = _network_condition(runtime)
            assert info["lastCNILoadStatus.other"] == (
                f"cni config load failed: no network config found in {own}: cni plugin not "
                f"initialized: failed to load cni config")
            (own / "10-net.conflist").write_text(json.dumps(STATUS_CONF))
            wait_for(lambda: _network_condition(runtime)[1]["lastCNILoadStatus.other"] == "OK",
                     what="the handler's conf loaded")
            condition, info = _network_condition(runtime)
            assert not condition[0]                     # the default network is not ready
            same("handler", kind, (condition, sorted(info)))
    finally:
        d.cleanup()


def test_update_runtime_config(kind, tmp_path):
    template = tmp_path / "template.json"
    template.write_text(CONF_TEMPLATE.replace("BRIDGE", "ctnunused0"))
    d = _start(kind, str(template))
    try:
        with grpc.insecure_channel(f"unix://{d.address}") as channel:
            runtime = rpc.RuntimeServiceStub(channel)

            def update(cidr):
                config = pb.RuntimeConfig(network_config=pb.NetworkConfig(pod_cidr=cidr))
                return runtime.UpdateRuntimeConfig(
                    pb.UpdateRuntimeConfigRequest(runtime_config=config), timeout=30)

            update("")                                     # nothing to do
            assert not d.cni_conf.exists() or os.listdir(d.cni_conf) == []
            with pytest.raises(grpc.RpcError) as err:
                update("10.1.0.0/24, bad")
            assert err.value.code() == grpc.StatusCode.UNKNOWN
            assert err.value.details() == "get routes: invalid CIDR address: bad"

            update("10.244.1.0/24, fd00:10:244:1::/64")
            written = d.cni_conf / "10-containerd-net.conflist"
            rendered = json.loads(written.read_text())
            assert rendered["plugins"][0]["ipam"]["ranges"] == [
                [{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:10:244:1::/64"}]]
            assert rendered["plugins"][0]["ipam"]["routes"] == [{"dst": "0.0.0.0/0"},
                                                                {"dst": "::/0"}]
            assert rendered["plugins"][1]["cidr"] == "10.244.1.0/24"
            wait_for(lambda: _network_condition(runtime)[0][0], what="NetworkReady")

            # ready: a new CIDR is not rendered over the loaded config
            update("10.99.0.0/24")
            assert json.loads(written.read_text()) == rendered
            same("template", kind, (written.read_text(), sorted(os.listdir(d.cni_conf))))
    finally:
        d.cleanup()


def test_runtime_config_cgroup_driver(kind, tmp_path):
    """Ours answers the default runtime's cgroup driver; containerd 1.6.20 has no
    RuntimeConfig (README, intended differences)."""
    if kind == "containerd":
        d = _start(kind)
        try:
            with grpc.insecure_channel(f"unix://{d.address}") as channel:
                with pytest.raises(grpc.RpcError) as err:
                    rpc.RuntimeServiceStub(channel).RuntimeConfig(pb.RuntimeConfigRequest(),
                                                                  timeout=30)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        finally:
            d.cleanup()
        return
    for systemd, driver in ((False, pb.CGROUPFS), (True, pb.SYSTEMD)):
        d = OurCRI()
        if systemd:
            with open(d.config, "a") as f:
                f.write('[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]\n'
                        '  SystemdCgroup = true\n')
        d.start()
        try:
            with grpc.insecure_channel(f"unix://{d.address}") as channel:
                answer = rpc.RuntimeServiceStub(channel).RuntimeConfig(
                    pb.RuntimeConfigRequest(), timeout=30)
            assert answer.linux.cgroup_driver == driver
        finally:
            d.cleanup()
