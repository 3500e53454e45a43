"""Security contexts and resources as a container sees them, on containerd 1.6.20 (CRI on) and on
ctrappliance: `id`, /proc/self/status (CapEff, NoNewPrivs, Seccomp), writes to / and to masked
or read-only paths, sysctls, OOM score, and the container's cgroup files read from the host
(cgroup v1 here). Each case asserts the same effect on both daemons. ctrappliance's cases are
skipped while it does not serve pods (RunPodSandbox, issue #20).
"""
import json
import os
import re

import grpc
import pytest

from appliance._proto.cri.v1 import api_pb2 as pb
from appliance.cri import resources, seccomp
from appliance.cri.host import Host, capability_mask
from cri_helpers import leftovers
from cri_reference import CRIReference, container_config

pytestmark = pytest.mark.integration

SC = pb.LinuxContainerSecurityContext
PROFILE = pb.SecurityProfile
DEFAULT_CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
                "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
                "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]


@pytest.fixture(scope="module", params=["containerd", "ctrappliance"])
def cri(request):
    r = CRIReference(request.param)
    try:
        r.start()
        if not r.serves_pods():
            pytest.skip("ctrappliance does not serve pods yet (RunPodSandbox, issue #20)")
        r.pod = r.pod_config("effects", privileged=True)
        r.pod.linux.sysctls["kernel.shm_rmid_forced"] = "1"
        r.sid = r.run_pod(r.pod)
        yield r
    finally:
        r.cleanup()


_names = iter(range(10_000))


def run(cri, sc=None, **linux):
    if sc is not None:
        linux["security_context"] = sc
    return cri.start_container(cri.sid, cri.pod, container_config(f"c{next(_names)}", **linux))


def status(cri, cid) -> dict:
    code, out = cri.exec(cid, "cat", "/proc/self/status")
    assert code == 0, out
    return dict(line.split(":\t", 1) for line in out.splitlines() if ":\t" in line)


def test_user_and_groups(cri):
    cid = run(cri, SC(run_as_user=pb.Int64Value(value=1000),
                      run_as_group=pb.Int64Value(value=2000), supplemental_groups=[3000, 5000]))
    assert cri.exec(cid, "id") == (0, "uid=1000(app) gid=2000 groups=2000,3000(extra),5000\n")
    named = run(cri, SC(run_as_username="app"))
    assert cri.exec(named, "id") == (0, "uid=1000(app) gid=1000(app) groups=1000(app),"
                                        "3000(extra)\n")


def test_default_capabilities_and_no_seccomp(cri):
    st = status(cri, run(cri))
    assert int(st["CapEff"], 16) == capability_mask(DEFAULT_CAPS) == 0xa80425fb
    assert st["Seccomp"] == "0" and st["NoNewPrivs"] == "0"


def test_capabilities_add_drop(cri):
    cid = run(cri, SC(capabilities=pb.Capability(add_capabilities=["NET_ADMIN"],
                                                 drop_capabilities=["CHOWN", "KILL"])))
    expected = set(DEFAULT_CAPS) - {"CAP_CHOWN", "CAP_KILL"} | {"CAP_NET_ADMIN"}
    assert int(status(cri, cid)["CapEff"], 16) == capability_mask(expected)
    dropped = run(cri, SC(capabilities=pb.Capability(drop_capabilities=["ALL"])))
    assert int(status(cri, dropped)["CapEff"], 16) == 0


def test_privileged(cri):
    st = status(cri, run(cri, SC(privileged=True)))
    assert int(st["CapEff"], 16) == capability_mask(Host.probe().capabilities)
    assert st["Seccomp"] == "0"


def test_no_new_privs_and_readonly_rootfs(cri):
    cid = run(cri, SC(no_new_privs=True, readonly_rootfs=True))
    assert status(cri, cid)["NoNewPrivs"] == "1"
    code, out = cri.exec(cid, "touch", "/probe")
    assert code != 0 and "Read-only file system" in out
    assert cri.exec(cid, "touch", "/tmp/probe")[0] != 0        # /tmp is no tmpfs
    assert cri.exec(cid, "touch", "/dev/shm/probe") == (0, "")
    assert cri.exec(run(cri), "touch", "/probe") == (0, "")   # writable without the setting


def test_masked_and_readonly_paths(cri):
    cid = run(cri, SC(masked_paths=["/proc/keys", "/proc/acpi", "/proc/kcore"],
                      readonly_paths=["/proc/sys"]))
    assert cri.exec(cid, "cat", "/proc/keys") == (0, "")
    code, out = cri.exec(cid, "sh", "-c", "echo 0 > /proc/sys/kernel/shm_rmid_forced")
    assert code != 0 and "Read-only file system" in out


def test_pod_sysctl_seen_in_container(cri):
    assert cri.exec(run(cri), "cat", "/proc/sys/kernel/shm_rmid_forced") == (0, "1\n")


