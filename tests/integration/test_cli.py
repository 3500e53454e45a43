"""The non-daemon subcommands: oci-hook and config migrate, run as a user would."""
import json
import tomllib

from daemon import run_cli


def test_oci_hook_templates_state_and_passes_it_on_stdin(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps({"root": {"path": "rootfs"}}))
    state = {"ociVersion": "1.0.2", "id": "c1", "pid": 4242, "bundle": str(bundle),
             "annotations": {"team": "blue"}}
    out = tmp_path / "out"
    r = run_cli("oci-hook", "--", "/bin/sh", "-c",
                f'echo "{{{{id}}}} {{{{pid}}}} {{{{rootfs}}}} {{{{annotation "team"}}}}" > {out}; '
                f"cat >> {out}", input=json.dumps(state))
    assert r.returncode == 0, r.stderr
    first, rest = out.read_text().split("\n", 1)
    assert first == f"c1 4242 {bundle}/rootfs blue"
    assert json.loads(rest) == state


def test_oci_hook_rejects_bad_state():
    r = run_cli("oci-hook", "--", "/bin/true", input="not json")
    assert r.returncode != 0 and "invalid state" in r.stderr


def test_config_migrate_writes_version_2(tmp_path):
    path = tmp_path / "v1.toml"
    path.write_text('root = "/srv/r"\n[plugins.bolt]\ncontent_sharing_policy = "shared"\n')
    r = run_cli("--config", str(path), "config", "migrate")
    assert r.returncode == 0, r.stderr
    table = tomllib.loads(path.read_text())
    assert table["version"] == 2 and table["root"] == "/srv/r"
    assert "io.containerd.metadata.v1.bolt" in table["plugins"]
    again = run_cli("--config", str(path), "config", "migrate")
    assert again.returncode != 0 and "already version 2" in again.stderr


def test_version_flag():
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.startswith("ctrappliance ")
