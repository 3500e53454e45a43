"""io.containerd.grpc.v1.cri: Kubernetes' CRI on the daemon's socket (runtime.v1, and
runtime.v1alpha2 as containerd 1.6 also serves it).

Built so far: the ImageService and RuntimeService.Version. Every other RuntimeService method
answers UNIMPLEMENTED naming itself (pods and containers come next).
"""
from __future__ import annotations

import functools
import os
import time

from .. import __version__, stubs
from ..cri.config import CRIConfig
from ..errdefs import NotFound
from ..grpcutil import rpc
from ..plugin import EVENT, GRPC, SERVICE, InitContext, Registration, SNAPSHOT

v1 = stubs.module("appliance._proto.cri.v1.api_pb2")
v1alpha2 = stubs.module("appliance._proto.cri.v1alpha2.api_pb2")

RUNTIME_NAME = "ctrappliance"


class CRIImageAdapter:
    """ImageService of one API version (`pb` is its stubs module)."""

    def __init__(self, plugin: "CRIPlugin", pb, package: str):
        self.plugin = plugin
        self.pb = pb
        self.package = package

    @property
    def service(self):
        return self.plugin.images

    def register(self, services):
        services.add(f"{self.package}.ImageService", self.pb, self)

    def _image(self, image):
        out = self.pb.Image(id=image.id, repo_tags=image.repo_tags,
                            repo_digests=image.repo_digests, size=image.size)
        if "pinned" in out.DESCRIPTOR.fields_by_name:   # v1 only
            out.pinned = image.pinned
        user = (image.config.get("config") or {}).get("User", "")
        name = user.split(":")[0]
        if name.isdigit():
            out.uid.value = int(name)
        elif name:
            out.username = name
        return out

    @rpc
    async def PullImage(self, request, context):
        image_ref = await self.service.pull(request.image.image,
                                            request.auth if request.HasField("auth") else None)
        return self.pb.PullImageResponse(image_ref=image_ref)

    @rpc
    def ImageStatus(self, request, context):
        image = self.service.status(request.image.image)
        if image is None:
            return self.pb.ImageStatusResponse()
        resp = self.pb.ImageStatusResponse(image=self._image(image))
        if request.verbose:
            from ..cri.images import verbose_info
            resp.info["info"] = verbose_info(image)
        return resp

    @rpc
    def ListImages(self, request, context):
        # containerd 1.6 ignores the filter ("after CRI defines this more clear"): so do we
        return self.pb.ListImagesResponse(images=[self._image(i) for i in self.service.list()])

    @rpc
    async def RemoveImage(self, request, context):
        await self.service.remove(request.image.image)
        return self.pb.RemoveImageResponse()

    @rpc
    def ImageFsInfo(self, request, context):
        mountpoint, used, inodes = self.service.fs_usage()
        usage = self.pb.FilesystemUsage(timestamp=time.time_ns())
        usage.fs_id.mountpoint = mountpoint
        usage.used_bytes.value = used
        usage.inodes_used.value = inodes
        return self.pb.ImageFsInfoResponse(image_filesystems=[usage])


class CRIRuntimeAdapter:
    def __init__(self, plugin: "CRIPlugin", pb, package: str):
        self.pb = pb
        self.package = package
        self.plugin = plugin

    def register(self, services):
        services.add(f"{self.package}.RuntimeService", self.pb, self)

    async def Version(self, request, context):
        return self.pb.VersionResponse(version="0.1.0", runtime_name=RUNTIME_NAME,
                                       runtime_version=__version__,
                                       runtime_api_version=self.package.rpartition(".")[2])

    # --- streaming (exec, attach, port-forward) and ExecSync -------------------------

    @rpc
    async def ExecSync(self, request, context):
        stdout, stderr, code = await self.plugin.streaming.exec_sync(
            request.container_id, list(request.cmd), request.timeout)
        return self.pb.ExecSyncResponse(stdout=stdout, stderr=stderr, exit_code=code)

    @rpc
    async def Exec(self, request, context):
        return self.pb.ExecResponse(url=await self.plugin.streaming.exec_url(request))

    @rpc
    async def Attach(self, request, context):
        return self.pb.AttachResponse(url=await self.plugin.streaming.attach_url(request))

    @rpc
    async def PortForward(self, request, context):
        return self.pb.PortForwardResponse(
            url=await self.plugin.streaming.port_forward_url(request))


class CRIPlugin:
    """The CRI's services are built on the first CRI call: a node without kubelet never
    loads the pull engine (hashing, HTTP, TLS)."""

    NEEDED = ("content-service", "snapshots-service", "diff-service", "images-service",
              "leases-service")

    def __init__(self, cfg: CRIConfig, services: dict, snapshot_root: str, state: str = "",
                 supervisor=None):
        self.cfg = cfg
        self.services = services
        self.snapshot_root = snapshot_root
        self.state = state
        self.supervisor = supervisor
        self.adapters = [CRIImageAdapter(self, v1, "runtime.v1"),
                         CRIImageAdapter(self, v1alpha2, "runtime.v1alpha2"),
                         CRIRuntimeAdapter(self, v1, "runtime.v1"),
                         CRIRuntimeAdapter(self, v1alpha2, "runtime.v1alpha2")]

    @functools.cached_property
    def images(self):
        from ..core.remotes.pull import Puller
        from ..cri.images import ImageService
        s = self.services
        puller = Puller(s["content-service"], s["snapshots-service"], s["diff-service"],
                        s["images-service"], s["leases-service"])
        return ImageService(self.cfg, puller, s["images-service"], s["content-service"],
                            s["snapshots-service"], self.snapshot_root)

    @functools.cached_property
    def streaming(self):
        from ..cri.streaming.service import StreamingService
        tasks = self.services["tasks-service"]
        return StreamingService(self.cfg, tasks.containers, tasks.runtime,
                                os.path.join(self.state, "io"), self.supervisor)

    def register(self, services):
        for adapter in self.adapters:
            adapter.register(services)


def _init(ic: InitContext) -> CRIPlugin:
    ic.get(EVENT)
    services = ic.get_all(SERVICE)
    for name in CRIPlugin.NEEDED:
        if name not in services:
            raise NotFound(f"service {name!r} not found")
    cfg: CRIConfig = ic.config
    ic.exports.update(CRIVersion="v1", CRIVersionAlpha="v1alpha2")
    root = os.path.join(ic.server_config.root, f"{SNAPSHOT}.{cfg.containerd.snapshotter}")
    return CRIPlugin(cfg, services, root, ic.state, ic.supervisor)


REGISTRATIONS = [
    Registration(GRPC, "cri", _init, requires=(EVENT, SERVICE), config=CRIConfig,
                 platforms=("linux/amd64",)),
]
