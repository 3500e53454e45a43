"""Images imported, listed, labelled, exported, collected, pushed to and fetched from a
real registry, with the real ctr (and next to containerd 1.6.20 where output must match)."""
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request

import pytest

from daemon import CTR, Daemon
from image_helpers import make_docker_archive, make_oci, oci_blobs, oci_manifest_digests

pytestmark = pytest.mark.integration
REGISTRY = "/usr/bin/docker-registry"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    directory = tmp_path_factory.mktemp("images")
    oci = make_oci(directory)
    return oci, make_docker_archive(oci)


def content_digests(d, namespace):
    """The namespace's blobs once the collection after the last change has run."""
    d.ctr("leases", "create", "--id", "sync-gc", namespace=namespace)
    d.ctr("leases", "rm", "--sync", "sync-gc", namespace=namespace)
    return sorted(d.ctr("content", "ls", "-q", namespace=namespace).stdout.split())


def normalise(text):
    text = re.sub(r'time="[^"]*"', "TIME", text)
    return re.sub(r"\s+", " ", text).strip()


def test_import_ls_check_label_tag_rm(both, images):
    oci, docker = images
    results = []
    for d in both:
        ns = "img-basic"
        out = []
        run = lambda *a: d.ctr(*a, namespace=ns, check=False)
        for step in (("images", "import", "--no-unpack", str(oci)),
                     ("images", "import", "--no-unpack", str(docker)),
                     ("images", "ls"),
                     ("images", "label", "localhost/busybox:latest", "team=blue"),
                     ("images", "tag", "localhost/busybox:latest", "localhost/busybox:v2"),
                     ("images", "ls", "labels.team==blue"),
                     ("images", "ls", "-q"),
                     ("images", "tag", "localhost/busybox:latest", "localhost/busybox:v2"),
                     ("images", "label", "no/such:image", "a=b"),
                     ("images", "rm", "no/such:image")):
            r = run(*step)
            out.append((r.returncode, normalise(r.stdout + r.stderr)))
        check = run("images", "check").stdout
        out.append(sorted(re.findall(r"^(\S+) .* (complete \(\d+/\d+\))", check, re.M)))
        out.append(content_digests(d, ns))
        r = run("images", "rm", "--sync", "localhost/busybox:latest", "localhost/busybox:v2",
                "localhost/dockerbox:v1")
        out.append((r.returncode, r.stdout))
        out.append(content_digests(d, ns))
        results.append(out)
    ours, theirs = results
    assert ours == theirs
    assert ours[10] == [("localhost/busybox:latest", "complete (2/2)"),
                        ("localhost/busybox:v2", "complete (2/2)"),
                        ("localhost/dockerbox:v1", "complete (2/2)")]
    assert len(ours[11]) == 5   # 2 manifests, 2 layers, 1 shared config (as containerd)
    assert ours[13] == []   # every image gone: nothing left in the content store
    assert ours[6][1].split() == ["localhost/busybox:latest", "localhost/busybox:v2",
                                  "localhost/dockerbox:v1"]


def test_export_gives_back_the_same_digests(both, images, tmp_path):
    oci, _ = images
    ours, _ = both
    ours.ctr("images", "import", "--no-unpack", str(oci), namespace="img-export")
    out = tmp_path / "export.tar"
    ours.ctr("images", "export", str(out), "localhost/busybox:latest", namespace="img-export")
    assert oci_manifest_digests(out) == oci_manifest_digests(oci)
    exported, original = oci_blobs(out), oci_blobs(oci)
    assert exported == original      # same digests, same bytes
    ours.ctr("images", "rm", "--sync", "localhost/busybox:latest", namespace="img-export")
    assert content_digests(ours, "img-export") == []


def test_namespace_with_images_or_blobs_cannot_be_removed(both, images):
    oci, _ = images
    outputs = []
    for d in both:
        d.ctr("images", "import", "--no-unpack", str(oci), namespace="img-ns")
        r1 = d.ctr("namespaces", "rm", "img-ns", check=False)
        d.ctr("images", "rm", "localhost/busybox:latest", namespace="img-ns")
        outputs.append((r1.returncode, normalise(r1.stderr)))
    assert outputs[0] == outputs[1]
    assert "must be empty" in outputs[0][1] and "images" in outputs[0][1]


