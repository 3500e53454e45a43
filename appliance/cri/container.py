"""Containers of a pod: CreateContainer, StartContainer, StopContainer, RemoveContainer,
ListContainers, ContainerStatus and ReopenContainerLog, as containerd 1.6's CRI answers them;
and what happens when a task exits (the event monitor calls `handle_exit`).

CreateContainer makes the containerd container and its snapshot; StartContainer makes the
task, in the pod's shim (the spec's sandbox id annotation), with stdout/stderr FIFOs copied
into the CRI log file (cri.logs).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import signal as signals
import time

from ..errdefs import ApplianceError, InvalidArgument, NotFound
from . import events, logs, resources, security, spec as specs
from .images import NAMESPACE
from .runtime import (EXIT_WAIT, CRIRuntime, config_json, ensure_dir, options_json,
                      in_thread, remove_tree, undo_all)
from .sandbox import new_id
from .store import (CONTAINER_METADATA, CREATED, EXITED, RUNNING, SANDBOX_READY,
                    UNKNOWN_EXIT_CODE, Container, Status, answer, container_from_metadata)

log = logging.getLogger("appliance.cri")
TASK_RUNNING, TASK_STOPPED = 2, 3    # containerd.v1.types.Status


def container_name(config, sandbox_config) -> str:
    m, s = config.metadata, sandbox_config.metadata
    return f"{m.name}_{s.name}_{s.namespace}_{s.uid}_{m.attempt}"


class ContainerService:
    def __init__(self, rt: CRIRuntime, pb):
        self.rt = rt
        self.pb = pb
        self._update_lock = asyncio.Lock()   # UpdateContainerResources, one at a time

    def get(self, cid: str) -> Container:
        c = self.rt.containers.find(cid)
        if c is None:
            raise NotFound(f'an error occurred when try to find container "{cid}": not found')
        return c

    # --- CreateContainer --------------------------------------------------------------

    async def create(self, sandbox_id: str, config, sandbox_config) -> str:
        rt = self.rt
        sandbox = rt.sandboxes.find(sandbox_id)
        if sandbox is None:
            raise NotFound(f'failed to find sandbox id "{sandbox_id}": not found')
        if not config.HasField("metadata") or not config.metadata.name:
            raise InvalidArgument("container config must include metadata")
        name = container_name(config, sandbox.config)
        cid = new_id()
        rt.container_names.reserve(name, cid)
        undo: list = [lambda: rt.container_names.release(name)]
        try:
            return await self._create(cid, name, sandbox, config, undo)
        except BaseException:
            await undo_all(undo, f"container {cid}")
            raise

    async def _create(self, cid, name, sandbox, config, undo) -> str:
        rt = self.rt
        ref = config.image.image
        image = rt.images.status(ref) if ref else None
        if image is None:
            raise NotFound(f'failed to resolve image "{ref}": not found')
        handler = rt.handler(sandbox.runtime_handler)
        log_path = ""
        if sandbox.config.log_directory and config.log_path:
            log_path = os.path.join(sandbox.config.log_directory, config.log_path)
        c = Container(cid, name, sandbox.id, config, image.id,
                      image.repo_digests[0] if image.repo_digests else image.id,
                      image.repo_tags[0] if image.repo_tags else ref, log_path,
                      os.path.join(rt.root, "containers", cid),
                      os.path.join(rt.state, "containers", cid),
                      (image.config.get("config") or {}).get("StopSignal") or "")
        undo.append(lambda: remove_tree(c.root))
        undo.append(lambda: remove_tree(c.state_dir))
        target_pid = self._target_pid(cid, sandbox, config)
        volumes = self._volumes(c, image.config)
        runtime_spec = specs.container_spec(
            cid, sandbox, config, image.config, c.image_name, volumes,
            {**handler.options, "container_annotations": handler.runtime.container_annotations},
            rt.cfg)
        labels = dict(config.labels)
        undo.append(lambda: rt.delete_record(cid))
        undo.append(lambda: rt.remove_snapshot(cid))

        def prepare():     # one worker-thread hop: record, directories, snapshot, spec, status
            rt.create_record(cid, "container", labels, c.image_name, runtime_spec, handler,
                             CONTAINER_METADATA, c.metadata())
            ensure_dir(c.root, 0o755)
            ensure_dir(c.state_dir, 0o700)
            for volume in volumes.values():
                ensure_dir(volume, 0o755)
            c.mounts = rt.prepare_snapshot(cid, image.chain_id)
            # the snapshot mounted read-only once, as containerd's opts do
            with rt.mounted_rootfs(c.mounts) as rootfs:
                if volumes:
                    _copy_up(rootfs, volumes)
                self._secure(c, sandbox, runtime_spec, image.config, rootfs, target_pid,
                             handler.runtime.privileged_without_host_devices)
            c.status = Status(created_at=time.time_ns())
            c.save_status()
        await in_thread(prepare)
        rt.containers.add(c)
        rt.events.emit(cid, sandbox.id, events.CREATED)
        return cid

    def _target_pid(self, cid: str, sandbox, config) -> int | None:
        """The pid whose namespace a TARGET pid namespace names (containerd's
        validateTargetContainer: a running container of the same pod)."""
        ns = config.linux.security_context.namespace_options
        if ns.pid != security.TARGET:
            return None
        target = self.rt.containers.find(ns.target_id)
        prefix = f'failed to generate container "{cid}" spec: invalid target container: '
        if target is None or target.id != ns.target_id:
            raise NotFound(f'{prefix}container "{ns.target_id}" does not exist: not found')
        if target.sandbox_id != sandbox.id:
            raise ApplianceError(f'{prefix}container "{target.id}" (sandbox '
                                 f'{target.sandbox_id}) does not belong to sandbox {sandbox.id}')
        if target.status.state != RUNNING:
            raise ApplianceError(f'{prefix}container "{target.id}" is not running - in state '
                                 f'{_state_name(target.status.state)}')
        return target.status.pid

    def _secure(self, c: Container, sandbox, runtime_spec: dict, image_config: dict,
                rootfs: str, target_pid, privileged_without_host_devices: bool) -> None:
        """Security context and resources on the spec (cri.security, cri.resources); `rootfs`:
        the container's, mounted read-only, for its users and groups. Recorded."""
        rt, config = self.rt, c.config
        if sandbox.process_label is None:     # found again after a restart
            sandbox.process_label = rt.spec(sandbox.id).get("process", {}).get(
                "selinuxLabel", "")
        pod_label = sandbox.process_label
        security.apply_container_security(
            runtime_spec, config, sandbox.config, image_config.get("config") or {}, rootfs,
            rt.cfg, host=rt.host, container_id=c.id, sandbox_pid=sandbox.pid,
            target_pid=target_pid, pod_label=pod_label,
            privileged_without_host_devices=privileged_without_host_devices)
        if rt.cfg.disable_cgroup:
            runtime_spec["linux"].pop("cgroupsPath", None)
        elif config.linux.HasField("resources"):
            try:
                resources.apply_resources(runtime_spec, config.linux.resources, rt.cfg,
                                          host=rt.host)
            except ApplianceError as exc:
                raise ApplianceError(f'failed to generate container "{c.id}" spec: '
                                     f'{exc.message}') from None
        rt.update_spec(c.id, runtime_spec)
        c.resources = resources.status_resources(runtime_spec)

    def _volumes(self, c: Container, image_config: dict) -> dict[str, str]:
        """A host dir per image volume (`ignore_image_defined_volumes` off), bound in: image
        path -> host dir (made with the container's)."""
        if self.rt.cfg.ignore_image_defined_volumes:
            return {}
        return {path: os.path.join(c.root, "volumes", f"{i:03d}") for i, path in enumerate(
            sorted((image_config.get("config") or {}).get("Volumes") or {}))}

    # --- StartContainer ---------------------------------------------------------------

    async def start(self, cid: str) -> None:
        rt = self.rt
        c = self.get(cid)
        if c.status.state != CREATED:
            raise ApplianceError(f"container is in {_state_name(c.status.state)} state")
        sandbox = rt.sandboxes.find(c.sandbox_id)
        if sandbox is None or sandbox.state != SANDBOX_READY:
            raise ApplianceError(f'sandbox container "{c.sandbox_id}" is not running')
        c.io = logs.ContainerIO(c.state_dir, cid, c.log_path, rt.cfg.max_container_log_line_size)
        c.stopped = asyncio.Event()
        try:
            c.io.attach()
            c.status.pid = await rt.create_task(cid, c.io.stdout_path, c.io.stderr_path,
                                                rootfs=c.mounts)
            try:
                await rt.start_task(cid)
            except BaseException:
                await rt.delete_task(cid)
                raise
        except BaseException as exc:
            c.io.finish()
            c.io = None
            c.status.finished_at = time.time_ns()
            c.status.exit_code = UNKNOWN_EXIT_CODE
            c.status.reason = "StartError"
            c.status.message = getattr(exc, "message", str(exc))
            await asyncio.to_thread(c.save_status)
            raise
        c.status.started_at = time.time_ns()
        await asyncio.to_thread(c.save_status)
        rt.events.emit(c.id, c.sandbox_id, events.STARTED)

    # --- UpdateContainerResources -----------------------------------------------------

    async def update_resources(self, cid: str, linux) -> None:
        """The new resources go into the recorded spec first (a container not running yet
        starts with them), then to the running task (runc update); on failure the old spec
        is put back. ContainerStatus and a restart see what was recorded."""
        c = self.rt.containers.find(cid)
        if c is None:
            raise NotFound(f'failed to find container: an error occurred when try to find '
                           f'container "{cid}": not found')
        async with self._update_lock:
            if c.status.removing:
                raise ApplianceError(f'failed to update resources: container "{cid}" is in '
                                     f'removing state')
            old = await asyncio.to_thread(self.rt.spec, cid)
            new, sent = resources.update_resources(old, linux, self.rt.cfg, host=self.rt.host)
            await asyncio.to_thread(self.rt.update_spec, cid, new)
            if c.status.state == RUNNING:
                try:
                    await self.rt.update_task(cid, sent)
                except NotFound:
                    pass              # the task exited meanwhile
                except Exception as exc:
                    await asyncio.to_thread(self.rt.update_spec, cid, old)
                    raise ApplianceError(f"failed to update resources: failed to update "
                                         f"resources: {getattr(exc, 'message', exc)}") from None
            c.resources = resources.status_resources(new)

    # --- StopContainer ----------------------------------------------------------------

    async def stop(self, cid: str, timeout: int) -> None:
        await self.stop_container(self.get(cid), timeout)

    async def stop_container(self, c: Container, timeout: int) -> None:
        """containerd's stopContainer: the image's stop signal, `timeout` s, then SIGKILL."""
        if c.status.state != RUNNING:
            return
        if timeout > 0:
            await self.rt.kill(c.id, stop_signal(c.stop_signal))
            if await self._wait_exit(c, timeout):
                return
        await self.rt.kill(c.id, signals.SIGKILL)
        if not await self._wait_exit(c, EXIT_WAIT):
            raise ApplianceError(f"failed to stop container {c.id!r}: "
                                 "an error occurs during waiting for container to be killed")

    async def _wait_exit(self, c: Container, timeout: float) -> bool:
        if c.stopped is None:
            return c.status.state != RUNNING
        try:
            await asyncio.wait_for(c.stopped.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    # --- the event monitor: a task exited ----------------------------------------------

    async def handle_exit(self, cid: str, exit_status: int, exited_at_ns: int) -> None:
        c = self.rt.containers.find(cid)
        if c is None or c.id != cid:
            return
        await self.rt.delete_task(cid)
        if c.io is not None:
            c.io.finish()
            c.io = None
        if not c.status.finished_at:
            c.status.finished_at = exited_at_ns or time.time_ns()
            c.status.exit_code = exit_status
            if not c.status.reason:
                c.status.reason = "Completed" if exit_status == 0 else "Error"
            c.status.pid = 0
            await asyncio.to_thread(c.save_status)
            self.rt.events.emit(c.id, c.sandbox_id, events.STOPPED)
        if c.stopped is not None:
            c.stopped.set()

    def handle_oom(self, cid: str) -> None:
        c = self.rt.containers.find(cid)
        if c is not None and c.id == cid and c.status.state == RUNNING:
            c.status.reason = "OOMKilled"

    # --- RemoveContainer --------------------------------------------------------------

    async def remove(self, cid: str) -> None:
        c = self.rt.containers.find(cid)
        if c is None:
            return                     # containerd: removing a missing container is OK
        if c.status.state == RUNNING:
            raise ApplianceError(f"failed to set removing state for container {c.id!r}: "
                                 "container is still running, to stop first".replace("'", '"'))
        c.status.removing = True
        await self.rt.delete_task(c.id)
        await self.rt.remove_snapshot(c.id)
        self.rt.delete_record(c.id)
        await asyncio.to_thread(remove_tree, c.root)
        await asyncio.to_thread(remove_tree, c.state_dir)
        self.rt.containers.remove(c.id)
        self.rt.container_names.release(c.name)
        self.rt.events.emit(c.id, c.sandbox_id, events.DELETED)

    # --- ContainerStatus / ListContainers -------------------------------------------------

    def status(self, cid: str, pb, verbose: bool):
        status = self.status_response(cid, pb).status
        info = {}
        if verbose:
            info["info"] = self._verbose(self.get(cid))
        return status, info

    def status_response(self, cid: str, pb):
        """ContainerStatusResponse without verbose info, kept until what it shows changes
        (store.answer: shared, never modified)."""
        c = self.get(cid)
        s = c.status
        image_spec, image_ref = c.config.image.image, c.image_id
        image = self.rt.images.cached(c.image_id)
        if image is not None:
            if image.repo_tags:
                image_spec = image.repo_tags[0]
            if image.repo_digests:
                image_ref = image.repo_digests[0]
        if c.resources is None:     # found again after a restart: from the recorded spec
            c.resources = resources.status_resources(self.rt.spec(c.id))
        key = (s.created_at, s.started_at, s.finished_at, s.exit_code, s.reason, s.message,
               image_spec, image_ref, c.resources, pb)
        return answer(c, "status", key, lambda: pb.ContainerStatusResponse(
            status=self._status(c, pb, image_spec, image_ref)))

    @staticmethod
    def _status(c: Container, pb, image_spec: str, image_ref: str):
        s = c.status
        status = pb.ContainerStatus(
            id=c.id, state=s.state, created_at=s.created_at, started_at=s.started_at,
            finished_at=s.finished_at, exit_code=s.exit_code, image_ref=image_ref,
            reason=s.reason, message=s.message, labels=c.config.labels,
            annotations=c.config.annotations, log_path=c.log_path)
        status.image.image = image_spec
        if "image_id" in status.DESCRIPTOR.fields_by_name:
            status.image_id = c.image_id
        status.metadata.MergeFromString(c.config.metadata.SerializeToString())
        for m in c.config.mounts:
            out = status.mounts.add()
            out.MergeFromString(m.SerializeToString())
        if c.resources:
            linux = dict(c.resources)
            hugepages = linux.pop("hugepage_limits", [])
            status.resources.linux.CopyFrom(pb.LinuxContainerResources(**linux))
            for size, limit in hugepages:
                status.resources.linux.hugepage_limits.add(page_size=size, limit=limit)
        return status

    def _verbose(self, c: Container) -> str:
        record = self.rt.containers_service.get(NAMESPACE, c.id)
        sandbox = self.rt.sandboxes.find(c.sandbox_id)
        handler = self.rt.cfg.containerd.runtimes.get(
            (sandbox.runtime_handler if sandbox else "")
            or self.rt.cfg.containerd.default_runtime_name)
        return json.dumps({
            "sandboxID": c.sandbox_id, "pid": c.status.pid, "removing": c.status.removing,
            "snapshotKey": c.id, "snapshotter": self.rt.cfg.containerd.snapshotter,
            "runtimeType": handler.runtime_type if handler else "",
            "runtimeOptions": options_json(handler),
            "config": config_json(c.config),
            "runtimeSpec": json.loads(record.spec.value) if record.spec else None,
        })

    def list(self, flt) -> list[Container]:
        out = []
        for c in self.rt.containers.list():
            if flt is not None:
                if flt.id and not c.id.startswith(flt.id):
                    continue
                if flt.pod_sandbox_id and not c.sandbox_id.startswith(flt.pod_sandbox_id):
                    continue
                if flt.HasField("state") and c.status.state != flt.state.state:
                    continue
                if any(c.config.labels.get(k) != v for k, v in flt.label_selector.items()):
                    continue
            out.append(c)
        return out

    def list_item(self, c: Container):
        """ListContainers' item for `c` (runtime.v1 Container; only its state changes)."""
        def build():
            item = self.pb.Container(
                id=c.id, pod_sandbox_id=c.sandbox_id, image_ref=c.image_id,
                state=c.status.state, created_at=c.status.created_at,
                labels=c.config.labels, annotations=c.config.annotations)
            item.metadata.CopyFrom(c.config.metadata)
            item.image.CopyFrom(c.config.image)
            return item
        return answer(c, "item", c.status.state, build)

    # --- ReopenContainerLog -----------------------------------------------------------

    def reopen_log(self, cid: str) -> None:
        c = self.get(cid)
        if c.status.state != RUNNING or c.io is None:
            raise ApplianceError("container is not running")
        c.io.reopen()

    # --- recovery ---------------------------------------------------------------------

    async def recover(self) -> None:
        """Every container in the store; a task that ended while the daemon was down gives
        its exit code and time, one that is gone gives containerd's unknown exit (255)."""
        def parse(ext):
            return container_from_metadata(ext, self.pb.ContainerConfig, self.rt.root,
                                           self.rt.state)
        for _, c in self.rt.stored("container", CONTAINER_METADATA, parse):
            self.rt.containers.add(c)
            self.rt.container_names.reserve(c.name, c.id)
            if c.status.state != RUNNING:
                continue
            state = await self.rt.task_state(c.id)
            if state is not None and state.status == TASK_RUNNING:
                c.io = logs.ContainerIO(c.state_dir, c.id, c.log_path,
                                        self.rt.cfg.max_container_log_line_size)
                c.io.attach()
                c.stopped = asyncio.Event()
            elif state is not None:
                await self.handle_exit(c.id, state.exit_status,
                                       state.exited_at.ToNanoseconds())
            else:
                c.status.finished_at = time.time_ns()
                c.status.exit_code = UNKNOWN_EXIT_CODE
                c.status.reason = "Unknown"
                await asyncio.to_thread(c.save_status)


def stop_signal(name: str) -> int:
    """The image's StopSignal ("SIGQUIT", "QUIT" or a number); SIGTERM when unset or
    unknown."""
    name = name.strip().upper()
    if name.isdigit():
        return int(name)
    try:
        return signals.Signals[name if name.startswith("SIG") else "SIG" + name]
    except (KeyError, ValueError):
        return signals.SIGTERM


def _copy_up(rootfs: str, volumes: dict[str, str]) -> None:
    """What the image has at each volume path, copied into the new volume (containerd's
    WithVolumes); `rootfs`: the container's, mounted read-only."""
    import subprocess
    for path, volume in volumes.items():
        source = security.in_root(rootfs, path)    # symlinks stay inside the rootfs
        if os.path.isdir(source):
            subprocess.run(["cp", "-a", f"{source}/.", volume], check=True,
                           capture_output=True, timeout=300)


def _state_name(state: int) -> str:
    return {CREATED: "CONTAINER_CREATED", RUNNING: "CONTAINER_RUNNING",
            EXITED: "CONTAINER_EXITED"}.get(state, "CONTAINER_UNKNOWN")
