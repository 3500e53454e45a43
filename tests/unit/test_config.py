"""The configuration file: TOML v2 (v1 migrated), durations, flags on top, imports, strict
types, and warnings for the keys containerd knows that we do not."""
import dataclasses
import logging
import shutil
import subprocess
import tomllib

import pytest

from appliance import builtins, config
from appliance.config import ConfigError, parse_duration

REGS = builtins.registrations()


def write(tmp_path, text, name="config.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("text,seconds", [("5s", 5), ("100ms", 0.1), ("1m30s", 90),
                                          ("1h", 3600), ("0", 0), ("1.5s", 1.5)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["5", "s", "5x", "1s2"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_missing_default_file_gives_defaults():
    cfg = config.load("/nonexistent/config.toml", REGS)
    assert cfg.root == config.DEFAULT_ROOT and cfg.grpc.address == config.DEFAULT_ADDRESS


def test_explicit_missing_file_is_an_error():
    with pytest.raises(ConfigError, match="not found"):
        config.load("/nonexistent/config.toml", REGS, required=True)


def test_values_and_flags(tmp_path):
    path = write(tmp_path, 'version = 2\nroot = "/r"\n[grpc]\naddress = "/a.sock"\nuid = 7\n')
    cfg = config.load(path, REGS)
    assert (cfg.root, cfg.grpc.address, cfg.grpc.uid) == ("/r", "/a.sock", 7)
    config.apply_flags(cfg, address="/b.sock", root=None, state="/s")
    assert (cfg.root, cfg.grpc.address, cfg.state) == ("/r", "/b.sock", "/s")
    assert cfg.ttrpc_address == "/b.sock.ttrpc"


def test_bad_toml_names_file(tmp_path):
    path = write(tmp_path, "version = = 2")
    with pytest.raises(ConfigError, match=r"config\.toml: invalid TOML"):
        config.load(path, REGS)


def test_bad_value_names_key_and_expectation(tmp_path):
    path = write(tmp_path, 'version = 2\n[grpc]\nuid = "root"\n')
    with pytest.raises(ConfigError, match=r"grpc\.uid: expected an integer"):
        config.load(path, REGS)


def test_bad_timeout(tmp_path):
    path = write(tmp_path, 'version = 2\n[timeouts]\n"io.containerd.timeout.shim.load" = "soon"\n')
    with pytest.raises(ConfigError, match="expected a duration"):
        config.load(path, REGS)


def test_unknown_key_warns_with_file(tmp_path, caplog):
    path = write(tmp_path, 'version = 2\nbogus = 1\n[grpc]\nnope = "x"\n')
    with caplog.at_level(logging.WARNING):
        config.load(path, REGS)
    text = caplog.text
    assert "'bogus'" in text and "'grpc.nope'" in text and path in text


def test_unsupported_and_unknown_plugin_keys_warn_with_their_full_path(tmp_path, caplog):
    path = write(tmp_path, 'version = 2\nplugin_dir = "/opt/plugins"\n'
                           '[plugins."io.containerd.snapshotter.v1.devmapper"]\n'
                           'pool_name = "pool"\nroot_path = "/dm"\n'
                           '[plugins."io.containerd.service.v1.tasks-service"]\n'
                           'rdt_config_file = "/rdt.yaml"\n'
                           '[plugins."io.containerd.grpc.v1.version"]\nfoo = 1\n'
                           '[plugins."io.containerd.runtime.v1.linux"]\nshim = "x"\n')
    with caplog.at_level(logging.WARNING):
        config.load(path, REGS)
    warned = [r.getMessage() for r in caplog.records]
    for key in ("'plugin_dir'", """'plugins."io.containerd.snapshotter.v1.devmapper".pool_name'""",
                """'plugins."io.containerd.service.v1.tasks-service".rdt_config_file'""",
                """'plugins."io.containerd.grpc.v1.version".foo'""",
                """'plugins."io.containerd.runtime.v1.linux".shim'"""):
        assert [w for w in warned if key in w and path in w], (key, warned)
    assert not [w for w in warned if "root_path" in w]   # implemented (the plugin errors anyway)
    assert len(warned) == 5, warned


def test_unsupported_keys_at_their_default_are_quiet(tmp_path, caplog):
    path = write(tmp_path, 'version = 2\nplugin_dir = ""\n'
                           '[plugins."io.containerd.snapshotter.v1.devmapper"]\npool_name = ""\n')
    with caplog.at_level(logging.WARNING):
        config.load(path, REGS)
    assert not caplog.records


@pytest.mark.skipif(not shutil.which("containerd"), reason="containerd 1.6.20 not installed")
def test_every_key_of_containerds_default_config_is_implemented_or_warned(tmp_path, caplog):
    """containerd 1.6.20's `config default`, loaded as it is: each key is one of ours
    (our `config default` has it) or a warning names it or its plugin section."""
    text = subprocess.run(["containerd", "config", "default"], capture_output=True, text=True,
                          check=True, timeout=30).stdout
    path = write(tmp_path, text)
    with caplog.at_level(logging.WARNING):
        config.load(path, REGS)
    warned = " ".join(r.getMessage() for r in caplog.records)
    ours = config.to_table(config.Config(), REGS)
    named = {"stream_processors": config.StreamProcessor(), "proxy_plugins": config.ProxyPlugin()}
    for section, entry in named.items():   # tables of entries named by the user
        ours[section] = {name: dataclasses.asdict(entry)
                         for name in tomllib.loads(text).get(section, {})}
    missing = [key for key in _leaf_paths(tomllib.loads(text))
               if _lookup(ours, key) is None and not any(
                   f"'{_dotted(key[:n])}'" in warned for n in range(1, len(key) + 1))]
    assert not missing, missing


def _leaf_paths(table, prefix=()):
    for key, value in table.items():
        if isinstance(value, dict) and value:
            yield from _leaf_paths(value, prefix + (key,))
        else:
            yield prefix + (key,)


def _lookup(table, key):
    for part in key:
        if not isinstance(table, dict) or part not in table:
            return None
        table = table[part]
    return table


def _dotted(key):
    """A key path as the warnings print it: plugins."io.containerd.x".key"""
    return ".".join(f'"{k}"' if "." in k else k for k in key)


def test_imports_merge_over_main_file(tmp_path):
    write(tmp_path, 'version = 2\n[grpc]\nuid = 5\n', "drop.toml")
    path = write(tmp_path, 'version = 2\nimports = ["drop*.toml"]\nstate = "/st"\n'
                           '[grpc]\nuid = 1\ngid = 2\n')
    cfg = config.load(path, REGS)
    assert (cfg.grpc.uid, cfg.grpc.gid, cfg.state) == (5, 2, "/st")
    assert cfg.imports == [str(tmp_path / "drop.toml")]


def test_v1_is_migrated(tmp_path):
    path = write(tmp_path, 'root = "/r"\ndisabled_plugins = ["healthcheck"]\n'
                           '[plugins.bolt]\ncontent_sharing_policy = "isolated"\n')
    cfg = config.load(path, REGS)
    assert cfg.disabled_plugins == ["io.containerd.grpc.v1.healthcheck"]
    assert "io.containerd.metadata.v1.bolt" in cfg.plugins


def test_migrate_text_keys_every_containerd_plugin_by_uri(tmp_path):
    """The man page's example: [plugins.cri] and [plugins.linux] (runtime v1, listed but not
    provided) migrate to their full names."""
    path = write(tmp_path, 'root = "/r"\n[plugins.bolt]\nx = 1\n'
                           '[plugins.cri]\nsandbox_image = "pause"\n'
                           '[plugins.cri.containerd]\nsnapshotter = "overlayfs"\n'
                           '[plugins.linux]\nshim = "containerd-shim"\n')
    table = tomllib.loads(config.migrate_text(path, REGS))
    assert table["version"] == 2 and table["root"] == "/r"
    assert set(table["plugins"]) == {"io.containerd.metadata.v1.bolt",
                                     "io.containerd.grpc.v1.cri",
                                     "io.containerd.runtime.v1.linux"}
    assert table["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["snapshotter"] == \
        "overlayfs"
    write(tmp_path, config.dumps(table))
    with pytest.raises(ConfigError, match="already version 2"):
        config.migrate_text(path, REGS)


def test_default_round_trips():
    import tomllib
    table = config.to_table(config.Config(), REGS)
    text = config.dumps(table)
    assert tomllib.loads(text) == table
    assert config.decode(config.Config, tomllib.loads(text), "<default>") == config.Config(
        plugins=table["plugins"])
