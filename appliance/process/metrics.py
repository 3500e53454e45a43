"""Prometheus metrics: gRPC calls per method and code, and the daemon's own.

prometheus_client is imported only when `metrics.address` is set (idle memory and
boot time matter). Until then every metric below is a cheap no-op, so any module
may declare and update metrics unconditionally:

    from appliance.process import metrics
    INGESTED = metrics.counter("ctrappliance_content_ingested_bytes_total", "…")
    INGESTED.inc(len(chunk))
    with metrics.UNPACK_DURATION.time(): ...
    metrics.gauge_callback("ctrappliance_snapshots", "…", ("snapshotter",),
                           lambda: {("overlayfs",): 12})   # at a plugin's init

Callbacks run at scrape time in a worker thread: they must be thread-safe and quick.
The gRPC names and labels are go-grpc-prometheus's, as containerd exposes them.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Callable, Iterable

from ..errdefs import StatusCode

log = logging.getLogger("appliance.metrics")

GO_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)  # prometheus.DefBuckets

_lock = threading.Lock()
_declared: list["Metric"] = []
_callbacks: list[tuple[dict[str, str], tuple[str, ...], Callable]] = []
_registry = None  # a prometheus_client CollectorRegistry once enabled


class _Null:
    """What a metric's labels() returns while metrics are off."""

    def inc(self, amount=1):
        pass

    def observe(self, value):
        pass

    def set(self, value):
        pass

    def labels(self, *args, **kwargs):
        return self


_NULL = _Null()


class Metric:
    """A declared metric; backed by a prometheus_client object only once enabled."""

    def __init__(self, kind: str, name: str, documentation: str,
                 labelnames: Iterable[str] = (), buckets=None):
        self.kind, self.name, self.documentation = kind, name, documentation
        self.labelnames, self.buckets = tuple(labelnames), buckets
        self._impl = None
        with _lock:
            _declared.append(self)
            if _registry is not None:
                self._create(_registry)

    def _create(self, registry) -> None:
        import prometheus_client as pc
        cls = {"counter": pc.Counter, "gauge": pc.Gauge, "histogram": pc.Histogram}[self.kind]
        kwargs = {"buckets": self.buckets or GO_BUCKETS} if self.kind == "histogram" else {}
        name = self.name
        if self.kind == "counter" and name.endswith("_total"):
            name = name[:-len("_total")]  # prometheus_client appends it again
        self._impl = cls(name, self.documentation, self.labelnames, registry=registry, **kwargs)

    @property
    def enabled(self) -> bool:
        return self._impl is not None

    def labels(self, *values, **kwargs):
        impl = self._impl
        return _NULL if impl is None else impl.labels(*values, **kwargs)

    def inc(self, amount: float = 1) -> None:
        if self._impl is not None:
            self._impl.inc(amount)

    def set(self, value: float) -> None:
        if self._impl is not None:
            self._impl.set(value)

    def observe(self, value: float) -> None:
        if self._impl is not None:
            self._impl.observe(value)

    @contextlib.contextmanager
    def time(self, *label_values):
        """Observe the duration of the block (a histogram), optionally with labels."""
        start = time.perf_counter()
        try:
            yield
        finally:
            if self._impl is not None:
                target = self._impl.labels(*label_values) if label_values else self._impl
                target.observe(time.perf_counter() - start)


def counter(name, documentation, labelnames=()) -> Metric:
    return Metric("counter", name, documentation, labelnames)


def gauge(name, documentation, labelnames=()) -> Metric:
    return Metric("gauge", name, documentation, labelnames)


def histogram(name, documentation, labelnames=(), buckets=None) -> Metric:
    return Metric("histogram", name, documentation, labelnames, buckets)


def gauge_callback(name: str, documentation: str, labelnames: Iterable[str],
                   fn: Callable[[], dict]) -> None:
    """A gauge computed at scrape time: fn() → {label-values tuple: value}."""
    gauges_callback({name: documentation}, labelnames, lambda: {name: fn()})


def gauges_callback(docs: dict[str, str], labelnames: Iterable[str],
                    fn: Callable[[], dict]) -> None:
    """Several gauges from one scrape-time call: fn() → {name: {label values: value}}."""
    with _lock:
        _callbacks.append((docs, tuple(labelnames), fn))


