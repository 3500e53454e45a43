"""The one list of built-in plugins (static: a compiled binary cannot discover entry points).

Registrations are listed by plugin type in containerd's order, so that the
dependency sort (which keeps this order where `requires` allows) yields the
same `ctr plugins ls` listing as containerd.
"""
from . import plugin as p
from .plugins import events, health, introspection, leases, metadata, namespaces, version
from .plugins import containers, runtime, runtime_v1, tasks
from .plugins import diff, snapshots
from .plugins import content, gc, images
from .plugins import opt, restart

MODULES = [metadata, events, introspection, leases, namespaces, health, version]
MODULES += [containers, runtime_v1, runtime, tasks]
MODULES += [snapshots, diff]
MODULES += [content, gc, images]
MODULES += [opt, restart]

# gRPC services and internal plugins interleave (containerd registers them by package)
TYPE_ORDER = [p.CONTENT, p.SNAPSHOT, p.METADATA, p.DIFF, p.EVENT, p.GC, p.SERVICE,
              p.RUNTIME_V1, p.RUNTIME_V2, p.MONITOR, (p.GRPC, p.INTERNAL), p.TTRPC,
              p.STREAM_PROCESSOR]
# within a type (or the gRPC/internal group) these come first, in this order, then by id
LEADING = ("introspection", "restart")


def registrations():
    regs = [reg for module in MODULES for reg in module.REGISTRATIONS]
    rank = {t: i for i, group in enumerate(TYPE_ORDER)
            for t in (group if isinstance(group, tuple) else (group,))}

    def leading(reg):
        return next((i for i, prefix in enumerate(LEADING) if reg.id.startswith(prefix)),
                    len(LEADING))

    def containerd_order(reg):
        return rank.get(reg.type, len(rank)), leading(reg), reg.id
    return sorted(regs, key=containerd_order)
