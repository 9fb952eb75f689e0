"""
Logging in with a TLS client certificate: SASL EXTERNAL (RFC 4422
appendix A) as C{twisted.cred} credentials and a checker.

The TLS layer has already verified the certificate against the configured
client CA (C{--tls-client-ca}) before any of this runs; this module only
decides which user a verified certificate may log in as:

 - a user name with "@" must be one of the certificate's e-mail addresses
   (rfc822Name subject alternative names; the domain compared without
   regard to case);
 - any other user name must be one of its DNS names, checked with
   service-identity's DNS-ID rules;
 - with no authorization identity, the certificate must name exactly one
   e-mail address, or else exactly one DNS name, and that is the user
   (if it is an address, or a host name, as one asked for must be).
"""

from __future__ import annotations

from typing import Any

from cryptography import x509
from service_identity import CertificateError, VerificationError
from service_identity.cryptography import extract_patterns
from service_identity.hazmat import DNS_ID, verify_service_identity
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ICredentials
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import Attribute, implementer


class ICertificateCredentials(ICredentials):
    """
    A verified TLS client certificate and the identity the client asks to
    act as.
    """

    certificate = Attribute("The client's certificate, a cryptography x509.Certificate.")
    authzid = Attribute("The requested user name as bytes; empty to derive it.")


@implementer(ICertificateCredentials)
class CertificateCredentials:
    """
    What SASL EXTERNAL produces.
    """

    def __init__(self, certificate: x509.Certificate, authzid: bytes) -> None:
        self.certificate = certificate
        self.authzid = authzid


def _alternativeNames(certificate: x509.Certificate, kind: type[x509.GeneralName]) -> list[str]:
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [str(name) for name in names.value.get_values_for_type(kind)]  # type: ignore[arg-type]


def _emails(certificate: x509.Certificate) -> list[str]:
    return _alternativeNames(certificate, x509.RFC822Name)


def _dnsNames(certificate: x509.Certificate) -> list[str]:
    return _alternativeNames(certificate, x509.DNSName)


def _sameAddress(a: str, b: str) -> bool:
    localA, _, domainA = a.rpartition("@")
    localB, _, domainB = b.rpartition("@")
    return localA == localB and domainA.lower() == domainB.lower()


def _isAddress(name: str) -> bool:
    """
    Whether C{name} is an e-mail address, one a user may be: ASCII (an
    rfc822Name is an IA5String), with a local part, "@" and a domain.  Not
    "example.org" or "@example.org" (name-constraint forms, no mailbox),
    nor "" (a user without a name), nor a non-ASCII name that C{lower()}
    makes match one (KELVIN SIGN for "k").
    """
    localpart, _, domain = name.rpartition("@")
    return name.isascii() and bool(localpart) and bool(domain)


def _isHostName(name: str) -> bool:
    """
    Whether C{name} is a host name, one a user may be: not a wildcard
    pattern (C{*.example.org}), nor an address, nor a name with an empty
    label (C{.example.org}), each of which would make a Maildir of an odd
    name, or a second name for one user.
    """
    # DNS_ID strips white space and takes U-labels ("höst"), each a second
    # spelling of a name (and so a second Maildir): only the ASCII form, as
    # certificates hold it, and exactly as written.
    if not name.isascii() or name != "".join(name.split()):
        return False
    try:
        DNS_ID(name)
    except ValueError:
        return False
    return "" not in name.split(".")


def userForCertificate(certificate: x509.Certificate, authzid: str) -> str | None:
    """
    The user C{certificate} may log in as, given the requested C{authzid}
    (empty to derive it), or L{None} if it may not.
    """
    if not authzid:
        emails = _emails(certificate)
        if len(emails) == 1:
            return emails[0] if _isAddress(emails[0]) else None
        names = _dnsNames(certificate)
        if not emails and len(names) == 1 and _isHostName(names[0]):
            return names[0].lower()
        return None
    if "@" not in authzid and not _isHostName(authzid):
        return None
    if "@" in authzid:
        if not _isAddress(authzid):
            return None
        # The certificate's own spelling, so that one mailbox has one name.
        return next((e for e in _emails(certificate) if _sameAddress(authzid, e)), None)
    try:
        verify_service_identity(
            extract_patterns(certificate), obligatory_ids=[DNS_ID(authzid)], optional_ids=[]
        )
    except (VerificationError, CertificateError, ValueError):
        # CertificateError: no subjectAltName service-identity can compare
        # (only e-mail addresses, say), or one it cannot read (an IP address
        # as a DNS name).
        return None
    # DNS names compare without regard to case (RFC 4343).
    return authzid.lower()


@implementer(ICredentialsChecker)
class ClientCertificateChecker:
    """
    Accepts a verified client certificate for the user it names.
    """

    credentialInterfaces = (ICertificateCredentials,)

    def requestAvatarId(self, credentials: Any) -> Deferred[bytes | tuple[()]]:
        try:
            authzid = credentials.authzid.decode("utf-8")
        except UnicodeDecodeError:
            return fail(UnauthorizedLogin())
        user = userForCertificate(credentials.certificate, authzid)
        if user is None:
            return fail(UnauthorizedLogin())
        return succeed(user.encode("utf-8"))
