"""Registry access, the pure parts: reference normalisation, WWW-Authenticate challenges and
token URLs, certs.d host directories."""
import pytest
from hypothesis import given, strategies as st

from appliance.core.remotes import auth, hosts, reference
from appliance.errdefs import InvalidArgument

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize("text, expected", [
    ("busybox", "docker.io/library/busybox:latest"),
    ("busybox:1.36", "docker.io/library/busybox:1.36"),
    ("library/busybox", "docker.io/library/busybox:latest"),
    ("index.docker.io/library/busybox", "docker.io/library/busybox:latest"),
    ("docker.io/user/app:v1", "docker.io/user/app:v1"),
    ("user/app", "docker.io/user/app:latest"),
    ("localhost/app", "localhost/app:latest"),
    ("localhost:5000/a/b/c:tag", "localhost:5000/a/b/c:tag"),
    ("127.0.0.1:5000/app", "127.0.0.1:5000/app:latest"),
    ("registry.k8s.io/pause:3.9", "registry.k8s.io/pause:3.9"),
    (f"busybox@{DIGEST}", f"docker.io/library/busybox@{DIGEST}"),
    (f"host.io/a:tag@{DIGEST}", f"host.io/a:tag@{DIGEST}"),
    ("a:5000", "docker.io/library/a:5000"),
    ("my_app/x-y.z__w", "docker.io/my_app/x-y.z__w:latest"),
])
def test_references_normalise_as_docker_does(text, expected):
    assert str(reference.parse(text)) == expected


def test_reference_parts():
    ref = reference.parse(f"localhost:5000/team/app:v2@{DIGEST}")
    assert (ref.domain, ref.path, ref.tag, ref.digest) == ("localhost:5000", "team/app", "v2", DIGEST)
    assert ref.object == DIGEST and ref.name == "localhost:5000/team/app"
    assert str(ref.with_digest(DIGEST)) == f"localhost:5000/team/app@{DIGEST}"
    assert reference.parse("app").object == "latest"


@pytest.mark.parametrize("text", [
    "", "Busybox", "docker.io/User/app", "app:", "app:-bad", "app@sha256:short",
    "a//b", "/abs", "a/", "app:" + "t" * 129, "host.io/" + "a" * 260, "a b", "-app",
])
def test_bad_references_are_invalid_argument(text):
    with pytest.raises(InvalidArgument, match="invalid reference format"):
        reference.parse(text)


@given(st.text(max_size=80))
def test_parse_never_fails_otherwise_and_round_trips(text):
    try:
        ref = reference.parse(text)
    except InvalidArgument:
        return
    assert reference.parse(str(ref)) == ref


def test_challenges_basic_and_bearer():
    [basic] = auth.parse_challenges('Basic realm="Registry Realm"')
    assert basic.scheme == "basic" and basic.params == {"realm": "Registry Realm"}
    header = ('Bearer realm="https://auth.example/token",service="registry.example",'
              'scope="repository:a/b:pull"')
    [bearer] = auth.parse_challenges(header)
    assert bearer.scheme == "bearer"
    assert bearer.params == {"realm": "https://auth.example/token",
                             "service": "registry.example", "scope": "repository:a/b:pull"}


def test_several_challenges_quoted_escapes_and_tokens():
    got = auth.parse_challenges('Newauth realm="apps", type=1, title="Login to \\"apps\\"", '
                                'Basic realm="simple"')
    assert [c.scheme for c in got] == ["newauth", "basic"]
    assert got[0].params == {"realm": "apps", "type": "1", "title": 'Login to "apps"'}
    assert got[1].params == {"realm": "simple"}


@given(st.text(max_size=200))
def test_challenge_parser_never_raises(header):
    for challenge in auth.parse_challenges(header):
        assert challenge.scheme == challenge.scheme.lower()


def test_token_url_and_response():
    [c] = auth.parse_challenges('Bearer realm="http://127.0.0.1:1/token",service="reg"')
    assert auth.token_url(c, auth.pull_scope("a/b")) == \
        "http://127.0.0.1:1/token?service=reg&scope=repository%3Aa%2Fb%3Apull"
    [c] = auth.parse_challenges('Bearer realm="http://t/x?a=1",scope="repository:a/b:pull"')
    assert auth.token_url(c, "repository:a/b:pull") == \
        "http://t/x?a=1&scope=repository%3Aa%2Fb%3Apull"
    assert auth.token_from_response({"access_token": "t2"}) == "t2"
    assert auth.token_from_response({"token": "t1", "access_token": "t2"}) == "t1"
    with pytest.raises(ValueError):
        auth.token_from_response({"expires_in": 60})
    assert auth.basic_header("u", "p") == "Basic dTpw"


