"""io.containerd.internal.v1.opt: a directory for binaries and libraries that containers'
tooling installs (e.g. shims, logging binaries), as containerd's: `<path>/bin` goes first in the
daemon's PATH and `<path>/lib` first in LD_LIBRARY_PATH, so the shims and runtimes the daemon
starts find them."""
from __future__ import annotations

import os
from dataclasses import dataclass

from ..plugin import INTERNAL, InitContext, Registration


@dataclass
class OptConfig:
    path: str = "/opt/containerd"


class Opt:
    def __init__(self, path: str):
        self.path = path


def _prepend(variable: str, directory: str) -> None:
    current = os.environ.get(variable, "")
    os.environ[variable] = f"{directory}{os.pathsep}{current}"


def _init(ic: InitContext) -> Opt:
    path = ic.config.path
    ic.exports["path"] = path
    for sub, variable in (("bin", "PATH"), ("lib", "LD_LIBRARY_PATH")):
        directory = os.path.join(path, sub)
        os.makedirs(directory, mode=0o711, exist_ok=True)
        _prepend(variable, directory)
    return Opt(path)


REGISTRATIONS = [Registration(INTERNAL, "opt", _init, config=OptConfig)]
