"""
SASL mechanisms (RFC 4422) as I/O-free state machines, for POP3 AUTH
(RFC 5034).

A mechanism turns the client's responses into challenges and, at the end,
into C{twisted.cred} credentials.  It never sees the transport, base64 or
the portal: the protocol decodes responses, encodes challenges and logs the
credentials in; a checker author sees credentials, never SASL wire details.

 - L{PlainMechanism} (RFC 4616) and L{LoginMechanism} give
   L{popserv.credentials.UsernamePassword}: every checker can verify them.
 - L{CramMD5Mechanism} (RFC 2195) gives L{CramMD5Credentials}, an
   L{IUsernameHashedPassword}: checkers that know the plaintext verify it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.cred.credentials import IUsernameHashedPassword
from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface, implementer

from popserv.credentials import UsernamePassword
from popserv.errors import POP3Error


class SASLError(POP3Error):
    """
    The client's SASL exchange is malformed or refused; the text is the
    -ERR reply.  RFC 5034 section 4: the session stays usable.
    """


class SASLCancelled(SASLError):
    """
    The client sent "*" to cancel the exchange (RFC 5034 section 4).
    """

    text = "Authentication cancelled"


@dataclass(frozen=True)
class Challenge:
    """
    The mechanism wants another response: send C{data} as a "+ " line.
    """

    data: bytes


@dataclass(frozen=True)
class Outcome:
    """
    The exchange is over: log in with C{credentials}.
    """

    credentials: Any


Step = Challenge | Outcome


@dataclass
class SASLContext:
    """
    What a mechanism may need to know about the connection.

    @ivar secure: the connection is encrypted (or trusted as if it were).
    @ivar channelBinding: gives the channel-binding data of the TLS
        connection for a binding type ("tls-exporter",
        "tls-server-end-point"), or L{None} if there is none.
    @ivar peerCertificate: the verified TLS client certificate
        (a C{cryptography} certificate), or L{None}.
    """

    secure: bool = False
    channelBinding: Callable[[str], bytes | None] = field(default=lambda kind: None)
    peerCertificate: Any = None


class IMechanism(Interface):
    """
    One SASL exchange, server side.  A new object for every AUTH command.
    """

    name = Attribute("The mechanism's registered name, e.g. 'PLAIN'.")

    def start(initial: bytes | None) -> Step | Deferred[Step]:
        """
        Begin, with the decoded initial response (RFC 4422 section 3.3), or
        L{None} if the client sent none.

        @raise SASLError: the initial response is malformed.
        """

    def respond(data: bytes) -> Step | Deferred[Step]:
        """
        The client's decoded response to the last challenge.

        @raise SASLError: the response is malformed.
        """

    def serverFinal() -> bytes | None:
        """
        After the credentials were accepted: additional data the server must
        send with success (RFC 4422 section 3.6), or L{None}.  POP3 sends it
        as a last challenge and answers the client's empty response with
        +OK (RFC 5034 section 4).
        """


class IMechanismFactory(Interface):
    """
    Makes mechanism objects and says when the mechanism can be offered.
    """

    name = Attribute("The mechanism's registered name.")
    plaintext = Attribute("True if the client sends the password itself.")
    credentialInterfaces = Attribute(
        "The credentials interfaces the mechanism produces; it is offered only "
        "when some checker handles one of them."
    )

    def available(context: SASLContext) -> bool:
        """
        Whether the mechanism can run on this connection at all (e.g.
        EXTERNAL needs a client certificate, -PLUS a TLS channel).
        """

    def __call__(context: SASLContext) -> IMechanism:
        """
        A new exchange.
        """


def _splitNul(data: bytes, parts: int) -> list[bytes]:
    pieces = data.split(b"\0")
    if len(pieces) != parts:
        raise SASLError("Malformed SASL response")
    return pieces


@implementer(IMechanism)
class PlainMechanism:
    """
    PLAIN (RFC 4616): C{authzid NUL authcid NUL passwd}.

    An authorization identity other than the authentication identity would
    mean "log in as someone else"; popserv has no such proxy rights, so it
    is refused.
    """

    name = "PLAIN"

    def __init__(self, context: SASLContext) -> None:
        self._context = context

    def start(self, initial: bytes | None) -> Step:
        if initial is None:
            # RFC 4616 section 2: an empty challenge asks for the message.
            return Challenge(b"")
        return self.respond(initial)

    def respond(self, data: bytes) -> Step:
        authzid, authcid, password = _splitNul(data, 3)
        if not authcid or not password:
            raise SASLError("Malformed SASL response")
        if authzid and authzid != authcid:
            raise SASLError(
                "Proxy authorization is not supported",
            )
        return Outcome(UsernamePassword(authcid, password))

    def serverFinal(self) -> None:
        return None


@implementer(IMechanism)
class LoginMechanism:
    """
    LOGIN (draft-murchison-sasl-login): the user name, then the password,
    each asked for with the customary prompts that Outlook and others expect.
    """

    name = "LOGIN"

    def __init__(self, context: SASLContext) -> None:
        self._user: bytes | None = None

    def start(self, initial: bytes | None) -> Step:
        if initial:
            self._user = initial
            return Challenge(b"Password:")
        return Challenge(b"Username:")

    def respond(self, data: bytes) -> Step:
        if self._user is None:
            if not data:
                raise SASLError("Malformed SASL response")
            self._user = data
            return Challenge(b"Password:")
        return Outcome(UsernamePassword(self._user, data))

    def serverFinal(self) -> None:
        return None


class ICramMD5Credentials(IUsernameHashedPassword):
    """
    A CRAM-MD5 response (RFC 2195): an L{IUsernameHashedPassword}, which a
    checker that knows the plaintext verifies with C{checkPassword}, that
    also carries the C{challenge} and hex C{digest}, which a checker that
    stores only the HMAC-MD5 context verifies.  Its own interface, so that
    such a checker can say it verifies CRAM-MD5 and not APOP
    (L{popserv.credentials.IOfferedCredentials}).
    """

    challenge = Attribute("The challenge the server sent.")
    digest = Attribute("The client's HMAC-MD5 digest, lower-case hex.")


@implementer(ICramMD5Credentials)
class CramMD5Credentials:
    """
    A CRAM-MD5 response: HMAC-MD5 of the challenge keyed by the secret
    (RFC 2195).  Checkers that know the plaintext verify it.
    """

    def __init__(self, challenge: bytes, username: bytes, digest: bytes) -> None:
        self.challenge = challenge
        self.username = username
        self.digest = digest.lower()

    def checkPassword(self, password: str | bytes) -> bool:
        if isinstance(password, str):
            password = password.encode("utf-8")
        expected = hmac.new(password, self.challenge, hashlib.md5).hexdigest()
        return hmac.compare_digest(expected.encode("ascii"), self.digest)


@implementer(IMechanism)
class CramMD5Mechanism:
    """
    CRAM-MD5 (RFC 2195): the server sends a unique msg-id, the client
    answers C{user SP hex-digest}.
    """

    name = "CRAM-MD5"

    def __init__(self, context: SASLContext) -> None:
        self._challenge = b"<%s.%d@popserv>" % (
            secrets.token_hex(12).encode("ascii"),
            int(time.time()),
        )

    def start(self, initial: bytes | None) -> Step:
        if initial is not None:
            # RFC 2195 has the server speak first, and RFC 5034 section 4:
            # the server "MUST reject" an initial response to such a
            # mechanism, the empty one ("=") too.
            raise SASLError("CRAM-MD5 takes no initial response")
        return Challenge(self._challenge)

    def respond(self, data: bytes) -> Step:
        user, _, digest = data.rpartition(b" ")
        if not user or len(digest) != 32:
            raise SASLError("Malformed SASL response")
        try:
            int(digest, 16)
        except ValueError:
            raise SASLError("Malformed SASL response") from None
        return Outcome(CramMD5Credentials(self._challenge, user, digest))

    def serverFinal(self) -> None:
        return None


@implementer(IMechanismFactory)
@dataclass(frozen=True)
class MechanismFactory:
    """
    An L{IMechanismFactory} for a mechanism class.
    """

    name: str
    mechanism: Callable[[SASLContext], IMechanism]
    credentialInterfaces: tuple[Any, ...]
    plaintext: bool = False
    needs: Callable[[SASLContext], bool] = lambda context: True

    def available(self, context: SASLContext) -> bool:
        return self.needs(context)

    def __call__(self, context: SASLContext) -> IMechanism:
        return self.mechanism(context)


@implementer(IMechanism)
class ExternalMechanism:
    """
    EXTERNAL (RFC 4422 appendix A): the identity the TLS client certificate
    proves; the response is the authorization identity, or empty to let the
    certificate say who the user is.
    """

    name = "EXTERNAL"

    def __init__(self, context: SASLContext) -> None:
        self._certificate = context.peerCertificate

    def start(self, initial: bytes | None) -> Step:
        if initial is None:
            return Challenge(b"")
        return self.respond(initial)

    def respond(self, data: bytes) -> Step:
        from popserv.certauth import CertificateCredentials

        return Outcome(CertificateCredentials(self._certificate, data))

    def serverFinal(self) -> None:
        return None


def defaultMechanisms(keySource: Any = None) -> list[IMechanismFactory]:
    """
    The built-in mechanisms, strongest first.

    @param keySource: how SCRAM finds stored keys (see
        L{popserv.scram.keySourceFromCheckers}); without one, SCRAM works with
        checkers that know plaintext passwords.
    """
    from twisted.cred.credentials import IUsernamePassword

    from popserv.certauth import ICertificateCredentials
    from popserv.scram import scramSHA256Factory, scramSHA256PlusFactory

    return [
        MechanismFactory(
            "EXTERNAL",
            ExternalMechanism,
            (ICertificateCredentials,),
            needs=lambda context: context.peerCertificate is not None,
        ),
        scramSHA256PlusFactory(keySource),
        # -PLUS is offered wherever there is channel binding, so a client
        # that could bind but says it thinks the server cannot ("y") is
        # being downgraded (RFC 5802 section 6).
        scramSHA256Factory(keySource, plusOffered=True),
        MechanismFactory("CRAM-MD5", CramMD5Mechanism, (ICramMD5Credentials,)),
        MechanismFactory("PLAIN", PlainMechanism, (IUsernamePassword,), plaintext=True),
        MechanismFactory("LOGIN", LoginMechanism, (IUsernamePassword,), plaintext=True),
    ]
