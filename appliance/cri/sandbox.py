"""Pod sandboxes: RunPodSandbox, StopPodSandbox, RemovePodSandbox, PodSandboxStatus and
ListPodSandbox, as containerd 1.6's CRI answers them.

A sandbox is the pause container (`sandbox_image`, pulled when missing) in its own task; its
shim is the pod's (containers carry the sandbox id annotation, which the runc shim groups
by). Its files (hostname, hosts, resolv.conf) live in `<root>/sandboxes/<id>`, its /dev/shm
tmpfs in `<state>/sandboxes/<id>/shm`.
"""
from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import secrets
import shutil
import signal
import time

from ..errdefs import ApplianceError, InvalidArgument, NotFound
from ..mount import mount_one, unmount_all_under
from . import events, security, spec as specs
from .images import NAMESPACE
from .runtime import (CRIRuntime, config_json, ensure_dir, in_threads, options_json,
                      remove_tree, to_the_end, undo_all)
from .store import (SANDBOX_METADATA, SANDBOX_NOTREADY, SANDBOX_READY, Sandbox, answer,
                    sandbox_from_metadata)

log = logging.getLogger("appliance.cri")
SHM_OPTIONS = "nodev,noexec,nosuid,mode=1777,size=65536k"   # containerd's defaultShmSize


def sandbox_name(meta) -> str:
    return f"{meta.name}_{meta.namespace}_{meta.uid}_{meta.attempt}"


def new_id() -> str:
    return secrets.token_hex(32)


