"""io.containerd.runtime.v1.linux: listed as containerd 1.6 lists it, but not provided.

Runtime v1 (containerd-shim, `io.containerd.runtime.v1.linux`) was deprecated in 1.4 and
removed in containerd 2.0; ctrappliance serves runtime v2 only (README, intended
differences). The config section is kept so containerd 1.6 configs load unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..plugin import EVENT, LINUX_AMD64, METADATA, RUNTIME_V1, InitContext, Registration, SkipPlugin


@dataclass
class LinuxRuntimeConfig:
    shim: str = "containerd-shim"
    runtime: str = "runc"
    runtime_root: str = ""
    no_shim: bool = False
    shim_debug: bool = False


def _init(ic: InitContext):
    raise SkipPlugin("runtime v1 (io.containerd.runtime.v1.linux) was removed in containerd 2.0 "
                     "and is not provided by ctrappliance: use io.containerd.runc.v2")


REGISTRATIONS = [
    Registration(RUNTIME_V1, "linux", _init, requires=(EVENT, METADATA), config=LinuxRuntimeConfig,
                 platforms=LINUX_AMD64),
]
