"""PodSandboxStats' network figures for a pod on a CNI network (Debian's bridge plugin, a
unique bridge and subnet), against ctrappliance and containerd 1.6.20: `eth0`'s counters,
read from the pod's network namespace, grow with traffic sent to the pod's IP."""
import os
import socket

import pytest

from appliance._proto.cri.v1 import api_pb2 as pb
from cni_helpers import PLUGINS, scratch_network
from cri_helpers import Answers, Registry, running
from daemon import wait_for

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not os.path.exists(f"{PLUGINS}/bridge"),
                                 reason="containernetworking-plugins is not installed")]

same = Answers().same


@pytest.fixture(scope="module")
def registry():
    with Registry() as r:
        yield r


@pytest.fixture(scope="module")
def net():
    with scratch_network("ca-cristatsnet-") as network:
        yield network


@pytest.fixture(scope="module", params=["ctrappliance", "containerd"])
def cri(request, registry, net):
    with running(request.param, registry, cni_conf_dir=str(net.conf_dir)) as client:
        wait_for(lambda: any(c.type == "NetworkReady" and c.status for c in
                             client.runtime.Status(pb.StatusRequest()).status.conditions),
                 what="NetworkReady")
        yield client


def test_pod_network_stats_count_traffic(cri, registry):
    pod_id, config = cri.run_pod("netstats", host_network=False)
    cid = cri.create(pod_id, config, "app", registry.busybox, ["sleep", "3600"])
    cri.start(cid)
    ip = cri.pod_status(pod_id).status.network.ip

    def stats():
        return cri.runtime.PodSandboxStats(
            pb.PodSandboxStatsRequest(pod_sandbox_id=pod_id)).stats.linux.network
    before = stats()
    assert before.default_interface.name == "eth0"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(20):
            s.sendto(b"x" * 1000, (ip, 9))
    after = wait_for(lambda: (lambda n: n.default_interface.rx_bytes.value
                              >= before.default_interface.rx_bytes.value + 20000 and n)(stats()),
                     what="eth0's rx_bytes to count the datagrams")
    assert after.default_interface.tx_bytes.value >= before.default_interface.tx_bytes.value
    same("network-stats-fields", cri.kind,
         (sorted(f.name for f, _ in after.ListFields()),       # containerd sets no timestamp
          sorted(f.name for f, _ in after.default_interface.ListFields())))
    assert [i.name for i in after.interfaces] == []      # containerd fills the default only
