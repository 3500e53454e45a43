"""Daemon surroundings, the pure parts: timeouts, listener helpers, metric names, cgroup mount
parsing."""
import grpc
import pytest

from appliance.process import listeners, metrics, settings
from appliance.config import Config


def test_timeouts_come_from_config_with_containerd_defaults():
    cfg = Config()
    assert cfg.timeout("io.containerd.timeout.shim.shutdown") == 3.0
    assert cfg.timeout("io.containerd.timeout.task.state") == 2.0
    cfg.timeouts["io.containerd.timeout.shim.load"] = "1m30s"
    assert cfg.timeout("io.containerd.timeout.shim.load") == 90.0
    assert cfg.timeout("io.containerd.timeout.unknown") == 0.0


def test_split_host_port():
    assert listeners.split_host_port("127.0.0.1:1234") == ("127.0.0.1", 1234)
    assert listeners.split_host_port("[::1]:80") == ("::1", 80)
    assert listeners.split_host_port(":9") == ("", 9)
    with pytest.raises(listeners.ListenerError, match="missing port in address"):
        listeners.split_host_port("localhost")


def test_credentials_need_cert_and_key(tmp_path):
    with pytest.raises(listeners.ListenerError, match="must be set together"):
        listeners.server_tls_context(str(tmp_path / "cert.pem"), "")


def test_go_code_names():
    assert metrics.go_code_name(grpc.StatusCode.OK) == "OK"
    assert metrics.go_code_name(grpc.StatusCode.CANCELLED) == "Canceled"
    assert metrics.go_code_name(grpc.StatusCode.NOT_FOUND) == "NotFound"
    assert metrics.go_code_name(grpc.StatusCode.DEADLINE_EXCEEDED) == "DeadlineExceeded"


def test_metrics_are_noops_until_enabled():
    m = metrics.counter("test_only_total", "a counter nobody scrapes", ("a",))
    if not m.enabled:  # this process may have enabled metrics in another test
        m.labels("x").inc()
        m.inc()
        with metrics.UNPACK_DURATION.time():
            pass
        assert metrics.scrape() == b""


def test_v1_hierarchies_from_mountinfo(tmp_path):
    info = tmp_path / "mountinfo"
    info.write_text(
        "30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755\n"
        "31 30 0:27 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset\n"
        "32 30 0:28 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
        "33 30 0:29 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd\n")
    assert settings._v1_hierarchies(str(info)) == [
        ("/sys/fs/cgroup/cpuset", "rw,cpuset"), ("/sys/fs/cgroup/systemd", "rw,xattr,name=systemd")]
