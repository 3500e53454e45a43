"""containerd filter expressions, as accepted by every List RPC.

    ctr images ls 'name==docker.io/library/busybox:latest'
    ctr containers ls 'labels."com.example.team"==infra,runtime.name~=^io\\.containerd'

Syntax (one filter string)::

    selectors := selector ("," selector)*                 all must match (AND)
    selector  := fieldpath [operator value]               no operator: "field is present"
    fieldpath := field ("." field)*
    field     := "quoted" | [A-Za-z0-9_-]+
    operator  := "==" | "!=" | "~=" | "!~="               ("=" and "!==" are aliases)
    value     := "quoted" | [^\\s,]+                       unquoted values may hold = : / @ . | etc.
    after ~= and !~= a value may also be /quoted/ or |quoted| (handy for regexes with commas)

Quoted strings use Go string-literal escapes (\\n \\t \\\\ \\" \\xHH \\NNN \\uHHHH \\UHHHHHHHH);
inside /.../ or |...| the delimiter is escaped as \\/ or \\|.  Any other escape, such as
\\d, is an error, so write regexes that need backslashes unquoted (name~=^\\d+$).
Whitespace is allowed between tokens (containerd rejects some of those placements);
whitespace or a comma ends an unquoted value.  Several filter strings are ORed,
as containerd's ParseAll; an empty string matches everything.

Matching follows containerd: "==" needs the field present and equal; "!=" and "~="
compare the value even when absent (an absent field reads as ""), so "name!=x" matches
objects without a name.  "~=" is an unanchored search (Go's MatchString), using Python's
re module: Go's RE2 syntax mostly carries over, but \\z, \\pL and similar RE2-only forms
do not, and Python's engine backtracks (a hostile pattern can be slow).
"""
from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from appliance.errdefs import InvalidArgument

__all__ = ["Adaptor", "Filter", "Selector", "parse", "adapt_object"]

# adaptor(fieldpath) -> (value, present)
Adaptor = Callable[[list[str]], tuple[str, bool]]

# operator as written -> canonical operator
_OPERATORS = {"==": "==", "=": "==", "!=": "!=", "!==": "!=", "~=": "~=", "!~=": "!~="}
_REGEX_OPERATORS = ("~=", "!~=")
_FIELD = re.compile(r"[A-Za-z0-9_-]+")
_VALUE = re.compile(r"[^\s,]+")
_SIMPLE_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t",
                   "v": "\v", "\\": "\\"}
_HEX_ESCAPE_LEN = {"x": 2, "u": 4, "U": 8}


@dataclass(frozen=True)
class Selector:
    """One `fieldpath[operator value]` test; operator None means "present"."""
    fieldpath: tuple[str, ...]
    operator: str | None = None
    value: str = ""
    regex: re.Pattern | None = field(default=None, compare=False, repr=False)

    def match(self, adaptor: Adaptor) -> bool:
        value, present = adaptor(list(self.fieldpath))
        if self.operator is None:
            return bool(present)
        if not present:
            value = ""
        if self.operator == "==":
            return bool(present) and value == self.value
        if self.operator == "!=":
            return value != self.value
        found = self.regex.search(value) is not None
        return found if self.operator == "~=" else not found


class Filter:
    """An OR of AND-clauses of selectors; an empty clause matches everything."""
    __slots__ = ("clauses",)

    def __init__(self, clauses: Iterable[Iterable[Selector]]):
        self.clauses = tuple(tuple(clause) for clause in clauses)

    def match(self, adaptor: Adaptor) -> bool:
        return any(all(sel.match(adaptor) for sel in clause) for clause in self.clauses)

    def __repr__(self):
        return f"Filter({self.clauses!r})"


def parse(*filter_strings: str) -> Filter:
    """Parse containerd filter strings (ORed); no strings, or an empty one, matches all.

    Raises InvalidArgument on a syntax error or an invalid regular expression.
    """
    clauses = []
    for text in filter_strings:
        if not isinstance(text, str):
            raise TypeError(f"filter strings must be str, not {type(text).__name__} "
                            "(pass a repeated field as parse(*request.filters))")
        clauses.append(_Parser(text).selectors() if text else ())
    if not clauses or () in clauses:
        clauses = [()]
    return Filter(clauses)


