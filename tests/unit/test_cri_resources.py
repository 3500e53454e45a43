"""CRI resources (appliance/cri/resources.py) as pure functions: the OCI resources a request
gives, UpdateContainerResources' new spec and Any, ContainerStatus' resources, the cgroup path
naming of both drivers, and the cgroup files for v1 and v2.

This machine has cgroup v1 only and no systemd. The v1 fixture was recorded here from a
container containerd 1.6.20 started with these resources; the v2 fixture and the systemd
paths are written from the kernel's cgroup-v2 documentation and runc's conversion rules
(cpu.shares -> cpu.weight, memory+swap -> memory.swap.max), not recorded on a v2 host."""
import json

import pytest

from appliance._proto.cri.v1 import api_pb2 as pb
from appliance.cri import resources
from appliance.cri.config import CRIConfig
from appliance.cri.host import Host
from appliance.errdefs import ApplianceError

CFG = CRIConfig()
HOST = Host(swap=True, hugetlb=True)
REQUEST = pb.LinuxContainerResources(cpu_period=50000, cpu_quota=25000, cpu_shares=512,
                                     cpuset_cpus="0", cpuset_mems="0",
                                     memory_limit_in_bytes=64 << 20)
# Recorded: /sys/fs/cgroup/<controller>/<parent>/<id>/ of a running container (containerd).
V1_RECORDED = {"cpu/cpu.shares": "512", "cpu/cpu.cfs_period_us": "50000",
               "cpu/cpu.cfs_quota_us": "25000", "cpuset/cpuset.cpus": "0",
               "cpuset/cpuset.mems": "0", "memory/memory.limit_in_bytes": "67108864",
               "memory/memory.memsw.limit_in_bytes": "67108864", "pids/pids.max": "max"}
# After UpdateContainerResources(memory 96 MiB, shares 256), recorded the same way.
V1_UPDATED = {"cpu/cpu.shares": "256", "cpu/cpu.cfs_quota_us": "25000",
              "memory/memory.limit_in_bytes": "100663296",
              "memory/memory.memsw.limit_in_bytes": "100663296"}
# The same resources on cgroup v2 (one directory; swap counted apart from memory).
V2_FIXTURE = {"cpu.weight": "20", "cpu.max": "25000 50000", "cpuset.cpus": "0",
              "cpuset.mems": "0", "memory.max": "67108864", "memory.swap.max": "0",
              "pids.max": "max"}


def spec_with(request, cfg=CFG, host=HOST):
    spec = {"linux": {"resources": {"devices": [{"allow": False, "access": "rwm"}]}}}
    resources.apply_resources(spec, request, cfg, host=host)
    return spec


def test_request_to_oci_resources():
    res = spec_with(REQUEST)["linux"]["resources"]
    assert res["cpu"] == {"period": 50000, "quota": 25000, "shares": 512, "cpus": "0",
                          "mems": "0"}
    assert res["memory"] == {"limit": 64 << 20, "swap": 64 << 20}   # no swapping by default


def test_swap_as_asked_or_without_a_swap_controller():
    asked = spec_with(pb.LinuxContainerResources(memory_limit_in_bytes=10,
                                                 memory_swap_limit_in_bytes=30))
    assert asked["linux"]["resources"]["memory"] == {"limit": 10, "swap": 30}
    no_swap = spec_with(pb.LinuxContainerResources(memory_limit_in_bytes=10),
                        host=Host(swap=False))
    assert no_swap["linux"]["resources"]["memory"] == {"limit": 10}


def test_empty_request_gives_empty_cpu_and_memory():
    assert spec_with(pb.LinuxContainerResources())["linux"]["resources"] == {
        "devices": [{"allow": False, "access": "rwm"}], "cpu": {}, "memory": {}}


def test_hugepages_and_the_hugetlb_controller(caplog):
    request = pb.LinuxContainerResources(
        hugepage_limits=[pb.HugepageLimit(page_size="2MB", limit=4 << 20)])
    enabled = CRIConfig(disable_hugetlb_controller=False)
    res = spec_with(request, enabled)["linux"]["resources"]
    assert res["hugepageLimits"] == [{"pageSize": "2MB", "limit": 4 << 20}]
    assert "hugepageLimits" not in spec_with(request)["linux"]["resources"]   # disabled
    missing = Host(hugetlb=False)
    assert "hugepageLimits" not in spec_with(request, enabled, missing)["linux"]["resources"]
    assert "hugetlb cgroup controller is absent" in caplog.text
    strict = CRIConfig(disable_hugetlb_controller=False, tolerate_missing_hugetlb_controller=False)
    with pytest.raises(ApplianceError, match="tolerate_missing_hugetlb_controller"):
        spec_with(request, strict, missing)


def test_unified_is_merged():
    spec = spec_with(pb.LinuxContainerResources(unified={"memory.high": "5"}))
    resources.apply_resources(spec, pb.LinuxContainerResources(unified={"pids.max": "9"}), CFG,
                              host=HOST)
    assert spec["linux"]["resources"]["unified"] == {"memory.high": "5", "pids.max": "9"}


