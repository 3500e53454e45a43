"""CRI security contexts on an OCI spec dict (appliance/cri/security.py, seccomp.py, devices.py),
without a daemon: validation errors, and the spec each setting gives. The same settings are
compared with containerd 1.6.20's own specs in tests/integration/test_cri_security_spec.py;
the hosts this machine is not (AppArmor, SELinux, cgroup v2, no seccomp) are given as Host
values here."""
import os
import re
import subprocess

import pytest

from appliance._proto.cri.v1 import api_pb2 as pb
from appliance.cri import apparmor, seccomp, security
from appliance.cri.config import CRIConfig
from appliance.cri.host import Host, capabilities_from_mask, capability_mask
from appliance.errdefs import ApplianceError, InvalidArgument, StatusCode

DEFAULT_CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
                "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
                "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]
HOST = Host(capabilities=capabilities_from_mask(0x1fffeffffff), oom_score_adj=0)
CFG = CRIConfig()
SC = pb.LinuxContainerSecurityContext
PROFILE = pb.SecurityProfile


def base_spec():
    caps = {k: list(DEFAULT_CAPS) for k in ("bounding", "effective", "permitted")}
    return {
        "process": {"user": {"uid": 0, "gid": 0}, "capabilities": caps, "noNewPrivileges": True},
        "root": {"path": "rootfs"},
        "mounts": [{"destination": "/sys", "type": "sysfs", "source": "sysfs",
                    "options": ["nosuid", "noexec", "nodev", "ro"]},
                   {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                    "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}],
        "linux": {"namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")],
                  "maskedPaths": ["/proc/kcore"], "readonlyPaths": ["/proc/sys"],
                  "resources": {"devices": [{"allow": False, "access": "rwm"}]}},
    }


@pytest.fixture
def rootfs(tmp_path):
    etc = tmp_path / "rootfs" / "etc"
    etc.mkdir(parents=True)
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n# comment\n")
    # An absolute symlink must resolve inside the rootfs, not on the host.
    (etc / "passwd").symlink_to("/files/passwd")
    (tmp_path / "rootfs" / "files").symlink_to("../files")
    (etc / "group").write_text("root:x:0:\napp:x:1000:app\nextra:x:3000:app,bob\n"
                               "wheel:x:10:root\n")
    return str(tmp_path / "rootfs")


def container(**sc):
    return pb.ContainerConfig(metadata=pb.ContainerMetadata(name="c"),
                              linux=pb.LinuxContainerConfig(security_context=SC(**sc)))


def pod(**sc):
    return pb.PodSandboxConfig(linux=pb.LinuxPodSandboxConfig(
        security_context=pb.LinuxSandboxSecurityContext(**sc)))


def apply(config, pod_config=None, rootfs="", cfg=CFG, host=HOST, image_config=None, **kw):
    spec = base_spec()
    security.apply_container_security(spec, config, pod_config or pod(), image_config or {},
                                      rootfs, cfg, host=host, container_id="cid",
                                      sandbox_pid=42, **kw)
    return spec


# --- users and groups ---

def test_default_user_is_root_with_roots_groups(rootfs):
    user = apply(container(), rootfs=rootfs)["process"]["user"]
    assert user == {"uid": 0, "gid": 0, "additionalGids": [0, 10]}


