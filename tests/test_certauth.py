"""
Tests for popserv.certauth: which user a verified client certificate may
log in as (SASL EXTERNAL).
"""

from __future__ import annotations

from certificates import CertificateAuthority
from cryptography import x509
from twisted.cred.error import UnauthorizedLogin
from twisted.python.failure import Failure

from popserv.certauth import CertificateCredentials, ClientCertificateChecker, userForCertificate


def load(ca: CertificateAuthority, sans: list[str] | None) -> x509.Certificate:
    issued = ca.issue("client", sans, filename="client-" + str(len(sans or [])))
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
    for odd in ["alice@example.org", ".example.org", "a..example.org", "example.org."]:
        assert userForCertificate(load(ca, [f"DNS:{odd}"]), "") is None, odd
    # The absolute form is a second spelling of the name, asked for too.
    assert userForCertificate(load(ca, ["example.org"]), "example.org.") is None
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


def test_emailSpelling(ca: CertificateAuthority) -> None:
    """
    The certificate's address is the user as it spells it, upper case and
    all; its local part is compared exactly, to the last "@" (one quoted
    in the local part is not the separator).
    """
    cert = load(ca, ["Alice@Example.ORG"])
    assert userForCertificate(cert, "") == "Alice@Example.ORG"
    assert userForCertificate(cert, "Alice@example.org") == "Alice@Example.ORG"
    assert userForCertificate(cert, "alice@Example.ORG") is None
    quoted = load(ca, ['"a@b"@example.org'])
    assert userForCertificate(quoted, '"a@b"@EXAMPLE.org') == '"a@b"@example.org'
    assert userForCertificate(quoted, '"a@B"@example.org') is None


def test_notAnAddress(ca: CertificateAuthority) -> None:
    """
    An e-mail address without a local part, or without "@" (the forms of a
    name constraint, not of a mailbox), is no user: derived, the one
    without "@" was the name of the host user of that name.  Nor does a
    non-ASCII name match an address by Unicode case mapping.
    """
    for odd in ["backup.example.org", "@example.org"]:
        cert = load(ca, [f"email:{odd}"])
        assert userForCertificate(cert, "") is None, odd
        assert userForCertificate(cert, odd) is None, odd
    cert = load(ca, ["alice@example.ork"])
    assert userForCertificate(cert, "alice@example.or\N{KELVIN SIGN}") is None
    assert userForCertificate(cert, "alice@EXAMPLE.ORK") == "alice@example.ork"


def test_derivedDNSName(ca: CertificateAuthority) -> None:
    """
    A derived DNS name is the user in lower case, as an asked-for one is;
    a certificate with e-mail addresses (here two, so none is derived)
    does not fall back to its DNS name.
    """
    assert userForCertificate(load(ca, ["Host.Example.ORG"]), "") == "host.example.org"
    both = load(ca, ["a@example.org", "b@example.org", "host.example.org"])
    assert userForCertificate(both, "") is None
    assert userForCertificate(both, "host.example.org") == "host.example.org"


def test_noAlternativeNames(ca: CertificateAuthority) -> None:
    """
    A certificate without subject alternative names names no user: its
    subject's common name is never used.
    """
    cert = load(ca, None)
    assert userForCertificate(cert, "") is None
    assert userForCertificate(cert, "client@example.org") is None


def test_dnsNameNeedsDNSNames(ca: CertificateAuthority) -> None:
    """
    A host name must be one of the certificate's DNS names: one with an
    address and an e-mail address, but no DNS name, names no host.
    """
    cert = load(ca, ["alice@example.org", "192.0.2.1"])
    assert userForCertificate(cert, "host.example.org") is None
    assert userForCertificate(cert, "alice@example.org") == "alice@example.org"


def test_dnsNameUnreadable(ca: CertificateAuthority) -> None:
    """
    Asking for a host name where service-identity finds no name to compare
    (no subjectAltName, only e-mail addresses) or one it cannot read (an
    address, or two wildcards, as a DNS name) is a refusal, not an
    exception: the checker chain logged it as a broken checker, and a
    portal without the chain answered [SYS/TEMP] and counted no failure.
    """
    for sans in [
        None,
        ["alice@example.org"],
        ["DNS:192.0.2.1", "host.example.org"],
        ["DNS:*.*.example.org", "host.example.org"],
    ]:
        cert = load(ca, sans)
        assert userForCertificate(cert, "host.example.org") is None, sans
        assert refused(CertificateCredentials(cert, b"host.example.org")), sans


def checked(credentials: CertificateCredentials) -> object:
    outcome: list[object] = []
    ClientCertificateChecker().requestAvatarId(credentials).addBoth(outcome.append)
    (result,) = outcome
    return result


def refused(credentials: CertificateCredentials) -> bool:
    """
    Whether the checker refuses C{credentials} as a failed login.
    """
    result = checked(credentials)
    return isinstance(result, Failure) and result.check(UnauthorizedLogin) is not None


def test_checker(ca: CertificateAuthority) -> None:
    """
    The checker answers with the user as UTF-8 bytes, and refuses a name
    the certificate does not give, or one that is not UTF-8, with
    UnauthorizedLogin (a failed login, not a broken checker).
    """
    cert = load(ca, ["alice@example.org"])
    assert checked(CertificateCredentials(cert, b"")) == b"alice@example.org"
    assert checked(CertificateCredentials(cert, b"alice@EXAMPLE.org")) == b"alice@example.org"
    for authzid in [b"bob@example.org", b"alice@example.org\xff"]:
        assert refused(CertificateCredentials(cert, authzid)), authzid
