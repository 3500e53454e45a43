"""Daemon configuration: TOML v2 (v1 migrated), `imports` drop-ins, flags on top.

Decoding is strict about types and lenient about unknown keys: a wrong type is a
`ConfigError` naming the file and key, an unknown key a warning naming both. A key
containerd has and we do not implement is declared with `unsupported(default, why)`:
its default is what we do, any other value is a warning naming the key's full path.
"""
from __future__ import annotations

import dataclasses
import glob
import logging
import os
import re
import shutil
import tomllib
import typing
from dataclasses import dataclass, field

log = logging.getLogger("appliance.config")

DEFAULT_ROOT = "/var/lib/ctrappliance"
DEFAULT_STATE = "/run/ctrappliance"
DEFAULT_ADDRESS = "/run/ctrappliance/ctrappliance.sock"
DEFAULT_CONFIG_PATH = "/etc/ctrappliance/config.toml"
MiB = 1 << 20

DEFAULT_TIMEOUTS = {
    "io.containerd.timeout.bolt.open": "5s",
    "io.containerd.timeout.shim.cleanup": "5s",
    "io.containerd.timeout.shim.load": "5s",
    "io.containerd.timeout.shim.shutdown": "3s",
    "io.containerd.timeout.task.state": "2s",
}


class ConfigError(Exception):
    """A config file that cannot be used; the message is one line for the user."""


def unsupported(default, why: str):
    """A dataclass field for a containerd key we accept but do not implement: its
    (immutable) default is what we do; `decode` warns about any other value."""
    return field(default=default, metadata={"unsupported": why})


@dataclass
class GRPCConfig:
    address: str = DEFAULT_ADDRESS
    tcp_address: str = ""
    tcp_tls_ca: str = ""
    tcp_tls_cert: str = ""
    tcp_tls_key: str = ""
    uid: int = 0
    gid: int = 0
    max_recv_message_size: int = 16 * MiB
    max_send_message_size: int = 16 * MiB


@dataclass
class TTRPCConfig:
    address: str = ""
    uid: int = 0
    gid: int = 0


@dataclass
class DebugConfig:
    address: str = ""
    uid: int = 0
    gid: int = 0
    level: str = ""
    format: str = ""


@dataclass
class MetricsConfig:
    address: str = ""
    grpc_histogram: bool = False


@dataclass
class CgroupConfig:
    path: str = ""


@dataclass
class ProxyPlugin:
    type: str = ""
    address: str = ""
    platform: str = ""


@dataclass
class StreamProcessor:
    accepts: list[str] = field(default_factory=list)
    returns: str = ""
    path: str = ""
    args: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)


@dataclass
class Config:
    version: int = 2
    root: str = DEFAULT_ROOT
    state: str = DEFAULT_STATE
    temp: str = ""
    plugin_dir: str = unsupported("", "Go plugins (.so) cannot be loaded by ctrappliance")
    disabled_plugins: list[str] = field(default_factory=list)
    required_plugins: list[str] = field(default_factory=list)
    oom_score: int = 0
    imports: list[str] = field(default_factory=list)
    grpc: GRPCConfig = field(default_factory=GRPCConfig)
    ttrpc: TTRPCConfig = field(default_factory=TTRPCConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    cgroup: CgroupConfig = field(default_factory=CgroupConfig)
    timeouts: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_TIMEOUTS))
    proxy_plugins: dict[str, ProxyPlugin] = field(default_factory=dict)
    stream_processors: dict[str, StreamProcessor] = field(default_factory=dict)
    # Raw `[plugins."<uri>"]` tables; each plugin decodes its own with `plugin_config`.
    plugins: dict[str, dict] = field(default_factory=dict)

    def timeout(self, key: str) -> float:
        """A `[timeouts]` entry in seconds (0 means: the caller's own bound)."""
        return parse_duration(self.timeouts.get(key, DEFAULT_TIMEOUTS.get(key, "0s")))

    @property
    def ttrpc_address(self) -> str:
        return self.ttrpc.address or self.grpc.address + ".ttrpc"


# --- durations ------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Go's time.ParseDuration, in seconds: "1m30s", "100ms", "0"."""
    text = str(text).strip()
    if text in ("0", ""):
        return 0.0
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(body):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if pos != len(body) or not body:
        raise ValueError(f"invalid duration {text!r}")
    return sign * total


# --- decoding ---------------------------------------------------------------

