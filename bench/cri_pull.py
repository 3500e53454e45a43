"""Section `cri_pull`: Kubernetes' PullImage through the CRI API of each daemon (containerd
with its CRI plugin on), from Debian's docker-registry on 127.0.0.1, each daemon's root on a
fresh ext4. Between repetitions every image is removed and the daemon's GC has emptied
content and snapshots, so each pull fetches and unpacks everything again."""
from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from . import images
from .daemons import REPO, Target

NAMESPACE = "k8s.io"
PULL_TIMEOUT = 600.0
EMPTY_TIMEOUT = 120.0


def _registry():
    sys.path.insert(0, str(REPO / "tests"))   # the tests' docker-registry harness
    try:
        from registry import LocalRegistry
    finally:
        sys.path.remove(str(REPO / "tests"))
    return LocalRegistry()


class Client:
    def __init__(self, target: Target):
        import grpc
        from appliance._proto.cri.v1 import api_pb2, api_pb2_grpc
        self.pb = api_pb2
        self.target = target
        self.channel = grpc.insecure_channel(f"unix://{target.address}")
        self.images = api_pb2_grpc.ImageServiceStub(self.channel)

    def pull(self, ref: str) -> str:
        request = self.pb.PullImageRequest(image=self.pb.ImageSpec(image=ref))
        return self.images.PullImage(request, timeout=PULL_TIMEOUT).image_ref

    def remove_all(self) -> None:
        """Every image goes, then wait (bounded) until GC left no content and no snapshot."""
        for image in self.images.ListImages(self.pb.ListImagesRequest(), timeout=60).images:
            self.images.RemoveImage(self.pb.RemoveImageRequest(
                image=self.pb.ImageSpec(image=image.id)), timeout=60)
        deadline = time.monotonic() + EMPTY_TIMEOUT
        while True:
            content = self.target.ctr("content", "ls", "-q", namespace=NAMESPACE).stdout.split()
            snaps = self.target.ctr("snapshots", "ls", namespace=NAMESPACE).stdout.splitlines()
            if not content and len(snaps) <= 1 and not self._snapshot_dirs():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.target.name}: {len(content)} blobs and "
                                   f"{len(snaps) - 1} snapshots left after removing all images")
            time.sleep(0.2)

    def _snapshot_dirs(self) -> list[str]:
        """What is left on disk of removed snapshots (either daemon may delete them after
        their records, in the background: the next pull must not compete with that)."""
        path = self.target.root / "io.containerd.snapshotter.v1.overlayfs" / "snapshots"
        return os.listdir(path) if path.exists() else []

    def close(self) -> None:
        self.channel.close()


def cri_pull(b, make_targets):
    registry = _registry().start()
    saved, b.targets = b.targets, make_targets("cri_pull", root_fs="ext4")
    clients = {}
    try:
        big = registry.host + "/bench/big:v1"
        layers = registry.host + "/bench/layers:v1"
        small = registry.host + "/bench/small:v1"
        registry.push(images.image("big")["path"], "bench/big:v1")
        registry.push(images.multilayer()["path"], "bench/layers:v1")
        registry.push(images.image("small")["path"], "bench/small:v1")
        for t in b.targets:
            t.cri = True
            t.start()
            clients[t.name] = Client(t)
            clients[t.name].pull(small)          # warm-up: first-pull imports, connections
            clients[t.name].remove_all()

        def measure(metric, refs):
            def step(t):
                client = clients[t.name]
                t0 = time.perf_counter()
                with ThreadPoolExecutor(len(refs)) as pool:
                    list(pool.map(client.pull, refs))
                b.record(metric, t.name, time.perf_counter() - t0)
                client.remove_all()
            return step

        for rep in range(b.reps(2, 5)):
            b.each(rep, ["cri_pull_big"], measure("cri_pull_big", [big]))
            b.each(rep, ["cri_pull_layers"], measure("cri_pull_layers", [layers]))
            b.each(rep, ["cri_pull_shared"], measure("cri_pull_shared", [big, layers]))
    finally:
        for client in clients.values():
            client.close()
        for t in b.targets:
            t.cleanup()
        b.targets = saved
        registry.stop()
