"""Build layer tarballs and OCI image tarballs in memory, for apply and import tests."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import time

EPOCH = 1704067200


def entry(name, type=tarfile.REGTYPE, data=b"", mode=0o644, uid=0, gid=0, linkname="",
          mtime=EPOCH, pax=None, devmajor=0, devminor=0):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid, info.mtime = type, mode, uid, gid, mtime
    info.linkname, info.size = linkname, len(data) if type == tarfile.REGTYPE else 0
    info.devmajor, info.devminor = devmajor, devminor
    if pax:
        info.pax_headers = dict(pax)
    return info, data


def layer(*entries, fmt=tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data else None)
    return buf.getvalue()


def oci_image(layers: list[bytes], ref="localhost/test:latest", media_type=None) -> bytes:
    """An OCI image-layout tar (gzip layers unless media_type says otherwise)."""
    blobs: dict[str, bytes] = {}

    def add(data: bytes) -> dict:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {"digest": digest, "size": len(data)}

    diff_ids, descs = [], []
    for raw in layers:
        diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
        mt = media_type or "application/vnd.oci.image.layer.v1.tar+gzip"
        data = gzip.compress(raw, mtime=0) if mt.endswith("+gzip") else raw
        descs.append({"mediaType": mt, **add(data)})
    config = {"architecture": "amd64", "os": "linux", "config": {},
              "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    cdesc = {"mediaType": "application/vnd.oci.image.config.v1+json",
             **add(json.dumps(config).encode())}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": cdesc, "layers": descs}
    mdesc = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
             **add(json.dumps(manifest).encode()),
             "annotations": {"org.opencontainers.image.ref.name": ref},
             "platform": {"architecture": "amd64", "os": "linux"}}
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [mdesc]}
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        files = {"oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
                 "index.json": json.dumps(index).encode()}
        files.update({f"blobs/sha256/{d.split(':')[1]}": b for d, b in blobs.items()})
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()
