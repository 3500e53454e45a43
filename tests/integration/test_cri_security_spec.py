"""Differential: the OCI spec our security and resources code makes for a CRI request, against
the spec Debian's containerd 1.6.20 (CRI on) makes for the same request (ContainerStatus /
PodSandboxStatus verbose `runtimeSpec`), section by section; and the same refusals.

Our functions start from containerd's spec for a plain request with the answers this part
computes taken out (groups, namespace paths, paths, seccomp, OOM score), so each case checks
exactly what apply_*_security / apply_resources add. Ids, pids and paths are normalised.
Seccomp profiles are compared by effect: per system call, the set of (action, errno,
argument conditions) rules.
"""
import copy
import json
import re

import grpc
import pytest

from appliance._proto.cri.v1 import api_pb2 as pb
from appliance.cri import resources, security
from appliance.cri.config import CRIConfig
from appliance.cri.host import Host
from cri_reference import CRIReference, container_config

pytestmark = pytest.mark.integration

CFG = CRIConfig(restrict_oom_score_adj=True)   # as the reference's config
DEFAULT_MASKED = ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                  "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                  "/proc/sched_debug", "/sys/firmware", "/proc/scsi"]
DEFAULT_READONLY = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    r = CRIReference()
    try:
        r.start()
        r.privileged_pod = r.pod_config("privileged", privileged=True)
        r.privileged_sid = r.run_pod(r.privileged_pod)
        r.plain_pod = r.pod_config("plain")
        r.plain_sid = r.run_pod(r.plain_pod)
        r.sandbox_pid = r.pod_info(r.privileged_sid)["pid"]
        r.profile_dir = tmp_path_factory.mktemp("profiles")
        base = r.container_spec(r.create(r.privileged_sid, r.privileged_pod,
                                         container_config("base")))
        r.base = strip_answers(base)
        r.pod_base = strip_pod_answers(r.pod_info(r.plain_sid)["runtimeSpec"])
        r.host = Host.probe()
        yield r
    finally:
        r.cleanup()


def strip_answers(spec):
    spec = copy.deepcopy(spec)
    spec["process"]["user"] = {"uid": 0, "gid": 0}
    spec["process"]["noNewPrivileges"] = True
    spec["linux"]["namespaces"] = [{"type": ns["type"]} for ns in spec["linux"]["namespaces"]]
    spec["linux"]["maskedPaths"] = list(DEFAULT_MASKED)
    spec["linux"]["readonlyPaths"] = list(DEFAULT_READONLY)
    spec["linux"].pop("seccomp", None)
    spec["process"].pop("oomScoreAdj", None)
    return spec


def strip_pod_answers(spec):
    spec = copy.deepcopy(spec)
    spec["process"]["user"] = {"uid": 0, "gid": 0}
    spec["process"].pop("oomScoreAdj", None)
    spec["root"].pop("readonly", None)
    spec["linux"]["namespaces"] = [{"type": t} for t in
                                   ("pid", "ipc", "uts", "mount", "network")]
    return spec


def seccomp_effect(profile):
    if profile is None:
        return None
    rules = {}
    for rule in profile.get("syscalls", []):
        for name in rule["names"]:
            rules.setdefault(name, set()).add((rule["action"], rule.get("errnoRet"),
                                               json.dumps(rule.get("args") or [],
                                                          sort_keys=True)))
    return {"defaultAction": profile["defaultAction"],
            "defaultErrnoRet": profile.get("defaultErrnoRet"),
            "architectures": profile.get("architectures"), "rules": rules}


