"""A test CA, a server certificate for 127.0.0.1/localhost, a client certificate, and a second CA
that signed none of them (made with `cryptography`)."""

from __future__ import annotations

import datetime
import os
import ssl
from dataclasses import dataclass
from typing import Any

from .processes import LOCAL, write_file


@dataclass
class PKI:
    dir: str
    ca: str  # CA certificate (PEM)
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    other_ca: str  # a CA that signed nothing here

    def server_context(self, require_client_cert: bool = False) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.server_cert, self.server_key)
        if require_client_cert:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(self.ca)
        return ctx


def make_pki(directory: str) -> PKI:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    def ca(cn: str) -> tuple[Any, Any]:
        k = key()
        cert = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name(cn))
                .public_key(k.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False,
                                             encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(k.public_key()), critical=False)
                .sign(k, hashes.SHA256()))
        return k, cert

    def leaf(cn: str, ca_key: Any, ca_cert: Any, server: bool) -> tuple[Any, Any]:
        k = key()
        b = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca_cert.subject)
             .public_key(k.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5))
             .not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                   else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                            critical=False))
        if server:
            b = b.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(LOCAL))]), critical=False)
        return k, b.sign(ca_key, hashes.SHA256())

    def pem_cert(c: Any) -> bytes:
        return c.public_bytes(serialization.Encoding.PEM)

    def pem_key(k: Any) -> bytes:
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())

    ca_key, ca_cert = ca("modelseal test CA")
    _, other_cert = ca("modelseal other CA")
    s_key, s_cert = leaf("127.0.0.1", ca_key, ca_cert, server=True)
    c_key, c_cert = leaf("modelseal test client", ca_key, ca_cert, server=False)
    p = lambda n: os.path.join(directory, n)  # noqa: E731
    return PKI(
        dir=directory,
        ca=write_file(p("ca.pem"), pem_cert(ca_cert), 0o644),
        server_cert=write_file(p("server.pem"), pem_cert(s_cert), 0o644),
        server_key=write_file(p("server.key"), pem_key(s_key)),
        client_cert=write_file(p("client.pem"), pem_cert(c_cert), 0o644),
        client_key=write_file(p("client.key"), pem_key(c_key)),
        other_ca=write_file(p("other-ca.pem"), pem_cert(other_cert), 0o644),
    )
