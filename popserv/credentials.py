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
from collections.abc import Iterator, Sequence
from typing import Any

from twisted.cred.checkers import (
    FilePasswordDB,
    ICredentialsChecker,
    InMemoryUsernamePasswordDatabaseDontUse,
)
from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword
from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, alsoProvides, implementer

from popserv.errors import CredentialsUnchecked
from popserv.threads import Runner, deferToThread


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


class IOfferedCredentials(Interface):
    """
    A checker that can say whether it could verify a kind of credentials
    now, for some user: popserv offers a login mechanism (a SASL mechanism,
    APOP's timestamp, USER) only if some checker that lists the
    mechanism's credentials interface says so.  Without this, a checker is
    taken to verify every interface in its C{credentialInterfaces}.

    A checker whose users are stored in several ways should provide it: a
    password file whose every password is hashed cannot check an APOP or
    CRAM-MD5 digest (they need the password in clear), and a client that
    prefers CRAM-MD5 when it is offered (curl) would otherwise fail to log
    in at all.
    """

    def canVerify(credentialInterface: Any) -> bool:
        """
        Whether some user's credentials of C{credentialInterface} could be
        verified now.  Called on the reactor thread, for every CAPA, AUTH
        and greeting: it must not block (no file I/O).
        """


def canVerify(checker: Any, credentialInterface: Any) -> bool:
    """
    Whether C{checker} could verify credentials of C{credentialInterface}
    now (L{IOfferedCredentials}).
    """
    if IOfferedCredentials.providedBy(checker):
        return bool(checker.canVerify(credentialInterface))
    return handles(checker.credentialInterfaces, credentialInterface)


def handles(interfaces: Any, credentialInterface: Any) -> bool:
    """
    Whether a checker that lists C{interfaces} takes credentials of
    C{credentialInterface}: it lists it, or one it extends (a CRAM-MD5
    response is an L{IUsernameHashedPassword}), as L{Portal.login} finds
    checkers.
    """
    return credentialInterface in interfaces or any(
        credentialInterface.isOrExtends(i) for i in interfaces
    )


def portalCanVerify(portal: Any, credentialInterface: Any) -> bool:
    """
    Whether C{portal}'s checker of C{credentialInterface} could verify such
    credentials now (L{IOfferedCredentials}); whether it has one, for a
    portal that does not show its checkers.
    """
    checkers = getattr(portal, "checkers", None)
    if not isinstance(checkers, dict):
        return handles(portal.listCredentialsInterfaces(), credentialInterface)
    checker = checkers.get(credentialInterface)
    if checker is None:
        # One registered for an interface this one extends.
        checker = next((c for i, c in checkers.items() if credentialInterface.extends(i)), None)
    return checker is not None and canVerify(checker, credentialInterface)


def normalizeChecker(checker: ICredentialsChecker) -> ICredentialsChecker:
    """
    Make Twisted's built-in checkers fit for a server.

     - C{strcred}'s C{memory:} factory stores names and passwords as L{str},
       while L{IUsernamePassword} names are L{bytes}, so no POP3 login could
       ever match (one of the Python 3 breakages of C{twisted.mail.pop3}):
       its names and passwords become L{bytes}.
     - C{file:} reads its file and C{unix:} reads the shadow file and runs
       C{crypt} at every login, on the reactor thread: they are wrapped in
       L{ThreadedChecker}.  C{memory:} is too, for expensive credentials
       (SCRAM) only.

    Other checkers are returned unchanged.
    """
    if isinstance(checker, InMemoryUsernamePasswordDatabaseDontUse):
        checker.users = {_bytes(name): _bytes(pw) for name, pw in checker.users.items()}
        # Comparing passwords is cheap; a SCRAM proof is not.
        return ThreadedChecker(checker, onlyExpensive=True)
    from twisted.plugins.cred_unix import UNIXChecker

    if isinstance(checker, FilePasswordDB):
        return ThreadedChecker(_FileReadOrRaise(checker))
    if isinstance(checker, UNIXChecker):
        return ThreadedChecker(checker)
    return checker


@implementer(ICredentialsChecker)
class _FileReadOrRaise:
    """
    Twisted's C{file:} checker, whose refusals are told apart from a file it
    could not read.  It reads its file at every login, and when it cannot,
    logs that and refuses the login as if the password were wrong: a user
    with the right one was then logged as a failed login, which the
    fail2ban filter counts.  After a refusal this opens the file: if that
    fails, the L{OSError} is the login's answer, a checker's failure, which
    L{CheckerChain} does not count as wrong credentials.  Blocks: run in a
    L{ThreadedChecker}.
    """

    def __init__(self, checker: FilePasswordDB) -> None:
        self.checker = checker
        self.credentialInterfaces = checker.credentialInterfaces

    def requestAvatarId(self, credentials: Any) -> Deferred[Any]:
        return maybeDeferred(self.checker.requestAvatarId, credentials).addErrback(self._refused)

    def _refused(self, failure: Failure) -> Failure:
        failure.trap(UnauthorizedLogin)
        with open(self.checker.filename, "rb"):
            pass  # readable after all: the refusal stands
        return failure


