"""The pure parts of the CRI's CNI: conf_template rendering (Go text/template's subset),
conf file parsing, pod IP selection and results as go-cni combines them."""
import json

import pytest

from appliance.cri import gotemplate
from appliance.cri.cni import (CNIError, combined_result, load_conf_file, routes_for,
                               select_ips)
from cni_helpers import CONF_TEMPLATE

DATA = {"PodCIDR": "10.1.0.0/24", "PodCIDRRanges": ["10.1.0.0/24", "fd00::/64"],
        "Routes": ["0.0.0.0/0", "::/0"]}


def test_containerd_template_renders_valid_json():
    conf = json.loads(gotemplate.render(CONF_TEMPLATE, DATA))
    ipam = conf["plugins"][0]["ipam"]
    assert ipam["ranges"] == [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00::/64"}]]
    assert ipam["routes"] == [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
    assert conf["plugins"][1]["cidr"] == "10.1.0.0/24"


@pytest.mark.parametrize("text,expected", [
    ("{{.PodCIDR}}", "10.1.0.0/24"),
    ("{{.PodCIDRRanges}}", "[10.1.0.0/24 fd00::/64]"),        # Go prints a slice so
    ("a  {{- .PodCIDR -}}  b", "a10.1.0.0/24b"),
    ("{{range .Routes}}<{{.}}>{{end}}", "<0.0.0.0/0><::/0>"),
    ("{{range $r := .Routes}}{{$r}};{{end}}", "0.0.0.0/0;::/0;"),
    ("{{if .PodCIDR}}yes{{else}}no{{end}}", "yes"),
    ("{{range .Missing}}x{{else}}none{{end}}", None),
    ("x{{/* a comment */}}y", "xy"),
])
def test_template_actions(text, expected):
    if expected is None:
        with pytest.raises(gotemplate.TemplateError, match="Missing"):
            gotemplate.render(text, DATA)
    else:
        assert gotemplate.render(text, DATA) == expected


@pytest.mark.parametrize("text", ["{{range .Routes}}x", "{{end}}", "{{printf \"%s\" .X}}",
                                  "{{$undefined}}"])
def test_unsupported_or_broken_templates_are_errors(text):
    with pytest.raises(gotemplate.TemplateError):
        gotemplate.render(text, DATA)


def test_routes_for():
    assert routes_for(["10.0.0.0/16"]) == ["0.0.0.0/0"]
    assert routes_for(["fd00::/64", "10.0.0.0/16"]) == ["0.0.0.0/0", "::/0"]
    with pytest.raises(CNIError, match="get routes: invalid CIDR address: x"):
        routes_for(["x"])


def test_select_ips():
    ips = ["fd00::2", "10.0.0.2", "10.0.1.2"]
    assert select_ips(ips, "") == ("10.0.0.2", ["fd00::2", "10.0.1.2"])
    assert select_ips(ips, "ipv4") == ("10.0.0.2", ["fd00::2", "10.0.1.2"])
    assert select_ips(ips, "ipv6") == ("fd00::2", ["10.0.0.2", "10.0.1.2"])
    assert select_ips(ips, "cni") == ("fd00::2", ["10.0.0.2", "10.0.1.2"])
    assert select_ips(["fd00::2"], "") == ("fd00::2", [])


def test_combined_result_as_go_cni():
    bridge = {"cniVersion": "1.0.0",
              "interfaces": [{"name": "cni0", "mac": "aa"}, {"name": "veth1", "mac": "bb"},
                             {"name": "eth0", "mac": "cc", "sandbox": "/ns"}],
              "ips": [{"address": "10.0.0.2/24", "gateway": "10.0.0.1", "interface": 2}],
              "routes": [{"dst": "0.0.0.0/0"}], "dns": {}}
    loopback = {"cniVersion": "0.3.1", "interfaces": [{"name": "lo", "sandbox": "/ns"}],
                "ips": [{"version": "4", "address": "127.0.0.1/8", "interface": 0}]}
    old = {"cniVersion": "0.2.0", "ip4": {"ip": "10.9.0.5/16"}}
    result = combined_result([loopback, bridge])
    assert result["Interfaces"]["eth0"] == {
        "IPConfigs": [{"IP": "10.0.0.2", "Gateway": "10.0.0.1"}], "Mac": "cc", "Sandbox": "/ns"}
    assert result["Interfaces"]["lo"]["IPConfigs"] == [{"IP": "127.0.0.1", "Gateway": None}]
    assert result["Interfaces"]["veth1"]["IPConfigs"] is None
    assert result["Routes"] == [{"dst": "0.0.0.0/0"}] and result["DNS"] == [{}, {}]
    assert combined_result([old])["Interfaces"]["eth0"]["IPConfigs"][0]["IP"] == "10.9.0.5"


def test_conf_files(tmp_path):
    single = tmp_path / "10-a.conf"
    single.write_text(json.dumps({"cniVersion": "0.4.0", "name": "a", "type": "bridge"}))
    network = load_conf_file(str(single))
    assert network.name == "a" and network.version == "0.4.0"
    assert network.conflist["plugins"] == [{"cniVersion": "0.4.0", "name": "a",
                                            "type": "bridge"}]
    listed_as_conf = tmp_path / "10-b.conf"         # a conflist in a .conf file: no type
    listed_as_conf.write_text(json.dumps({"name": "b", "plugins": [{"type": "bridge"}]}))
    with pytest.raises(ValueError, match="missing 'type'"):
        load_conf_file(str(listed_as_conf))
    for body, message in (({"plugins": [{"type": "x"}]}, "no name"),
                          ({"name": "c"}, "no 'plugins' key"),
                          ({"name": "c", "plugins": []}, "no plugins in list"),
                          ({"name": "c", "plugins": [{}]}, "failed to parse plugin config 0")):
        bad = tmp_path / "c.conflist"
        bad.write_text(json.dumps(body))
        with pytest.raises(ValueError, match=message):
            load_conf_file(str(bad))
