"""Import layering of the appliance package: each layer imports only from the layers below it,
and no two packages import each other (imports inside functions count too)."""
import ast
import functools
import pathlib


PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "appliance"

# Top to bottom (README's layout table): a module may import from its own layer and below.
LAYERS = [
    ("cli", ["appliance.cli", "appliance.commands", "appliance.tools"]),
    ("daemon", ["appliance.daemon"]),
    ("plugins", ["appliance.builtins", "appliance.plugins"]),
    ("plugin registry", ["appliance.plugin"]),
    ("cri", ["appliance.cri"]),
    ("core", ["appliance.core"]),
    ("process", ["appliance.process", "appliance.mount", "appliance.supervisor"]),
    ("protocols", ["appliance.stubs", "appliance.grpcutil", "appliance.ttrpc",
                   "appliance.grpcserver", "appliance.acceptor"]),
    ("base", ["appliance.config", "appliance.errdefs", "appliance.identifiers",
              "appliance.filters", "appliance._core", "appliance._core_py",
              "appliance._hpack", "appliance._hpack_py",
              "appliance._mount_cffi", "appliance._mountcall", "appliance._version",
              "appliance._proto", "appliance"]),
]

# Imports that break the rules today, each until the change named beside it lands. An entry
# that is no longer needed fails the tests: delete it then.
KNOWN: set[tuple[str, str]] = set()   # known upward imports, each to be removed


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py") if "_proto" not in p.parts}


