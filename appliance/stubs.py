"""Generated stubs, imported when first used rather than at start-up.

Importing a generated `_pb2` module adds its descriptors to protobuf's pool: for
every service of the daemon that is ≈ 3 MiB of idle memory and tens of
milliseconds before the socket accepts, mostly for services nobody calls. So
plugin modules name their stubs with `stubs.module(...)`, and gRPC adapters are
listed in a `GrpcServices` table that imports a service's stubs on its first call.
"""
from __future__ import annotations

import importlib
import threading
import types

import grpc


class module:
    """Stand-in for a module, imported on the first attribute read.

    `pb = stubs.module("appliance._proto.containerd.api.services.leases.v1.leases_pb2")`.
    Module-level code must not read attributes from it, or the import happens at
    start-up again. (A compiled build must list such modules: packaging/nuitka.spec.)
    """

    def __init__(self, name: str):
        self.__name = name

    def __getattr__(self, attr):
        loaded = importlib.import_module(self.__name)
        self.__dict__.update(vars(loaded))  # later reads are plain attribute lookups
        return getattr(loaded, attr)

    def __repr__(self):
        return f"<stubs.module {self.__name}>"


class GrpcServices(grpc.GenericRpcHandler):
    """The daemon's gRPC services, by full name; one generic handler on the server.

    A service's method handlers are built on its first call (or by `handlers()`),
    from its generated `add_<Service>Servicer_to_server`.
    """

    def __init__(self):
        self._servicers: dict[str, tuple[module, object]] = {}
        self._handlers: dict[str, dict[str, grpc.RpcMethodHandler]] = {}
        self._lock = threading.Lock()

    def add(self, service: str, grpc_stubs: module, servicer) -> None:
        """service: full name ("containerd.services.leases.v1.Leases"); grpc_stubs: its
        `_pb2_grpc` module; servicer: the adapter with the service's methods."""
        if service in self._servicers:
            raise ValueError(f"duplicate gRPC service {service}")
        self._servicers[service] = (grpc_stubs, servicer)

    def names(self) -> list[str]:
        return list(self._servicers)

    def handlers(self, service: str) -> dict[str, grpc.RpcMethodHandler]:
        """The service's method handlers by method name ({} for an unknown service)."""
        found = self._handlers.get(service)
        if found is None:
            if service not in self._servicers:
                return {}  # not cached: a client can send any name
            with self._lock:
                found = self._handlers.get(service)
                if found is None:
                    found = self._handlers[service] = self._load(service)
        return found

    def service(self, handler_call_details):
        service, _, method = handler_call_details.method[1:].partition("/")
        return self.handlers(service).get(method)

    def _load(self, service: str) -> dict[str, grpc.RpcMethodHandler]:
        grpc_stubs, servicer = self._servicers[service]
        short = service.rpartition(".")[2]
        # the generated base class answers UNIMPLEMENTED for methods an adapter lacks
        base = getattr(grpc_stubs, f"{short}Servicer")()
        methods = types.SimpleNamespace(**{
            name: getattr(servicer, name, getattr(base, name))
            for name in dir(base) if not name.startswith("_")})
        collected = _Collector()
        getattr(grpc_stubs, f"add_{short}Servicer_to_server")(methods, collected)
        return collected.handlers


class _Collector:
    """Takes the handlers a generated `add_…_to_server` registers."""

    def __init__(self):
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, generic_handlers):
        pass  # the same handlers come again through add_registered_method_handlers

    def add_registered_method_handlers(self, service, handlers):
        self.handlers.update(handlers)
