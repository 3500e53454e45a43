"""The bundle's user-namespace group: which host gid a spec maps the container's root to."""
import json

import pytest

from appliance.core.runtime.bundle import remapped_gid
from appliance.errdefs import ApplianceError


def spec(**linux) -> bytes:
    return json.dumps({"ociVersion": "1.0.2", "linux": linux}).encode()


@pytest.mark.parametrize("data, gid", [
    (b"{}", 0),
    (b'{"linux": null}', 0),
    (spec(), 0),
    (spec(gidMappings=[]), 0),
    (spec(gidMappings=[{"containerID": 0, "hostID": 100000, "size": 65536}]), 100000),
    (spec(gidMappings=[{"containerID": 1, "hostID": 5, "size": 1},
                       {"containerID": 0, "hostID": 7, "size": 1}]), 7),
    (spec(gidMappings=[{"containerID": 1, "hostID": 5, "size": 1}]), 0),
])
def test_remapped_gid(data, gid):
    assert remapped_gid(data) == gid


@pytest.mark.parametrize("data", [
    b"{", b'{"linux": 5}', spec(gidMappings={"containerID": 0}),
    spec(gidMappings=[{"containerID": 0, "hostID": "x"}]),
    spec(gidMappings=[{"containerID": 0, "hostID": -1}]),
    spec(gidMappings=[{"containerID": 0, "hostID": 1 << 32}]),
])
def test_bad_specs_are_errors(data):
    with pytest.raises(ApplianceError, match="^invalid spec: "):
        remapped_gid(data)
