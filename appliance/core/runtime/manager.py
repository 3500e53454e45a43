"""The v2 task manager: one shim per task, found again after a restart.

Tasks live as long as their shim; the manager's table is rebuilt at boot from
the bundles in state (all shims dialled at once, each under a deadline).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from dataclasses import dataclass, field

from google.protobuf import any_pb2, timestamp_pb2

from ... import stubs
from ...errdefs import AlreadyExists, ApplianceError, NotFound, exhausted, no_space
from ...process import failpoint
from ...process.trash import Trash
from ...supervisor import Supervisor
from . import shim as shims
from .bundle import Bundle, cgroups_path, list_bundles

events = stubs.module("appliance._proto.containerd.api.events.task_pb2")
shim_pb2 = stubs.module("appliance._proto.containerd.runtime.v2.task.shim_pb2")

log = logging.getLogger("appliance.runtime")
CGROUP_ROOT = "/sys/fs/cgroup"
PRESTART_IDLE = 10.0  # seconds a shim started ahead waits for its task before it is stopped
PRESTART_MAX = 4      # shims started ahead and not yet claimed, at most (a bulk create waits)


@dataclass
class Timeouts:
    load: float = 5.0      # io.containerd.timeout.shim.load: dial + Connect of a shim
    cleanup: float = 5.0   # io.containerd.timeout.shim.cleanup: `shim delete`
    shutdown: float = 3.0  # io.containerd.timeout.shim.shutdown


@dataclass
class CreateOpts:
    spec: any_pb2.Any
    runtime: str
    runtime_options: any_pb2.Any | None = None
    task_options: any_pb2.Any | None = None
    rootfs: list = field(default_factory=list)   # containerd.types.Mount
    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    terminal: bool = False


class TaskManager:
    def __init__(self, root: str, state: str, address: str, ttrpc_address: str, exchange,
                 timeouts: Timeouts, debug: bool = False, runtime_of=None,
                 prestart_shims: bool = False, sched_core: bool = False,
                 supervisor: Supervisor | None = None, trash: Trash | None = None):
        self.root, self.state = root, state
        self.address, self.ttrpc_address = address, ttrpc_address
        self.exchange = exchange
        self.timeouts = timeouts
        self.debug = debug
        self.runtime_of = runtime_of  # (ns, id) -> the container's runtime name, or None
        self.prestart_shims = prestart_shims
        self.sched_core = sched_core  # shims start with SCHED_CORE=1 (core scheduling)
        # key -> (start task, runtime, runtime options, idle timer)
        self._prestarted: dict[tuple[str, str], tuple] = {}
        self.tasks: dict[tuple[str, str], shims.Shim] = {}
        self._pending: set[tuple[str, str]] = set()  # being created
        self.supervisor = supervisor or Supervisor()   # owns the shim watchers
        self.trash = trash or Trash()   # removed bundles go there
        # shims being shut down and their bundles removed (a Delete waits for its own; a new
        # task with the same id waits for this, and so does close())
        self._teardowns: dict[tuple[str, str], asyncio.Task] = {}
        self._closing = False
        self._runtime_paths: dict[str, str] = {}   # runtime name -> its shim binary, found
        for d in (root, state):
            os.makedirs(d, mode=0o711, exist_ok=True)

    # --- lookups --------------------------------------------------------------

    def get(self, ns: str, task_id: str) -> shims.Shim:
        try:
            return self.tasks[(ns, task_id)]
        except KeyError:
            raise NotFound(f"task {task_id} not found") from None

    def exists(self, ns: str, task_id: str) -> bool:
        return (ns, task_id) in self.tasks

    def list(self, ns: str) -> list[shims.Shim]:
        return [s for (n, _), s in sorted(self.tasks.items()) if n == ns]

    # --- create / delete ------------------------------------------------------

    async def create(self, ns: str, task_id: str, opts: CreateOpts) -> shims.Shim:
        key = (ns, task_id)
        if key in self.tasks or key in self._pending:
            raise AlreadyExists(f"task {task_id}: already exists")
        self._pending.add(key)
        try:
            teardown = self._teardowns.get(key)
            if teardown is not None:
                await asyncio.wait({teardown}, timeout=self.timeouts.shutdown
                                   + 2 * self.timeouts.cleanup)
            return await self._create(ns, task_id, opts)
        finally:
            self._pending.discard(key)

    async def _create(self, ns, task_id, opts: CreateOpts) -> shims.Shim:
        started = time.monotonic()
        topts = opts.task_options if opts.task_options is not None else opts.runtime_options
        options = topts.SerializeToString() if topts is not None else None
        shim = await self._claim_prestarted(ns, task_id, opts.runtime, options, opts.spec.value)
        if shim is None:
            shim = await self._start_shim(ns, task_id, opts.runtime, opts.spec.value, options)
        bundle = shim.bundle
        shim_ready = time.monotonic()
        request = shim_pb2.CreateTaskRequest(
            id=task_id, bundle=bundle.path, rootfs=opts.rootfs, terminal=opts.terminal,
            stdin=opts.stdin, stdout=opts.stdout, stderr=opts.stderr)
        if topts is not None:
            request.options.CopyFrom(topts)
        try:
            failpoint.hit("task.create.before-runc-create")
            resp = await shim.call("Create", request)
        except BaseException as exc:
            await self._delete_and_stop(shim)
            if isinstance(exc, ApplianceError):
                raise shims.wrap(exc, "failed to create shim task") from None
            raise
        shim.task_pid = resp.pid
        log.debug("task %s/%s: shim up in %.1f ms, created in %.1f ms", ns, task_id,
                  1000 * (shim_ready - started), 1000 * (time.monotonic() - shim_ready))
        self._add(shim)
        return shim

    async def _start_shim(self, ns, task_id, runtime: str, spec: bytes,
                          options: bytes | None) -> shims.Shim:
        """A new bundle and a shim started in it (both removed again on failure)."""
        bundle = Bundle(self.state, self.root, ns, task_id, self.trash)
        try:
            bundle.create(spec)
        except FileExistsError:
            raise AlreadyExists(f"task {task_id}: already exists") from None
        except ApplianceError as exc:
            raise shims.wrap(exc, "failed to start shim") from None
        except OSError as exc:   # the bundle removed itself
            _raise_if_full(exc, bundle)
            raise
        try:
            try:
                binary = self._shim_binary(runtime)
            except ApplianceError as exc:
                raise shims.wrap(exc, "failed to resolve runtime path")
            shim = await self._join_group(bundle, binary)
            if shim is None:
                shim = await shims.start(bundle, binary, self.address, self.ttrpc_address,
                                         options, self.debug, self.timeouts.load,
                                         self.sched_core)
        except ApplianceError as exc:
            await self._remove_bundle(bundle)
            raise shims.wrap(exc, "failed to start shim") from None
        except BaseException as exc:
            await self._remove_bundle(bundle)
            _raise_if_full(exc, bundle)
            raise
        try:
            failpoint.hit("task.create.after-shim-start")
        except BaseException:  # from here on, a failure stops the shim too
            await self._shutdown_and_remove(shim)
            raise
        return shim

    async def _join_group(self, bundle: Bundle, binary: str) -> shims.Shim | None:
        """The runc v2 shim already serving the bundle's task group (a CRI pod's containers
        join its sandbox's), joined without running the binary's `start`; None when no live
        shim of ours serves that group."""
        if not bundle.group or os.path.basename(binary) != shims.GROUPING_SHIM:
            return None
        address = shims.socket_address(self.address, bundle.namespace, bundle.group)
        if not any(s.address == address and s.binary == binary and not s.client.closed
                   for s in self.tasks.values()):
            return None
        return await shims.join(bundle, binary, address, self.timeouts.load)

    def _shim_binary(self, runtime: str) -> str:
        """The runtime's shim binary; a name's lookup in PATH is done once (containerd's
        runtimePaths cache), an absolute path is checked every time."""
        found = self._runtime_paths.get(runtime)
        if found is None:
            found = shims.resolve_binary(runtime, shims.shim_env("")["PATH"])
            if not os.path.isabs(runtime):
                self._runtime_paths[runtime] = found
        return found

    # --- shims started ahead, when a container is created (off by default) ------
    # ctr, CRI and most clients create a task right after the container; starting its shim
    # at Containers.Create takes the shim's start-up off the Tasks.Create path. Measured, it
    # gains nothing here (bench/NOTES.md), and a metadata call should not start processes.
    # The CRI's RunPodSandbox starts its pod's shim ahead itself (`always`), beside the
    # pod's files, record and snapshot, and discards it on a failure.

    def prestart(self, ns: str, task_id: str, runtime: str, spec: bytes,
                 runtime_options: bytes | None, always: bool = False) -> None:
        """`always`: for a caller that creates the task next and discards the shim if it
        does not (the CRI's RunPodSandbox), whatever `prestart_shims` says. `spec`: what the
        shim's `start` reads (its annotations); Tasks.Create writes the final one."""
        key = (ns, task_id)
        if ((not always and (not self.prestart_shims or len(self._prestarted) >= PRESTART_MAX))
                or self._closing or key in self.tasks or key in self._pending
                or key in self._prestarted or key in self._teardowns):
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # called off the event loop (an in-process caller's thread)
            return
        task = asyncio.create_task(self._prestart(ns, task_id, runtime, spec, runtime_options),
                                   name=f"prestart-{task_id}")
        timer = asyncio.get_running_loop().call_later(PRESTART_IDLE, self.discard_prestarted,
                                                      ns, task_id)
        self._prestarted[key] = (task, runtime, runtime_options, timer)

    async def _prestart(self, ns, task_id, runtime, spec, options) -> shims.Shim | None:
        try:
            return await self._start_shim(ns, task_id, runtime, spec, options)
        except Exception as exc:  # Tasks.Create will start one itself and report the error
            log.debug("shim prestart for %s/%s: %s", ns, task_id, exc)
            return None

    async def _claim_prestarted(self, ns, task_id, runtime, options, spec) -> shims.Shim | None:
        entry = self._prestarted.pop((ns, task_id), None)
        if entry is None:
            return None
        task, started_runtime, started_options, timer = entry
        timer.cancel()
        try:
            await asyncio.wait({task}, timeout=self.timeouts.load + shims.START_TIMEOUT)
        finally:
            if not task.done():   # given up waiting (cancelled, deadline): stopped once up
                self._discard(ns, task_id, task)
        shim = task.result() if task.done() else None
        if shim is None:
            return None
        if (started_runtime, started_options) != (runtime, options) or shim.client.closed:
            await self._shutdown_and_remove(shim)
            return None
        with open(shim.bundle.file("config.json"), "wb") as f:  # the spec may have changed
            f.write(spec)
        shim.bundle.cgroups_path = None
        return shim

    def discard_prestarted(self, ns: str, task_id: str) -> asyncio.Task | None:
        """Stop a shim started ahead that no task claimed (container deleted, or idle); the
        task that does it, None if there was none."""
        entry = self._prestarted.pop((ns, task_id), None)
        if entry is None:
            return None
        task, _, _, timer = entry
        timer.cancel()
        return self._discard(ns, task_id, task)

    def _discard(self, ns: str, task_id: str, task: asyncio.Task) -> asyncio.Task:
        """Stop the shim the prestart `task` starts, once it is up (a teardown)."""
        async def stop():
            await asyncio.wait({task})
            if task.result() is not None:
                await self._shutdown_and_remove(task.result())
        return self._track_teardown((ns, task_id), stop(), f"discard-{task_id}")

    async def _delete_and_stop(self, shim: shims.Shim) -> None:
        """Delete what the shim's task made (runc delete, mounts), then stop the shim: for a
        task that could not be created, and for a shim found serving no task at boot."""
        shim.deleting = True
        try:
            await shim.call("Delete", shim_pb2.DeleteRequest(id=shim.id),
                            timeout=self.timeouts.cleanup)
            deleted = True
        except ApplianceError:  # e.g. no container: its `runc create` may have been cut short
            deleted = False
        failpoint.hit("task.delete")
        await self._shutdown_and_remove(shim, runc_delete=not deleted)

    async def delete(self, ns: str, task_id: str) -> shim_pb2.DeleteResponse:
        """As containerd's: the shim's Delete (`runc delete`, its /tasks/delete), then its
        Shutdown; the answer comes once the shim has exited, the connection and log FIFO are
        closed and the bundle is gone (clients count the daemon's fds right after)."""
        shim = self.get(ns, task_id)
        shim.deleting = True
        try:
            resp = await shim.call("Delete", shim_pb2.DeleteRequest(id=task_id))
        except ApplianceError as exc:
            if not shim.client.closed and not isinstance(exc, NotFound):
                shim.deleting = False
                raise shims.wrap(exc, "failed to delete task") from None
            resp = None
        failpoint.hit("task.delete")
        key = (ns, task_id)
        self.tasks.pop(key, None)
        # shielded: a client giving up does not stop the teardown half-way
        await asyncio.shield(self._track_teardown(key, self._shutdown_and_remove(shim),
                                                  f"teardown-{task_id}"))
        if resp is None:
            raise NotFound(f"failed to delete task: task {task_id} not found")
        return resp

    def _track_teardown(self, key, coro, name: str) -> asyncio.Task:
        """Run a shim's teardown as a task of its own; a new task with the same id waits for it."""
        teardown = asyncio.create_task(coro, name=name)
        self._teardowns[key] = teardown
        teardown.add_done_callback(lambda t: self._teardown_done(key, t))
        return teardown

    def _teardown_done(self, key, task: asyncio.Task) -> None:
        if self._teardowns.get(key) is task:
            del self._teardowns[key]

    async def _shutdown_and_remove(self, shim: shims.Shim, runc_delete: bool = False) -> None:
        """Stop the shim and remove its bundle meanwhile; done once the shim has exited, our
        end of its connection and its log FIFO are closed and the bundle is gone. With
        `runc_delete`, once the shim is gone, the shim binary's `delete` (runc delete --force,
        unmount) for a container the shim did not delete: a `runc create` cut short leaves a
        `runc init` that outlives the shim otherwise."""
        stopping = asyncio.create_task(self._stop(shim))
        if runc_delete and os.path.exists(shim.bundle.file("options.json")):  # Create began
            await stopping
            await shims.delete_with_binary(shim.bundle, shim.binary, self.address,
                                           self.ttrpc_address, self.timeouts.cleanup)
        await self._remove_bundle(shim.bundle, stopping)

    async def _stop(self, shim: shims.Shim) -> None:
        """Shutdown, then wait until the shim has exited (its end of the connection closes),
        unless it serves other tasks still (then Shutdown is a no-op)."""
        try:
            await shim.call("Shutdown", shim_pb2.ShutdownRequest(id=shim.id),
                            timeout=self.timeouts.shutdown)
        except ApplianceError:
            pass  # the shim exits while answering: a closed connection is normal
        if not any(other.address == shim.address for other in self.tasks.values()):
            try:
                await asyncio.wait_for(shim.client.wait_closed(), self.timeouts.shutdown)
            except asyncio.TimeoutError:
                log.warning("shim %s/%s did not exit after Shutdown", shim.namespace, shim.id)
        await shim.aclose()

    async def _remove_bundle(self, bundle: Bundle, shim_stopping: asyncio.Task | None = None):
        """Remove the bundle (unmounting its rootfs) and the cgroups runc left behind. With
        `shim_stopping`, the directories go once that task is done: a shim on its way out
        still reads its `address` file from the bundle."""
        try:
            cgroups = _cgroups_path(bundle)
            if not _remove_rootfs_quickly(bundle, cgroups):   # mountinfo: off the loop
                cgroups = await asyncio.to_thread(_remove_rootfs, bundle, cgroups)
        finally:
            if shim_stopping is not None:
                await shim_stopping
        if cgroups is None:
            return
        bundle.discard()
        # runc recreates the /<ns> parent for every task: removing it while a task of the
        # namespace is being created could pull it from under that runc (checked and done
        # here on the loop, where creates register themselves)
        own = (bundle.namespace, bundle.id)
        busy = any(key[0] == bundle.namespace and key != own
                   for key in [*self.tasks, *self._pending, *self._prestarted])
        remove_task_cgroups(bundle, cgroups, parent_too=not busy)

    # --- dead shims -----------------------------------------------------------

    def _add(self, shim: shims.Shim) -> None:
        self.tasks[(shim.namespace, shim.id)] = shim
        self.supervisor.task(self._watch(shim), f"shim-{shim.namespace}/{shim.id}")

    async def _watch(self, shim: shims.Shim) -> None:
        await shim.client.wait_closed()
        if shim.deleting or self._closing:
            return
        log.warning("shim %s/%s disconnected: cleaning up", shim.namespace, shim.id)
        shim.log.close()
        await self.cleanup_dead(shim.bundle, shim.binary)

    async def cleanup_dead(self, bundle: Bundle, binary: str | None) -> None:
        """`shim delete`, then /tasks/exit and /tasks/delete, then the bundle (and mounts)."""
        resp = None
        if binary:
            resp = await shims.delete_with_binary(bundle, binary, self.address,
                                                  self.ttrpc_address, self.timeouts.cleanup)
        self.tasks.pop((bundle.namespace, bundle.id), None)
        if resp is not None:
            pid, status, exited_at = resp.pid, resp.exit_status, resp.exited_at
        else:
            pid, status = 0, 255
            exited_at = timestamp_pb2.Timestamp()
            exited_at.GetCurrentTime()
        self.exchange.publish(bundle.namespace, "/tasks/exit", events.TaskExit(
            container_id=bundle.id, id=bundle.id, pid=pid, exit_status=status,
            exited_at=exited_at))
        self.exchange.publish(bundle.namespace, "/tasks/delete", events.TaskDelete(
            container_id=bundle.id, pid=pid, exit_status=status, exited_at=exited_at))
        await self._remove_bundle(bundle)

    # --- restart recovery -----------------------------------------------------

    async def load_existing(self) -> None:
        """Reconnect every shim left in state, in parallel; clean the dead ones."""
        bundles = list_bundles(self.state, self.root, self.trash)
        if not bundles:
            return
        started = time.monotonic()
        results = await asyncio.gather(*(self._load_one(b) for b in bundles),
                                       return_exceptions=True)
        alive = sum(1 for r in results if r is True)
        for bundle, result in zip(bundles, results):
            if isinstance(result, BaseException):
                log.error("loading task %s/%s: %s", bundle.namespace, bundle.id, result)
        log.info("reconnected %d of %d shims in %.3fs", alive, len(bundles),
                 time.monotonic() - started)
        self._cleanup_work_dirs()

    async def _load_one(self, bundle: Bundle) -> bool:
        if not os.listdir(bundle.path):
            await self._remove_bundle(bundle)
            return False
        binary = self._binary_of(bundle)
        try:
            shim = await asyncio.wait_for(shims.load(bundle, binary, self.timeouts.load),
                                          self.timeouts.load)
        except (OSError, ApplianceError, asyncio.TimeoutError) as exc:
            log.warning("shim %s/%s is gone (%s): cleaning up", bundle.namespace, bundle.id,
                        exc or type(exc).__name__)
            await self.cleanup_dead(bundle, binary)
            return False
        # the daemon died between shim start and task create, or in a delete
        if not shim.task_pid:
            log.warning("shim %s/%s serves no task: stopping it", bundle.namespace, bundle.id)
            await self._delete_and_stop(shim)
            return False
        self._add(shim)
        return True

    def _binary_of(self, bundle: Bundle) -> str | None:
        """The shim binary recorded at start, else the one the container's runtime names."""
        try:
            with open(bundle.file("shim-binary-path")) as f:
                recorded = f.read().strip()
            if recorded:
                return recorded
        except FileNotFoundError:
            pass
        runtime = self.runtime_of(bundle.namespace, bundle.id) if self.runtime_of else None
        try:
            return self._shim_binary(runtime) if runtime else None
        except ApplianceError:
            return None

    def _cleanup_work_dirs(self) -> None:
        import shutil
        for ns in os.listdir(self.root):
            ns_dir = os.path.join(self.root, ns)
            if not os.path.isdir(ns_dir):
                continue
            for task_id in os.listdir(ns_dir):
                if (ns, task_id) not in self.tasks:
                    shutil.rmtree(os.path.join(ns_dir, task_id), ignore_errors=True)

    async def close(self) -> None:
        """Daemon stop: drop connections, leave shims and containers running."""
        self._closing = True
        for ns, task_id in list(self._prestarted):
            self.discard_prestarted(ns, task_id)
        if self._teardowns:
            await asyncio.wait(list(self._teardowns.values()),
                               timeout=self.timeouts.shutdown + self.timeouts.cleanup)
        for shim in list(self.tasks.values()):
            shim.close()   # the watchers are the supervisor's: it has ended them already


def _cgroups_path(bundle: Bundle) -> str:
    """The spec's linux.cgroupsPath: noted at create, else read from config.json."""
    if bundle.cgroups_path is not None:   # no second parse of the same spec
        return bundle.cgroups_path
    try:
        with open(bundle.file("config.json"), "rb") as f:
            return cgroups_path(json.load(f))
    except (OSError, ValueError):
        return ""


def _remove_rootfs_quickly(bundle: Bundle, cgroups: str) -> bool:
    """The usual case, a few syscalls (cheaper on the loop than a thread's hop): nothing left
    in the task's cgroup and an empty rootfs with nothing mounted (rmdir fails on a mount
    point or a non-empty directory). False: `_remove_rootfs` is needed."""
    if _task_pids(bundle, cgroups):
        return False
    try:
        os.rmdir(bundle.rootfs)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def _remove_rootfs(bundle: Bundle, path: str) -> str | None:
    """Unmount and remove the bundle's rootfs; its cgroups `path` (None when the rootfs
    stays)."""
    kill_task_leftovers(bundle, path)
    try:
        bundle.remove_rootfs()
    except OSError as exc:
        log.error("failed to delete bundle %s: %s", bundle.path, exc)
        return None
    return path


def remove_task_cgroups(bundle: Bundle, cgroups: str, parent_too: bool) -> None:
    """runc removes /<ns>/<id> but leaves the /<ns> parent it made for ctr's default path;
    remove it when empty (rmdir of a cgroup in use fails, so this never disturbs one)."""
    if cgroups != f"/{bundle.namespace}/{bundle.id}":
        return
    try:
        hierarchies = os.listdir(CGROUP_ROOT)
    except OSError:
        return
    for name in hierarchies:
        base = os.path.join(CGROUP_ROOT, name)
        if os.path.islink(base):
            continue
        leftovers = [os.path.join(base, bundle.namespace, bundle.id)]
        if parent_too:
            leftovers.append(os.path.join(base, bundle.namespace))
        for leftover in leftovers:
            try:
                os.rmdir(leftover)
            except OSError:
                pass


def _raise_if_full(exc: BaseException, bundle: Bundle) -> None:
    """A full state dir: RESOURCE_EXHAUSTED, naming the file or at least the bundle."""
    full = no_space(exc)
    if full is not None:
        raise exhausted(full, full.filename or bundle.path) from None


def kill_task_leftovers(bundle: Bundle, cgroups: str, timeout: float = 2.0) -> None:
    """SIGKILL what is still in the task's own /<ns>/<id> cgroup when its bundle goes: what
    runc could not see (a `runc init` whose `runc create` died before writing its state)."""
    deadline = time.monotonic() + timeout
    killed: set[int] = set()
    while True:
        pids = _task_pids(bundle, cgroups)
        if not pids:
            return
        if time.monotonic() > deadline:
            log.error("processes %s stay in cgroup %s", pids, cgroups)
            return
        if not killed:
            log.warning("killing processes %s left in cgroup %s", pids, cgroups)
            _thaw(bundle)
        for pid in set(pids) - killed:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        killed.update(pids)
        time.sleep(0.02)


def _task_pids(bundle: Bundle, cgroups: str) -> list[int]:
    """The processes in the task's own /<ns>/<id> cgroup (none without such a cgroup)."""
    if cgroups != f"/{bundle.namespace}/{bundle.id}":
        return []
    path = os.path.join(CGROUP_ROOT, "pids", bundle.namespace, bundle.id)
    if os.path.exists(os.path.join(CGROUP_ROOT, "cgroup.controllers")):  # cgroup v2
        path = os.path.join(CGROUP_ROOT, bundle.namespace, bundle.id)
    try:
        with open(os.path.join(path, "cgroup.procs")) as f:
            return [int(p) for p in f.read().split()]
    except OSError:  # no such cgroup: nothing was left
        return []


def _thaw(bundle: Bundle) -> None:
    """A frozen (paused) process gets no SIGKILL until thawed."""
    try:
        with open(os.path.join(CGROUP_ROOT, "freezer", bundle.namespace, bundle.id,
                               "freezer.state"), "w") as f:
            f.write("THAWED")
    except OSError:
        pass
