"""The CRI config as containerd 1.6 shows it in `Status` verbose info (`config`): its Go
struct's JSON names, in its order (tools such as `crictl info` print it)."""
from __future__ import annotations

from .config import CRIConfig, Runtime


def _runtime(r: Runtime) -> dict:
    return {"runtimeType": r.runtime_type, "runtimePath": r.runtime_path,
            "runtimeEngine": r.runtime_engine, "PodAnnotations": r.pod_annotations or None,
            "ContainerAnnotations": r.container_annotations or None,
            "runtimeRoot": r.runtime_root, "options": r.options or None,
            "privileged_without_host_devices": r.privileged_without_host_devices,
            "baseRuntimeSpec": r.base_runtime_spec, "cniConfDir": r.cni_conf_dir,
            "cniMaxConfNum": r.cni_max_conf_num}


def _plain(value):
    """Nested dataclasses/dicts as JSON values, empty maps as null (Go's nil maps)."""
    if hasattr(value, "__dataclass_fields__"):
        return {k: _plain(v) for k, v in vars(value).items()}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()} or None
    return value


def config_json(cfg: CRIConfig, *, root: str, endpoint: str, cri_root: str,
                cri_state: str) -> dict:
    c, n, r = cfg.containerd, cfg.cni, cfg.registry
    return {
        "containerd": {
            "snapshotter": c.snapshotter, "defaultRuntimeName": c.default_runtime_name,
            "defaultRuntime": _runtime(c.default_runtime),
            "untrustedWorkloadRuntime": _runtime(c.untrusted_workload_runtime),
            "runtimes": {name: _runtime(rt) for name, rt in c.runtimes.items()},
            "noPivot": c.no_pivot, "disableSnapshotAnnotations": c.disable_snapshot_annotations,
            "discardUnpackedLayers": c.discard_unpacked_layers,
            "ignoreRdtNotEnabledErrors": c.ignore_rdt_not_enabled_errors},
        "cni": {"binDir": n.bin_dir, "confDir": n.conf_dir, "maxConfNum": n.max_conf_num,
                "confTemplate": n.conf_template, "ipPref": n.ip_pref},
        "registry": {"configPath": r.config_path, "mirrors": _plain(r.mirrors),
                     "configs": _plain(r.configs), "auths": _plain(r.auths),
                     "headers": _plain(r.headers)},
        "imageDecryption": {"keyModel": cfg.image_decryption.key_model},
        "disableTCPService": cfg.disable_tcp_service,
        "streamServerAddress": cfg.stream_server_address,
        "streamServerPort": cfg.stream_server_port,
        "streamIdleTimeout": cfg.stream_idle_timeout,
        "enableSelinux": cfg.enable_selinux,
        "selinuxCategoryRange": cfg.selinux_category_range,
        "sandboxImage": cfg.sandbox_image,
        "statsCollectPeriod": cfg.stats_collect_period,
        "systemdCgroup": cfg.systemd_cgroup,
        "enableTLSStreaming": cfg.enable_tls_streaming,
        "x509KeyPairStreaming": {"tlsCertFile": cfg.x509_key_pair_streaming.tls_cert_file,
                                 "tlsKeyFile": cfg.x509_key_pair_streaming.tls_key_file},
        "maxContainerLogSize": cfg.max_container_log_line_size,
        "disableCgroup": cfg.disable_cgroup,
        "disableApparmor": cfg.disable_apparmor,
        "restrictOOMScoreAdj": cfg.restrict_oom_score_adj,
        "maxConcurrentDownloads": cfg.max_concurrent_downloads,
        "disableProcMount": cfg.disable_proc_mount,
        "unsetSeccompProfile": cfg.unset_seccomp_profile,
        "tolerateMissingHugetlbController": cfg.tolerate_missing_hugetlb_controller,
        "disableHugetlbController": cfg.disable_hugetlb_controller,
        "device_ownership_from_security_context": cfg.device_ownership_from_security_context,
        "ignoreImageDefinedVolumes": cfg.ignore_image_defined_volumes,
        "netnsMountsUnderStateDir": cfg.netns_mounts_under_state_dir,
        "enableUnprivilegedPorts": cfg.enable_unprivileged_ports,
        "enableUnprivilegedICMP": cfg.enable_unprivileged_icmp,
        "containerdRootDir": root,
        "containerdEndpoint": endpoint,
        "rootDir": cri_root,
        "stateDir": cri_state,
    }
