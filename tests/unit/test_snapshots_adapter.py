"""The snapshots gRPC adapter: overlayfs' Prepare and Remove (a few mkdirs, a rename) run on
the event loop's thread; a snapshotter that copies (native) keeps its disk work in a thread."""
import asyncio
import threading

import pytest

from appliance.core.events import Exchange
from appliance.core.metadata.db import DB
from appliance.core.metadata.namespaces import NamespaceStore
from appliance.core.snapshots.backends import NativeBackend, OverlayBackend
from appliance.core.snapshots.store import Snapshotter
from appliance.plugins.snapshots import SnapshotsAdapter, SnapshotsService, pb


class Context:   # what the adapter reads of a gRPC call: its metadata
    def invocation_metadata(self):
        return [("containerd-namespace", "default")]


@pytest.mark.parametrize("name, backend, on_loop", [
    ("overlayfs", OverlayBackend, True), ("native", NativeBackend, False)])
def test_where_prepare_and_remove_run(tmp_path, name, backend, on_loop):
    db = DB(str(tmp_path / "meta.db"))
    threads = []
    sn = Snapshotter(db, backend(str(tmp_path / name)),
                     changed=lambda dirty: threads.append(threading.current_thread()))
    adapter = SnapshotsAdapter(SnapshotsService({name: sn}, Exchange(), NamespaceStore(db)))

    async def main():
        resp = await adapter.Prepare(pb.PrepareSnapshotRequest(snapshotter=name, key="k"),
                                     Context())
        assert resp.mounts
        await adapter.Remove(pb.RemoveSnapshotRequest(snapshotter=name, key="k"), Context())
        return threading.current_thread()

    try:
        loop_thread = asyncio.run(main())
        assert threads and all((t is loop_thread) == on_loop for t in threads)
    finally:
        sn.backend.trash.settle()
        db.close()
