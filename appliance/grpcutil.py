"""Helpers shared by the thin gRPC adapters: namespaces from metadata, error mapping."""
from __future__ import annotations

import functools
import inspect
import logging
from typing import Any, NamedTuple

from . import identifiers
from .errdefs import ApplianceError, FailedPrecondition, InvalidArgument, StatusCode, status_of

log = logging.getLogger("appliance.grpc")
NAMESPACE_KEY = "containerd-namespace"
LEASE_KEY = "containerd-lease"


class Adapter:
    """A gRPC service over one local service: NAME is the service's full gRPC name, PB the
    stubs module that defines it (a stubs.module); the subclass's methods are its RPCs."""
    NAME: str
    PB: Any

    def __init__(self, service):
        self.service = service

    def register(self, services) -> None:
        services.add(self.NAME, self.PB, self)


class NamespaceRule(NamedTuple):
    """A method that needs a valid namespace, and how containerd 1.6 words its absence."""
    prefix: str = ""   # containerd's wrapping of the error, formatted with the request
    code: StatusCode | None = None   # UNKNOWN where containerd leaves the error unconverted


REQUIRED = NamespaceRule()
# By service, or "service/Method" where a method differs from its service (None: checked
# by the handler, after the checks containerd makes first). Services not listed
# (Version, Introspection, Namespaces, Health) and Events.Subscribe/Forward take none.
NAMESPACED = {
    "containerd.services.containers.v1.Containers": REQUIRED,
    "containerd.services.content.v1.Content": REQUIRED,
    "containerd.services.content.v1.Content/Status":
        NamespaceRule('could not get status for ref "{request.ref}": '),
    "containerd.services.diff.v1.Diff/Diff": None,   # the media type's first
    "containerd.services.diff.v1.Diff/Apply":
        NamespaceRule("failed to get reader from content store: "),
    "containerd.services.events.v1.Events/Publish": NamespaceRule("failed publishing event: "),
    "containerd.services.images.v1.Images": REQUIRED,
    "containerd.services.leases.v1.Leases": REQUIRED,
    "containerd.services.snapshots.v1.Snapshots": REQUIRED,
    "containerd.services.snapshots.v1.Snapshots/List": NamespaceRule(code=StatusCode.UNKNOWN),
    "containerd.services.snapshots.v1.Snapshots/Cleanup": None,  # the snapshotter's first
    "containerd.services.tasks.v1.Tasks": REQUIRED,
    "containerd.services.tasks.v1.Tasks/Metrics": NamespaceRule(code=StatusCode.UNKNOWN),
}


def namespace_rule(service: str, method: str) -> NamespaceRule | None:
    key = f"{service}/{method}"
    return NAMESPACED[key] if key in NAMESPACED else NAMESPACED.get(service)


_VALID_NAMESPACES: set[str] = set()   # names that passed validation (a few per node)


def namespace_error(context) -> ApplianceError | None:
    """Why the request's namespace is missing or invalid (containerd's words), or None."""
    for key, value in context.invocation_metadata() or ():
        if key == NAMESPACE_KEY and value:
            if value in _VALID_NAMESPACES:
                return None
            try:
                identifiers.validate(value)
            except InvalidArgument as exc:
                return InvalidArgument(f"namespace validation: {exc.message}")
            if len(_VALID_NAMESPACES) >= 1024:
                _VALID_NAMESPACES.clear()
            _VALID_NAMESPACES.add(value)
            return None
    return FailedPrecondition("namespace is required: failed precondition")


def namespace_of(context, default: str | None = None) -> str:
    """The namespace a request runs in; containerd requires a valid one for namespaced
    RPCs. With a `default` (Namespaces' events) a missing one is not an error."""
    for key, value in context.invocation_metadata() or ():
        if key == NAMESPACE_KEY and value:
            if default is None and value not in _VALID_NAMESPACES:
                error = namespace_error(context)
                if error is not None:
                    raise error
            return value
    if default is not None:
        return default
    raise FailedPrecondition("namespace is required: failed precondition")


_SECONDS_MIN, _SECONDS_MAX = -62135596800, 253402300799   # a Timestamp's valid range


def set_timestamp(ts, ns: int) -> None:
    """`ts.FromNanoseconds(ns)` without its Python-level checks for an in-range value."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    if _SECONDS_MIN <= seconds <= _SECONDS_MAX:
        ts.seconds = seconds
        ts.nanos = nanos
    else:
        ts.FromNanoseconds(ns)   # its error


def lease_of(context) -> str | None:
    """The lease a request runs under (client.WithLease), if any."""
    for key, value in context.invocation_metadata() or ():
        if key == LEASE_KEY and value:
            return value
    return None


def rpc(fn):
    """Wrap a servicer method so service errors become gRPC status codes.

    Works for unary methods (sync or async) and for async-generator streams. The method's
    own function stays reachable as `rpc_function` (stubs puts a namespace check and the
    error mapping in one frame with `rpc_handler`)."""
    wrapper = functools.wraps(fn)(rpc_handler(fn))
    wrapper.rpc_function = fn
    return wrapper


def rpc_handler(fn, refusal=None):
    """`fn(self, request, context)` as a handler of the same signature and kind (async
    generator or coroutine) that maps service errors to status codes; `refusal(request,
    context)`, when given, is asked first: a (code, message) it returns aborts the call."""
    if inspect.isasyncgenfunction(fn):
        async def stream(self, request, context):
            if refusal is not None and (refused := refusal(request, context)) is not None:
                await context.abort(*refused)
            try:
                async for item in fn(self, request, context):
                    yield item
            except Exception as exc:
                await _abort(context, exc)
        return stream

    if inspect.iscoroutinefunction(fn):
        async def unary(self, request, context):
            if refusal is not None and (refused := refusal(request, context)) is not None:
                await context.abort(*refused)
            try:
                return await fn(self, request, context)
            except Exception as exc:
                await _abort(context, exc)
        return unary

    async def unary_sync(self, request, context):
        if refusal is not None and (refused := refusal(request, context)) is not None:
            await context.abort(*refused)
        try:
            return fn(self, request, context)
        except Exception as exc:
            await _abort(context, exc)
    return unary_sync


async def _abort(context, exc):
    code, message = status_of(exc)
    if code == StatusCode.RESOURCE_EXHAUSTED:
        log.warning("%s", message)   # a full disk: one line, no traceback
    elif not isinstance(exc, (ApplianceError, TimeoutError)):
        log.exception("unexpected error in RPC")
    await context.abort(code, message)
