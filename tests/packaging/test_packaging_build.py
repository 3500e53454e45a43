"""The real products: Nuitka build, .deb (lintian, install, run, purge), onefile in a bare rootfs.

In the default run (marker `packaging`; the Nuitka build takes minutes, so
`-m 'not slow and not packaging'` leaves it out while iterating). Set
CTRAPPLIANCE_PACKAGE_DIR to a directory with the products of `./scripts/dev package`
to test those instead of building afresh.
"""
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import daemon as daemon_module
from daemon import Daemon
from test_packaging_inputs import REPO, build

sys.path.insert(0, str(REPO / "tests" / "integration"))  # runtime_helpers, image_helpers

# Part of the default run (packaging is re-checked by CI as capabilities land);
# `-m 'not packaging'` skips the Nuitka build (4-8 min) when iterating.
pytestmark = pytest.mark.packaging
SOCKET_WAIT = 60.0


@pytest.fixture(scope="module")
def products():
    given = os.environ.get("CTRAPPLIANCE_PACKAGE_DIR")
    out = Path(given).resolve() if given else REPO / "build"
    if not given:
        subprocess.run([sys.executable, str(REPO / "packaging" / "build.py"), "--out", str(out)],
                       check=True, timeout=1800)
    version = build.project_version()
    deb = out / f"ctrappliance_{version}_{build.deb_arch()}.deb"
    assert deb.is_file() and (out / "ctrappliance").is_file()
    return {"deb": deb, "onefile": out / "ctrappliance", "version": version,
            "dist": out / "nuitka-standalone" / "ctrappliance.dist",
            "onefile_dist": out / "nuitka-onefile" / "ctrappliance.dist"}


def test_lintian_reports_no_errors(products):
    result = subprocess.run(["lintian", "--tag-display-limit", "0", str(products["deb"])],
                            capture_output=True, text=True, timeout=600)
    errors = [l for l in result.stdout.splitlines() if l.startswith("E:")]
    assert errors == [], result.stdout


def test_deb_layout(products):
    deb = str(products["deb"])
    field = lambda f: subprocess.run(["dpkg-deb", "-f", deb, f], capture_output=True,
                                     text=True, check=True).stdout.strip()
    assert field("Version") == products["version"]
    listing = subprocess.run(["dpkg-deb", "-c", deb], capture_output=True, text=True,
                             check=True).stdout
    for path in ("./usr/lib/ctrappliance/ctrappliance", "./etc/ctrappliance/config.toml",
                 "./lib/systemd/system/ctrappliance.service",
                 "./usr/share/man/man8/ctrappliance.8.gz",
                 "./usr/share/man/man5/ctrappliance-config.toml.5.gz",
                 "./usr/lib/ctrappliance/bin/containerd-shim-runc-v2",
                 "./usr/lib/ctrappliance/bin/ctr", "./usr/bin/ctrappliance-ctr",
                 "./usr/share/doc/ctrappliance/copyright",
                 "./usr/share/doc/ctrappliance/README.md.gz"):
        assert re.search(rf" {re.escape(path)}( |$)", listing, re.M), path
    assert "./usr/bin/ctrappliance -> ../lib/ctrappliance/ctrappliance" in listing
    assert "root/root" in listing and not re.search(r" \d+/\d+ ", listing)
    control = subprocess.run(["dpkg-deb", "-I", deb, "conffiles", "md5sums"],
                             capture_output=True, text=True, check=True).stdout
    assert "/etc/ctrappliance/config.toml" in control
    assert "usr/lib/ctrappliance/ctrappliance" in control


def ours_files() -> set[str]:
    """Every path outside the package's own file list that mentions ctrappliance."""
    found = set()
    for top in ("/etc", "/usr", "/lib", "/var/lib", "/run"):
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = [d for d in dirnames if dirpath + "/" + d not in (
                "/var/lib/dpkg", "/var/lib/apt", "/run/containerd", "/usr/share/doc-base")]
            found.update(os.path.join(dirpath, n) for n in dirnames + filenames
                         if "ctrappliance" in n)
    return found


def image_support(d: Daemon) -> bool:
    return "io.containerd.differ.v1" in d.ctr("plugins", "ls").stdout


