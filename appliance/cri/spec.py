"""OCI runtime specs for CRI sandboxes and containers, as containerd 1.6's CRI builds them:
containerd's default Unix spec (mounts, capabilities, masked and read-only paths), then the
image config, then the CRI config.

The request's security context, sysctls and resources (namespaces, user and groups,
capabilities, paths, seccomp...) are applied to this base by cri.security and cri.resources,
which the sandbox and container services call once the snapshot is there.
"""
from __future__ import annotations

import os
import socket

from ..errdefs import InvalidArgument
from . import resources

# containerd's oci.defaultUnixCaps (0xa80425fb).
DEFAULT_CAPS = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]
DEFAULT_MASKED_PATHS = [
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi",
]
DEFAULT_READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                          "/proc/sysrq-trigger"]
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SANDBOX_CPU_SHARES = 2          # containerd's DefaultSandboxCPUshares
SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"

# annotations (containerd's pkg/cri/annotations)
CONTAINER_TYPE = "io.kubernetes.cri.container-type"
SANDBOX_ID = "io.kubernetes.cri.sandbox-id"
SANDBOX_NAME = "io.kubernetes.cri.sandbox-name"
SANDBOX_NAMESPACE = "io.kubernetes.cri.sandbox-namespace"
SANDBOX_UID = "io.kubernetes.cri.sandbox-uid"
SANDBOX_LOG_DIR = "io.kubernetes.cri.sandbox-log-directory"
CONTAINER_NAME = "io.kubernetes.cri.container-name"
IMAGE_NAME = "io.kubernetes.cri.image-name"

# CRI NamespaceMode / MountPropagation values
POD, CONTAINER, NODE, TARGET = 0, 1, 2, 3
PROPAGATION = {0: "rprivate", 1: "rslave", 2: "rshared"}



def oci_default_spec(cgroups_path: str) -> dict:
    """containerd's populateDefaultUnixSpec (oci.defaultMounts included)."""
    return {
        "ociVersion": "1.0.2-dev",
        "root": {"path": "rootfs"},
        "process": {
            "user": {"uid": 0, "gid": 0}, "cwd": "/", "noNewPrivileges": True,
            "capabilities": {k: list(DEFAULT_CAPS)
                             for k in ("bounding", "permitted", "effective")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        },
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620",
                         "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/run", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        ],
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "cgroupsPath": cgroups_path,
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")],
            "maskedPaths": list(DEFAULT_MASKED_PATHS),
            "readonlyPaths": list(DEFAULT_READONLY_PATHS),
        },
    }


def default_spec(cgroups_path: str) -> dict:
    """The CRI's base: containerd's default spec without /run (WithoutRunMount) and without
    the default rlimits."""
    spec = oci_default_spec(cgroups_path)
    del spec["process"]["rlimits"]
    spec["mounts"] = [m for m in spec["mounts"] if m["destination"] != "/run"]
    return spec


def cgroups_path(parent: str, cid: str) -> str:
    """containerd's getCgroupsPath (the systemd form follows from a parent ending in
    .slice); no parent: the id alone."""
    return resources.cgroups_path(parent, cid) if parent else cid


def _merge_env(base: list[str], extra: list[str]) -> list[str]:
    """Later entries replace earlier ones with the same key, in place (containerd's
    oci.WithEnv)."""
    out = list(base)
    for entry in extra:
        key = entry.split("=", 1)[0]
        for i, old in enumerate(out):
            if old.split("=", 1)[0] == key:
                out[i] = entry
                break
        else:
            out.append(entry)
    return out


def _image_env(image_config: dict) -> list[str]:
    env = list((image_config.get("config") or {}).get("Env") or [])
    if not any(e.startswith("PATH=") for e in env):
        env.insert(0, f"PATH={DEFAULT_PATH}")
    return env


def _user(image_config: dict) -> dict:
    """The image's numeric User ("uid[:gid]"); names are resolved by cri.security."""
    text = (image_config.get("config") or {}).get("User") or ""
    uid, _, gid = text.partition(":")
    out = {"uid": 0, "gid": 0}
    if uid.isdigit():
        out["uid"] = int(uid)
    if gid.isdigit():
        out["gid"] = int(gid)
    return out




def _bind(source: str, destination: str, readonly: bool, propagation: str = "rprivate"):
    return {"destination": destination, "type": "bind", "source": source,
            "options": ["rbind", propagation, "ro" if readonly else "rw"]}


def _ns_modes(linux_config) -> tuple[int, int, int]:
    opts = linux_config.security_context.namespace_options
    return opts.network, opts.pid, opts.ipc


def sandbox_spec(sandbox, image_config: dict, cfg, runtime_opts: dict) -> dict:
    """The pause container's spec. `sandbox` is a cri.store.Sandbox with its files made."""
    config = sandbox.config
    spec = default_spec(cgroups_path(config.linux.cgroup_parent, sandbox.id))
    image = image_config.get("config") or {}
    args = list(image.get("Entrypoint") or []) + list(image.get("Cmd") or [])
    if not args:
        raise InvalidArgument("no command specified")
    process = spec["process"]
    process["args"] = args
    process["env"] = _image_env(image_config)
    process["cwd"] = image.get("WorkingDir") or "/"
    process["user"] = _user(image_config)
    _, _, ipc = _ns_modes(config.linux)
    if config.hostname:   # as containerd, even with the host's network (runc refuses that)
        spec["hostname"] = config.hostname
    # after the default /dev/shm tmpfs, as containerd's (the later mount wins)
    spec["mounts"] += [
        {"destination": "/dev/shm", "type": "bind", "options": ["rbind", "ro"],
         "source": "/dev/shm" if ipc == NODE else sandbox.shm_path},
        {"destination": "/etc/resolv.conf", "type": "bind", "options": ["rbind", "ro"],
         "source": sandbox.resolv_path}]
    spec["linux"]["resources"]["cpu"] = {"shares": SANDBOX_CPU_SHARES}
    spec["annotations"] = sandbox_annotations(sandbox, runtime_opts)
    return spec