class SandboxService:
    def __init__(self, rt: CRIRuntime, pb):
        self.rt = rt
        self.pb = pb               # runtime.v1 stubs: the stored config's type

    # --- RunPodSandbox ----------------------------------------------------------------

    async def run(self, config, handler_name: str) -> str:
        meta = config.metadata
        if not config.HasField("metadata") or not meta.name:
            raise InvalidArgument("sandbox config must include metadata")
        for key in config.linux.sysctls:    # refused before anything is made
            security.check_sysctl(key, config)
        name = sandbox_name(meta)
        sid = new_id()
        self.rt.sandbox_names.reserve(name, sid)
        undo: list = [lambda: self.rt.sandbox_names.release(name)]
        try:
            return await self._run(sid, name, config, handler_name, undo)
        except BaseException:
            await undo_all(undo, f"sandbox {sid}")
            raise

    async def _run(self, sid, name, config, handler_name, undo) -> str:
        rt = self.rt
        handler = rt.handler(handler_name)
        image = await self._ensure_image(rt.cfg.sandbox_image)
        sandbox = Sandbox(sid, name, config, handler_name,
                          os.path.join(rt.root, "sandboxes", sid),
                          os.path.join(rt.state, "sandboxes", sid), image=rt.cfg.sandbox_image,
                          created_at=time.time_ns())
        host_net = config.linux.security_context.namespace_options.network == specs.NODE
        sandbox.hostname = config.hostname or specs.host_hostname()
        runtime_opts = {**handler.options, "pod_annotations": handler.runtime.pod_annotations}
        # the pod's shim starts now, beside the files, netns, record and snapshot
        rt.start_shim_ahead(sid, handler, specs.sandbox_annotations(sandbox, runtime_opts))
        undo.append(lambda: rt.discard_shim_ahead(sid))

        undo.append(lambda: remove_tree(sandbox.root))
        undo.append(lambda: self._remove_state_dir(sandbox))

        network = None
        if not host_net:
            # the netns first (the spec names it); CNI ADD in it runs while the pause
            # container is made (shim start, runc create: nothing needs the network before
            # the task starts), and the task starts once the network is up. Without a CNI
            # config, ADD fails at once: then before anything else is made.
            from .netns import NetNS
            netns = await asyncio.to_thread(NetNS.create, self.rt.netns_dir)
            sandbox.netns_path = netns.path
            undo.append(lambda: asyncio.to_thread(netns.remove))
            network = asyncio.ensure_future(self._setup_network(sandbox))
            if not rt.network_for(handler_name).ready():
                undo.append(await network)
                network = None
        try:
            await self._create_task(sandbox, image, handler, runtime_opts, undo)
        except BaseException as exc:
            if network is not None:
                failed = await to_the_end(self._settle(network, sandbox, undo))
                if failed is not None and not isinstance(exc, asyncio.CancelledError):
                    raise failed from None     # containerd's ADD comes first: its error
            raise
        if network is not None:
            undo.append(await network)
            # the record learns the pod's IPs and CNI result (written before ADD ended),
            # its commit beside runc start
            for result in await asyncio.gather(rt.start_task(sid), asyncio.to_thread(
                    rt.update_extension, sid, SANDBOX_METADATA, sandbox.metadata()),
                    return_exceptions=True):
                if isinstance(result, BaseException):
                    raise result
        else:
            await rt.start_task(sid)
        sandbox.state = SANDBOX_READY
        rt.sandboxes.add(sandbox)
        rt.events.emit(sid, sid, events.CREATED)
        rt.events.emit(sid, sid, events.STARTED)
        return sid

    async def _create_task(self, sandbox: Sandbox, image, handler, runtime_opts: dict,
                           undo) -> None:
        """The pause container: its record, snapshot and spec, and its task (created, not
        started)."""
        rt, sid, config = self.rt, sandbox.id, sandbox.config
        runtime_spec = specs.sandbox_spec(sandbox, image.config, rt.cfg, runtime_opts)
        needs_rootfs = security.pod_needs_rootfs(config, image.config.get("config") or {})
        undo.append(lambda: rt.delete_record(sid))
        undo.append(lambda: rt.remove_snapshot(sid))

        def prepare():     # a worker thread: security context, record, snapshot
            if not needs_rootfs:       # the record made with the finished spec: one commit
                self._secure(sandbox, runtime_spec, image.config, None)
            rt.create_record(sid, "sandbox", dict(config.labels), rt.cfg.sandbox_image,
                             runtime_spec, handler, SANDBOX_METADATA, sandbox.metadata())
            mounts = rt.prepare_snapshot(sid, image.chain_id)
            if needs_rootfs:           # the image's users looked up in its rootfs
                self._secure(sandbox, runtime_spec, image.config, mounts)
                rt.update_spec(sid, runtime_spec)
            return mounts
        # the pod's files and /dev/shm made meanwhile, in another thread (nothing before
        # runc create needs them)
        _, mounts = await in_threads(functools.partial(self._make_files, sandbox), prepare)

        sandbox.pid = await rt.create_task(sid, rootfs=mounts)
        undo.append(lambda: rt.delete_task(sid))

    def _secure(self, sandbox: Sandbox, runtime_spec: dict, image_config: dict, mounts) -> None:
        """The pod's security context and sysctls on the spec (cri.security), with the pause
        image's rootfs (`mounts`) mounted read-only when its user must be looked up."""
        rt, config = self.rt, sandbox.config
        image_config = image_config.get("config") or {}
        security.apply_sysctls(runtime_spec, dict(config.linux.sysctls), config, rt.cfg)
        apply = functools.partial(security.apply_pod_security, runtime_spec, config, rt.cfg,
                                  host=rt.host, netns_path=sandbox.netns_path or "",
                                  image_config=image_config)
        if security.pod_needs_rootfs(config, image_config):
            with rt.mounted_rootfs(mounts) as rootfs:
                apply(rootfs=rootfs)
        else:
            apply()
        if rt.cfg.disable_cgroup:
            runtime_spec["linux"].pop("cgroupsPath", None)
            runtime_spec["linux"]["resources"].pop("cpu", None)
        sandbox.process_label = runtime_spec.get("process", {}).get("selinuxLabel", "")

    async def _ensure_image(self, ref: str):
        images = self.rt.images
        image = images.status(ref)
        if image is None:
            try:
                await images.pull(ref)
            except ApplianceError as exc:
                raise type(exc)(f"failed to get sandbox image {ref!r}: {exc.message}"
                                .replace("'", '"')) from None
            image = images.status(ref)
            if image is None:
                raise NotFound(f'failed to get sandbox image "{ref}": not found')
        return image

    def _make_files(self, sandbox: Sandbox) -> None:
        """hostname, hosts and resolv.conf, and the pod's /dev/shm (containerd's
        setupSandboxFiles)."""
        ensure_dir(sandbox.root, 0o755)
        ensure_dir(sandbox.state_dir, 0o755)
        with open(sandbox.hostname_path, "w") as f:
            f.write(sandbox.hostname + "\n")
        shutil.copyfile("/etc/hosts", sandbox.hosts_path)
        resolv = specs.resolv_conf(sandbox.config.dns_config)
        if resolv is None:
            shutil.copyfile("/etc/resolv.conf", sandbox.resolv_path)
        else:
            with open(sandbox.resolv_path, "w") as f:
                f.write(resolv)
        for path in (sandbox.hostname_path, sandbox.hosts_path, sandbox.resolv_path):
            os.chmod(path, 0o644)
        if sandbox.config.linux.security_context.namespace_options.ipc != specs.NODE:
            ensure_dir(sandbox.shm_path, 0o700)
            mount_one("tmpfs", "shm", SHM_OPTIONS.split(","), sandbox.shm_path)

    def _remove_state_dir(self, sandbox: Sandbox) -> None:
        if os.path.isdir(sandbox.shm_path):
            unmount_all_under(sandbox.shm_path)
        remove_tree(sandbox.state_dir)

    @staticmethod
    async def _settle(network: asyncio.Future, sandbox: Sandbox, undo) -> Exception | None:
        """After the pause container failed: wait for the CNI ADD running beside it; a
        network it set up is torn down with the rest (undo). Its error, if it failed (it
        undid itself then)."""
        try:
            undo.append(await network)
        except Exception as exc:
            log.debug("network of failed sandbox %s: %s", sandbox.id, exc)
            return exc
        return None

    async def _setup_network(self, sandbox: Sandbox):
        """CNI ADD in the sandbox's netns (on a failure it undoes itself); the step that
        tears it down again."""
        netns_path = sandbox.netns_path
        config = sandbox.config
        mappings = port_mappings(config)
        dns = config.dns_config
        try:
            network = self.rt.network_for(sandbox.runtime_handler)
            result = await network.setup(
                sandbox.id, netns_path, pod_name=config.metadata.name,
                pod_namespace=config.metadata.namespace, pod_uid=config.metadata.uid,
                port_mappings=mappings, annotations=dict(config.annotations),
                dns={"servers": list(dns.servers), "searches": list(dns.searches),
                     "options": list(dns.options)} if dns.ByteSize() else None)
        except ApplianceError as exc:
            raise type(exc)(f'failed to setup network for sandbox "{sandbox.id}": '
                            f"{exc.message}") from None
        sandbox.ip = result.ip
        sandbox.additional_ips = list(result.additional_ips)
        sandbox.cni_result = result.result
        return lambda: network.teardown(sandbox.id, netns_path, port_mappings=mappings)

    # --- StopPodSandbox / RemovePodSandbox ----------------------------------------------

    def get(self, sid: str) -> Sandbox:
        sandbox = self.rt.sandboxes.find(sid)
        if sandbox is None:
            raise NotFound(f'an error occurred when try to find sandbox "{sid}": not found')
        return sandbox

    async def stop(self, sid: str, containers) -> None:
        sandbox = self.get(sid)
        await self._stop(sandbox, containers)

    async def _stop(self, sandbox: Sandbox, containers) -> None:
        for c in self.rt.containers.list():
            if c.sandbox_id == sandbox.id:
                await containers.stop_container(c, 0)
        if sandbox.state == SANDBOX_READY or await self.rt.task_state(sandbox.id) is not None:
            await self.rt.kill(sandbox.id, signal.SIGKILL)
            await self._wait_stopped(sandbox)
        await self._teardown_network(sandbox)
        await asyncio.to_thread(self._unmount_shm, sandbox)

    async def _wait_stopped(self, sandbox: Sandbox) -> None:
        """Until the sandbox's task is gone (the event monitor deletes it on exit)."""
        deadline = time.monotonic() + 30.0
        while await self.rt.task_state(sandbox.id) is not None:
            if time.monotonic() > deadline:
                raise ApplianceError(f"failed to stop sandbox container {sandbox.id!r}: "
                                     "timeout")
            await asyncio.sleep(0.02)
        sandbox.state = SANDBOX_NOTREADY

    async def _teardown_network(self, sandbox: Sandbox) -> None:
        if not sandbox.netns_path:
            return
        from .netns import NetNS
        netns = NetNS.at(sandbox.netns_path)
        await self.rt.network_for(sandbox.runtime_handler).teardown(
            sandbox.id, sandbox.netns_path, port_mappings=port_mappings(sandbox.config))
        await asyncio.to_thread(netns.remove)

    def _unmount_shm(self, sandbox: Sandbox) -> None:
        if os.path.isdir(sandbox.shm_path):
            unmount_all_under(sandbox.shm_path)

    async def remove(self, sid: str, containers) -> None:
        sandbox = self.rt.sandboxes.find(sid)
        if sandbox is None:
            return                       # containerd: removing a missing sandbox is OK
        await self._stop(sandbox, containers)    # a READY pod is force-stopped first
        for c in self.rt.containers.list():
            if c.sandbox_id == sandbox.id:
                await containers.remove(c.id)
        await self.rt.delete_task(sandbox.id)
        await self.rt.remove_snapshot(sandbox.id)
        self.rt.delete_record(sandbox.id)
        await asyncio.to_thread(self._remove_state_dir, sandbox)
        await asyncio.to_thread(remove_tree, sandbox.root)
        self.rt.sandboxes.remove(sandbox.id)
        self.rt.sandbox_names.release(sandbox.name)
        self.rt.events.emit(sandbox.id, sandbox.id, events.DELETED)

    # --- PodSandboxStatus / ListPodSandbox ----------------------------------------------

    def status(self, sid: str, pb, verbose: bool):
        status = self.status_response(sid, pb).status
        info = {}
        if verbose:
            info["info"] = self._verbose(self.get(sid))
        return status, info

    def status_response(self, sid: str, pb):
        """PodSandboxStatusResponse without verbose info, kept until what it shows changes
        (store.answer: shared, never modified)."""
        sandbox = self.get(sid)
        return answer(sandbox, "status", (sandbox.state, sandbox.ip, pb),
                      lambda: pb.PodSandboxStatusResponse(status=self._status(sandbox, pb)))

    @staticmethod
    def _status(sandbox: Sandbox, pb):
        status = pb.PodSandboxStatus(
            id=sandbox.id, state=sandbox.state, created_at=sandbox.created_at,
            labels=sandbox.config.labels, annotations=sandbox.config.annotations,
            runtime_handler=sandbox.runtime_handler)
        status.metadata.MergeFromString(sandbox.config.metadata.SerializeToString())
        status.network.ip = sandbox.ip
        for ip in sandbox.additional_ips:
            status.network.additional_ips.add(ip=ip)
        ns = status.linux.namespaces.options
        ns.MergeFromString(sandbox.config.linux.security_context.namespace_options
                           .SerializeToString())
        return status

    def _verbose(self, sandbox: Sandbox) -> str:
        record = self.rt.containers_service.get(NAMESPACE, sandbox.id)
        runtime_spec = json.loads(record.spec.value) if record.spec else None
        handler = self.rt.cfg.containerd.runtimes.get(
            sandbox.runtime_handler or self.rt.cfg.containerd.default_runtime_name)
        return json.dumps({
            "pid": sandbox.pid,
            "processStatus": "running" if sandbox.state == SANDBOX_READY else "deleted",
            "netNamespaceClosed": bool(sandbox.netns_path) and not os.path.exists(
                sandbox.netns_path),
            "image": sandbox.image, "snapshotKey": sandbox.id,
            "snapshotter": self.rt.cfg.containerd.snapshotter,
            "runtimeHandler": sandbox.runtime_handler,
            "runtimeType": handler.runtime_type if handler else "",
            "runtimeOptions": options_json(handler),
            "config": config_json(sandbox.config),
            "runtimeSpec": runtime_spec, "cniResult": sandbox.cni_result,
        })

    def list(self, flt) -> list[Sandbox]:
        out = []
        for sandbox in self.rt.sandboxes.list():
            if flt is not None:
                if flt.id and not sandbox.id.startswith(flt.id):
                    continue
                if flt.HasField("state") and sandbox.state != flt.state.state:
                    continue
                if any(sandbox.config.labels.get(k) != v
                       for k, v in flt.label_selector.items()):
                    continue
            out.append(sandbox)
        return out

    def list_item(self, sandbox: Sandbox):
        """ListPodSandbox's item for `sandbox` (runtime.v1 PodSandbox; only its state
        changes)."""
        def build():
            item = self.pb.PodSandbox(
                id=sandbox.id, state=sandbox.state, created_at=sandbox.created_at,
                labels=sandbox.config.labels, annotations=sandbox.config.annotations,
                runtime_handler=sandbox.runtime_handler)
            item.metadata.CopyFrom(sandbox.config.metadata)
            return item
        return answer(sandbox, "item", sandbox.state, build)

    # --- recovery ---------------------------------------------------------------------

    async def recover(self) -> None:
        """Every sandbox in the container store, with its task's state."""
        def parse(ext):
            return sandbox_from_metadata(ext, self.pb.PodSandboxConfig, self.rt.root,
                                         self.rt.state)
        for record, sandbox in self.rt.stored("sandbox", SANDBOX_METADATA, parse):
            sandbox.image = record.image
            state = await self.rt.task_state(record.id)
            if state is not None and state.status == 2:       # RUNNING
                sandbox.state, sandbox.pid = SANDBOX_READY, state.pid
            elif state is not None:
                await self.rt.delete_task(record.id)
            self.rt.sandboxes.add(sandbox)
            self.rt.sandbox_names.reserve(sandbox.name, sandbox.id)


def port_mappings(config) -> list:
    """The pod's port mappings as cri.cni takes them."""
    from .cni import PortMapping
    protocols = {0: "tcp", 1: "udp", 2: "sctp"}
    return [PortMapping(protocols.get(m.protocol, "tcp"), m.container_port, m.host_port,
                        m.host_ip) for m in config.port_mappings]
