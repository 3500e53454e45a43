"""One shim process: started as containerd starts it, driven over TTRPC, cleaned with `delete`.

The shim (containerd-shim-runc-v2) daemonizes itself, so the daemon keeps no
child process: only a TTRPC connection and the shim's `log` FIFO.
"""
from __future__ import annotations

import asyncio
import logging
import os
import shutil

from google.protobuf import empty_pb2

from ... import stubs
from ...errdefs import ApplianceError, DeadlineExceeded, NotFound
from ...process import fdlimit, program, spawn
from ...ttrpc import TTRPCClient
from .bundle import Bundle

shim_pb2 = stubs.module("appliance._proto.containerd.runtime.v2.task.shim_pb2")

log = logging.getLogger("appliance.shim")

TASK_SERVICE = "containerd.task.v2.Task"
START_TIMEOUT = 30.0  # the `start` command: fork the shim daemon and print its address
CALL_TIMEOUT = 60.0   # any shim RPC but Wait (runc create/exec can be slow on a busy host)

RESPONSES = {  # shim_pb2 message names (the stubs load on the first call)
    "State": "StateResponse", "Create": "CreateTaskResponse", "Start": "StartResponse",
    "Delete": "DeleteResponse", "Pids": "PidsResponse", "Wait": "WaitResponse",
    "Stats": "StatsResponse", "Connect": "ConnectResponse",
}


def wrap(exc: ApplianceError, prefix: str) -> ApplianceError:
    """The same error kind with containerd's `prefix: cause` message."""
    return type(exc)(f"{prefix}: {exc.message}")


def self_executable() -> str:
    """What shims get as -publish-binary: our console script or compiled binary."""
    return program.path()


_BASE_ENV: tuple[dict, dict[str, str]] | None = None   # (os.environ's data, the env)


def shim_env(ttrpc_address: str) -> dict[str, str]:
    """A new dict each time (callers add to it); the daemon's environment is read once
    while it stays the same (os.environ's copy decodes every variable: ≈ 80 calls)."""
    global _BASE_ENV
    if _BASE_ENV is None or _BASE_ENV[0] != os.environ._data:
        env = dict(os.environ, GOMAXPROCS="2")
        path = env.get("PATH", "").split(":")
        for extra in ("/usr/local/sbin", "/usr/sbin", "/sbin"):  # runc lives in /usr/sbin
            if extra not in path:
                path.append(extra)
        env["PATH"] = ":".join(p for p in path if p)
        _BASE_ENV = (dict(os.environ._data), env)
    return dict(_BASE_ENV[1], TTRPC_ADDRESS=ttrpc_address)


def binary_name(runtime: str) -> str:
    parts = runtime.split(".")
    return f"containerd-shim-{parts[-2]}-{parts[-1]}" if len(parts) >= 2 else ""


def resolve_binary(runtime: str, env_path: str) -> str:
    """containerd's lookup: an absolute path, or containerd-shim-<a>-<b> in PATH or beside us."""
    if not runtime:
        raise ApplianceError("no runtime name")
    if os.path.isabs(runtime):
        if not os.path.exists(runtime):
            raise ApplianceError(f"invalid custom binary path: stat {runtime}: "
                                 "no such file or directory")
        return runtime
    name = binary_name(runtime)
    if not name:
        raise ApplianceError(f"invalid runtime name {runtime}, correct runtime name should be "
                             "either format like `io.containerd.runc.v1` or a full path to the "
                             "binary")
    beside = os.path.abspath(os.path.join(os.path.dirname(runtime), name))
    if os.path.isfile(beside):
        return beside
    found = shutil.which(name, path=env_path)
    if found is None:  # the .deb bundles the shim beside the program, in bin/
        found = next((os.path.join(d, name) for d in program.helper_dirs()
                      if os.path.isfile(os.path.join(d, name))), None)
    if found is None:
        raise ApplianceError(f'runtime "{runtime}" binary not installed "{name}": '
                             "file does not exist")
    return os.path.abspath(found)


