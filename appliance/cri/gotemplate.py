"""The small part of Go's text/template that CNI config templates use (containerd renders
`cni.conf_template` with it): `{{.Field}}`, `{{.}}`, `{{$var}}`, `{{range [$i,] [$x :=]
PIPE}}`, `{{if PIPE}}`, `{{else}}`, `{{end}}`, comments and the `{{-`/`-}}` trim markers.
Anything else is a clear error, not a silent difference."""
from __future__ import annotations

import re

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
_RANGE = re.compile(r"(?:(\$\w+)\s*(?:,\s*(\$\w+))?\s*:=\s*)?(.+)$", re.S)


class TemplateError(ValueError):
    pass


def _tokens(text: str) -> list[tuple[str, str]]:
    """("text", t) and ("action", a) in order, with trim markers applied to the text."""
    out: list[tuple[str, str]] = []
    pos = 0
    trim_next = False
    for m in _ACTION.finditer(text):
        chunk = text[pos:m.start()]
        if trim_next:
            chunk = chunk.lstrip()
        if m.group(1):
            chunk = chunk.rstrip()
        out.append(("text", chunk))
        action = m.group(2).strip()
        if not (action.startswith("/*") and action.endswith("*/")):
            out.append(("action", action))
        trim_next = bool(m.group(3))
        pos = m.end()
    chunk = text[pos:]
    out.append(("text", chunk.lstrip() if trim_next else chunk))
    return out


def _parse(tokens, i: int = 0, until=("",)):
    """A list of nodes up to one of the actions in `until`; returns (nodes, index, ender)."""
    nodes: list = []
    while i < len(tokens):
        kind, value = tokens[i]
        i += 1
        if kind == "text":
            nodes.append(("text", value))
        elif value in until:
            return nodes, i, value
        elif value.startswith(("range ", "if ")):
            word, _, rest = value.partition(" ")
            body, i, ender = _parse(tokens, i, ("end", "else"))
            other = []
            if ender == "else":
                other, i, ender = _parse(tokens, i, ("end",))
            if ender != "end":
                raise TemplateError(f"unexpected EOF: {word} without end")
            nodes.append((word, rest.strip(), body, other))
        elif value in ("end", "else"):
            raise TemplateError(f"unexpected {{{{{value}}}}}")
        else:
            nodes.append(("value", value))
    if until != ("",):
        raise TemplateError(f"unexpected EOF: expected {{{{{until[0]}}}}}")
    return nodes, i, ""


def _lookup(expr: str, dot, variables: dict):
    expr = expr.strip()
    if expr == ".":
        return dot
    if expr.startswith("$"):
        if expr not in variables:
            raise TemplateError(f"undefined variable: {expr}")
        return variables[expr]
    if re.fullmatch(r"(\.\w+)+", expr):
        value = dot
        for name in expr[1:].split("."):
            if not isinstance(value, dict) or name not in value:
                raise TemplateError(f"can't evaluate field {name}")
            value = value[name]
        return value
    raise TemplateError(f"unsupported template action {{{{{expr}}}}}")


def _text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(_text(v) for v in value) + "]"
    return str(value)


def _run(nodes, dot, variables: dict, out: list[str]) -> None:
    for node in nodes:
        kind = node[0]
        if kind == "text":
            out.append(node[1])
        elif kind == "value":
            out.append(_text(_lookup(node[1], dot, variables)))
        elif kind == "if":
            _run(node[2] if _lookup(node[1], dot, variables) else node[3], dot, variables, out)
        else:   # range
            m = _RANGE.fullmatch(node[1])
            if not m:
                raise TemplateError(f"bad range {node[1]!r}")
            first, second, pipe = m.groups()
            items = _lookup(pipe, dot, variables)
            if not items:
                _run(node[3], dot, variables, out)
                continue
            for index, item in enumerate(items):
                scope = dict(variables)
                if second:
                    scope[first], scope[second] = index, item
                elif first:
                    scope[first] = item
                _run(node[2], item, scope, out)


def render(text: str, data: dict) -> str:
    nodes, _, _ = _parse(_tokens(text))
    out: list[str] = []
    _run(nodes, data, {"$": data}, out)
    return "".join(out)
