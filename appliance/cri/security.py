"""Security contexts of CRI pods and containers, applied to an OCI spec dict as containerd 1.6.20
applies them (pkg/cri/server/{sandbox_run,container_create}_linux.go, observed in DESIGN D3).

The spec builder makes the base spec (default mounts, capabilities, namespaces) and calls:
  apply_pod_security        for the sandbox (pause) container,
  apply_container_security  for an app container (user, groups, capabilities, privileged,
                            read-only rootfs, no_new_privs, masked/read-only paths, devices,
                            namespaces, SELinux, AppArmor, OOM score, seccomp last: the
                            RuntimeDefault profile depends on the final capability set),
  apply_sysctls             for the pod's sysctls.
Refusals raise errdefs errors whose text is containerd's whole message where containerd
refuses too (it answers UNKNOWN); INVALID_ARGUMENT where only we refuse (README's intended
differences: unknown capabilities, sysctls outside the pod's namespaces).
"""
from __future__ import annotations

import logging
import os
import re
import secrets

from ..errdefs import ApplianceError, InvalidArgument
from . import apparmor, devices, seccomp
from .host import CAPABILITIES, Host
from .spec import CONTAINER, NODE, TARGET

log = logging.getLogger(__name__)

# runtime.v1 enums (kept numeric so that this module needs no generated stubs).
RUNTIME_DEFAULT, UNCONFINED, LOCALHOST = 0, 1, 2

DEFAULT_SANDBOX_OOM_SCORE_ADJ = -998    # kubelet's PodInfraOOMAdj
LOCALHOST_PREFIX = "localhost/"
SELINUX_LEVEL = re.compile(r"^s\d(-s\d)??(:c\d{1,4}(\.c\d{1,4})?(,c\d{1,4}(\.c\d{1,4})?)*)?$")


class _Profile:
    """A CRI SecurityProfile, from the message or from a deprecated string field."""

    def __init__(self, kind: int, ref: str = ""):
        self.kind, self.ref = kind, ref


def _profile_from_string(text: str) -> _Profile:
    if text in ("runtime/default", "docker/default", ""):
        return _Profile(RUNTIME_DEFAULT)
    if text == "unconfined":
        return _Profile(UNCONFINED)
    if not text.startswith(LOCALHOST_PREFIX):
        raise ValueError(f'invalid profile "{text}"')
    return _Profile(LOCALHOST, text[len(LOCALHOST_PREFIX):])


def _seccomp_request(sc, cfg) -> _Profile | None:
    if sc.HasField("seccomp"):
        return _Profile(sc.seccomp.profile_type, sc.seccomp.localhost_ref)
    path = sc.seccomp_profile_path or cfg.unset_seccomp_profile
    return _profile_from_string(path) if path else None


def _apparmor_request(sc) -> _Profile | None:
    if sc.HasField("apparmor"):
        return _Profile(sc.apparmor.profile_type, sc.apparmor.localhost_ref)
    return _profile_from_string(sc.apparmor_profile) if sc.apparmor_profile else None


# --- users and groups (the image's /etc/passwd and /etc/group under the rootfs) ---

def _entries(rootfs: str, name: str) -> list[list[str]] | None:
    """Colon-separated lines of rootfs/etc/<name>; None when the file is missing. Symlinks
    are resolved inside the rootfs, never on the host."""
    if not rootfs:
        return None
    path = in_root(rootfs, f"/etc/{name}")
    try:
        with open(path, errors="replace") as f:
            return [line.rstrip("\n").split(":") for line in f
                    if line.strip() and not line.startswith("#")]
    except FileNotFoundError:
        return None


def in_root(rootfs: str, path: str) -> str:
    """`path` as seen from inside rootfs: symlinks (absolute ones too) and ".." stay in it."""
    current, parts, hops = rootfs, [p for p in path.split("/") if p], 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            current = current if current == rootfs else os.path.dirname(current)
            continue
        candidate = os.path.join(current, part)
        if os.path.islink(candidate) and hops < 40:
            hops += 1
            target = os.readlink(candidate)
            current = rootfs if target.startswith("/") else current
            parts[:0] = [p for p in target.split("/") if p and p != "."]
            continue
        current = candidate
    return current


