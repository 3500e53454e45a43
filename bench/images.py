"""Test images (OCI layout tarballs) built once with ../shared/anchor/make_oci_image.py, cached."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

MAKER = Path(os.environ.get("BENCH_IMAGE_MAKER", "/work/shared/anchor/make_oci_image.py"))
CACHE = Path(os.environ.get("BENCH_CACHE", "/tmp/ctrappliance-bench"))
SMALL_REF = "localhost/busybox:latest"
BIG_REF = "localhost/bigimage:latest"
MANY_REF = "localhost/many:latest"
# a layer of 300,000 tiny files (1-64 bytes, 200 a directory) over busybox
MANY_ARGS = ["--variant", "big", "--ref", MANY_REF, "--small-files", "300000", "--small-min", "1",
             "--small-max", "64", "--large-files", "0"]
INGEST_MIB = 512


def image(variant: str) -> dict:
    """Path and digests of the `small`, `big` or `many` image, building it if missing."""
    out = CACHE / "images" / {"small": "busybox.tar", "big": "big.tar", "many": "many.tar"}[variant]
    info = Path(str(out) + ".json")
    if not info.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        args = MANY_ARGS if variant == "many" else ["--variant", variant]
        subprocess.run([sys.executable, str(MAKER), *args, "--out", str(out)],
                       check=True, stdout=subprocess.DEVNULL, timeout=1200)
    meta = json.loads(info.read_text())
    meta["path"] = str(out)
    meta["uncompressed_mib"] = sum(l["uncompressed_size"] for l in meta["layers"]) / 2**20
    return meta


def random_blob(mib: int = INGEST_MIB) -> tuple[Path, "hashlib._Hash"]:
    """A random file of `mib` MiB and its sha256 state (extended per repetition with a trailer)."""
    path = CACHE / f"random-{mib}m.bin"
    if not path.exists() or path.stat().st_size != mib * 2**20:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            for _ in range(mib):
                f.write(os.urandom(2**20))
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(2**20), b""):
            digest.update(chunk)
    return path, digest


def multilayer(layers: int = 5, files: int = 300) -> dict:
    """The small image's busybox layer plus `layers` layers of `files` files each (8–64 KiB,
    half text, half random; deterministic), as an OCI archive: a many-layer pull."""
    out = CACHE / "images" / f"layers{layers + 1}.tar"
    if not out.exists():
        _write_multilayer(out, image("small"), layers, files)
    return {"path": str(out), "layers": layers + 1}


def _write_multilayer(out: Path, small: dict, layers: int, files: int) -> None:
    import gzip
    import io
    import random
    import tarfile
    rng = random.Random(7)
    with tarfile.open(small["path"]) as tar:
        blobs = {"sha256:" + m.name.rsplit("/", 1)[1]: tar.extractfile(m).read()
                 for m in tar.getmembers() if m.isfile() and m.name.startswith("blobs/")}
    base = small["layers"][0]
    layer_descs = [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": base["digest"], "size": base["size"]}]
    diff_ids = [base["diff_id"]]
    words = b"lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod ".split()
    for n in range(layers):
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for i in range(files):
                size = rng.randint(8, 64) << 10
                data = rng.randbytes(size) if i % 2 else \
                    b" ".join(rng.choice(words) for _ in range(size // 6))[:size]
                info = tarfile.TarInfo(f"data/layer{n}/d{i // 50}/f{i}")
                info.size, info.mtime = len(data), 1704067200
                tar.addfile(info, io.BytesIO(data))
        uncompressed = raw.getvalue()
        compressed = gzip.compress(uncompressed, compresslevel=6, mtime=0)
        digest = "sha256:" + hashlib.sha256(compressed).hexdigest()
        blobs[digest] = compressed
        layer_descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                            "digest": digest, "size": len(compressed)})
        diff_ids.append("sha256:" + hashlib.sha256(uncompressed).hexdigest())

    def add(obj: dict, media_type: str) -> dict:
        data = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {"mediaType": media_type, "digest": digest, "size": len(data)}
    config = add({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
                  "rootfs": {"type": "layers", "diff_ids": diff_ids}},
                 "application/vnd.oci.image.config.v1+json")
    manifest = add({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": config, "layers": layer_descs},
                   "application/vnd.oci.image.manifest.v1+json")
    index = {"schemaVersion": 2, "manifests": [{**manifest, "annotations": {
        "org.opencontainers.image.ref.name": "localhost/layers:latest"}}]}
    write_oci_archive(out, index, blobs)


def write_oci_archive(out: Path, index: dict, blobs: dict[str, bytes]) -> None:
    """An OCI image layout tarball: `index` as index.json, every blob (digest -> bytes)."""
    import io
    import tarfile
    tmp = out.with_suffix(".tmp")
    with tarfile.open(tmp, "w") as tar:
        for name, data in [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
                           ("index.json", json.dumps(index).encode()),
                           *[("blobs/sha256/" + d.split(":", 1)[1], blobs[d]) for d in sorted(blobs)]]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    tmp.rename(out)