def sections(spec, sandbox_pid):
    """The parts of a spec that security contexts and resources decide, normalised."""
    process, linux = spec.get("process", {}), spec.get("linux", {})
    namespaces = [{k: v.replace(f"/proc/{sandbox_pid}/", "/proc/SANDBOX/") for k, v in ns.items()}
                  for ns in linux.get("namespaces", [])]
    return {
        "user": process.get("user"),
        "capabilities": process.get("capabilities"),
        "noNewPrivileges": process.get("noNewPrivileges", False),
        "oomScoreAdj": process.get("oomScoreAdj"),
        "apparmorProfile": process.get("apparmorProfile"),
        "selinuxLabel": process.get("selinuxLabel"),
        "rootReadonly": spec.get("root", {}).get("readonly", False),
        "maskedPaths": linux.get("maskedPaths"),
        "readonlyPaths": linux.get("readonlyPaths"),
        "namespaces": namespaces,
        "devices": sorted(linux.get("devices", []), key=lambda d: d["path"]),
        "resources": linux.get("resources"),
        "sysctl": linux.get("sysctl"),
        "mountLabel": linux.get("mountLabel"),
        "sys mounts": [m for m in spec.get("mounts", []) if m["type"] in ("sysfs", "cgroup")],
        "seccomp": seccomp_effect(linux.get("seccomp")),
    }


def ours_for_container(ref, pod, config):
    spec = copy.deepcopy(ref.base)
    security.apply_container_security(spec, config, pod, ref.image_config, ref.rootfs, CFG,
                                      host=ref.host, container_id="ID",
                                      sandbox_pid=ref.sandbox_pid)
    if config.linux.HasField("resources"):
        resources.apply_resources(spec, config.linux.resources, CFG, host=ref.host)
    return spec


def profile(ref, name, body) -> str:
    path = ref.profile_dir / name
    path.write_text(json.dumps(body))
    return str(path)


LOCAL_PROFILE = {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
                 "syscalls": [{"names": ["unshare", "mkdirat"], "action": "SCMP_ACT_ERRNO",
                               "errnoRet": 1}]}
SC = pb.LinuxContainerSecurityContext
CAPS = pb.Capability
PROFILE = pb.SecurityProfile
RES = pb.LinuxContainerResources


def _cases(ref):
    local = profile(ref, "local.json", LOCAL_PROFILE)
    return {
        "default": {},
        "run_as_user": dict(security_context=SC(run_as_user=pb.Int64Value(value=1000))),
        "uid, gid, supplemental groups": dict(security_context=SC(
            run_as_user=pb.Int64Value(value=1000), run_as_group=pb.Int64Value(value=2000),
            supplemental_groups=[3000, 5000])),
        "uid not in passwd": dict(security_context=SC(run_as_user=pb.Int64Value(value=4321))),
        "run_as_username": dict(security_context=SC(run_as_username="app")),
        "username and gid": dict(security_context=SC(run_as_username="app",
                                                     run_as_group=pb.Int64Value(value=77))),
        "add and drop": dict(security_context=SC(capabilities=CAPS(
            add_capabilities=["NET_ADMIN", "sys_time"], drop_capabilities=["CHOWN", "KILL"]))),
        "add ALL drop one": dict(security_context=SC(capabilities=CAPS(
            add_capabilities=["ALL"], drop_capabilities=["CHOWN"]))),
        "drop ALL add one": dict(security_context=SC(capabilities=CAPS(
            add_capabilities=["NET_BIND_SERVICE"], drop_capabilities=["ALL"]))),
        "privileged": dict(security_context=SC(privileged=True)),
        "privileged with seccomp asked": dict(security_context=SC(
            privileged=True, seccomp=PROFILE(profile_type=PROFILE.RuntimeDefault))),
        "readonly rootfs, no_new_privs": dict(security_context=SC(readonly_rootfs=True,
                                                                  no_new_privs=True)),
        "masked and readonly paths": dict(security_context=SC(
            masked_paths=["/proc/kcore", "/proc/keys"], readonly_paths=["/proc/sys"])),
        "RuntimeDefault": dict(security_context=SC(
            seccomp=PROFILE(profile_type=PROFILE.RuntimeDefault))),
        "RuntimeDefault with SYS_ADMIN, SYS_PTRACE, DAC_READ_SEARCH": dict(security_context=SC(
            seccomp=PROFILE(profile_type=PROFILE.RuntimeDefault), capabilities=CAPS(
                add_capabilities=["SYS_ADMIN", "SYS_PTRACE", "DAC_READ_SEARCH", "SYS_MODULE",
                                  "SYS_TIME", "SYS_NICE", "SYSLOG", "BPF", "PERFMON"],
                drop_capabilities=["SYS_CHROOT"]))),
        "RuntimeDefault, all capabilities": dict(security_context=SC(
            seccomp=PROFILE(profile_type=PROFILE.RuntimeDefault),
            capabilities=CAPS(add_capabilities=["ALL"]))),
        "Unconfined": dict(security_context=SC(
            seccomp=PROFILE(profile_type=PROFILE.Unconfined))),
        "Localhost": dict(security_context=SC(
            seccomp=PROFILE(profile_type=PROFILE.Localhost, localhost_ref=local))),
        "deprecated runtime/default": dict(security_context=SC(
            seccomp_profile_path="runtime/default")),
        "deprecated docker/default": dict(security_context=SC(
            seccomp_profile_path="docker/default")),
        "deprecated localhost/": dict(security_context=SC(
            seccomp_profile_path="localhost/" + local)),
        "deprecated unconfined": dict(security_context=SC(seccomp_profile_path="unconfined")),
        "apparmor Unconfined": dict(security_context=SC(
            apparmor=PROFILE(profile_type=PROFILE.Unconfined))),
        "selinux options (no SELinux here)": dict(security_context=SC(
            selinux_options=pb.SELinuxOption(user="u", role="r", type="t", level="s0:c1,c2"))),
        "pid CONTAINER": dict(security_context=SC(
            namespace_options=pb.NamespaceOption(pid=pb.CONTAINER))),
        "pid NODE": dict(security_context=SC(
            namespace_options=pb.NamespaceOption(pid=pb.NODE))),
        "resources": dict(resources=RES(
            cpu_period=50000, cpu_quota=25000, cpu_shares=512, cpuset_cpus="0",
            cpuset_mems="0", memory_limit_in_bytes=64 << 20, oom_score_adj=500)),
        "memory with swap": dict(resources=RES(memory_limit_in_bytes=64 << 20,
                                               memory_swap_limit_in_bytes=128 << 20)),
        "oom_score_adj below the daemon's": dict(resources=RES(oom_score_adj=-500)),
        "hugepages (no hugetlb controller: skipped)": dict(resources=RES(
            hugepage_limits=[pb.HugepageLimit(page_size="2MB", limit=2 << 20)])),
        "unified": dict(resources=RES(unified={"memory.high": "1000000"})),
        "empty resources": dict(resources=RES()),
    }


