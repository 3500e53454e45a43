"""Fast checks of the packaging inputs: unit file, control, maintainer scripts, man pages.

The slow end-to-end build (Nuitka, .deb, install, minimal rootfs) is in
test_packaging_build.py.
"""
import configparser
import importlib.util
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEB = REPO / "packaging" / "deb"


def load_build():
    spec = importlib.util.spec_from_file_location("packaging_build", REPO / "packaging" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = load_build()


def unit():
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(DEB / "ctrappliance.service")
    return parser


def test_unit_has_containerd_service_semantics():
    u = unit()
    service = dict(u["Service"])
    assert service["Type"] == "notify"
    assert service["ExecStart"] == "/usr/bin/ctrappliance"
    expected = {"Delegate": "yes", "KillMode": "process", "Restart": "always",
                "ExecStartPre": "-/sbin/modprobe overlay", "OOMScoreAdjust": "-999",
                "LimitNOFILE": "infinity", "TasksMax": "infinity"}
    assert {k: service.get(k) for k in expected} == expected
    assert "man:ctrappliance(8)" in u["Unit"]["Documentation"].split()
    assert u["Install"]["WantedBy"] == "multi-user.target"


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_unit_passes_systemd_analyze_verify(tmp_path):
    """The unit as shipped, with only ExecStart's binary made to exist (it is not installed)."""
    for page in build.render_manpages(build.project_version(), tmp_path / "man"):
        section = tmp_path / "manpath" / f"man{page.suffix[1:]}"
        section.mkdir(parents=True, exist_ok=True)
        shutil.copy(page, section)
    stub = tmp_path / "ctrappliance"
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    text = (DEB / "ctrappliance.service").read_text()
    unit_file = tmp_path / "ctrappliance.service"
    unit_file.write_text(text.replace("ExecStart=/usr/bin/ctrappliance", f"ExecStart={stub}"))
    result = subprocess.run(["systemd-analyze", "verify", str(unit_file)], capture_output=True,
                            text=True, timeout=60,
                            env=dict(os.environ, MANPATH=str(tmp_path / "manpath")))
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def control_fields(text):
    fields, key = {}, None
    for line in text.splitlines():
        if line.startswith(" "):
            fields[key] += "\n" + line
        else:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def test_control_fields():
    with open(REPO / "pyproject.toml", "rb") as f:
        version = tomllib.load(f)["project"]["version"]
    fields = control_fields(build.render_control(version, "amd64", 12345))
    assert fields["Package"] == "ctrappliance"
    assert fields["Version"] == version
    assert (fields["Architecture"], fields["Installed-Size"]) == ("amd64", "12345")
    assert (fields["Section"], fields["Priority"]) == ("admin", "optional")
    depends = [d.strip().split()[0] for d in fields["Depends"].split(",")]
    assert "libc6 (>= 2.35)" in fields["Depends"]
    assert {"libc6", "runc", "libstdc++6", "zlib1g"} <= set(depends)
    assert "containerd" not in depends  # no second container daemon
    summary, *long = fields["Description"].splitlines()
    assert summary and len(long) >= 4 and all(l.startswith(" ") for l in long)
    for unimplemented in ("CRI", "kubelet", "Kubernetes"):   # it claims only what works
        assert unimplemented not in fields["Description"], unimplemented
    assert re.match(r"[^<>]+ <[^@\s]+@[^@\s]+\.[a-z]+>$", fields["Maintainer"])


def test_maintainer_scripts_are_debhelper_style():
    for name in ("postinst", "prerm", "postrm"):
        script = DEB / name
        assert os.access(script, os.X_OK), name
        subprocess.run(["sh", "-n", str(script)], check=True)
        text = script.read_text()
        for line in text.splitlines():  # systemctl only for daemon-reload, only with systemd
            if "systemctl" in line.split("#")[0]:
                assert "daemon-reload" in line, line
        if "deb-systemd-invoke" in text or "systemctl" in text:
            assert "[ -d /run/systemd/system ]" in text, name
    assert "deb-systemd-helper enable" in (DEB / "postinst").read_text()
    assert "deb-systemd-helper purge" in (DEB / "postrm").read_text()


def test_postinst_runs_without_systemd(tmp_path):
    """With no systemd running, configure only records the enablement (no start)."""
    if shutil.which("deb-systemd-helper") is None:
        pytest.skip("init-system-helpers not installed")
    fake = tmp_path / "bin"
    fake.mkdir()
    calls = tmp_path / "calls"
    for tool in ("deb-systemd-helper", "deb-systemd-invoke", "systemctl"):
        (fake / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {calls}\n')
        (fake / tool).chmod(0o755)
    env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}")
    subprocess.run([str(DEB / "postinst"), "configure", ""], check=True, env=env)
    recorded = calls.read_text().splitlines()
    assert "deb-systemd-helper enable ctrappliance.service" in recorded
    if not os.path.isdir("/run/systemd/system"):
        assert not [c for c in recorded if c.startswith(("deb-systemd-invoke", "systemctl"))]


def test_nuitka_spec_modes():
    standalone = build.nuitka_options("standalone", Path("/b"))
    onefile = build.nuitka_options("onefile", Path("/b"))
    assert "--mode=standalone" in standalone and "--mode=onefile" not in standalone
    assert "--mode=onefile" in onefile and "--output-dir=/b/nuitka-onefile" in onefile
    for kept_out in ("grpc_tools", "Cython", "setuptools"):
        assert f"--nofollow-import-to={kept_out}" in standalone
    plugins = [o.split("=", 1)[1] for o in standalone if o.startswith("--user-plugin=")]
    assert plugins and all(os.path.isfile(p) for p in plugins)  # strips the dist
    bundled = [o.split("=")[-1] for o in onefile if o.startswith("--include-data-files")]
    assert set(bundled) == {"libstdc++.so.6", "libgcc_s.so.1", "libz.so.1"}
    assert all(os.path.isfile(o.split("=")[1]) for o in onefile
               if o.startswith("--include-data-files"))


def test_nuitka_ships_python_modules_as_bytecode():
    """Ours and third-party modules go into the binary as bytecode (less CPU per container
    than Nuitka's C on Python 3.11: packaging/nuitka_bytecode.py); the entry point and the
    modules Nuitka's plugins generate stay compiled, as Nuitka requires."""
    from nuitka.utils.ModuleNames import ModuleName
    path = REPO / "packaging" / "nuitka_bytecode.py"
    assert f"--user-plugin={path}" in build.nuitka_options("standalone", Path("/b"))
    spec = importlib.util.spec_from_file_location("nuitka_bytecode", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    decide = module.NuitkaPluginBytecode.decideCompilation
    for name in ("appliance.grpcserver.h2", "appliance", "hpack.hpack", "google.protobuf"):
        assert decide(None, ModuleName(name)) == "bytecode", name
    for name in ("__main__", "__parents_main__", "anyio-preLoad", "multiprocessing-postLoad"):
        assert decide(None, ModuleName(name)) is None, name


def test_manpages_render_cleanly_and_cover_the_config(tmp_path):
    version = build.project_version()
    pages = build.render_manpages(version, tmp_path)
    keys, plugins = build.config_reference()
    assert plugins, "the default config has plugin sections"
    texts = {p.name: p.read_text() for p in pages}
    page8, page5 = texts["ctrappliance.8"], texts["ctrappliance-config.toml.5"]
    for heading in ("SYNOPSIS", "OPTIONS", "CONFIGURATION", "FILES", "SIGNALS", "EXAMPLES",
                    "CLIENT"):
        assert f".SH {heading}" in page8, heading
    assert f"ctrappliance {version}" in page5 and version in page8.splitlines()[0] + page8
    for key in keys:
        assert f"\\fB{key}\\fR" in page8 and f".TP\n\\fB{key}\\fR" in page5, key
    for uri, section in plugins.items():
        assert f'.SS [plugins."{build.roff_escape(uri)}"]' in page5, uri
        for key in section:   # each key with its default and what it does
            entry = re.search(rf"^\.TP\n\\fB{key}\\fR = .+\n(.+)$",
                              page5.split(f'[plugins."{build.roff_escape(uri)}"]')[1], re.M)
            assert entry and len(entry.group(1)) > 20, (uri, key)
    heading = "Intended differences from containerd 1.6.20"
    assert f"## {heading}" in (REPO / "README.md").read_text()
    for page in (page5, page8):   # the list of intended differences, as installed
        flat = " ".join(page.split())
        assert "/usr/share/doc/ctrappliance/README.md.gz" in flat and heading in flat
    for option in ("\\-\\-root", "\\-\\-state", "\\-\\-address", "\\-\\-config"):
        assert option in page8
    for page in pages:
        result = subprocess.run(["man", "--warnings", "-E", "UTF-8", "-l", str(page)],
                                capture_output=True, text=True, timeout=60,
                                env=dict(os.environ, MANWIDTH="80", LC_ALL="C.UTF-8"))
        assert result.returncode == 0 and result.stderr == "", (page.name, result.stderr)
        assert "ctrappliance" in result.stdout
