"""CRI streaming (exec, attach, port-forward URLs and the server behind them) and ExecSync,
driven by real peers: Debian's Go spdystream (tests/integration/spdyclient, as kubectl's
SPDY executor uses it) and the `websockets` client, against containers made with
`ctr -n k8s.io run -d` on a private daemon."""
import base64
import hashlib
import io
import json
import os
import socket
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest

from appliance._proto.cri.v1 import api_pb2 as pb, api_pb2_grpc as rpc
from daemon import Daemon
from streaming_helpers import CtrContainer, make_streaming_rootfs, spdy_client, status

pytestmark = pytest.mark.integration

SUCCESS = {"metadata": {}, "status": "Success"}


def exit_status(code: int, cmd: str) -> dict:
    return {"metadata": {}, "status": "Failure",
            "message": f"command terminated with non-zero exit code: error executing command "
                       f"[{cmd}], exit code {code}",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}


def cri_config(workdir, idle="4h0m0s") -> str:
    path = os.path.join(workdir, "cri.toml")
    os.makedirs(workdir, exist_ok=True)
    with open(path, "w") as f:
        f.write(f'version = 2\n[plugins."io.containerd.grpc.v1.cri"]\n'
                f'  stream_idle_timeout = "{idle}"\n')
    return path


@pytest.fixture(scope="module")
def client_binary():
    return spdy_client()


@pytest.fixture(scope="module")
def rootfs():
    return make_streaming_rootfs()


@pytest.fixture(scope="module")
def env(rootfs):
    import tempfile
    workdir = tempfile.mkdtemp(prefix="ca-stream-", dir="/tmp")
    d = Daemon(workdir=workdir, config=cri_config(workdir)).start()
    channel = grpc.insecure_channel(f"unix://{d.address}")
    container = None
    try:
        container = CtrContainer(d, "box", rootfs, ["sleep", "100000"])
        yield d, rpc.RuntimeServiceStub(channel), container
    finally:
        channel.close()
        if container is not None:
            container.remove()
        d.cleanup()


def spdy(client_binary, url, *args, input=b"", timeout=120, status_file=None):
    argv = [client_binary, "-url", url, "exec", *args]
    if status_file:
        argv += ["-status", str(status_file)]
    return subprocess.run(argv, input=input, capture_output=True, timeout=timeout)


def exec_url(rt, cid, cmd, **kw):
    return rt.Exec(pb.ExecRequest(container_id=cid, cmd=cmd, **kw)).url


def execs_left(rt, cid) -> list[str]:
    """Processes in the container besides its init (sleep), this `ps` and zombies (shown
    as `[name]`: the init, sleep, reaps no orphan)."""
    out = rt.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["ps", "-o", "pid,args"])).stdout
    lines = out.decode().splitlines()[1:]
    return [l for l in lines if "sleep 100000" not in l and "ps -o" not in l
            and not l.split(None, 1)[1].startswith("[")]


# --- ExecSync -------------------------------------------------------------------

def test_exec_sync_output_exit_code_and_timeout(env):
    d, rt, box = env
    resp = rt.ExecSync(pb.ExecSyncRequest(container_id=box.id, cmd=[
        "sh", "-c", "echo out; echo err >&2; exit 3"]))
    assert (resp.stdout, resp.stderr, resp.exit_code) == (b"out\n", b"err\n", 3)
    with pytest.raises(grpc.RpcError) as err:
        rt.ExecSync(pb.ExecSyncRequest(container_id=box.id, cmd=["sleep", "30"], timeout=1))
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "timeout 1s exceeded" in err.value.details()
    assert execs_left(rt, box.id) == []  # the timed-out exec was killed
    assert "never retrieved" not in d.log()  # its output readers were ended cleanly
    with pytest.raises(grpc.RpcError) as err:
        rt.ExecSync(pb.ExecSyncRequest(container_id="nope", cmd=["true"]))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_exec_sync_large_output(env):
    _, rt, box = env
    resp = rt.ExecSync(pb.ExecSyncRequest(container_id=box.id, cmd=[
        "sh", "-c", "head -c 3000000 /dev/zero; head -c 100 /dev/zero >&2"]))
    assert len(resp.stdout) == 3000000 and len(resp.stderr) == 100


