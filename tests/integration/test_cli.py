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


V1 = 'root = "/srv/r"\n[plugins.bolt]\ncontent_sharing_policy = "shared"\n[plugins.cri]\n'


def test_config_migrate_prints_version_2_and_leaves_the_file(tmp_path):
    path = tmp_path / "v1.toml"
    path.write_text(V1)
    for extra in ((), ("-o", "-")):   # stdout by default and for "-", as containerd 2.x
        r = run_cli("--config", str(path), "config", "migrate", *extra, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        table = tomllib.loads(r.stdout)
        assert table["version"] == 2 and table["root"] == "/srv/r"
        assert set(table["plugins"]) == {"io.containerd.metadata.v1.bolt",
                                         "io.containerd.grpc.v1.cri"}
    assert path.read_text() == V1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v1.toml"]   # no file named "-"


def test_config_migrate_output_and_in_place_with_backup(tmp_path):
    path, out = tmp_path / "v1.toml", tmp_path / "v2.toml"
    path.write_text(V1)
    r = run_cli("--config", str(path), "config", "migrate", "-o", str(out))
    assert r.returncode == 0 and r.stdout == "", r.stderr
    assert tomllib.loads(out.read_text())["version"] == 2 and path.read_text() == V1
    r = run_cli("--config", str(path), "config", "migrate", "--in-place")
    assert r.returncode == 0 and r.stdout == "", r.stderr
    assert path.read_text() == out.read_text()
    assert (tmp_path / "v1.toml.bak").read_text() == V1
    again = run_cli("--config", str(path), "config", "migrate", "--in-place")
    assert again.returncode == 1 and "already version 2" in again.stderr
    assert (tmp_path / "v1.toml.bak").read_text() == V1


def test_version_flag():
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.startswith("ctrappliance ")
