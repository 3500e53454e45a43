"""containerd filter expressions (appliance.filters)."""
import pytest
from hypothesis import given, strategies as st

from appliance import filters
from appliance.errdefs import InvalidArgument

# A corpus in the spirit of containerd's own filter tests.
CORPUS = [
    {"name": "foo", "labels": {"foo": "true"}},                                    # 0
    {"name": "bar"},                                                               # 1
    {"name": "foo", "labels": {"foo": "present", "more complex label": "present"}},  # 2
    {"name": "bar", "labels": {"bar": "true"}},                                    # 3
    {"name": "fooer", "labels": {'label with \\ and "': "present"}},               # 4
    {"name": "baz", "other": "too complex, yo"},                                   # 5
    {"name": "bazo", "other": "abc"},                                              # 6
    {"name": "compound", "labels": {"foo": "omg_asdf.asdf-qwer", "com.example.x": "y"}},  # 7
    {"name": "docker.io/library/busybox:latest",
     "target": {"digest": "sha256:abc", "mediaType": "application/json",
                "annotations": {"org.opencontainers.image.ref.name": "1.36"}}},   # 8
    {"name": "user@example.com", "labels": {"empty": "", "eq": "a=b"}},            # 9
]


def select(*exprs, corpus=CORPUS):
    f = filters.parse(*exprs)
    return [i for i, obj in enumerate(corpus) if f.match(filters.adapt_object(obj))]


ALL = list(range(len(CORPUS)))


@pytest.mark.parametrize("exprs, expected", [
    ((), ALL),
    (("",), ALL),
    (("name",), ALL),
    (("other",), [5, 6]),
    (("labels.foo",), [0, 2, 7]),
    (("labels.foo,name",), [0, 2, 7]),
    # equality / inequality
    (("name==bar",), [1, 3]),
    (("name!=bar",), [0, 2, 4, 5, 6, 7, 8, 9]),
    (("other!=abc",), [0, 1, 2, 3, 4, 5, 7, 8, 9]),   # absent reads as "", as containerd
    (("labels.foo==true",), [0]),
    (("labels.foo==omg_asdf.asdf-qwer",), [7]),
    (("name==bar,labels.bar",), [3]),
    (("name==bar,labels.bar==true",), [3]),
    (("name==bar,labels.bar==wrong",), []),
    # aliases from newer containerd
    (("name=bar",), [1, 3]),
    (("name!==bar,labels.foo",), [0, 2, 7]),
])
def test_select(exprs, expected):
    assert select(*exprs) == expected


def test_regex_is_unanchored_search():
    assert select("name~=^foo") == [0, 2, 4]
    assert select("name~=oo") == [0, 2, 4]
    assert select("name~=^foo$") == [0, 2]
    assert select("other~=[abc]+,name!=foo") == [5, 6]
    assert select(r"name~=^\w+$") == [0, 1, 2, 3, 4, 5, 6, 7]
    assert select("name!~=^ba") == [0, 2, 4, 7, 8, 9]


def test_regex_absent_field_matches_against_empty_string():
    # containerd matches the adaptor's value even when absent.
    assert select("other~=^$") == [0, 1, 2, 3, 4, 7, 8, 9]


def test_regex_alternative_quotes():
    assert select("other~=/[abc]{1,2}/,name!=foo") == [5, 6]
    assert select("other~=|complex, yo$|") == [5]
    assert select(r"name~=/library\/busybox/") == [8]
    assert select("name~=/^(foo|bar)$/") == [0, 1, 2, 3]
    assert select(r"name~=|^(foo\|bar)$|") == [0, 1, 2, 3]   # delimiter escaped inside
    # unquoted regexes may contain '|' after the first character
    assert select("name~=^(foo|bar)$") == [0, 1, 2, 3]


def test_or_across_strings():
    assert select("name==bar", "labels.foo==true") == [0, 1, 3]
    assert select("name==nothing", "name==baz") == [5]
    assert select("name==nothing", "") == ALL   # an empty string matches everything


def test_and_within_string_with_regex_and_presence():
    assert select("name~=^foo,labels.foo==present") == [2]


