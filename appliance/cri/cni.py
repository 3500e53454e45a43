"""Pod networking through CNI plugins, as containerd's CRI drives them (go-cni over libcni).

Networks: `cni-loopback` on `lo` first (as containerd adds it), then the first
`max_conf_num` files of `cni.conf_dir` (.conf, .conflist, .json, by name) on eth0, eth1, ...
The network is ready with the loopback and at least one file loaded. The conf dir is looked at
again on each use (a stat of the dir and its conf files), where containerd watches it with
inotify.

Each plugin runs per the CNI spec: CNI_* environment, the plugin's conf on stdin with `name`,
`cniVersion`, `prevResult` (the previous plugin's result) and `runtimeConfig` (only the
capabilities the plugin declares: portMappings, dns, bandwidth from the pod's
kubernetes.io/{ingress,egress}-bandwidth annotations, io.kubernetes.cri.pod-annotations).
What ADD was given and returned is cached per sandbox under the manager's directory before and
after each network, so DEL runs the same plugins with the same arguments and prevResult after
a conf change or a daemon restart.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from fractions import Fraction

from ..errdefs import ApplianceError
from ..process import spawn
from . import gotemplate
from .config import CRIConfig
from .netns import is_netns

log = logging.getLogger("appliance.cri.cni")

PLUGIN_SECONDS = 60.0               # one plugin exec; containerd has only the RPC's deadline
CONF_EXTENSIONS = (".conf", ".conflist", ".json")
TEMPLATE_OUTPUT = "10-containerd-net.conflist"   # containerd's name for the rendered template
DEFAULT_IFNAME = "eth0"
IF_PREFIX = "eth"
NOT_INITIALIZED = "cni plugin not initialized"
NOT_READY_REASON = "NetworkPluginNotReady"
POD_ANNOTATIONS = "io.kubernetes.cri.pod-annotations"
LOOPBACK = {"cniVersion": "0.3.1", "name": "cni-loopback", "plugins": [{"type": "loopback"}]}
LOOPBACK_SOURCE = ('{\n"cniVersion": "0.3.1",\n"name": "cni-loopback",\n"plugins": [{\n'
                   '  "type": "loopback"\n}]\n}')   # go-cni's literal, as Status shows it
MIN_NETWORKS = 2                    # the loopback and one network, as containerd counts


class CNIError(ApplianceError):
    """A plugin or config failure; the message names the plugin and what it said."""


@dataclass
class PortMapping:
    protocol: str                   # "tcp", "udp", "sctp"
    container_port: int
    host_port: int
    host_ip: str = ""


@dataclass
class PodNetwork:
    ip: str
    additional_ips: list[str] = field(default_factory=list)
    result: dict = field(default_factory=dict)   # go-cni's Result, as containerd's cniResult


@dataclass
class Network:
    conflist: dict                  # name, cniVersion, plugins (each with a type)
    source: str                     # the file's text (verbose status)
    ifname: str

    @property
    def name(self) -> str:
        return self.conflist.get("name", "")

    @property
    def version(self) -> str:
        return self.conflist.get("cniVersion", "")


def _go_json(value) -> str:
    """Go's json.Marshal of a map: sorted keys, no spaces."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _go_netconf(plugin: dict) -> dict:
    """The fields of libcni's NetConf that go-cni's GetConfig shows."""
    out = {k: plugin[k] for k in ("cniVersion", "name", "type", "capabilities") if plugin.get(k)}
    ipam = plugin.get("ipam") if isinstance(plugin.get("ipam"), dict) else {}
    out["ipam"] = {"type": ipam["type"]} if ipam.get("type") else {}
    dns = plugin.get("dns") if isinstance(plugin.get("dns"), dict) else {}
    out["dns"] = {k: dns[k] for k in ("nameservers", "domain", "search", "options")
                  if dns.get(k)}
    return out


def _version(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in (text or "0.1.0").split("."))
    except ValueError:
        return (0, 1, 0)


def _describe(plugin: dict) -> str:
    out = f'type="{plugin.get("type", "")}"'
    return out + (f' name="{plugin["name"]}"' if plugin.get("name") else "")


