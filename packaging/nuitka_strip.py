"""Nuitka user plugin (--user-plugin): strip the dist before it is shipped or packed.

Nuitka strips the program it compiles, but copies extension modules and libraries
as built (often with debug info); onefile packs them as they are, so strip here.
"""
import importlib.util
from pathlib import Path

from nuitka.plugins.PluginBase import NuitkaPluginBase


def _build_module():
    spec = importlib.util.spec_from_file_location("ctrappliance_packaging_build",
                                                  Path(__file__).with_name("build.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class NuitkaPluginStripDist(NuitkaPluginBase):
    plugin_name = "ctrappliance-strip"
    plugin_desc = "Strip every ELF file of the standalone dist."

    def onStandaloneDistributionFinished(self, dist_dir):
        _build_module().strip_tree(Path(dist_dir))