def _passwd(rootfs: str) -> list[tuple[str, int, int]] | None:
    rows = _entries(rootfs, "passwd")
    if rows is None:
        return None
    users = []
    for row in rows:
        if len(row) >= 4 and row[2].isdigit() and row[3].isdigit():
            users.append((row[0], int(row[2]), int(row[3])))
    return users


def _groups(rootfs: str) -> list[tuple[str, int, list[str]]] | None:
    rows = _entries(rootfs, "group")
    if rows is None:
        return None
    return [(row[0], int(row[2]), [m for m in row[3].split(",") if m] if len(row) > 3 else [])
            for row in rows if len(row) >= 3 and row[2].isdigit()]


def _as_id(text: str) -> int | None:
    return int(text) if text.isdigit() and int(text) <= 0x7FFFFFFF else None


def resolve_user(userstr: str, rootfs: str) -> tuple[int, int]:
    """uid and gid for an OCI image USER string: user, uid, user:group, uid:gid, ..."""
    parts = userstr.split(":")
    if len(parts) > 2:
        raise ApplianceError(f"invalid USER value {userstr}")
    uid = _as_id(parts[0])
    if len(parts) == 1 and uid is not None:
        # A uid: its passwd entry gives the primary group, else group 0.
        match = [u for u in _passwd(rootfs) or [] if u[1] == uid]
        return (uid, match[0][2]) if match else (uid, 0)
    gid = _as_id(parts[1]) if len(parts) == 2 else None
    if len(parts) == 2 and uid is not None and gid is not None:
        return uid, gid
    if uid is None:
        match = [u for u in _passwd(rootfs) or [] if u[0] == parts[0]]
        if not match:
            raise ApplianceError("no users found")
        uid = match[0][1]
        if len(parts) == 1:
            return uid, match[0][2]
    if gid is None:
        match = [g for g in _groups(rootfs) or [] if g[0] == parts[1]]
        if not match:
            raise ApplianceError("no groups found")
        gid = match[0][1]
    return uid, gid


def _member_gids(userstr: str, rootfs: str) -> list[int]:
    """Groups of /etc/group that list the user as a member (its own-named group excluded)."""
    name = userstr
    if userstr.isdigit():
        match = [u for u in _passwd(rootfs) or [] if u[1] == int(userstr)]
        if not match:
            return []
        name = match[0][0]
    return [gid for group, gid, members in _groups(rootfs) or []
            if group != name and name in members]


def _user_string(username: str, uid, gid) -> str:
    user = username or (str(uid) if uid is not None else "")
    group = str(gid) if gid is not None else ""
    if not user:
        if group:
            raise ValueError(f'user group "{group}" is specified without user')
        return ""
    return f"{user}:{group}" if group else user


def _opt_value(message, name):
    return getattr(message, name).value if message.HasField(name) else None


def _set_user(spec: dict, userstr: str, rootfs: str) -> None:
    user = spec.setdefault("process", {}).setdefault("user", {"uid": 0, "gid": 0})
    user["uid"], user["gid"] = resolve_user(userstr, rootfs)
    user["additionalGids"] = [user["gid"]]


def _merge_gids(user: dict, gids) -> None:
    user["additionalGids"] = sorted(set(user.get("additionalGids") or []) | set(gids))


def _ensure_primary_gid(user: dict) -> None:
    gids = user.get("additionalGids") or []
    if user.get("gid", 0) not in gids:
        user["additionalGids"] = [user.get("gid", 0)] + gids


# --- capabilities ---

_CAP_SETS = ("bounding", "effective", "permitted")


def _capability_names(requested) -> list[str]:
    names = []
    for name in requested:
        if name.upper() == "ALL":
            continue
        full = "CAP_" + name.upper()
        if full not in CAPABILITIES:
            raise InvalidArgument(f'unknown capability "{name}": the names of '
                                  f'capabilities(7) without "CAP_" (e.g. "NET_ADMIN"), or "ALL"')
        names.append(full)
    return names


