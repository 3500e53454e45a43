"""The CRI ImageService (runtime.v1), driven by a client generated from the same descriptors,
against ctrappliance and Debian's containerd 1.6.20 with CRI on, each pulling from Debian's
docker-registry on 127.0.0.1: the same answers where the behaviour is containerd's."""
import json
import os
import tempfile
import time
from pathlib import Path

import grpc
import pytest

from appliance._proto.cri.v1 import api_pb2 as pb, api_pb2_grpc as rpc
from daemon import Daemon, wait_for
from image_helpers import make_multiarch, make_oci, oci_blobs, oci_manifest_digests
from reference import Containerd
from registry import LocalRegistry

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def registry():
    with tempfile.TemporaryDirectory(prefix="ca-criimg-") as d:
        image = make_oci(Path(d))
        r = LocalRegistry().start()
        try:
            r.digest = r.push(image, "test/busybox:v1")
            r.push(image, "test/other:v2")
            r.multiarch = r.push(make_multiarch(image), "test/multi:v1")
            r.oci = image
            yield r
        finally:
            r.stop()


@pytest.fixture(scope="module", params=["basic", "token"])
def private_registry(request):
    """docker-registry with htpasswd (Basic) auth, or the token flow (Bearer)."""
    with tempfile.TemporaryDirectory(prefix="ca-criprivate-") as d:
        image = make_oci(Path(d))
        r = LocalRegistry(users={"kube": "let-me-in"}, token=request.param == "token").start()
        r.kind = request.param
        try:
            r.push(image, "private/busybox:v1")
            yield r
        finally:
            r.stop()


@pytest.fixture(scope="module", params=["ctrappliance", "containerd"])
def cri_daemon(request):
    d = Daemon() if request.param == "ctrappliance" else Containerd(cri=True)
    d.start()
    try:
        yield request.param, d
    finally:
        d.cleanup()


@pytest.fixture(scope="module")
def cri(cri_daemon):
    kind, d = cri_daemon
    channel = grpc.insecure_channel(f"unix://{d.address}")
    try:
        yield kind, rpc.ImageServiceStub(channel), rpc.RuntimeServiceStub(channel)
    finally:
        channel.close()


@pytest.fixture(autouse=True)
def _no_images_left(request):
    """A failed case must not leave images to the next one on the shared daemon."""
    yield
    if "cri" in request.fixturenames:
        images = request.getfixturevalue("cri")[1]
        for image in images.ListImages(pb.ListImagesRequest()).images:
            images.RemoveImage(pb.RemoveImageRequest(image=_spec(image.id)))


def _spec(text):
    return pb.ImageSpec(image=text)


def _images(images):
    return sorted((i.id, sorted(i.repo_tags), sorted(i.repo_digests), i.size)
                  for i in images.ListImages(pb.ListImagesRequest()).images)


ANSWERS = {}   # case -> {daemon: answer}: each case is compared once both daemons ran it


def same(case, kind, answer):
    seen = ANSWERS.setdefault(case, {})
    seen[kind] = answer
    if os.environ.get("CRI_ANSWERS"):   # debugging a difference: both answers, as JSON
        with open(os.environ["CRI_ANSWERS"], "a") as f:
            f.write(json.dumps([case, kind, repr(answer)]) + "\n")
    if len(seen) == 2:
        assert seen["ctrappliance"] == seen["containerd"], case


def test_pull_list_status_remove(cri, registry):
    kind, images, _ = cri
    ref = f"{registry.host}/test/busybox:v1"
    image_id = images.PullImage(pb.PullImageRequest(image=_spec(ref))).image_ref
    assert image_id.startswith("sha256:")
    listed = _images(images)
    assert (image_id, [ref], [f"{registry.host}/test/busybox@{registry.digest}"]) == listed[0][:3]
    same("pull", kind, (image_id, listed))

    status = images.ImageStatus(pb.ImageStatusRequest(image=_spec(ref), verbose=True))
    info = json.loads(status.info["info"])
    assert status.image.id == image_id and info["imageSpec"]["rootfs"]["type"] == "layers"
    same("status", kind, (status.image.SerializeToString(deterministic=True), info["chainID"]))
    by_id = images.ImageStatus(pb.ImageStatusRequest(image=_spec(image_id))).image
    assert by_id.id == image_id

    # the same image by digest: one image, one more name
    images.PullImage(pb.PullImageRequest(image=_spec(
        f"{registry.host}/test/busybox@{registry.digest}")))
    assert len(_images(images)) == 1

    # a missing image: an empty status; removing it is no error
    missing = images.ImageStatus(pb.ImageStatusRequest(image=_spec(f"{registry.host}/no/pe:x")))
    assert not missing.HasField("image")
    images.RemoveImage(pb.RemoveImageRequest(image=_spec(f"{registry.host}/no/pe:x")))

    images.RemoveImage(pb.RemoveImageRequest(image=_spec(image_id)))
    assert _images(images) == []


