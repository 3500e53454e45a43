"""The CRI plugin's config section: containerd 1.6.20's keys and defaults, unknown keys
warned about with their full path, the plugin turned off by its URI."""
import logging
import shutil
import subprocess
import tomllib

import pytest

from appliance import builtins, config
from appliance.config import ConfigError

REGS = builtins.registrations()
CRI = "io.containerd.grpc.v1.cri"
EXTENSIONS = {"image_pull_progress_timeout"}   # containerd 1.7's: README intended differences


def _flat(table: dict, prefix="") -> dict:
    out = {}
    for key, value in table.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


@pytest.mark.skipif(not shutil.which("containerd"), reason="needs Debian's containerd")
def test_config_default_cri_section_is_containerds():
    theirs = tomllib.loads(subprocess.run(["containerd", "config", "default"], check=True,
                                          capture_output=True, text=True).stdout)
    ours = config.to_table(config.Config(), REGS)
    mine = _flat(ours["plugins"][CRI])
    assert {k: v for k, v in mine.items() if k not in EXTENSIONS} == _flat(theirs["plugins"][CRI])
    assert set(mine) - set(_flat(theirs["plugins"][CRI])) == EXTENSIONS


def test_unknown_cri_keys_warn_with_their_full_path(tmp_path, caplog):
    path = tmp_path / "c.toml"
    path.write_text(f'version = 2\n[plugins."{CRI}"]\n  sandbox_imag = "x"\n'
                    f'[plugins."{CRI}".registry.configs."r.example".tls]\n  ca_fil = "/ca"\n')
    with caplog.at_level(logging.WARNING):
        cfg = config.load(str(path), REGS)
    text = caplog.text
    assert f'plugins."{CRI}".sandbox_imag' in text
    assert f'plugins."{CRI}".registry.configs.r.example.tls.ca_fil' in text
    reg = next(r for r in REGS if r.uri == CRI)
    assert config.plugin_config(cfg, reg, str(path)).registry.configs["r.example"].tls.ca_file == ""


def test_cri_disabled_by_uri_or_v1_id(tmp_path):
    v2 = tmp_path / "v2.toml"
    v2.write_text(f'version = 2\ndisabled_plugins = ["{CRI}"]\n')
    assert config.load(str(v2), REGS).disabled_plugins == [CRI]
    v1 = tmp_path / "v1.toml"
    v1.write_text('disabled_plugins = ["cri"]\n')
    assert config.load(str(v1), REGS).disabled_plugins == [CRI]
    short = tmp_path / "short.toml"   # containerd 1.6.20 refuses a v1 id in a v2 config
    short.write_text('version = 2\ndisabled_plugins = ["cri"]\n')
    with pytest.raises(ConfigError, match='invalid disabled plugin URI .cri. expect'):
        config.load(str(short), REGS)
