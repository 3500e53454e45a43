"""io.containerd.grpc.v1.cri: Kubernetes' CRI on the daemon's socket (runtime.v1, and
runtime.v1alpha2 as containerd 1.6 also serves it).

Built: the ImageService; RuntimeService's Version, Status, RuntimeConfig and
UpdateRuntimeConfig (CNI: `plugin.network`), pods (cri/sandbox.py) and containers
(cri/container.py, UpdateContainerResources included), stats (cri/stats.py) and
GetContainerEvents (cri/events.py). Every other RuntimeService method answers
UNIMPLEMENTED naming itself (ListMetricDescriptors and ListPodSandboxMetrics as
containerd 1.6.20).
The pod and container services start once the daemon serves (as containerd runs its CRI
service beside the server, after the plugin's init): the event monitor, then recovery of what a
previous run left. Their ≈ 30 modules are imported in a worker thread, a moment after the
daemon serves (or at the first CRI call), so that the daemon's first answers wait neither for
them nor for the GIL; a CRI call that comes before the start has ended waits for it.
The ImageService and CNI are built on first use.
"""
from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import os
import platform
import time

from .. import __version__, stubs
from ..cri.config import CRIConfig
from ..errdefs import NotFound, StatusCode, status_of
from ..grpcutil import rpc
from ..process import failpoint
from ..plugin import EVENT, GRPC, SERVICE, InitContext, Registration, SNAPSHOT

v1 = stubs.module("appliance._proto.cri.v1.api_pb2")
v1alpha2 = stubs.module("appliance._proto.cri.v1alpha2.api_pb2")

RUNTIME_NAME = "ctrappliance"
START_WAIT_SECONDS = 60.0   # a CRI call waits this long for the services' start at most
# The start waits this long after the daemon serves, unless a CRI call comes first: its imports
# (in a thread, ≈ 17 ms of CPU) would share the GIL with the daemon's first answers
START_DELAY_SECONDS = 0.25
START_RETRY_SECONDS = 1.0   # after the modules could not be read (out of file descriptors)

log = logging.getLogger("appliance.cri")


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
        sampled, used, inodes = self.plugin.stats.image_fs   # cri.stats' background sample
        usage = self.pb.FilesystemUsage(timestamp=sampled or time.time_ns())
        usage.fs_id.mountpoint = self.plugin.snapshot_root
        usage.used_bytes.value = used
        usage.inodes_used.value = inodes
        return self.pb.ImageFsInfoResponse(image_filesystems=[usage])


