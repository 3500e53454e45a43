"""Start-up footprint: generated stubs load on first use; OpenSSL and grpcio stay out of an
idle daemon."""
import asyncio
import socket
import subprocess
import sys

import grpc
from google.protobuf import empty_pb2

from appliance import stubs
from appliance.grpcserver import Server
from appliance.plugins.version import VersionAdapter
from appliance.stubs import GrpcServices

LEASES = "containerd.services.leases.v1.Leases"


def _python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                          text=True, timeout=60).stdout


def test_boot_imports_load_no_generated_stubs_no_openssl_and_no_grpcio():
    out = _python(
        "import sys\n"
        "from appliance import cli\n"
        "from appliance.process import settings\n"
        "with settings.asyncio_without_ssl():\n"
        "    from appliance import builtins, config, daemon\n"
        "stubs = [m for m in sys.modules if m.startswith('appliance._proto') and 'pb2' in m]\n"
        "print(len(stubs), 'libcrypto' in open('/proc/self/maps').read(), 'grpc' in sys.modules)\n"
        "import ssl, hashlib\n"  # both still importable afterwards
        "print(ssl.OPENSSL_VERSION_NUMBER > 0, hashlib.sha256(b'').hexdigest()[:8])\n")
    assert out.split() == ["0", "False", "False", "True", "e3b0c442"]


class _OnlyList:
    async def List(self, request, context):
        from appliance._proto.containerd.api.services.leases.v1 import leases_pb2
        return leases_pb2.ListResponse()


def test_grpc_services_load_on_first_call_and_answer_unimplemented_for_the_rest():
    async def scenario(tmp_sock):
        services = GrpcServices()
        VersionAdapter().register(services)
        services.add(LEASES, stubs.module(
            "appliance._proto.containerd.api.services.leases.v1.leases_pb2"), _OnlyList())
        server = Server()
        server.add_generic_rpc_handlers((services,))
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(tmp_sock)
        listener.listen(8)
        await server.serve_socket(listener)
        try:
            async with grpc.aio.insecure_channel("unix:" + tmp_sock) as channel:
                version = channel.unary_unary(
                    "/containerd.services.version.v1.Version/Version",
                    request_serializer=empty_pb2.Empty.SerializeToString,
                    response_deserializer=lambda b: b)
                assert b"ctrappliance" in await version(empty_pb2.Empty(), timeout=10)
                codes = []
                for method in (f"/{LEASES}/List", f"/{LEASES}/Create",
                               "/containerd.services.version.v1.Version/Nope",
                               "/containerd.services.nothing.v1.Nothing/Get"):
                    call = channel.unary_unary(method, request_serializer=bytes,
                                               response_deserializer=bytes)
                    try:
                        await call(b"", timeout=10,
                                   metadata=(("containerd-namespace", "default"),))
                        codes.append(grpc.StatusCode.OK)
                    except grpc.aio.AioRpcError as exc:
                        codes.append(exc.code())
                # Create: the adapter lacks it, so it answers UNIMPLEMENTED
                assert codes == [grpc.StatusCode.OK] + [grpc.StatusCode.UNIMPLEMENTED] * 3
        finally:
            await server.stop(0)
        assert set(services.handlers(LEASES)) == {
            "Create", "Delete", "List", "AddResource", "DeleteResource", "ListResources"}
        assert services.handlers("containerd.services.nothing.v1.Nothing") == {}
        # handlers are remembered by path, names a client made up are not
        assert set(services._by_path) == {"/containerd.services.version.v1.Version/Version",
                                          f"/{LEASES}/List", f"/{LEASES}/Create"}

    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(scenario(tmp + "/grpc.sock"))