def test_oauth_form_is_containerds():
    [c] = auth.parse_challenges('Bearer realm="http://t/token",service="reg",'
                                'scope="repository:a/b:pull"')
    assert auth.oauth_form(c, "repository:a/b:pull", "u", "p") == {
        "scope": "repository:a/b:pull", "service": "reg", "client_id": "containerd-client",
        "grant_type": "password", "username": "u", "password": "p"}
    form = auth.oauth_form(c, "repository:x:pull", "", "identity")
    assert form["grant_type"] == "refresh_token" and form["refresh_token"] == "identity"
    assert form["scope"] == "repository:a/b:pull repository:x:pull"


def test_default_hosts():
    [docker] = hosts.registry_hosts("docker.io")
    assert docker.base_url == "https://registry-1.docker.io/v2"
    [local] = hosts.registry_hosts("127.0.0.1:5000")
    assert local.base_url == "http://127.0.0.1:5000/v2" and local.skip_verify
    [loopv6] = hosts.registry_hosts("[::1]:5000")
    assert loopv6.scheme == "http"
    [other] = hosts.registry_hosts("registry.example:443")
    assert other.base_url == "https://registry.example:443/v2"
    assert other.capabilities == hosts.ALL_CAPABILITIES


def test_hosts_toml_mirrors_in_file_order_then_server(tmp_path):
    d = tmp_path / "registry.example_5000_"
    d.mkdir()
    (d / "hosts.toml").write_text('''
server = "https://registry.example:5000"
ca = "ca.pem"

[host."http://mirror-b:1000"]
  capabilities = ["pull"]
  skip_verify = true
  [host."http://mirror-b:1000".header]
    x-one = "1"
    x-two = ["a", "b"]

[host."https://mirror-a/prefix"]
  capabilities = ["pull", "resolve"]
  client = [["c.cert", "/abs/c.key"]]

[host."https://mirror-c/custom/path"]
  override_path = true
''')
    got = hosts.registry_hosts("registry.example:5000", str(tmp_path))
    assert [h.base_url for h in got] == ["http://mirror-b:1000/v2", "https://mirror-a/prefix/v2",
                                         "https://mirror-c/custom/path",
                                         "https://registry.example:5000/v2"]
    assert got[0].capabilities == {"pull"} and got[0].skip_verify is True
    assert got[0].header == {"x-one": ["1"], "x-two": ["a", "b"]}
    assert got[1].client_pairs == [(str(d / "c.cert"), "/abs/c.key")]
    assert got[2].capabilities == hosts.ALL_CAPABILITIES
    assert got[3].ca_certs == [str(d / "ca.pem")]


def test_hosts_dir_lookup_order_and_cert_files(tmp_path):
    (tmp_path / "_default").mkdir()
    (tmp_path / "_default" / "hosts.toml").write_text('server = "https://fallback"\n')
    assert hosts.registry_hosts("any.example", str(tmp_path))[-1].host == "fallback"
    certs = tmp_path / "certs.example"
    certs.mkdir()
    (certs / "ca.crt").write_text("x")
    (certs / "client.cert").write_text("x")
    (certs / "client.key").write_text("x")
    [h] = hosts.registry_hosts("certs.example", str(tmp_path))
    assert h.base_url == "https://certs.example/v2"
    assert h.ca_certs == [str(certs / "ca.crt")]
    assert h.client_pairs == [(str(certs / "client.cert"), str(certs / "client.key"))]


def test_bad_hosts_toml(tmp_path):
    d = tmp_path / "bad.example"
    d.mkdir()
    (d / "hosts.toml").write_text('[host."https://m"]\ncapabilities = ["fly"]\n')
    with pytest.raises(InvalidArgument, match="unknown capability fly"):
        hosts.registry_hosts("bad.example", str(tmp_path))
    (d / "hosts.toml").write_text("not = [toml\n")   # containerd logs it and goes on
    assert hosts.registry_hosts("bad.example", str(tmp_path))[-1].base_url == \
        "https://bad.example/v2"
