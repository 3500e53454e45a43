"""The program path: what shims get as -publish-binary, where bundled helpers are looked up."""
import os
import sys
import types

from appliance.process import program


def test_interpreted_path_is_the_running_script_or_interpreter(monkeypatch, tmp_path):
    script = tmp_path / "ctrappliance"
    script.write_text("#!/bin/sh\n")
    monkeypatch.setattr(sys, "argv", [str(script)])
    assert program.path() == str(script)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    monkeypatch.setattr(sys, "argv", ["ctrappliance"])  # a bare name found through PATH
    assert program.path() == sys.executable


def test_helper_dirs_are_beside_the_program_and_in_its_bin(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "argv", [str(tmp_path / "x")])
    (tmp_path / "x").write_text("")
    assert program.helper_dirs() == [str(tmp_path), os.path.join(str(tmp_path), "bin")]


def test_compiled_path_is_the_binary_even_from_bytecode_modules(monkeypatch):
    """In the Nuitka build only the entry point is compiled (it has __compiled__); our
    modules run as bytecode and must still give shims the binary, or the onefile
    bootstrap (NUITKA_ONEFILE_PARENT) for a onefile build."""
    main = types.ModuleType("__main__")
    main.__compiled__ = types.SimpleNamespace(onefile=False)
    monkeypatch.setitem(sys.modules, "__main__", main)
    monkeypatch.setattr(sys, "argv", ["/nonexistent/ctrappliance"])
    assert program.path() == os.readlink("/proc/self/exe")
    main.__compiled__ = types.SimpleNamespace(onefile=True)
    monkeypatch.setenv("NUITKA_ONEFILE_PARENT", str(os.getppid()))
    assert program.path() == os.readlink(f"/proc/{os.getppid()}/exe")
