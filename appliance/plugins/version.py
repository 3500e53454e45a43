"""io.containerd.grpc.v1.version"""
import functools

from .. import __version__, stubs
from ..plugin import GRPC, Registration

version_pb2 = stubs.module("appliance._proto.containerd.api.services.version.v1.version_pb2")
REVISION = "ctrappliance"


class VersionAdapter:
    def register(self, services):
        services.add("containerd.services.version.v1.Version", version_pb2, self)

    @functools.cached_property
    def _response(self):
        return version_pb2.VersionResponse(version=__version__, revision=REVISION)

    async def Version(self, request, context):
        return self._response


REGISTRATIONS = [Registration(GRPC, "version", lambda ic: VersionAdapter())]