# --- the daemon's own metrics (other modules increment these) ------------------

GC_RUNS = counter("ctrappliance_gc_runs_total", "Garbage collections run")
GC_DURATION = histogram("ctrappliance_gc_duration_seconds", "Time spent in a garbage collection")
CONTENT_INGESTED_BYTES = counter("ctrappliance_content_ingested_bytes_total",
                                 "Bytes committed into the content store")
UNPACK_BYTES = counter("ctrappliance_unpack_bytes_total",
                       "Uncompressed layer bytes applied to snapshots")
UNPACK_DURATION = histogram("ctrappliance_unpack_duration_seconds",
                            "Time to apply one layer to a snapshot")

# --- gRPC, as go-grpc-prometheus names it -----------------------------------------

_GRPC_LABELS = ("grpc_type", "grpc_service", "grpc_method")
GRPC_STARTED = counter("grpc_server_started_total",
                       "Total number of RPCs started on the server.", _GRPC_LABELS)
GRPC_HANDLED = counter("grpc_server_handled_total",
                       "Total number of RPCs completed on the server, regardless of success "
                       "or failure.", _GRPC_LABELS + ("grpc_code",))
GRPC_MSG_RECEIVED = counter("grpc_server_msg_received_total",
                            "Total number of RPC stream messages received on the server.",
                            _GRPC_LABELS)
GRPC_MSG_SENT = counter("grpc_server_msg_sent_total",
                        "Total number of gRPC stream messages sent by the server.", _GRPC_LABELS)
_grpc_histogram: Metric | None = None

# StatusCode → Go's codes.Code.String()
_GO_CODE_NAMES = {"CANCELLED": "Canceled", "OK": "OK"}


def go_code_name(code) -> str:
    name = code.name
    return _GO_CODE_NAMES.get(name) or "".join(p.capitalize() for p in name.split("_"))


def enable(grpc_histogram: bool = False):
    """Import prometheus_client and back every declared metric; returns the registry."""
    global _registry, _grpc_histogram
    import prometheus_client as pc
    from prometheus_client.core import GaugeMetricFamily
    with _lock:
        if _registry is not None:
            return _registry
        pc.disable_created_metrics()  # Go's client has no *_created series
        registry = pc.CollectorRegistry()
        for collector in (pc.ProcessCollector, pc.PlatformCollector, pc.GCCollector):
            collector(registry=registry)

        class Callbacks:
            def collect(self):
                for docs, labelnames, fn in list(_callbacks):
                    try:
                        values = fn() or {}
                    except Exception as exc:  # one broken callback must not fail the scrape
                        log.warning("metrics callback for %s failed: %s", ", ".join(docs), exc)
                        continue
                    for name, doc in docs.items():
                        family = GaugeMetricFamily(name, doc, labels=labelnames)
                        for label_values, value in values.get(name, {}).items():
                            family.add_metric([str(v) for v in label_values], value)
                        yield family

        registry.register(Callbacks())
        for metric in _declared:
            metric._create(registry)
        _registry = registry
    if grpc_histogram:
        _grpc_histogram = histogram("grpc_server_handling_seconds",
                                    "Histogram of response latency (seconds) of gRPC that had "
                                    "been application-level handled by the server.",
                                    _GRPC_LABELS)
    return registry


def scrape() -> bytes:
    """The Prometheus text exposition of everything (empty while disabled)."""
    if _registry is None:
        return b""
    import prometheus_client as pc
    return pc.generate_latest(_registry)


# --- the gRPC server interceptor --------------------------------------------------

def _grpc_type(handler) -> str:
    if handler.request_streaming and handler.response_streaming:
        return "bidi_stream"
    if handler.request_streaming:
        return "client_stream"
    return "server_stream" if handler.response_streaming else "unary"


