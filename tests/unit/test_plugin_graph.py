"""The plugin graph: dependency order (as containerd sorts it), skipped and failed plugins,
and the built-in list in containerd's order."""
import pytest

from appliance import plugin as p
from appliance.plugin import PluginGraphError, Registration, order


def reg(type_, id_, requires=()):
    return Registration(type_, id_, lambda ic: None, requires=tuple(requires))


def uris(regs):
    return [r.uri for r in regs]


def test_requirements_come_first_and_order_is_kept_otherwise():
    regs = [reg(p.GRPC, "a", [p.SERVICE]), reg(p.SERVICE, "s1", [p.METADATA]),
            reg(p.METADATA, "m"), reg(p.SERVICE, "s2"), reg(p.EVENT, "e")]
    assert uris(order(regs)) == [
        "io.containerd.metadata.v1.m", "io.containerd.service.v1.s1",
        "io.containerd.service.v1.s2", "io.containerd.grpc.v1.a", "io.containerd.event.v1.e"]


def test_wildcard_requires_everything_else():
    regs = [reg(p.INTERNAL, "all", ["*"]), reg(p.GRPC, "g"), reg(p.METADATA, "m")]
    assert uris(order(regs))[-1] == "io.containerd.internal.v1.all"


def test_missing_requirement_is_not_an_ordering_error():
    # the plugin itself fails at init when it looks up what is missing
    assert uris(order([reg(p.GRPC, "g", [p.RUNTIME_V2])])) == ["io.containerd.grpc.v1.g"]


def test_cycle_is_an_error_naming_the_cycle():
    regs = [reg(p.SERVICE, "a", [p.GRPC]), reg(p.GRPC, "b", [p.SERVICE])]
    with pytest.raises(PluginGraphError, match="cycle"):
        order(regs)


def test_duplicate_is_an_error():
    with pytest.raises(PluginGraphError, match="registered twice"):
        order([reg(p.GRPC, "x"), reg(p.GRPC, "x")])


def test_initialise_records_skip_and_error():
    def skip(ic):
        raise p.SkipPlugin("not on this host")

    def boom(ic):
        raise RuntimeError("broken")

    def ctx(registration):
        return p.InitContext(registration, "/r", "/s", None, {}, p.PluginSet())

    assert p.initialise(ctx(Registration(p.GRPC, "s", skip))).status == "skip"
    failed = p.initialise(ctx(Registration(p.GRPC, "e", boom)))
    assert failed.status == "error" and str(failed.error) == "broken"
    ok = p.initialise(ctx(Registration(p.GRPC, "o", lambda ic: 42)))
    assert ok.status == "ok" and ok.instance == 42


def test_builtins_order_matches_containerd_for_what_exists():
    from appliance import builtins
    ordered = uris(order(builtins.registrations()))
    assert ordered.index("io.containerd.metadata.v1.bolt") < ordered.index(
        "io.containerd.service.v1.namespaces-service")
    grpc_ids = [u.rsplit(".", 1)[1] for u in ordered if u.startswith(p.GRPC)]
    assert grpc_ids[0] == "introspection" and grpc_ids[-1] == "cri"   # pkg/cri: last
    assert grpc_ids[1:-1] == sorted(grpc_ids[1:-1])
