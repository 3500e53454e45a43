"""Test images built locally: the anchor's deterministic OCI tarball, and a docker-archive of it."""
import json
import subprocess
import sys
import tarfile
from pathlib import Path

MAKE_OCI = "/work/shared/anchor/make_oci_image.py"
SKOPEO = "/usr/bin/skopeo"


def make_oci(directory: Path, ref="localhost/busybox:latest") -> Path:
    out = Path(directory) / "oci.tar"
    subprocess.run([sys.executable, MAKE_OCI, "--variant", "small", "--out", str(out),
                    "--ref", ref], check=True, capture_output=True, timeout=120)
    return out


def make_docker_archive(oci: Path, ref="localhost/dockerbox:v1") -> Path:
    out = oci.with_name("docker.tar")
    out.unlink(missing_ok=True)
    subprocess.run([SKOPEO, "copy", "--quiet", f"oci-archive:{oci}", f"docker-archive:{out}:{ref}"],
                   check=True, capture_output=True, timeout=120)
    return out


def oci_blobs(tar_path: Path) -> dict[str, bytes]:
    """digest -> bytes of every blob in an OCI layout tarball."""
    with tarfile.open(tar_path) as tar:
        return {"sha256:" + m.name.rsplit("/", 1)[1]: tar.extractfile(m).read()
                for m in tar.getmembers() if m.isfile() and m.name.startswith("blobs/sha256/")}


def oci_manifest_digests(tar_path: Path) -> list[str]:
    with tarfile.open(tar_path) as tar:
        index = json.load(tar.extractfile("index.json"))
    return [m["digest"] for m in index["manifests"]]
