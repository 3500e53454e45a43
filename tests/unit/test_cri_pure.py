"""The CRI image half's pure parts: the verbose ImageStatus JSON as containerd writes it."""
import json

from appliance.cri.images import CRIImage, verbose_info


def test_verbose_info_is_gos_json():
    config = {"rootfs": {"diff_ids": ["sha256:a"], "type": "layers"}, "os": "linux",
              "architecture": "amd64", "unknown": 1, "author": "",
              "created": "2024-01-01T00:00:00.000000000+00:00",
              "config": {"WorkingDir": "/", "Cmd": ["a<b"], "Env": [], "Labels": None},
              "history": [{"created_by": "x & y", "created": "2024-01-01T00:00:00.5Z",
                           "empty_layer": False}]}
    text = verbose_info(CRIImage("sha256:c", config=config, chain_id="sha256:a"))
    assert text == (
        '{"chainID":"sha256:a","imageSpec":{"created":"2024-01-01T00:00:00Z",'
        '"architecture":"amd64","os":"linux","config":{"Cmd":["a\\u003cb"],"WorkingDir":"/"},'
        '"rootfs":{"type":"layers","diff_ids":["sha256:a"]},'
        '"history":[{"created":"2024-01-01T00:00:00.5Z","created_by":"x \\u0026 y"}]}}')
    assert json.loads(text)["imageSpec"]["config"]["Cmd"] == ["a<b"]


def test_verbose_info_of_a_bare_config_keeps_gos_always_written_fields():
    text = verbose_info(CRIImage("sha256:c", config={}, chain_id=""))
    assert text == ('{"chainID":"","imageSpec":{"architecture":"","os":"","config":{},'
                    '"rootfs":{"type":"","diff_ids":null}}}')