def sandbox_annotations(sandbox, runtime_opts: dict) -> dict:
    """The pause container's spec annotations."""
    config = sandbox.config
    return {
        **_passthrough(config.annotations, runtime_opts.get("pod_annotations", [])),
        CONTAINER_TYPE: "sandbox", SANDBOX_ID: sandbox.id,
        SANDBOX_NAME: config.metadata.name, SANDBOX_NAMESPACE: config.metadata.namespace,
        SANDBOX_UID: config.metadata.uid, SANDBOX_LOG_DIR: config.log_directory,
    }


def container_spec(cid: str, sandbox, config, image_config: dict, image_name: str,
                   volumes: dict[str, str], runtime_opts: dict, cfg) -> dict:
    """An application container's spec; `volumes` maps image volume paths to host dirs."""
    spec = default_spec(cgroups_path(sandbox.config.linux.cgroup_parent, cid))
    image = image_config.get("config") or {}
    process = spec["process"]
    if config.command:
        args = list(config.command) + list(config.args)
    elif config.args:
        args = list(image.get("Entrypoint") or []) + list(config.args)
    else:
        args = list(image.get("Entrypoint") or []) + list(image.get("Cmd") or [])
    if not args:
        raise InvalidArgument("no command specified")
    process["args"] = args
    process["cwd"] = config.working_dir or image.get("WorkingDir") or "/"
    process["user"] = _user(image_config)
    process["user"]["additionalGids"] = [process["user"]["gid"]]
    del process["noNewPrivileges"]          # the CRI's WithoutNoNewPrivileges
    if config.tty:
        process["terminal"] = True
    env = _merge_env(_image_env(image_config), [f"HOSTNAME={sandbox.hostname}"])
    process["env"] = _merge_env(env, [f"{kv.key}={kv.value}" for kv in config.envs])
    spec["mounts"].append({"destination": "/sys/fs/cgroup", "type": "cgroup",
                           "source": "cgroup",
                           "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]})
    _add_mounts(spec, sandbox, config, volumes)
    # The pod's namespaces, masked and read-only paths, user and groups, capabilities,
    # seccomp...: cri.security, once the snapshot is there.
    spec["annotations"] = {
        **_passthrough(config.annotations, runtime_opts.get("container_annotations", [])),
        CONTAINER_TYPE: "container", SANDBOX_ID: sandbox.id,
        SANDBOX_NAME: sandbox.config.metadata.name,
        SANDBOX_NAMESPACE: sandbox.config.metadata.namespace,
        SANDBOX_UID: sandbox.config.metadata.uid,
        CONTAINER_NAME: config.metadata.name, IMAGE_NAME: image_name,
    }
    return spec


def _add_mounts(spec: dict, sandbox, config, volumes: dict[str, str]) -> None:
    """The CRI mounts, image volumes and the sandbox's files, as containerd's
    containerMounts + WithMounts: a path the config mounts itself is not added again."""
    readonly_rootfs = config.linux.security_context.readonly_rootfs
    taken = {os.path.normpath(m.container_path) for m in config.mounts}
    extra = []
    for path, source in sorted(volumes.items()):
        if os.path.normpath(path) not in taken:
            extra.append(_bind(source, path, False))
            taken.add(os.path.normpath(path))
    for dest, source in (("/etc/hostname", sandbox.hostname_path),
                         ("/etc/hosts", sandbox.hosts_path),
                         ("/etc/resolv.conf", sandbox.resolv_path)):
        if dest not in taken and os.path.exists(source):
            extra.append(_bind(source, dest, readonly_rootfs))
    if "/dev/shm" not in taken:
        ipc = sandbox.config.linux.security_context.namespace_options.ipc
        extra.append(_bind("/dev/shm" if ipc == NODE else sandbox.shm_path, "/dev/shm", False))
    for m in config.mounts:
        source = m.host_path
        if not os.path.exists(source):   # containerd creates a missing host dir
            os.makedirs(source, exist_ok=True)
        source = os.path.realpath(source)
        propagation = PROPAGATION.get(m.propagation, "rprivate")
        if propagation == "rshared":
            spec["linux"]["rootfsPropagation"] = "rshared"
        elif propagation == "rslave" and spec["linux"].get("rootfsPropagation") != "rshared":
            spec["linux"]["rootfsPropagation"] = "rslave"
        extra.append(_bind(source, m.container_path, m.readonly, propagation))
    destinations = {m["destination"] for m in extra}
    base = [m for m in spec["mounts"] if m["destination"] not in destinations]
    # parents before children (containerd sorts by path depth)
    extra.sort(key=lambda m: len([p for p in m["destination"].split("/") if p]))
    spec["mounts"] = base + extra


def _passthrough(annotations, patterns: list[str]) -> dict:
    import fnmatch
    return {k: v for k, v in annotations.items()
            if any(fnmatch.fnmatchcase(k, p) for p in patterns)}


def host_hostname() -> str:
    return socket.gethostname()


def resolv_conf(dns) -> str | None:
    """containerd's parseDNSOptions; None when the pod gives no DNS config (copy the host's)."""
    if not (dns.servers or dns.searches or dns.options):
        return None
    text = ""
    if dns.searches:
        text += f"search {' '.join(dns.searches)}\n"
    if dns.servers:
        text += "".join(f"nameserver {s}\n" for s in dns.servers)
    if dns.options:
        text += f"options {' '.join(dns.options)}\n"
    return text
