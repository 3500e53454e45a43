"""What stands between spawning the daemon and its first answer: the CRI's services (pods,
containers, stats, the pull engine, hashing) start once the gRPC socket serves, and a CRI call
that comes earlier waits for them. Checked by the order of imports (`-X importtime` through
PYTHONPROFILEIMPORTTIME) against the 'serving gRPC' line, not by timing."""
from __future__ import annotations

import re

import grpc
import pytest

from appliance._proto.cri.v1 import api_pb2 as pb, api_pb2_grpc as rpc
from daemon import Daemon, wait_for

pytestmark = pytest.mark.integration
FAILPOINTS = "CTRAPPLIANCE_FAILPOINTS"
IMPORT = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$")
# kept off the path to the first answer: the CRI's services and what only they need, the
# generated stubs (loaded on a service's first call), hashing (OpenSSL: on the first digest)
SERVICES = {f"appliance.cri.{name}" for name in ("container", "monitor", "runtime", "sandbox",
                                                 "stats")}
LATER = SERVICES | {"appliance.core.remotes.pull", "hashlib"}


def _imports_and_serving(log: str) -> tuple[list[str], list[str]]:
    """The modules imported before the 'serving gRPC' line, and those after it."""
    before, after, seen_serving = [], [], False
    for line in log.splitlines():
        if "serving gRPC on" in line:
            seen_serving = True
        m = IMPORT.match(line)
        if m:
            (after if seen_serving else before).append(m.group(1))
    assert seen_serving, log[-2000:]
    return before, after


def _cri(daemon: Daemon):
    channel = grpc.insecure_channel(f"unix://{daemon.address}")
    return channel, rpc.RuntimeServiceStub(channel), rpc.ImageServiceStub(channel)


def _cri_answers(daemon: Daemon) -> None:
    """The CRI's first calls, answered as after any start (no pods, no images yet)."""
    channel, runtime, images = _cri(daemon)
    try:
        version = runtime.Version(pb.VersionRequest(), timeout=30)
        assert (version.runtime_name, version.runtime_api_version) == ("ctrappliance", "v1")
        conditions = runtime.Status(pb.StatusRequest(), timeout=30).status.conditions
        assert [(c.type, c.status) for c in conditions][0] == ("RuntimeReady", True)
        assert list(runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=30).items) == []
        assert list(runtime.ListContainers(pb.ListContainersRequest(), timeout=30).containers) == []
        assert list(images.ListImages(pb.ListImagesRequest(), timeout=30).images) == []
        fs = images.ImageFsInfo(pb.ImageFsInfoRequest(), timeout=30).image_filesystems
        assert fs[0].fs_id.mountpoint.endswith("io.containerd.snapshotter.v1.overlayfs")
    finally:
        channel.close()


def _cri_plugin_row(daemon: Daemon) -> str:
    rows = [r for r in daemon.ctr("plugins", "ls").stdout.splitlines() if " cri " in r]
    assert len(rows) == 1, rows
    return rows[0].split()[-1]


def test_the_socket_serves_before_the_cri_services_load():
    d = Daemon(env={"PYTHONPROFILEIMPORTTIME": "1"})
    try:
        d.start()
        if "import time:" not in d.log():
            pytest.skip("a compiled build: no -X importtime")
        d.ctr("version")
        # no CRI call: the services start on their own a moment after the daemon serves
        wait_for(lambda: "appliance.cri.container" in d.log(), what="the CRI's start")
        _cri_answers(d)
        before, after = _imports_and_serving(d.log())
        assert "appliance.daemon" in before and "appliance.plugins.cri" in before
        assert not LATER & set(before), sorted(LATER & set(before))
        assert not [m for m in before if m.startswith("appliance._proto.")]
        assert SERVICES <= set(after)
        assert _cri_plugin_row(d) == "ok"
    finally:
        d.cleanup()


def test_a_cri_call_waits_for_a_slow_start():
    """The services' start held back 1.5 s (in its worker thread): ctr answers at once,
    and CRI calls made meanwhile get the answers of a started service."""
    d = Daemon(env={FAILPOINTS: "cri.start=sleep(1500)"})
    try:
        d.start()
        assert d.ctr("version").returncode == 0
        assert _cri_plugin_row(d) == "ok"
        _cri_answers(d)
    finally:
        d.cleanup()


def test_a_failed_cri_start_answers_its_error():
    """The start fails once the daemon serves (as containerd's CRI service fails after its
    plugin's init): CRI calls answer the error; everything else goes on."""
    d = Daemon(env={FAILPOINTS: "cri.start=error(no services today)"})
    try:
        d.start()
        channel, runtime, images = _cri(d)
        try:
            for call in (lambda: runtime.Version(pb.VersionRequest(), timeout=30),
                         lambda: images.ListImages(pb.ListImagesRequest(), timeout=30)):
                with pytest.raises(grpc.RpcError) as err:
                    call()
                assert err.value.code() == grpc.StatusCode.UNKNOWN
                assert err.value.details() == \
                    "failed to start the CRI service: no services today"
        finally:
            channel.close()
        assert "failed to start the CRI service: no services today" in d.log()
        assert d.ctr("version").returncode == 0
        assert _cri_plugin_row(d) == "ok"
    finally:
        d.cleanup()
