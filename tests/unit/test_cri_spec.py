"""cri/spec.py's pure parts: the process args from image and CRI config (critest's
"entrypoint/cmd" cases), env merging, resolv.conf, and the default spec's constants."""
import pytest

from appliance._proto.cri.v1 import api_pb2 as pb
from appliance.cri import spec as specs
from appliance.cri.config import CRIConfig
from appliance.cri.store import Sandbox
from appliance.errdefs import InvalidArgument

IMAGE = {"config": {"Entrypoint": ["/entry"], "Cmd": ["default"], "Env": ["A=1", "B=2"],
                    "WorkingDir": "/work"}}


def _sandbox(tmp_path):
    config = pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name="p", namespace="n",
                                                                uid="u"))
    config.linux.cgroup_parent = "/parent"
    return Sandbox("s" * 64, "p_n_u_0", config, "", str(tmp_path / "root"),
                   str(tmp_path / "state"), pid=42, hostname="host")


def _spec(tmp_path, **config):
    c = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="c"), **config)
    return specs.container_spec("c" * 64, _sandbox(tmp_path), c, IMAGE, "img", {}, {},
                                CRIConfig())


@pytest.mark.parametrize("config, args", [
    ({}, ["/entry", "default"]),                                   # the image's
    ({"args": ["x"]}, ["/entry", "x"]),                             # args replace Cmd
    ({"command": ["/bin/sh"]}, ["/bin/sh"]),                        # command replaces both
    ({"command": ["/bin/sh"], "args": ["-c", "true"]}, ["/bin/sh", "-c", "true"]),
])
def test_args_from_image_and_config(tmp_path, config, args):
    assert _spec(tmp_path, **config)["process"]["args"] == args


def test_no_command_at_all_is_refused(tmp_path):
    c = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="c"))
    with pytest.raises(InvalidArgument, match="no command specified"):
        specs.container_spec("c" * 64, _sandbox(tmp_path), c, {"config": {}}, "img", {}, {},
                             CRIConfig())


def test_env_cwd_and_cgroup(tmp_path):
    spec = _spec(tmp_path, envs=[pb.KeyValue(key="B", value="3"), pb.KeyValue(key="C",
                                                                              value="4")],
                 working_dir="")
    env = spec["process"]["env"]
    assert env == [f"PATH={specs.DEFAULT_PATH}", "A=1", "B=3", "HOSTNAME=host", "C=4"]
    assert spec["process"]["cwd"] == "/work"
    assert spec["linux"]["cgroupsPath"] == "/parent/" + "c" * 64
    # the pod's namespaces and masked paths come from security.apply_container_security
    assert spec["process"]["capabilities"]["bounding"] == specs.DEFAULT_CAPS


def test_resolv_conf():
    assert specs.resolv_conf(pb.DNSConfig()) is None
    assert specs.resolv_conf(pb.DNSConfig(servers=["1.1.1.1", "8.8.8.8"], searches=["a", "b"],
                                          options=["ndots:5"])) == (
        "search a b\nnameserver 1.1.1.1\nnameserver 8.8.8.8\noptions ndots:5\n")
