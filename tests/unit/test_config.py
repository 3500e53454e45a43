import logging

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


def test_migrate_file_writes_v2(tmp_path):
    path = write(tmp_path, 'root = "/r"\n[plugins.bolt]\nx = 1\n')
    config.migrate_file(path, REGS)
    text = open(path).read()
    assert "version = 2" in text and 'io.containerd.metadata.v1.bolt' in text
    with pytest.raises(ConfigError, match="already version 2"):
        config.migrate_file(path, REGS)


def test_default_round_trips():
    import tomllib
    table = config.to_table(config.Config(), REGS)
    text = config.dumps(table)
    assert tomllib.loads(text) == table
    assert config.decode(config.Config, tomllib.loads(text), "<default>") == config.Config(
        plugins=table["plugins"])