def test_multiarch_index_picks_the_host_platform(cri, registry):
    """An index listing linux/arm64/v8 first, then linux/amd64: the amd64 image is pulled;
    its repo digest names the index."""
    kind, images, _ = cri
    ref = f"{registry.host}/test/multi:v1"
    image_id = images.PullImage(pb.PullImageRequest(image=_spec(ref))).image_ref
    amd64 = json.loads(oci_blobs(registry.oci)[oci_manifest_digests(registry.oci)[0]])
    assert image_id == amd64["config"]["digest"]
    listed = _images(images)
    assert listed[0][:3] == (image_id, [ref], [f"{registry.host}/test/multi@{registry.multiarch}"])
    status = images.ImageStatus(pb.ImageStatusRequest(image=_spec(ref), verbose=True))
    same("multiarch", kind, (listed, status.image.SerializeToString(deterministic=True),
                             json.loads(status.info["info"])["chainID"]))
    images.RemoveImage(pb.RemoveImageRequest(image=_spec(ref)))
    assert _images(images) == []


def test_remove_by_tag_removes_every_name(cri, registry):
    """Two tags and a repo digest of one image: RemoveImage by one tag removes them all."""
    kind, images, _ = cri
    first, second = f"{registry.host}/test/busybox:v1", f"{registry.host}/test/other:v2"
    ids = {images.PullImage(pb.PullImageRequest(image=_spec(r))).image_ref
           for r in (first, second)}
    assert len(ids) == 1
    before = _images(images)
    images.RemoveImage(pb.RemoveImageRequest(image=_spec(second)))
    after = _images(images)
    same("remove-by-tag", kind, (before, after))
    assert after == []


def test_status_verbose_info_and_list_filter(cri, registry):
    kind, images, _ = cri
    ref = f"{registry.host}/test/busybox:v1"
    image_id = images.PullImage(pb.PullImageRequest(image=_spec(ref))).image_ref
    info = images.ImageStatus(pb.ImageStatusRequest(image=_spec(ref), verbose=True)).info
    plain = images.ImageStatus(pb.ImageStatusRequest(image=_spec(ref))).info
    keys = (sorted(info), sorted(json.loads(info["info"])), sorted(plain))
    filtered = {}
    for text in (ref, image_id, f"{registry.host}/test/busybox@{registry.digest}",
                 f"{registry.host}/test/busybox:nope", "busybox", image_id[7:19]):
        request = pb.ListImagesRequest(filter=pb.ImageFilter(image=_spec(text)))
        filtered[text] = [i.id for i in images.ListImages(request).images]
    same("verbose-and-filter", kind, (keys, info["info"], filtered))
    images.RemoveImage(pb.RemoveImageRequest(image=_spec(image_id)))
    assert _images(images) == []


def test_pull_by_digest(cri, registry):
    kind, images, _ = cri
    ref = f"{registry.host}/test/busybox@{registry.digest}"
    image_id = images.PullImage(pb.PullImageRequest(image=_spec(ref))).image_ref
    listed = _images(images)
    status = images.ImageStatus(pb.ImageStatusRequest(image=_spec(ref))).image
    same("by-digest", kind, (image_id, listed, status.SerializeToString(deterministic=True)))
    images.RemoveImage(pb.RemoveImageRequest(image=_spec(ref)))
    assert _images(images) == []


def test_ctr_import_into_k8s_io_is_visible(cri, cri_daemon, registry):
    kind, images, _ = cri
    d = cri_daemon[1]
    d.ctr("images", "import", str(registry.oci), namespace="k8s.io")
    listed = _images(images)
    status = images.ImageStatus(pb.ImageStatusRequest(image=_spec("localhost/busybox:latest")))
    same("ctr-import", kind, (listed, status.image.SerializeToString(deterministic=True)))
    assert listed and listed[0][1] == ["localhost/busybox:latest"]
    images.RemoveImage(pb.RemoveImageRequest(image=_spec("localhost/busybox:latest")))
    assert _images(images) == []