def test_container_specs_match_containerd(ref):
    mismatches = {}
    for name, linux in _cases(ref).items():
        config = container_config("c-" + name.replace(" ", "-").replace(",", "")
                                  .replace("/", "")[:50], **linux)
        theirs = ref.container_spec(ref.create(ref.privileged_sid, ref.privileged_pod, config))
        ours = ours_for_container(ref, ref.privileged_pod, config)
        a, b = sections(ours, ref.sandbox_pid), sections(theirs, ref.sandbox_pid)
        diff = {k: (a[k], b[k]) for k in a if a[k] != b[k]}
        if "seccomp" in diff and a["seccomp"] and b["seccomp"]:
            ra, rb = a["seccomp"].pop("rules"), b["seccomp"].pop("rules")
            diff["seccomp"] = (a["seccomp"], b["seccomp"], {
                n: (sorted(ra.get(n, ())), sorted(rb.get(n, ())))
                for n in set(ra) | set(rb) if ra.get(n) != rb.get(n)})
        if diff:
            mismatches[name] = diff
    assert not mismatches, json.dumps(mismatches, indent=1, default=sorted)[:6000]


def test_request_devices_match_containerd(ref):
    config = container_config("devices")
    config.devices.add(container_path="/dev/mynull", host_path="/dev/null", permissions="rw")
    config.devices.add(container_path="/dev/tty-link", host_path="/dev/stdin", permissions="r")
    theirs = ref.container_spec(ref.create(ref.privileged_sid, ref.privileged_pod, config))
    ours = ours_for_container(ref, ref.privileged_pod, config)
    for key in ("devices", "resources"):
        assert sections(ours, 0)[key] == sections(theirs, 0)[key]


def _their_error(ref, sid, pod, config):
    with pytest.raises(grpc.RpcError) as info:
        ref.create(sid, pod, config)
    return info.value.code(), info.value.details()


