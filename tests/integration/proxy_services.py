"""External services for proxy_plugins tests, on their own unix socket: our native
snapshotter (as NAME) and our content store, each with its own sqlite metadata, served
with containerd's Snapshots and Content APIs.

    python proxy_services.py ROOT SOCKET NAME
"""
import asyncio
import os
import signal
import sys

import grpc

from appliance.core.content.store import LocalStore
from appliance.core.events import Exchange
from appliance.core.metadata.content import ContentStore
from appliance.core.metadata.db import DB
from appliance.core.metadata.namespaces import NamespaceStore
from appliance.core.snapshots.backends import NativeBackend
from appliance.core.snapshots.store import Snapshotter
from appliance.plugins.content import ContentAdapter, ContentService
from appliance.plugins.snapshots import SnapshotsAdapter, SnapshotsService
from appliance.stubs import GrpcServices


async def main(root: str, socket_path: str, name: str) -> None:
    os.makedirs(root, exist_ok=True)
    db = DB(os.path.join(root, "meta.db"))
    exchange, namespaces = Exchange(), NamespaceStore(db)
    native = Snapshotter(db, NativeBackend(os.path.join(root, "native")))
    content = ContentStore(db, LocalStore(os.path.join(root, "content")))
    services = GrpcServices()
    SnapshotsAdapter(SnapshotsService({name: native}, exchange, namespaces)).register(services)
    ContentAdapter(ContentService(content, exchange, namespaces)).register(services)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((services,))
    server.add_insecure_port("unix:" + socket_path)
    await server.start()
    print("serving", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)
    db.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