def test_image_status_follows_tags_made_outside_the_cri(cri, cri_daemon, registry):
    """ImageStatus answers from a view of the images (as containerd's CRI image store):
    names tagged and removed with ctr show in it (the image events refresh it)."""
    kind, images, _ = cri
    d = cri_daemon[1]
    d.ctr("images", "import", str(registry.oci), namespace="k8s.io")

    def tags(name):
        status = images.ImageStatus(pb.ImageStatusRequest(image=_spec(name)))
        return sorted(status.image.repo_tags)

    first, second = "localhost/busybox:latest", "localhost/busybox:second"
    assert tags(first) == [first]
    d.ctr("images", "tag", first, second, namespace="k8s.io")
    wait_for(lambda: tags(first) == [first, second], timeout=10, what="the new tag")
    assert tags(second) == [first, second]
    d.ctr("images", "rm", second, namespace="k8s.io")
    wait_for(lambda: tags(first) == [first] and tags(second) == [], timeout=10,
             what="the removed tag gone")
    images.RemoveImage(pb.RemoveImageRequest(image=_spec(first)))
    assert tags(first) == []


@pytest.mark.parametrize("password", ["", "wrong"])
def test_auth_denied(cri, private_registry, password):
    kind, images, _ = cri
    ref = _spec(f"{private_registry.host}/private/busybox:v1")
    auth = pb.AuthConfig(username="kube", password=password) if password else None
    with pytest.raises(grpc.RpcError) as err:
        images.PullImage(pb.PullImageRequest(image=ref, auth=auth))
    assert private_registry.host in err.value.details()
    same(f"auth-denied-{private_registry.kind}-{password}", kind,
         (err.value.code(), err.value.details()))
    images.PullImage(pb.PullImageRequest(image=ref, auth=pb.AuthConfig(
        username="kube", password="let-me-in")))
    assert len(_images(images)) == 1
    if private_registry.kind == "token":   # credentials go as OAuth2's password grant
        assert private_registry.token_server.requests[-1] == ("POST", "kube")
    images.RemoveImage(pb.RemoveImageRequest(image=ref))


def test_pull_of_a_missing_tag_is_not_found(cri, registry):
    kind, images, _ = cri
    with pytest.raises(grpc.RpcError) as err:
        images.PullImage(pb.PullImageRequest(image=_spec(f"{registry.host}/test/busybox:nope")))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "failed to pull and unpack image" in err.value.details()
    same("missing", kind, (err.value.code(), err.value.details()))


def test_image_fs_info_names_the_snapshotter_dir(cri, registry):
    kind, images, _ = cri
    [fs] = images.ImageFsInfo(pb.ImageFsInfoRequest()).image_filesystems
    assert fs.fs_id.mountpoint.endswith("/io.containerd.snapshotter.v1.overlayfs")
    assert fs.HasField("used_bytes") and fs.HasField("inodes_used")


def test_runtime_version_names_the_runtime(cri):
    kind, _, runtime = cri
    v = runtime.Version(pb.VersionRequest())
    assert v.runtime_api_version == "v1"
    assert v.runtime_name == ("ctrappliance" if kind == "ctrappliance" else "containerd")


def test_mirror_from_hosts_toml(registry, tmp_path):
    """registry.config_path: a name on a registry that does not exist, served by a mirror."""
    certs = tmp_path / "certs.d" / "registry.invalid"
    certs.mkdir(parents=True)
    (certs / "hosts.toml").write_text(
        f'server = "https://registry.invalid"\n'
        f'[host."http://{registry.host}"]\n  capabilities = ["pull", "resolve"]\n')
    section = (f'[plugins."io.containerd.grpc.v1.cri".registry]\n'
               f'  config_path = "{tmp_path / "certs.d"}"\n')
    d = Daemon(workdir=str(tmp_path / "w"))
    (d.workdir / "cri.toml").write_text("version = 2\n" + section)
    d.config = str(d.workdir / "cri.toml")
    d.start()
    try:
        channel = grpc.insecure_channel(f"unix://{d.address}")
        images = rpc.ImageServiceStub(channel)
        images.PullImage(pb.PullImageRequest(image=_spec("registry.invalid/test/busybox:v1")))
        [(image_id, tags, digests, _)] = _images(images)
        assert tags == ["registry.invalid/test/busybox:v1"]
        channel.close()
    finally:
        d.cleanup()