@pytest.mark.parametrize("name, sc", [
    ("missing Localhost profile", SC(seccomp=PROFILE(profile_type=PROFILE.Localhost,
                                                     localhost_ref="/nonexistent/p.json"))),
    ("invalid deprecated path", SC(seccomp_profile_path="bogus/x")),
    ("ref without Localhost", SC(seccomp=PROFILE(profile_type=PROFILE.RuntimeDefault,
                                                 localhost_ref="/x"))),
    ("group without user", SC(run_as_group=pb.Int64Value(value=5))),
    ("unknown username", SC(run_as_username="nobody-here")),
    ("apparmor without AppArmor", SC(apparmor=PROFILE(profile_type=PROFILE.RuntimeDefault))),
    ("bad SELinux level", SC(selinux_options=pb.SELinuxOption(level="bogus"))),
    ("privileged in a plain pod", SC(privileged=True)),
])
def test_refusals_match_containerd(ref, name, sc):
    pod, sid = ((ref.plain_pod, ref.plain_sid) if name == "privileged in a plain pod"
                else (ref.privileged_pod, ref.privileged_sid))
    config = container_config("bad-" + name.replace(" ", "-"), security_context=sc)
    code, theirs = _their_error(ref, sid, pod, config)
    assert code == grpc.StatusCode.UNKNOWN
    with pytest.raises(Exception) as ours:
        spec = copy.deepcopy(ref.base)
        security.apply_container_security(spec, config, pod, ref.image_config, ref.rootfs, CFG,
                                          host=ref.host, container_id="ID",
                                          sandbox_pid=ref.sandbox_pid)
    assert ours.value.code.name == "UNKNOWN"
    container_id = theirs.split('"')[1] if "spec: " in theirs else None
    expected = theirs.replace(container_id, "ID") if container_id else theirs
    expected = re.sub(r"mount callback failed on \S+:", f"mount callback failed on {ref.rootfs}:",
                      expected)
    assert str(ours.value) == expected


POD_CASES = {
    "default": {},
    "run_as_user and groups": dict(run_as_user=pb.Int64Value(value=1000),
                                   supplemental_groups=[3000]),
    "supplemental groups only": dict(supplemental_groups=[3000, 2000]),
    "uid and gid": dict(run_as_user=pb.Int64Value(value=1000),
                        run_as_group=pb.Int64Value(value=5)),
    "RuntimeDefault": dict(seccomp=PROFILE(profile_type=PROFILE.RuntimeDefault)),
    "privileged with RuntimeDefault": dict(privileged=True,
                                           seccomp=PROFILE(profile_type=PROFILE.RuntimeDefault)),
    "host pid and ipc": dict(namespace_options=pb.NamespaceOption(network=pb.NODE, pid=pb.NODE,
                                                                  ipc=pb.NODE)),
}


@pytest.mark.parametrize("name", list(POD_CASES))
def test_sandbox_specs_match_containerd(ref, name):
    pod = ref.pod_config("pod-" + name.replace(" ", "-"), **POD_CASES[name])
    if name == "default":
        pod.linux.sysctls["kernel.shm_rmid_forced"] = "1"
    theirs = ref.pod_info(ref.run_pod(pod))["runtimeSpec"]
    ours = copy.deepcopy(ref.pod_base)
    security.apply_pod_security(ours, pod, CFG, host=ref.host, image_config=ref.image_config,
                                rootfs=ref.rootfs)
    security.apply_sysctls(ours, dict(pod.linux.sysctls), pod, CFG)
    assert sections(ours, 0) == sections(theirs, 0)


@pytest.mark.parametrize("sysctl", ["kernel.panic", "net.ipv4.ip_forward"])
def test_sysctl_refusals_say_what_runc_says(ref, sysctl):
    """containerd refuses these when runc creates the sandbox task (UNKNOWN); we refuse them
    before anything is made (INVALID_ARGUMENT, README's intended differences), in runc's words."""
    pod = ref.pod_config("sysctl-" + sysctl.replace(".", "-"))
    pod.linux.sysctls[sysctl] = "1"
    with pytest.raises(grpc.RpcError) as theirs:
        ref.run_pod(pod)
    assert theirs.value.code() == grpc.StatusCode.UNKNOWN
    with pytest.raises(Exception) as ours:
        security.apply_sysctls(copy.deepcopy(ref.pod_base), {sysctl: "1"}, pod, CFG)
    assert ours.value.code.name == "INVALID_ARGUMENT"
    assert str(ours.value).split(":")[0] in theirs.value.details()