def test_install_run_and_purge(products, tmp_path, monkeypatch):
    if subprocess.run(["dpkg-query", "-W", "ctrappliance"], capture_output=True).returncode == 0:
        pytest.skip("a ctrappliance package is installed on this machine already")
    before = ours_files()
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                    str(products["deb"].resolve())], check=True, env=env, timeout=600,
                   capture_output=True)
    try:
        listed = subprocess.run(["dpkg", "-L", "ctrappliance"], capture_output=True, text=True,
                                check=True).stdout.split()
        out = subprocess.run(["/usr/bin/ctrappliance", "--version"], capture_output=True,
                             text=True, check=True).stdout
        assert out == f"ctrappliance {products['version']}\n"
        verify = subprocess.run(["systemd-analyze", "verify", "ctrappliance.service"],
                                capture_output=True, text=True, timeout=120)
        assert (verify.returncode, verify.stdout + verify.stderr) == (0, "")
        assert os.path.islink("/etc/systemd/system/multi-user.target.wants/ctrappliance.service")
        assert subprocess.run(["man", "-w", "ctrappliance"], capture_output=True).returncode == 0

        monkeypatch.setattr(daemon_module, "BINARY", "/usr/bin/ctrappliance")
        monkeypatch.setattr(daemon_module, "CTR", "/usr/lib/ctrappliance/bin/ctr")
        d = Daemon(workdir=str(tmp_path / "d"), env={"PATH": "/usr/sbin:/sbin"})
        try:
            d.start()
            out = subprocess.run(["/usr/bin/ctrappliance-ctr", "--address", d.address, "version"],
                                 capture_output=True, text=True, timeout=30, check=True).stdout
            assert re.search(rf"Server:\n\s+Version:\s+{re.escape(products['version'])}", out)
            run_container(d, tmp_path)
        finally:
            d.cleanup()
    finally:
        subprocess.run(["dpkg", "--purge", "ctrappliance"], check=True, capture_output=True,
                       timeout=300)
    assert [p for p in listed if os.path.lexists(p) and not os.path.isdir(p)] == []
    assert ours_files() - before == set()


def run_container(d: Daemon, tmp_path: Path) -> None:
    """`ctr run --rm`, through the bundled shim (the daemon's PATH has none) and runc."""
    from runtime_helpers import make_rootfs, run_flags, shim_pids
    rootfs = make_rootfs(tmp_path / "rootfs")
    flags = [*run_flags(d.workdir), "--env", "PATH=/bin", "--rootfs"]
    r = d.ctr("run", "--rm", *flags, str(rootfs), "pkg-run", "echo", "hello from the package",
              check=False)
    assert (r.returncode, r.stdout) == (0, "hello from the package\n"), r.stderr + d.log()

    d.ctr("run", "-d", *flags, str(rootfs), "pkg-sleep", "sleep", "60")
    try:
        shims = [os.readlink(f"/proc/{pid}/exe") for pid in shim_pids(d.address)]
        assert shims == ["/usr/lib/ctrappliance/bin/containerd-shim-runc-v2"]
    finally:
        d.ctr("task", "kill", "-s", "SIGKILL", "pkg-sleep", check=False)
        deadline = time.monotonic() + 15
        while "RUNNING" in d.ctr("task", "ls").stdout and time.monotonic() < deadline:
            time.sleep(0.1)
        d.ctr("task", "rm", "pkg-sleep", check=False)
        d.ctr("container", "rm", "pkg-sleep", check=False)

    if image_support(d):
        from image_helpers import make_oci
        d.ctr("images", "import", str(make_oci(tmp_path)))
        r = d.ctr("run", "--rm", *run_flags(d.workdir), "localhost/busybox:latest", "pkg-img",
                  "echo", "image ok", check=False)
        assert (r.returncode, r.stdout) == (0, "image ok\n"), r.stderr + d.log()


def host_files_needed(tree: Path) -> set[str]:
    """Libraries from the host that the ELF files in `tree` load (by ldd).

    LD_LIBRARY_PATH stands in for the executable's RPATH $ORIGIN, which the loader
    also applies to the extension modules it loads."""
    needed = set()
    env = dict(os.environ, LD_LIBRARY_PATH=str(tree))
    for path in tree.rglob("*"):
        if not path.is_file() or path.is_symlink() or not build.is_elf(path):
            continue
        out = subprocess.run(["ldd", str(path)], capture_output=True, text=True, env=env).stdout
        for line in out.splitlines():
            m = re.search(r"(?:=> )?(/\S+) \(0x", line)
            if m and not m.group(1).startswith(str(tree)):
                needed.add(m.group(1))
    return needed


def glibc_files() -> set[str]:
    out = subprocess.run(["dpkg", "-L", f"libc6:{build.deb_arch()}"], capture_output=True,
                         text=True, check=True).stdout
    return set(out.split())


# Minimal images have no locale files, yet often LANG or LC_ALL (Nuitka's start-up aborted
# there: packaging/nuitka_libc.py).
LOCALES = [{}, {"LANG": "C.UTF-8"}, {"LC_ALL": "en_US.UTF-8"}]


