"""
Tests for popserv.certauth: which user a verified client certificate may
log in as (SASL EXTERNAL).
"""

from __future__ import annotations

from certificates import CertificateAuthority
from cryptography import x509

from popserv.certauth import userForCertificate


def load(ca: CertificateAuthority, sans: list[str]) -> x509.Certificate:
    issued = ca.issue("client", sans, filename="client-" + str(len(sans)))
    return x509.load_pem_x509_certificate(issued.certificate.read_bytes())


def test_email(ca: CertificateAuthority) -> None:
    """
    A user@domain name must be one of the certificate's e-mail addresses;
    the domain's case does not matter, and the user is the certificate's
    own spelling (one mailbox, one name).
    """
    cert = load(ca, ["alice@example.org"])
    assert userForCertificate(cert, "alice@example.org") == "alice@example.org"
    assert userForCertificate(cert, "alice@EXAMPLE.ORG") == "alice@example.org"
    assert userForCertificate(cert, "Alice@example.org") is None
    assert userForCertificate(cert, "bob@example.org") is None


def test_dnsName(ca: CertificateAuthority) -> None:
    """
    A host-style name must be one of the certificate's DNS names
    (service-identity rules), and is used in lower case.
    """
    cert = load(ca, ["backup.example.org"])
    assert userForCertificate(cert, "BACKUP.example.org") == "backup.example.org"
    assert userForCertificate(cert, "other.example.org") is None


def test_derived(ca: CertificateAuthority) -> None:
    """
    Without an authorization identity the certificate must name exactly one
    user: its one e-mail address, else its one DNS name.
    """
    assert userForCertificate(load(ca, ["alice@example.org"]), "") == "alice@example.org"
    assert userForCertificate(load(ca, ["host.example.org"]), "") == "host.example.org"
    assert userForCertificate(load(ca, ["a@example.org", "b@example.org"]), "") is None
    assert userForCertificate(load(ca, ["a.example.org", "b.example.org", "c.example"]), "") is None
    # A wildcard names many hosts, no user: it must be asked for by name.
    wildcard = load(ca, ["*.example.org"])
    assert userForCertificate(wildcard, "") is None
    assert userForCertificate(wildcard, "host.example.org") == "host.example.org"
    # Nor is a name that is an address, or has an empty label.
    for odd in ["alice@example.org", ".example.org", "a..example.org"]:
        assert userForCertificate(load(ca, [f"DNS:{odd}"]), "") is None, odd
    assert userForCertificate(load(ca, ["DNS:.example.org"]), ".example.org") is None
    assert userForCertificate(load(ca, ["DNS: .example.org"]), "") is None
    # Only the exact ASCII spelling: padding or a U-label would be a second
    # name (a second Maildir) for the same user.
    backup = load(ca, ["backup.example.org"])
    for other in [" backup.example.org", "backup.example.org\t", "backup.example.org\n"]:
        assert userForCertificate(backup, other) is None, repr(other)
    idn = load(ca, ["xn--hst-sna.example.org"])
    assert userForCertificate(idn, "höst.example.org") is None
    assert userForCertificate(idn, "xn--hst-sna.example.org") == "xn--hst-sna.example.org"