def test_exec_request_validation(env):
    _, rt, box = env
    with pytest.raises(grpc.RpcError) as err:  # containerd's id index first
        rt.Exec(pb.ExecRequest(container_id="", cmd=["true"], stdout=True))
    assert err.value.code() == grpc.StatusCode.UNKNOWN
    assert err.value.details() == 'failed to find container "" in store: Prefix can\'t be empty'
    cases = [(dict(container_id=box.id, cmd=["true"], tty=True, stderr=True),
              "tty and stderr cannot both be true"),
             (dict(container_id=box.id, cmd=["true"]),
              "one of stdin, stdout, or stderr must be set")]
    for kw, message in cases:
        with pytest.raises(grpc.RpcError) as err:
            rt.Exec(pb.ExecRequest(**kw))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        rt.Exec(pb.ExecRequest(container_id="nope", cmd=["true"], stdout=True))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


# --- exec over SPDY (Go spdystream) ------------------------------------------------

def test_spdy_exec_echo_and_exit_codes(env, client_binary, tmp_path):
    _, rt, box = env
    st = tmp_path / "status"
    url = exec_url(rt, box.id, ["echo", "hi"], stdout=True)
    assert url.startswith("http://127.0.0.1:") and len(url.rsplit("/", 1)[1]) == 8
    r = spdy(client_binary, url, status_file=st)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"hi\n" and b"protocol: v4.channel.k8s.io" in r.stderr
    assert status(st.read_bytes()) == SUCCESS
    url = exec_url(rt, box.id, ["sh", "-c", "echo out; echo err >&2; exit 7"], stdout=True,
                   stderr=True)
    r = spdy(client_binary, url, "-stderr", status_file=st)
    assert (r.stdout, r.stderr.split(b"\n", 1)[1]) == (b"out\n", b"err\n")
    assert status(st.read_bytes()) == exit_status(7, "sh -c echo out; echo err >&2; exit 7")


