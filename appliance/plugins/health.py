"""io.containerd.grpc.v1.healthcheck: grpc.health.v1, SERVING once the daemon is up."""
import asyncio

from .. import stubs
from ..errdefs import NotFound
from ..errdefs import StatusCode
from ..grpcutil import rpc
from ..plugin import GRPC, Registration

health_pb2 = stubs.module("grpc_health.v1.health_pb2")

DAEMON = ""  # the service name that stands for the whole server


class HealthAdapter:
    """Check and Watch of the server's health ("" is the only service, as in containerd)."""

    def __init__(self):
        self._serving = False
        self._changed = asyncio.Event()

    def register(self, services):
        services.add("grpc.health.v1.Health", health_pb2, self)

    async def serving(self):
        self._serving = True
        self._changed.set()
        self._changed = asyncio.Event()

    def _status(self, service: str):
        if service != DAEMON:
            raise NotFound("unknown service")
        response = health_pb2.HealthCheckResponse
        return response.SERVING if self._serving else response.NOT_SERVING

    @rpc
    async def Check(self, request, context):
        return health_pb2.HealthCheckResponse(status=self._status(request.service))

    @rpc
    async def Watch(self, request, context):
        response = health_pb2.HealthCheckResponse
        while True:
            try:
                status = self._status(request.service)
            except NotFound:
                status = response.SERVICE_UNKNOWN  # Watch reports, never fails (gRPC spec)
            yield response(status=status)
            await self._changed.wait()  # after SERVING: until the client cancels

    async def List(self, request, context):
        """Newer than containerd 1.6's grpc-go, which does not know the method."""
        await context.abort(StatusCode.UNIMPLEMENTED,
                            "unknown method List for service grpc.health.v1.Health")


REGISTRATIONS = [Registration(GRPC, "healthcheck", lambda ic: HealthAdapter())]