def apply_capabilities(spec: dict, capability, all_caps: list[str]) -> None:
    """add/drop with ALL: add ALL gives all_caps, drop ALL empties the sets, and the named ones
    are then added/dropped, so add [ALL] drop [CHOWN] is everything but CAP_CHOWN."""
    add, drop = list(capability.add_capabilities), list(capability.drop_capabilities)
    added, dropped = _capability_names(add), _capability_names(drop)
    caps = spec.setdefault("process", {}).setdefault("capabilities", {})
    if any(c.upper() == "ALL" for c in add):
        for key in _CAP_SETS:
            caps[key] = list(all_caps)
    if any(c.upper() == "ALL" for c in drop):
        for key in _CAP_SETS:
            caps[key] = []
    for key in _CAP_SETS:
        current = caps.get(key) or []
        current += [c for c in added if c not in current]
        caps[key] = [c for c in current if c not in dropped]


# --- namespaces ---

def _set_namespace(spec: dict, kind: str, path: str | None = None) -> None:
    entry = {"type": kind, **({"path": path} if path else {})}
    namespaces = spec.setdefault("linux", {}).setdefault("namespaces", [])
    for i, ns in enumerate(namespaces):
        if ns["type"] == kind:
            namespaces[i] = entry
            return
    namespaces.append(entry)


def _drop_namespace(spec: dict, kind: str) -> None:
    linux = spec.setdefault("linux", {})
    linux["namespaces"] = [ns for ns in linux.get("namespaces", []) if ns["type"] != kind]


# --- SELinux, AppArmor, seccomp ---

def _mcs_level(categories: int) -> str:
    """A level of two distinct random categories below selinux_category_range, which keeps
    one pod's files from another's."""
    first, second = sorted(secrets.SystemRandom().sample(range(max(categories, 2)), 2))
    return f"s0:c{first},c{second}"


def selinux_labels(options, host: Host, cfg, inherited: str = "") -> tuple[str, str]:
    """(process label, mount label). The level's format is checked whatever the host. Only
    where the host runs SELinux and enable_selinux is set: the options over the container
    defaults (system_u:system_r:container_t), the level given or a new MCS level; without
    options a container takes `inherited` (its pod's process label)."""
    if options is not None and options.level and not SELINUX_LEVEL.match(options.level):
        raise ValueError(f"the format of 'level' \"{options.level}\" is not correct")
    if not (host.selinux and cfg.enable_selinux):
        return "", ""
    if options is None and inherited:
        user, role, kind, level = inherited.split(":", 3)
    else:
        user = options.user if options is not None and options.user else "system_u"
        role = options.role if options is not None and options.role else "system_r"
        kind = options.type if options is not None and options.type else "container_t"
        level = (options.level if options is not None and options.level
                 else _mcs_level(cfg.selinux_category_range))
    return f"{user}:{role}:{kind}:{level}", f"{user}:object_r:container_file_t:{level}"


def _apply_seccomp(spec: dict, profile: _Profile | None, privileged: bool, host: Host) -> None:
    linux = spec.setdefault("linux", {})
    linux.pop("seccomp", None)
    if privileged:
        return
    if not host.seccomp:
        if profile and profile.kind != UNCONFINED:
            raise ValueError("seccomp is not supported")
        return
    if profile is None or profile.kind == UNCONFINED:
        if profile and profile.ref:
            raise ValueError("seccomp config invalid LocalhostRef must only be set if "
                             "ProfileType is Localhost")
        return
    if profile.kind != LOCALHOST and profile.ref:
        raise ValueError("seccomp config invalid LocalhostRef must only be set if ProfileType "
                         "is Localhost")
    if profile.kind == RUNTIME_DEFAULT:
        bounding = spec.get("process", {}).get("capabilities", {}).get("bounding") or []
        linux["seccomp"] = seccomp.runtime_default(bounding, host.machine, host.kernel)
    elif profile.kind == LOCALHOST:
        linux["seccomp"] = seccomp.load_localhost(profile.ref.removeprefix(LOCALHOST_PREFIX))
    else:
        raise ValueError("seccomp unknown ProfileType")


