"""The AppArmor profile CRI containers get by default where the host runs AppArmor, under the
name containerd gives it (`cri-containerd.apparmor.d`), loaded with apparmor_parser when it is
not loaded yet.

Written here from what a container must not do to its host: mount, write kernel settings in
/proc (its own namespaced ones under /proc/sys/kernel/shm* aside) or sysfs (cgroupfs aside),
read firmware, security-module or kernel-memory interfaces, or signal and trace processes of
other profiles. Everything else (network, capabilities the runtime left it, its own files) is
allowed.
"""
from __future__ import annotations

import os
import subprocess

NAME = "cri-containerd.apparmor.d"
PROFILES = "/sys/kernel/security/apparmor/profiles"
PARSERS = ("/sbin/apparmor_parser", "/usr/sbin/apparmor_parser")

PROFILE = f"""#include <tunables/global>

profile {NAME} flags=(attach_disconnected,mediate_deleted) {{
  #include <abstractions/base>

  network,
  capability,
  file,
  umount,

  # only among containers under this profile (and from the host's unconfined processes)
  signal (receive) peer=unconfined,
  signal (send,receive) peer={NAME},
  ptrace (trace,read,tracedby,readby) peer={NAME},

  deny mount,

  # /proc: host-wide files are not writable; kernel memory and the kernel log are hidden
  deny @{{PROC}}/* w,
  deny @{{PROC}}/{{acpi,bus,driver,fs,irq,scsi,sysvipc,tty}}/** w,
  deny @{{PROC}}/{{kcore,kmem,mem,kmsg,kallsyms,sysrq-trigger}} rwklx,
  # sysctls outside the network namespace (runc sets the pod's before the profile applies)
  deny @{{PROC}}/sys/{{abi,crypto,debug,dev,fs,kernel,user,vm}}/** w,

  # sysfs is the host's: nothing writable, firmware and security modules hidden
  deny /sys/** wklx,
  deny /sys/firmware/** rwklx,
  deny /sys/kernel/security/** rwklx,
}}
"""


def loaded(name: str) -> bool:
    try:
        with open(PROFILES) as f:
            return any(line.startswith(name + " (") for line in f)
    except OSError:
        return False


def parser() -> str | None:
    return next((p for p in PARSERS if os.path.exists(p)), None)


def load_default() -> None:
    """Load (or replace) the default profile in the kernel; ValueError says why not."""
    binary = parser()
    if binary is None:
        raise ValueError("apparmor_parser not found")
    result = subprocess.run([binary, "-Kr"], input=PROFILE, capture_output=True, text=True,
                            timeout=60)
    if result.returncode != 0:
        raise ValueError(f"load apparmor profile {NAME}: {result.stderr.strip()}")


def ensure_default() -> None:
    if not loaded(NAME):
        load_default()
