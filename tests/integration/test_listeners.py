"""Listeners: TCP gRPC with TLS/mTLS, metrics, debug endpoint, oom_score, cgroup.path,
and one-line start-up errors for listeners."""
import json
import os
import re
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from google.protobuf import empty_pb2
from prometheus_client.parser import text_string_to_metric_families

from appliance._proto.containerd.api.services.version.v1 import version_pb2_grpc
from daemon import CTR, Daemon

pytestmark = pytest.mark.integration
NOGROUP = 65534


def bound_port(d: Daemon, what: str) -> int:
    """The port a daemon configured with port 0 bound, from its log."""
    return int(re.search(rf"serving {what} on 127\.0\.0\.1:(\d+)", d.log()).group(1))


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)


def make_ca(directory: Path, name: str):
    key, pem = directory / f"{name}.key", directory / f"{name}.pem"
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", key, "-out", pem, "-days", "2", "-subj", f"/CN={name}")
    return key, pem


def make_cert(directory: Path, name: str, ca, san=None):
    key, csr, pem = (directory / f"{name}.{x}" for x in ("key", "csr", "pem"))
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", key, "-out", csr, "-subj", f"/CN={name}")
    extra = []
    if san:
        ext = directory / f"{name}.ext"
        ext.write_text(f"subjectAltName={san}\n")
        extra = ["-extfile", ext]
    openssl("x509", "-req", "-in", csr, "-CA", ca[1], "-CAkey", ca[0], "-CAcreateserial",
            "-out", pem, "-days", "2", *extra)
    return key, pem


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca, foreign = make_ca(d, "ca"), make_ca(d, "foreign-ca")
    return {"dir": d, "ca": ca, "foreign": foreign,
            "server": make_cert(d, "server", ca, "DNS:localhost,IP:127.0.0.1"),
            "client": make_cert(d, "client", ca),
            "stranger": make_cert(d, "stranger", foreign)}


def write_config(d: Daemon, text: str) -> str:
    d.workdir.mkdir(parents=True, exist_ok=True)
    path = d.workdir / "config.toml"
    path.write_text("version = 2\n" + text)
    return str(path)


def scrape(port: int) -> dict:
    """{(name, labels-tuple): value} of every sample, parsed by prometheus_client."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/metrics", timeout=10) as r:
        text = r.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def handled(samples, method, code="OK"):
    return samples.get(("grpc_server_handled_total", (
        ("grpc_code", code), ("grpc_method", method),
        ("grpc_service", f"containerd.services.{'version.v1.Version' if method == 'Version' else 'namespaces.v1.Namespaces'}"),
        ("grpc_type", "unary"))), 0)


@pytest.fixture(scope="module")
def full(pki):
    """One daemon with mTLS over TCP, metrics with histograms, a debug socket, oom_score."""
    d = Daemon()
    d.config = write_config(d, f"""oom_score = 250
[grpc]
tcp_address = "127.0.0.1:0"
tcp_tls_cert = "{pki['server'][1]}"
tcp_tls_key = "{pki['server'][0]}"
tcp_tls_ca = "{pki['ca'][1]}"
gid = {NOGROUP}
[ttrpc]
gid = {NOGROUP}
[debug]
address = "{d.workdir}/debug.sock"
gid = {NOGROUP}
[metrics]
address = "127.0.0.1:0"
grpc_histogram = true
""")
    d.debug_sock = f"{d.workdir}/debug.sock"
    try:
        d.start()
        d.tcp, d.metrics_port = bound_port(d, "gRPC"), bound_port(d, "metrics endpoint")
        yield d
    finally:
        d.cleanup()


def tls_version(port, pki, client=None, roots="ca"):
    kwargs = {"root_certificates": Path(pki[roots][1]).read_bytes()}
    if client:
        kwargs.update(private_key=Path(pki[client][0]).read_bytes(),
                      certificate_chain=Path(pki[client][1]).read_bytes())
    creds = grpc.ssl_channel_credentials(**kwargs)
    with grpc.secure_channel(f"localhost:{port}", creds) as channel:
        return version_pb2_grpc.VersionStub(channel).Version(
            empty_pb2.Empty(), timeout=10)


def test_mtls_client_cert_required_and_unix_socket_still_serves(full, pki):
    assert tls_version(full.tcp, pki, client="client").revision == "ctrappliance"
    for client in (None, "stranger"):  # no certificate; one from another CA
        with pytest.raises(grpc.RpcError) as err:
            tls_version(full.tcp, pki, client=client)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.RpcError):  # plaintext to a TLS port
        with grpc.insecure_channel(f"127.0.0.1:{full.tcp}") as channel:
            version_pb2_grpc.VersionStub(channel).Version(
                empty_pb2.Empty(), timeout=5)
    assert "Revision: ctrappliance" in full.ctr("version").stdout
    for path in (full.address, full.address + ".ttrpc", full.debug_sock):
        st = os.stat(path)
        assert (st.st_mode & 0o777, st.st_gid) == (0o660, NOGROUP), path


def test_tls_without_ca_needs_no_client_cert(pki):
    d = Daemon()
    d.config = write_config(d, f"""[grpc]
