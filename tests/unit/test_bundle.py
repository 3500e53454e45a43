"""The bundle's user-namespace group: which host gid a spec maps the container's root to."""
import json
import os

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


def test_the_quick_rootfs_removal_leaves_mounts_and_files_to_the_full_one(tmp_path):
    """On the loop only an empty, unmounted rootfs goes (one rmdir); a mount point or a
    non-empty rootfs is left for `_remove_rootfs` (mountinfo, unmount) in a thread. The
    cgroups path is noted at create, not read again."""
    import subprocess
    from appliance.core.runtime.bundle import Bundle
    from appliance.core.runtime.manager import _remove_rootfs_quickly
    from appliance.process.trash import Trash

    def bundle(task_id):
        b = Bundle(str(tmp_path / "state"), str(tmp_path / "root"), "ns", task_id, Trash())
        b.create(spec(cgroupsPath=f"/ns/{task_id}"))
        assert b.cgroups_path == f"/ns/{task_id}"
        return b

    empty, full, mounted = bundle("empty"), bundle("full"), bundle("mounted")
    assert _remove_rootfs_quickly(empty, empty.cgroups_path)
    assert not os.path.exists(empty.rootfs)
    open(os.path.join(full.rootfs, "file"), "w").close()
    assert not _remove_rootfs_quickly(full, full.cgroups_path)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", mounted.rootfs], check=True)
    try:
        assert not _remove_rootfs_quickly(mounted, mounted.cgroups_path)
        assert os.path.ismount(mounted.rootfs)
    finally:
        subprocess.run(["umount", mounted.rootfs], check=True)