def _parse_conflist(text: str) -> dict:
    """libcni's ConfListFromBytes checks, with its messages."""
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"error parsing configuration list: {exc}") from None
    if not isinstance(raw, dict) or "name" not in raw:
        raise ValueError("error parsing configuration list: no name")
    if not isinstance(raw["name"], str):
        raise ValueError("error parsing configuration list: invalid name type")
    plugins = raw.get("plugins")
    if plugins is None:
        raise ValueError("error parsing configuration list: no 'plugins' key")
    if not isinstance(plugins, list):
        raise ValueError("error parsing configuration list: invalid 'plugins' type")
    if not plugins:
        raise ValueError("error parsing configuration list: no plugins in list")
    for i, plugin in enumerate(plugins):
        if not isinstance(plugin, dict) or not plugin.get("type"):
            raise ValueError(f"failed to parse plugin config {i}: error parsing configuration: "
                             f"missing 'type'")
    return raw


def load_conf_file(path: str) -> Network:
    """One conf file as a network list (a single .conf/.json becomes a one-plugin list)."""
    with open(path) as f:
        text = f.read()
    if path.endswith(".conflist"):
        try:
            return Network(_parse_conflist(text), text, "")
        except ValueError as exc:
            raise ValueError(f"failed to load CNI config list file {path}: {exc}: "
                             f"invalid cni config") from None
    try:
        conf = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"failed to load CNI config file {path}: error parsing "
                         f"configuration: {exc}: invalid cni config") from None
    if not isinstance(conf, dict) or not conf.get("type"):
        raise ValueError(f"failed to load CNI config file {path}: error parsing configuration: "
                         f"missing 'type': invalid cni config")
    conflist = {"name": conf.get("name", ""), "cniVersion": conf.get("cniVersion", ""),
                "plugins": [conf]}
    return Network(conflist, _go_json(conflist), "")


def _ips_of(result: dict) -> list[tuple[str, str, str | None]]:
    """(interface name, ip, gateway) of a result in any spec version (0.1/0.2: ip4/ip6)."""
    out = []
    interfaces = result.get("interfaces") or []
    for ipc in result.get("ips") or []:
        index = ipc.get("interface")
        name = DEFAULT_IFNAME
        if isinstance(index, int) and 0 <= index < len(interfaces):
            name = interfaces[index].get("name", DEFAULT_IFNAME)
        out.append((name, ipc.get("address", "").split("/")[0], ipc.get("gateway")))
    for key in ("ip4", "ip6"):
        if result.get(key):
            out.append((DEFAULT_IFNAME, result[key].get("ip", "").split("/")[0],
                        result[key].get("gateway")))
    return out


def combined_result(results: list[dict]) -> dict:
    """go-cni's Result of all networks: interfaces by name with their IPs, DNS, routes."""
    interfaces: dict[str, dict] = {DEFAULT_IFNAME: {"IPConfigs": None, "Mac": "", "Sandbox": ""}}
    dns, routes = [], []
    for result in results:
        for intf in result.get("interfaces") or []:
            interfaces[intf.get("name", "")] = {"IPConfigs": None, "Mac": intf.get("mac", ""),
                                                "Sandbox": intf.get("sandbox", "")}
        for name, ip, gateway in _ips_of(result):
            entry = interfaces.setdefault(name, {"IPConfigs": None, "Mac": "", "Sandbox": ""})
            entry["IPConfigs"] = (entry["IPConfigs"] or []) + [{"IP": ip, "Gateway": gateway}]
        dns.append(result.get("dns") or {})
        routes.extend(result.get("routes") or [])
    return {"Interfaces": interfaces, "DNS": dns, "Routes": routes or None}


def select_ips(ips: list[str], preference: str) -> tuple[str, list[str]]:
    """The pod IP and the others, per `cni.ip_pref` ("" or ipv4, ipv6, cni: first listed)."""
    if len(ips) == 1 or preference == "cni":
        return ips[0], ips[1:]
    want = 6 if preference == "ipv6" else 4
    for i, ip in enumerate(ips):
        if ipaddress.ip_address(ip).version == want:
            return ip, ips[:i] + ips[i + 1:]
    return ips[0], ips[1:]


