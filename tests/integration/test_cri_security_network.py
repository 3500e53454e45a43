"""Pod sysctls of the network namespace, on a pod with its own network (a CNI bridge with
Debian's plugins), on containerd 1.6.20 and ctrappliance: set in the sandbox, seen by the
pod's containers; the pod's unprivileged-port default (`enable_unprivileged_ports`)."""
import os

import pytest

from appliance._proto.cri.v1 import api_pb2 as pb
from cni_helpers import PLUGINS, scratch_network
from cri_reference import CRIReference, container_config

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not os.path.exists(f"{PLUGINS}/bridge"),
                                 reason="Debian's CNI plugins are not installed")]


@pytest.fixture(scope="module")
def net():
    with scratch_network("ca-crisecnet-", portmap=False) as network:
        yield network


@pytest.fixture(scope="module", params=["containerd", "ctrappliance"])
def cri(request, net):
    r = CRIReference(request.param, extra="  enable_unprivileged_ports = true\n",
                     cni_conf_dir=str(net.conf_dir))
    try:
        r.start()
        if not r.serves_pods():
            pytest.skip("ctrappliance does not serve pods yet (issue #20)")
        yield r
    finally:
        r.cleanup()


def _host(name: str) -> str:
    with open(f"/proc/sys/{name.replace('.', '/')}") as f:
        return f.read()


def test_network_sysctls_reach_the_pods_containers(cri):
    host_value = _host("net.ipv4.tcp_syncookies")
    pod = cri.pod_config("netsysctl", namespace_options=pb.NamespaceOption(network=pb.POD))
    pod.linux.sysctls["net.ipv4.tcp_syncookies"] = "0"
    sid = cri.run_pod(pod)
    spec = cri.pod_info(sid)["runtimeSpec"]["linux"]["sysctl"]
    assert spec == {"net.ipv4.tcp_syncookies": "0", "net.ipv4.ip_unprivileged_port_start": "0"}
    cid = cri.start_container(sid, pod, container_config("reader"))
    assert cri.exec(cid, "cat", "/proc/sys/net/ipv4/tcp_syncookies") == (0, "0\n")
    assert cri.exec(cid, "cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start") == (0, "0\n")
    assert _host("net.ipv4.tcp_syncookies") == host_value     # the host's stays its own
