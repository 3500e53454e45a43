"""`[plugins."io.containerd.grpc.v1.cri"]`: containerd 1.6's key names and defaults.

Keys for the parts of the CRI not built yet (pods, containers, CNI) are listed so
that `config default` reads as containerd's and existing configs load; the image half uses
`sandbox_image`, `max_concurrent_downloads`, `image_pull_progress_timeout` (containerd 1.7),
`containerd.snapshotter`, `containerd.discard_unpacked_layers` and `registry`.

Each dataclass has a docstring and real (not postponed) annotations: dataclass() then skips
building a signature for __doc__ and evaluating strings, ≈ 20 % of this module's import and
decoding, which every start pays (bench/NOTES.md, boot).
"""
from dataclasses import dataclass, field


@dataclass
class Runtime:
    """A runtime handler: `containerd.runtimes.<name>` (and the default/untrusted ones)."""

    base_runtime_spec: str = ""
    cni_conf_dir: str = ""
    cni_max_conf_num: int = 0
    container_annotations: list[str] = field(default_factory=list)
    pod_annotations: list[str] = field(default_factory=list)
    privileged_without_host_devices: bool = False
    runtime_engine: str = ""
    runtime_path: str = ""
    runtime_root: str = ""
    runtime_type: str = ""
    options: dict = field(default_factory=dict)


def _runc() -> dict[str, Runtime]:
    return {"runc": Runtime(runtime_type="io.containerd.runc.v2", options={
        "BinaryName": "", "CriuImagePath": "", "CriuPath": "", "CriuWorkPath": "", "IoGid": 0,
        "IoUid": 0, "NoNewKeyring": False, "NoPivotRoot": False, "Root": "", "ShimCgroup": "",
        "SystemdCgroup": False})}


@dataclass
class ContainerdSection:
    """`containerd`: the default snapshotter and the runtime handlers."""

    default_runtime_name: str = "runc"
    disable_snapshot_annotations: bool = True
    discard_unpacked_layers: bool = False
    ignore_rdt_not_enabled_errors: bool = False
    no_pivot: bool = False
    snapshotter: str = "overlayfs"
    default_runtime: Runtime = field(default_factory=Runtime)
    runtimes: dict[str, Runtime] = field(default_factory=_runc)
    untrusted_workload_runtime: Runtime = field(default_factory=Runtime)


@dataclass
class CNI:
    """`cni`: where the CNI plugins and network configs are."""

    bin_dir: str = "/opt/cni/bin"
    conf_dir: str = "/etc/cni/net.d"
    conf_template: str = ""
    ip_pref: str = ""
    max_conf_num: int = 1


@dataclass
class Mirror:
    """`registry.mirrors.<host>` (deprecated in 1.6, honoured)."""

    endpoint: list[str] = field(default_factory=list)


@dataclass
class AuthConfig:
    """`registry.configs.<host>.auth` and `registry.auths.<host>`."""

    username: str = ""
    password: str = ""
    auth: str = ""
    identitytoken: str = ""


@dataclass
class TLSConfig:
    """`registry.configs.<host>.tls`."""

    insecure_skip_verify: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""


@dataclass
class RegistryConfig:
    """`registry.configs.<host>`."""

    auth: AuthConfig = field(default_factory=AuthConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)


@dataclass
class Registry:
    """`registry`: hosts.toml directory, credentials, headers, mirrors."""

    config_path: str = ""
    auths: dict[str, AuthConfig] = field(default_factory=dict)       # deprecated in 1.6
    configs: dict[str, RegistryConfig] = field(default_factory=dict)  # auth deprecated, honoured
    headers: dict[str, list[str]] = field(default_factory=dict)
    mirrors: dict[str, Mirror] = field(default_factory=dict)          # deprecated, honoured


@dataclass
class ImageDecryption:
    """`image_decryption`."""

    key_model: str = "node"


@dataclass
class KeyPair:
    """`x509_key_pair_streaming`."""

    tls_cert_file: str = ""
    tls_key_file: str = ""


@dataclass
class CRIConfig:
    """The CRI plugin's section, `[plugins."io.containerd.grpc.v1.cri"]`."""

    device_ownership_from_security_context: bool = False
    disable_apparmor: bool = False
    disable_cgroup: bool = False
    disable_hugetlb_controller: bool = True
    disable_proc_mount: bool = False
    disable_tcp_service: bool = True
    enable_selinux: bool = False
    enable_tls_streaming: bool = False
    enable_unprivileged_icmp: bool = False
    enable_unprivileged_ports: bool = False
    ignore_image_defined_volumes: bool = False
    image_pull_progress_timeout: str = "5m0s"     # containerd 1.7
    max_concurrent_downloads: int = 3
    max_container_log_line_size: int = 16384
    netns_mounts_under_state_dir: bool = False
    restrict_oom_score_adj: bool = False
    sandbox_image: str = "registry.k8s.io/pause:3.6"
    selinux_category_range: int = 1024
    stats_collect_period: int = 10
    stream_idle_timeout: str = "4h0m0s"
    stream_server_address: str = "127.0.0.1"
    stream_server_port: str = "0"
    systemd_cgroup: bool = False
    tolerate_missing_hugetlb_controller: bool = True
    unset_seccomp_profile: str = ""
    cni: CNI = field(default_factory=CNI)
    containerd: ContainerdSection = field(default_factory=ContainerdSection)
    image_decryption: ImageDecryption = field(default_factory=ImageDecryption)
    registry: Registry = field(default_factory=Registry)
    x509_key_pair_streaming: KeyPair = field(default_factory=KeyPair)
