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


def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def make_multiarch(oci: Path, other=("arm64", "v8")) -> Path:
    """An OCI archive whose one entry is an image index: `other`'s manifest first (a config
    that differs only in its platform, the same layers), then the original linux/amd64 one."""
    import hashlib
    from bench.images import write_oci_archive
    blobs = oci_blobs(oci)
    [amd64_digest] = oci_manifest_digests(oci)
    manifest = json.loads(blobs[amd64_digest])
    config = json.loads(blobs[manifest["config"]["digest"]])
    config.update(architecture=other[0], variant=other[1])

    def add(data: bytes, media_type: str, **extra) -> dict:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {"mediaType": media_type, "digest": digest, "size": len(data), **extra}

    other_config = add(_canonical(config), manifest["config"]["mediaType"])
    other_manifest = add(_canonical({**manifest, "config": other_config}), manifest["mediaType"],
                         platform={"architecture": other[0], "os": "linux", "variant": other[1]})
    amd64 = {"mediaType": manifest["mediaType"], "digest": amd64_digest,
             "size": len(blobs[amd64_digest]),
             "platform": {"architecture": "amd64", "os": "linux"}}
    index = add(_canonical({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                            "manifests": [other_manifest, amd64]}),
                "application/vnd.oci.image.index.v1+json")
    out = oci.with_name("multiarch.tar")
    write_oci_archive(out, {"schemaVersion": 2, "manifests": [index]}, blobs)
    return out