def test_basic_auth_from_the_request(tmp_path):
    with tempfile.TemporaryDirectory(prefix="ca-criauth-") as tmp:
        image = make_oci(Path(tmp))
        r = LocalRegistry(users={"kube": "let-me-in"}).start()
        d = Daemon(workdir=str(tmp_path / "w")).start()
        try:
            r.push(image, "private/busybox:v1")
            images = rpc.ImageServiceStub(grpc.insecure_channel(f"unix://{d.address}"))
            ref = _spec(f"{r.host}/private/busybox:v1")
            with pytest.raises(grpc.RpcError) as err:
                images.PullImage(pb.PullImageRequest(image=ref, auth=pb.AuthConfig(
                    username="kube", password="wrong")))
            assert r.host in err.value.details() and "401" in err.value.details()
            images.PullImage(pb.PullImageRequest(image=ref, auth=pb.AuthConfig(
                username="kube", password="let-me-in")))
            assert len(_images(images)) == 1
        finally:
            d.cleanup()
            r.stop()


def _ours_with(tmp_path, section: str) -> Daemon:
    d = Daemon(workdir=str(tmp_path / "w"))
    (d.workdir / "cri.toml").write_text(
        'version = 2\n[plugins."io.containerd.grpc.v1.cri"]\n' + section)
    d.config = str(d.workdir / "cri.toml")
    return d.start()


def test_bearer_token_flow(tmp_path):
    with tempfile.TemporaryDirectory(prefix="ca-critoken-") as tmp:
        image = make_oci(Path(tmp))
        r = LocalRegistry(users={"kube": "token-pw"}, token=True).start()
        d = Daemon(workdir=str(tmp_path / "w")).start()
        try:
            r.push(image, "private/busybox:v1")
            issued = r.token_server.issued
            images = rpc.ImageServiceStub(grpc.insecure_channel(f"unix://{d.address}"))
            ref = _spec(f"{r.host}/private/busybox:v1")
            with pytest.raises(grpc.RpcError) as err:   # anonymous: the token server says no
                images.PullImage(pb.PullImageRequest(image=ref))
            assert r.host in err.value.details()
            images.PullImage(pb.PullImageRequest(image=ref, auth=pb.AuthConfig(
                username="kube", password="token-pw")))
            assert len(_images(images)) == 1 and r.token_server.issued > issued
        finally:
            d.cleanup()
            r.stop()


@pytest.mark.parametrize("which", ["layer", "config"])
def test_corrupted_blob_fails_the_pull_and_leaves_nothing(tmp_path, which):
    with tempfile.TemporaryDirectory(prefix="ca-cricorrupt-") as tmp:
        image = make_oci(Path(tmp))
        r = LocalRegistry().start()
        d = Daemon(workdir=str(tmp_path / "w")).start()
        try:
            r.push(image, "test/busybox:v1")
            blobs = _layer_digests(image) if which == "layer" else [_config_digest(image)]
            r.corrupt(blobs[0])
            images = rpc.ImageServiceStub(grpc.insecure_channel(f"unix://{d.address}"))
            with pytest.raises(grpc.RpcError) as err:
                images.PullImage(pb.PullImageRequest(image=_spec(f"{r.host}/test/busybox:v1")))
            assert "digest" in err.value.details()
            assert _images(images) == []
            active = d.ctr("content", "active", namespace="k8s.io").stdout.splitlines()[1:]
            # the layers' downloads, stopped by the config's failure, stay resumable
            assert [a for a in active if which == "layer" or blobs[0] in a] == []
            assert blobs[0] not in d.ctr("content", "ls", "-q", namespace="k8s.io").stdout
            assert d.ctr("snapshots", "ls", namespace="k8s.io").stdout.splitlines()[1:] == []
        finally:
            d.cleanup()
            r.stop()


def _config_digest(oci_tar: Path) -> str:
    from image_helpers import oci_blobs, oci_manifest_digests
    blobs = oci_blobs(oci_tar)
    return json.loads(blobs[oci_manifest_digests(oci_tar)[0]])["config"]["digest"]


def _layer_digests(oci_tar: Path) -> list[str]:
    from image_helpers import oci_blobs, oci_manifest_digests
    blobs = oci_blobs(oci_tar)
    manifest = json.loads(blobs[oci_manifest_digests(oci_tar)[0]])
    return [layer["digest"] for layer in manifest["layers"]]


