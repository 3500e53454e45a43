"""stream_processors: a layer of a custom media type applied through an external
binary (a shell script decoding base64) when `ctr images import` unpacks it."""
import base64
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from daemon import Daemon
from test_listeners import bound_port, scrape

pytestmark = pytest.mark.integration
CUSTOM = "application/vnd.oci.image.layer.v1.tar+b64"
REF = "localhost/stream-processed:v1"


def _tar(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1700000000
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _blob(blobs, data: bytes, media_type: str) -> dict:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def make_image(path: Path, layer_tar: bytes) -> Path:
    """An OCI archive whose only layer is base64 text of `layer_tar`, typed CUSTOM."""
    blobs = {}
    layer = _blob(blobs, base64.encodebytes(layer_tar), CUSTOM)
    config = _blob(blobs, json.dumps({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers",
                   "diff_ids": ["sha256:" + hashlib.sha256(layer_tar).hexdigest()]},
    }).encode(), "application/vnd.oci.image.config.v1+json")
    manifest = _blob(blobs, json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config, "layers": [layer]}).encode(),
        "application/vnd.oci.image.manifest.v1+json")
    manifest["annotations"] = {"io.containerd.image.name": REF}
    files = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}',
             "index.json": json.dumps({"schemaVersion": 2, "manifests": [manifest]}).encode()}
    files.update({f"blobs/sha256/{d.split(':')[1]}": b for d, b in blobs.items()})
    path.write_bytes(_tar(files))
    return path


def configure_processor(d: Daemon, script: Path) -> None:
    """Give `d` a config with `script` as the processor of CUSTOM layers."""
    d.workdir.mkdir(parents=True, exist_ok=True)
    (d.workdir / "config.toml").write_text(f"""version = 2
[stream_processors."b64"]
accepts = ["{CUSTOM}"]
returns = "application/vnd.oci.image.layer.v1.tar"
path = "{script}"
""")
    d.config = str(d.workdir / "config.toml")


def test_custom_media_type_layer_applied_by_stream_processor(tmp_path):
    layer_tar = _tar({"hello.txt": b"decoded by the stream processor\n"})
    image = make_image(tmp_path / "image.tar", layer_tar)
    script = tmp_path / "b64-decoder"
    script.write_text('#!/bin/sh\n[ "$STREAM_PROCESSOR_MEDIATYPE" = "' + CUSTOM +
                      '" ] || { echo "wrong media type $STREAM_PROCESSOR_MEDIATYPE" >&2; exit 1; }\n'
                      'exec base64 -d\n')
    script.chmod(0o755)

    plain = Daemon()  # without the processor the layer cannot be unpacked
    d = Daemon()
    configure_processor(d, script)
    with open(d.config, "a") as f:
        f.write('[metrics]\naddress = "127.0.0.1:0"\n')
    try:
        plain.start()
        r = plain.ctr("images", "import", "--snapshotter", "native", str(image), check=False)
        assert r.returncode != 0 and "no processor for media-type" in r.stderr, r.stderr

        d.start()
        d.ctr("images", "import", "--snapshotter", "native", str(image))
        diff_id = "sha256:" + hashlib.sha256(layer_tar).hexdigest()
        listing = d.ctr("snapshots", "--snapshotter", "native", "ls").stdout
        assert diff_id in listing and "Committed" in listing  # chain id of one layer = diff id
        found = list((d.root / "io.containerd.snapshotter.v1.native" / "snapshots")
                     .glob("*/fs/hello.txt"))
        assert [p.read_bytes() for p in found] == [b"decoded by the stream processor\n"]
        samples = scrape(bound_port(d, "metrics endpoint"))
        assert samples[("ctrappliance_unpack_bytes_total", ())] == len(layer_tar)
        assert samples[("ctrappliance_unpack_duration_seconds_count", ())] == 1
    finally:
        plain.cleanup()
        d.cleanup()
