"""
The C{twisted.cred} credentials POP3 logins produce, and the APOP challenge.

USER/PASS gives L{UsernamePassword}; APOP (RFC 1939 section 7) gives
L{APOPCredentials}, an L{IUsernameHashedPassword}: a checker that knows the
plaintext password (C{memory:}, C{file:}) verifies it by calling
C{checkPassword}.  Both compare in constant time, unlike Twisted's own
C{UsernamePassword}, whose C{==} leaks how much of a guess was right.

User names are L{bytes}, as C{twisted.cred} specifies; see
L{normalizeChecker} for the checkers that do not follow that.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from twisted.cred.checkers import ICredentialsChecker, InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword
from zope.interface import implementer


def _bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


@implementer(IUsernamePassword)
class UsernamePassword:
    """
    A user name and the password the client sent with PASS.
    """

    def __init__(self, username: bytes, password: bytes) -> None:
        self.username = username
        self.password = password

    def checkPassword(self, password: str | bytes) -> bool:
        """
        Whether C{password}, the stored plaintext, equals the one sent, in
        time that does not depend on where they differ.
        """
        return hmac.compare_digest(self.password, _bytes(password))


@implementer(IUsernameHashedPassword)
class APOPCredentials:
    """
    An APOP login: the MD5 digest of the greeting's timestamp followed by
    the shared secret (RFC 1939 section 7).
    """

    def __init__(self, challenge: bytes, username: bytes, digest: bytes) -> None:
        self.challenge = challenge
        self.username = username
        self.digest = digest.lower()

    def checkPassword(self, password: str | bytes) -> bool:
        """
        Whether the digest was made from C{password}, the stored plaintext.
        """
        expected = hashlib.md5(self.challenge + _bytes(password)).hexdigest()
        return hmac.compare_digest(expected.encode("ascii"), self.digest)


def makeChallenge() -> bytes:
    """
    A fresh APOP timestamp in msg-id form (RFC 1939 section 7), unique per
    connection and unpredictable: random octets and the clock, but no host
    name or process id (those would tell an attacker about the server).
    """
    return b"<%s.%d@popserv>" % (
        secrets.token_hex(12).encode("ascii"),
        int(time.time()),
    )


def normalizeChecker(checker: ICredentialsChecker) -> ICredentialsChecker:
    """
    Make Twisted's C{memory:} checker usable with L{bytes} user names.

    C{strcred}'s C{memory:} factory stores names and passwords as L{str},
    while L{IUsernamePassword} names are L{bytes}, so no POP3 login could
    ever match (one of the Python 3 breakages of C{twisted.mail.pop3}).
    Other checkers are returned unchanged.
    """
    if isinstance(checker, InMemoryUsernamePasswordDatabaseDontUse):
        checker.users = {_bytes(name): _bytes(pw) for name, pw in checker.users.items()}
    return checker