_QUANTITY = re.compile(r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$")
_SUFFIXES = {"": 1, "n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 1000),
             "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
             "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
MAX_BURST = 2**32 - 1        # containerd: math.MaxUint32


def parse_quantity(text: str) -> int:
    """A Kubernetes resource quantity ("10M", "1.5Gi", "2e6") as a whole number, rounded up."""
    m = _QUANTITY.match(text.strip())
    if not m:
        raise ValueError("quantities must match the regular expression "
                         "'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'")
    number, suffix = m.groups()
    try:
        value = Fraction(number)
    except ValueError:
        raise ValueError("quantities must match the regular expression "
                         "'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'") from None
    if suffix in _SUFFIXES:
        value *= _SUFFIXES[suffix]
    elif re.fullmatch(r"[eE][-+]?[0-9]+", suffix):
        value *= Fraction(10) ** int(suffix[1:])
    else:
        raise ValueError("unable to parse quantity's suffix")
    return math.ceil(value)


def bandwidth_of(annotations: dict) -> dict | None:
    """The `bandwidth` capability from kubernetes.io/{ingress,egress}-bandwidth (bits/s), as
    containerd derives it; None without either annotation."""
    out = {}
    for direction in ("ingress", "egress"):
        text = annotations.get(f"kubernetes.io/{direction}-bandwidth")
        if text is None:
            continue
        try:
            rate = parse_quantity(text)
            if rate < 1000:
                raise ValueError("resource is unreasonably small (< 1kbit)")
            if rate > 10**15:
                raise ValueError("resource is unreasonably large (> 1Pbit)")
        except ValueError as exc:
            raise CNIError(f"get cni namespace options: reading pod bandwidth annotations: "
                           f"{exc}") from None
        out[f"{direction}Rate"] = rate
        out[f"{direction}Burst"] = MAX_BURST
    return out or None


def routes_for(cidrs: list[str]) -> list[str]:
    """The default routes a template gets: one per IP family among the pod CIDRs."""
    families = set()
    for cidr in cidrs:
        try:
            families.add(ipaddress.ip_network(cidr, strict=False).version)
        except ValueError:
            raise CNIError(f"get routes: invalid CIDR address: {cidr}") from None
    return [r for v, r in ((4, "0.0.0.0/0"), (6, "::/0")) if v in families]


class CNIManager:
    """The CRI plugin's CNI: config loading, ADD/DEL/CHECK, the per-sandbox cache."""

    def __init__(self, cfg: CRIConfig, state_dir: str, *, conf_dir: str = "",
                 max_conf_num: int = 0):
        """`conf_dir`/`max_conf_num`: a runtime handler's own (`cni_conf_dir`,
        `cni_max_conf_num`) instead of `cni.conf_dir`/`cni.max_conf_num`."""
        self.cfg = cfg
        self.conf_dir = conf_dir or cfg.cni.conf_dir
        self.bin_dirs = [d for d in cfg.cni.bin_dir.split(":") if d]
        self.max_conf_num = max_conf_num or cfg.cni.max_conf_num
        self.cache_dir = os.path.join(state_dir, "results")
        self.networks: list[Network] = []
        self.last_error: str | None = None
        self._signature = object()       # never equal: the first use loads
        os.makedirs(self.cache_dir, mode=0o700, exist_ok=True)
        try:
            os.makedirs(self.conf_dir, mode=0o700, exist_ok=True)   # containerd does too
        except OSError as exc:
            log.warning("cannot create CNI conf dir %s: %s", self.conf_dir, exc)
        self._refresh()

    # --- config --------------------------------------------------------------------

    def _conf_signature(self):
        try:
            entries = list(os.scandir(self.conf_dir))
        except OSError:
            return None
        out = []
        for e in entries:
            if e.name.endswith(CONF_EXTENSIONS):
                try:
                    st = e.stat()
                except OSError:
                    continue
                out.append((e.name, st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(sorted(out))

    def _refresh(self) -> None:
        """Reload when a conf file appeared, changed or went (containerd: on inotify)."""
        signature = self._conf_signature()
        if signature != self._signature:
            self._signature = signature
            self.reload()

    def reload(self) -> None:
        loopback = Network(LOOPBACK, LOOPBACK_SOURCE, "lo")
        try:
            networks = self._load_conf_dir()
        except (OSError, ValueError) as exc:
            self.networks = [loopback]
            self.last_error = f"cni config load failed: {exc}: failed to load cni config"
            log.warning("%s", self.last_error)
            return
        self.networks = [loopback] + networks
        self.last_error = None

    def _load_conf_dir(self) -> list[Network]:
        try:
            names = sorted(e.name for e in os.scandir(self.conf_dir)
                           if e.name.endswith(CONF_EXTENSIONS) and not e.is_dir())
        except FileNotFoundError:
            names = []
        except OSError as exc:
            raise OSError(exc.errno, f"failed to read config file: {exc}: "
                                     f"failed to read config file") from None
        if not names:
            raise ValueError(f"no network config found in {self.conf_dir}: {NOT_INITIALIZED}")
        networks = []
        for name in names:
            network = load_conf_file(os.path.join(self.conf_dir, name))
            network.ifname = f"{IF_PREFIX}{len(networks)}"
            networks.append(network)
            if len(networks) == self.max_conf_num:
                break
        return networks

    def ready(self) -> bool:
        self._refresh()
        return len(self.networks) >= MIN_NETWORKS

    def status(self) -> tuple[bool, str, str]:
        """(ready, reason, message) of the NetworkReady condition, as containerd words it."""
        if self.ready():
            return True, "", ""
        return False, NOT_READY_REASON, f"Network plugin returns error: {NOT_INITIALIZED}"

    def verbose_status(self) -> dict:
        """The `cniconfig` (go-cni's GetConfig) and `lastCNILoadStatus*` keys of Status."""
        self._refresh()
        networks = []
        for n in self.networks:
            plugins = [{"Network": _go_netconf(p), "Source": _go_json(p)}
                       for p in n.conflist["plugins"]]
            networks.append({"Config": {"Name": n.name, "CNIVersion": n.version,
                                        "Plugins": plugins, "Source": n.source},
                             "IFName": n.ifname})
        config = {"PluginDirs": self.bin_dirs, "PluginConfDir": self.conf_dir,
                  "PluginMaxConfNum": self.max_conf_num, "Prefix": IF_PREFIX,
                  "Networks": networks}
        return {"cniconfig": json.dumps(config, separators=(",", ":")),
                "lastCNILoadStatus": self.last_status(),
                "lastCNILoadStatus.default": self.last_status()}

    def last_status(self) -> str:
        """The last load's error, or "OK" (Status verbose: `lastCNILoadStatus.<name>`)."""
        self._refresh()
        return self.last_error or "OK"

    def update_pod_cidr(self, cidr: str) -> None:
        """UpdateRuntimeConfig: write `conf_template` rendered with the pod CIDR(s) into the
        conf dir, unless a network is loaded already (containerd's order of checks)."""
        if not cidr:
            return
        cidrs = [c.strip() for c in cidr.split(",")]
        routes = routes_for(cidrs)
        template = self.cfg.cni.conf_template
        if not template:
            log.info("no cni config template is specified, wait for other system components "
                     "to drop the config")
            return
        if self.ready():
            log.info("network plugin is ready, skip generating cni config from template %s",
                     template)
            return
        try:
            with open(template) as f:
                text = gotemplate.render(f.read(), {"PodCIDR": cidrs[0], "PodCIDRRanges": cidrs,
                                                    "Routes": routes})
        except (OSError, gotemplate.TemplateError) as exc:
            raise CNIError(f"failed to parse cni config template {template!r}: {exc}") from None
        os.makedirs(self.conf_dir, mode=0o755, exist_ok=True)
        target = os.path.join(self.conf_dir, TEMPLATE_OUTPUT)
        with open(target + ".tmp", "w") as f:
            f.write(text)
        os.replace(target + ".tmp", target)
        self._refresh()

    async def close(self) -> None:
        """Nothing runs in the background (the conf dir is looked at on use)."""

    # --- cache ---------------------------------------------------------------------

    def _cache_path(self, sandbox_id: str) -> str:
        if not sandbox_id or "/" in sandbox_id or sandbox_id.startswith("."):
            raise CNIError(f"invalid sandbox id {sandbox_id!r}")
        return os.path.join(self.cache_dir, f"{sandbox_id}.json")

    def _save(self, sandbox_id: str, record: dict) -> None:
        path = self._cache_path(sandbox_id)
        with open(path + ".tmp", "w") as f:
            json.dump(record, f)
        os.replace(path + ".tmp", path)

    def cached(self, sandbox_id: str) -> dict | None:
        """What ADD was given and returned for the sandbox (None: nothing to undo)."""
        try:
            with open(self._cache_path(sandbox_id)) as f:
                return json.load(f)
        except FileNotFoundError:
            return None

    def _forget(self, sandbox_id: str) -> None:
        try:
            os.unlink(self._cache_path(sandbox_id))
        except FileNotFoundError:
            pass

    # --- ADD / DEL / CHECK -----------------------------------------------------------

    async def setup(self, sandbox_id: str, netns_path: str, *, pod_name: str,
                    pod_namespace: str, pod_uid: str, port_mappings: list[PortMapping],
                    annotations: dict | None = None, dns: dict | None = None) -> PodNetwork:
        """ADD every network; on a failure, DEL what was attempted (nothing stays), forget
        the sandbox and raise."""
        if not self.ready():
            raise CNIError(NOT_INITIALIZED)
        args = [["IgnoreUnknown", "1"], ["K8S_POD_NAMESPACE", pod_namespace],
                ["K8S_POD_NAME", pod_name], ["K8S_POD_INFRA_CONTAINER_ID", sandbox_id],
                ["K8S_POD_UID", pod_uid]]
        caps: dict = {POD_ANNOTATIONS: dict(annotations or {})}
        bandwidth = bandwidth_of(annotations or {})
        if bandwidth:
            caps["bandwidth"] = bandwidth
        mappings = [{"hostPort": m.host_port, "containerPort": m.container_port,
                     "protocol": m.protocol.lower(), "hostIP": m.host_ip}
                    for m in port_mappings if m.host_port > 0]
        if mappings:
            caps["portMappings"] = mappings
        if dns:
            caps["dns"] = dns
        record: dict = {"netns": netns_path, "networks": [
            {"ifname": network.ifname, "conflist": network.conflist, "args": args,
             "capabilityArgs": caps, "result": None} for network in list(self.networks)]}
        failures: list[BaseException] = []

        async def attach(entry: dict) -> None:
            try:
                entry["result"] = await self._add(sandbox_id, netns_path, entry)
            except BaseException as exc:
                failures.append(exc)
                raise
        try:
            self._save(sandbox_id, record)           # before ADD: a crash still gets a DEL
            # every network at once, as go-cni's Setup; the first failure to come is raised
            await asyncio.gather(*(attach(e) for e in record["networks"]),
                                 return_exceptions=True)
            self._save(sandbox_id, record)
            if failures:
                raise failures[0]
            combined = combined_result([e["result"] for e in record["networks"]])
            ips = [c["IP"] for c in combined["Interfaces"][DEFAULT_IFNAME]["IPConfigs"] or []]
            if not ips:
                raise CNIError(f"failed to find network info for sandbox {sandbox_id!r}")
        except BaseException:
            try:
                await self.teardown(sandbox_id, netns_path)
            except Exception as exc:
                log.warning("cleaning up the network of sandbox %s: %s", sandbox_id, exc)
            # no sandbox will exist to retry the DEL: it was all there is to do
            self._forget(sandbox_id)
            raise
        ip, additional = select_ips(ips, self.cfg.cni.ip_pref)
        return PodNetwork(ip=ip, additional_ips=additional, result=combined)

    async def teardown(self, sandbox_id: str, netns_path: str, *,
                       port_mappings: list[PortMapping] | None = None) -> None:
        """DEL every network ADD reached, last first, with what ADD was given (the cache;
        `port_mappings` are those). Every plugin gets its DEL even when one fails; the first
        failure is raised and the cache kept for a retry. No cache: nothing to do."""
        record = self.cached(sandbox_id)
        if record is None:
            return
        if netns_path and not is_netns(netns_path):
            netns_path = ""      # the spec's "namespace gone": plugins clean what they can
        first: CNIError | None = None
        for entry in reversed(record["networks"]):
            try:
                await self._del(sandbox_id, netns_path, entry)
            except CNIError as exc:
                if "not found" in exc.message:       # containerd's tolerance
                    continue
                log.warning("DEL for sandbox %s: %s", sandbox_id, exc.message)
                first = first or exc
        if first is not None:
            raise first
        self._forget(sandbox_id)

    async def check(self, sandbox_id: str, netns_path: str) -> None:
        """CHECK each network whose version has it (0.4.0 on) against its cached result."""
        record = self.cached(sandbox_id)
        if record is None:
            raise CNIError(f"no cached network result for sandbox {sandbox_id!r}")
        for entry in record["networks"]:
            conflist = entry["conflist"]
            if _version(conflist.get("cniVersion", "")) < (0, 4, 0) \
                    or conflist.get("disableCheck"):
                continue
            prev = entry["result"]
            for plugin in conflist["plugins"]:
                try:
                    await self._exec("CHECK", plugin, sandbox_id, netns_path, entry, prev)
                except CNIError as exc:
                    raise CNIError(f"plugin {_describe(plugin)} failed (check): "
                                   f"{exc.message}") from None

    async def _add(self, sandbox_id: str, netns_path: str, entry: dict) -> dict:
        prev = None
        for plugin in entry["conflist"]["plugins"]:
            try:
                prev = await self._exec("ADD", plugin, sandbox_id, netns_path, entry, prev)
            except CNIError as exc:
                raise CNIError(f"plugin {_describe(plugin)} failed (add): "
                               f"{exc.message}") from None
        return prev or {}

    async def _del(self, sandbox_id: str, netns_path: str, entry: dict) -> None:
        conflist = entry["conflist"]
        prev = entry["result"] if _version(conflist.get("cniVersion", "")) >= (0, 4, 0) \
            else None
        first: CNIError | None = None
        for plugin in reversed(conflist["plugins"]):
            try:
                await self._exec("DEL", plugin, sandbox_id, netns_path, entry, prev)
            except CNIError as exc:
                first = first or CNIError(f"plugin {_describe(plugin)} failed (delete): "
                                          f"{exc.message}")
        if first is not None:
            raise first

    def _find(self, plugin_type: str) -> str:
        if "/" in plugin_type:
            raise CNIError(f"invalid plugin name: {plugin_type}")
        for directory in self.bin_dirs:
            path = os.path.join(directory, plugin_type)
            if os.path.isfile(path):
                return path
        dirs = " ".join(self.bin_dirs)
        raise CNIError(f'failed to find plugin "{plugin_type}" in path [{dirs}]')

    async def _exec(self, command: str, plugin: dict, sandbox_id: str, netns_path: str,
                    entry: dict, prev: dict | None) -> dict | None:
        """One plugin run; its result (ADD) or None. Errors carry the plugin's own message."""
        path = self._find(plugin["type"])
        conflist = entry["conflist"]
        conf = dict(plugin, name=conflist.get("name", ""),
                    cniVersion=conflist.get("cniVersion", ""))
        if prev is not None:
            conf["prevResult"] = prev
        caps = entry["capabilityArgs"]
        runtime = {cap: caps[cap] for cap, on in (plugin.get("capabilities") or {}).items()
                   if on and cap in caps}
        if runtime:
            conf["runtimeConfig"] = runtime
        env = dict(os.environ, CNI_COMMAND=command, CNI_CONTAINERID=sandbox_id,
                   CNI_NETNS=netns_path, CNI_IFNAME=entry["ifname"],
                   CNI_ARGS=";".join(f"{k}={v}" for k, v in entry["args"]),
                   CNI_PATH=":".join(self.bin_dirs))
        try:
            done = await spawn.run([path], timeout=PLUGIN_SECONDS, input=json.dumps(conf).encode(),
                                   env=env)
        except TimeoutError:
            raise CNIError(f"netplugin did not finish {command} within "
                           f"{PLUGIN_SECONDS:.0f}s") from None
        out, err = done.stdout, done.stderr
        if err.strip():
            log.debug("CNI %s %s stderr: %s", plugin["type"], command,
                      err.decode(errors="replace").strip())
        if done.returncode != 0:
            raise CNIError(_plugin_error(done.returncode, out, err))
        if command != "ADD":
            return None
        try:
            result = json.loads(out)
        except ValueError as exc:
            raise CNIError(f"decoding version from network config: {exc}") from None
        if not isinstance(result, dict):
            raise CNIError(f"plugin returned an invalid result: {out[:200]!r}")
        return result


def _plugin_error(returncode: int, out: bytes, err: bytes) -> str:
    """libcni's wording: the plugin's JSON error (msg; details), else its stderr."""
    if not out.strip():
        if not err.strip():
            return f"netplugin failed with no error message: exit status {returncode}"
        return f"netplugin failed: {err.decode(errors='replace')!r}"
    try:
        error = json.loads(out)
        message = error.get("msg", "")
        return message + (f"; {error['details']}" if error.get("details") else "")
    except (ValueError, AttributeError) as exc:
        return (f"netplugin failed but error parsing its diagnostic message "
                f"{out.decode(errors='replace')!r}: {exc}")
