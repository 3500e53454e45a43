"""io.containerd.grpc.v1.version"""
from .. import __version__
from .._proto.containerd.api.services.version.v1 import version_pb2, version_pb2_grpc
from ..plugin import GRPC, Registration

REVISION = "ctrappliance"


class VersionAdapter(version_pb2_grpc.VersionServicer):
    _response = version_pb2.VersionResponse(version=__version__, revision=REVISION)

    def register(self, server):
        version_pb2_grpc.add_VersionServicer_to_server(self, server)

    async def Version(self, request, context):
        return self._response


REGISTRATIONS = [Registration(GRPC, "version", lambda ic: VersionAdapter())]
