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