def glibc_only_rootfs(products, tmp_path) -> Path:
    """Only the dynamic loader and glibc's libraries (no locale files), static busybox,
    /dev's basics and the onefile binary as /ctrappliance."""
    # What the bootstrap needs, and what the payload it unpacks needs.
    needed = host_files_needed_of(products["onefile"]) | host_files_needed(products["onefile_dist"])
    print("host files needed:", sorted(needed))
    libc = glibc_files()
    assert all(p in libc or os.path.realpath(p) in libc or
               p.replace("/lib64/", "/lib/x86_64-linux-gnu/") in libc for p in needed), needed

    root = tmp_path / "rootfs"
    for p in needed:
        target = root / p.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(os.path.realpath(p), target)
    for d in ("bin", "proc", "tmp", "run", "var/lib"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    (root / "dev").mkdir()  # what any container runtime provides; gRPC seeds from urandom
    for name, minor in (("null", 3), ("zero", 5), ("urandom", 9)):
        os.mknod(root / "dev" / name, 0o666 | stat.S_IFCHR, os.makedev(1, minor))
    shutil.copy("/bin/busybox", root / "bin" / "busybox")
    shutil.copy(products["onefile"], root / "ctrappliance")
    listing = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert not [f for f in listing if "python" in f.lower()], listing
    assert not [f for f in listing if "locale" in f], listing
    return root


def in_bare_chroot(root: Path, script: str, env: dict, **popen) -> subprocess.Popen:
    return subprocess.Popen([shutil.which("unshare"), "--mount", "--propagation", "private",
                             shutil.which("chroot"), str(root), "/bin/busybox", "sh", "-c", script],
                            env={"PATH": "/bin", **env}, **popen)


@pytest.mark.parametrize("locale", LOCALES, ids=lambda env: ",".join(env) or "no-locale")
def test_onefile_runs_in_a_glibc_only_rootfs(products, tmp_path, locale):
    root = glibc_only_rootfs(products, tmp_path)
    address = root / "run" / "ca" / "ca.sock"
    log = open(tmp_path / "daemon.log", "wb")
    script = ("/bin/busybox mount -t proc proc /proc && /ctrappliance --version && "
              "exec /ctrappliance --root /var/lib/ca --state /run/ca --address /run/ca/ca.sock "
              "--log-level debug")
    proc = in_bare_chroot(root, script, locale, stdout=log, stderr=subprocess.STDOUT,
                          start_new_session=True)
    try:
        deadline = time.monotonic() + SOCKET_WAIT
        while "successfully booted" not in (tmp_path / "daemon.log").read_text(errors="replace"):
            assert proc.poll() is None, (tmp_path / "daemon.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "daemon.log").read_text()
            time.sleep(0.1)
        out = subprocess.run(["ctr", "--address", str(address), "version"], capture_output=True,
                             text=True, timeout=30)
        assert out.returncode == 0 and f"Version:  {products['version']}" in out.stdout, \
            out.stdout + out.stderr
        proc.send_signal(signal.SIGTERM)  # the bootstrap passes it on; the daemon stops
        assert proc.wait(40) == 0, (tmp_path / "daemon.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()
    text = (tmp_path / "daemon.log").read_text()
    assert text.startswith(f"ctrappliance {products['version']}\n"), text
    assert "stopped" in text and "KeyboardInterrupt" not in text, text
    assert not address.exists()
    assert os.listdir(root / "tmp") == []  # the unpacked payload is removed


NO_PROC = ("ctrappliance: cannot find its own executable: readlink /proc/self/exe: "
           "No such file or directory (is /proc mounted?)\n")


def test_onefile_without_proc_says_so(products, tmp_path):
    root = glibc_only_rootfs(products, tmp_path)
    proc = in_bare_chroot(root, "/ctrappliance --version", {}, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, out, err) == (1, "", NO_PROC)


def host_files_needed_of(binary: Path) -> set[str]:
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(binary, Path(tmp) / binary.name)
        return host_files_needed(Path(tmp))


@pytest.mark.parametrize("build_kind", ["standalone", "onefile"])
def test_compiled_daemon_passes_the_foundation_tests(products, build_kind):
    """The same integration tests as the interpreted daemon, against the compiled builds."""
    binary = products["dist"] / "ctrappliance" if build_kind == "standalone" \
        else products["onefile"]
    env = dict(os.environ, CTRAPPLIANCE_BIN=str(binary))
    # The onefile bootstrap passes on SIGTERM/SIGINT only: SIGUSR1 must go to its child
    # (documented in ctrappliance(8)), so that one test cannot apply.
    deselect = ["--deselect", "tests/integration/test_foundation.py::test_sigusr1_dumps_stacks"] \
        if build_kind == "onefile" else []
    unpacked_before = set(Path("/tmp").glob("ctrappliance-[0-9]*"))
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             *deselect, "tests/integration/test_foundation.py",
                             "tests/integration/test_cli.py"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    # A SIGKILLed onefile bootstrap (the tests kill daemons) leaves its unpacked copy.
    for leftover in set(Path("/tmp").glob("ctrappliance-[0-9]*")) - unpacked_before:
        if not Path("/proc", leftover.name.split("-")[1]).exists():  # its bootstrap is gone
            shutil.rmtree(leftover, ignore_errors=True)
    assert result.returncode == 0, result.stdout[-5000:]


CHROOT = Path(os.environ.get("CTRAPPLIANCE_TEST_CHROOT", "/var/tmp/ctrappliance-bookworm-minbase"))
CHROOT_SKIP = ("/proc", "/sys", "/dev", "/run", "/tmp", "/var/cache", "/var/log", "/var/lib/apt",
               "/var/lib/dpkg")


def bookworm_chroot() -> Path:
    """A debootstrap minbase Debian 12 with runc (our Depends from the archive), made once."""
    if not (CHROOT / "usr/sbin/runc").exists():
        if not shutil.which("debootstrap"):
            pytest.skip("debootstrap not installed")
        shutil.rmtree(CHROOT, ignore_errors=True)
        made = subprocess.run(["debootstrap", "--variant=minbase", "--include=runc", "bookworm",
                               str(CHROOT), "http://deb.debian.org/debian"],
                              capture_output=True, text=True, timeout=1200)
        if made.returncode != 0:
            pytest.skip(f"debootstrap failed (no mirror?): {made.stdout[-500:]}")
    return CHROOT


def tree_listing(root: Path) -> set[str]:
    found = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = "/" + os.path.relpath(dirpath, root).lstrip(".")
        dirnames[:] = [d for d in dirnames if os.path.join(rel, d) not in CHROOT_SKIP]
        found.update(os.path.join(rel, n) for n in dirnames + filenames)
    return found


def in_chroot(root: Path, script: str, timeout=600, shell="/bin/sh") -> subprocess.CompletedProcess:
    """Run `script` in the chroot with /proc, /sys, /dev, /run mounted (private mount ns).

    The root is bind-mounted on itself: runc needs "/" to be a mount point."""
    mounts = (f"mount --bind {root} {root} && mount -t proc proc {root}/proc && mount --rbind /sys {root}/sys && "
              f"mount --rbind /dev {root}/dev && mount -t tmpfs tmpfs {root}/run && ")
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           mounts + f"exec chroot {root} {shell} -ec '{script}'"],
                          capture_output=True, text=True, timeout=timeout,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C",
                               "DEBIAN_FRONTEND": "noninteractive"})