tcp_address = "127.0.0.1:0"
tcp_tls_cert = "{pki['server'][1]}"
tcp_tls_key = "{pki['server'][0]}"
""")
    try:
        d.start()
        port = bound_port(d, "gRPC")
        assert tls_version(port, pki).revision == "ctrappliance"
        with pytest.raises(grpc.RpcError):  # the client does not trust a foreign CA
            tls_version(port, pki, roots="foreign")
    finally:
        d.cleanup()


def test_metrics_counters_move_and_histograms_with_grpc_histogram(full):
    before = scrape(full.metrics_port)
    for _ in range(3):
        full.ctr("version")
    full.ctr("namespaces", "rm", "no-such-ns", check=False)  # Delete answers NOT_FOUND
    after = scrape(full.metrics_port)
    assert handled(after, "Version") - handled(before, "Version") == 3
    assert handled(after, "Delete", "NotFound") - handled(before, "Delete", "NotFound") == 1
    started = ("grpc_server_started_total", (("grpc_method", "Version"), (
        "grpc_service", "containerd.services.version.v1.Version"), ("grpc_type", "unary")))
    assert after[started] >= 3
    hist = ("grpc_server_handling_seconds_count",) + started[1:]
    assert after[hist] >= 3
    assert after[("ctrappliance_plugins", (("status", "ok"), ("type", "io.containerd.grpc.v1")))] > 5
    assert any(name == "process_resident_memory_bytes" for name, _ in after)
    # every registered method has zero-valued series from the start (go-grpc-prometheus)
    never = (("grpc_method", "Checkpoint"), ("grpc_service", "containerd.services.tasks.v1.Tasks"),
             ("grpc_type", "unary"))
    assert after[("grpc_server_started_total", never)] == 0
    assert after[("grpc_server_handled_total", (("grpc_code", "Unimplemented"),) + never)] == 0
    assert after[("grpc_server_handling_seconds_count", never)] == 0


def test_metrics_content_ingested_and_gc_runs(full):
    data = os.urandom(3000)
    digest = "sha256:" + __import__("hashlib").sha256(data).hexdigest()
    before = scrape(full.metrics_port)
    r = subprocess.run([CTR, "--address", full.address, "content", "ingest", "m-ref"],
                       input=data, capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    after = scrape(full.metrics_port)
    ingested = ("ctrappliance_content_ingested_bytes_total", ())
    assert after[ingested] - before.get(ingested, 0) == 3000
    runs = ("ctrappliance_gc_runs_total", ())
    full.ctr("content", "rm", digest)
    full.ctr("leases", "create", "--id", "m-lease")
    full.ctr("leases", "delete", "--sync", "m-lease")  # answers after a collection ran
    final = scrape(full.metrics_port)
    assert final[runs] > after[runs]
    assert final[("ctrappliance_gc_duration_seconds_count", ())] == final[runs]


def test_metrics_snapshot_gauge(full):
    key = ("ctrappliance_snapshots", (("namespace", "m-snaps"), ("snapshotter", "native")))
    full.ctr("snapshots", "--snapshotter", "native", "prepare", "s1", namespace="m-snaps")
    full.ctr("snapshots", "--snapshotter", "native", "prepare", "s2", namespace="m-snaps")
    assert scrape(full.metrics_port)[key] == 2
    full.ctr("snapshots", "--snapshotter", "native", "rm", "s1", "s2", namespace="m-snaps")
    assert key not in scrape(full.metrics_port)


def test_no_histograms_without_grpc_histogram_and_negative_oom_score():
    d = Daemon()
    d.config = write_config(d, 'oom_score = -500\n[metrics]\naddress = "127.0.0.1:0"\n')
    before = int(Path("/proc/self/oom_score_adj").read_text())
    try:
        d.start()
        port = bound_port(d, "metrics endpoint")
        # without CAP_SYS_RESOURCE lowering fails: a warning, and the daemon goes on
        score = int(Path(f"/proc/{d.proc.pid}/oom_score_adj").read_text())
        assert score == -500 or (score == before and
                                 "failed to change OOM score to -500" in d.log())
        d.ctr("version")
        samples = scrape(port)
        assert any(name == "grpc_server_handled_total" for name, _ in samples)
        assert not any(name.startswith("grpc_server_handling_seconds") for name, _ in samples)
    finally:
        d.cleanup()


def test_debug_endpoint_with_ctr_pprof(full):
    def pprof(*args):
        return subprocess.run([CTR, "pprof", "--debug-socket", full.debug_sock, *args],
                              capture_output=True, text=True, timeout=30)
    out = pprof("goroutines")
    assert out.returncode == 0, out.stderr
    assert "=== thread stacks ===" in out.stdout and "MainThread" in out.stdout
    assert "=== asyncio tasks ===" in out.stdout
    for name in ("heap", "block", "threadcreate"):
        res = pprof(name)
        assert res.returncode != 0
        assert f"501 Not Implemented: no Go {name} profile in ctrappliance, a Python daemon" \
            in res.stderr
    conn = socket.socket(socket.AF_UNIX)
    conn.connect(full.debug_sock)
    conn.sendall(b"GET /debug/vars HTTP/1.1\r\nHost: x\r\n\r\n")
    raw = b""
    while chunk := conn.recv(65536):
        raw += chunk
    conn.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    variables = json.loads(body)
    assert str(full.root) in variables["cmdline"] and variables["memstats"]["RSS"] > 1 << 20


def test_oom_score_applied(full):
    assert Path(f"/proc/{full.proc.pid}/oom_score_adj").read_text().strip() == "250"


def _v1_mounts():
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split()[0] == "cgroup":
            mounts.append(left.split()[4])
    return mounts


def test_cgroup_path_moves_the_daemon():
    mounts = _v1_mounts()
    if not mounts:
        pytest.skip("no cgroup v1 hierarchies mounted")
    # Nest under our own memory cgroup so the daemon stays inside the memory limit
    # it was started under.
    own = dict(line.split(":", 2)[1:] for line in
               Path("/proc/self/cgroup").read_text().splitlines())
    base = own.get("memory", "/").rstrip("/")
    path = f"{base}/ca-test-{os.getpid()}-{time.monotonic_ns()}"
    existed = {m: [p for p in _ancestors(m, path) if os.path.isdir(p)] for m in mounts}
    d = Daemon()
    d.config = write_config(d, f'[cgroup]\npath = "{path}"\n')
    try:
        d.start()
        lines = Path(f"/proc/{d.proc.pid}/cgroup").read_text().splitlines()
        v1 = [line for line in lines if not line.startswith("0::")]
        assert v1 and all(line.endswith(":" + path) for line in v1), lines
        assert "Revision: ctrappliance" in d.ctr("version").stdout
    finally:
        d.cleanup()
        for mount in mounts:  # remove what the daemon created, deepest first
            for p in reversed(_ancestors(mount, path)):
                if p not in existed[mount] and os.path.isdir(p):
                    _rmdir_when_empty(p)
    assert not any(os.path.isdir(os.path.join(m, path.lstrip("/"))) for m in mounts)


def _ancestors(mount, path):
    parts = [p for p in path.split("/") if p]
    return [os.path.join(mount, *parts[:i]) for i in range(1, len(parts) + 1)]


def _rmdir_when_empty(path, deadline=5.0):
    end = time.monotonic() + deadline
    while True:
        try:
            os.rmdir(path)
            return
        except OSError:  # tasks leave a cgroup asynchronously after exit
            if time.monotonic() > end:
                raise
            time.sleep(0.05)


def failed_start(config_text: str):
    """Start a daemon that must refuse to boot; returns (exit code, error lines)."""
    d = Daemon()
    d.config = write_config(d, config_text)
    try:
        d.start(wait=False)
        code = d.proc.wait(30)
        errors = [l for l in d.log().splitlines() if "level=error" in l]
        return code, errors
    finally:
        d.cleanup()


def _held_tcp():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s, f"127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize("section", ["grpc]\ntcp_address", "metrics]\naddress",
                                     "debug]\naddress"])
def test_address_in_use_is_one_line(section):
    held, address = _held_tcp()
    try:
        code, errors = failed_start(f'[{section} = "{address}"\n')
    finally:
        held.close()
    assert code != 0
    assert len(errors) == 1 and f"listen tcp {address}: bind: address already in use" \
        in errors[0], errors


def test_debug_socket_in_use_is_one_line(tmp_path):
    path = str(tmp_path / "debug.sock")
    held = socket.socket(socket.AF_UNIX)
    held.bind(path)
    held.listen()
    try:
        code, errors = failed_start(f'[debug]\naddress = "{path}"\n')
    finally:
        held.close()
    assert code != 0 and len(errors) == 1 and f"listen unix {path}" in errors[0], errors


@pytest.mark.parametrize("problem", ["missing cert", "bad CA", "missing CA", "wrong key"])
def test_bad_tls_files_are_one_line(pki, problem, tmp_path):
    cert, key, ca = pki["server"][1], pki["server"][0], pki["ca"][1]
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    if problem == "missing cert":
        cert, expected = tmp_path / "nope.pem", f"open {tmp_path / 'nope.pem'}: no such file"
    elif problem == "bad CA":
        ca, expected = garbage, f"failed to load CA file {garbage}: no PEM certificate"
    elif problem == "missing CA":
        ca, expected = tmp_path / "ca.pem", f"open {tmp_path / 'ca.pem'}: no such file"
    else:
        key, expected = pki["client"][0], "private key does not match public key"
    code, errors = failed_start(f"""[grpc]