class ShimLog:
    """Drains the bundle's `log` FIFO (opened RDWR|NONBLOCK as containerd does) into our log."""

    def __init__(self, bundle: Bundle):
        path = bundle.file("log")
        if not os.path.exists(path):
            os.mkfifo(path, 0o700)
        self.fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        self.prefix = f"{bundle.namespace}/{bundle.id}"
        self._partial = b""
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.fd, self._drain)

    def _drain(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()[-65536:]
        for line in lines:
            if line:
                log.info("shim %s: %s", self.prefix, line.decode(errors="replace"))

    def close(self) -> None:
        if self.fd >= 0:
            self._loop.remove_reader(self.fd)
            os.close(self.fd)
            self.fd = -1


class Shim:
    """A connected shim serving one task (and its exec processes)."""

    def __init__(self, bundle: Bundle, binary: str, client: TTRPCClient, shim_log: ShimLog,
                 address: str):
        self.bundle = bundle
        self.binary = binary
        self.client = client
        self.address = address  # shared by the tasks of one shim (runc's group annotation)
        self.log = shim_log
        self.task_pid = 0
        self.shim_pid = 0
        self.deleting = False  # set while the daemon deletes it: a disconnect is then expected

    @property
    def id(self) -> str:
        return self.bundle.id

    @property
    def namespace(self) -> str:
        return self.bundle.namespace

    async def call(self, method: str, request, timeout: float | None = CALL_TIMEOUT):
        payload = await self.client.call(TASK_SERVICE, method, request, timeout=timeout)
        response = getattr(shim_pb2, RESPONSES[method]) if method in RESPONSES else empty_pb2.Empty
        return response.FromString(payload)

    async def connect(self, timeout: float) -> None:
        resp = await self.call("Connect", shim_pb2.ConnectRequest(id=self.id), timeout=timeout)
        self.task_pid, self.shim_pid = resp.task_pid, resp.shim_pid

    async def state(self, exec_id: str = "", timeout: float | None = CALL_TIMEOUT):
        try:
            return await self.call("State", shim_pb2.StateRequest(id=self.id, exec_id=exec_id),
                                   timeout=timeout)
        except ApplianceError as exc:
            if self.client.closed:
                raise NotFound(f"task {self.id}: not found") from exc
            raise

    def close(self) -> None:
        self.client.close()
        self.log.close()

    async def aclose(self) -> None:
        """close(), returning once the connection's socket is really closed."""
        self.log.close()
        await self.client.aclose()


async def start(bundle: Bundle, binary: str, address: str, ttrpc_address: str,
                options: bytes | None, debug: bool, connect_timeout: float,
                sched_core: bool = False) -> Shim:
    """Run `<binary> ... start` in the bundle, read the address, dial and Connect."""
    args = ["-namespace", bundle.namespace, "-address", address,
            "-publish-binary", self_executable(), "-id", bundle.id]
    if debug:
        args.append("-debug")
    shim_log = ShimLog(bundle)
    env = shim_env(ttrpc_address)
    if sched_core:
        env["SCHED_CORE"] = "1"
    try:
        # before the shim runs: failing to write it (a full disk) must not leave a shim behind
        with open(bundle.file("shim-binary-path"), "w") as f:
            f.write(binary)
        try:
            proc = await spawn.run([binary, *args, "start"], cwd=bundle.path, env=env,
                                   input=options, timeout=START_TIMEOUT)
        except TimeoutError:
            raise DeadlineExceeded(f"start failed: shim did not start in {START_TIMEOUT:g}s") \
                from None
        text = proc.output.decode(errors="replace").strip()
        if proc.returncode != 0:
            raise ApplianceError(f"start failed: {text}: exit status {proc.returncode}")
        client = await TTRPCClient.connect(text, timeout=connect_timeout,
                                           namespace=bundle.namespace)
    except BaseException:
        shim_log.close()
        raise
    # No Connect here: Create (the next call) waits for the shim as well and returns the pid
    return Shim(bundle, binary, client, shim_log, text)


async def load(bundle: Bundle, binary: str, timeout: float) -> Shim:
    """Reconnect to a shim that outlived a daemon restart (its `address` file)."""
    with open(bundle.file("address")) as f:
        address = f.read().strip()
    shim_log = ShimLog(bundle)
    try:
        client = await TTRPCClient.connect(address, timeout=timeout, namespace=bundle.namespace)
    except BaseException:
        shim_log.close()
        raise
    shim = Shim(bundle, binary, client, shim_log, address)
    try:
        await shim.connect(timeout)
    except BaseException:
        shim.close()
        raise
    return shim


async def delete_with_binary(bundle: Bundle, binary: str, address: str, ttrpc_address: str,
                             timeout: float) -> shim_pb2.DeleteResponse | None:
    """`<binary> ... -bundle PATH delete`: runc delete --force and unmount, for a dead shim."""
    args = ["-namespace", bundle.namespace, "-address", address,
            "-publish-binary", self_executable(), "-id", bundle.id, "-bundle", bundle.path,
            "delete"]
    cwd = bundle.path if os.path.isdir(bundle.path) else "/"
    proc = await asyncio.create_subprocess_exec(
        *fdlimit.child_argv([binary, *args]), cwd=cwd, env=shim_env(ttrpc_address), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, process_group=0,
        preexec_fn=fdlimit.child_preexec())
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        log.warning("shim delete of %s/%s timed out", bundle.namespace, bundle.id)
        return None
    if proc.returncode != 0:
        log.warning("shim delete of %s/%s failed: %s", bundle.namespace, bundle.id,
                    err.decode(errors="replace").strip())
        return None
    if err.strip():
        log.warning("cleanup warnings %s", err.decode(errors="replace").strip())
    return shim_pb2.DeleteResponse.FromString(out)
