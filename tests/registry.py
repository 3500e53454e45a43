"""Debian's docker-registry (distribution 2.8) on 127.0.0.1, private storage, optional
htpasswd auth; images pushed into it with skopeo. Stopped by the pid we started."""
from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

REGISTRY = "/usr/bin/docker-registry"
SKOPEO = "/usr/bin/skopeo"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TokenServer:
    """The distribution token flow's other half: Basic credentials in, a JWT signed with a
    self-signed key out (the registry trusts its certificate through `rootcertbundle`)."""

    def __init__(self, workdir: Path, users: dict[str, str], service: str):
        import datetime
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID
        self.users, self.service, self.issued = users, service, 0
        self.requests: list[tuple[str, str]] = []   # (method, user) of each token issued
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-token-issuer")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=1))
                .sign(self.key, hashes.SHA256()))
        self.cert_path = workdir / "token.crt"
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        import base64
        self.x5c = [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]
        self.port = free_port()
        self.realm = f"http://127.0.0.1:{self.port}/token"

    def start(self) -> None:
        import http.server
        import threading
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                import base64
                from urllib.parse import parse_qs, urlsplit
                header = self.headers.get("Authorization", "")
                user = secret = ""
                if header.startswith("Basic "):
                    user, _, secret = base64.b64decode(header[6:]).decode().partition(":")
                scopes = parse_qs(urlsplit(self.path).query).get("scope", [])
                self.answer(user, secret, scopes, "token")

            def do_POST(self):   # OAuth2 password grant, as containerd tries first
                from urllib.parse import parse_qs
                length = int(self.headers.get("Content-Length", "0"))
                form = parse_qs(self.rfile.read(length).decode())
                one = lambda key: form.get(key, [""])[0]   # noqa: E731
                if one("grant_type") != "password":
                    self.answer("", None, [], "")
                    return
                self.answer(one("username"), one("password"), one("scope").split(),
                            "access_token")

            def answer(self, user, secret, scopes, key):
                import json
                if server.users.get(user) != secret:
                    self.send_response(401)
                    self.end_headers()
                    return
                server.requests.append((self.command, user))
                body = json.dumps({key: server.token(user, scopes)}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def token(self, user: str, scopes: list[str]) -> str:
        import jwt
        access = []
        for scope in scopes:
            kind, name, actions = scope.split(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        self.issued += 1
        return jwt.encode({"iss": "test-issuer", "sub": user, "aud": self.service,
                           "exp": now + 300, "nbf": now - 10, "iat": now,
                           "jti": str(self.issued), "access": access},
                          self.key, algorithm="RS256", headers={"x5c": self.x5c})

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def make_ca_and_server_cert(directory: Path, ip: str = "127.0.0.1") -> tuple[Path, Path, Path]:
    """(ca.pem, server.pem, server.key): a test CA and a server certificate for `ip`."""
    import datetime
    import ipaddress
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    now = datetime.datetime.now(datetime.timezone.utc)

    def cert(subject, issuer, key, signer, ca, san=None):
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(days=1))
             .not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return b.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ctrappliance test CA")])
    ca_cert = cert(ca_name, ca_name, ca_key, ca_key, True)
    server = cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ip)]), ca_name, key,
                  ca_key, False, [x509.IPAddress(ipaddress.ip_address(ip))])
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


class LocalRegistry:
    def __init__(self, users: dict[str, str] | None = None, token: bool = False,
                 tls: bool = False):
        """users: htpasswd (Basic) accounts, or with `token` the token server's accounts."""
        self.workdir = Path(tempfile.mkdtemp(prefix="ca-registry-", dir="/tmp"))
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.users = users or {}
        self.token_server = TokenServer(self.workdir, self.users, "test-registry") \
            if token else None
        self.ca = None
        if tls:   # served over HTTPS with a certificate from a test CA (self.ca)
            self.ca, self.cert, self.key = make_ca_and_server_cert(self.workdir)
        self.proc: subprocess.Popen | None = None

    def start(self, timeout=20.0) -> "LocalRegistry":
        auth = ""
        if self.token_server:
            self.token_server.start()
            auth = (f"auth:\n  token:\n    realm: {self.token_server.realm}\n"
                    f"    service: test-registry\n    issuer: test-issuer\n"
                    f"    rootcertbundle: {self.token_server.cert_path}\n")
        elif self.users:
            import bcrypt
            lines = [f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(5)).decode()}"
                     for u, p in self.users.items()]
            (self.workdir / "htpasswd").write_text("\n".join(lines) + "\n")
            auth = (f"auth:\n  htpasswd:\n    realm: test-realm\n"
                    f"    path: {self.workdir / 'htpasswd'}\n")
        tls = (f"  tls:\n    certificate: {self.cert}\n    key: {self.key}\n"
               if self.ca else "")
        config = self.workdir / "config.yml"
        config.write_text(f"version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n"
                          f"    rootdirectory: {self.workdir / 'data'}\n  delete:\n"
                          f"    enabled: true\nhttp:\n  addr: {self.host}\n{tls}{auth}")
        self.log = open(self.workdir / "registry.log", "wb")
        self.proc = subprocess.Popen([REGISTRY, "serve", str(config)], stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError((self.workdir / "registry.log").read_text())
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise TimeoutError("docker-registry did not start")

    def push(self, oci_archive: Path, repo_tag: str) -> str:
        """Copy an OCI archive (every image of an index) to `<host>/<repo_tag>`; returns the
        manifest (or index) digest."""
        argv = [SKOPEO, "copy", "--quiet", "--all", "--dest-tls-verify=false"]   # (the test CA)
        if self.users:
            user, password = next(iter(self.users.items()))
            argv += ["--dest-creds", f"{user}:{password}"]
        digest_file = self.workdir / "digest"
        argv += ["--digestfile", str(digest_file), f"oci-archive:{oci_archive}",
                 f"docker://{self.host}/{repo_tag}"]
        subprocess.run(argv, check=True, capture_output=True, timeout=120)
        return digest_file.read_text().strip()

    def blob_gets(self, digest: str) -> int:
        """GETs of that blob the registry served (any repository), from its access log."""
        text = (self.workdir / "registry.log").read_text(errors="replace")
        return sum(1 for line in text.splitlines()
                   if '"GET /v2/' in line and f"/blobs/{digest} " in line)

    def corrupt(self, digest: str) -> None:
        """Flip the stored blob's first byte: the registry serves it as it is."""
        hexdigest = digest.split(":", 1)[1]
        path = (self.workdir / "data" / "docker" / "registry" / "v2" / "blobs" / "sha256"
                / hexdigest[:2] / hexdigest / "data")
        data = bytearray(path.read_bytes())
        data[0] ^= 0xFF
        path.write_bytes(bytes(data))

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc:
            self.log.close()
        if self.token_server:
            self.token_server.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
