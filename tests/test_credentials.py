"""
Tests for popserv.credentials and popserv.realm.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from typing import Any

import pytest
from synchronous import syncRun
from twisted.cred import strcred
from twisted.cred.checkers import ICredentialsChecker, InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet.defer import succeed
from twisted.logger import capturedLogs
from zope.interface import implementer

from popserv.credentials import (
    APOPCredentials,
    CheckerChain,
    IOfferedCredentials,
    ThreadedChecker,
    UsernamePassword,
    makeChallenge,
    normalizeChecker,
    portalCanVerify,
)
from popserv.errors import CredentialsUnchecked
from popserv.interfaces import IMaildrop
from popserv.memorystore import MemoryStore
from popserv.realm import LoginMind, MaildropRealm, avatarName


def outcome(d: Any) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    return out[0]


def test_usernamePassword() -> None:
    """
    The sent password is compared with the stored one, bytes or text.
    """
    creds = UsernamePassword(b"alice", "s\u00e9cret".encode())
    assert creds.checkPassword("s\u00e9cret")
    assert creds.checkPassword("s\u00e9cret".encode())
    assert not creds.checkPassword("secret")
    assert not creds.checkPassword(b"")


def test_apopDigest() -> None:
    """
    The APOP digest is MD5(timestamp + secret), hex, any case (RFC 1939
    section 7's own example).
    """
    challenge = b"<1896.697170952@dbc.mtview.ca.us>"
    creds = APOPCredentials(challenge, b"mrose", b"C4C9334BAC560ECC979E58001B3E22FB")
    assert creds.checkPassword("tanstaaf")
    assert not creds.checkPassword("tanstaafl")


def test_challenge() -> None:
    """
    The APOP timestamp is a msg-id, unique, and reveals neither the host
    name nor the process id.
    """
    challenges = {makeChallenge() for _ in range(100)}
    assert len(challenges) == 100
    for c in challenges:
        assert re.fullmatch(rb"<[0-9a-f]{24}\.\d+@popserv>", c)
        assert socket.gethostname().encode() not in c
        assert b".%d@" % os.getpid() not in c


def test_strcredMemoryCheckerWorks() -> None:
    """
    Twisted's memory: checker, after normalizeChecker, accepts the bytes
    user names POP3 logins carry, for USER/PASS and APOP.
    """
    checker = normalizeChecker(strcred.makeChecker("memory:alice:secret"))
    portal = Portal(MaildropRealm(MemoryStore()), [checker])
    iface, _, logout = outcome(portal.login(UsernamePassword(b"alice", b"secret"), None, IMaildrop))
    assert iface is IMaildrop
    logout()
    digest = hashlib.md5(b"<x@y>secret").hexdigest().encode()
    iface, _, logout = outcome(
        portal.login(APOPCredentials(b"<x@y>", b"alice", digest), None, IMaildrop)
    )
    assert iface is IMaildrop
    logout()
    failure = outcome(portal.login(UsernamePassword(b"alice", b"nope"), None, IMaildrop))
    assert failure.check(UnauthorizedLogin)


def test_realmLogoutReleasesLock() -> None:
    """
    The realm's logout releases the maildrop lock.
    """
    store = MemoryStore()
    realm = MaildropRealm(store)
    _, _, logout = outcome(realm.requestAvatar(b"alice", None, IMaildrop))
    assert outcome(store.openMaildrop("alice")).check(Exception)
    logout()
    outcome(store.openMaildrop("alice")).close()


def test_realmTakesTextAvatarIDs() -> None:
    """
    The unix: checker gives the avatar ID as text, not bytes: it is a user
    name all the same, and opens that user's maildrop.
    """
    store = MemoryStore()
    _, _, logout = outcome(MaildropRealm(store).requestAvatar("alice", None, IMaildrop))
    assert outcome(store.openMaildrop("alice")).check(Exception)  # locked: it is alice's
    logout()


def test_realmTellsTheMind() -> None:
    """
    Given a L{LoginMind}, the realm says who logged in and that the
    credentials were checked before it opens the maildrop (which may take
    a while), so that the login's turn at the gate ends then.
    """
    events: list[str] = []

    class Store(MemoryStore):
        def openMaildrop(self, user: str) -> Any:
            events.append(f"open {user}")
            return super().openMaildrop(user)

    mind = LoginMind(lambda: events.append("checked"))
    _, _, logout = outcome(MaildropRealm(Store()).requestAvatar(b"alice", mind, IMaildrop))
    assert mind.user == "alice"
    assert events == ["checked", "open alice"]
    logout()


def test_realmOnlyGivesMaildrops() -> None:
    """
    Asking the realm for another interface is an error.
    """
    with pytest.raises(NotImplementedError):
        MaildropRealm(MemoryStore()).requestAvatar(b"alice", None, object)


def test_avatarName() -> None:
    """
    Avatar IDs from bytes or text checkers become text user names.
    """
    assert avatarName(b"b\xc3\xb6b") == "b\u00f6b"
    assert avatarName("bob") == "bob"
    # A name that is not UTF-8 (a legacy file: checker) still names a
    # maildrop, its octets kept as surrogates.
    assert avatarName(b"b\xf6b") == "b\udcf6b"


@pytest.mark.parametrize("avatarId", [None, (), 42])
def test_realmRefusesWhatIsNoUserName(avatarId: object) -> None:
    """
    An avatar ID that is no user name (L{None} from a checker whose callback
    fell off its end instead of failing with L{UnauthorizedLogin}, cred's
    C{ANONYMOUS}, a number) fails the login with a L{TypeError} that says
    so, and the store is never asked: it used to be handed to the store as
    the user name, and a wrong password logged in.
    """
    asked: list[object] = []

    class Store(MemoryStore):
        def openMaildrop(self, user: str) -> Any:
            asked.append(user)
            return super().openMaildrop(user)

    failure = outcome(MaildropRealm(Store()).requestAvatar(avatarId, None, IMaildrop))
    assert failure.check(TypeError)
    assert "not a user name" in str(failure.value)
    assert asked == []


def test_checkerChainTriesInOrder() -> None:
    """
    A chain accepts a login that any of its checkers accepts, asks only the
    checkers that handle that kind of credentials, and rejects when all do.
    """
    first = InMemoryUsernamePasswordDatabaseDontUse()
    first.addUser(b"alice", b"one")
    second = InMemoryUsernamePasswordDatabaseDontUse()
    second.addUser(b"bob", b"two")
    second.addUser(b"alice", b"other")
    chain = CheckerChain([first, second])
    assert outcome(chain.requestAvatarId(UsernamePassword(b"alice", b"one"))) == b"alice"
    assert outcome(chain.requestAvatarId(UsernamePassword(b"alice", b"other"))) == b"alice"
    assert outcome(chain.requestAvatarId(UsernamePassword(b"bob", b"two"))) == b"bob"
    assert outcome(chain.requestAvatarId(UsernamePassword(b"bob", b"one"))).check(UnauthorizedLogin)


@implementer(ICredentialsChecker)
class BrokenChecker:
    """
    A checker whose database is down.
    """

    credentialInterfaces = (IUsernamePassword,)

    def requestAvatarId(self, credentials: Any) -> Any:
        raise OSError("database down")


def test_checkerChainSkipsBrokenChecker() -> None:
    """
    A checker that fails with an unexpected error is skipped (and logged);
    the next one still decides.
    """

    good = InMemoryUsernamePasswordDatabaseDontUse()
    good.addUser(b"alice", b"one")
    chain = CheckerChain([BrokenChecker(), good])
    assert chain.credentialInterfaces == (IUsernamePassword, IUsernameHashedPassword)
    assert outcome(chain.requestAvatarId(UsernamePassword(b"alice", b"one"))) == b"alice"


def test_checkerChainFailedCheckerIsNoRefusal() -> None:
    """
    When no checker accepts and one of them failed, the login fails with
    CredentialsUnchecked (-ERR [SYS/TEMP]), not UnauthorizedLogin: the one
    that failed might have accepted the credentials, and a failed login is
    what fail2ban counts.  Refusals alone still give UnauthorizedLogin.
    """

    other = InMemoryUsernamePasswordDatabaseDontUse()
    other.addUser(b"bob", b"two")
    for checkers in ([BrokenChecker()], [BrokenChecker(), other], [other, BrokenChecker()]):
        with capturedLogs() as events:
            failure = outcome(CheckerChain(checkers).requestAvatarId(UsernamePassword(b"a", b"b")))
        assert failure.check(CredentialsUnchecked)
        assert [e["log_failure"].type for e in events] == [OSError]
        assert isinstance(events[0]["checker"], BrokenChecker)
    refused = outcome(CheckerChain([other, other]).requestAvatarId(UsernamePassword(b"a", b"b")))
    assert refused.check(UnauthorizedLogin)


def test_fileCheckerThatCannotReadItsFile(tmp_path: Any) -> None:
    """
    Twisted's file: checker refuses every login, logging an error, while it
    cannot read its file; after normalizeChecker such a refusal is the
    OSError, which a chain answers with CredentialsUnchecked, so that a user
    with the right password is not logged as a failed login.  A refusal
    while the file is there stands.
    """
    passwd = tmp_path / "passwd"
    passwd.write_text("alice:secret\n")
    checker = normalizeChecker(strcred.makeChecker(f"file:{passwd}"))
    assert isinstance(checker, ThreadedChecker)
    checker = ThreadedChecker(checker.checker, runInThread=syncRun)
    chain = CheckerChain([checker])
    assert outcome(chain.requestAvatarId(UsernamePassword(b"alice", b"secret"))) == b"alice"
    assert outcome(chain.requestAvatarId(UsernamePassword(b"alice", b"nope"))).check(
        UnauthorizedLogin
    )
    passwd.rename(tmp_path / "passwd.gone")
    with capturedLogs() as events:
        failure = outcome(chain.requestAvatarId(UsernamePassword(b"alice", b"secret")))
    assert failure.check(CredentialsUnchecked)
    assert FileNotFoundError in [e["log_failure"].type for e in events if "log_failure" in e]


def test_blockingCheckersRunInThreads(tmp_path: Any) -> None:
    """
    Twisted's file: and unix: checkers, which read files (and run crypt) at
    every login, are wrapped to run in a thread; memory: is wrapped so that
    only expensive credentials (SCRAM) go to a thread.
    """
    passwd = tmp_path / "passwd"
    passwd.write_text("alice:secret\n")
    file = normalizeChecker(strcred.makeChecker(f"file:{passwd}"))
    unix = normalizeChecker(strcred.makeChecker("unix"))
    memory = normalizeChecker(strcred.makeChecker("memory:a:b"))
    assert isinstance(file, ThreadedChecker)
    assert isinstance(unix, ThreadedChecker)
    assert isinstance(memory, ThreadedChecker)
    assert isinstance(memory.checker, InMemoryUsernamePasswordDatabaseDontUse)
    assert file.credentialInterfaces == file.checker.credentialInterfaces
    # Every login, not only expensive ones, reads the file in a thread.
    ran: list[Any] = []

    def runner(f: Any, *args: Any) -> Any:
        ran.append(f)
        return syncRun(f, *args)

    file._run = runner
    assert outcome(file.requestAvatarId(UsernamePassword(b"alice", b"secret"))) == b"alice"
    assert len(ran) == 1


def test_threadedCheckerAnswers(tmp_path: Any) -> None:
    """
    A threaded checker gives the wrapped checker's answer: the avatar ID, or
    UnauthorizedLogin.
    """
    passwd = tmp_path / "passwd"
    passwd.write_text("alice:secret\n")
    checker = ThreadedChecker(strcred.makeChecker(f"file:{passwd}"), runInThread=syncRun)
    assert outcome(checker.requestAvatarId(UsernamePassword(b"alice", b"secret"))) == b"alice"
    assert outcome(checker.requestAvatarId(UsernamePassword(b"alice", b"nope"))).check(
        UnauthorizedLogin
    )


def test_unixCheckerRefusesUnknownUser() -> None:
    """
    The unix: checker, as popserv wires it, refuses a user the system does
    not know with UnauthorizedLogin (not a server fault).
    """
    pytest.importorskip("crypt", reason="Twisted's unix: checker needs the crypt module")
    checker = ThreadedChecker(strcred.makeChecker("unix"), runInThread=syncRun)
    result = outcome(checker.requestAvatarId(UsernamePassword(b"no-such-user-popserv", b"x")))
    assert result.check(UnauthorizedLogin)


def test_onlyExpensiveInThreads() -> None:
    """
    With onlyExpensive, cheap credentials are checked at once, and those
    marked expensive go to the thread runner.
    """
    calls: list[Any] = []

    def runner(f: Any, *args: Any) -> Any:
        calls.append(f)
        return syncRun(f, *args)

    checker = normalizeChecker(strcred.makeChecker("memory:alice:secret"))
    assert isinstance(checker, ThreadedChecker)
    checker._run = runner
    assert outcome(checker.requestAvatarId(UsernamePassword(b"alice", b"secret"))) == b"alice"
    assert calls == []

    class Expensive(UsernamePassword):
        expensive = True

    assert outcome(checker.requestAvatarId(Expensive(b"alice", b"secret"))) == b"alice"
    assert len(calls) == 1


@pytest.mark.parametrize("name", ["alice", "mallory"])
def test_unknownUserCostsAPBKDF2Run(scramKeyRuns: list[bytes], name: str) -> None:
    """
    Twisted's memory: (and file:) checker refuses a name it does not know
    without looking at the credentials: a SCRAM proof of a known user cost
    a PBKDF2 run and an unknown one's nothing, so timing told which names
    exist.  Both now cost one run.
    """
    from protocol_helpers import Session
    from scram_client import ScramClient, authenticate

    checker = normalizeChecker(strcred.makeChecker("memory:alice:secret"))
    assert isinstance(checker, ThreadedChecker)
    checker._run = syncRun
    s = Session(checkers=[checker])
    replies = authenticate(lambda line: s.command(line)[:-2], ScramClient(name, "wrong"))
    assert replies[-1] == b"-ERR [AUTH] Authentication failed"
    assert len(scramKeyRuns) == 1


@pytest.mark.parametrize("given", [None, b"mail", object()])
def test_realmRefusesWhatIsNoMaildrop(given: object) -> None:
    """
    A store whose openMaildrop gives something without the IMaildrop
    methods (None, most often) fails the login with a TypeError that names
    it, rather than an AttributeError from the realm.
    """

    class Store(MemoryStore):
        def openMaildrop(self, user: str) -> Any:
            return succeed(given)

    failure = outcome(MaildropRealm(Store()).requestAvatar(b"alice", None, IMaildrop))
    assert failure.check(TypeError)
    assert str(failure.value) == f"openMaildrop gave {given!r}, not an IMaildrop"


@implementer(ICredentialsChecker, IOfferedCredentials)
class OnlyPasswords:
    """
    A checker that lists APOP's credentials but can verify, now, only
    passwords (a password file whose every password is hashed).
    """

    credentialInterfaces = (IUsernamePassword, IUsernameHashedPassword)

    def canVerify(self, credentialInterface: Any) -> bool:
        return credentialInterface is IUsernamePassword

    def requestAvatarId(self, credentials: Any) -> Any:
        raise UnauthorizedLogin()


def test_portalCanVerify() -> None:
    """
    A portal can verify a kind of credentials if its checker of that
    interface, or of one it extends (CRAM-MD5's response is an
    IUsernameHashedPassword), can now; a portal that does not show its
    checkers, if it lists such an interface.  What popserv offers (USER,
    APOP, each SASL mechanism) is decided by this.
    """
    from popserv.certauth import ICertificateCredentials
    from popserv.sasl import ICramMD5Credentials

    realm = MaildropRealm(MemoryStore())
    portal = Portal(realm, [InMemoryUsernamePasswordDatabaseDontUse()])
    assert portalCanVerify(portal, IUsernamePassword)
    assert portalCanVerify(portal, ICramMD5Credentials)
    assert not portalCanVerify(portal, ICertificateCredentials)
    hashed = Portal(realm, [OnlyPasswords()])
    assert portalCanVerify(hashed, IUsernamePassword)
    assert not portalCanVerify(hashed, IUsernameHashedPassword)
    assert not portalCanVerify(hashed, ICramMD5Credentials)

    class Opaque:
        def listCredentialsInterfaces(self) -> list[Any]:
            return [IUsernameHashedPassword]

    assert portalCanVerify(Opaque(), IUsernameHashedPassword)
    assert portalCanVerify(Opaque(), ICramMD5Credentials)
    assert not portalCanVerify(Opaque(), IUsernamePassword)


def test_wrappersTellWhatTheyCanVerify() -> None:
    """
    A chain can verify what any of its checkers can (asking those that
    provide L{IOfferedCredentials}); a threaded checker, what the one it
    wraps can.
    """
    from popserv.credentials import canVerify
    from popserv.sasl import ICramMD5Credentials

    threaded = ThreadedChecker(OnlyPasswords(), runInThread=syncRun)
    assert IOfferedCredentials.providedBy(threaded)
    assert canVerify(threaded, IUsernamePassword)
    assert not canVerify(threaded, IUsernameHashedPassword)
    plain = ThreadedChecker(InMemoryUsernamePasswordDatabaseDontUse(), runInThread=syncRun)
    assert not IOfferedCredentials.providedBy(plain)
    assert canVerify(plain, IUsernameHashedPassword)
    chain = CheckerChain([threaded])
    assert chain.credentialInterfaces == (IUsernamePassword, IUsernameHashedPassword)
    assert canVerify(chain, IUsernamePassword)
    assert not canVerify(chain, IUsernameHashedPassword)
    assert not canVerify(chain, ICramMD5Credentials)
    chain = CheckerChain([threaded, plain])
    assert canVerify(chain, IUsernameHashedPassword)
    assert canVerify(chain, ICramMD5Credentials)
    chain = CheckerChain([plain, threaded])
    assert canVerify(chain, ICramMD5Credentials)


def test_checkerChainAsksOnlyWhoHandlesTheCredentials() -> None:
    """
    A chain does not ask a checker for credentials it does not take: a
    checker of client certificates is not asked about a password, and, if
    it were, its failure would make a wrong password a server fault.
    """
    from popserv.certauth import ICertificateCredentials

    asked: list[object] = []

    @implementer(ICredentialsChecker)
    class Certificates:
        credentialInterfaces = (ICertificateCredentials,)

        def requestAvatarId(self, credentials: Any) -> Any:
            asked.append(credentials)
            raise TypeError("not a certificate")

    memory = InMemoryUsernamePasswordDatabaseDontUse()
    memory.addUser(b"alice", b"one")
    chain = CheckerChain([Certificates(), memory])
    assert outcome(chain.requestAvatarId(UsernamePassword(b"alice", b"one"))) == b"alice"
    assert outcome(chain.requestAvatarId(UsernamePassword(b"alice", b"two"))).check(
        UnauthorizedLogin
    )
    assert asked == []


def test_threadedCheckerPlainAnswers() -> None:
    """
    A wrapped checker may answer with a plain value, not a Deferred: that
    is the avatar ID, and an exception it raises the refusal.
    """

    @implementer(ICredentialsChecker)
    class Plain:
        credentialInterfaces = (IUsernamePassword,)

        def requestAvatarId(self, credentials: Any) -> Any:
            if credentials.checkPassword(b"secret"):
                return credentials.username
            raise UnauthorizedLogin()

    checker = ThreadedChecker(Plain(), runInThread=syncRun)
    assert outcome(checker.requestAvatarId(UsernamePassword(b"alice", b"secret"))) == b"alice"
    assert outcome(checker.requestAvatarId(UsernamePassword(b"alice", b"nope"))).check(
        UnauthorizedLogin
    )


def test_threadedCheckerNeedsSynchronousAnswer() -> None:
    """
    A checker run in a thread must answer synchronously: a Deferred that
    has not fired is a plain error that says so, not a login.
    """
    from twisted.internet.defer import Deferred

    @implementer(ICredentialsChecker)
    class Later:
        credentialInterfaces = (IUsernamePassword,)

        def requestAvatarId(self, credentials: Any) -> Any:
            return Deferred()

    checker = ThreadedChecker(Later(), runInThread=syncRun)
    failure = outcome(checker.requestAvatarId(UsernamePassword(b"alice", b"x")))
    assert failure.check(RuntimeError)
    assert "did not answer synchronously" in str(failure.value)


def test_realmTakesUndeclaredMaildrop() -> None:
    """
    A store whose maildrops have the IMaildrop methods but do not declare
    the interface (a forgotten @implementer) still works: the realm checks
    the methods, not the declaration.
    """

    class Undeclared:
        def __init__(self, maildrop: Any) -> None:
            for name in IMaildrop.names():
                setattr(self, name, getattr(maildrop, name))

    class Store(MemoryStore):
        def openMaildrop(self, user: str) -> Any:
            return super().openMaildrop(user).addCallback(Undeclared)

    iface, maildrop, logout = outcome(
        MaildropRealm(Store()).requestAvatar(b"alice", None, IMaildrop)
    )
    assert iface is IMaildrop
    assert isinstance(maildrop, Undeclared)
    assert not IMaildrop.providedBy(maildrop)
    logout()
