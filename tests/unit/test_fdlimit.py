"""fdlimit: the daemon's soft RLIMIT_NOFILE raised to the hard limit, children given the
original back through prlimit(1) (so that subprocess can vfork: no preexec_fn), or a
preexec_fn where no prlimit(1) is installed."""
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import os, resource, subprocess
    from appliance.process import fdlimit
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))
    fdlimit.raise_soft_limit()
    print(resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard))
    print(fdlimit.child_preexec() is None)
    print(subprocess.run(fdlimit.child_argv(["sh", "-c", "ulimit -Sn"]), capture_output=True,
                         text=True, preexec_fn=fdlimit.child_preexec()).stdout.strip())
    r, w = os.pipe()
    argv = fdlimit.child_argv(["sh", "-c", "ulimit -Sn"])
    pid = os.posix_spawnp(argv[0], argv, dict(os.environ),
                          file_actions=[(os.POSIX_SPAWN_DUP2, w, 1)])
    os.close(w)
    os.waitpid(pid, 0)
    print(os.read(r, 100).decode().strip())
    fdlimit._prlimit = None   # no prlimit(1) installed: a preexec_fn instead
    print(fdlimit.child_argv(["sh"]) == ["sh"])
    print(subprocess.run(fdlimit.child_argv(["sh", "-c", "ulimit -Sn"]), capture_output=True,
                         text=True, preexec_fn=fdlimit.child_preexec()).stdout.strip())
""")


def test_raised_for_the_daemon_and_given_back_to_children():
    hard = int(subprocess.run(["sh", "-c", "ulimit -Hn"], capture_output=True,
                              text=True).stdout)
    assert hard > 512
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["True", "True", "512", "512", "True", "512"]