def _apply_apparmor(spec: dict, profile: _Profile | None, privileged: bool, host: Host) -> None:
    process = spec.setdefault("process", {})
    process.pop("apparmorProfile", None)
    if not host.apparmor:
        if profile and profile.kind != UNCONFINED:
            raise ValueError("apparmor is not supported")
        log.debug("AppArmor is not enabled on this host: containers run without a profile")
        return
    profile = profile or _Profile(RUNTIME_DEFAULT)
    if profile.kind != LOCALHOST and profile.ref:
        raise ValueError("apparmor config invalid LocalhostRef must only be set if ProfileType "
                         "is Localhost")
    if profile.kind == UNCONFINED or (profile.kind == RUNTIME_DEFAULT and privileged):
        return
    if profile.kind == RUNTIME_DEFAULT:
        apparmor.ensure_default()       # our own profile, loaded on first use
        process["apparmorProfile"] = apparmor.NAME
        return
    if profile.kind != LOCALHOST:
        raise ValueError("apparmor unknown ProfileType")
    name = profile.ref.removeprefix(LOCALHOST_PREFIX)
    if not name:
        raise ValueError("failed to generate apparmor spec opts: nil apparmor profile is not "
                         "supported")
    if not apparmor.loaded(name):
        raise ValueError(f"apparmor profile not found {name}")
    process["apparmorProfile"] = name


def _restricted_oom(adj: int, restrict: bool, host: Host) -> int:
    return max(adj, host.oom_score_adj) if restrict else adj


# --- the two entry points ---

def apply_pod_security(spec: dict, pod, cfg, *, host: Host | None = None,
                       netns_path: str = "", image_config: dict | None = None,
                       rootfs: str = "") -> None:
    """The sandbox (pause) container: namespaces, user, supplemental groups, SELinux, seccomp,
    OOM score. Its rootfs is read-only and its capabilities are the defaults, as containerd's.
    `rootfs`: the pause image's mounted rootfs, where a uid's primary group is looked up."""
    host = host or Host.probe()
    sc = pod.linux.security_context
    ns = sc.namespace_options
    if ns.network == NODE:
        _drop_namespace(spec, "network")
        _drop_namespace(spec, "uts")
    else:
        _set_namespace(spec, "network", netns_path)
    if ns.pid == NODE:
        _drop_namespace(spec, "pid")
    if ns.ipc == NODE:
        _drop_namespace(spec, "ipc")
    spec.setdefault("root", {})["readonly"] = True

    process = spec.setdefault("process", {})
    user = process.setdefault("user", {"uid": 0, "gid": 0})
    if sc.supplemental_groups:
        _merge_gids(user, sc.supplemental_groups)
    try:
        process_label, mount_label = ("", "") if sc.privileged else selinux_labels(
            sc.selinux_options if sc.HasField("selinux_options") else None, host, cfg)
    except ValueError as exc:
        raise ApplianceError(f"failed to generate sandbox container spec: failed to init "
                             f"selinux options: {exc}") from None
    _set_labels(spec, process_label, mount_label)
    process["oomScoreAdj"] = _restricted_oom(DEFAULT_SANDBOX_OOM_SCORE_ADJ,
                                             cfg.restrict_oom_score_adj, host)
    prefix = "failed to generate sanbdox container spec options: "  # containerd's spelling
    try:
        profile = _seccomp_request(sc, cfg)
        _apply_seccomp(spec, profile, sc.privileged, host)
    except ValueError as exc:
        raise ApplianceError(f"{prefix}failed to generate seccomp spec opts: {exc}") from None
    except ApplianceError as exc:   # a Localhost profile that cannot be read
        raise ApplianceError(f"failed to create containerd container: {exc}") from None
    try:
        userstr = _user_string("", _opt_value(sc, "run_as_user"), _opt_value(sc, "run_as_group"))
    except ValueError as exc:
        raise ApplianceError(f"{prefix}failed to generate user string: {exc}") from None
    userstr = userstr or (image_config or {}).get("User", "")
    if userstr:
        try:
            _set_user(spec, userstr, rootfs)
        except ApplianceError as exc:
            raise ApplianceError(f"failed to create containerd container: mount callback "
                                 f"failed on {rootfs}: {exc}") from None


def pod_needs_rootfs(pod, image_config: dict | None) -> bool:
    """Whether the sandbox's user needs the pause image's passwd/group files: a uid alone
    (its primary group) or a name; "uid:gid" and no user at all do not."""
    sc = pod.linux.security_context
    user = str(sc.run_as_user.value) if sc.HasField("run_as_user") else ""
    if user and sc.HasField("run_as_group"):
        return False
    user = user or (image_config or {}).get("User", "")
    parts = user.split(":")
    return bool(user) and not (len(parts) == 2 and all(p.isdigit() for p in parts))


