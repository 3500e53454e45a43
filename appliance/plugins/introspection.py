"""Introspection: which plugins loaded (and why not), and the server's identity."""
from __future__ import annotations

import contextlib
import logging
import os

from google.rpc import status_pb2

from .. import filters, stubs
from ..grpcutil import Adapter, rpc
from ..plugin import GRPC, SERVICE, InitContext, Plugin, PluginSet, Registration, SkipPlugin

pb = stubs.module("appliance._proto.containerd.api.services.introspection.v1.introspection_pb2")
platform_pb2 = stubs.module("appliance._proto.containerd.api.types.platform_pb2")

log = logging.getLogger("appliance.introspection")
UNKNOWN = 2  # google.rpc.Code.UNKNOWN, what containerd reports for init errors


class IntrospectionService:
    def __init__(self, plugins: PluginSet, root: str):
        self.plugins = plugins
        self.root = root
        self._uuid = None
        self._saved = False

    def list(self, filter_strings) -> list[Plugin]:
        flt = filters.parse(*filter_strings)
        return [p for p in self.plugins.results if flt.match(_adaptor(p))]

    def server_uuid(self) -> str:
        """A uuid made at first use and kept in root, so it survives restarts."""
        path = os.path.join(self.root, "uuid")
        if self._uuid is None:
            import uuid  # imported lazily: start-up cost (it pulls in platform)
            try:
                with open(path) as f:
                    self._uuid = str(uuid.UUID(f.read().strip()))
                    self._saved = True
            except (FileNotFoundError, ValueError):
                self._uuid = str(uuid.uuid4())
        if not self._saved:
            tmp = path + ".tmp"
            try:
                os.makedirs(self.root, mode=0o711, exist_ok=True)
                with open(tmp, "w") as f:
                    f.write(self._uuid)
                os.replace(tmp, path)
                self._saved = True
            except OSError as exc:   # a full disk: answer, and save it at a later call
                log.warning("server uuid not saved in %s yet: %s", path, exc)
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        return self._uuid


def _adaptor(p: Plugin):
    reg = p.registration

    def field(path):
        if path == ["type"]:
            return reg.type, True
        if path == ["id"]:
            return reg.id, True
        if path and path[0] == "capabilities":
            return ",".join(p.capabilities), bool(p.capabilities)
        if path and path[0] == "platforms":
            return ",".join(p.platforms), bool(p.platforms)
        return "", False
    return field


def plugin_to_pb(p: Plugin) -> pb.Plugin:
    reg = p.registration
    out = pb.Plugin(type=reg.type, id=reg.id, requires=list(reg.requires),
                    exports=p.exports, capabilities=p.capabilities)
    for platform in p.platforms:
        os_name, arch, *variant = platform.split("/")
        out.platforms.append(platform_pb2.Platform(os=os_name, architecture=arch,
                                                   variant="".join(variant)))
    if p.error is not None:
        message = str(p.error)
        if isinstance(p.error, SkipPlugin):
            message += ": skip plugin"
        out.init_err.CopyFrom(status_pb2.Status(code=UNKNOWN, message=message))
    return out


class IntrospectionAdapter(Adapter):
    NAME, PB = "containerd.services.introspection.v1.Introspection", pb
    service: IntrospectionService

    @rpc
    def Plugins(self, request, context):
        return pb.PluginsResponse(plugins=[plugin_to_pb(p)
                                           for p in self.service.list(request.filters)])

    @rpc
    def Server(self, request, context):
        return pb.ServerResponse(uuid=self.service.server_uuid(), pid=os.getpid(),
                                 pidns=_pidns())


def _pidns() -> int:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def _service(ic: InitContext) -> IntrospectionService:
    return IntrospectionService(ic.plugins, str(ic.root))


REGISTRATIONS = [
    Registration(SERVICE, "introspection-service", _service),
    Registration(GRPC, "introspection", lambda ic: IntrospectionAdapter(
        ic.get_by_id(SERVICE, "introspection-service")), requires=(SERVICE,)),
]
