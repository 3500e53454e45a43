"""Nuitka user plugin (--user-plugin): ship Python modules as bytecode, not compiled C.

Nuitka includes the standard library as bytecode already (run by the interpreter linked
into the binary); this plugin makes the same decision for every other module, ours and
third-party ones. Measured per container lifecycle (bench section `lifecycle`, issue 24):
Nuitka's C for our code cost more CPU than CPython 3.11 running its bytecode, because
3.11's specializing interpreter caches attribute and method lookups in the bytecode
(LOAD_ATTR_INSTANCE_VALUE, LOAD_METHOD_*), where Nuitka's C takes the generic path
(`_PyObject_GenericGetAttrWithDict`, `_PyType_Lookup`) on every access. Our hot paths
are that kind of code (protocol objects, dataclasses, small methods). Extension modules
(Cython, cffi, protobuf's upb) are unaffected.
"""
from nuitka.plugins.PluginBase import NuitkaPluginBase


class NuitkaPluginBytecode(NuitkaPluginBase):
    plugin_name = "ctrappliance-bytecode"
    plugin_desc = "Include every module as bytecode (the entry point stays compiled)."

    def decideCompilation(self, module_name):
        # Compiled: the entry point (packaging/ctrappliance.py as __main__ and, for
        # multiprocessing, __parents_main__) and the code Nuitka's plugins generate
        # ("anyio-preLoad", …); Nuitka fails on those as bytecode.
        name = str(module_name)
        if name.startswith("__") or "-" in name:
            return None
        return "bytecode"