def test_quoted_field_names():
    assert select('labels."com.example.x"==y') == [7]
    # labels adaptor joins the rest of the path, so the unquoted form is the same lookup
    assert select("labels.com.example.x==y") == [7]
    assert select('name==foo,labels."more complex label"') == [2]
    assert select(r'labels."label with \\ and \""==present') == [4]
    assert select('labels."com.example.x".y') == []


def test_quoted_values():
    assert select('other=="too complex, yo"') == [5]
    assert select(r'other=="too\x20complex,\u0020yo"') == [5]
    assert select(r'other=="\141\142\143"') == [6]
    assert select(r'name=="\x66\157o"') == [0, 2]
    assert select(r'labels."eq"=="a=b"') == [9]
    # \xHH bytes are assembled into UTF-8, as Go strings are
    f = filters.parse(r'name=="caf\xc3\xa9"')
    assert f.match(filters.adapt_object({"name": "café"}))


def test_unquoted_values_with_punctuation():
    assert select("name==docker.io/library/busybox:latest") == [8]
    assert select("target.digest==sha256:abc") == [8]
    assert select("target.mediaType==application/json") == [8]
    assert select("name==user@example.com") == [9]
    assert select("labels.eq==a=b") == [9]
    # '/' and '|' only quote after ~=, so literal paths work with ==
    f = filters.parse("path==/var/lib/x|y")
    assert f.match(filters.adapt_object({"path": "/var/lib/x|y"}))


def test_nested_maps():
    assert select("target.annotations.org.opencontainers.image.ref.name==1.36") == []
    f = filters.parse("target.annotations.org.opencontainers.image.ref.name==1.36")
    adaptor = filters.adapt_object(CORPUS[8], labels_key=("labels", "annotations"))
    assert f.match(adaptor)


def test_presence_semantics_of_adapt_object():
    a = filters.adapt_object({"name": "", "labels": {"empty": ""}, "target": {"digest": "d"}})
    assert a(["name"]) == ("", False)          # struct fields: empty is absent
    assert a(["labels", "empty"]) == ("", True)  # map keys: membership
    assert a(["labels"]) == ("", False)
    assert a(["target"]) == ("", False)
    assert a(["target", "digest"]) == ("d", True)
    assert a(["target", "digest", "x"]) == ("", False)
    assert a(["nope"]) == ("", False)
    assert filters.adapt_object({"flag": True, "n": 3})(["flag"]) == ("true", True)
    assert filters.adapt_object({"n": 3})(["n"]) == ("3", True)
    assert select("labels.empty") == [9]
    assert select('labels.empty==""') == [9]


@pytest.mark.parametrize("expr", [
    "name==foo",
    "  name==foo",
    "name == foo",
    "name==foo ",
    " name ==  foo , labels . foo ",
    "name==foo\t,\tlabels.foo",
    'name== "foo"',
])
def test_whitespace_tolerance(expr):
    assert select(expr) in ([0, 2],)


def test_whitespace_ends_an_unquoted_value():
    with pytest.raises(InvalidArgument, match="unexpected input 'b'"):
        filters.parse("name==a b")


def test_custom_adaptor_receives_fieldpath():
    seen = []

    def adaptor(fieldpath):
        seen.append(fieldpath)
        return "v", True

    assert filters.parse('a.b."c.d"==v').match(adaptor)
    assert seen == [["a", "b", "c.d"]]


def test_regex_compiled_once_per_parse():
    f = filters.parse("name~=^fo+$,other~=x", "name!~=z")
    regexes = [s.regex for clause in f.clauses for s in clause]
    assert all(r is not None for r in regexes)
    assert f.clauses[0][0].regex.pattern == "^fo+$"


