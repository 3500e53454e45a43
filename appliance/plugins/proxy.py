"""`proxy_plugins`: snapshotters (and content stores) served by another process over gRPC.

Each `[proxy_plugins.NAME]` with `type = "snapshot"` becomes the plugin
io.containerd.snapshotter.v1.NAME, a snapshot backend reached with containerd's Snapshots
API on `address`; `type = "content"` becomes io.containerd.content.v1.NAME, a content
store over containerd's Content API (the backends are in core/proxy.py). To use a content
proxy, disable io.containerd.content.v1.content, as with containerd. Other types are
warned about and ignored.
"""
from __future__ import annotations

import logging
import os
import threading

from ..core.proxy import ProxyContentStore, ProxySnapshotBackend
from ..plugin import CONTENT, SNAPSHOT, InitContext, Registration

log = logging.getLogger("appliance.proxy")
_TYPES = {"snapshot": SNAPSHOT, SNAPSHOT: SNAPSHOT, "content": CONTENT, CONTENT: CONTENT}


class _Channels:
    """One gRPC channel per address, shared by every proxy plugin using it."""

    def __init__(self):
        self._lock = threading.Lock()
        self._channels = {}

    def get(self, address: str):
        import grpc
        with self._lock:
            if address not in self._channels:
                target = address if ":" in address and not address.startswith("/") \
                    else "unix:" + address
                self._channels[address] = grpc.insecure_channel(target)
            return self._channels[address]


CHANNELS = _Channels()


def _snapshot_init(name: str, address: str):
    def init(ic: InitContext):
        ic.exports["address"] = address
        channel = CHANNELS.get(address)
        return ProxySnapshotBackend(name, address, channel, str(ic.properties.get(
            "io.containerd.plugin.root", "")))
    return init


def _content_init(name: str, address: str):
    def init(ic: InitContext):
        ic.exports["address"] = address
        os.makedirs(ic.root, mode=0o711, exist_ok=True)  # staged ingests and the read cache
        return ProxyContentStore(name, address, CHANNELS.get(address), str(ic.root))
    return init


def registrations(cfg) -> list[Registration]:
    """The registrations for `cfg.proxy_plugins` (unknown types are warned about)."""
    regs = []
    for name, pp in sorted(cfg.proxy_plugins.items()):
        plugin_type = _TYPES.get(pp.type)
        if plugin_type is None:
            log.warning("unknown proxy plugin type %r for %s", pp.type, name)
            continue
        init = (_snapshot_init if plugin_type == SNAPSHOT else _content_init)(name, pp.address)
        platforms = (pp.platform,) if pp.platform else ()
        regs.append(Registration(plugin_type, name, init, platforms=platforms))
    return regs
