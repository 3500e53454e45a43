"""Start-up failures a user makes: exit status 1 and one clear line, never a traceback.

Where containerd 1.6.20 refuses the same thing, the message is containerd's.
"""
import shutil
import subprocess

import pytest

from daemon import BINARY


def fails_with(args, prefix=()):
    """The one error line of a daemon that must not start (`prefix`: e.g. setpriv)."""
    result = subprocess.run([*prefix, BINARY, *args], capture_output=True, text=True,
                            timeout=60)
    text = result.stdout + result.stderr
    assert "Traceback" not in text, text
    assert result.returncode == 1, text
    errors = [line for line in text.splitlines()
              if "level=error" in line or line.startswith("ctrappliance: ")]
    assert len(errors) == 1, text
    return errors[0]


def private(tmp_path, root=None, state=None, address=None):
    return ["--root", str(root or tmp_path / "root"), "--state", str(state or tmp_path / "state"),
            "--address", str(address or tmp_path / "ca.sock")]


def test_root_that_is_a_file(tmp_path):
    (tmp_path / "file").write_text("")
    line = fails_with(private(tmp_path, root=tmp_path / "file"))
    assert f'msg="mkdir {tmp_path}/file: not a directory"' in line   # containerd's words


def test_socket_directory_that_cannot_be_created(tmp_path):
    (tmp_path / "file").write_text("")
    config = tmp_path / "config.toml"   # the plugins load first: the opt dir stays private
    config.write_text(f'version = 2\n[plugins."io.containerd.internal.v1.opt"]\n'
                      f'path = "{tmp_path}/opt"\n')
    line = fails_with(["--config", str(config),
                       *private(tmp_path, address=tmp_path / "file" / "ca.sock")])
    assert f"mkdir {tmp_path}/file: not a directory" in line
    assert "failed to get listener" in line


def test_root_equal_to_state(tmp_path):
    line = fails_with(private(tmp_path, root=tmp_path / "same", state=f"{tmp_path}/same/"))
    assert 'msg="root and state must be different paths"' in line   # containerd's words
    assert not (tmp_path / "same").exists()


def test_unknown_content_sharing_policy(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('version = 2\n[plugins."io.containerd.metadata.v1.bolt"]\n'
                      'content_sharing_policy = "bogus"\n')
    line = fails_with(["--config", str(config), *private(tmp_path)])
    assert "unknown policy: bogus: invalid argument" in line   # containerd's words


def test_missing_imports_file(tmp_path):
    missing = tmp_path / "missing.toml"
    config = tmp_path / "config.toml"
    config.write_text(f'version = 2\nimports = ["{missing}"]\n')
    line = fails_with(["--config", str(config), *private(tmp_path)])
    assert line == (f"ctrappliance: failed to load TOML: {missing}: open {missing}: "
                    "no such file or directory")   # containerd's words


@pytest.mark.skipif(not shutil.which("setpriv"), reason="setpriv (util-linux) not installed")
def test_not_root_on_the_default_paths():
    """As nobody nothing can be created or changed, so the host's paths stay untouched."""
    line = fails_with([], prefix=("setpriv", "--reuid=65534", "--regid=65534",
                                  "--clear-groups"))
    assert "/var/lib/ctrappliance: " in line and "must run as root" in line
