"""What the CRI's pod and container services share: the daemon's services they run on, the
in-memory view, runtime handlers, and the steps of a task (create with its rootfs, kill,
wait for the exit the event monitor handles, delete).

All of it goes through the daemon's own services in-process (containers, snapshots, tasks,
events) in namespace `k8s.io`, never through its gRPC API.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
from dataclasses import dataclass

from google.protobuf import any_pb2

from .. import stubs
from ..core.metadata.containers import Container as Record, Runtime as RecordRuntime
from ..errdefs import ApplianceError, NotFound
from .config import CRIConfig, Runtime
from .events import ContainerEvents
from .host import Host
from .images import NAMESPACE
from .spec import SPEC_TYPE_URL
from .store import KIND_LABEL, Names, Store

tasks_pb2 = stubs.module("appliance._proto.containerd.api.services.tasks.v1.tasks_pb2")
mount_pb2 = stubs.module("appliance._proto.containerd.api.types.mount_pb2")
runc_pb2 = stubs.module("appliance._proto.containerd.runtime.v2.runc.options.oci_pb2")
shim_pb2 = stubs.module("appliance._proto.containerd.runtime.v2.task.shim_pb2")

log = logging.getLogger("appliance.cri")

RUNC_OPTIONS_URL = "containerd.runc.v1.Options"
# runc options as containerd's TOML names them -> containerd.runc.v1.Options fields
RUNC_OPTION_FIELDS = {
    "NoPivotRoot": "no_pivot_root", "NoNewKeyring": "no_new_keyring",
    "ShimCgroup": "shim_cgroup", "IoUid": "io_uid", "IoGid": "io_gid",
    "BinaryName": "binary_name", "Root": "root", "CriuPath": "criu_path",
    "SystemdCgroup": "systemd_cgroup", "CriuImagePath": "criu_image_path",
    "CriuWorkPath": "criu_work_path",
}
EXIT_WAIT = 30.0    # after SIGKILL, how long the exit may take to be handled


@dataclass
class Handler:
    name: str
    runtime: Runtime

    @property
    def options(self) -> dict:
        return self.runtime.options or {}

    def options_any(self) -> any_pb2.Any | None:
        if not self.runtime.runtime_type.startswith("io.containerd.runc."):
            return None
        opts = runc_pb2.Options()
        for key, value in self.options.items():
            name = RUNC_OPTION_FIELDS.get(key)
            if name is not None and value not in ("", None):
                setattr(opts, name, value)
        return any_pb2.Any(type_url=RUNC_OPTIONS_URL, value=opts.SerializeToString())


class CRIRuntime:
    def __init__(self, cfg: CRIConfig, root: str, state: str, services: dict, plugin):
        self.cfg = cfg
        self.root = root
        self.state = state
        self.containers_service = services["containers-service"]
        self.snapshots = services["snapshots-service"]
        self.tasks = services["tasks-service"]
        self.plugin = plugin                  # plugins.cri.CRIPlugin: images, network
        self.sandboxes = Store("sandbox")
        self.containers = Store("container")
        self.sandbox_names = Names("sandbox")
        self.container_names = Names("container")
        self.background: set[asyncio.Task] = set()
        self.events = ContainerEvents()        # GetContainerEvents' streams

    @functools.cached_property
    def host(self) -> Host:
        """What the host offers security contexts and resources (read once)."""
        return Host.probe()

    @property
    def images(self):
        """cri.images.ImageService (built on first use: it loads the pull engine)."""
        return self.plugin.images

    def network_for(self, handler: str):
        """The CNI (cri.cni.CNIManager) of a runtime handler's pods."""
        return self.plugin.network_for(handler)

    @property
    def netns_dir(self) -> str:
        return self.plugin.netns_dir

    # --- runtime handlers -----------------------------------------------------------

    def handler(self, name: str) -> Handler:
        name = name or self.cfg.containerd.default_runtime_name
        runtime = self.cfg.containerd.runtimes.get(name)
        if runtime is None:
            raise ApplianceError(f"failed to get sandbox runtime: no runtime for {name!r} is "
                                 "configured".replace("'", '"'))
        return Handler(name, runtime)

    # --- containerd containers ------------------------------------------------------

    def create_record(self, cid: str, kind: str, labels: dict, image: str, spec: dict,
                      handler: Handler, extension_key: str, extension: any_pb2.Any) -> None:
        record = Record(
            cid, labels={**labels, KIND_LABEL: kind}, image=image,
            runtime=RecordRuntime(handler.runtime.runtime_type, handler.options_any()),
            spec=any_pb2.Any(type_url=SPEC_TYPE_URL, value=json.dumps(spec).encode()),
            snapshotter=self.cfg.containerd.snapshotter, snapshot_key=cid,
            extensions={extension_key: extension})
        self.containers_service.create(NAMESPACE, record)

    def update_spec(self, cid: str, spec: dict) -> None:
        """The record's spec replaced (the update reads the record in its own transaction:
        only the masked field is taken from ours)."""
        record = Record(cid, spec=any_pb2.Any(type_url=SPEC_TYPE_URL,
                                              value=json.dumps(spec).encode()))
        self.containers_service.update(NAMESPACE, record, ["spec"])

    def update_extension(self, cid: str, key: str, extension: any_pb2.Any) -> None:
        """The record's extension `key` replaced (blocking: a commit)."""
        self.containers_service.update(NAMESPACE, Record(cid, extensions={key: extension}),
                                       [f"extensions.{key}"])

    def spec(self, cid: str) -> dict:
        record = self.containers_service.get(NAMESPACE, cid)
        return json.loads(record.spec.value) if record.spec else {}

    def delete_record(self, cid: str) -> None:
        try:
            self.containers_service.delete(NAMESPACE, cid)
        except NotFound:
            pass

    def records(self, kind: str) -> list[Record]:
        return [c for c in self.containers_service.list(NAMESPACE, [])
                if c.labels.get(KIND_LABEL) == kind]

    def stored(self, kind: str, key: str, parse):
        """(record, parse(metadata extension)) of each CRI record of `kind`, at recovery;
        one without readable metadata is logged and skipped."""
        for record in self.records(kind):
            ext = record.extensions.get(key)
            if ext is None:
                continue
            try:
                item = parse(ext)
            except (ValueError, KeyError) as exc:
                log.error("%s %s: unreadable metadata: %s", kind, record.id, exc)
                continue
            yield record, item

    def prepare_snapshot(self, cid: str, parent: str) -> list:
        """The container's snapshot (blocking: call it in a worker thread); its mounts."""
        mounts = self.snapshots.prepare(NAMESPACE, self.cfg.containerd.snapshotter, cid,
                                        parent)
        return [mount_pb2.Mount(type=m.type, source=m.source, target=m.target,
                                options=m.options) for m in mounts]

    async def remove_snapshot(self, cid: str) -> None:
        try:
            await asyncio.to_thread(self.snapshots.remove, NAMESPACE,
                                    self.cfg.containerd.snapshotter, cid)
        except NotFound:
            pass

    async def snapshot_mounts(self, cid: str) -> list:
        sn = self.snapshots.get(self.cfg.containerd.snapshotter)
        mounts = await asyncio.to_thread(sn.mounts, NAMESPACE, cid)
        return [mount_pb2.Mount(type=m.type, source=m.source, target=m.target,
                                options=m.options) for m in mounts]

    @contextlib.contextmanager
    def mounted_rootfs(self, mounts):
        """A snapshot's mounts mounted read-only on a temporary directory under the daemon's
        tmpmounts (unmounted on exit), for reading the image's /etc/passwd and /etc/group."""
        from ..core.diff.compare import readonly_mounts
        from ..core.snapshots.backends import Mount
        from ..mount import TempMount
        tmpmounts = os.path.join(os.path.dirname(self.root), "tmpmounts")
        plain = [Mount(m.type, m.source, list(m.options), m.target) for m in mounts]
        with TempMount(tmpmounts, readonly_mounts(plain)) as path:
            yield path

    # --- tasks ----------------------------------------------------------------------

    async def create_task(self, cid: str, stdout: str = "", stderr: str = "",
                          rootfs: list | None = None) -> int:
        """`rootfs`: the snapshot's mounts when the caller has them (else read)."""
        if rootfs is None:
            rootfs = await self.snapshot_mounts(cid)
        try:
            return await self.tasks.create(NAMESPACE, tasks_pb2.CreateTaskRequest(
                container_id=cid, rootfs=rootfs, stdout=stdout, stderr=stderr))
        except ApplianceError as exc:
            raise type(exc)(f"failed to create containerd task: {exc.message}") from None

    def start_shim_ahead(self, cid: str, handler: Handler, annotations: dict) -> None:
        """The shim of a task created next started now, beside the work before it (its
        `start` reads only the spec's annotations); discard_shim_ahead() if none comes."""
        options = handler.options_any()
        self.tasks.runtime.prestart(
            NAMESPACE, cid, handler.runtime.runtime_type,
            json.dumps({"annotations": annotations}).encode(),
            options.SerializeToString() if options is not None else None, always=True)

    async def discard_shim_ahead(self, cid: str) -> None:
        """Stop a shim started ahead that no task took, and wait until it is gone."""
        teardown = self.tasks.runtime.discard_prestarted(NAMESPACE, cid)
        if teardown is not None:
            await asyncio.wait({teardown})

    async def start_task(self, cid: str) -> int:
        """Start the task in its shim (Tasks.Start without its record read: the CRI knows
        the container; NotFound without a task)."""
        shim = self.tasks.runtime.get(NAMESPACE, cid)
        return (await shim.call("Start", shim_pb2.StartRequest(id=cid))).pid

    async def update_task(self, cid: str, resources: tuple[str, bytes]) -> None:
        """A running task's new OCI LinuxResources (runc update in the shim)."""
        type_url, value = resources
        await self.tasks.update(NAMESPACE, tasks_pb2.UpdateTaskRequest(
            container_id=cid, resources=any_pb2.Any(type_url=type_url, value=value)))

    async def kill(self, cid: str, signal: int) -> None:
        try:
            await self.tasks.kill(NAMESPACE, cid, "", signal, True)
        except NotFound:
            pass

    async def task_state(self, cid: str):
        """The task's Process (status, exit_status, exited_at), or None without a task."""
        try:
            return await self.tasks.get(NAMESPACE, cid, "")
        except NotFound:
            return None

    async def delete_task(self, cid: str):
        """Delete the task (its shim goes with the last task it serves); None if none."""
        try:
            return await self.tasks.delete(NAMESPACE, cid)
        except NotFound:
            return None

    def spawn(self, coro, name: str) -> asyncio.Task:
        """Background work of the CRI (exit handling): ended by close()."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return task

    async def close(self) -> None:
        self.events.close()
        for task in list(self.background):
            task.cancel()
        if self.background:
            await asyncio.wait(list(self.background), timeout=2.0)
        for c in self.containers.list():
            if c.io is not None:
                for reader in c.io.readers:
                    reader.close()
                if c.io.sink is not None:
                    c.io.sink.close()


async def to_the_end(awaitable):
    """Await `awaitable` to its end even when the caller is cancelled meanwhile, once or
    more (a client's deadline, then its reset of the stream); the cancellation is raised
    after. A failed create's undo must run after its step, not beside it, and to its end,
    or what the step makes after the undo (a snapshot, directories) is left behind."""
    future = asyncio.ensure_future(awaitable)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(future)
            break
        except asyncio.CancelledError:
            if future.cancelled():
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return result


async def in_thread(fn):
    """fn() in a worker thread, to its end (to_the_end)."""
    return await to_the_end(asyncio.to_thread(fn))


async def in_threads(*fns) -> list:
    """Each fn() in a worker thread of its own, all to their end (to_the_end); their
    results, or the first one's failure once all have ended."""
    results = await to_the_end(asyncio.gather(*(asyncio.to_thread(fn) for fn in fns),
                                              return_exceptions=True))
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


async def undo_all(steps: list, what: str) -> None:
    """Run a failed create's undo steps, last first (a step may be a coroutine function's
    result); each failure is logged and the rest still run, to the end even when the
    caller is cancelled again meanwhile."""
    await to_the_end(_undo_all(steps, what))


async def _undo_all(steps: list, what: str) -> None:
    for step in reversed(steps):
        try:
            result = step()
            if asyncio.iscoroutine(result):
                await result
        except Exception as exc:
            log.error("undoing %s: %s", what, exc)


def options_json(runtime: Runtime | None) -> dict | None:
    """The runtime's runc options as verbose statuses show them (the Options message's JSON
    names, empty ones left out)."""
    if runtime is None:
        return None
    return {RUNC_OPTION_FIELDS.get(k, k): v for k, v in (runtime.options or {}).items()
            if v not in ("", 0, False, None)}


def config_json(message) -> dict:
    """A CRI config as containerd's verbose info shows it (Go's JSON of the message:
    proto field names, enums as numbers)."""
    from google.protobuf import json_format
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     use_integers_for_enums=True)


def remove_tree(path: str) -> None:
    import shutil
    shutil.rmtree(path, ignore_errors=True)


def ensure_dir(path: str, mode: int = 0o755) -> str:
    os.makedirs(path, mode=mode, exist_ok=True)
    return path