class _Parser:
    """Recursive descent over one filter string; each method scans its own token."""

    def __init__(self, text: str):
        self.text = text
        self.pos = 0

    # -- scanning helpers --------------------------------------------------

    def error(self, pos: int, problem: str) -> InvalidArgument:
        text = self.text
        if pos < len(text):
            where = f"{text[:pos]} >|{text[pos]}|< {text[pos + 1:]}"
        else:
            where, problem = text, f"{problem} at end of input"
        return InvalidArgument(f"filters: parse error: [{where}]: {problem}")

    def peek(self) -> str:
        """The next non-space character ('' at the end), skipping whitespace."""
        text = self.text
        while self.pos < len(text) and text[self.pos].isspace():
            self.pos += 1
        return text[self.pos] if self.pos < len(text) else ""

    # -- grammar -----------------------------------------------------------

    def selectors(self) -> tuple[Selector, ...]:
        clause = [self.selector()]
        while (ch := self.peek()) != "":
            if ch != ",":
                raise self.error(self.pos, f"unexpected input {ch!r}, expected ',' or end")
            self.pos += 1
            clause.append(self.selector())
        return tuple(clause)

    def selector(self) -> Selector:
        fieldpath = self.fieldpath()
        if self.peek() in ("", ","):
            return Selector(fieldpath)
        operator = self.operator()
        self.peek()
        value_pos = self.pos
        value = self.value(operator)
        regex = None
        if operator in _REGEX_OPERATORS:
            try:
                regex = re.compile(value)
            except re.error as exc:
                raise self.error(value_pos, f"invalid regular expression {value!r}: {exc}") from None
        return Selector(fieldpath, operator, value, regex)

    def fieldpath(self) -> tuple[str, ...]:
        parts = [self.field()]
        while self.peek() == ".":
            self.pos += 1
            parts.append(self.field())
        return tuple(parts)

    def field(self) -> str:
        ch = self.peek()
        if ch == '"':
            return self.quoted()
        if ch in ("/", "|"):
            raise self.error(self.pos, "invalid quote encountered (field names are quoted with \")")
        match = _FIELD.match(self.text, self.pos)
        if not match:
            raise self.error(self.pos, "expected field or quoted")
        self.pos = match.end()
        return match.group()

    def operator(self) -> str:
        self.peek()
        start = end = self.pos
        while end < len(self.text) and self.text[end] in "=!~":
            end += 1
        written = self.text[start:end]
        if not written:
            raise self.error(start, 'expected an operator ("==", "!=", "~=", "!~=") or ","')
        if written not in _OPERATORS:
            raise self.error(start, f"unsupported operator {written!r}")
        self.pos = end
        return _OPERATORS[written]

    def value(self, operator: str) -> str:
        ch = self.peek()
        if ch == '"' or (operator in _REGEX_OPERATORS and ch in ("/", "|")):
            return self.quoted()
        match = _VALUE.match(self.text, self.pos)
        if not match:
            raise self.error(self.pos, "expected value or quoted")
        self.pos = match.end()
        return match.group()

    def quoted(self) -> str:
        """A Go-style quoted literal starting at self.pos; its delimiter is that char."""
        text, start = self.text, self.pos
        delim = text[start]
        out = bytearray()
        i = start + 1
        while True:
            if i >= len(text) or text[i] == "\n":
                raise self.error(start, f"quoted literal not terminated (missing closing {delim})")
            ch = text[i]
            if ch == delim:
                break
            if ch != "\\":
                out += ch.encode("utf-8", "surrogatepass")
                i += 1
                continue
            esc = text[i + 1:i + 2]
            if esc in _SIMPLE_ESCAPES or esc == delim:
                out += _SIMPLE_ESCAPES.get(esc, esc).encode()
                i += 2
            elif esc in _HEX_ESCAPE_LEN:
                digits = text[i + 2:i + 2 + _HEX_ESCAPE_LEN[esc]]
                if len(digits) != _HEX_ESCAPE_LEN[esc] or any(d not in string.hexdigits for d in digits):
                    raise self.error(i, f"illegal \\{esc} escape: needs {_HEX_ESCAPE_LEN[esc]} hex digits")
                code = int(digits, 16)
                if esc == "x":
                    out.append(code)
                elif code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                    raise self.error(i, f"illegal \\{esc} escape: {digits} is not a valid code point")
                else:
                    out += chr(code).encode()
                i += 2 + len(digits)
            elif esc and esc in "01234567":
                digits = text[i + 1:i + 4]
                if len(digits) != 3 or any(d not in "01234567" for d in digits) or int(digits, 8) > 255:
                    raise self.error(i, "illegal octal escape: needs 3 octal digits, at most \\377")
                out.append(int(digits, 8))
                i += 4
            else:
                raise self.error(i, f"illegal escape sequence \\{esc}")
        self.pos = i + 1
        try:
            return out.decode("utf-8")
        except UnicodeDecodeError:
            raise self.error(start, "quoted literal is not valid UTF-8") from None


def adapt_object(fields: Mapping, labels_key: str | Iterable[str] = "labels") -> Adaptor:
    """An adaptor over a plain dict, with containerd's adaptor conventions.

    - Ordinary entries are struct fields: `name`, or `target.digest` through nested
      dicts; a field is present only when its value is non-empty (None, "" and dicts
      count as absent).
    - Entries named `labels_key` (a name, or several such as ("labels", "annotations"),
      at any depth) are string maps: the rest of the path is joined with "." into one
      key, so `labels.com.example.x` and `labels."com.example.x"` are the same lookup,
      and a key is present even when its value is "".
    Non-string values are shown as Go would print them (True -> "true").
    """
    map_keys = {labels_key} if isinstance(labels_key, str) else set(labels_key)

    def adaptor(fieldpath: list[str]) -> tuple[str, bool]:
        node = fields
        for i, name in enumerate(fieldpath):
            if not isinstance(node, Mapping) or name not in node:
                return "", False
            node = node[name]
            if name in map_keys:
                key = ".".join(fieldpath[i + 1:])
                if i + 1 == len(fieldpath) or not isinstance(node, Mapping) or key not in node:
                    return "", False
                return _text(node[key]), True
        if isinstance(node, Mapping):
            return "", False
        value = _text(node)
        return value, value != ""

    return adaptor


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else str(value)