def _from_module(name: str, path: pathlib.Path, node: ast.ImportFrom) -> str:
    """The module a `from … import` in module `name` reads from, made absolute."""
    if not node.level:
        return node.module
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    base = package.split(".")[:len(package.split(".")) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """The appliance modules `name` imports, anywhere in its text."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _from_module(name, path, node)
            # `from . import x` imports the module x when there is one
            submodules = {f"{base}.{a.name}" for a in node.names} & known
            found.update(submodules or {base})
    return {m for m in found if m == "appliance" or m.startswith("appliance.")}


@functools.cache
def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) - {name} for name, path in modules.items()}


def _layer(module: str) -> int:
    best = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (rank, len(prefix))
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best[0]


def _violations(graph) -> set[tuple[str, str]]:
    return {(a, b) for a, targets in graph.items() for b in targets if _layer(b) < _layer(a)}


def test_every_module_is_in_a_layer():
    for name in _modules():
        _layer(name)


def test_no_module_imports_from_a_layer_above_it():
    graph = _graph()
    upward = _violations(graph) - KNOWN
    assert not upward, "imports that run upward: " + ", ".join(
        f"{a} -> {b} ({LAYERS[_layer(a)][0]} -> {LAYERS[_layer(b)][0]})"
        for a, b in sorted(upward))


def _package(module: str, modules) -> str:
    """A module's package: appliance.core.snapshots for appliance.core.snapshots.store;
    a top-level module (appliance.errdefs) or a direct child of core/plugins is its own."""
    parts = module.split(".")
    if len(parts) > 3 and ".".join(parts[:3]) in modules:
        return ".".join(parts[:3])
    if len(parts) == 3 and parts[1] in ("core", "plugins", "process"):
        return module
    return ".".join(parts[:2])


def _cycles(graph, modules) -> list[list[str]]:
    """Cycles in the graph between packages (Tarjan's strongly connected components)."""
    edges: dict[str, set[str]] = {}
    for a, targets in graph.items():
        for b in targets:
            if (a, b) in KNOWN:
                continue
            pa, pb = _package(a, modules), _package(b, modules)
            if pa != pb and pb != "appliance":
                edges.setdefault(pa, set()).add(pb)
    index, low, stack, on_stack, result = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    for v in list(edges):
        if v not in index:
            visit(v)
    return result


def test_no_import_cycle_between_packages():
    modules = _modules()
    assert _cycles(_graph(), set(modules)) == []


def test_each_known_exception_is_still_needed():
    graph = _graph()
    stale = [(a, b) for a, b in sorted(KNOWN) if b not in graph.get(a, set())]
    assert stale == [], f"no longer imported, delete from KNOWN: {stale}"


def test_core_does_not_import_plugins_cri_or_the_daemon():
    graph = _graph()
    for name, targets in graph.items():
        if name.startswith("appliance.core"):
            above = {t for t in targets if t.split(".")[1] in
                     ("plugins", "plugin", "builtins", "cri", "daemon", "cli")}
            assert not above, f"{name} imports {sorted(above)}"


def test_ttrpc_client_and_server_share_only_the_framing():
    graph = _graph()
    assert "appliance.ttrpc.server" not in graph["appliance.ttrpc.client"]
    assert "appliance.ttrpc.client" not in graph["appliance.ttrpc.server"]


def test_the_checker_sees_imports_inside_functions_and_relative_ones(tmp_path):
    path = tmp_path / "mod.py"
    path.write_text("def f():\n    from ..plugins import gc\n    from .. import daemon\n")
    found = _imports("appliance.core.mod", path, {"appliance.daemon"})
    assert found == {"appliance.plugins", "appliance.daemon"}
    assert _violations({"appliance.core.mod": found}) == {
        ("appliance.core.mod", "appliance.plugins"), ("appliance.core.mod", "appliance.daemon")}
    assert _cycles({"appliance.core.a.x": {"appliance.core.b.y"},
                    "appliance.core.b.y": {"appliance.core.a.x"}},
                   {"appliance.core.a", "appliance.core.b"}) == [
        ["appliance.core.a", "appliance.core.b"]]


def _top_level_names(name: str, path: pathlib.Path) -> dict[str, tuple[str, str]]:
    """Names module `name` binds at its top level with `from M import n`: name -> (M, n)."""
    bound = {}
    for node in ast.parse(path.read_text()).body:
        body = [node]
        if isinstance(node, ast.Try):   # try: from ._core import … except ImportError: …
            body = node.body + [n for handler in node.handlers for n in handler.body]
        for stmt in body:
            if isinstance(stmt, ast.ImportFrom):
                for alias in stmt.names:
                    bound[alias.asname or alias.name] = (_from_module(name, path, stmt),
                                                         alias.name)
    return bound


def _passed_through(modules) -> list[str]:
    """`from X import n` where X only passes on n from another package: import it from there
    (status codes through the gRPC server package, when they live in errdefs)."""
    names = set(modules)
    bound = {m: _top_level_names(m, p) for m, p in modules.items()}

    def home(module, name):
        source = bound[module].get(name)
        if source is None or source[0] not in names or ".".join(source) in names:
            return module
        return home(*source)

    found = []
    for importer, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            base = _from_module(importer, path, node)
            if base not in names or base == "appliance":   # the package's own face: __version__
                continue
            for alias in node.names:
                if f"{base}.{alias.name}" in names:
                    continue   # a submodule
                where = home(base, alias.name)
                if _package(where, names) != _package(base, names):
                    found.append(f"{importer}: {alias.name} from {base}, not from {where}")
    return found


def test_names_are_imported_from_their_own_package_not_through_another():
    assert _passed_through(_modules()) == []


def test_the_pass_through_check_can_fail(tmp_path):
    (tmp_path / "low.py").write_text("class Code: pass\n")
    (tmp_path / "mid.py").write_text("from .low import Code\n")
    (tmp_path / "top.py").write_text("from .mid import Code\n")
    modules = {f"appliance.{n}": tmp_path / f"{n}.py" for n in ("low", "mid", "top")}
    assert _passed_through(modules) == [
        "appliance.top: Code from appliance.mid, not from appliance.low"]


def test_the_grpc_server_and_ttrpc_do_not_import_each_other():
    graph = _graph()
    for name, targets in graph.items():
        for a, b in (("ttrpc", "grpcserver"), ("grpcserver", "ttrpc")):
            if name.startswith(f"appliance.{a}"):
                assert not {t for t in targets if t.startswith(f"appliance.{b}")}, name
