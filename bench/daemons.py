"""Start and stop containerd and ctrappliance on private paths, with boot timings.

Each target lives in its own work dir (root, state, socket, log); nothing touches
/run/containerd or /var/lib/containerd (the 1.6 shim socket dir aside, which cannot
be configured). Only processes we started are stopped, by pid.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from appliance.tools.stress import shim_pids

REPO = Path(__file__).resolve().parent.parent
CTR = shutil.which("ctr") or "/usr/bin/ctr"
CONTAINERD = shutil.which("containerd") or "/usr/bin/containerd"
OURS = os.environ.get("CTRAPPLIANCE_BIN", str(REPO / ".venv" / "bin" / "ctrappliance"))
BOOT_TIMEOUT = 30.0
CRI_TABLE = 'plugins."io.containerd.grpc.v1.cri"'
# what containerd_config puts in containerd's CRI table, for ours when it gets CRI keys
OURS_CRI_KEYS = ('  stream_server_port = "0"\n  netns_mounts_under_state_dir = true\n'
                 '  restrict_oom_score_adj = true\n')
BOOTED_RE = re.compile(r"successfully booted in ([0-9.]+)s")
ENV = dict(os.environ, PATH=os.environ.get("PATH", "/usr/bin:/bin") + ":/usr/sbin:/sbin",
           LC_ALL="C")


def containerd_config(workdir: Path, root: Path, state: Path, address: str,
                      cri: bool = False) -> str:
    """A private containerd 1.6 config: own root, state and socket; CRI off, or on with
    private CNI dirs and network namespaces under the state dir."""
    (Path(workdir) / "opt").mkdir(parents=True, exist_ok=True)
    text = f'''version = 2
root = "{root}"
state = "{state}"
disabled_plugins = [{'' if cri else '"io.containerd.grpc.v1.cri"'}]
[grpc]
  address = "{address}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{workdir}/opt"
[plugins."io.containerd.runtime.v1.linux"]
  runtime_root = "{state}/runc-v1"
'''
    if cri:
        text += (f'[plugins."io.containerd.grpc.v1.cri"]\n'
                 f'  stream_server_port = "0"\n  netns_mounts_under_state_dir = true\n'
                 f'  restrict_oom_score_adj = true\n'
                 f'[plugins."io.containerd.grpc.v1.cri".cni]\n'
                 f'  bin_dir = "{workdir}/cni/bin"\n'
                 f'  conf_dir = "{workdir}/cni/net.d"\n')
    return text


class Target:
    """One daemon under test. `kind` is "containerd" or "ctrappliance"; `name` labels its
    figures (the kind, or another ctrappliance checkout's name: `--targets old=DIR`)."""

    def __init__(self, kind: str, workdir: Path, binary: str | None = None,
                 root_fs: str | None = None, name: str | None = None):
        self.kind = kind
        self.name = name or kind
        self.workdir = Path(workdir)
        self.binary = binary or (CONTAINERD if kind == "containerd" else OURS)
        self.root_fs = root_fs   # None: the workdir's filesystem; "tmpfs" or "ext4": a fresh one
        self.cri = False         # containerd: CRI plugin on (ours always serves it)
        self.cri_config = ("", "")   # (keys inside the CRI table, tables after it): both
        self.root = self.workdir / "root"
        self.state = self.workdir / "state"
        self.address = str(self.workdir / f"{kind}.sock")
        self.log_path = self.workdir / f"{kind}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _argv(self) -> list[str]:
        if self.kind == "ctrappliance":
            config = self.workdir / "ctrappliance.toml"   # a private opt path, as containerd's
            keys, tables = self.cri_config
            config.write_text(f'version = 2\n[plugins."io.containerd.internal.v1.opt"]\n'
                              f'  path = "{self.workdir}/opt"\n'
                              + (f'[{CRI_TABLE}]\n{OURS_CRI_KEYS}{keys}{tables}'
                                 if keys or tables else ""))
            return [self.binary, "--config", str(config), "--root", str(self.root),
                    "--state", str(self.state), "--address", self.address]
        config = self.workdir / "containerd.toml"
        text = containerd_config(self.workdir, self.root, self.state, self.address, self.cri)
        keys, tables = self.cri_config
        if self.cri:
            text = text.replace(f"[{CRI_TABLE}]\n", f"[{CRI_TABLE}]\n{keys}", 1) + tables
        config.write_text(text)
        return [self.binary, "--config", str(config)]

    def start(self) -> dict:
        """Spawn the daemon and wait until `ctr version` answers; returns boot timings (s)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.root_fs and not os.path.ismount(self.root):
            self._mount_fresh_root()
        argv = self._argv()
        for path in (self.address, self.address + ".ttrpc"):
            if os.path.exists(path):
                os.unlink(path)
        log = open(self.log_path, "wb")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, env=ENV, start_new_session=True)
        log.close()
        deadline = t0 + BOOT_TIMEOUT
        while not socket_accepts(self.address):
            self._check_alive(deadline)
            time.sleep(0.002)
        t_socket = time.perf_counter()
        while self.ctr("version", check=False).returncode != 0:
            self._check_alive(deadline)
            time.sleep(0.005)
        t_version = time.perf_counter()
        booted = BOOTED_RE.findall(self.log())
        return {"spawn_to_socket": t_socket - t0, "spawn_to_version": t_version - t0,
                "booted_in": float(booted[-1]) if booted else None}

    def _mount_fresh_root(self):
        """A new tmpfs, or a new ext4 as mkfs.ext4 makes it by default (with a journal) on a
        sparse loop file, so that neither earlier runs nor the host's mount options count."""
        self.root.mkdir(parents=True, exist_ok=True)
        if self.root_fs == "tmpfs":
            argv = ["mount", "-t", "tmpfs", "-o", "size=6g", "bench-root", str(self.root)]
        else:
            image = self.workdir / "root.ext4"
            with open(image, "wb") as f:
                f.truncate(8 << 30)
            subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, timeout=120)
            argv = ["mount", "-o", "loop", str(image), str(self.root)]
        subprocess.run(argv, check=True, timeout=60)

    def _check_alive(self, deadline):
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()[-2000:]}")
        if time.perf_counter() > deadline:
            self.stop()
            raise TimeoutError(f"{self.name} did not boot in {BOOT_TIMEOUT}s")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=20.0) -> float | None:
        """SIGTERM → exit time (s); SIGKILL after `timeout`. Leftover shims of our socket go too."""
        took = None
        if self.running():
            t0 = time.perf_counter()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
                took = time.perf_counter() - t0
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for pid in shim_pids(self.address):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return took

    def cleanup(self):
        self.stop()
        unmount_below(self.workdir)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def ctr(self, *args, namespace="bench", check=True, input=None, timeout=120):
        argv = [CTR, "--address", self.address, "--namespace", namespace, *args]
        result = subprocess.run(argv, capture_output=True, text=isinstance(input, (str, type(None))),
                                input=input, timeout=timeout, env=ENV)
        if check and result.returncode != 0:
            raise CtrError(argv, result)
        return result

    def memory(self) -> dict:
        """VmRSS, VmHWM (MiB), threads and CPU seconds of the daemon process."""
        return process_memory(self.pid)