def test_runtime_default_blocks_unshare_and_unconfined_allows_it(cri, tmp_path):
    blocked = run(cri, SC(seccomp=PROFILE(profile_type=PROFILE.RuntimeDefault)))
    assert status(cri, blocked)["Seccomp"] == "2"
    code, out = cri.exec(blocked, "unshare", "-U", "true")
    assert code != 0 and "Operation not permitted" in out
    free = run(cri, SC(seccomp=PROFILE(profile_type=PROFILE.Unconfined)))
    assert cri.exec(free, "unshare", "-U", "true") == (0, "")


def test_our_runtime_default_profile_in_effect(cri, tmp_path):
    """Our RuntimeDefault profile, handed to the daemon as a Localhost profile, has the effect
    containerd's own RuntimeDefault has (this runs before our spec builder is wired)."""
    path = tmp_path / "ours.json"
    path.write_text(json.dumps(seccomp.runtime_default(DEFAULT_CAPS)))
    cid = run(cri, SC(seccomp=PROFILE(profile_type=PROFILE.Localhost, localhost_ref=str(path))))
    assert status(cri, cid)["Seccomp"] == "2"
    code, out = cri.exec(cid, "unshare", "-U", "true")
    assert code != 0 and "Operation not permitted" in out
    assert cri.exec(cid, "chroot", "/", "true") == (0, "")      # CAP_SYS_CHROOT's call
    assert cri.exec(cid, "sh", "-c", "echo ok | cat") == (0, "ok\n")


def test_oom_score_adj(cri):
    cid = run(cri, resources=pb.LinuxContainerResources(oom_score_adj=500))
    assert cri.exec(cid, "cat", "/proc/self/oom_score_adj") == (0, "500\n")


def _cgroup_files(cri, cid, names):
    dirs = {c: f"/sys/fs/cgroup/{c}{cri.cgroup_parent}/{cid}" for c in ("cpu", "cpuset",
                                                                         "memory", "pids")}
    return resources.read_cgroup_files(dirs, names)


def test_resources_in_cgroup_files_and_update(cri):
    request = pb.LinuxContainerResources(cpu_period=50000, cpu_quota=25000, cpu_shares=512,
                                         cpuset_cpus="0", cpuset_mems="0",
                                         memory_limit_in_bytes=64 << 20)
    cid = run(cri, resources=request)
    spec = cri.container_spec(cid)
    expected = resources.to_cgroup_files(spec["linux"]["resources"], v2=False)
    assert _cgroup_files(cri, cid, expected) == expected
    assert expected["memory/memory.limit_in_bytes"] == str(64 << 20)

    cri.rt.UpdateContainerResources(pb.UpdateContainerResourcesRequest(
        container_id=cid, linux=pb.LinuxContainerResources(memory_limit_in_bytes=96 << 20,
                                                           cpu_shares=256)))
    updated = {"cpu/cpu.shares": "256", "cpu/cpu.cfs_quota_us": "25000",
               "memory/memory.limit_in_bytes": str(96 << 20),
               "memory/memory.memsw.limit_in_bytes": str(96 << 20)}
    assert _cgroup_files(cri, cid, updated) == updated
    got = cri.rt.ContainerStatus(pb.ContainerStatusRequest(container_id=cid)).status
    assert got.resources.linux.memory_limit_in_bytes == 96 << 20
    assert got.resources.linux.memory_swap_limit_in_bytes == 96 << 20
    assert got.resources.linux.cpu_shares == 256 and got.resources.linux.cpu_quota == 25000


def test_bad_pod_leaves_nothing_behind(cri):
    before_pods = {p.id for p in cri.rt.ListPodSandbox(pb.ListPodSandboxRequest()).items}
    before = leftovers(cri.daemon)
    pod = cri.pod_config("bad-seccomp", seccomp=PROFILE(profile_type=PROFILE.Localhost,
                                                        localhost_ref="/nonexistent/p.json"))
    with pytest.raises(grpc.RpcError) as info:
        cri.run_pod(pod)
    assert info.value.code() == grpc.StatusCode.UNKNOWN
    assert ('cannot load seccomp profile "/nonexistent/p.json": open /nonexistent/p.json: '
            'no such file or directory') in info.value.details()
    assert {p.id for p in cri.rt.ListPodSandbox(pb.ListPodSandboxRequest()).items} == before_pods
    assert leftovers(cri.daemon) == before    # shims, mounts, netns pins, containers
    # The name is free again.
    pod.linux.security_context.ClearField("seccomp")
    cri.run_pod(pod)