class FakeRegistry:
    """A registry of one image on 127.0.0.1 (http.server), for what docker-registry will not
    do: stop sending a layer half-way (`hang`), serve another manifest (`manifests`). It
    honours `Range: bytes=N-` and records each layer request's Range header."""

    def __init__(self, image: Path, hang: bool = False, manifests: dict | None = None):
        import http.server
        import threading
        from image_helpers import oci_blobs, oci_manifest_digests
        blobs = oci_blobs(image)
        manifest_digest = oci_manifest_digests(image)[0]
        layers = set(_layer_digests(image))
        self.ranges: list[str] = []   # the Range header of each layer request ("" without)
        self.release = threading.Event()
        self.hang = hang
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                digest = self.path.rsplit("/", 1)[1]
                if manifests and digest in manifests:
                    media_type, data = manifests[digest]
                    self.send_response(200)
                    self.send_header("Content-Type", media_type)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                data = blobs.get(manifest_digest if digest == "v1" else digest)
                if data is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                start = 0
                if digest in layers:
                    fake.ranges.append(self.headers.get("Range", ""))
                    if self.headers.get("Range", "").startswith("bytes="):
                        start = int(self.headers["Range"][6:].rstrip("-"))
                self.send_response(206 if start else 200)
                if digest in ("v1", manifest_digest):
                    self.send_header("Content-Type", json.loads(data)["mediaType"])
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                if digest in layers and fake.hang:
                    self.wfile.write(data[:1000])
                    self.wfile.flush()
                    fake.release.wait(60)
                    return
                self.wfile.write(data[start:])

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def _active(d) -> list[list[str]]:
    return [line.split() for line in
            d.ctr("content", "active", namespace="k8s.io").stdout.splitlines()[1:]]


def test_a_stalled_pull_times_out_holds_its_lease_and_a_retry_resumes(tmp_path):
    """The layer stops after 1000 bytes: the pull fails after image_pull_progress_timeout
    with a message that says so. While it waits, its lease keeps what it wrote through a
    collection; afterwards the lease is gone but the partial ingest stays (as an ingest
    outside a lease does for 24 h), and the retried pull asks for the rest only."""
    import concurrent.futures
    with tempfile.TemporaryDirectory(prefix="ca-crihang-") as tmp:
        image = make_oci(Path(tmp))
        manifest_digest = oci_manifest_digests(image)[0]
        config_digest = json.loads(oci_blobs(image)[manifest_digest])["config"]["digest"]
        [layer] = _layer_digests(image)
        fake = FakeRegistry(image, hang=True)
        d = _ours_with(tmp_path, '  image_pull_progress_timeout = "3s"\n')
        try:
            images = rpc.ImageServiceStub(grpc.insecure_channel(f"unix://{d.address}"))
            request = pb.PullImageRequest(image=_spec(f"{fake.host}/test/busybox:v1"))
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                pulling = pool.submit(images.PullImage, request, timeout=60)
                deadline = time.monotonic() + 30
                while not any(a[0] == f"pull-{layer}" for a in _active(d)):
                    assert time.monotonic() < deadline and not pulling.done()
                    time.sleep(0.05)
                leases = d.ctr("leases", "ls", namespace="k8s.io").stdout.splitlines()[1:]
                assert len(leases) == 1 and "containerd.io/gc.expire" in leases[0]
                d.ctr("leases", "create", "--id", "gc-now", namespace="k8s.io")
                d.ctr("leases", "rm", "--sync", "gc-now", namespace="k8s.io")
                content = d.ctr("content", "ls", "-q", namespace="k8s.io").stdout.split()
                assert manifest_digest in content and config_digest in content
                with pytest.raises(grpc.RpcError) as err:
                    pulling.result(timeout=60)
            assert "no data for 3s" in err.value.details()
            assert d.ctr("leases", "ls", "-q", namespace="k8s.io").stdout.split() == []
            [[ref, size, *_]] = _active(d)
            assert (ref, size) == (f"pull-{layer}", "1kB")   # ctr's units.HumanSize
            fake.hang = False
            images.PullImage(request, timeout=60)
            assert fake.ranges == ["", "bytes=1000-"]
            assert len(_images(images)) == 1 and _active(d) == []
        finally:
            fake.stop()
            d.cleanup()


