"""io.containerd.grpc.v1.healthcheck: grpc.health.v1, SERVING once the daemon is up."""
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ..plugin import GRPC, Registration


class HealthAdapter:
    def __init__(self):
        self.servicer = health.aio.HealthServicer()

    def register(self, server):
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)

    async def serving(self):
        await self.servicer.set("", health_pb2.HealthCheckResponse.SERVING)


REGISTRATIONS = [Registration(GRPC, "healthcheck", lambda ic: HealthAdapter())]