def test_install_into_clean_debian_12_and_purge(products):
    root = bookworm_chroot()
    in_chroot(root, "dpkg --purge ctrappliance >/dev/null 2>&1 || true")  # an aborted earlier run
    before = tree_listing(root)
    shutil.copy(products["deb"], root / "tmp" / products["deb"].name)
    from runtime_helpers import make_rootfs
    make_rootfs(root / "tmp" / "rootfs")
    # Without locale files, as minimal images are (bookworm's libc-bin has C.utf8), with
    # each locale setting; the daemon runs with LANG=C.UTF-8; last, without /proc.
    versions = "\n".join(f"env -u LC_ALL {' '.join(f'{k}={v}' for k, v in env.items())} "
                          "ctrappliance --version" for env in LOCALES)
    script = f"""
apt-get install -y -qq --no-install-recommends /tmp/{products['deb'].name} >/dev/null
dpkg -i /tmp/{products['deb'].name} >/dev/null  # the upgrade path of the maintainer scripts
mount -t tmpfs no-locales /usr/lib/locale
{versions}
env -u LC_ALL LANG=C.UTF-8 ctrappliance --root /tmp/ca/root --state /tmp/ca/state \
    --address /tmp/ca/ca.sock >/tmp/ca.log 2>&1 &
pid=$!
i=0; until grep -q "successfully booted" /tmp/ca.log; do
    i=$((i+1)); [ $i -lt 300 ] || {{ cat /tmp/ca.log; exit 1; }}; sleep 0.1; done
ctrappliance-ctr --address /tmp/ca/ca.sock version
ctrappliance-ctr --address /tmp/ca/ca.sock run --rm --env PATH=/bin \
    --runc-root /tmp/ca/runc --fifo-dir /tmp/ca/fifo --rootfs /tmp/rootfs chroot-run \
    echo hello from bookworm
kill -TERM $pid; wait $pid || true
umount /proc
ctrappliance --version 2>&1 || echo "exit $?"
mount -t proc proc /proc
dpkg --purge ctrappliance >/dev/null
"""
    try:
        result = in_chroot(root, script)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.count(f"ctrappliance {products['version']}\n") == len(LOCALES), \
            result.stdout
        assert NO_PROC + "exit 1\n" in result.stdout
        assert re.search(rf"Server:\n\s+Version:\s+{re.escape(products['version'])}", result.stdout)
        assert "hello from bookworm\n" in result.stdout
    finally:
        shutil.rmtree(root / "tmp" / "ca", ignore_errors=True)
        shutil.rmtree(root / "tmp" / "rootfs", ignore_errors=True)
        for leftover in (root / "tmp").glob("*"):
            leftover.unlink() if leftover.is_file() else None
    assert tree_listing(root) - before == set()