class CRIRuntimeAdapter:
    """RuntimeService of one API version. The services work on runtime.v1 messages; a
    v1alpha2 request or answer crosses by its bytes (the two are wire-compatible here)."""

    def __init__(self, plugin: "CRIPlugin", pb, package: str):
        self.plugin = plugin
        self.pb = pb
        self.package = package

    def register(self, services):
        services.add(f"{self.package}.RuntimeService", self.pb, self)

    def _v1(self, message):
        if self.pb is v1:
            return message
        return getattr(v1, type(message).__name__).FromString(message.SerializeToString())

    def _ours(self, message):
        if self.pb is v1:
            return message
        return getattr(self.pb, type(message).__name__).FromString(message.SerializeToString())

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

    # --- pods ---------------------------------------------------------------------------

    @rpc
    async def RunPodSandbox(self, request, context):
        pods = self.plugin.pods
        sid = await pods.run(self._v1(request.config), request.runtime_handler)
        return self.pb.RunPodSandboxResponse(pod_sandbox_id=sid)

    @rpc
    async def StopPodSandbox(self, request, context):
        await self.plugin.pods.stop(request.pod_sandbox_id,
                                              self.plugin.containers)
        return self.pb.StopPodSandboxResponse()

    @rpc
    async def RemovePodSandbox(self, request, context):
        await self.plugin.pods.remove(request.pod_sandbox_id,
                                                self.plugin.containers)
        return self.pb.RemovePodSandboxResponse()

    @rpc
    async def PodSandboxStatus(self, request, context):
        pods = self.plugin.pods
        if self.pb is v1 and not request.verbose:    # the kept answer, only serialized
            return pods.status_response(request.pod_sandbox_id, v1)
        status, info = pods.status(request.pod_sandbox_id, v1, request.verbose)
        return self.pb.PodSandboxStatusResponse(status=self._ours(status), info=info)

    @rpc
    async def ListPodSandbox(self, request, context):
        flt = self._v1(request.filter) if request.HasField("filter") else None
        pods = self.plugin.pods
        return self.pb.ListPodSandboxResponse(
            items=[self._ours(pods.list_item(s)) for s in pods.list(flt)])

    # --- containers ---------------------------------------------------------------------

    @rpc
    async def CreateContainer(self, request, context):
        containers = self.plugin.containers
        cid = await containers.create(request.pod_sandbox_id, self._v1(request.config),
                                      self._v1(request.sandbox_config))
        return self.pb.CreateContainerResponse(container_id=cid)

    @rpc
    async def StartContainer(self, request, context):
        await self.plugin.containers.start(request.container_id)
        return self.pb.StartContainerResponse()

    @rpc
    async def StopContainer(self, request, context):
        await self.plugin.containers.stop(request.container_id, request.timeout)
        return self.pb.StopContainerResponse()

    @rpc
    async def RemoveContainer(self, request, context):
        await self.plugin.containers.remove(request.container_id)
        return self.pb.RemoveContainerResponse()

    @rpc
    async def ListContainers(self, request, context):
        flt = self._v1(request.filter) if request.HasField("filter") else None
        containers = self.plugin.containers
        return self.pb.ListContainersResponse(
            containers=[self._ours(containers.list_item(c)) for c in containers.list(flt)])

    @rpc
    async def ContainerStatus(self, request, context):
        containers = self.plugin.containers
        if self.pb is v1 and not request.verbose:    # the kept answer, only serialized
            return containers.status_response(request.container_id, v1)
        status, info = containers.status(request.container_id, v1, request.verbose)
        return self.pb.ContainerStatusResponse(status=self._ours(status), info=info)

    @rpc
    async def UpdateContainerResources(self, request, context):
        linux = self._v1(request.linux) if request.HasField("linux") else None
        await self.plugin.containers.update_resources(request.container_id, linux)
        return self.pb.UpdateContainerResourcesResponse()

    @rpc
    async def ReopenContainerLog(self, request, context):
        self.plugin.containers.reopen_log(request.container_id)
        return self.pb.ReopenContainerLogResponse()

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

    # --- stats and events -----------------------------------------------------------------

    @rpc
    async def ContainerStats(self, request, context):
        stats = self.plugin.stats.container(request.container_id)
        return self.pb.ContainerStatsResponse(stats=self._ours(stats))

    @rpc
    async def ListContainerStats(self, request, context):
        flt = self._v1(request.filter) if request.HasField("filter") else None
        return self.pb.ListContainerStatsResponse(
            stats=[self._ours(s) for s in self.plugin.stats.containers(flt)])

    @rpc
    async def PodSandboxStats(self, request, context):
        stats = self.plugin.stats.pod(request.pod_sandbox_id)
        return self.pb.PodSandboxStatsResponse(stats=self._ours(stats))

    @rpc
    async def ListPodSandboxStats(self, request, context):
        flt = self._v1(request.filter) if request.HasField("filter") else None
        return self.pb.ListPodSandboxStatsResponse(
            stats=[self._ours(s) for s in self.plugin.stats.pods(flt)])

    @rpc
    async def GetContainerEvents(self, request, context):
        async for event in self.plugin.runtime.events.subscribe():
            yield self._ours(event)