@pytest.mark.parametrize("expr, problem", [
    ("name==", "expected value or quoted at end of input"),
    ("name!=", "expected value or quoted"),
    ("name~=", "expected value or quoted"),
    ("image~=,id==x", "[image~= >|,|< id==x]: expected value or quoted"),
    ("name==foo,", "[name==foo,]: expected field or quoted at end of input"),
    ("name==a,,b", "[name==a, >|,|< b]: expected field or quoted"),
    (",name", "expected field or quoted"),
    ("labels.", "expected field or quoted at end of input"),
    ("==foo", "[ >|=|< =foo]: expected field or quoted"),
    ("   ", "expected field or quoted"),
    ("labels.?foo", "[labels. >|?|< foo]: expected field or quoted"),
    ("labels.|foo|==x", "invalid quote encountered"),
    ("labels./foo/==x", "invalid quote encountered"),
    ('labels."foo==x', "quoted literal not terminated"),
    ('name=="foo', "quoted literal not terminated"),
    ("name~=/foo", "quoted literal not terminated"),
    ('name=="a\nb"', "quoted literal not terminated"),
    (r'name=="\d"', r"illegal escape sequence \d"),
    (r'name=="\q"', "illegal escape"),
    (r'name=="\x4"', r"illegal \x escape"),
    (r'name=="\uD800"', "not a valid code point"),
    (r'name=="\400"', "illegal octal escape"),
    (r'name=="\xff"', "not valid UTF-8"),
    (r"name~=/a\|b/", r"illegal escape sequence \|"),
    ("name===foo", "unsupported operator '==='"),
    ("name~foo", "unsupported operator '~'"),
    ("name foo", "expected an operator"),
    ("name==foo bar", "unexpected input 'b'"),
    ('name=="foo"bar', "unexpected input 'b'"),
    ("name~=[abc", "invalid regular expression '[abc'"),
    ("name~=(", "invalid regular expression"),
    ("name!~=*x", "invalid regular expression"),
])
def test_parse_errors(expr, problem):
    with pytest.raises(InvalidArgument) as info:
        filters.parse(expr)
    assert info.value.message.startswith("filters: parse error: [")
    assert problem in info.value.message


def test_error_in_any_string_fails_the_whole_parse():
    with pytest.raises(InvalidArgument):
        filters.parse("name==ok", "name==")


def test_parse_rejects_non_strings():
    with pytest.raises(TypeError, match="parse\\(\\*request.filters\\)"):
        filters.parse(["name==foo"])


# -- properties ---------------------------------------------------------------

label_keys = st.text(alphabet="abcxyz.-_/ \"\\,=", min_size=1, max_size=8)
label_values = st.text(max_size=8).filter(lambda s: "\x00" not in s)
label_dicts = st.dictionaries(label_keys, label_values, max_size=5)


def go_quote(s):
    """A Go double-quoted literal for s (escapes only what must be escaped)."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


@given(labels=label_dicts, key=label_keys, value=label_values)
def test_property_label_equality(labels, key, value):
    adaptor = filters.adapt_object({"labels": labels})
    f = filters.parse(f"labels.{go_quote(key)}=={go_quote(value)}")
    assert f.match(adaptor) == (labels.get(key) == value)
    g = filters.parse(f"labels.{go_quote(key)}!={go_quote(value)}")
    assert g.match(adaptor) == (labels.get(key, "") != value)
    assert filters.parse(f"labels.{go_quote(key)}").match(adaptor) == (key in labels)


@given(labels=label_dicts.filter(bool), data=st.data())
def test_property_existing_key_matches(labels, data):
    key = data.draw(st.sampled_from(sorted(labels)))
    adaptor = filters.adapt_object({"labels": labels})
    assert filters.parse(f"labels.{go_quote(key)}=={go_quote(labels[key])}").match(adaptor)


plain = st.from_regex(r"[A-Za-z0-9_.:/@=-]{1,12}", fullmatch=True).filter(
    lambda s: s[0] not in "=!~")


@given(name=plain, other=plain)
def test_property_unquoted_values_round_trip(name, other):
    adaptor = filters.adapt_object({"name": name})
    assert filters.parse(f"name=={name}").match(adaptor)
    assert filters.parse(f"name!={other}").match(adaptor) == (name != other)
    assert filters.parse(f"name=={other}", f"name=={name}").match(adaptor)
    assert filters.parse(f"name=={name},name=={other}").match(adaptor) == (name == other)


@given(st.text(max_size=30))
def test_property_parse_never_crashes(text):
    try:
        f = filters.parse(text)
    except InvalidArgument:
        return
    f.match(filters.adapt_object({"name": "x", "labels": {"a": "b"}}))
