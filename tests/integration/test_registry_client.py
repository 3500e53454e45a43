"""The registry client (appliance/core/remotes) against Debian's docker-registry on 127.0.0.1:
resolve by tag and digest, blob fetch and range resume, basic auth, mirrors from hosts.toml,
missing images, a registry that hangs mid-body. (The CRI pull engine builds on it.)"""
import asyncio
import hashlib
import json
import tempfile
from pathlib import Path

import pytest

from appliance.core.remotes import hosts, reference
from appliance.core.remotes.registry import (OCI_MANIFEST, Descriptor, Registry, RegistryError,
                                             Timeouts)
from appliance.errdefs import NotFound
from image_helpers import make_oci
from registry import LocalRegistry

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def image():
    with tempfile.TemporaryDirectory(prefix="ca-regimg-") as d:
        yield make_oci(Path(d))


@pytest.fixture(scope="module")
def open_registry(image):
    r = LocalRegistry().start()
    try:
        r.digest = r.push(image, "test/busybox:v1")
        yield r
    finally:
        r.stop()


@pytest.fixture(scope="module")
def locked_registry(image):
    r = LocalRegistry(users={"alice": "s3cret"}).start()
    try:
        r.digest = r.push(image, "team/busybox:v1")
        yield r
    finally:
        r.stop()


async def _pull_blobs(registry: Registry, text: str):
    ref = reference.parse(text)
    desc, body = await registry.resolve(ref)
    manifest = json.loads(body)
    blobs = {}
    for d in [manifest["config"], *manifest["layers"]]:
        data = b"".join([c async for c in await registry.fetch(
            Descriptor(d["mediaType"], d["digest"], d["size"]))])
        blobs[d["digest"]] = data
    return desc, manifest, blobs


def _registry(r: LocalRegistry, repo: str, credentials=None, config_path="", host=None):
    return Registry(hosts.registry_hosts(host or r.host, config_path), repo, credentials)


def test_resolve_by_tag_and_digest_and_fetch_verified_blobs(open_registry):
    r = open_registry

    async def main():
        reg = _registry(r, "test/busybox")
        try:
            desc, manifest, blobs = await _pull_blobs(reg, f"{r.host}/test/busybox:v1")
            by_digest, body = await reg.resolve(reference.parse(f"{r.host}/test/busybox@{r.digest}"))
            return desc, manifest, blobs, by_digest
        finally:
            await reg.aclose()

    desc, manifest, blobs, by_digest = asyncio.run(main())
    assert desc.digest == r.digest == by_digest.digest
    assert desc.media_type == OCI_MANIFEST and manifest["mediaType"] == OCI_MANIFEST
    for digest, data in blobs.items():
        assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
    assert len(blobs) == 2   # config + the busybox layer


def test_range_fetch_resumes_a_blob(open_registry):
    r = open_registry

    async def main():
        reg = _registry(r, "test/busybox")
        try:
            _, manifest, blobs = await _pull_blobs(reg, f"{r.host}/test/busybox:v1")
            layer = manifest["layers"][0]
            desc = Descriptor(layer["mediaType"], layer["digest"], layer["size"])
            tail = b"".join([c async for c in await reg.fetch(desc, offset=1000)])
            return blobs[layer["digest"]], tail
        finally:
            await reg.aclose()

    whole, tail = asyncio.run(main())
    assert tail == whole[1000:]


def test_missing_tag_and_repository_are_not_found(open_registry):
    r = open_registry

    async def resolve(text):
        ref = reference.parse(text)
        reg = _registry(r, ref.path)
        try:
            return await reg.resolve(ref)
        finally:
            await reg.aclose()

    for text in (f"{r.host}/test/busybox:nope", f"{r.host}/no/such:v1"):
        with pytest.raises(NotFound, match="not found"):
            asyncio.run(resolve(text))


def test_basic_auth_ok_denied_and_missing(locked_registry):
    r = locked_registry

    async def resolve(credentials):
        reg = _registry(r, "team/busybox", credentials)
        try:
            return await reg.resolve(reference.parse(f"{r.host}/team/busybox:v1"))
        finally:
            await reg.aclose()

    desc, _ = asyncio.run(resolve(lambda host: ("alice", "s3cret")))
    assert desc.digest == r.digest
    with pytest.raises(RegistryError, match=rf"{r.host}.*401 Unauthorized"):
        asyncio.run(resolve(lambda host: ("alice", "wrong")))
    with pytest.raises(RegistryError, match=rf"{r.host}.*401 Unauthorized"):   # containerd's words
        asyncio.run(resolve(None))


def test_mirror_from_hosts_toml_serves_another_registrys_name(open_registry, tmp_path):
    r = open_registry
    certs = tmp_path / "certs.d" / "registry.invalid"
    certs.mkdir(parents=True)
    (certs / "hosts.toml").write_text(
        f'server = "https://registry.invalid"\n'
        f'[host."http://{r.host}"]\n  capabilities = ["pull", "resolve"]\n')

    async def main():
        reg = _registry(r, "test/busybox", config_path=str(tmp_path / "certs.d"),
                        host="registry.invalid")
        try:
            return await _pull_blobs(reg, "registry.invalid/test/busybox:v1")
        finally:
            await reg.aclose()

    desc, _, blobs = asyncio.run(main())
    assert desc.digest == r.digest and len(blobs) == 2


def test_a_registry_that_hangs_mid_body_fails_the_fetch():
    """Headers and half the body, then silence: the read timeout ends the fetch."""
    async def main():
        release = asyncio.Event()

        async def handle(reader, writer):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 50)
            await writer.drain()
            await release.wait()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reg = Registry(hosts.registry_hosts(f"127.0.0.1:{port}"), "x/y",
                       timeouts=Timeouts(connect=5, read=0.5))
        try:
            stream = await reg.fetch(Descriptor("application/octet-stream",
                                                "sha256:" + "0" * 64, 100))
            got = b""
            with pytest.raises(RegistryError, match="no data for 0.5s"):
                async for chunk in stream:
                    got += chunk
            assert got == b"x" * 50
        finally:
            await reg.aclose()
            release.set()
            server.close()
            await server.wait_closed()

    asyncio.run(main())