def test_onefile_runs_a_container_and_gives_shims_itself_to_publish(products, tmp_path,
                                                                    monkeypatch):
    """Shims outlive the daemon: -publish-binary must be the onefile binary, not the
    payload unpacked under $TMPDIR. A wrapper shim first on PATH records its arguments."""
    from runtime_helpers import make_rootfs, run_flags
    wrappers, calls = tmp_path / "wrap", tmp_path / "shim-calls"
    wrappers.mkdir()
    shim = wrappers / "containerd-shim-runc-v2"
    shim.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n'
                    'exec /usr/bin/containerd-shim-runc-v2 "$@"\n')
    shim.chmod(0o755)
    monkeypatch.setattr(daemon_module, "BINARY", str(products["onefile"]))
    d = Daemon(workdir=str(tmp_path / "d"), env={"PATH": f"{wrappers}:/usr/sbin:/sbin"})
    try:
        d.start()
        rootfs = make_rootfs(tmp_path / "rootfs")
        flags = [*run_flags(d.workdir), "--env", "PATH=/bin", "--rootfs", str(rootfs)]
        r = d.ctr("run", "--rm", *flags, "of-run", "echo", "onefile ok", check=False)
        assert (r.returncode, r.stdout) == (0, "onefile ok\n"), r.stderr + d.log()
    finally:
        d.cleanup()
    starts = [line.split() for line in calls.read_text().splitlines() if line.endswith(" start")]
    assert starts, calls.read_text()
    for argv in starts:
        assert argv[argv.index("-publish-binary") + 1] == str(products["onefile"].resolve())


def test_onefile_with_runc_and_shim_runs_a_container_in_a_bare_rootfs(products, tmp_path):
    """The minimal image plus the shim, runc (and its libseccomp) and ctr: a real container."""
    from runtime_helpers import make_rootfs
    helpers = ["/usr/bin/containerd-shim-runc-v2", "/usr/sbin/runc", "/usr/bin/ctr"]
    needed = host_files_needed_of(products["onefile"]) | host_files_needed(products["onefile_dist"])
    for helper in helpers:
        needed |= host_files_needed_of(Path(helper))
    root = make_rootfs(tmp_path / "rootfs")
    for p in sorted(needed) + helpers:
        target = root / p.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(os.path.realpath(p), target)
    for applet in ("grep", "kill", "usleep"):
        (root / "bin" / applet).symlink_to("busybox")
    for d in ("run", "var/lib", "usr/sbin"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    shutil.copy(products["onefile"], root / "ctrappliance")
    make_rootfs(root / "ctr-rootfs")
    script = """
/ctrappliance --root /var/lib/ca --state /run/ca --address /run/ca/ca.sock >/tmp/ca.log 2>&1 &
pid=$!
i=0; until grep -q "successfully booted" /tmp/ca.log; do
    i=$((i+1)); [ $i -lt 300 ] || { cat /tmp/ca.log; exit 1; }; usleep 100000; done
ctr --address /run/ca/ca.sock run --rm --env PATH=/bin --runc-root /run/ca/runc \
    --fifo-dir /tmp/fifo --rootfs /ctr-rootfs bare-run echo hello from a bare rootfs
kill -TERM $pid; wait $pid
"""
    result = in_chroot(root, script, timeout=300, shell="/bin/sh")
    log = (root / "tmp" / "ca.log").read_text(errors="replace") \
        if (root / "tmp" / "ca.log").exists() else ""
    assert result.returncode == 0, result.stdout + result.stderr + log
    assert result.stdout == "hello from a bare rootfs\n", result.stdout + log
    assert "stopped" in log