def _set_labels(spec: dict, process_label: str, mount_label: str) -> None:
    process, linux = spec.setdefault("process", {}), spec.setdefault("linux", {})
    process.pop("selinuxLabel", None)
    linux.pop("mountLabel", None)
    if process_label:
        process["selinuxLabel"] = process_label
    if mount_label:
        linux["mountLabel"] = mount_label


def apply_container_security(spec: dict, container, pod, image_config: dict, rootfs: str,
                             cfg, *, host: Host | None = None, container_id: str = "",
                             sandbox_pid: int = 0, target_pid: int | None = None,
                             privileged_without_host_devices: bool = False,
                             pod_label: str = "") -> None:
    """An app container's security context on the base spec. `rootfs`: the mounted rootfs,
    for users and groups; `target_pid`: the pid of the container a TARGET pid namespace
    names (the caller looks it up and refuses an unknown one); `pod_label`: the sandbox's
    SELinux process label, for a container that asks for none."""
    host = host or Host.probe()
    sc = container.linux.security_context
    pod_sc = pod.linux.security_context
    process = spec.setdefault("process", {})
    spec.setdefault("linux", {})
    process.pop("noNewPrivileges", None)
    try:
        _apply_spec_settings(spec, container, pod_sc, sc, cfg, host, sandbox_pid, target_pid,
                             privileged_without_host_devices, pod_label)
    except ValueError as exc:
        raise ApplianceError(f'failed to generate container "{container_id}" spec: '
                             f'{exc}') from None

    # The user and groups: containerd sets these from the image's files after the spec.
    try:
        userstr = _user_string(sc.run_as_username, _opt_value(sc, "run_as_user"),
                               _opt_value(sc, "run_as_group"))
    except ValueError as exc:
        raise ApplianceError(f"failed to get container spec opts: failed to generate user "
                             f"string: {exc}") from None
    userstr = userstr or (image_config or {}).get("User", "")
    user = process.setdefault("user", {"uid": 0, "gid": 0})
    try:
        if userstr:
            _set_user(spec, userstr, rootfs)
            user = process["user"]
        # Even without run_as_user, uid 0's groups are looked up (as containerd does).
        member_of = sc.run_as_username or str(_opt_value(sc, "run_as_user") or 0)
        before = list(user.get("additionalGids") or [])
        user["additionalGids"] = _member_gids(member_of, rootfs)
        _ensure_primary_gid(user)
        _merge_gids(user, before)
        _merge_gids(user, sc.supplemental_groups)
    except ApplianceError as exc:
        # containerd reads the files in a temporary mount of the rootfs and names it.
        raise ApplianceError(f"failed to create containerd container: mount callback failed "
                             f"on {rootfs}: {exc}") from None

    try:
        _apply_apparmor(spec, _apparmor_request(sc), sc.privileged, host)
    except ValueError as exc:
        raise ApplianceError(f"failed to get container spec opts: failed to generate apparmor "
                             f"spec opts: {exc}") from None
    try:
        _apply_seccomp(spec, _seccomp_request(sc, cfg), sc.privileged, host)
    except ValueError as exc:
        raise ApplianceError(f"failed to get container spec opts: failed to generate seccomp "
                             f"spec opts: {exc}") from None
    except ApplianceError as exc:   # a Localhost profile that cannot be read
        raise ApplianceError(f"failed to create containerd container: {exc}") from None


