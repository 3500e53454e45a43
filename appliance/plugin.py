"""Plugin registrations, the dependency graph and initialisation results.

Every plugin is one `Registration` listed in `appliance.builtins`. At boot the
server orders them by `requires`, gives each an `InitContext` and records an
`Plugin` result: ok with an instance, skip with a reason, or error.
"""
from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from .errdefs import ApplianceError

log = logging.getLogger("appliance.plugin")

# containerd's plugin type URIs.
CONTENT = "io.containerd.content.v1"
SNAPSHOT = "io.containerd.snapshotter.v1"
METADATA = "io.containerd.metadata.v1"
DIFF = "io.containerd.differ.v1"
EVENT = "io.containerd.event.v1"
GC = "io.containerd.gc.v1"
SERVICE = "io.containerd.service.v1"
RUNTIME_V1 = "io.containerd.runtime.v1"
RUNTIME_V2 = "io.containerd.runtime.v2"
MONITOR = "io.containerd.monitor.v1"
INTERNAL = "io.containerd.internal.v1"
LEASE = "io.containerd.lease.v1"
GRPC = "io.containerd.grpc.v1"
TTRPC = "io.containerd.ttrpc.v1"
STREAM_PROCESSOR = "io.containerd.streamprocessor.v1"
ALL = "*"

LINUX_AMD64 = ("linux/amd64",)


class SkipPlugin(Exception):
    """Raised by an init function when the plugin does not apply on this host."""


class PluginGraphError(Exception):
    """The registrations cannot be ordered: a cycle or a duplicate."""


@dataclass(frozen=True)
class Registration:
    type: str
    id: str
    init: Callable[["InitContext"], Any]
    requires: tuple[str, ...] = ()
    config: type | None = None          # a dataclass; its defaults are the defaults
    platforms: tuple[str, ...] = ()     # shown by `ctr plugins ls`
    exports_root: bool = False          # exports `root` (as containerd's content and
                                        # directory-based snapshotters do)
    essential: bool = False             # the daemon cannot run without it: failure is fatal

    @property
    def uri(self) -> str:
        return f"{self.type}.{self.id}"


@dataclass
class Plugin:
    """The outcome of initialising one registration."""
    registration: Registration
    instance: Any = None
    error: BaseException | None = None
    exports: dict[str, str] = field(default_factory=dict)
    capabilities: list[str] = field(default_factory=list)
    platforms: tuple[str, ...] | None = None   # None: the registration's

    def __post_init__(self):
        if self.platforms is None:
            self.platforms = self.registration.platforms

    @property
    def status(self) -> str:
        if self.error is None:
            return "ok"
        return "skip" if isinstance(self.error, SkipPlugin) else "error"


@dataclass
class InitContext:
    registration: Registration
    root: str
    state: str
    config: Any
    properties: dict[str, str]
    plugins: "PluginSet"
    server_config: Any = None
    supervisor: Any = None   # supervisor.Supervisor: the owner of long-lived background work
    trash: Any = None   # process.trash.Trash: removes directories off the request path
    exports: dict[str, str] = field(default_factory=dict)
    capabilities: list[str] = field(default_factory=list)
    platforms: list[str] | None = None   # set by an init: replaces the registration's

    def get(self, plugin_type: str) -> Any:
        return self.plugins.get(plugin_type)

    def get_by_id(self, plugin_type: str, plugin_id: str) -> Any:
        return self.plugins.get_by_id(plugin_type, plugin_id)

    def get_all(self, plugin_type: str) -> dict[str, Any]:
        return self.plugins.get_all(plugin_type)


class PluginSet:
    """Initialised plugins, in initialisation order."""

    def __init__(self):
        self.results: list[Plugin] = []

    def add(self, result: Plugin) -> None:
        self.results.append(result)

    def _ok(self, plugin_type):
        return [p for p in self.results
                if p.registration.type == plugin_type and p.status == "ok"]

    def get(self, plugin_type: str) -> Any:
        found = self._ok(plugin_type)
        if not found:
            from .errdefs import NotFound
            raise NotFound(f"no plugins registered for {plugin_type}: not found")
        return found[0].instance

    def get_by_id(self, plugin_type: str, plugin_id: str) -> Any:
        for p in self.results:
            if p.registration.type == plugin_type and p.registration.id == plugin_id:
                if p.status != "ok":
                    raise p.error
                return p.instance
        from .errdefs import NotFound
        raise NotFound(f"plugin {plugin_type}.{plugin_id}: not found")

    def get_all(self, plugin_type: str) -> dict[str, Any]:
        return {p.registration.id: p.instance for p in self._ok(plugin_type)}


def order(registrations: list[Registration]) -> list[Registration]:
    """Registrations sorted so each comes after the types it requires.

    Registration order is kept where `requires` allows. A requirement of "*"
    means every other plugin first. Duplicates and cycles are errors.
    """
    seen_uris = set()
    for reg in registrations:
        if reg.uri in seen_uris:
            raise PluginGraphError(f"plugin {reg.uri} registered twice")
        seen_uris.add(reg.uri)

    by_type: dict[str, list[Registration]] = {}
    for reg in registrations:
        by_type.setdefault(reg.type, []).append(reg)

    ordered: list[Registration] = []
    done: set[str] = set()
    visiting: list[str] = []
    wildcard = [r for r in registrations if ALL in r.requires]

    def visit(reg: Registration):
        if reg.uri in done:
            return
        if reg.uri in visiting:
            cycle = " -> ".join(visiting[visiting.index(reg.uri):] + [reg.uri])
            raise PluginGraphError(f"plugin dependency cycle: {cycle}")
        visiting.append(reg.uri)
        if ALL in reg.requires:
            deps = [r for r in registrations if r not in wildcard]
        else:
            deps = [r for t in reg.requires for r in by_type.get(t, [])]
        for dep in deps:
            if dep is not reg:
                visit(dep)
        visiting.pop()
        done.add(reg.uri)
        ordered.append(reg)

    for reg in registrations:
        if reg not in wildcard:
            visit(reg)
    for reg in wildcard:
        visit(reg)
    return ordered


def initialise(ctx: InitContext, run_async: Callable[[Any], Any] | None = None) -> Plugin:
    """Run one registration's init; never raises for plugin failures.

    An init may return an awaitable; `run_async` runs it to completion (the
    server runs inits in a worker thread and awaitables on its event loop).
    """
    result = Plugin(ctx.registration, exports=ctx.exports, capabilities=ctx.capabilities)
    try:
        instance = ctx.registration.init(ctx)
        if inspect.isawaitable(instance):
            if run_async is None:
                raise TypeError(f"plugin {ctx.registration.uri} has an async init")
            instance = run_async(instance)
        result.instance = instance
    except SkipPlugin as exc:
        result.error = exc
        log.info("skip loading plugin %s: %s", ctx.registration.uri, exc)
    except Exception as exc:  # a plugin failure is recorded, not fatal
        result.error = exc
        log.warning("failed to load plugin %s: %s", ctx.registration.uri, exc,
                    exc_info=log.isEnabledFor(logging.DEBUG)
                    and not isinstance(exc, ApplianceError))  # expected: its message says it
    if ctx.platforms is not None:
        result.platforms = tuple(ctx.platforms)
    return result
