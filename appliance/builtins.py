"""The one list of built-in plugins (static: a compiled binary cannot discover entry points).

Registrations are listed by plugin type in containerd's order, so that the
dependency sort (which keeps this order where `requires` allows) yields the
same `ctr plugins ls` listing as containerd.
"""
from . import plugin as p
from .plugins import events, health, introspection, leases, metadata, namespaces, version
from .plugins import containers, runtime, tasks
from .plugins import diff, snapshots
from .plugins import content, gc, images
from .plugins import cri, opt, restart

MODULES = [metadata, events, introspection, leases, namespaces, health, version]
MODULES += [containers, runtime, tasks]
MODULES += [snapshots, diff]
MODULES += [content, gc, images]
MODULES += [restart, opt, cri]

TYPE_ORDER = [p.CONTENT, p.SNAPSHOT, p.METADATA, p.DIFF, p.EVENT, p.GC, p.SERVICE,
              p.RUNTIME_V1, p.RUNTIME_V2, p.MONITOR, p.GRPC, p.INTERNAL, p.TTRPC, p.STREAM_PROCESSOR]


# containerd lists these internal plugins among the gRPC services, where their Go packages
# sort: runtime/restart/monitor before services/*, services/opt between namespaces and snapshots.
# CRI (pkg/cri) comes last.
LISTED_AS = {(p.INTERNAL, "restart"): (p.GRPC, " restart"), (p.INTERNAL, "opt"): (p.GRPC, "opt"),
             (p.GRPC, "cri"): (p.GRPC, "~cri")}


def registrations():
    regs = [reg for module in MODULES for reg in module.REGISTRATIONS]
    rank = {t: i for i, t in enumerate(TYPE_ORDER)}

    def containerd_order(reg):  # by type; within a type introspection first, then by id
        type_, id_ = LISTED_AS.get((reg.type, reg.id), (reg.type, reg.id))
        return rank.get(type_, len(rank)), not id_.startswith("introspection"), id_
    return sorted(regs, key=containerd_order)