def record_methods(services) -> None:
    """Give every method of `services` (a stubs.GrpcServices) zero-valued series from the
    start, as go-grpc-prometheus's Register does (rate() then works from the first call).
    This loads every service's stubs at start-up: the price of metrics."""
    for service in services.names():
        for name, handler in services.handlers(service).items():
            labels = (_grpc_type(handler), service, name)
            for metric in (GRPC_STARTED, GRPC_MSG_RECEIVED, GRPC_MSG_SENT, _grpc_histogram):
                if metric is not None:
                    metric.labels(*labels)
            for code in StatusCode:
                GRPC_HANDLED.labels(*labels, go_code_name(code))


def grpc_interceptor():
    """A gRPC server interceptor (appliance.grpcserver) counting calls per method and code."""

    def split(method: str) -> tuple[str, str]:
        service, _, name = method.lstrip("/").rpartition("/")
        return service, name

    def code_of(context, exc) -> str:
        code = context.code()
        if code is None or (exc is not None and code == StatusCode.OK):
            if exc is None:
                code = StatusCode.OK
            elif isinstance(exc, asyncio_cancelled()):
                code = StatusCode.CANCELLED
            else:
                code = StatusCode.UNKNOWN
        return go_code_name(code)

    class Interceptor:
        async def intercept_service(self, continuation, details):
            handler = await continuation(details)
            if handler is None:
                return None
            service, name = split(details.method)
            kind = _grpc_type(handler)
            labels = (kind, service, name)

            def finished(context, started, exc):
                GRPC_HANDLED.labels(*labels, code_of(context, exc)).inc()
                if _grpc_histogram is not None:
                    _grpc_histogram.labels(*labels).observe(time.perf_counter() - started)

            def counted(requests):
                async def gen():
                    async for item in requests:
                        GRPC_MSG_RECEIVED.labels(*labels).inc()
                        yield item
                return gen() if hasattr(requests, "__aiter__") else requests

            def begin(request):
                """Count the call and its request message(s); returns the start time too."""
                GRPC_STARTED.labels(*labels).inc()
                if handler.request_streaming:
                    request = counted(request)
                else:
                    GRPC_MSG_RECEIVED.labels(*labels).inc()
                return request, time.perf_counter()

            if not handler.response_streaming:
                field = "stream_unary" if handler.request_streaming else "unary_unary"
                inner = getattr(handler, field)

                async def unary(request, context):
                    request, started = begin(request)
                    exc = None
                    try:
                        response = inner(request, context)
                        if hasattr(response, "__await__"):
                            response = await response
                        GRPC_MSG_SENT.labels(*labels).inc()
                        return response
                    except BaseException as e:
                        exc = e
                        raise
                    finally:
                        finished(context, started, exc)
                return handler._replace(**{field: unary})

            field = "stream_stream" if handler.request_streaming else "unary_stream"
            inner = getattr(handler, field)

            async def streaming(request, context):
                request, started = begin(request)
                exc = None
                try:
                    result = inner(request, context)
                    if hasattr(result, "__aiter__"):
                        async for item in result:
                            GRPC_MSG_SENT.labels(*labels).inc()
                            yield item
                    elif hasattr(result, "__await__"):  # writes with context.write()
                        await result
                except BaseException as e:
                    exc = e
                    raise
                finally:
                    finished(context, started, exc)
            return handler._replace(**{field: streaming})

    return Interceptor()


def asyncio_cancelled():
    import asyncio
    return asyncio.CancelledError


# --- wiring ----------------------------------------------------------------------

def watch_plugins(plugin_set) -> None:
    """The plugin counts, a scrape-time gauge over the loaded plugins. (Each plugin
    declares its own gauges at its init: snapshots, tasks, per-task cgroup figures.)"""
    def counts():
        out: dict[tuple[str, str], int] = {}
        for p in list(plugin_set.results):
            key = (p.registration.type, p.status)
            out[key] = out.get(key, 0) + 1
        return out
    gauge_callback("ctrappliance_plugins", "Plugins by type and load status (ok, skip, error)",
                   ("type", "status"), counts)


async def handle(request):
    """The HTTP handler for metrics.address: Prometheus text at /v1/metrics."""
    import asyncio
    from .listeners import Response
    if request.path != "/v1/metrics":
        return Response(404, b"404 page not found\n")
    body = await asyncio.to_thread(scrape)
    return Response(body=body, content_type="text/plain; version=0.0.4; charset=utf-8")
