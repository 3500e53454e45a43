"""The daemon: boot in containerd's order, serve, and stop gracefully.

Order: signals → root/state → temp mounts cleaned → plugins (in a worker thread,
so SIGTERM is handled while one blocks) → listeners → sd_notify READY → log.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import os
import signal
import sys
import tempfile
import threading
import time

from .process import eventloop, fdlimit, listeners, memory, metrics, sdnotify, settings
from .process.stacks import dump_stacks
from .process.trash import Trash
from .config import Config, plugin_config
from .errdefs import mkdir_all, path_error
from .grpcserver import Server as GrpcServer
from .plugin import (GRPC, InitContext, PluginSet, initialise, order)
from .stubs import GrpcServices
from .supervisor import Supervisor
from .ttrpc import TTRPCServer

log = logging.getLogger("appliance.daemon")
GRACE_SECONDS = 2.0
RELEASE_STARTUP_PAGES_AFTER = 1.0  # s after boot; see memory.release_startup_pages


class StartupError(Exception):
    """Start-up cannot go on; the message is one line for the user."""


class Daemon:
    def __init__(self, cfg: Config, registrations):
        self.cfg = cfg
        self.registrations = registrations
        self.plugins = PluginSet()
        self.grpc_server = None
        self.ttrpc_server = None
        self.sockets: list[str] = []
        self.endpoints: list[listeners.HTTPEndpoint] = []  # debug and metrics
        self.stopping = asyncio.Event()
        self.supervisor = Supervisor()   # plugins' background tasks and threads
        self.trash = Trash(self.supervisor.thread)   # one drain thread, the supervisor's

    # --- boot ---------------------------------------------------------------

    def _install_signals(self, loop) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
        loop.add_signal_handler(signal.SIGUSR1, lambda: log.info("%s", dump_stacks()))
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)

    def _on_stop_signal(self, sig) -> None:
        log.info("received signal %s, stopping", signal.Signals(sig).name)
        self.stopping.set()

    def _prepare_dirs(self) -> None:
        cfg = self.cfg
        if not cfg.root or not cfg.state:
            raise StartupError("root and state must be set")
        if os.path.abspath(cfg.root) == os.path.abspath(cfg.state):
            raise StartupError("root and state must be different paths")
        try:
            for path in (cfg.root, cfg.state):
                mkdir_all(path, 0o711)
                try:
                    os.chmod(path, 0o711)
                except OSError as exc:
                    raise OSError(path_error("chmod", path, exc)) from None
            if cfg.temp:   # containerd's `temp`: the daemon's and its children's TMPDIR
                mkdir_all(cfg.temp, 0o711)
                os.environ["TMPDIR"] = cfg.temp
                tempfile.tempdir = None   # tempfile caches the directory it found first
        except OSError as exc:
            hint = "" if os.geteuid() == 0 else " (ctrappliance must run as root)"
            raise StartupError(f"{exc}{hint}") from None
        tmpmounts = os.path.join(self.cfg.root, "tmpmounts")
        if os.path.isdir(tmpmounts):
            from .mount import unmount_all_under
            if unmount_all_under(tmpmounts):
                log.info("cleaned temporary mounts under %s", tmpmounts)

    def _init_plugins(self, loop) -> None:
        """Runs in a worker thread; async inits run on the loop."""
        disabled = set(self.cfg.disabled_plugins)
        regs = self.registrations
        if self.cfg.proxy_plugins:
            from .plugins import proxy
            regs = regs + proxy.registrations(self.cfg)
        regs = [r for r in regs if r.uri not in disabled]
        properties = {"io.containerd.plugin.root": self.cfg.root,
                      "io.containerd.plugin.state": self.cfg.state,
                      "io.containerd.plugin.grpc.address": self.cfg.grpc.address,
                      "io.containerd.plugin.ttrpc.address": self.cfg.ttrpc_address}
        for reg in order(regs):
            if self.stopping.is_set():
                return
            ctx = InitContext(registration=reg,
                              root=os.path.join(self.cfg.root, reg.uri),
                              state=os.path.join(self.cfg.state, reg.uri),
                              config=plugin_config(self.cfg, reg),
                              properties=properties, plugins=self.plugins,
                              server_config=self.cfg, supervisor=self.supervisor,
                              trash=self.trash)
            if reg.exports_root:
                ctx.exports["root"] = ctx.root
            log.debug("loading plugin %s", reg.uri)
            result = initialise(
                ctx, lambda aw: asyncio.run_coroutine_threadsafe(_awaited(aw), loop).result())
            self.plugins.add(result)
            if reg.essential and result.status != "ok":
                raise StartupError(f"load plugin {reg.uri}: {result.error}")
        for uri in self.cfg.required_plugins:
            found = [p for p in self.plugins.results if p.registration.uri == uri]
            if not found:
                raise StartupError(f"required plugin {uri} not included")
            if found[0].status != "ok":
                raise StartupError(f"load required plugin {uri}: {found[0].error}")

    async def _serve(self) -> None:
        interceptors = [metrics.grpc_interceptor()] if self.cfg.metrics.address else []
        self.grpc_server = GrpcServer(max_receive=self.cfg.grpc.max_recv_message_size,
                                      max_send=self.cfg.grpc.max_send_message_size,
                                      interceptors=interceptors)
        services = GrpcServices()  # stubs load on a service's first call
        self.ttrpc_server = TTRPCServer()
        for p in self.plugins.results:
            if p.status != "ok":
                continue
            if p.registration.type == GRPC and hasattr(p.instance, "register"):
                p.instance.register(services)
            if hasattr(p.instance, "register_ttrpc"):
                p.instance.register_ttrpc(self.ttrpc_server)
        self.grpc_server.add_generic_rpc_handlers((services,))
        if interceptors:
            metrics.record_methods(services)

        tcp = listeners.tcp_grpc_listener(self.cfg.grpc) \
            if self.cfg.grpc.tcp_address else None  # TLS files are checked first
        await self._serve_endpoints()
        address = self.cfg.grpc.address
        await self.grpc_server.serve_socket(
            listeners.bind_unix(address, "gRPC", self.cfg.grpc.uid, self.cfg.grpc.gid))
        self.sockets.append(address)
        log.info("serving gRPC on %s", address)
        if tcp:
            await self.grpc_server.serve_socket(tcp.sock, tcp.ssl_context)
            log.info("serving gRPC on %s", tcp.description)

        ttrpc_address = self.cfg.ttrpc_address
        listeners.reclaim_unix_path(ttrpc_address, "TTRPC")
        await self.ttrpc_server.serve(ttrpc_address, uid=self.cfg.ttrpc.uid or None,
                                      gid=self.cfg.ttrpc.gid or None)
        self.sockets.append(ttrpc_address)
        log.info("serving TTRPC on %s", ttrpc_address)

        for p in self.plugins.results:  # e.g. health flips to SERVING
            if p.status == "ok" and hasattr(p.instance, "serving"):
                await p.instance.serving()

    async def _serve_endpoints(self) -> None:
        """debug.address and metrics.address, as containerd starts them before gRPC."""
        debug, metrics_cfg = self.cfg.debug, self.cfg.metrics
        if debug.address:
            from .process import debug as debug_endpoint
            self.endpoints.append(listeners.http_endpoint(
                debug.address, debug_endpoint.handle, "debug endpoint", debug.uid, debug.gid))
        if metrics_cfg.address:
            self.endpoints.append(listeners.http_endpoint(
                metrics_cfg.address, metrics.handle, "metrics endpoint", unix=False))
        for endpoint in self.endpoints:
            await endpoint.start()
            log.info("serving %s on %s", endpoint.name, endpoint.address)

    def _apply_process_settings(self) -> None:
        """oom_score, cgroup.path and metrics registry, before any plugin runs."""
        settings.set_oom_score(self.cfg.oom_score)
        if self.cfg.cgroup.path:
            try:
                settings.join_cgroup(self.cfg.cgroup.path)
            except settings.CgroupError as exc:
                raise StartupError(str(exc)) from None
        if self.cfg.metrics.address:
            metrics.enable(self.cfg.metrics.grpc_histogram)
            metrics.watch_plugins(self.plugins)

    async def run(self) -> int:
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        self._install_signals(loop)
        _arm_failpoints()
        self._apply_process_settings()
        self._prepare_dirs()

        init = _in_daemon_thread(loop, self._init_plugins, loop)
        stop_wait = asyncio.ensure_future(self.stopping.wait())
        await asyncio.wait({init, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        if self.stopping.is_set():
            log.info("stopped during plugin initialisation")
            await self._shutdown()
            return 0
        init.result()  # raises StartupError for required plugins

        try:
            await self._serve()
        except BaseException:
            await self._shutdown()  # release sockets and plugins before reporting
            raise
        sdnotify.notify("READY=1")
        log.info("successfully booted in %.3fs", time.monotonic() - started)
        # asyncio.to_thread's executor module, read now rather than at its first use, which
        # may come at a moment with no file descriptor free (EMFILE)
        import concurrent.futures.thread  # noqa: F401
        # once the first clients' lazy imports have read their part of it too
        loop.call_later(RELEASE_STARTUP_PAGES_AFTER, memory.release_startup_pages)
        await stop_wait
        sdnotify.notify("STOPPING=1")
        await self._shutdown()
        return 0

    # --- stop ---------------------------------------------------------------

    async def _shutdown(self) -> None:
        if self.grpc_server is not None:
            await self.grpc_server.stop(GRACE_SECONDS)
        if self.ttrpc_server is not None:
            await self.ttrpc_server.close()
        for endpoint in self.endpoints:
            await endpoint.close()
        await self.supervisor.close(GRACE_SECONDS)   # before the plugins whose state it uses
        for p in reversed(self.plugins.results):
            close = getattr(p.instance, "close", None) if p.status == "ok" else None
            if close is None:
                continue
            try:
                result = close()
                if inspect.isawaitable(result):
                    await asyncio.wait_for(result, GRACE_SECONDS)
            except Exception as exc:
                log.warning("failed to close plugin %s: %s", p.registration.uri, exc)
        for path in self.sockets:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        log.info("stopped")


def _arm_failpoints() -> None:
    """Fault injection for tests only: armed from the environment, loudly."""
    from .process import failpoint
    try:
        names = failpoint.configure_from_env()
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    if names:
        log.warning("!!! FAILPOINTS ARMED (%s=%s): this daemon fails on purpose at %s; "
                    "never use it for real work !!!", failpoint.ENV,
                    os.environ.get(failpoint.ENV), ", ".join(names))


async def _awaited(awaitable):
    return await awaitable


def _in_daemon_thread(loop, fn, *args) -> asyncio.Future:
    """Run `fn` in a daemon thread (it must not keep the process alive on SIGTERM)."""
    future = loop.create_future()

    def target():
        try:
            result = fn(*args)
        except BaseException as exc:  # delivered to the awaiting task
            loop.call_soon_threadsafe(_settle, future, None, exc)
        else:
            loop.call_soon_threadsafe(_settle, future, result, None)

    threading.Thread(target=target, name="plugin-init", daemon=True).start()
    return future


def _settle(future, result, exc):
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


def run(cfg: Config, registrations) -> int:
    memory.limit_arenas()   # before any worker thread exists
    fdlimit.raise_soft_limit()
    try:
        eventloop.kind()
    except ValueError as exc:
        log.error("%s", exc)
        return 1
    try:
        with asyncio.Runner(loop_factory=eventloop.new_event_loop) as runner:
            code = runner.run(Daemon(cfg, registrations).run())
    except (StartupError, listeners.ListenerError) as exc:
        log.error("%s", exc)
        return 1
    _exit_now(code)


def _exit_now(code: int) -> None:
    """Leave without the interpreter's teardown once the daemon has stopped cleanly
    (listeners, plugins and sockets are closed; metadata commits are durable already):
    joining idle pool threads and freeing every module took ≈ 20 ms of a 25 ms stop."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