tcp_address = "127.0.0.1:0"
tcp_tls_cert = "{cert}"
tcp_tls_key = "{key}"
tcp_tls_ca = "{ca}"
""")
    assert code != 0
    assert len(errors) == 1 and expected in errors[0], errors
    assert re.search(r'level=error msg="[^\n]+"$', errors[0])


def test_task_cgroup_metrics_under_containerd_labels(tmp_path):
    from runtime_helpers import make_rootfs, remove_cgroup_dirs, run_flags, shim_pids
    rootfs = str(make_rootfs(tmp_path / "rootfs"))
    ns = f"metrics-{os.getpid()}"
    d = Daemon()
    d.config = write_config(d, '[metrics]\naddress = "127.0.0.1:0"\n')
    try:
        d.start()
        port = bound_port(d, "metrics endpoint")
        d.ctr("run", *run_flags(d.workdir), "--env", "PATH=/bin", "-d", "--rootfs", rootfs,
              "sleeper", "sleep", "1000", namespace=ns)
        samples = scrape(port)
        labels = (("container_id", "sleeper"), ("namespace", ns))
        assert samples[("container_pids_current", labels)] >= 1
        assert samples[("container_memory_usage_usage_bytes", labels)] > 0
        assert samples[("container_cpu_total_nanoseconds", labels)] > 0
        assert samples[("ctrappliance_tasks", (("namespace", ns),))] == 1
        d.ctr("tasks", "kill", "-s", "SIGKILL", "sleeper", namespace=ns)
        deadline = time.monotonic() + 10
        while "STOPPED" not in d.ctr("tasks", "ls", namespace=ns).stdout:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        d.ctr("tasks", "rm", "sleeper", namespace=ns)
        d.ctr("containers", "rm", "sleeper", namespace=ns)
        after = scrape(port)
        assert ("container_pids_current", labels) not in after
    finally:
        for pid in shim_pids(d.address):
            os.kill(pid, 9)
        d.cleanup()
        remove_cgroup_dirs(ns)