class CRIPlugin:
    """The CRI's services are built on the first CRI call: a node without kubelet never
    loads the pull engine (hashing, HTTP, TLS)."""

    NEEDED = ("content-service", "snapshots-service", "diff-service", "images-service",
              "leases-service", "containers-service", "tasks-service")

    def __init__(self, cfg: CRIConfig, services: dict, snapshot_root: str, *,
                 root_dir: str = "", state_dir: str = "", server_config=None, exchange=None):
        self.cfg = cfg
        self.exchange = exchange
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
        self.pods = self.containers = None   # cri.sandbox / cri.container services
        self.stats = None                    # cri.stats.StatsService
        self.runtime = None                  # cri.runtime.CRIRuntime, from start()
        self.supervisor = None               # the daemon's, from start()
        self.started = False                 # start() ended well: calls go straight in
        self._start_wanted = asyncio.Event()   # a CRI call came: start now
        self._start_ended = asyncio.Event()  # start() ended, well or not
        self._start_error: Exception | None = None

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
        if self.runtime is not None:
            await self.runtime.close()
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

    @functools.cached_property
    def streaming(self):
        from ..cri.streaming.service import StreamingService
        tasks = self.services["tasks-service"]
        return StreamingService(self.cfg, tasks.containers, tasks.runtime,
                                os.path.join(self.state_dir, "io"), self.supervisor,
                                self._cri_container)

    def _cri_container(self, cid: str):
        return self.runtime.containers.find(cid) if self.runtime is not None else None

    def register(self, services):
        for adapter in self.adapters:
            adapter.register(_AfterStart(services, self))

    async def serving(self) -> None:
        """The daemon serves: start the services in the background (supervised)."""
        self.supervisor.task(self._start_in_background(), "cri-start")

    async def _start_in_background(self) -> None:
        try:
            await self._import_services()
            await self.start(self.supervisor)
        except Exception as exc:
            self._start_error = exc
            log.error("failed to start the CRI service: %s", exc, exc_info=exc)
        else:
            self.started = True
        self._start_ended.set()

    async def _import_services(self) -> None:
        """In a worker thread, a moment after the daemon serves or at the first CRI call;
        again a second later while no file descriptor is free to read a module with."""
        delay, logged = START_DELAY_SECONDS, False
        while True:
            try:
                await asyncio.wait_for(self._start_wanted.wait(), delay)
            except asyncio.TimeoutError:
                pass
            try:
                return await asyncio.to_thread(_import_services)
            except OSError as exc:   # e.g. EMFILE
                if not logged:
                    log.error("CRI service: cannot load its modules yet, retrying: %s", exc)
                    logged = True
                self._start_wanted.clear()
                delay = START_RETRY_SECONDS

    async def wait_started(self, context) -> None:
        """For a call that came before the start ended: wait for it; abort if it failed."""
        self._start_wanted.set()
        try:
            await asyncio.wait_for(self._start_ended.wait(), START_WAIT_SECONDS)
        except asyncio.TimeoutError:
            await context.abort(StatusCode.UNAVAILABLE, "the CRI service is still starting")
        if self._start_error is not None:
            code, message = status_of(self._start_error)
            await context.abort(code, f"failed to start the CRI service: {message}")

    async def start(self, supervisor) -> None:
        """The pod and container services, the event monitor, then what a previous run left
        (sandboxes and containers found again with their tasks' states)."""
        import asyncio
        from ..cri.container import ContainerService
        from ..cri.monitor import SUBSCRIPTION, EventMonitor
        from ..cri.runtime import CRIRuntime
        from ..cri.sandbox import SandboxService
        from ..cri.stats import StatsService
        self.supervisor = supervisor
        self.runtime = CRIRuntime(self.cfg, self.root_dir, self.state_dir, self.services, self)
        self.pods = SandboxService(self.runtime, v1)
        self.containers = ContainerService(self.runtime, v1)
        self.stats = StatsService(self.runtime, v1, self.snapshot_root)
        self.runtime.events.statuses = self._statuses
        supervisor.task(self.stats.collect(), "cri-stats-collector")
        monitor = EventMonitor(self.runtime, self.containers)
        supervisor.task(monitor.run(self.exchange.subscribe(*SUBSCRIPTION)), "cri-events")
        await asyncio.sleep(0)    # the monitor subscribes before recovery reads task states
        if self.runtime.records("sandbox") or self.runtime.records("container"):
            await self.pods.recover()
            await self.containers.recover()

    def _statuses(self, sandbox_id: str):
        """A pod's status (None once it is gone) and its containers' statuses, for an
        event (cri.events)."""
        try:
            pod = self.pods.status(sandbox_id, v1, False)[0]
        except NotFound:
            pod = None
        containers = [self.containers.status(c.id, v1, False)[0]
                      for c in self.runtime.containers.list() if c.sandbox_id == sandbox_id]
        return pod, containers


async def _init(ic: InitContext) -> CRIPlugin:
    exchange = ic.get(EVENT)
    services = ic.get_all(SERVICE)
    for name in CRIPlugin.NEEDED:
        if name not in services:
            raise NotFound(f"service {name!r} not found")
    cfg: CRIConfig = ic.config
    ic.exports.update(CRIVersion="v1", CRIVersionAlpha="v1alpha2")
    root = os.path.join(ic.server_config.root, f"{SNAPSHOT}.{cfg.containerd.snapshotter}")
    plugin = CRIPlugin(cfg, services, root, root_dir=ic.root, state_dir=ic.state,
                       server_config=ic.server_config, exchange=exchange)
    plugin.supervisor = ic.supervisor   # start() runs once the daemon serves (serving())
    return plugin


def _import_services() -> None:
    """What start() imports, read in a worker thread once the daemon serves."""
    failpoint.hit("cri.start")
    from ..cri import container, monitor, runtime, sandbox, stats  # noqa: F401


class _AfterStart:
    """Registers an adapter's methods so that a call coming before the plugin's start ended
    waits for it; once started, a call goes straight to the method (no extra frame)."""

    def __init__(self, services, plugin: CRIPlugin):
        self.services = services
        self.plugin = plugin

    def add(self, service: str, pb2, servicer) -> None:
        self.services.add(service, pb2, _Gated(servicer, self.plugin))


class _Gated:
    """A servicer's methods behind CRIPlugin.wait_started, each of the same kind."""

    def __init__(self, servicer, plugin: CRIPlugin):
        self._servicer = servicer
        self._plugin = plugin

    def __getattr__(self, name):
        method = getattr(self._servicer, name)   # AttributeError: not implemented
        plugin = self._plugin
        if inspect.isasyncgenfunction(method):
            async def stream_after_start(request, context):
                await plugin.wait_started(context)
                async for item in method(request, context):
                    yield item

            def gated_stream(request, context):
                if plugin.started:
                    return method(request, context)
                return stream_after_start(request, context)
            return gated_stream

        async def after_start(request, context):
            await plugin.wait_started(context)
            result = method(request, context)
            return await result if inspect.isawaitable(result) else result

        def gated(request, context):
            if plugin.started:
                return method(request, context)
            return after_start(request, context)
        return gated


REGISTRATIONS = [
    Registration(GRPC, "cri", _init, requires=(EVENT, SERVICE), config=CRIConfig,
                 platforms=("linux/amd64",)),
]
