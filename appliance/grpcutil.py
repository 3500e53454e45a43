"""Helpers shared by the thin gRPC adapters: namespaces from metadata, error mapping."""
from __future__ import annotations

import functools
import inspect
import logging

from .errdefs import ApplianceError, FailedPrecondition, status_of
from .grpcserver.status import StatusCode

log = logging.getLogger("appliance.grpc")
NAMESPACE_KEY = "containerd-namespace"
LEASE_KEY = "containerd-lease"


def namespace_of(context, default: str | None = None) -> str:
    """The namespace a request runs in; containerd requires one for namespaced RPCs."""
    for key, value in context.invocation_metadata() or ():
        if key == NAMESPACE_KEY and value:
            return value
    if default is not None:
        return default
    raise FailedPrecondition("namespace is required: failed precondition")


def lease_of(context) -> str | None:
    """The lease a request runs under (client.WithLease), if any."""
    for key, value in context.invocation_metadata() or ():
        if key == LEASE_KEY and value:
            return value
    return None


def rpc(fn):
    """Wrap a servicer method so service errors become gRPC status codes.

    Works for unary methods (sync or async) and for async-generator streams.
    """
    if inspect.isasyncgenfunction(fn):
        @functools.wraps(fn)
        async def stream(self, request, context):
            try:
                async for item in fn(self, request, context):
                    yield item
            except Exception as exc:
                await _abort(context, exc)
        return stream

    @functools.wraps(fn)
    async def unary(self, request, context):
        try:
            result = fn(self, request, context)
            if inspect.isawaitable(result):
                result = await result
            return result
        except Exception as exc:
            await _abort(context, exc)
    return unary


async def _abort(context, exc):
    code, message = status_of(exc)
    if code == StatusCode.RESOURCE_EXHAUSTED:
        log.warning("%s", message)   # a full disk: one line, no traceback
    elif not isinstance(exc, (ApplianceError, TimeoutError)):
        log.exception("unexpected error in RPC")
    await context.abort(code, message)
