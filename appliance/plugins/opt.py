"""io.containerd.internal.v1.opt: a managed directory for binaries and libraries.

As containerd's: `<path>/bin` and `<path>/lib` are created (0711) and put first in the
daemon's PATH and LD_LIBRARY_PATH, which shims and the runtimes they run inherit.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from ..plugin import INTERNAL, InitContext, Registration


@dataclass
class OptConfig:
    path: str = "/opt/containerd"


class OptManager:
    def __init__(self, path: str):
        self.path = path


def _prepend(variable: str, directory: str) -> None:
    current = os.environ.get(variable, "")
    # containerd leaves an empty entry ("dir:") when the variable was unset; for
    # LD_LIBRARY_PATH that would search the working directory, so we do not
    os.environ[variable] = f"{directory}:{current}" if current else directory


def _init(ic: InitContext) -> OptManager:
    path = ic.config.path
    ic.exports["path"] = path
    for sub, variable in (("bin", "PATH"), ("lib", "LD_LIBRARY_PATH")):
        directory = os.path.join(path, sub)
        os.makedirs(directory, mode=0o711, exist_ok=True)
        _prepend(variable, directory)
    return OptManager(path)


REGISTRATIONS = [Registration(INTERNAL, "opt", _init, config=OptConfig)]
