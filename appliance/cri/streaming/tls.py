"""TLS for the streaming server (`enable_tls_streaming`): the configured key pair
(`x509_key_pair_streaming`), or a self-signed certificate made at start, as containerd
does (ours with the `openssl` command; containerd's with Go's crypto)."""
from __future__ import annotations

import ipaddress
import os
import shutil
import ssl
import subprocess

from ...errdefs import ApplianceError, InvalidArgument

OPENSSL_TIMEOUT = 60.0


def self_signed(directory: str, address: str) -> tuple[str, str]:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise ApplianceError("enable_tls_streaming without x509_key_pair_streaming needs the "
                             "openssl command to make a self-signed certificate")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    try:
        ipaddress.ip_address(address)
        alt = f"IP:{address}"
    except ValueError:
        alt = f"DNS:{address}"
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "365", "-subj",
                    "/O=ctrappliance/CN=ctrappliance-streaming", "-addext",
                    f"subjectAltName={alt}", "-keyout", key, "-out", cert],
                   check=True, capture_output=True, timeout=OPENSSL_TIMEOUT)
    return cert, key


def server_context(pair, address: str, directory: str) -> ssl.SSLContext:
    cert, key = pair.tls_cert_file, pair.tls_key_file
    if bool(cert) != bool(key):
        raise InvalidArgument("must set X509KeyPairStreaming.TLSCertFile and "
                              "X509KeyPairStreaming.TLSKeyFile")
    if not cert:
        cert, key = self_signed(directory, address or "127.0.0.1")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context