def decode(cls, data, where: str, path: str = ""):
    """Build dataclass `cls` from a TOML table, checking types key by key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: {path or 'config'}: expected a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        key_path = f"{path}.{key}" if path else key
        if key not in fields:
            log.warning("unknown config key %r in %s", key_path, where)
            continue
        kwargs[key] = _convert(hints[key], value, where, key_path)
    out = cls(**kwargs)
    for key in kwargs:
        why = fields[key].metadata.get("unsupported")
        if why and kwargs[key] != _default(fields[key]):
            log.warning("config key %r in %s is not supported (%s): ignored",
                        f"{path}.{key}" if path else key, where, why)
    return out


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def _convert(hint, value, where, key_path):
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return decode(hint, value, where, key_path)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: {key_path}: expected a list, got {value!r}")
        return [_convert(item, v, where, f"{key_path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, item = typing.get_args(hint)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {key_path}: expected a table, got {value!r}")
        return {k: _convert(item, v, where, f"{key_path}.{k}") for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key_path}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {key_path}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: {key_path}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {key_path}: expected a string, got {value!r}")
        return value
    if hint is dict or hint is typing.Any:
        return value
    raise TypeError(f"unsupported config type {hint}")


def plugin_config(cfg: Config, registration, where: str = "config"):
    """The decoded `[plugins."<uri>"]` section of one registration (defaults if absent)."""
    if registration.config is None:
        return None
    section = cfg.plugins.get(registration.uri, {})
    return decode(registration.config, section, where, f'plugins."{registration.uri}"')


# --- loading ----------------------------------------------------------------

def _read_toml(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None


def migrate_v1(data: dict, registrations) -> dict:
    """Rewrite a version 1 table as version 2: plugin sections keyed by URI."""
    by_id = {}
    for uri in [reg.uri for reg in registrations]:
        by_id.setdefault(uri.rsplit(".", 1)[1], uri)
    out = dict(data)
    out["version"] = 2
    plugins = {}
    for key, section in data.get("plugins", {}).items():
        plugins[by_id.get(key, key)] = section
    if plugins:
        out["plugins"] = plugins
    for key in ("disabled_plugins", "required_plugins"):
        if key in data:
            out[key] = [by_id.get(p, p) for p in data[key]]
    return out


def _merge(base: dict, top: dict) -> dict:
    """Tables merge key by key (top wins); everything else is replaced."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_table(path: str, registrations) -> dict:
    """The merged TOML table of `path` and its imports, migrated to version 2."""
    data = _load_one(path, registrations)
    imported = []
    for pattern in data.get("imports", []):
        if not isinstance(pattern, str):
            raise ConfigError(f"{path}: imports: expected a list of strings")
        pattern = pattern if os.path.isabs(pattern) else os.path.join(os.path.dirname(path), pattern)
        for name in _resolve_import(pattern):
            if name != path and name not in imported:
                imported.append(name)
                data = _merge(data, {k: v for k, v in _load_one(name, registrations).items()
                                     if k != "imports"})
    if imported:
        data["imports"] = imported
    return data


def _resolve_import(pattern: str) -> list[str]:
    """As containerd: a pattern with "*" may match nothing; any other name must exist."""
    if "*" in pattern:
        return sorted(glob.glob(pattern))
    pattern = os.path.normpath(pattern)
    if not os.path.exists(pattern):
        raise ConfigError(f"failed to load TOML: {pattern}: open {pattern}: "
                          "no such file or directory")
    return [pattern]


def _load_one(path, registrations) -> dict:
    data = _read_toml(path)
    version = data.get("version", 1)
    if version == 1:
        data = migrate_v1(data, registrations)
    elif version != 2:
        raise ConfigError(f"{path}: version: expected 1 or 2, got {version!r}")
    else:   # version 2 names plugins by URI only (a v1 id such as "cri" is refused)
        for key in ("disabled_plugins", "required_plugins"):
            for uri in data.get(key, []):
                if not isinstance(uri, str) or len(uri.split(".")) < 4:
                    raise ConfigError(f"{path}: invalid {key.split('_')[0]} plugin URI "
                                      f"{uri!r} expect io.containerd.x.vx")
    return data


def load(path: str | None, registrations, required: bool = False) -> Config:
    """The config from `path` (defaults when it does not exist and is not required)."""
    if path is None or (not required and not os.path.exists(path)):
        return Config()
    cfg = decode(Config, load_table(path, registrations), path)
    for key, value in cfg.timeouts.items():
        try:
            parse_duration(value)
        except ValueError:
            raise ConfigError(f"{path}: timeouts.{key}: expected a duration like \"5s\", "
                              f"got {value!r}") from None
    known = {r.uri: r for r in registrations}
    for uri, section in cfg.plugins.items():
        if uri not in known:
            log.warning("unknown plugin section %r in %s", f'plugins."{uri}"', path)
        elif not isinstance(section, dict):
            raise ConfigError(f'{path}: plugins."{uri}": expected a table')
        elif known[uri].config is None:
            for key in section:
                log.warning("unknown config key %r in %s", f'plugins."{uri}".{key}', path)
    for reg in registrations:  # type-check every section now, not at plugin init
        plugin_config(cfg, reg, path)
    return cfg


def apply_flags(cfg: Config, *, address=None, root=None, state=None, log_level=None) -> Config:
    """Flags beat the file."""
    if address:
        cfg.grpc.address = address
    if root:
        cfg.root = root
    if state:
        cfg.state = state
    if log_level:
        cfg.debug.level = log_level
    return cfg


# --- writing ----------------------------------------------------------------

def to_table(cfg: Config, registrations, with_defaults: bool = True) -> dict:
    """The config as a TOML-ready table; every plugin section is filled with its defaults."""
    table = dataclasses.asdict(cfg)
    plugins = {}
    for reg in registrations:
        if reg.config is None:
            continue
        section = dataclasses.asdict(plugin_config(cfg, reg))
        if with_defaults or section:
            plugins[reg.uri] = section
    for uri, section in cfg.plugins.items():
        plugins.setdefault(uri, section)
    table["plugins"] = plugins
    return _drop_none(table)


def _drop_none(value):
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value if v is not None]
    return value


def dumps(table: dict) -> str:
    import tomli_w
    return tomli_w.dumps(table)


def migrate_text(path: str, registrations) -> str:
    """A version 1 file as version 2 TOML text (plugin sections keyed by URI)."""
    data = _read_toml(path)
    if data.get("version", 1) != 1:
        raise ConfigError(f"{path}: already version {data.get('version')}; nothing to migrate")
    migrated = migrate_v1(data, registrations)
    decode(Config, migrated, path)  # refuse to write something we could not load
    return dumps(migrated)


def write_file(target: str, text: str, backup: bool = False) -> None:
    """Replace `target` atomically; with `backup`, the old file is kept as `<target>.bak`."""
    try:
        if backup:
            shutil.copy2(target, target + ".bak")
        with open(target + ".tmp", "w") as f:
            f.write(text)
        os.replace(target + ".tmp", target)
    except OSError as exc:
        raise ConfigError(f"{exc.filename}: {exc.strerror}") from None