class CtrError(Exception):
    def __init__(self, argv, result):
        out = result.stdout + result.stderr
        if isinstance(out, bytes):
            out = out.decode(errors="replace")
        self.output = out.strip()
        super().__init__(f"{' '.join(argv[3:])}: exit {result.returncode}: {self.output[-500:]}")


def checkout_binary(checkout: Path, wrapper: Path) -> str:
    """How to run another ctrappliance checkout: its own `.venv/bin/ctrappliance`, or a script
    (written at `wrapper`) that runs this venv's Python on that checkout's sources. The
    checkout needs its generated files then (`appliance/_proto`, the compiled extensions:
    `./scripts/dev setup` there, or a copy of this tree's when they are the same)."""
    own = checkout / ".venv" / "bin" / "ctrappliance"
    if own.exists():
        return str(own)
    if not (checkout / "appliance" / "cli.py").exists():
        raise ValueError(f"{checkout}: not a ctrappliance checkout")
    # a script, not a shell wrapper: the daemon gives its own path to shims as -publish-binary
    wrapper.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(checkout)!r})\n"
                       "from appliance.cli import main\nsys.exit(main())\n")
    wrapper.chmod(0o755)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(checkout / "appliance")],
                   capture_output=True, timeout=300)   # the bench runs without writing bytecode
    return str(wrapper)


def process_memory(pid: int) -> dict:
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                fields[key] = int(value.split()[0])
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return {"rss_mib": fields["VmRSS"] / 1024, "hwm_mib": fields["VmHWM"] / 1024,
            "pss_mib": pss_mib(pid), "threads": fields["Threads"],
            "cpu_s": (int(stat[11]) + int(stat[12])) / ticks}


def pss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def socket_accepts(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def unmount_below(path: Path):
    """Unmount everything mounted at or below `path`, deepest first."""
    prefix = str(path).rstrip("/")
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f]
    points = [p for p in points if p == prefix or p.startswith(prefix + "/")]
    for point in sorted(points, key=len, reverse=True):
        if subprocess.run(["umount", point], capture_output=True).returncode:
            subprocess.run(["umount", "-l", point], capture_output=True)


def remove_empty_cgroups(namespace: str):
    """runc leaves /sys/fs/cgroup/*/<ns> behind (ctr's default cgroup path is /<ns>/<id>)."""
    base = Path("/sys/fs/cgroup")
    for d in list(base.glob(f"*/{namespace}")) + [base / namespace]:
        try:
            d.rmdir()
        except OSError:
            pass
