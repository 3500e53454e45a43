"""Build ctrappliance for distribution: Nuitka dist + .deb, Nuitka onefile, man pages.

    .venv/bin/python packaging/build.py [--skip-onefile] [--skip-nuitka] [--out build]

Products (in --out, default build/):
  ctrappliance_<version>_<arch>.deb   the standalone dist under /usr/lib/ctrappliance
  ctrappliance                        the onefile binary for minimal images
  man/ctrappliance.8, man/ctrappliance-config.toml.5

The version comes from pyproject.toml only (setup.py writes appliance/_version.py).
Nuitka options are in packaging/nuitka.spec; Debian inputs in packaging/deb/.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEB = HERE / "deb"
MAN = HERE / "man"
PYTHON = sys.executable
LIBDIR = "usr/lib/ctrappliance"        # the Nuitka dist and bundled helper binaries
HELPERS = {  # bundled from the build host: Debian's Apache-2.0 shim and client
    "containerd-shim-runc-v2": "/usr/bin/containerd-shim-runc-v2",
    "ctr": "/usr/bin/ctr",
}
HELPERS_COPYRIGHT = "/usr/share/doc/containerd/copyright"
NICE = ["nice", "-n", "10"]
# Calls routed to packaging/nuitka_libc.py's wrappers (Nuitka's start-up aborted without
# locale files or /proc).
WRAP_LDFLAGS = "-Wl,--wrap=newlocale,--wrap=readlink"


def log(msg: str) -> None:
    print(f"build: {msg}", file=sys.stderr, flush=True)


def run(argv, **kw):
    log("$ " + " ".join(str(a) for a in argv))
    return subprocess.run([str(a) for a in argv], check=True, **kw)


# --- version ----------------------------------------------------------------

def project_version() -> str:
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["version"]


def sync_version_file() -> str:
    """setup.py writes appliance/_version.py from pyproject; check it did."""
    version = project_version()
    result = subprocess.run([PYTHON, "setup.py", "-q", "--version"], cwd=REPO,
                            capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"setup.py --version failed:\n{result.stderr}")
    text = (REPO / "appliance" / "_version.py").read_text()
    if f'"{version}"' not in text:
        raise SystemExit(f"appliance/_version.py does not say {version}")
    return version


def deb_arch() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()


# --- Nuitka -----------------------------------------------------------------

def nuitka_options(mode: str, build: Path) -> list[str]:
    """The [common] options plus those of `mode` from nuitka.spec."""
    options, section = [], None
    for line in (HERE / "nuitka.spec").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
        elif section in ("common", mode):
            line = (line.replace("{build}", str(build)).replace("{mode}", mode)
                    .replace("{packaging}", str(HERE)))
            options.append(re.sub(r"\{lib:([^}]+)\}", lambda m: host_library(m[1]), line))
    return options


def host_library(soname: str) -> str:
    """The real file behind a shared library name, as the dynamic loader finds it."""
    tag = {"amd64": "x86-64", "arm64": "AArch64"}.get(deb_arch(), "")
    out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        name, _, path = line.strip().partition(" => ")
        if name.split(" ")[0] == soname and tag in name:
            return os.path.realpath(path)
    raise SystemExit(f"{soname} not found by ldconfig -p")


def check_extensions() -> None:
    """The Cython and cffi modules must be built (pip install -e .) to be bundled."""
    for pattern in ("_core*.so", "_hpack*.so", "_mountcall*.so", "grpcserver/_h2*.so"):
        if not list((REPO / "appliance").glob(pattern)):
            raise SystemExit(f"appliance/{pattern} missing: run .venv/bin/pip install "
                             "--no-build-isolation -e .")


def nuitka(mode: str, build: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO),  # the tree, not an installed copy
               LDFLAGS=" ".join(filter(None, [os.environ.get("LDFLAGS"), WRAP_LDFLAGS])))
    started = time.monotonic()
    run(NICE + [PYTHON, "-m", "nuitka", *nuitka_options(mode, build),
                HERE / "ctrappliance.py"], cwd=REPO, env=env)
    log(f"nuitka {mode}: {time.monotonic() - started:.0f}s")


def is_elf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


def strip_tree(root: Path) -> None:
    """Strip every ELF object (Nuitka copies extension modules as built, with -g)."""
    elves = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and is_elf(p)]
    subprocess.run(["strip", "--strip-unneeded", "--remove-section=.comment",
                    "--remove-section=.note", *elves], check=True)
    log(f"stripped {len(elves)} ELF files under {root}")


# --- man pages ----------------------------------------------------------------

def config_reference() -> tuple[list[str], dict[str, dict]]:
    """Top-level keys and plugin sections of the default configuration."""
    sys.path.insert(0, str(REPO))
    from appliance import builtins, config
    table = config.to_table(config.Config(), builtins.registrations())
    plugins = table.get("plugins", {})
    return [k for k in table if k != "plugins"], plugins


def roff_escape(text: str) -> str:
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line[:1] in (".", "'") else line
                     for line in text.splitlines())


def toml_value(value) -> str:
    """One line of TOML: arrays inline; a table as its keys (`config default` shows it)."""
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "(a table: " + (", ".join(value) or "empty") + ")"
    import tomli_w
    return tomli_w.dumps({"x": value}).split("=", 1)[1].strip()


def plugin_descriptions(path: Path = MAN / "plugin-sections.txt") -> dict[str, dict]:
    """{uri: {"": introduction, key: text}} from plugin-sections.txt (format in its head)."""
    sections: dict[str, dict] = {}
    current, key = None, ""
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            current, key = sections.setdefault(line[1:-1], {"": ""}), ""
        elif line.startswith("  ") and key:
            current[key] += " " + line.strip()
        elif re.match(r"[a-z0-9_]+: ", line):
            key, text = line.split(": ", 1)
            current[key] = text
        else:
            current[""] = (current[""] + " " + line).strip()
    return sections


def render_config_page(version: str) -> str:
    """ctrappliance-config.toml(5): hand-written text; each plugin section's keys with
    their defaults (generated) and what they do (plugin-sections.txt)."""
    keys, plugins = config_reference()
    text = (MAN / "ctrappliance-config.toml.5.in").read_text()
    missing = [k for k in keys if not re.search(rf'^\.TP\n\\fB{re.escape(k)}\\fR', text, re.M)]
    if missing:
        raise SystemExit(f"packaging/man/ctrappliance-config.toml.5.in lacks keys: {missing}")
    described = plugin_descriptions()
    undescribed = [f"{uri}.{key}" for uri in plugins for key in ["", *plugins[uri]]
                   if not described.get(uri, {}).get(key)]
    if undescribed:
        raise SystemExit(f"packaging/man/plugin-sections.txt lacks: {undescribed}")
    rows = []
    for uri in sorted(plugins):
        rows.append(f'.SS [plugins."{roff_escape(uri)}"]')
        rows.append(roff_escape(described[uri][""]))
        for key, value in plugins[uri].items():
            rows.append(".TP")
            rows.append(rf"\fB{key}\fR = " + roff_escape(toml_value(value)))
            rows.append(roff_escape(described[uri][key]))
    return (text.replace("@VERSION@", version).replace("@DATE@", man_date())
            .replace("@PLUGIN_SECTIONS@\n", "\n".join(rows) + "\n"))


def man_date() -> str:
    """Reproducible: the commit date if any, else today (SOURCE_DATE_EPOCH wins)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if not epoch:
        out = subprocess.run(["git", "log", "-1", "--format=%ct"], cwd=REPO,
                             capture_output=True, text=True)
        epoch = out.stdout.strip() or str(int(time.time()))
    return time.strftime("%Y-%m-%d", time.gmtime(int(epoch)))


