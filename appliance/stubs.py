"""Generated stubs, imported when first used rather than at start-up.

Importing a generated `_pb2` module adds its descriptors to protobuf's pool: for
every service of the daemon that is ≈ 3 MiB of idle memory and tens of
milliseconds before the socket accepts, mostly for services nobody calls. So
plugin modules name their stubs with `stubs.module(...)`, and gRPC adapters are
listed in a `GrpcServices` table that imports a service's stubs on its first call.
"""
from __future__ import annotations

import functools
import importlib
import inspect

from .errdefs import StatusCode, status_of
from .grpcserver import MethodHandler
from .grpcutil import NamespaceRule, namespace_error, namespace_rule, rpc_handler


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


class GrpcServices:
    """The daemon's gRPC services, by full name; one generic handler on the server.

    A service's method handlers are built on its first call (or by `handlers()`), from
    the service's descriptor in its generated `_pb2` module.
    """
    stable_handlers = True   # service() depends on the method's path only: the server
                             # may remember its answers


    def __init__(self):
        self._servicers: dict[str, tuple[module, object]] = {}
        self._handlers: dict[str, dict[str, MethodHandler]] = {}
        self._by_path: dict[str, MethodHandler] = {}   # "/service/Method" → its handler

    def add(self, service: str, pb2: module, servicer) -> None:
        """service: full name ("containerd.services.leases.v1.Leases"); pb2: the
        `_pb2` module that defines it; servicer: the adapter with its methods."""
        if service in self._servicers:
            raise ValueError(f"duplicate gRPC service {service}")
        self._servicers[service] = (pb2, servicer)

    def names(self) -> list[str]:
        return list(self._servicers)

    def handlers(self, service: str) -> dict[str, MethodHandler]:
        """The service's method handlers by method name ({} for an unknown service)."""
        found = self._handlers.get(service)
        if found is None:
            if service not in self._servicers:
                return {}  # not cached: a client can send any name
            found = self._handlers[service] = self._load(service)
        return found

    def service(self, handler_call_details):
        path = handler_call_details.method
        found = self._by_path.get(path)
        if found is None:   # (only methods that exist are remembered: a client sends any)
            service, _, method = path[1:].partition("/")
            found = self.handlers(service).get(method)
            if found is not None:
                self._by_path[path] = found
        return found

    def _load(self, service: str) -> dict[str, MethodHandler]:
        from google.protobuf import message_factory
        pb2, servicer = self._servicers[service]
        descriptor = pb2.DESCRIPTOR.services_by_name[service.rpartition(".")[2]]
        handlers = {}
        for method in descriptor.methods:
            request = message_factory.GetMessageClass(method.input_type)
            response = message_factory.GetMessageClass(method.output_type)
            behaviour = getattr(servicer, method.name, None)
            rule = namespace_rule(service, method.name)
            if behaviour is None:
                behaviour = _unimplemented(method.name)
            elif rule is not None:
                behaviour = _namespaced(behaviour, rule)
            kind = ("stream" if method.client_streaming else "unary") + "_" + \
                ("stream" if method.server_streaming else "unary")
            handlers[method.name] = MethodHandler(
                method.client_streaming, method.server_streaming, request.FromString,
                response.SerializeToString, **{kind: behaviour})
        return handlers


def _namespaced(behaviour, rule: NamespaceRule):
    """`behaviour` behind containerd's namespace check (grpcutil.NAMESPACED), of the
    same kind (async generator or coroutine): grpc.aio serves these handlers too."""
    def refusal(request, context):
        error = namespace_error(context)
        if error is None:
            return None
        code, message = status_of(error)
        return rule.code or code, rule.prefix.format(request=request) + message

    fn = getattr(behaviour, "rpc_function", None)
    owner = getattr(behaviour, "__self__", None)
    if fn is not None and owner is not None:   # a bound @rpc method: the check and its
        return functools.partial(rpc_handler(fn, refusal), owner)   # error mapping, one frame

    async def check(request, context):
        refused = refusal(request, context)
        if refused is not None:
            await context.abort(*refused)

    if inspect.isasyncgenfunction(behaviour):
        async def checked_stream(request, context):
            await check(request, context)
            async for item in behaviour(request, context):
                yield item
        return checked_stream

    if inspect.iscoroutinefunction(behaviour):
        async def checked(request, context):
            await check(request, context)
            return await behaviour(request, context)
        return checked

    async def checked_sync(request, context):
        await check(request, context)
        result = behaviour(request, context)
        return await result if inspect.isawaitable(result) else result
    return checked_sync


def _unimplemented(name: str):
    async def unimplemented(request, context):
        await context.abort(StatusCode.UNIMPLEMENTED, f"method {name} not implemented")
    return unimplemented
