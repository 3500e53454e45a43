"""Device nodes for CRI containers: those a request names, and all of the host's for a
privileged container. Entries are OCI `linux.devices` plus a matching device-cgroup rule."""
from __future__ import annotations

import os
import stat

# Directories under /dev that hold no devices a container should get (or are mounted anew).
SKIPPED_DIRS = {"pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"}


def device_from_path(path: str) -> dict | None:
    """The OCI device for a block or character node; None for anything else."""
    st = os.lstat(path)
    if stat.S_ISBLK(st.st_mode):
        kind = "b"
    elif stat.S_ISCHR(st.st_mode):
        kind = "c"
    else:
        return None
    return {"path": path, "type": kind, "major": os.major(st.st_rdev),
            "minor": os.minor(st.st_rdev), "fileMode": stat.S_IMODE(st.st_mode),
            "uid": st.st_uid, "gid": st.st_gid}


def devices_under(path: str, container_path: str = "") -> list[dict]:
    """A node, or every node below a directory (console and SKIPPED_DIRS left out)."""
    if not os.path.isdir(path):
        dev = device_from_path(path)
        if dev is None:
            raise ValueError(f"{path} is not a device node")
        if container_path:
            dev["path"] = container_path
        return [dev]
    found = []
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        inner = os.path.join(container_path, entry.name) if container_path else ""
        if entry.is_dir(follow_symlinks=False):
            if entry.name not in SKIPPED_DIRS:
                found += devices_under(entry.path, inner)
            continue
        if entry.name == "console":
            continue
        try:
            dev = device_from_path(entry.path)
        except FileNotFoundError:
            continue
        if dev is not None:
            if inner:
                dev["path"] = inner
            found.append(dev)
    return found


def add_request_devices(spec: dict, requested, owner: tuple[int, int] | None = None) -> None:
    """The request's devices (host path resolved through symlinks), each allowed in the device
    cgroup with the request's permissions. `owner`: (uid, gid) from the security context for
    device_ownership_from_security_context (0 keeps the host's)."""
    linux = spec.setdefault("linux", {})
    rules = linux.setdefault("resources", {}).setdefault("devices", [])
    for device in requested:
        host = os.path.realpath(device.host_path)
        try:
            found = devices_under(host, device.container_path)
        except (OSError, ValueError) as exc:
            raise ValueError(f"error gathering device information while adding custom device "
                             f"{device.host_path!r}: {exc}") from None
        for dev in found:
            if owner:
                dev["uid"] = owner[0] or dev["uid"]
                dev["gid"] = owner[1] or dev["gid"]
            linux.setdefault("devices", []).append(dev)
            rules.append({"allow": True, "type": dev["type"], "major": dev["major"],
                          "minor": dev["minor"], "access": device.permissions})


def add_host_devices(spec: dict) -> None:
    """Privileged: every node under the host's /dev, and all devices allowed rwm."""
    linux = spec.setdefault("linux", {})
    linux.setdefault("devices", []).extend(
        d for d in devices_under("/dev") if d["type"] != "p")
    linux.setdefault("resources", {})["devices"] = [{"allow": True, "access": "rwm"}]
