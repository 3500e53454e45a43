"""io.containerd.grpc.v1.healthcheck: grpc.health.v1, SERVING once the daemon is up."""
from .. import stubs
from ..plugin import GRPC, Registration

health = stubs.module("grpc_health.v1.health")
health_pb2 = stubs.module("grpc_health.v1.health_pb2")
health_pb2_grpc = stubs.module("grpc_health.v1.health_pb2_grpc")


class HealthAdapter:
    """grpc_health's servicer, made on the first call (its stubs are not loaded before)."""

    def __init__(self):
        self._servicer = None
        self._serving = False

    def register(self, services):
        services.add("grpc.health.v1.Health", health_pb2_grpc, self)

    async def serving(self):
        self._serving = True
        if self._servicer is not None:
            await self._servicer.set("", health_pb2.HealthCheckResponse.SERVING)

    async def _health(self):
        if self._servicer is None:
            self._servicer = health.aio.HealthServicer()
            if self._serving:
                await self._servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        return self._servicer

    async def Check(self, request, context):
        return await (await self._health()).Check(request, context)

    async def Watch(self, request, context):
        return await (await self._health()).Watch(request, context)


REGISTRATIONS = [Registration(GRPC, "healthcheck", lambda ic: HealthAdapter())]