# --- a real registry -------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def registry(tmp_path):
    """Debian's docker-registry on loopback with its own config and storage; stopped by pid."""
    port = free_port()
    (tmp_path / "storage").mkdir()
    config = tmp_path / "registry.yml"
    config.write_text(f"""version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: {tmp_path / 'storage'}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
""")
    log = open(tmp_path / "registry.log", "wb")
    proc = subprocess.Popen([REGISTRY, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((tmp_path / "registry.log").read_text())
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def test_push_to_registry_and_fetch_back(registry, images):
    oci, docker = images
    d = Daemon().start()
    try:
        d.ctr("images", "import", "--no-unpack", str(oci))
        d.ctr("images", "import", "--no-unpack", str(docker))
        pushed = {}
        for local, remote in (("localhost/busybox:latest", f"{registry}/test/busybox:latest"),
                              ("localhost/dockerbox:v1", f"{registry}/test/dockerbox:v1")):
            d.ctr("images", "push", "--plain-http", remote, local, timeout=120)
            listing = d.ctr("images", "ls", f"name=={local}").stdout.split()
            pushed[remote] = listing[listing.index(local) + 2]
        originals = content_digests(d, "default")
        for remote, manifest in pushed.items():
            # the registry serves the same manifest digest
            req = urllib.request.Request(
                f"http://{registry}/v2/{remote.split('/', 1)[1].replace(':', '/manifests/')}",
                method="HEAD", headers={"Accept": "application/vnd.oci.image.manifest.v1+json, "
                                        "application/vnd.docker.distribution.manifest.v2+json"})
            with urllib.request.urlopen(req, timeout=10) as resp:
                assert resp.headers["Docker-Content-Digest"] == manifest
            # collections keep running during the fetch: its lease protects what it got so far
            stop, collections = threading.Event(), []

            def collect_until_stopped():
                while not stop.is_set():
                    d.ctr("leases", "create", "--id", "gc-now", namespace="fetched")
                    d.ctr("leases", "rm", "--sync", "gc-now", namespace="fetched")
                    collections.append(1)
            hammer = threading.Thread(target=collect_until_stopped)
            hammer.start()
            try:
                d.ctr("content", "fetch", "--plain-http", remote, namespace="fetched",
                      timeout=120)
            finally:
                stop.set()
                hammer.join(60)
            assert collections
        assert content_digests(d, "fetched") == originals
        # a full pull (fetch + unpack into snapshots), then rm --sync collects it all
        remote = f"{registry}/test/busybox:latest"
        d.ctr("images", "pull", "--plain-http", remote, namespace="pulled", timeout=120)
        listing = d.ctr("images", "check", namespace="pulled").stdout
        assert re.search(rf"^{re.escape(remote)} .* {pushed[remote]} complete \(2/2\) .* true",
                         listing, re.M), listing
        assert d.ctr("snapshots", "ls", namespace="pulled").stdout.count("Committed") == 1
        d.ctr("images", "rm", "--sync", remote, namespace="pulled")
        assert content_digests(d, "pulled") == []
        assert d.ctr("snapshots", "ls", namespace="pulled").stdout.split() == [
            "KEY", "PARENT", "KIND"]
        for digest in originals:   # same bytes on both sides
            a, b = (subprocess.run([CTR, "--address", d.address, "--namespace", ns, "content",
                                    "get", digest], capture_output=True, timeout=60).stdout
                    for ns in ("default", "fetched"))
            assert a == b and a
    finally:
        d.cleanup()


def test_image_events_match_containerd(both, images):
    oci, _ = images
    seen = []
    for d in both:
        events = subprocess.Popen([CTR, "--address", d.address, "events"],
                                  stdout=subprocess.PIPE, text=True)
        try:
            time.sleep(0.3)
            run = lambda *a: d.ctr(*a, namespace="img-events")
            run("images", "import", "--no-unpack", str(oci))
            run("images", "label", "localhost/busybox:latest", "team=red")
            run("images", "rm", "--sync", "localhost/busybox:latest")
            # a last import named "marker": its /images/create ends what we read
            run("images", "import", "--no-unpack", "--index-name", "marker", str(oci))
            lines = []
            for line in events.stdout:
                if "/images/create" in line and '"marker"' in line:
                    break
                lines.append(line.split(maxsplit=6)[4:])
        finally:
            events.kill()
            events.wait(5)
        run("images", "rm", "--sync", "marker", "localhost/busybox:latest")
        seen.append([fields for fields in lines if fields[0] == "img-events"])
    assert seen[0] == seen[1]
    assert [f[1] for f in seen[0]] == ["/images/create", "/images/update", "/images/delete"]


def test_image_rpc_errors_match_containerd(both):
    from google.protobuf import field_mask_pb2
    import grpc
    from appliance._proto.containerd.api.services.images.v1 import images_pb2 as pb
    from appliance._proto.containerd.api.services.images.v1 import images_pb2_grpc
    from appliance._proto.containerd.api.types import descriptor_pb2

    good = descriptor_pb2.Descriptor(media_type="application/vnd.oci.image.manifest.v1+json",
                                     digest="sha256:" + "a" * 64, size=10)
    calls = [
        ("Create", pb.CreateImageRequest(image=pb.Image(name="", target=good))),
        ("Create", pb.CreateImageRequest(image=pb.Image(name="x", target=descriptor_pb2.Descriptor(
            media_type="m", digest="sha256:short", size=1)))),
        ("Create", pb.CreateImageRequest(image=pb.Image(name="x", target=descriptor_pb2.Descriptor(
            media_type="m", digest=good.digest, size=0)))),
        ("Create", pb.CreateImageRequest(image=pb.Image(name="x", target=descriptor_pb2.Descriptor(
            digest=good.digest, size=1)))),
        ("Create", pb.CreateImageRequest(image=pb.Image(name="x", target=good,
                                                        labels={"a": "1"}))),
        ("Create", pb.CreateImageRequest(image=pb.Image(name="x", target=good))),
        ("Update", pb.UpdateImageRequest(image=pb.Image(name="x", labels={"b": "2"}),
                                         update_mask=field_mask_pb2.FieldMask(paths=["labels.b"]))),
        ("Update", pb.UpdateImageRequest(image=pb.Image(name="x"),
                                         update_mask=field_mask_pb2.FieldMask(paths=["name"]))),
        ("Update", pb.UpdateImageRequest(image=pb.Image(name="ghost", target=good))),
        ("Get", pb.GetImageRequest(name="x")),
        ("List", pb.ListImagesRequest(filters=["labels.b==2,target.digest==" + good.digest])),
        ("Delete", pb.DeleteImageRequest(name="x")),
        ("Delete", pb.DeleteImageRequest(name="x")),
    ]
    results = []
    for d in both:
        out = []
        with grpc.insecure_channel("unix:" + d.address) as ch:
            stub = images_pb2_grpc.ImagesStub(ch)
            for method, request in calls:
                try:
                    resp = getattr(stub, method)(request, timeout=10,
                                                 metadata=[("containerd-namespace", "img-rpc")])
                    out.append(("OK", _names_and_labels(resp)))
                except grpc.RpcError as err:
                    out.append((err.code(), err.details()))
        results.append(out)
    for i, (ours, theirs) in enumerate(zip(*results)):
        assert ours == theirs, (calls[i][0], ours, theirs)


def _names_and_labels(resp):
    """The images in any Images response (Empty for Delete)."""
    if hasattr(resp, "images"):
        images = list(resp.images)
    elif hasattr(resp, "image"):
        images = [resp.image]
    else:
        images = []
    return sorted((i.name, sorted(i.labels.items())) for i in images)