def test_run_as_user_takes_the_primary_group_from_passwd(rootfs):
    user = apply(container(run_as_user=pb.Int64Value(value=1000)), rootfs=rootfs)
    assert user["process"]["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [1000, 3000]}


def test_unknown_uid_gets_group_zero(rootfs):
    user = apply(container(run_as_user=pb.Int64Value(value=4321)), rootfs=rootfs)
    assert user["process"]["user"] == {"uid": 4321, "gid": 0, "additionalGids": [0]}


def test_supplemental_groups_include_the_primary_gid(rootfs):
    spec = apply(container(run_as_user=pb.Int64Value(value=1000),
                           run_as_group=pb.Int64Value(value=2000),
                           supplemental_groups=[3000, 5000]), rootfs=rootfs)
    assert spec["process"]["user"] == {"uid": 1000, "gid": 2000,
                                       "additionalGids": [2000, 3000, 5000]}


def test_run_as_username_resolves_through_the_image(rootfs):
    spec = apply(container(run_as_username="app"), rootfs=rootfs)
    assert spec["process"]["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [1000, 3000]}


def test_image_user_applies_when_the_request_names_none(rootfs):
    spec = apply(container(), rootfs=rootfs, image_config={"User": "app:extra"})
    assert spec["process"]["user"]["uid"] == 1000 and spec["process"]["user"]["gid"] == 3000


def test_user_errors(rootfs):
    with pytest.raises(ApplianceError, match='user group "5" is specified without user'):
        apply(container(run_as_group=pb.Int64Value(value=5)), rootfs=rootfs)
    with pytest.raises(ApplianceError, match="no users found") as info:
        apply(container(run_as_username="nobody"), rootfs=rootfs)
    assert info.value.code == StatusCode.UNKNOWN
    with pytest.raises(ApplianceError, match="no groups found"):
        apply(container(), rootfs=rootfs, image_config={"User": "app:nogroup"})
    with pytest.raises(ApplianceError, match="invalid USER value a:b:c"):
        apply(container(), rootfs=rootfs, image_config={"User": "a:b:c"})


def test_symlinks_do_not_leave_the_rootfs(tmp_path):
    root = tmp_path / "r"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").symlink_to("../../../../../../etc/shadow-not-here")
    assert security.resolve_user("7", str(root)) == (7, 0)


# --- capabilities ---

def test_add_and_drop_capabilities():
    spec = apply(container(capabilities=pb.Capability(add_capabilities=["NET_ADMIN", "sys_time"],
                                                      drop_capabilities=["CHOWN", "KILL"])))
    caps = spec["process"]["capabilities"]
    assert caps["bounding"] == caps["effective"] == caps["permitted"]
    assert "CAP_NET_ADMIN" in caps["bounding"] and "CAP_SYS_TIME" in caps["bounding"]
    assert "CAP_CHOWN" not in caps["bounding"] and "CAP_KILL" not in caps["bounding"]


def test_all_capabilities_then_drop_one():
    spec = apply(container(capabilities=pb.Capability(add_capabilities=["ALL"],
                                                      drop_capabilities=["CHOWN"])))
    assert capability_mask(spec["process"]["capabilities"]["bounding"]) == 0x1fffeffffff & ~1


def test_drop_all_then_add_one():
    spec = apply(container(capabilities=pb.Capability(add_capabilities=["NET_BIND_SERVICE"],
                                                      drop_capabilities=["ALL"])))
    assert spec["process"]["capabilities"]["effective"] == ["CAP_NET_BIND_SERVICE"]


def test_default_capability_set_is_containerds():
    assert capability_mask(DEFAULT_CAPS) == 0xa80425fb


@pytest.mark.parametrize("name", ["NET_WIZARD", "CAP_NET_ADMIN", ""])
def test_unknown_capability_is_refused(name):
    with pytest.raises(InvalidArgument, match="unknown capability"):
        apply(container(capabilities=pb.Capability(add_capabilities=[name])))
    with pytest.raises(InvalidArgument, match="unknown capability"):
        apply(container(capabilities=pb.Capability(drop_capabilities=[name])))


# --- privileged, read-only rootfs, no_new_privs, paths ---

def test_privileged_needs_a_privileged_pod():
    with pytest.raises(ApplianceError, match='failed to generate container "cid" spec: no '
                                             'privileged container allowed in sandbox'):
        apply(container(privileged=True))


def test_privileged():
    spec = apply(container(privileged=True, seccomp=PROFILE(profile_type=PROFILE.RuntimeDefault)),
                 pod(privileged=True))
    assert spec["process"]["capabilities"]["bounding"] == HOST.capabilities
    assert "maskedPaths" not in spec["linux"] and "readonlyPaths" not in spec["linux"]
    assert "seccomp" not in spec["linux"]
    assert all("ro" not in m["options"] for m in spec["mounts"])
    assert spec["linux"]["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    assert any(d["path"] == "/dev/null" for d in spec["linux"]["devices"])


def test_privileged_without_host_devices():
    spec = apply(container(privileged=True), pod(privileged=True),
                 privileged_without_host_devices=True)
    assert "devices" not in spec["linux"]
    assert spec["linux"]["resources"]["devices"] == [{"allow": False, "access": "rwm"}]


def test_readonly_rootfs_and_no_new_privs():
    spec = apply(container(readonly_rootfs=True, no_new_privs=True))
    assert spec["root"]["readonly"] is True and spec["process"]["noNewPrivileges"] is True
    plain = apply(container())
    assert "readonly" not in plain["root"] and "noNewPrivileges" not in plain["process"]


def test_requested_paths_replace_the_defaults():
    spec = apply(container(masked_paths=["/proc/keys"], readonly_paths=["/proc/bus"]))
    assert spec["linux"]["maskedPaths"] == ["/proc/keys"]
    assert spec["linux"]["readonlyPaths"] == ["/proc/bus"]
    plain = apply(container())
    assert "maskedPaths" not in plain["linux"] and "readonlyPaths" not in plain["linux"]
    kept = apply(container(), cfg=CRIConfig(disable_proc_mount=True))
    assert kept["linux"]["maskedPaths"] == ["/proc/kcore"]


# --- namespaces, OOM score, devices ---

def test_namespaces():
    spec = apply(container())
    assert {ns["type"]: ns.get("path") for ns in spec["linux"]["namespaces"]} == {
        "pid": "/proc/42/ns/pid", "ipc": "/proc/42/ns/ipc", "uts": "/proc/42/ns/uts",
        "mount": None, "network": "/proc/42/ns/net"}
    own = apply(container(namespace_options=pb.NamespaceOption(pid=pb.CONTAINER)))
    assert {"type": "pid"} in own["linux"]["namespaces"]
    target = apply(container(namespace_options=pb.NamespaceOption(pid=pb.TARGET, target_id="x")),
                   target_pid=77)
    assert {"type": "pid", "path": "/proc/77/ns/pid"} in target["linux"]["namespaces"]
    v2 = apply(container(), host=Host(capabilities=HOST.capabilities, cgroup_v2=True))
    assert {"type": "cgroup"} in v2["linux"]["namespaces"]


def test_oom_score_adj_restricted_to_the_daemons():
    config = container()
    config.linux.resources.oom_score_adj = -500
    assert apply(config)["process"]["oomScoreAdj"] == -500
    restricted = apply(config, cfg=CRIConfig(restrict_oom_score_adj=True),
                       host=Host(capabilities=HOST.capabilities, oom_score_adj=-100))
    assert restricted["process"]["oomScoreAdj"] == -100


def test_request_devices_and_ownership():
    config = container(run_as_user=pb.Int64Value(value=1000),
                       run_as_group=pb.Int64Value(value=0))
    config.devices.add(container_path="/dev/mynull", host_path="/dev/null", permissions="rw")
    spec = apply(config, cfg=CRIConfig(device_ownership_from_security_context=True))
    null = os.stat("/dev/null")
    assert spec["linux"]["devices"] == [{"path": "/dev/mynull", "type": "c", "major": 1,
                                         "minor": 3, "fileMode": 0o666, "uid": 1000,
                                         "gid": null.st_gid}]
    assert spec["linux"]["resources"]["devices"][-1] == {
        "allow": True, "type": "c", "major": 1, "minor": 3, "access": "rw"}
    config.devices.add(container_path="/x", host_path="/nonexistent", permissions="r")
    with pytest.raises(ApplianceError, match="/nonexistent"):
        apply(config)


# --- seccomp, AppArmor, SELinux ---

def test_seccomp_choices(tmp_path):
    default = apply(container(seccomp=PROFILE(profile_type=PROFILE.RuntimeDefault)))
    assert default["linux"]["seccomp"]["defaultAction"] == "SCMP_ACT_ERRNO"
    assert "seccomp" not in apply(container())["linux"]
    assert "seccomp" not in apply(container(seccomp=PROFILE(profile_type=PROFILE.Unconfined)))[
        "linux"]
    path = tmp_path / "p.json"
    path.write_text('{"defaultAction": "SCMP_ACT_LOG"}')
    local = apply(container(seccomp=PROFILE(profile_type=PROFILE.Localhost,
                                            localhost_ref=str(path))))
    assert local["linux"]["seccomp"] == {"defaultAction": "SCMP_ACT_LOG"}
    deprecated = apply(container(seccomp_profile_path="localhost/" + str(path)))
    assert deprecated["linux"]["seccomp"] == {"defaultAction": "SCMP_ACT_LOG"}
    unset = apply(container(), cfg=CRIConfig(unset_seccomp_profile="runtime/default"))
    assert unset["linux"]["seccomp"]["defaultAction"] == "SCMP_ACT_ERRNO"


def test_seccomp_errors(tmp_path):
    with pytest.raises(ApplianceError, match='failed to create containerd container: cannot load '
                       'seccomp profile "/nope.json": open /nope.json: no such file or directory'):
        apply(container(seccomp=PROFILE(profile_type=PROFILE.Localhost,
                                        localhost_ref="/nope.json")))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ApplianceError, match="decoding seccomp profile failed"):
        apply(container(seccomp=PROFILE(profile_type=PROFILE.Localhost, localhost_ref=str(bad))))
    with pytest.raises(ApplianceError, match='generate seccomp spec opts: invalid profile "x/y"'):
        apply(container(seccomp_profile_path="x/y"))
    with pytest.raises(ApplianceError, match="LocalhostRef must only be set if ProfileType"):
        apply(container(seccomp=PROFILE(profile_type=PROFILE.RuntimeDefault, localhost_ref="/x")))
    no_seccomp = Host(capabilities=HOST.capabilities, seccomp=False)
    with pytest.raises(ApplianceError, match="seccomp is not supported"):
        apply(container(seccomp=PROFILE(profile_type=PROFILE.RuntimeDefault)), host=no_seccomp)
    assert "seccomp" not in apply(container(seccomp=PROFILE(profile_type=PROFILE.Unconfined)),
                                  host=no_seccomp)["linux"]


def test_apparmor_without_apparmor_refuses_a_profile_only():
    with pytest.raises(ApplianceError, match="apparmor is not supported"):
        apply(container(apparmor=PROFILE(profile_type=PROFILE.RuntimeDefault)))
    with pytest.raises(ApplianceError, match="apparmor is not supported"):
        apply(container(apparmor_profile="localhost/p"))
    assert "apparmorProfile" not in apply(container())["process"]
    assert "apparmorProfile" not in apply(
        container(apparmor=PROFILE(profile_type=PROFILE.Unconfined)))["process"]


def test_apparmor_on_a_host_with_apparmor(monkeypatch):
    host = Host(capabilities=HOST.capabilities, apparmor=True)
    loads = []
    monkeypatch.setattr(apparmor, "loaded", lambda name: name == "mine")
    monkeypatch.setattr(apparmor, "load_default", lambda: loads.append(apparmor.NAME))
    assert apply(container(), host=host)["process"]["apparmorProfile"] == \
        "cri-containerd.apparmor.d"
    assert loads == ["cri-containerd.apparmor.d"]      # loaded when missing
    local = apply(container(apparmor=PROFILE(profile_type=PROFILE.Localhost,
                                             localhost_ref="localhost/mine")), host=host)
    assert local["process"]["apparmorProfile"] == "mine"
    with pytest.raises(ApplianceError, match="apparmor profile not found other"):
        apply(container(apparmor_profile="localhost/other"), host=host)
    privileged = apply(container(privileged=True), pod(privileged=True), host=host)
    assert "apparmorProfile" not in privileged["process"]


@pytest.mark.skipif(apparmor.parser() is None, reason="no apparmor_parser on this host")
def test_default_apparmor_profile_compiles(tmp_path):
    """apparmor_parser compiles our default profile without loading it (checked by hand with
    Debian's apparmor 3.0.8 on this machine, which has no AppArmor)."""
    result = subprocess.run([apparmor.parser(), "-Q", "-S"], input=apparmor.PROFILE,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_apparmor_load_failure_is_reported(monkeypatch):
    host = Host(capabilities=HOST.capabilities, apparmor=True)
    monkeypatch.setattr(apparmor, "loaded", lambda name: False)
    monkeypatch.setattr(apparmor, "PARSERS", ("/nonexistent/apparmor_parser",))
    with pytest.raises(ApplianceError, match="generate apparmor spec opts: apparmor_parser not "
                                             "found"):
        apply(container(), host=host)


def test_selinux_labels_only_where_the_host_has_selinux():
    options = pb.SELinuxOption(user="u", role="r", type="t", level="s0:c1,c2")
    assert "selinuxLabel" not in apply(container(selinux_options=options))["process"]
    host = Host(capabilities=HOST.capabilities, selinux=True)
    spec = apply(container(selinux_options=options), host=host,
                 cfg=CRIConfig(enable_selinux=True))
    assert spec["process"]["selinuxLabel"] == "u:r:t:s0:c1,c2"
    assert spec["linux"]["mountLabel"] == "u:object_r:container_file_t:s0:c1,c2"
    with pytest.raises(ApplianceError, match="the format of 'level' \"s0:bad\" is not correct"):
        apply(container(selinux_options=pb.SELinuxOption(level="s0:bad")))
    # No options: the pod's label; options without a level: a new MCS level.
    on = CRIConfig(enable_selinux=True, selinux_category_range=8)
    inherited = apply(container(), host=host, cfg=on, pod_label="a:b:c:s0:c1,c5")
    assert inherited["process"]["selinuxLabel"] == "a:b:c:s0:c1,c5"
    fresh = apply(container(selinux_options=pb.SELinuxOption(type="spc_t")), host=host, cfg=on)
    label = fresh["process"]["selinuxLabel"]
    assert re.fullmatch(r"system_u:system_r:spc_t:s0:c[0-7],c[0-7]", label), label
    pod_spec = base_spec()
    security.apply_pod_security(pod_spec, pod(), on, host=host)
    assert pod_spec["process"]["selinuxLabel"].startswith("system_u:system_r:container_t:s0:c")
    privileged = base_spec()
    security.apply_pod_security(privileged, pod(privileged=True), on, host=host)
    assert "selinuxLabel" not in privileged["process"]


# --- the sandbox container ---

def test_pod_security():
    spec = base_spec()
    config = pod(run_as_user=pb.Int64Value(value=1000), supplemental_groups=[3000],
                 namespace_options=pb.NamespaceOption(network=pb.NODE, ipc=pb.NODE),
                 seccomp=PROFILE(profile_type=PROFILE.RuntimeDefault))
    security.apply_pod_security(spec, config, CRIConfig(restrict_oom_score_adj=True), host=HOST)
    assert spec["process"]["user"] == {"uid": 1000, "gid": 0, "additionalGids": [0]}
    assert spec["root"]["readonly"] is True
    assert spec["process"]["oomScoreAdj"] == 0
    assert [ns["type"] for ns in spec["linux"]["namespaces"]] == ["pid", "mount"]
    assert spec["linux"]["seccomp"]["defaultAction"] == "SCMP_ACT_ERRNO"

    own = base_spec()
    security.apply_pod_security(own, pod(), CFG, host=HOST, netns_path="/run/netns/cni-1")
    assert {"type": "network", "path": "/run/netns/cni-1"} in own["linux"]["namespaces"]
    assert own["process"]["oomScoreAdj"] == -998


# --- sysctls ---

@pytest.mark.parametrize("name", ["net.ipv4.ip_forward", "kernel.shm_rmid_forced", "kernel.sem",
                                  "kernel.msgmax", "fs.mqueue.msg_max"])
def test_namespaced_sysctls_are_set(name):
    spec = base_spec()
    security.apply_sysctls(spec, {name: "1"}, pod())
    assert spec["linux"]["sysctl"] == {name: "1"}


@pytest.mark.parametrize("name", ["kernel.panic", "vm.swappiness", "kernel.hostname",
                                  "fs.file-max", "kernel.shmall.x"])
def test_host_wide_sysctls_are_refused(name):
    with pytest.raises(InvalidArgument, match=f'sysctl "{name}" is not in a separate kernel '
                                              f'namespace'):
        security.apply_sysctls(base_spec(), {name: "1"}, pod())


def test_sysctls_of_host_namespaces_are_refused():
    host_net = pod(namespace_options=pb.NamespaceOption(network=pb.NODE))
    with pytest.raises(InvalidArgument, match='"net.ipv4.ip_forward" not allowed in host network '
                                              'namespace'):
        security.apply_sysctls(base_spec(), {"net.ipv4.ip_forward": "1"}, host_net)
    host_ipc = pod(namespace_options=pb.NamespaceOption(ipc=pb.NODE))
    with pytest.raises(InvalidArgument, match="not allowed in host IPC namespace"):
        security.apply_sysctls(base_spec(), {"kernel.shmmax": "1"}, host_ipc)
    with pytest.raises(InvalidArgument, match="not allowed in host UTS namespace"):
        security.apply_sysctls(base_spec(), {"kernel.domainname": "x"}, host_net)
    spec = base_spec()
    security.apply_sysctls(spec, {"kernel.domainname": "x"}, pod())
    assert spec["linux"]["sysctl"] == {"kernel.domainname": "x"}


def test_unprivileged_ports_and_icmp():
    spec = base_spec()
    security.apply_sysctls(spec, {}, pod(), CRIConfig(enable_unprivileged_ports=True,
                                                      enable_unprivileged_icmp=True))
    assert spec["linux"]["sysctl"] == {"net.ipv4.ip_unprivileged_port_start": "0",
                                       "net.ipv4.ping_group_range": "0 2147483647"}


# --- the RuntimeDefault profile ---

def _allowed(profile, name, arg0=None):
    for rule in profile["syscalls"]:
        if name in rule["names"]:
            args = rule.get("args") or []
            if all(_matches(a, arg0) for a in args):
                return rule["action"] == seccomp.ALLOW
    return False


def _matches(arg, value):
    if arg["op"] == "SCMP_CMP_EQ":
        return value == arg["value"]
    return (value & arg["value"]) == arg.get("valueTwo", 0)


def test_runtime_default_by_capability():
    plain = seccomp.runtime_default(DEFAULT_CAPS, "x86_64", "6.1.0")
    for name in ("read", "openat", "socket", "arch_prctl", "ptrace", "chroot"):
        assert _allowed(plain, name), name
    for name in ("mount", "unshare", "setns", "reboot", "init_module", "kexec_load", "bpf",
                 "clock_settime", "acct", "swapon", "keyctl", "add_key", "open_by_handle_at"):
        assert not _allowed(plain, name), name
    assert _allowed(plain, "clone", 0x11)              # fork-like clone
    assert not _allowed(plain, "clone", 0x10000000)    # CLONE_NEWUSER
    assert _allowed(plain, "personality", 0x0008)
    assert not _allowed(plain, "personality", 0x0040000)   # ADDR_NO_RANDOMIZE
    clone3 = [r for r in plain["syscalls"] if r["names"] == ["clone3"]]
    assert clone3 == [{"names": ["clone3"], "action": seccomp.ERRNO, "errnoRet": 38}]

    admin = seccomp.runtime_default(DEFAULT_CAPS + ["CAP_SYS_ADMIN"], "x86_64", "6.1.0")
    assert _allowed(admin, "mount") and _allowed(admin, "clone", 0x10000000)
    assert not any(r["names"] == ["clone3"] and r["action"] == seccomp.ERRNO
                   for r in admin["syscalls"])
    no_chroot = [c for c in DEFAULT_CAPS if c != "CAP_SYS_CHROOT"]
    assert not _allowed(seccomp.runtime_default(no_chroot, "x86_64", "6.1.0"), "chroot")
    old = seccomp.runtime_default(DEFAULT_CAPS, "x86_64", "4.4.0")
    assert not _allowed(old, "ptrace")


def test_runtime_default_architectures():
    assert seccomp.runtime_default([], "x86_64")["architectures"] == [
        "SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    arm = seccomp.runtime_default([], "aarch64")
    assert arm["architectures"] == ["SCMP_ARCH_ARM", "SCMP_ARCH_AARCH64"]
    assert _allowed(arm, "set_tls") and not _allowed(arm, "arch_prctl")


def test_safe_groups_do_not_hold_capability_gated_calls():
    safe = {n for group in seccomp.SAFE_GROUPS.values() for n in group}
    gated = {n for names in seccomp.BY_CAPABILITY.values() for n in names}
    assert not safe & gated
    assert len(safe) == sum(len(g) for g in seccomp.SAFE_GROUPS.values())   # no repeats


def test_spec_is_not_shared_between_calls():
    first = apply(container(capabilities=pb.Capability(add_capabilities=["ALL"])))
    second = apply(container())
    assert second["process"]["capabilities"]["bounding"] == DEFAULT_CAPS
    assert first["process"]["capabilities"]["bounding"] == HOST.capabilities