def test_concurrent_pulls_sharing_a_base_layer_fetch_and_unpack_it_once(tmp_path):
    """Two images with the same busybox base, pulled at once: the registry serves the shared
    layer once, and the daemon fetches and extracts it once (its metrics count the bytes
    fetched and the extractions)."""
    import subprocess
    import sys
    import urllib.request
    from registry import free_port
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="ca-crishare-") as tmp:
        small = make_oci(Path(tmp))
        big = Path(tmp) / "big.tar"
        subprocess.run([sys.executable, "/work/shared/anchor/make_oci_image.py", "--variant",
                        "big", "--out", str(big), "--ref", "localhost/big:v1",
                        "--small-files", "50", "--large-files", "1", "--large-size-mib", "1"],
                       check=True, capture_output=True, timeout=120)
        base = _layer_digests(small)[0]
        assert base == _layer_digests(big)[0]
        r = LocalRegistry().start()
        d = Daemon(workdir=str(tmp_path / "w"))
        (d.workdir / "metrics.toml").write_text(
            f'version = 2\n[metrics]\naddress = "127.0.0.1:{port}"\n')
        d.config = str(d.workdir / "metrics.toml")
        d.start()
        try:
            r.push(small, "test/small:v1")
            r.push(big, "test/big:v1")
            before = r.blob_gets(base)
            images = rpc.ImageServiceStub(grpc.insecure_channel(f"unix://{d.address}"))
            pulls = [images.PullImage.future(pb.PullImageRequest(image=_spec(f"{r.host}/{n}")))
                     for n in ("test/small:v1", "test/big:v1")]
            ids = [p.result(timeout=120).image_ref for p in pulls]
            assert len(set(ids)) == 2 and len(_images(images)) == 2
            assert r.blob_gets(base) - before == 1
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/metrics", timeout=10) as m:
                text = m.read().decode()
            def metric(name):
                [value] = [line.split()[-1] for line in text.splitlines()
                           if line.startswith(name + " ")]
                return float(value)
            assert metric("ctrappliance_unpack_duration_seconds_count") == 3   # each layer once
            sizes = {}   # configs and layers of both images, the base once
            for image in (small, big):
                blobs = oci_blobs(image)
                manifest = json.loads(blobs[oci_manifest_digests(image)[0]])
                for desc in [manifest["config"], *manifest["layers"]]:
                    sizes[desc["digest"]] = desc["size"]
            assert metric("ctrappliance_pull_fetched_bytes_total") == sum(sizes.values())
        finally:
            d.cleanup()
            r.stop()


def test_tls_registry_trusted_through_hosts_toml_ca(tmp_path):
    """HTTPS with a private CA: refused without it, pulled with `ca` in hosts.toml."""
    with tempfile.TemporaryDirectory(prefix="ca-critls-") as tmp:
        image = make_oci(Path(tmp))
        r = LocalRegistry(tls=True).start()
        name = f"localhost:{r.port}"      # not loopback-by-IP: HTTPS is the default
        certs = tmp_path / "certs.d"
        d = _ours_with(tmp_path, f'[plugins."io.containerd.grpc.v1.cri".registry]\n'
                                 f'  config_path = "{certs}"\n')
        try:
            r.push(image, "test/busybox:v1")
            images = rpc.ImageServiceStub(grpc.insecure_channel(f"unix://{d.address}"))
            host_dir = certs / f"localhost_{r.port}_"
            host_dir.mkdir(parents=True)
            (host_dir / "hosts.toml").write_text(f'server = "https://{r.host}"\n')
            with pytest.raises(grpc.RpcError) as err:
                images.PullImage(pb.PullImageRequest(image=_spec(f"{name}/test/busybox:v1")))
            assert "certificate" in err.value.details().lower()
            (host_dir / "hosts.toml").write_text(f'server = "https://{r.host}"\nca = "{r.ca}"\n')
            images.PullImage(pb.PullImageRequest(image=_spec(f"{name}/test/busybox:v1")))
            assert len(_images(images)) == 1
        finally:
            d.cleanup()
            r.stop()


def test_deprecated_mirrors(registry, tmp_path):
    """containerd 1.6's registry.mirrors (deprecated, still honoured) without config_path."""
    d = _ours_with(tmp_path, f'[plugins."io.containerd.grpc.v1.cri".registry.mirrors.'
                             f'"registry.invalid"]\n  endpoint = ["http://{registry.host}"]\n')
    try:
        images = rpc.ImageServiceStub(grpc.insecure_channel(f"unix://{d.address}"))
        images.PullImage(pb.PullImageRequest(image=_spec("registry.invalid/test/other:v2")))
        assert _images(images)[0][1] == ["registry.invalid/test/other:v2"]
    finally:
        d.cleanup()


def test_plugin_listed_as_containerds(cri_daemon):
    kind, d = cri_daemon
    detail = d.ctr("plugins", "ls", "-d", "id==cri").stdout
    assert "CRIVersion           v1" in detail
    same("plugins-ls", kind, sorted(detail.splitlines()))   # Go prints exports in map order


