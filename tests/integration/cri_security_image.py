"""A test image for CRI security contexts: the anchor's busybox image plus a layer with users and
groups (`app` 1000:1000, member of `extra` 3000), the busybox applets the tests call, and a
long-running default command, so that the same image serves as the pod's pause image."""
import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

from image_helpers import make_oci

PASSWD = b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"
GROUP = b"root:x:0:\napp:x:1000:\nextra:x:3000:app\nother:x:4000:root\n"
APPLETS = ("unshare", "sysctl", "grep", "touch", "stat", "rm", "mkdir", "nsenter", "chroot")


def _tar_bytes(entries) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, link in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1704067200
            if link:
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, link, 0o777
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def make_security_image(directory: Path, ref: str = "localhost/cri-sec:v1") -> Path:
    base = make_oci(Path(directory), ref=ref)
    with tarfile.open(base) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    index = json.loads(files["index.json"])
    manifest_name = "blobs/sha256/" + index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads(files[manifest_name])
    config_name = "blobs/sha256/" + manifest["config"]["digest"].split(":")[1]
    config = json.loads(files[config_name])

    layer = _tar_bytes([("etc/passwd", PASSWD, None), ("etc/group", GROUP, None)]
                       + [(f"bin/{a}", b"", "busybox") for a in APPLETS])
    layer_gz = gzip.compress(layer, mtime=0)
    config["config"]["Cmd"] = ["sleep", "3600"]
    config["rootfs"]["diff_ids"].append(_digest(layer))
    config_b = json.dumps(config, sort_keys=True).encode()
    manifest["config"].update(digest=_digest(config_b), size=len(config_b))
    manifest["layers"].append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                               "digest": _digest(layer_gz), "size": len(layer_gz)})
    manifest_b = json.dumps(manifest, sort_keys=True).encode()
    index["manifests"][0].update(digest=_digest(manifest_b), size=len(manifest_b))

    blobs = {k: v for k, v in files.items() if k.startswith("blobs/") and k not in
             (manifest_name, config_name)}
    for data in (config_b, manifest_b, layer_gz):
        blobs["blobs/sha256/" + _digest(data).split(":")[1]] = data
    out = Path(directory) / "cri-sec.tar"
    with tarfile.open(out, "w") as tar:
        for name, data in [("oci-layout", files["oci-layout"]),
                           ("index.json", json.dumps(index).encode()), *sorted(blobs.items())]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out