def test_bad_container_leaves_nothing_behind(cri):
    before = {c.id for c in cri.rt.ListContainers(pb.ListContainersRequest()).containers}
    before_leftovers = leftovers(cri.daemon)
    config = container_config("bad-profile", security_context=SC(seccomp=PROFILE(
        profile_type=PROFILE.Localhost, localhost_ref="/nonexistent/c.json")))
    with pytest.raises(grpc.RpcError) as info:
        cri.create(cri.sid, cri.pod, config)
    assert info.value.code() == grpc.StatusCode.UNKNOWN
    assert 'cannot load seccomp profile "/nonexistent/c.json"' in info.value.details()
    assert {c.id for c in cri.rt.ListContainers(pb.ListContainersRequest()).containers} == before
    assert leftovers(cri.daemon) == before_leftovers
    config.linux.security_context.ClearField("seccomp")
    cri.create(cri.sid, cri.pod, config)     # the name was released


def test_bad_sysctl_leaves_nothing_behind(cri):
    """containerd refuses it when runc creates the task (UNKNOWN), we before anything is
    made (INVALID_ARGUMENT, README's intended differences); both leave nothing."""
    before = leftovers(cri.daemon)
    pod = cri.pod_config("bad-sysctl")
    pod.linux.sysctls["kernel.panic"] = "1"
    with pytest.raises(grpc.RpcError) as info:
        cri.run_pod(pod)
    expected = grpc.StatusCode.UNKNOWN if cri.kind == "containerd" else \
        grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.code() == expected
    assert 'sysctl "kernel.panic" is not in a separate kernel namespace' in info.value.details()
    assert leftovers(cri.daemon) == before
    del pod.linux.sysctls["kernel.panic"]
    cri.run_pod(pod)


def test_impossible_cpuset_fails_at_start_and_leaves_no_task(cri):
    cpus = len(os.sched_getaffinity(0)) + 64
    config = container_config(f"c{next(_names)}", resources=pb.LinuxContainerResources(
        cpuset_cpus=str(cpus)))
    cid = cri.create(cri.sid, cri.pod, config)
    before = leftovers(cri.daemon)
    with pytest.raises(grpc.RpcError) as info:
        cri.rt.StartContainer(pb.StartContainerRequest(container_id=cid))
    assert info.value.code() == grpc.StatusCode.UNKNOWN
    assert "cpuset" in info.value.details()
    assert leftovers(cri.daemon) == before
    status = cri.rt.ContainerStatus(pb.ContainerStatusRequest(container_id=cid)).status
    assert status.state == pb.CONTAINER_EXITED and status.reason == "StartError"


def test_target_pid_namespace(cri):
    own = container_config(f"c{next(_names)}", security_context=SC(
        namespace_options=pb.NamespaceOption(pid=pb.CONTAINER)))
    own.command.extend(["sleep", "1234"])
    target = cri.start_container(cri.sid, cri.pod, own)
    joined = run(cri, SC(namespace_options=pb.NamespaceOption(pid=pb.TARGET,
                                                              target_id=target)))
    assert cri.exec(joined, "cat", "/proc/1/cmdline") == (0, "sleep\x001234\x00")
    with pytest.raises(grpc.RpcError) as info:
        run(cri, SC(namespace_options=pb.NamespaceOption(pid=pb.TARGET, target_id="nope")))
    assert 'invalid target container: container "nope" does not exist' in info.value.details()
    assert info.value.code() == grpc.StatusCode.NOT_FOUND, info.value.details()
    assert re.fullmatch(r'failed to generate container "[0-9a-f]{64}" spec: invalid target '
                        r'container: container "nope" does not exist: not found',
                        info.value.details()), info.value.details()


def test_request_device_inside(cri):
    config = container_config(f"c{next(_names)}")
    config.devices.add(container_path="/dev/mynull", host_path="/dev/null", permissions="rwm")
    cid = cri.start_container(cri.sid, cri.pod, config)
    assert cri.exec(cid, "sh", "-c", "echo x > /dev/mynull && stat -c %t,%T /dev/mynull") == (
        0, "1,3\n")


def test_updated_resources_survive_a_restart(cri):
    """Last in the module: restarts the daemon. The update was recorded, so ContainerStatus
    after the restart shows it, and the running container kept its cgroup limits."""
    cid = run(cri, resources=pb.LinuxContainerResources(memory_limit_in_bytes=64 << 20))
    cri.rt.UpdateContainerResources(pb.UpdateContainerResourcesRequest(
        container_id=cid, linux=pb.LinuxContainerResources(memory_limit_in_bytes=80 << 20)))
    cri.restart()
    got = cri.rt.ContainerStatus(pb.ContainerStatusRequest(container_id=cid)).status
    assert got.state == pb.CONTAINER_RUNNING
    assert got.resources.linux.memory_limit_in_bytes == 80 << 20
    assert _cgroup_files(cri, cid, ["memory/memory.limit_in_bytes"]) == {
        "memory/memory.limit_in_bytes": str(80 << 20)}
    assert cri.exec(cid, "true") == (0, "")