@pytest.mark.parametrize("version", [2, 1])
def test_disabled_plugin_serves_no_cri(tmp_path, version):
    """By its URI (version 2), or by its id "cri" in a version 1 config."""
    d = Daemon(workdir=str(tmp_path / "w"))
    (d.workdir / "off.toml").write_text(
        'version = 2\ndisabled_plugins = ["io.containerd.grpc.v1.cri"]\n' if version == 2 else
        f'disabled_plugins = ["cri"]\n[plugins.opt]\n  path = "{d.workdir / "opt"}"\n')
    d.config = str(d.workdir / "off.toml")
    d.start()
    try:
        assert " cri " not in d.ctr("plugins", "ls").stdout
        with grpc.insecure_channel(f"unix://{d.address}") as channel:
            with pytest.raises(grpc.RpcError) as err:
                rpc.ImageServiceStub(channel).ListImages(pb.ListImagesRequest(), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        d.cleanup()


def test_the_sandbox_image_is_pinned(registry, tmp_path):
    """containerd 1.7's `pinned` (kubelet's image GC keeps such images): a pull of the
    sandbox_image labels its records io.cri-containerd.pinned=pinned, and the image (all its
    names) is pinned; a pull by another name is not."""
    sandbox = f"{registry.host}/test/busybox:v1"
    d = _ours_with(tmp_path, f'  sandbox_image = "{sandbox}"\n')
    try:
        with grpc.insecure_channel(f"unix://{d.address}") as channel:
            images = rpc.ImageServiceStub(channel)
            other = f"{registry.host}/test/other:v2"   # the same image by another name
            images.PullImage(pb.PullImageRequest(image=_spec(other)))
            assert [i.pinned for i in images.ListImages(pb.ListImagesRequest()).images] == [False]
            images.PullImage(pb.PullImageRequest(image=_spec(sandbox)))
            [image] = images.ListImages(pb.ListImagesRequest()).images
            assert image.pinned and sorted(image.repo_tags) == [sandbox, other]
            assert images.ImageStatus(pb.ImageStatusRequest(image=_spec(other))).image.pinned
        listed = d.ctr("images", "ls", namespace="k8s.io").stdout.splitlines()[1:]
        labelled = {line.split()[0] for line in listed if "io.cri-containerd.pinned=pinned" in line}
        assert sandbox in labelled and other not in labelled
    finally:
        d.cleanup()


def test_a_docker_schema_1_manifest_is_refused(tmp_path):
    """Schema 1 (deprecated, unsigned-digest images) is refused with a clear error and
    nothing is left of the pull (containerd 1.6 still converts it)."""
    schema1 = json.dumps({"schemaVersion": 1, "name": "test/busybox", "tag": "v1",
                          "architecture": "amd64", "fsLayers": [], "history": []}).encode()
    with tempfile.TemporaryDirectory(prefix="ca-crischema1-") as tmp:
        fake = FakeRegistry(make_oci(Path(tmp)), manifests={
            "v1": ("application/vnd.docker.distribution.manifest.v1+prettyjws", schema1)})
        d = Daemon(workdir=str(tmp_path / "w")).start()
        try:
            images = rpc.ImageServiceStub(grpc.insecure_channel(f"unix://{d.address}"))
            with pytest.raises(grpc.RpcError) as err:
                images.PullImage(pb.PullImageRequest(image=_spec(f"{fake.host}/test/busybox:v1")))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "Docker schema 1 manifests are not supported" in err.value.details()
            assert _images(images) == []
            assert d.ctr("content", "ls", "-q", namespace="k8s.io").stdout.split() == []
        finally:
            fake.stop()
            d.cleanup()


def test_cri_is_served_on_the_grpc_tcp_address(registry, tmp_path):
    """With [grpc] tcp_address, CRI is served there too, as containerd does."""
    from registry import free_port
    port = free_port()
    d = Daemon(workdir=str(tmp_path / "w"))
    (d.workdir / "tcp.toml").write_text(f'version = 2\n[grpc]\n  tcp_address = "127.0.0.1:{port}"\n')
    d.config = str(d.workdir / "tcp.toml")
    d.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            images = rpc.ImageServiceStub(channel)
            image_id = images.PullImage(pb.PullImageRequest(
                image=_spec(f"{registry.host}/test/busybox:v1")), timeout=60).image_ref
            assert [i.id for i in images.ListImages(pb.ListImagesRequest()).images] == [image_id]
            version = rpc.RuntimeServiceStub(channel).Version(pb.VersionRequest(), timeout=10)
            assert version.runtime_name == "ctrappliance"
    finally:
        d.cleanup()


def test_a_cancelled_pull_leaves_no_snapshot_or_lease(tmp_path):
    """The client gives up while a layer is half-way: the pull stops, its snapshots and its
    lease go (the partial ingest stays for a retry), and the retry completes."""
    with tempfile.TemporaryDirectory(prefix="ca-cricancel-") as tmp:
        image = make_oci(Path(tmp))
        [layer] = _layer_digests(image)
        fake = FakeRegistry(image, hang=True)
        d = Daemon(workdir=str(tmp_path / "w")).start()
        try:
            images = rpc.ImageServiceStub(grpc.insecure_channel(f"unix://{d.address}"))
            request = pb.PullImageRequest(image=_spec(f"{fake.host}/test/busybox:v1"))
            with pytest.raises(grpc.RpcError) as err:
                images.PullImage(request, timeout=3)
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            deadline = time.monotonic() + 30
            while (d.ctr("snapshots", "ls", namespace="k8s.io").stdout.splitlines()[1:]
                   or d.ctr("leases", "ls", "-q", namespace="k8s.io").stdout.split()):
                assert time.monotonic() < deadline, "the cancelled pull left snapshots or a lease"
                time.sleep(0.1)
            assert [a[0] for a in _active(d)] == [f"pull-{layer}"]
            fake.hang = False
            images.PullImage(request, timeout=60)
            assert len(_images(images)) == 1 and fake.ranges[-1] == "bytes=1000-"
        finally:
            fake.stop()
            d.cleanup()


def test_an_image_repeating_a_layer_and_with_whiteouts_unpacks_as_ctr_import_does(
        registry, tmp_path):
    """Layers A, B, A (the same blob twice, as Docker's empty layers are) with a whiteout, an
    opaque directory and unlisted parents in B: the pull applies later layers before their
    parents are committed, and each snapshot's upper dir is what `ctr images import` (one
    layer after another onto its parent) makes of the same image in another namespace."""
    import re
    import stat
    import tarfile
    from layers import entry, layer, oci_image
    a = layer(entry("etc", tarfile.DIRTYPE, mode=0o750, uid=7), entry("etc/keep", data=b"k"),
              entry("opq/old", data=b"o"), entry("gone", data=b"g"))
    b = layer(entry("etc/new", data=b"n"), entry(".wh.gone"), entry("opq/.wh..wh..opq"),
              entry("opq/fresh", data=b"f"), entry("deep/er/file", data=b"d"))
    archive = tmp_path / "repeat.tar"
    archive.write_bytes(oci_image([a, b, a], ref="localhost/repeat:v1"))
    registry.push(archive, "test/repeat:v1")
    d = Daemon(workdir=str(tmp_path / "w")).start()

    def tree(root: Path) -> dict:
        out = {}
        for p in sorted(root.rglob("*")):
            st = os.lstat(p)
            xattrs = sorted(os.listxattr(p, follow_symlinks=False))
            out[str(p.relative_to(root))] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode),
                                             st.st_uid, st.st_rdev, xattrs,
                                             p.read_bytes() if p.is_file() else None)
        return out

    def uppers(namespace: str) -> list[dict]:
        """The namespace's snapshots' upper dirs, base first (parents from the metadata: a
        layer applied before its parent was committed has the older snapshot id)."""
        import contextlib
        import sqlite3
        db = d.root / "io.containerd.metadata.v1.bolt" / "meta.db"
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            child = dict(conn.execute("SELECT parent_id, id FROM snapshots WHERE namespace=?",
                                      (namespace,)).fetchall())
        chain, sid = [], child.get(None)
        while sid is not None:
            chain.append(sid)
            sid = child.get(sid)
        assert len(chain) == len(child)
        snapshots = d.root / "io.containerd.snapshotter.v1.overlayfs" / "snapshots"
        return [tree(snapshots / str(sid) / "fs") for sid in chain]
    try:
        with grpc.insecure_channel(f"unix://{d.address}") as channel:
            rpc.ImageServiceStub(channel).PullImage(pb.PullImageRequest(
                image=_spec(f"{registry.host}/test/repeat:v1")), timeout=120)
        pulled = uppers("k8s.io")
        d.ctr("images", "import", str(archive))
        imported = uppers("default")
        assert len(pulled) == 3 and pulled == imported
        assert stat.S_ISCHR(pulled[1]["gone"][0]) and stat.S_IMODE(pulled[1]["etc"][1]) == 0o750
        assert "user.overlay.opaque" in pulled[1]["opq"][4] or \
            "trusted.overlay.opaque" in pulled[1]["opq"][4]
    finally:
        d.cleanup()