@implementer(ICredentialsChecker, IOfferedCredentials)
class CheckerChain:
    """
    Tries several checkers in order until one accepts, like a chain of
    Dovecot passdbs: C{--auth memory:... --auth file:...} means "either".

    A L{Portal} keeps only one checker per credentials interface, so without
    this a second C{--auth} would silently replace the first.  A checker
    that fails with anything but L{UnauthorizedLogin} is logged and skipped;
    if no other accepts, the login fails with L{CredentialsUnchecked}, not
    as wrong credentials: the one that failed might have accepted them.
    """

    _log = Logger()

    def __init__(self, checkers: Sequence[ICredentialsChecker]) -> None:
        self.checkers = list(checkers)
        interfaces: list[Any] = []
        for checker in self.checkers:
            for interface in checker.credentialInterfaces:
                if interface not in interfaces:
                    interfaces.append(interface)
        self.credentialInterfaces = tuple(interfaces)
        # canVerify runs at every greeting: the answers of the checkers
        # that cannot change, worked out once.
        self._changing = [c for c in self.checkers if IOfferedCredentials.providedBy(c)]
        self._always = {
            i for c in self.checkers if c not in self._changing for i in c.credentialInterfaces
        }

    def canVerify(self, credentialInterface: Any) -> bool:
        return handles(self._always, credentialInterface) or any(
            c.canVerify(credentialInterface) for c in self._changing
        )

    def requestAvatarId(self, credentials: Any) -> Deferred[Any]:
        candidates = [
            c
            for c in self.checkers
            if any(i.providedBy(credentials) for i in c.credentialInterfaces)
        ]
        return self._next(credentials, iter(candidates), False)

    def _next(
        self, credentials: Any, candidates: Iterator[ICredentialsChecker], failed: bool
    ) -> Deferred[Any]:
        checker = next(candidates, None)
        if checker is None:
            return fail(CredentialsUnchecked() if failed else UnauthorizedLogin())
        d: Deferred[Any] = maybeDeferred(checker.requestAvatarId, credentials)

        def rejected(failure: Failure) -> Deferred[Any]:
            if failure.check(UnauthorizedLogin, UnhandledCredentials):
                return self._next(credentials, candidates, failed)
            self._log.failure("Checker {checker!r} failed", failure, checker=checker)
            return self._next(credentials, candidates, True)

        return d.addErrback(rejected)


@implementer(ICredentialsChecker)
class ThreadedChecker:
    """
    Runs a checker that blocks (reads files, runs C{crypt}) in a thread,
    so the reactor keeps serving other clients meanwhile.

    The wrapped checker must be safe to call from another thread and must
    answer synchronously (a value, or an already-fired L{Deferred}).
    """

    def __init__(
        self,
        checker: ICredentialsChecker,
        runInThread: Runner = deferToThread,
        onlyExpensive: bool = False,
    ) -> None:
        """
        @param onlyExpensive: run in a thread only credentials that say they
            are costly to check (an C{expensive} attribute, like SCRAM's
            PBKDF2); others are checked at once.  For checkers that are
            cheap in themselves, such as C{memory:}.
        """
        self.checker = checker
        self.credentialInterfaces = checker.credentialInterfaces
        if IOfferedCredentials.providedBy(checker):
            alsoProvides(self, IOfferedCredentials)
        self._run = runInThread
        self._onlyExpensive = onlyExpensive

    def canVerify(self, credentialInterface: Any) -> bool:
        return canVerify(self.checker, credentialInterface)

    def requestAvatarId(self, credentials: Any) -> Deferred[Any]:
        if self._onlyExpensive and not getattr(credentials, "expensive", False):
            return maybeDeferred(self.checker.requestAvatarId, credentials)
        return self._run(self._check, credentials)

    def _check(self, credentials: Any) -> Any:
        try:
            return self._checkNow(credentials)
        except UnauthorizedLogin:
            # An unknown user costs what a known one does (SCRAM's PBKDF2).
            spend = getattr(credentials, "spendCheck", None)
            if spend is not None:
                spend()
            raise

    def _checkNow(self, credentials: Any) -> Any:
        result = self.checker.requestAvatarId(credentials)
        if not isinstance(result, Deferred):
            return result
        outcome: list[Any] = []
        result.addBoth(outcome.append)
        if not outcome:
            raise RuntimeError(f"{self.checker!r} did not answer synchronously")
        if isinstance(outcome[0], Failure):
            outcome[0].raiseException()
        return outcome[0]
