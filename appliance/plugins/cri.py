"""io.containerd.grpc.v1.cri: Kubernetes' CRI on the daemon's socket (runtime.v1, and
runtime.v1alpha2 as containerd 1.6 also serves it).

Built so far: the ImageService; RuntimeService Version, Status, RuntimeConfig and
UpdateRuntimeConfig (CNI: `plugin.network`). Every other RuntimeService method answers
UNIMPLEMENTED naming itself (pods and containers come next).
"""
from __future__ import annotations

import functools
import json
import os
import platform
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
        self.plugin = plugin
        self.pb = pb
        self.package = package

    def register(self, services):
        services.add(f"{self.package}.RuntimeService", self.pb, self)

    async def Version(self, request, context):
        return self.pb.VersionResponse(version="0.1.0", runtime_name=RUNTIME_NAME,
                                       runtime_version=__version__,
                                       runtime_api_version=self.package.rpartition(".")[2])

    @rpc
    def Status(self, request, context):
        network = self.plugin.network
        ready, reason, message = network.status()
        conditions = [self.pb.RuntimeCondition(type="RuntimeReady", status=True),
                      self.pb.RuntimeCondition(type="NetworkReady", status=ready, reason=reason,
                                               message=message)]
        resp = self.pb.StatusResponse(status=self.pb.RuntimeStatus(conditions=conditions))
        if request.verbose:
            resp.info["config"] = json.dumps(self.plugin.config_info(), separators=(",", ":"))
            # containerd's key: the toolchain's version ("go1.19.8" there)
            resp.info["golang"] = json.dumps(f"python{platform.python_version()}")
            resp.info.update(network.verbose_status())
            for name, handler_network in self.plugin.handler_networks().items():
                resp.info[f"lastCNILoadStatus.{name}"] = handler_network.last_status()
        return resp

    @rpc
    def UpdateRuntimeConfig(self, request, context):
        self.plugin.network.update_pod_cidr(request.runtime_config.network_config.pod_cidr)
        return self.pb.UpdateRuntimeConfigResponse()

    @rpc
    def RuntimeConfig(self, request, context):
        """The cgroup driver of the default runtime (containerd 1.6: UNIMPLEMENTED)."""
        c = self.plugin.cfg.containerd
        runtime = c.runtimes.get(c.default_runtime_name) or c.default_runtime
        systemd = bool((runtime.options or {}).get("SystemdCgroup"))
        driver = self.pb.CgroupDriver.SYSTEMD if systemd else self.pb.CgroupDriver.CGROUPFS
        return self.pb.RuntimeConfigResponse(
            linux=self.pb.LinuxRuntimeConfiguration(cgroup_driver=driver))


class CRIPlugin:
    """The CRI's services are built on the first CRI call: a node without kubelet never
    loads the pull engine (hashing, HTTP, TLS)."""

    NEEDED = ("content-service", "snapshots-service", "diff-service", "images-service",
              "leases-service")

    def __init__(self, cfg: CRIConfig, services: dict, snapshot_root: str, *,
                 root_dir: str = "", state_dir: str = "", server_config=None):
        self.cfg = cfg
        self.services = services
        self.snapshot_root = snapshot_root
        self.root_dir = root_dir        # <root>/io.containerd.grpc.v1.cri
        self.state_dir = state_dir      # <state>/io.containerd.grpc.v1.cri
        self.server_config = server_config
        self._handler_networks: dict = {}   # runtime handler -> its own CNI (cni_conf_dir)
        self.adapters = [CRIImageAdapter(self, v1, "runtime.v1"),
                         CRIImageAdapter(self, v1alpha2, "runtime.v1alpha2"),
                         CRIRuntimeAdapter(self, v1, "runtime.v1"),
                         CRIRuntimeAdapter(self, v1alpha2, "runtime.v1alpha2")]

    @property
    def netns_dir(self) -> str:
        """Where pods' network namespaces are pinned (containerd's two choices)."""
        if self.cfg.netns_mounts_under_state_dir:
            return os.path.join(self.state_dir, "netns")
        from ..cri.netns import DEFAULT_BASE_DIR
        return DEFAULT_BASE_DIR

    @functools.cached_property
    def network(self):
        """The pods' CNI. Its ADD cache is kept under the root, not the state dir: like
        host-local's allocations (and libcni's /var/lib/cni cache) it must survive a reboot
        for DEL to release them."""
        from ..cri.cni import CNIManager
        return CNIManager(self.cfg, os.path.join(self.root_dir, "cni"))

    def network_for(self, handler: str):
        """The CNI of pods of a runtime handler: its own when it sets `cni_conf_dir`."""
        return self.handler_networks().get(handler) or self.network

    def handler_networks(self) -> dict:
        """The runtime handlers with a `cni_conf_dir` of their own, each with its CNI."""
        from ..cri.cni import CNIManager
        networks = self._handler_networks
        for name, runtime in self.cfg.containerd.runtimes.items():
            if runtime.cni_conf_dir and name not in networks:
                networks[name] = CNIManager(self.cfg, os.path.join(self.root_dir, "cni"),
                                            conf_dir=runtime.cni_conf_dir,
                                            max_conf_num=runtime.cni_max_conf_num)
        return networks

    def config_info(self) -> dict:
        from ..cri.info import config_json
        server = self.server_config
        return config_json(self.cfg, root=server.root if server else "",
                           endpoint=server.grpc.address if server else "",
                           cri_root=self.root_dir, cri_state=self.state_dir)

    async def close(self) -> None:
        managers = list(self._handler_networks.values())
        if "network" in self.__dict__:
            managers.append(self.network)
        for manager in managers:
            await manager.close()

    @functools.cached_property
    def images(self):
        from ..core.remotes.pull import Puller
        from ..cri.images import ImageService
        s = self.services
        puller = Puller(s["content-service"], s["snapshots-service"], s["diff-service"],
                        s["images-service"], s["leases-service"])
        return ImageService(self.cfg, puller, s["images-service"], s["content-service"],
                            s["snapshots-service"], self.snapshot_root)

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
    return CRIPlugin(cfg, services, root, root_dir=ic.root, state_dir=ic.state,
                     server_config=ic.server_config)


REGISTRATIONS = [
    Registration(GRPC, "cri", _init, requires=(EVENT, SERVICE), config=CRIConfig,
                 platforms=("linux/amd64",)),
]