def test_spdy_exec_output_held_by_a_background_child_and_exec_cleanup(env, client_binary,
                                                                     tmp_path):
    """The status goes out once the output has ended (a background child's late output
    included), the exec's Delete after it; an output a background child keeps open ends
    when the exec is deleted (the shim lets go); every exec's FIFO directory goes."""
    d, rt, box = env
    io_root = Path(d.state) / "io.containerd.grpc.v1.cri" / "io"
    st = tmp_path / "status"
    url = exec_url(rt, box.id, ["sh", "-c", "echo bg; sleep 1001 & echo $! > /tmp/bg.pid"],
                   stdout=True)
    try:
        r = spdy(client_binary, url, status_file=st, timeout=60)
        assert r.stdout == b"bg\n" and status(st.read_bytes()) == SUCCESS
    finally:
        rt.ExecSync(pb.ExecSyncRequest(container_id=box.id,
                                       cmd=["sh", "-c", "kill $(cat /tmp/bg.pid)"]))
    # what a background child writes soon after the exit is still sent before the status
    url = exec_url(rt, box.id, ["sh", "-c", "echo a; (sleep 0.3; echo late) &"], stdout=True)
    r = spdy(client_binary, url, status_file=st)
    assert r.stdout == b"a\nlate\n" and status(st.read_bytes()) == SUCCESS
    for code in (0, 3):
        url = exec_url(rt, box.id, ["sh", "-c", f"echo {code}; exit {code}"], stdout=True)
        r = spdy(client_binary, url, status_file=st)
        assert r.stdout == f"{code}\n".encode()
        assert status(st.read_bytes()) == (SUCCESS if not code else exit_status(
            code, f"sh -c echo {code}; exit {code}"))
    # a Start that fails answers the Wait asked before it: nothing hangs or is left
    r = spdy(client_binary, exec_url(rt, box.id, ["no-such-command"], stdout=True),
             status_file=st)
    assert status(st.read_bytes())["status"] == "Failure"
    deadline = time.monotonic() + 30
    while list(io_root.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert list(io_root.iterdir()) == []


def test_spdy_exec_stdin_cat(env, client_binary, tmp_path):
    _, rt, box = env
    st = tmp_path / "status"
    data = os.urandom(300000)
    url = exec_url(rt, box.id, ["cat"], stdin=True, stdout=True)
    r = spdy(client_binary, url, "-stdin", input=data, status_file=st)
    assert r.stdout == data  # stdin's end (FIN) ended cat
    assert status(st.read_bytes()) == SUCCESS


def test_spdy_exec_tty_and_resize(env, client_binary, tmp_path):
    _, rt, box = env
    st = tmp_path / "status"
    script = ('i=0; while [ $i -lt 200 ]; do s=$(stty size 2>/dev/null); '
              '[ "$s" = "33 111" ] && break; i=$((i+1)); sleep 0.1; done; echo "size $s"; '
              '[ -t 0 ] && echo tty')
    url = exec_url(rt, box.id, ["sh", "-c", script], stdin=True, stdout=True, tty=True)
    proc = subprocess.Popen([client_binary, "-url", url, "exec", "-stdin", "-tty",
                             "-resize", "111x33", "-status", str(st)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        proc.wait(timeout=120)  # our stdin stays open: the process's end ends the session
        out = proc.stdout.read()
    finally:
        proc.stdin.close()
        proc.kill()
        proc.wait()
    assert out == b"size 33 111\r\ntty\r\n"
    assert status(st.read_bytes()) == SUCCESS


@pytest.mark.parametrize("protocol", ["v3.channel.k8s.io", "v2.channel.k8s.io",
                                      "channel.k8s.io"])
def test_spdy_older_protocols_carry_the_error_as_text(env, client_binary, tmp_path, protocol):
    _, rt, box = env
    st = tmp_path / "status"
    url = exec_url(rt, box.id, ["sh", "-c", "echo old; exit 5"], stdout=True)
    r = spdy(client_binary, url, "-protocol", f"{protocol},v9.unknown", status_file=st)
    assert r.stdout == b"old\n" and f"protocol: {protocol}".encode() in r.stderr
    assert st.read_bytes() == (b"command terminated with non-zero exit code: error executing "
                               b"command [sh -c echo old; exit 5], exit code 5")


def test_kubectl_cp_50mib_tar_round_trip(env, client_binary, tmp_path):
    """kubectl cp: `tar xf -` with the archive on stdin, then `tar cf -` back on stdout."""
    _, rt, box = env
    st = tmp_path / "status"
    payload = os.urandom(50 << 20)
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        info = tarfile.TarInfo("big.bin")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    url = exec_url(rt, box.id, ["tar", "xf", "-", "-C", "/tmp"], stdin=True, stdout=True,
                   stderr=True)
    r = spdy(client_binary, url, "-stdin", "-stderr", input=archive.getvalue(), status_file=st,
             timeout=600)
    assert status(st.read_bytes()) == SUCCESS, r.stderr
    url = exec_url(rt, box.id, ["tar", "cf", "-", "-C", "/tmp", "big.bin"], stdout=True,
                   stderr=True)
    r = spdy(client_binary, url, "-stderr", status_file=st, timeout=600)
    assert status(st.read_bytes()) == SUCCESS
    with tarfile.open(fileobj=io.BytesIO(r.stdout)) as tar:
        got = tar.extractfile("big.bin").read()
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
    rt.ExecSync(pb.ExecSyncRequest(container_id=box.id, cmd=["rm", "/tmp/big.bin"]))


# --- tokens and bad input ----------------------------------------------------------

def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_tokens_are_single_use_and_unknown_paths_404(env, client_binary, tmp_path):
    _, rt, box = env
    url = exec_url(rt, box.id, ["echo", "once"], stdout=True)
    assert spdy(client_binary, url).stdout == b"once\n"
    r = spdy(client_binary, url)
    assert r.returncode == 3 and r.stdout.startswith(b"HTTP 404")
    base = url.rsplit("/", 2)[0]
    assert _get(base + "/exec/AAAAAAAA")[0] == 404
    assert _get(base + "/other/AAAAAAAA")[0] == 404
    # a token of another kind is not an exec token
    url = exec_url(rt, box.id, ["echo"], stdout=True)
    assert _get(url.replace("/exec/", "/attach/"))[0] == 404


def test_plain_get_and_unknown_protocol_are_refused(env):
    _, rt, box = env
    status_, body = _get(exec_url(rt, box.id, ["echo"], stdout=True))
    assert status_ == 400 and b"missing upgrade headers" in body
    url = exec_url(rt, box.id, ["echo"], stdout=True)
    req = urllib.request.Request(url, headers={"X-Stream-Protocol-Version": "v9.nothing",
                                               "Connection": "Upgrade", "Upgrade": "SPDY/3.1"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=30)
    assert err.value.code == 403
    assert err.value.headers.get_all("X-Accepted-Stream-Protocol-Versions")[0] == \
        "v4.channel.k8s.io"


def test_malformed_http_gets_400(env):
    _, rt, box = env
    url = exec_url(rt, box.id, ["echo"], stdout=True)
    host, port = url.split("/")[2].split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"this is not HTTP\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert _get(url)[0] == 400  # the token still works: the server kept serving


def _upgrade(url: str, protocol="v4.channel.k8s.io") -> socket.socket:
    host, port = url.split("/")[2].split(":")
    path = "/" + url.split("/", 3)[3]
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                 f"Upgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: {protocol}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101")
    return sock


def test_malformed_frames_close_the_connection_and_leave_nothing(env, client_binary):
    _, rt, box = env
    sock = _upgrade(exec_url(rt, box.id, ["sleep", "1000"], stdout=True))
    sock.sendall(b"\x80\x02\x00\x01\x00\x00\x00\x02zz")  # SPDY/2: not ours
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    assert data[:4] == b"\x80\x03\x00\x07"  # GOAWAY, then the server closed
    sock.close()
    # a client that opens its streams and never reads: ends with the connection
    sock = _upgrade(exec_url(rt, box.id, ["sleep", "1000"], stdout=True))
    sock.close()
    deadline = time.monotonic() + 60
    while execs_left(rt, box.id) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert execs_left(rt, box.id) == []
    url = exec_url(rt, box.id, ["echo", "still serving"], stdout=True)
    assert spdy(client_binary, url).stdout == b"still serving\n"


def _spdy_client_streams(sock, *kinds):
    """Open exec streams with our own SPDY framing (a client that then never reads)."""
    from appliance.cri.streaming import spdy as framing
    conn = framing.Connection(server=False)
    for kind in kinds:
        conn.open_stream({"streamType": kind})
    sock.sendall(conn.data_to_send())
    return conn


def daemon_fds(d) -> int:
    return len(os.listdir(f"/proc/{d.proc.pid}/fd"))


def test_idle_stream_times_out(rootfs, client_binary, tmp_path):
    import tempfile
    workdir = tempfile.mkdtemp(prefix="ca-idle-", dir="/tmp")
    d = Daemon(workdir=workdir, config=cri_config(workdir, idle="2s")).start()
    channel = grpc.insecure_channel(f"unix://{d.address}")
    box = None
    try:
        rt = rpc.RuntimeServiceStub(channel)
        box = CtrContainer(d, "idle", rootfs, ["sleep", "100000"])
        url = exec_url(rt, box.id, ["echo", "warm"], stdout=True)  # the server is up
        assert spdy(client_binary, url).stdout == b"warm\n"
        fds = daemon_fds(d)
        url = exec_url(rt, box.id, ["sleep", "1000"], stdout=True)
        r = spdy(client_binary, url, timeout=120, status_file=tmp_path / "st")
        assert r.stdout == b"" and (tmp_path / "st").read_bytes() == b""  # closed, no status
        # a client that never reads what a busy process writes: the same end
        sock = _upgrade(exec_url(rt, box.id, ["head", "-c", "200000000", "/dev/zero"],
                                 stdout=True))
        _spdy_client_streams(sock, "error", "stdout")
        deadline = time.monotonic() + 60
        while not execs_left(rt, box.id) and time.monotonic() < deadline:
            time.sleep(0.2)  # it started, and writes until our buffers are full
        while execs_left(rt, box.id) and time.monotonic() < deadline:
            time.sleep(0.5)  # we read nothing: the server gives up after 2 s and kills it
        assert execs_left(rt, box.id) == []
        sock.close()
        deadline = time.monotonic() + 60
        while (execs_left(rt, box.id) or daemon_fds(d) > fds) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert execs_left(rt, box.id) == []
        assert daemon_fds(d) <= fds  # no FIFO or socket left behind
    finally:
        channel.close()
        if box is not None:
            box.remove()
        d.cleanup()


# --- exec over WebSocket -----------------------------------------------------------

def ws_connect(url, protocols):
    from websockets.sync.client import connect
    return connect(url.replace("http://", "ws://", 1), subprotocols=protocols,
                   open_timeout=30, close_timeout=10, max_size=None)


def ws_frames(ws) -> list:
    from websockets.exceptions import ConnectionClosed
    frames = []
    try:
        while True:
            frames.append(ws.recv(timeout=60))
    except ConnectionClosed as exc:
        return frames + [("close", exc.rcvd.code if exc.rcvd else None)]


def test_ws_exec_echo_and_failure(env):
    _, rt, box = env
    with ws_connect(exec_url(rt, box.id, ["echo", "hi"], stdout=True),
                    ["v4.channel.k8s.io"]) as ws:
        assert ws.subprotocol == "v4.channel.k8s.io"
        frames = ws_frames(ws)
    assert frames[0] == b"\x01" and b"".join(f[1:] for f in frames[1:-2]) == b"hi\n"
    assert frames[-2][:1] == b"\x03" and json.loads(frames[-2][1:]) == SUCCESS
    assert frames[-1] == ("close", 1000)
    with ws_connect(exec_url(rt, box.id, ["sh", "-c", "exit 7"], stdout=True),
                    ["v4.channel.k8s.io"]) as ws:
        frames = ws_frames(ws)
    assert json.loads(frames[-2][1:]) == exit_status(7, "sh -c exit 7")


def test_ws_base64_and_protocol_choice(env):
    _, rt, box = env
    with ws_connect(exec_url(rt, box.id, ["sh", "-c", "echo out; echo err >&2"], stdout=True,
                             stderr=True), ["v4.base64.channel.k8s.io"]) as ws:
        frames = ws_frames(ws)
    frames = [f.encode() for f in frames[:-1]]  # text frames
    decoded = [(f[0] - 0x30, base64.b64decode(f[1:])) for f in frames]
    assert (1, b"out\n") in decoded and (2, b"err\n") in decoded
    assert decoded[0] == (1, b"")
    assert json.loads(decoded[-1][1]) == SUCCESS
    # the client's first protocol that we serve wins; v1 carries no Status on success
    with ws_connect(exec_url(rt, box.id, ["echo", "x"], stdout=True),
                    ["nope", "channel.k8s.io", "v4.channel.k8s.io"]) as ws:
        assert ws.subprotocol == "channel.k8s.io"
        frames = ws_frames(ws)
    assert all(not f.startswith(b"\x03") for f in frames[:-1])


def test_ws_v5_closes_stdin(env):
    _, rt, box = env
    with ws_connect(exec_url(rt, box.id, ["sh", "-c", "cat; echo done"], stdin=True,
                             stdout=True), ["v5.channel.k8s.io", "v4.channel.k8s.io"]) as ws:
        assert ws.subprotocol == "v5.channel.k8s.io"
        ws.send(b"\x00from stdin\n")
        ws.send(b"\xff\x00")  # v5: close stdin
        frames = ws_frames(ws)
    out = b"".join(f[1:] for f in frames[:-1] if f[:1] == b"\x01")
    assert out == b"from stdin\ndone\n"
    assert json.loads(frames[-2][1:]) == SUCCESS


# --- port-forward ------------------------------------------------------------------

@pytest.fixture(scope="module")
def pod(env, rootfs):
    """A 'sandbox' container in a network namespace of the test's, with busybox httpd on
    8080 (and nothing on 9)."""
    from streaming_helpers import NetNS
    d, rt, _ = env
    big = rootfs / "www" / "big.bin"
    big.write_bytes(os.urandom(20 << 20))
    netns = NetNS(f"ca-pf-{os.getpid()}")
    box = None
    try:
        box = CtrContainer(d, "pod", rootfs, ["httpd", "-f", "-p", "8080", "-h", "/www"],
                           netns=netns.path)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            r = rt.ExecSync(pb.ExecSyncRequest(container_id="box", cmd=["true"]))
            if subprocess.run(["nsenter", f"--net={netns.path}", "/bin/busybox", "wget", "-q",
                               "-O", "/dev/null", "http://127.0.0.1:8080/index.html"],
                              capture_output=True, timeout=30).returncode == 0:
                break
            time.sleep(0.2)
        yield box, hashlib.sha256(big.read_bytes()).hexdigest()
    finally:
        if box is not None:
            box.remove()
        netns.close()


def pf_url(rt, sandbox, ports=()):
    return rt.PortForward(pb.PortForwardRequest(pod_sandbox_id=sandbox, port=list(ports))).url


def test_spdy_port_forward_several_connections(env, pod, client_binary):
    _, rt, _ = env
    box, _ = pod
    url = pf_url(rt, box.id, [8080])
    assert "/portforward/" in url
    r = subprocess.run([client_binary, "-url", url, "portforward", "-port", "8080",
                        "-conns", "4", "-data", "GET /index.html?{i} HTTP/1.0\r\n\r\n"],
                       capture_output=True, timeout=120)
    lines = r.stdout.decode().splitlines()
    assert len(lines) == 4, r.stderr
    for i, line in enumerate(lines):
        index, body, error = line.split("|")
        assert index == str(i) and body.startswith("HTTP/1.1 200 OK")
        assert body.endswith("hello from the pod\\n") and error == ""
    # nothing listens on 9: the error stream says so, the connection is not lost
    url = pf_url(rt, box.id)
    r = subprocess.run([client_binary, "-url", url, "portforward", "-port", "9", "-data", "x"],
                       capture_output=True, timeout=120)
    index, body, error = r.stdout.decode().strip().split("|")
    assert body == "" and error.startswith(f"error forwarding port 9 to pod {box.id}, uid : ")
    assert "connect: connection refused" in error


def test_ws_port_forward(env, pod):
    _, rt, _ = env
    box, big_digest = pod
    url = pf_url(rt, box.id) + "?port=8080"
    with ws_connect(url, ["v4.channel.k8s.io"]) as ws:
        assert ws.recv(timeout=30) == b"\x00\x90\x1f" and ws.recv(timeout=30) == b"\x01\x90\x1f"
        ws.send(b"\x00GET /big.bin HTTP/1.0\r\n\r\n")
        frames = ws_frames(ws)
    data = b"".join(f[1:] for f in frames[:-1] if f[:1] == b"\x00")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert hashlib.sha256(body).hexdigest() == big_digest


def test_port_forward_request_validation(env):
    _, rt, _ = env
    with pytest.raises(grpc.RpcError) as err:
        rt.PortForward(pb.PortForwardRequest(pod_sandbox_id=""))
    assert err.value.code() == grpc.StatusCode.UNKNOWN
    with pytest.raises(grpc.RpcError) as err:
        rt.PortForward(pb.PortForwardRequest(pod_sandbox_id="nope"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


# --- TLS ---------------------------------------------------------------------------

@pytest.mark.parametrize("pair", ["self-signed", "configured"])
def test_tls_streaming(rootfs, client_binary, tmp_path, pair):
    import ssl
    import tempfile
    workdir = tempfile.mkdtemp(prefix="ca-tls-", dir="/tmp")
    config = (f'version = 2\n[plugins."io.containerd.grpc.v1.cri"]\n'
              f'  enable_tls_streaming = true\n')
    if pair == "configured":
        cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=test-streaming", "-keyout", key, "-out", cert],
                       check=True, capture_output=True, timeout=120)
        config += (f'  [plugins."io.containerd.grpc.v1.cri".x509_key_pair_streaming]\n'
                   f'    tls_cert_file = "{cert}"\n    tls_key_file = "{key}"\n')
    Path(workdir, "tls.toml").write_text(config)
    d = Daemon(workdir=workdir, config=str(Path(workdir, "tls.toml"))).start()
    channel = grpc.insecure_channel(f"unix://{d.address}")
    box = None
    try:
        rt = rpc.RuntimeServiceStub(channel)
        box = CtrContainer(d, "tls", rootfs, ["sleep", "100000"])
        url = exec_url(rt, box.id, ["echo", "over tls"], stdout=True)
        assert url.startswith("https://127.0.0.1:")
        r = spdy(client_binary, url, status_file=tmp_path / "st")
        assert r.stdout == b"over tls\n" and status((tmp_path / "st").read_bytes()) == SUCCESS
        host, port = url.split("/")[2].split(":")
        served = ssl.get_server_certificate((host, int(port)))
        if pair == "configured":
            assert ssl.PEM_cert_to_DER_cert(served) == \
                ssl.PEM_cert_to_DER_cert(cert.read_text())
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        from websockets.sync.client import connect
        with connect(exec_url(rt, box.id, ["echo", "wss"], stdout=True).replace("https", "wss"),
                     subprotocols=["v4.channel.k8s.io"], ssl=context, open_timeout=30) as ws:
            frames = ws_frames(ws)
        assert b"".join(f[1:] for f in frames if isinstance(f, bytes) and f[:1] == b"\x01") \
            == b"wss\n"
    finally:
        channel.close()
        if box is not None:
            box.remove()
        d.cleanup()


# --- attach ------------------------------------------------------------------------

def test_attach_follows_the_container_output_to_its_end(env, rootfs, client_binary, tmp_path):
    d, rt, _ = env
    ticker = CtrContainer(d, "ticker", rootfs, [
        "sh", "-c", "i=0; while [ $i -lt 600 ]; do echo tick $i; i=$((i+1)); sleep 0.1; done"])
    try:
        url = rt.Attach(pb.AttachRequest(container_id=ticker.id, stdout=True)).url
        assert "/attach/" in url
        proc = subprocess.Popen([client_binary, "-url", url, "exec", "-status",
                                 str(tmp_path / "st")], stdout=subprocess.PIPE)
        first = proc.stdout.readline()
        assert first.startswith(b"tick ")
        d.ctr("task", "kill", "-s", "9", ticker.id, namespace="k8s.io")
        rest, _ = proc.communicate(timeout=60)  # the container's end ends the attach
        assert all(line.startswith(b"tick ") for line in rest.splitlines())
        assert status((tmp_path / "st").read_bytes()) == SUCCESS
        with pytest.raises(grpc.RpcError) as err:  # not running any more
            rt.Attach(pb.AttachRequest(container_id=ticker.id, stdout=True))
        assert "CONTAINER_EXITED" in err.value.details()
    finally:
        ticker.remove()


def test_attach_to_a_container_without_stdin_or_tty_is_refused(env, rootfs):
    d, rt, box = env
    quiet = CtrContainer(d, "quiet", rootfs, ["sleep", "100000"], extra=["--null-io"])
    try:
        with pytest.raises(grpc.RpcError) as err:
            rt.Attach(pb.AttachRequest(container_id=quiet.id, stdin=True, stdout=True))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "was not created with stdin" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            rt.Attach(pb.AttachRequest(container_id=box.id, stdin=True, tty=True))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "has no tty" in err.value.details()
    finally:
        quiet.remove()


def test_ws_exec_tty_resize_and_ws_attach(env, rootfs):
    d, rt, box = env
    script = ('i=0; while [ $i -lt 200 ]; do s=$(stty size 2>/dev/null); [ "$s" = "21 77" ] '
              '&& break; i=$((i+1)); sleep 0.1; done; echo "size $s"')
    url = exec_url(rt, box.id, ["sh", "-c", script], stdin=True, stdout=True, tty=True)
    with ws_connect(url, ["v4.channel.k8s.io"]) as ws:
        ws.send(b'\x04{"Width":77,"Height":21}')
        frames = ws_frames(ws)
    assert b"".join(f[1:] for f in frames[:-2] if f[:1] == b"\x01") == b"size 21 77\r\n"
    assert json.loads(frames[-2][1:]) == SUCCESS
    ticker = CtrContainer(d, "wsticker", rootfs, [
        "sh", "-c", "i=0; while [ $i -lt 600 ]; do echo tick $i; i=$((i+1)); sleep 0.1; done"])
    try:
        url = rt.Attach(pb.AttachRequest(container_id=ticker.id, stdout=True)).url
        with ws_connect(url, ["v4.channel.k8s.io"]) as ws:
            assert ws.recv(timeout=30) == b"\x01"
            assert ws.recv(timeout=30).startswith(b"\x01tick ")
            d.ctr("task", "kill", "-s", "9", ticker.id, namespace="k8s.io")
            frames = ws_frames(ws)
        assert json.loads(frames[-2][1:]) == SUCCESS and frames[-1] == ("close", 1000)
    finally:
        ticker.remove()


def test_spdy_peer_that_keeps_windows(env):
    """A SPDY/3.1 client that keeps flow-control windows (spdystream does not): 2 MiB through
    `cat` both ways, each side only ever 64 KiB ahead of the other's WINDOW_UPDATEs."""
    import select
    from appliance.cri.streaming import spdy as framing
    _, rt, box = env
    sock = _upgrade(exec_url(rt, box.id, ["cat"], stdin=True, stdout=True))
    conn = framing.Connection(server=False)
    error, stdin, stdout = (conn.open_stream({"streamType": kind})
                            for kind in ("error", "stdin", "stdout"))
    conn.consumed(stdout, 1)  # a WINDOW_UPDATE: we keep windows
    conn.peer_keeps_windows = True  # and hold ourselves to the server's (ours keeps them)
    payload, sent, out, status = os.urandom(2 << 20), 0, bytearray(), bytearray()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if sent < len(payload):
            chunk = payload[sent:sent + 65536]
            sent += conn.send_data(stdin, chunk, fin=sent + len(chunk) == len(payload))
            assert conn.send_window >= 0
        sock.setblocking(True)
        sock.sendall(conn.data_to_send())
        if not select.select([sock], [], [], 0.05)[0]:
            continue
        data = sock.recv(1 << 20)
        if not data:
            break
        for event in conn.receive(data):
            if isinstance(event, framing.Data):
                (out if event.stream_id == stdout else status).extend(event.data)
                conn.consumed(event.stream_id, len(event.data))
    sock.close()
    assert sent == len(payload) and bytes(out) == payload
    assert json.loads(status) == SUCCESS
