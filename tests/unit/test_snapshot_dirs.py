"""Snapshot directories are marked as tops of directory hierarchies where the filesystem can."""
import os
import subprocess
import tempfile

import pytest

from appliance.core.snapshots.backends import FS_TOPDIR_FL, OverlayBackend, inode_flags


def _fs_type(path: str) -> str:
    return subprocess.run(["stat", "-f", "-c", "%T", path], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_snapshots_dir_spreads_new_snapshots_on_ext4():
    base = "/var/tmp"
    if _fs_type(base) != "ext2/ext3":   # stat's name for ext4 too
        pytest.skip(f"{base} is not ext4 here")
    with tempfile.TemporaryDirectory(dir=base) as root:
        backend = OverlayBackend(root)
        assert inode_flags(backend.snapshots) & FS_TOPDIR_FL
        OverlayBackend(root)   # idempotent on restart
        assert inode_flags(backend.snapshots) & FS_TOPDIR_FL


def test_snapshots_dir_on_tmpfs_needs_no_flag():
    with tempfile.TemporaryDirectory(dir="/dev/shm") as root:
        backend = OverlayBackend(root)   # the flag is unknown there: no error
        assert os.path.isdir(backend.snapshots)