@pytest.mark.parametrize("parent, expected", [
    ("/kubepods/burstable/pod1", "/kubepods/burstable/pod1/abc"),
    ("kubepods-burstable-pod1.slice", "kubepods-burstable-pod1.slice:cri-containerd:abc"),
    ("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice",
     "kubepods-burstable-pod1.slice:cri-containerd:abc"),
])
def test_cgroups_path(parent, expected):
    assert resources.cgroups_path(parent, "abc") == expected


def test_systemd_unit_path():
    assert resources.systemd_unit_path("kubepods-burstable-pod1.slice:cri-containerd:abc") == (
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/"
        "cri-containerd-abc.scope")
    assert resources.systemd_unit_path("-.slice:cri-containerd:abc") == "/cri-containerd-abc.scope"


def test_apply_cgroup():
    spec = {}
    resources.apply_cgroup(spec, "/pods", "abc", CFG)
    assert spec["linux"]["cgroupsPath"] == "/pods/abc"
    resources.apply_cgroup(spec, "/pods", "abc", CRIConfig(disable_cgroup=True))
    assert "cgroupsPath" not in spec["linux"]


def test_update_resources_keeps_the_old_spec():
    old = spec_with(REQUEST)
    old["process"] = {"oomScoreAdj": 3}
    before = json.loads(json.dumps(old))
    new, (type_url, body) = resources.update_resources(
        old, pb.LinuxContainerResources(memory_limit_in_bytes=96 << 20, cpu_shares=256), CFG,
        host=HOST)
    assert old == before
    assert type_url == "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"
    sent = json.loads(body)
    assert sent == new["linux"]["resources"]
    assert sent["memory"] == {"limit": 96 << 20, "swap": 96 << 20}
    assert sent["cpu"]["shares"] == 256 and sent["cpu"]["quota"] == 25000
    # What runc writes for the sent resources is what containerd's update left in cgroupfs.
    files = resources.to_cgroup_files(sent, v2=False)
    assert {k: files[k] for k in V1_UPDATED} == V1_UPDATED


def test_update_errors_carry_containerds_prefix():
    strict = CRIConfig(disable_hugetlb_controller=False, tolerate_missing_hugetlb_controller=False)
    with pytest.raises(ApplianceError, match="^failed to update resources: failed to update "
                                             "resource in spec: unable to set linux container "
                                             "resources: huge pages"):
        resources.update_resources({}, pb.LinuxContainerResources(), strict,
                                   host=Host(hugetlb=False))


def test_status_resources():
    spec = spec_with(REQUEST)
    spec["process"] = {"oomScoreAdj": 500}
    assert resources.status_resources(spec) == {
        "oom_score_adj": 500, "cpu_period": 50000, "cpu_quota": 25000, "cpu_shares": 512,
        "cpuset_cpus": "0", "cpuset_mems": "0", "memory_limit_in_bytes": 64 << 20,
        "memory_swap_limit_in_bytes": 64 << 20}
    assert resources.status_resources({}) == {}


def test_cgroup_v1_files_match_the_recording():
    res = spec_with(REQUEST)["linux"]["resources"]
    files = resources.to_cgroup_files(res, v2=False)
    assert files == {k: v for k, v in V1_RECORDED.items() if k != "pids/pids.max"}
    back = resources.from_cgroup_files(V1_RECORDED, v2=False)
    assert back == {"cpu": res["cpu"], "memory": res["memory"]}


def test_cgroup_v2_files():
    res = spec_with(REQUEST)["linux"]["resources"]
    files = resources.to_cgroup_files(res, v2=True)
    assert files == {k: v for k, v in V2_FIXTURE.items() if k != "pids.max"}
    back = resources.from_cgroup_files(V2_FIXTURE, v2=True)
    assert back["memory"] == res["memory"]
    assert back["cpu"]["quota"] == 25000 and back["cpu"]["period"] == 50000
    # cpu.weight is coarser than cpu.shares: reading back gives the least shares of that weight.
    assert resources.shares_to_weight(back["cpu"]["shares"]) == 20


@pytest.mark.parametrize("shares, weight", [(2, 1), (1024, 39), (262144, 10000), (0, 0)])
def test_shares_to_weight(shares, weight):
    assert resources.shares_to_weight(shares) == weight
    assert resources.shares_to_weight(resources.weight_to_shares(weight)) == weight


def test_v2_unlimited_and_unified():
    files = resources.to_cgroup_files({"memory": {"limit": -1, "swap": -1},
                                       "cpu": {"quota": -1, "period": 100000},
                                       "pids": {"limit": 0},
                                       "unified": {"memory.high": "7"}}, v2=True)
    assert files == {"memory.max": "max", "memory.swap.max": "max", "cpu.max": "max 100000",
                     "pids.max": "max", "memory.high": "7"}
    assert resources.from_cgroup_files(files, v2=True) == {"cpu": {"period": 100000}}


def test_read_cgroup_files(tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.shares").write_text("512\n")
    got = resources.read_cgroup_files({"cpu": str(tmp_path / "cpu")},
                                      ["cpu/cpu.shares", "cpu/cpu.cfs_quota_us", "memory/x"])
    assert got == {"cpu/cpu.shares": "512"}
