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


def make_random_image(directory: Path, ref: str, mib: int, file_mib: int = 4) -> Path:
    """An OCI layout tarball of one uncompressed layer of `mib` MiB of random files: what it
    takes to ingest and to unpack it is known to the byte (nothing compresses)."""
    import hashlib
    import io
    import os
    directory = Path(directory)
    layer = directory / f"layer-{mib}.tar"

    def add(tar, name, data):
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o644, 1704067200
        tar.addfile(info, io.BytesIO(data))

    with tarfile.open(layer, "w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(0, mib, file_mib):
            add(tar, f"random-{i:04d}.bin", os.urandom(min(file_mib, mib - i) << 20))
    layer_bytes = layer.read_bytes()
    layer.unlink()

    def blob(data):
        return {"digest": "sha256:" + hashlib.sha256(data).hexdigest(), "size": len(data)}

    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers",
                                    "diff_ids": [blob(layer_bytes)["digest"]]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **blob(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    **blob(layer_bytes)}]}).encode()
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", **blob(manifest),
        "annotations": {"org.opencontainers.image.ref.name": ref}}]}).encode()
    out = directory / f"random-{mib}.tar"
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        add(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add(tar, "index.json", index)
        for data in (config, manifest, layer_bytes):
            add(tar, "blobs/sha256/" + blob(data)["digest"][7:], data)
    return out


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


def with_config(oci: Path, name: str, **config) -> Path:
    """A copy of a one-image OCI archive whose image config's `config` gets `config`'s keys
    (Cmd, Entrypoint, Volumes, ...): e.g. a pause image from busybox."""
    import hashlib
    from bench.images import write_oci_archive
    blobs = oci_blobs(oci)
    [digest] = oci_manifest_digests(oci)
    manifest = json.loads(blobs[digest])
    image_config = json.loads(blobs[manifest["config"]["digest"]])
    image_config.setdefault("config", {}).update(config)

    def add(data: bytes, media_type: str) -> dict:
        blob_digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[blob_digest] = data
        return {"mediaType": media_type, "digest": blob_digest, "size": len(data)}

    new_config = add(_canonical(image_config), manifest["config"]["mediaType"])
    new_manifest = add(_canonical({**manifest, "config": new_config}), manifest["mediaType"])
    out = oci.with_name(f"{name}.tar")
    write_oci_archive(out, {"schemaVersion": 2, "manifests": [new_manifest]}, blobs)
    return out
