"""
Test certificates made on the fly with the cryptography package: a CA and
server certificates it signs, written as PEM files.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class Issued:
    """
    PEM files of one certificate and its key.
    """

    certificate: Path
    key: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


_PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def _write(path: Path, cert: x509.Certificate, key: _PrivateKey) -> Issued:
    certificate = path.with_suffix(".crt")
    keyfile = path.with_suffix(".key")
    certificate.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    keyfile.chmod(0o600)
    return Issued(certificate, keyfile)


class CertificateAuthority:
    """
    A throw-away CA that issues server and client certificates.
    """

    def __init__(self, directory: Path, name: str = "popserv test CA") -> None:
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            # Python 3.13's ssl.create_default_context() verifies with
            # VERIFY_X509_STRICT, which wants a CA to carry key usage and a
            # subject key identifier...
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        self.files = _write(directory / "ca", self.cert, self.key)

    def issue(
        self, name: str, sans: list[str] | None, filename: str | None = None, rsaKey: bool = False
    ) -> Issued:
        """
        A certificate for C{name} with the given DNS names, IP addresses and
        e-mail addresses (those with "@"); "DNS:" makes what follows a DNS
        name, whatever it is, and "email:" an e-mail address.  With C{sans}
        L{None}, a certificate without the subjectAltName extension.  With
        C{rsaKey}, for an RSA key rather than an ECDSA one: what TLS 1.2
        cipher suites a server can negotiate depends on its key's type.
        """
        key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
        if rsaKey:
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        alternatives: list[x509.GeneralName] = []
        for san in sans or []:
            if san.startswith("DNS:"):  # any text, as a DNS name
                alternatives.append(x509.DNSName(san[4:]))
                continue
            if san.startswith("email:"):  # what cryptography takes as one
                alternatives.append(x509.RFC822Name(san[6:]))
                continue
            if "@" in san:
                alternatives.append(x509.RFC822Name(san))
                continue
            try:
                alternatives.append(x509.IPAddress(ipaddress.ip_address(san)))
            except ValueError:
                alternatives.append(x509.DNSName(san))
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            # ...and the certificates it signs to name it by that identifier.
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if sans is not None:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(alternatives), critical=False
            )
        cert = builder.sign(self.key, hashes.SHA256())
        return _write(self.directory / (filename or name), cert, key)


def selfSigned(
    path: Path, algorithm: hashes.SHA256 | hashes.SHA384 | hashes.SHA512 | None
) -> Issued:
    """
    A self-signed certificate for "localhost": ECDSA signed with
    C{algorithm}, or with L{None} an Ed25519 one (whose signature names no
    hash).
    """
    key: _PrivateKey = (
        ed25519.Ed25519PrivateKey.generate()
        if algorithm is None
        else ec.generate_private_key(ec.SECP256R1())
    )
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(_name("localhost"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, algorithm)
    )
    return _write(path, cert, key)