def _apply_spec_settings(spec, container, pod_sc, sc, cfg, host, sandbox_pid, target_pid,
                         privileged_without_host_devices, pod_label) -> None:
    process, linux = spec["process"], spec["linux"]
    labels = selinux_labels(sc.selinux_options if sc.HasField("selinux_options") else None,
                            host, cfg, pod_label)
    if not cfg.disable_proc_mount:
        # The request's paths replace the defaults; none asked for, none set (containerd #5029).
        for key, paths in (("maskedPaths", sc.masked_paths),
                           ("readonlyPaths", sc.readonly_paths)):
            linux.pop(key, None)
            if paths:
                linux[key] = list(paths)
    owner = None
    if cfg.device_ownership_from_security_context:
        owner = (_opt_value(sc, "run_as_user") or 0, _opt_value(sc, "run_as_group") or 0)
    devices.add_request_devices(spec, container.devices, owner)
    if sc.HasField("capabilities"):
        apply_capabilities(spec, sc.capabilities, host.capabilities)
    if sc.privileged:
        if not pod_sc.privileged:
            raise ValueError("no privileged container allowed in sandbox")
        _make_privileged(spec, host)
        if not privileged_without_host_devices:
            devices.add_host_devices(spec)
        labels = ("", "")
    process.setdefault("capabilities", {}).pop("ambient", None)
    _set_labels(spec, *labels)
    if sc.no_new_privs:
        process["noNewPrivileges"] = True
    if sc.readonly_rootfs:
        spec.setdefault("root", {})["readonly"] = True

    resources = container.linux.resources if container.linux.HasField("resources") else None
    if resources is not None:
        process["oomScoreAdj"] = _restricted_oom(resources.oom_score_adj,
                                                 cfg.restrict_oom_score_adj, host)
    ns = sc.namespace_options
    for kind in ("network", "ipc", "uts"):
        _set_namespace(spec, kind, f"/proc/{sandbox_pid}/ns/{_NS_FILE[kind]}")
    if ns.pid != CONTAINER:
        pid = target_pid if ns.pid == TARGET and target_pid is not None else sandbox_pid
        _set_namespace(spec, "pid", f"/proc/{pid}/ns/pid")
    if host.cgroup_v2 and not sc.privileged:
        _set_namespace(spec, "cgroup")


_NS_FILE = {"network": "net", "ipc": "ipc", "uts": "uts"}


def _make_privileged(spec: dict, host: Host) -> None:
    """All of the daemon's capabilities, no masked or read-only paths, writable sysfs and
    cgroupfs, no SELinux/AppArmor/seccomp confinement."""
    caps = spec["process"].setdefault("capabilities", {})
    for key in _CAP_SETS:
        caps[key] = list(host.capabilities)
    linux = spec["linux"]
    linux.pop("maskedPaths", None)
    linux.pop("readonlyPaths", None)
    for mount in spec.get("mounts", []):
        if mount.get("type") in ("sysfs", "cgroup"):
            mount["options"] = ["rw" if o == "ro" else o for o in mount.get("options", [])]
    spec["process"].pop("apparmorProfile", None)
    linux.pop("seccomp", None)


# --- sysctls ---

IPC_SYSCTLS = {"kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem",
               "kernel.shmall", "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced"}


def check_sysctl(name: str, pod) -> None:
    """A sysctl must belong to a namespace the pod has of its own: IPC ones (kernel.shm*,
    kernel.msg*, kernel.sem, fs.mqueue.*) need a private IPC namespace, net.* and
    kernel.domainname a private network (and so UTS) namespace; the others act on the whole
    host and are refused. runc's words, said before anything is created."""
    ns = pod.linux.security_context.namespace_options
    if name in IPC_SYSCTLS or name.startswith("fs.mqueue."):
        if ns.ipc == NODE:
            raise InvalidArgument(f'sysctl "{name}" not allowed in host IPC namespace')
        return
    if name.startswith("net.") or name == "kernel.domainname":
        if ns.network == NODE:
            kind = "network" if name.startswith("net.") else "UTS"
            raise InvalidArgument(f'sysctl "{name}" not allowed in host {kind} namespace')
        return
    raise InvalidArgument(f'sysctl "{name}" is not in a separate kernel namespace: only '
                          f'net.*, kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.* and '
                          f'kernel.domainname can be set for a pod')


def apply_sysctls(spec: dict, sysctls: dict, pod, cfg=None) -> None:
    """The pod's sysctls on the sandbox spec, with containerd's unprivileged ports and ICMP
    defaults for pods with their own network namespace."""
    sysctls = dict(sysctls)
    for name in sysctls:
        check_sysctl(name, pod)
    if cfg is not None and pod.linux.security_context.namespace_options.network != NODE:
        if cfg.enable_unprivileged_ports:
            sysctls.setdefault("net.ipv4.ip_unprivileged_port_start", "0")
        if cfg.enable_unprivileged_icmp:
            sysctls.setdefault("net.ipv4.ping_group_range", "0 2147483647")
    if sysctls:
        spec.setdefault("linux", {}).setdefault("sysctl", {}).update(sysctls)