def render_manpages(version: str, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    page8 = out / "ctrappliance.8"
    env = dict(os.environ, PYTHONPATH=str(REPO), SOURCE_DATE_EPOCH=str(
        int(time.mktime(time.strptime(man_date(), "%Y-%m-%d")))))
    keys, plugins = config_reference()
    include = out / "ctrappliance.8.include"
    include.write_text((MAN / "ctrappliance.8.include").read_text()
                       .replace("@TOP_LEVEL_KEYS@", ", ".join(rf"\fB{k}\fR" for k in keys))
                       .replace("@PLUGIN_SECTIONS@", ", ".join(
                           rf'\fB[plugins."{roff_escape(uri)}"]\fR' for uri in sorted(plugins))
                                or "none"))
    run([Path(PYTHON).parent / "argparse-manpage",
         "--module", "appliance.cli", "--function", "get_parser",
         "--project-name", "ctrappliance", "--prog", "ctrappliance", "--version", version,
         "--manual-section", "8", "--manual-title", "System Administration",
         "--description", "containerd-compatible container daemon",
         "--author", "the ctrappliance authors",
         "--include", include, "--output", page8], env=env)
    page5 = out / "ctrappliance-config.toml.5"
    page5.write_text(render_config_page(version))
    return [page8, page5]


# --- .deb -----------------------------------------------------------------------

def installed_size_kib(root: Path) -> int:
    return sum((p.stat().st_size + 1023) // 1024 for p in root.rglob("*")
               if p.is_file() and not p.is_symlink() and "DEBIAN" not in p.parts)


def render_control(version: str, arch: str, installed_kib: int) -> str:
    text = (DEB / "control.in").read_text()
    return (text.replace("@VERSION@", version).replace("@ARCH@", arch)
            .replace("@INSTALLED_SIZE@", str(installed_kib)))


def render_changelog(version: str) -> bytes:
    text = (DEB / "changelog.in").read_text().replace("@VERSION@", version)
    text = text.replace("@DATE@", time.strftime(
        "%a, %d %b %Y %H:%M:%S +0000", time.gmtime(int(os.environ.get(
            "SOURCE_DATE_EPOCH", "0") or 0) or time.time())))
    return gzip.compress(text.encode(), compresslevel=9, mtime=0)


def install(src: Path, dst: Path, mode: int = 0o644) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    os.chmod(dst, mode)


def stage_deb(version: str, arch: str, dist: Path, manpages: list[Path], stage: Path) -> None:
    if stage.exists():
        shutil.rmtree(stage)
    lib = stage / LIBDIR
    shutil.copytree(dist, lib, symlinks=True)
    for name, host_path in HELPERS.items():
        install(Path(host_path), lib / "bin" / name, 0o755)
    strip_tree(lib)
    (stage / "usr/bin").mkdir(parents=True)
    os.symlink("../lib/ctrappliance/ctrappliance", stage / "usr/bin/ctrappliance")
    install(DEB / "ctrappliance-ctr", stage / "usr/bin/ctrappliance-ctr", 0o755)

    conf = subprocess.run([lib / "ctrappliance", "config", "default"], capture_output=True,
                          text=True, check=True).stdout
    (stage / "etc/ctrappliance").mkdir(parents=True)
    (stage / "etc/ctrappliance/config.toml").write_text(conf)
    install(DEB / "ctrappliance.service", stage / "lib/systemd/system/ctrappliance.service")

    for page in manpages:
        section = page.suffix[1:]
        target = stage / f"usr/share/man/man{section}/{page.name}.gz"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(gzip.compress(page.read_bytes(), compresslevel=9, mtime=0))

    # ctrappliance-ctr is documented in ctrappliance(8), section CLIENT.
    (stage / "usr/share/man/man8/ctrappliance-ctr.8.gz").write_bytes(
        gzip.compress(b".so man8/ctrappliance.8\n", compresslevel=9, mtime=0))

    doc = stage / "usr/share/doc/ctrappliance"
    doc.mkdir(parents=True)
    copyright_text = (DEB / "copyright").read_text()
    if Path(HELPERS_COPYRIGHT).exists():  # the bundled shim and ctr: containerd's terms
        copyright_text += ("\n# The files below are copied from Debian's containerd package; "
                           "its copyright file follows.\n"
                           f"Files: {LIBDIR}/bin/*\n"
                           "Copyright: The containerd Authors\n"
                           "License: Apache-2.0\n")
        install(Path(HELPERS_COPYRIGHT), doc / "copyright.containerd")
    (doc / "copyright").write_text(copyright_text)
    (doc / "changelog.gz").write_bytes(render_changelog(version))
    # README.md: what the package is for and the intended differences from containerd,
    # which both man pages point to
    (doc / "README.md.gz").write_bytes(
        gzip.compress((REPO / "README.md").read_bytes(), compresslevel=9, mtime=0))
    install(DEB / "lintian-overrides", stage / "usr/share/lintian/overrides/ctrappliance")

    debian = stage / "DEBIAN"
    debian.mkdir()
    for script in ("postinst", "prerm", "postrm"):
        install(DEB / script, debian / script, 0o755)
    (debian / "conffiles").write_text("/etc/ctrappliance/config.toml\n")
    (debian / "control").write_text(render_control(version, arch, installed_size_kib(stage)))
    sums = []
    for p in sorted(stage.rglob("*")):
        rel = p.relative_to(stage)
        if p.is_file() and not p.is_symlink() and rel.parts[0] not in ("DEBIAN", "etc"):
            sums.append(f"{hashlib.md5(p.read_bytes()).hexdigest()}  {rel}\n")
    (debian / "md5sums").write_text("".join(sums))
    for p in [stage, *stage.rglob("*")]:  # dpkg-deb wants 0755 dirs, no group/other write
        if p.is_dir():
            os.chmod(p, 0o755)


def build_deb(stage: Path, out: Path) -> Path:
    run(NICE + ["dpkg-deb", "--root-owner-group", "-Zxz", "--build", stage, out])
    return out


# --- main -------------------------------------------------------------------------

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "build"), help="output directory")
    parser.add_argument("--skip-nuitka", action="store_true",
                        help="reuse the standalone dist from a previous build")
    parser.add_argument("--skip-onefile", action="store_true", help="no onefile binary")
    parser.add_argument("--man-only", action="store_true", help="only the man pages")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    version = sync_version_file()
    manpages = render_manpages(version, out / "man")
    if args.man_only:
        return 0
    check_extensions()
    dist = out / "nuitka-standalone" / "ctrappliance.dist"
    if not args.skip_nuitka or not dist.is_dir():
        nuitka("standalone", out)
    arch = deb_arch()
    deb = out / f"ctrappliance_{version}_{arch}.deb"
    stage_deb(version, arch, dist, manpages, out / "deb-root")
    build_deb(out / "deb-root", deb)
    log(f"{deb.name}: {deb.stat().st_size / 2**20:.1f} MiB")
    if not args.skip_onefile:
        nuitka("onefile", out)
        shutil.copyfile(out / "nuitka-onefile" / "ctrappliance", out / "ctrappliance")
        os.chmod(out / "ctrappliance", 0o755)
        log(f"ctrappliance (onefile): {(out / 'ctrappliance').stat().st_size / 2**20:.1f} MiB")
    log(f"done in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