def test_unknown_capability_is_ignored_by_containerd(ref):
    """containerd passes an unknown capability to runc, which drops it: the container starts
    with the default set. We refuse it instead (README's intended differences)."""
    config = container_config("unknown-cap", security_context=SC(
        capabilities=CAPS(add_capabilities=["NET_WIZARD"])))
    theirs = ref.container_spec(ref.create(ref.privileged_sid, ref.privileged_pod, config))
    assert "CAP_NET_WIZARD" in theirs["process"]["capabilities"]["bounding"]
    with pytest.raises(Exception) as ours:
        ours_for_container(ref, ref.privileged_pod, config)
    assert ours.value.code.name == "INVALID_ARGUMENT"


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    r = CRIReference("ctrappliance")
    try:
        r.start()
        if not r.serves_pods():
            pytest.skip("ctrappliance does not serve pods yet (issue #20)")
        r.privileged_pod = r.pod_config("privileged", privileged=True)
        r.privileged_sid = r.run_pod(r.privileged_pod)
        r.sandbox_pid = r.pod_info(r.privileged_sid)["pid"]
        r.profile_dir = tmp_path_factory.mktemp("our-profiles")
        yield r
    finally:
        r.cleanup()


def _name(case):
    return "e2e-" + case.replace(" ", "-").replace(",", "").replace("/", "")[:40]


def test_our_daemon_records_containerds_spec(ref, ours):
    """End to end: the spec ctrappliance records for each request (ContainerStatus verbose)
    against containerd's, section by section."""
    mismatches = {}
    their_cases, our_cases = _cases(ref), _cases(ours)
    for name in their_cases:
        theirs = ref.container_spec(ref.create(ref.privileged_sid, ref.privileged_pod,
                                               container_config(_name(name),
                                                                **their_cases[name])))
        mine = ours.container_spec(ours.create(ours.privileged_sid, ours.privileged_pod,
                                               container_config(_name(name), **our_cases[name])))
        a, b = sections(mine, ours.sandbox_pid), sections(theirs, ref.sandbox_pid)
        diff = {k: (a[k], b[k]) for k in a if a[k] != b[k]}
        if diff:
            mismatches[name] = diff
    assert not mismatches, json.dumps(mismatches, indent=1, default=sorted)[:6000]


@pytest.mark.parametrize("name", list(POD_CASES))
def test_our_sandbox_spec_is_containerds(ref, ours, name):
    specs = []
    for daemon in (ours, ref):
        pod = daemon.pod_config("e2e-pod-" + name.replace(" ", "-"), **POD_CASES[name])
        if name == "default":
            pod.linux.sysctls["kernel.shm_rmid_forced"] = "1"
        specs.append(daemon.pod_info(daemon.run_pod(pod))["runtimeSpec"])
    assert sections(specs[0], 0) == sections(specs[1], 0)


@pytest.mark.parametrize("kind", ["containerd", "ctrappliance"])
def test_disable_cgroup(kind):
    """disable_cgroup: no cgroupsPath and no resources in the container's spec, no cgroupsPath
    and no CPU shares in the sandbox's, on both daemons."""
    r = CRIReference(kind, extra="  disable_cgroup = true\n")
    try:
        r.start()
        if not r.serves_pods():
            pytest.skip("ctrappliance does not serve pods yet (issue #20)")
        pod = r.pod_config("nocgroup")
        sid = r.run_pod(pod)
        sandbox = r.pod_info(sid)["runtimeSpec"]["linux"]
        assert "cgroupsPath" not in sandbox and "cpu" not in sandbox["resources"]
        spec = r.container_spec(r.create(sid, pod, container_config("c", resources=RES(
            cpu_shares=512, memory_limit_in_bytes=64 << 20))))
        assert "cgroupsPath" not in spec["linux"]
        assert spec["linux"]["resources"] == {"devices": [{"allow": False, "access": "rwm"}]}
    finally:
        r.cleanup()
