"""An external snapshotter for proxy_plugins tests: our native snapshotter, with its own
sqlite metadata, served with containerd's Snapshots API on its own unix socket.

    python proxy_snapshotter.py ROOT SOCKET NAME
"""
import asyncio
import os
import signal
import sys

import grpc

from appliance.core.events import Exchange
from appliance.core.metadata.db import DB
from appliance.core.metadata.namespaces import NamespaceStore
from appliance.core.snapshots.backends import NativeBackend
from appliance.core.snapshots.store import Snapshotter
from appliance.plugins.snapshots import SnapshotsAdapter, SnapshotsService


async def main(root: str, socket_path: str, name: str) -> None:
    os.makedirs(root, exist_ok=True)
    db = DB(os.path.join(root, "meta.db"))
    native = Snapshotter(db, NativeBackend(os.path.join(root, "native")))
    service = SnapshotsService({name: native}, Exchange(), NamespaceStore(db))
    server = grpc.aio.server()
    SnapshotsAdapter(service).register(server)
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
