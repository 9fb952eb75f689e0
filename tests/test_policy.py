"""
Tests for popserv.policy and its use by the protocol: LOGIN-DELAY and
EXPIRE (RFC 2449 sections 6.5, 6.7), announced and enforced.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest
from protocol_helpers import Session
from synchronous import FakeTime, result, syncRun
from twisted.cred.portal import IRealm
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import capturedLogs, formatEvent
from zope.interface import implementer

from popserv.interfaces import IMaildrop
from popserv.memorystore import MemoryStore
from popserv.policy import (
    NEVER,
    DirectoryHistory,
    MemoryHistory,
    PolicyError,
    SitePolicy,
    UserPolicy,
    parseExpire,
    parsePolicyFile,
    parseSeconds,
)


def test_parsePolicyFile() -> None:
    """
    Each line sets a user's values; unset ones are the server-wide default.
    """
    users = parsePolicyFile(
        "# comment\nalice login-delay=0 expire=NEVER\n\nbob@example.org expire=30  # note\n",
        UserPolicy(loginDelay=900, expire=7),
    )
    assert users == {
        "alice": UserPolicy(0, NEVER),
        "bob@example.org": UserPolicy(900, 30),
    }


@pytest.mark.parametrize(
    "text", ["alice login-delay=x", "alice expire=-1", "alice color=blue", "alice expire"]
)
def test_badPolicyLines(text: str) -> None:
    """
    A bad line is an error naming its line number.
    """
    with pytest.raises(PolicyError, match="line 1"):
        parsePolicyFile(text, UserPolicy())


def test_userTwiceInPolicyFile() -> None:
    """
    A user on two lines is an error naming both, not a silent choice.
    """
    with pytest.raises(PolicyError) as caught:
        parsePolicyFile("alice expire=3\nbob expire=1\n\nalice expire=NEVER\n", UserPolicy())
    assert str(caught.value) == "line 4: alice is already on line 1"


def test_parseExpire() -> None:
    """
    EXPIRE is days or NEVER, any case.
    """
    assert parseExpire("never") == NEVER
    assert parseExpire("0") == 0
    with pytest.raises(PolicyError):
        parseExpire("1.5")


def test_largestValues() -> None:
    """
    EXPIRE takes up to six digits of days, LOGIN-DELAY up to nine digits of
    seconds; a longer number is refused, saying what was wrong.
    """
    assert parseExpire("999999") == 999999
    with pytest.raises(PolicyError) as caught:
        parseExpire("1000000")
    assert str(caught.value) == "expire must be a number of days or NEVER, not '1000000'"
    assert parseSeconds("999999999") == 999999999
    with pytest.raises(PolicyError) as caught:
        parseSeconds("1000000000")
    assert str(caught.value) == "login-delay must be a number of seconds, not '1000000000'"


def test_announcements() -> None:
    """
    Before login the server-wide value is announced, with USER when some
    users differ; after login, the user's own.
    """
    policy = SitePolicy(UserPolicy(900, 30), {"alice": UserPolicy(0, NEVER)})
    assert (policy.loginDelay().value, policy.loginDelay().perUser) == (900, True)
    assert policy.loginDelay("alice").value == 0
    assert policy.expire("bob").value == 30
    assert policy.expire("alice").value == NEVER
    assert SitePolicy().loginDelay() is None
    assert SitePolicy().expire() is None


def session(policy: SitePolicy, store: Any = None) -> Session:
    return Session(store=store, policy=policy)


class TestLoginDelay:
    def test_capa(self) -> None:
        """
        CAPA announces LOGIN-DELAY before and after login.
        """
        policy = SitePolicy(UserPolicy(loginDelay=900), {"bob": UserPolicy(loginDelay=60)})
        s = session(policy)
        assert b"LOGIN-DELAY 900 USER\r\n" in s.command(b"CAPA")
        s.login()
        assert b"LOGIN-DELAY 900\r\n" in s.command(b"CAPA")

    def test_enforced(self) -> None:
        """
        A second login within the delay is refused with [LOGIN-DELAY] and
        the maildrop is released; after the delay it works.
        """
        clock = FakeTime(1_000_000.0)
        policy = SitePolicy(UserPolicy(loginDelay=900), clock=clock)
        first = session(policy)
        assert first.login().startswith(b"+OK")
        first.command(b"QUIT")
        first.protocol.connectionLost(None)
        clock.now += 899
        second = Session(store=first.memory, policy=policy)
        assert second.login() == (
            b"-ERR [LOGIN-DELAY] Minimum time between logins not yet passed\r\n"
        )
        # The credentials were good: the session's audit line names alice.
        second.protocol.connectionLost(None)
        assert (second.protocol.record.user, second.protocol.record.mechanism) == (
            "alice",
            "USER",
        )
        clock.now += 1
        third = Session(store=first.memory, policy=policy)
        assert third.login().startswith(b"+OK Logged in")

    def test_refusedSessionStartsAfresh(self) -> None:
        """
        A session refused with [LOGIN-DELAY] is back where it was before
        the login: the maildrop given back (another session can take it),
        CAPA announcing the server-wide values again, not the refused
        user's own, and a login after the delay works in the same session.
        """
        clock = FakeTime(1_000_000.0)
        policy = SitePolicy(
            UserPolicy(loginDelay=900), {"bob": UserPolicy(loginDelay=60)}, clock=clock
        )
        users = {b"alice": b"secret", b"bob": b"hunter2"}
        first = Session(users=users, policy=policy)
        assert first.login(b"bob", b"hunter2").startswith(b"+OK Logged in")
        first.command(b"QUIT")
        first.protocol.connectionLost(None)
        clock.now += 59
        refused = Session(users=users, store=first.memory, policy=policy)
        assert refused.login(b"bob", b"hunter2") == (
            b"-ERR [LOGIN-DELAY] Minimum time between logins not yet passed\r\n"
        )
        assert b"LOGIN-DELAY 900 USER\r\n" in refused.command(b"CAPA")
        clock.now += 1
        other = Session(users=users, store=first.memory, policy=policy)
        assert other.login(b"bob", b"hunter2").startswith(b"+OK Logged in")
        other.command(b"QUIT")
        other.protocol.connectionLost(None)
        clock.now += 60
        assert refused.login(b"bob", b"hunter2").startswith(b"+OK Logged in")

    def test_realmOfOwnKeepsUsersApart(self) -> None:
        """
        With a realm of the embedder's own, which opens the maildrop itself
        and leaves popserv's mind alone (as twisted.cred's contract lets
        it), the delay is still each user's: alice's login does not hold
        up bob's, her second is refused, and the audit lines name them.
        Every such login used to count as the user "", so one user's login
        refused every other's for the delay.
        """

        @implementer(IRealm)
        class OwnRealm:
            def __init__(self, store: MemoryStore) -> None:
                self.store = store

            def requestAvatar(self, avatarId: bytes, mind: object, *interfaces: Any) -> Any:
                d = self.store.openMaildrop(avatarId.decode())
                return d.addCallback(lambda maildrop: (IMaildrop, maildrop, maildrop.close))

        clock = FakeTime(1_000_000.0)
        policy = SitePolicy(UserPolicy(loginDelay=900), clock=clock)
        users = {b"alice": b"secret", b"bob": b"hunter2"}
        first = Session(users=users, policy=policy)
        first.portal.realm = OwnRealm(first.memory)
        with capturedLogs() as events:
            assert first.login().startswith(b"+OK Logged in")
            first.command(b"QUIT")
            first.protocol.connectionLost(None)
            replies = {}
            for user, password in users.items():
                s = Session(factory=first.factory)
                replies[user] = s.login(user, password)
                s.protocol.connectionLost(None)
        assert replies == {
            b"alice": b"-ERR [LOGIN-DELAY] Minimum time between logins not yet passed\r\n",
            b"bob": b"+OK Logged in, 0 messages (0 octets)\r\n",
        }
        lines = [formatEvent(e) for e in events if e.get("log_namespace") == "popserv.audit"]
        assert [line.split()[2] for line in lines] == ["user=alice", "user=alice", "user=bob"]

    def test_droppedWhileHistoryRead(self) -> None:
        """
        A session that ends while its user's last login is being read (a
        DirectoryHistory answers from a thread) ends quietly when the
        answer comes: no server fault logged, the maildrop given back.
        """

        class SlowLastLogin(MemoryHistory):
            def __init__(self) -> None:
                super().__init__()
                self.pending: list[Deferred[float | None]] = []

            def lastLogin(self, user: str) -> Deferred[float | None]:
                d: Deferred[float | None] = Deferred()
                self.pending.append(d)
                return d

        history = SlowLastLogin()
        policy = SitePolicy(UserPolicy(loginDelay=900), history=history)
        s = session(policy)
        assert s.login() == b""
        s.protocol.connectionLost(None)
        with capturedLogs() as events:
            history.pending.pop().callback(None)
        assert events == []
        other = Session(store=s.memory, policy=SitePolicy())
        assert other.login().startswith(b"+OK Logged in")

    def test_onlyAfterPasswordVerified(self) -> None:
        """
        A wrong password within the delay is an [AUTH] failure, never
        [LOGIN-DELAY]: the code does not tell a guesser the user exists.
        """
        clock = FakeTime(1_000_000.0)
        policy = SitePolicy(UserPolicy(loginDelay=900), clock=clock)
        s = session(policy)
        s.login()
        other = Session(store=s.memory, policy=policy)
        assert other.login(password=b"wrong") == b"-ERR [AUTH] Authentication failed\r\n"


class TestExpire:
    def test_expireZeroDeletesRetrieved(self) -> None:
        """
        With EXPIRE 0, messages retrieved in a session are deleted at its
        UPDATE; the others, and messages only looked at with TOP, stay.
        """
        s = session(SitePolicy(UserPolicy(expire=0)))
        for body in (b"one\r\n", b"two\r\n", b"three\r\n"):
            s.memory.deliver("alice", body)
        s.login()
        assert b"EXPIRE 0\r\n" in s.command(b"CAPA")
        s.command(b"RETR 1")
        s.command(b"TOP 2 0")
        assert s.command(b"QUIT") == b"+OK Bye, 1 deleted, 2 left\r\n"
        assert s.memory.messages("alice") == [b"two\r\n", b"three\r\n"]

    def test_expireDaysCountsFromFirstRetrieval(self) -> None:
        """
        With EXPIRE 2, a retrieved message stays until two days after it
        was first retrieved, and is then deleted at UPDATE even if not
        retrieved again.
        """
        clock = FakeTime(1_000_000.0)
        policy = SitePolicy(UserPolicy(expire=2), clock=clock)
        store = Session().memory
        store.deliver("alice", b"old\r\n")
        store.deliver("alice", b"kept\r\n")

        def quitSession(*commands: bytes) -> bytes:
            s = Session(store=store, policy=policy)
            s.login()
            for command in commands:
                s.command(command)
            reply = s.command(b"QUIT")
            s.protocol.connectionLost(None)
            return reply

        assert quitSession(b"RETR 1") == b"+OK Bye, 2 messages left\r\n"
        clock.now += 2 * 86400 - 1
        assert quitSession(b"RETR 1") == b"+OK Bye, 2 messages left\r\n"
        clock.now += 1
        assert quitSession() == b"+OK Bye, 1 deleted, 1 left\r\n"
        assert store.messages("alice") == [b"kept\r\n"]

    def test_droppedSessionExpiresNothing(self) -> None:
        """
        Without QUIT there is no UPDATE, so EXPIRE deletes nothing.
        """
        s = session(SitePolicy(UserPolicy(expire=0)))
        s.memory.deliver("alice", b"one\r\n")
        s.login()
        s.command(b"RETR 1")
        s.protocol.connectionLost(None)
        assert s.memory.messages("alice") == [b"one\r\n"]

    def test_userExpiresByTheirOwnValue(self) -> None:
        """
        At UPDATE a user's own EXPIRE decides what goes, not the site's
        default: 0 for alice removes what she retrieved where the default
        keeps it, NEVER for alice keeps it where the default removes it.
        """
        for defaults, alices, reply, left in (
            (NEVER, 0, b"+OK Bye, 1 deleted, 0 left\r\n", []),
            (0, NEVER, b"+OK Bye, 1 messages left\r\n", [b"one\r\n"]),
        ):
            s = session(
                SitePolicy(UserPolicy(expire=defaults), {"alice": UserPolicy(expire=alices)})
            )
            s.memory.deliver("alice", b"one\r\n")
            s.login()
            assert s.command(b"RETR 1") == b"+OK 5 octets\r\none\r\n.\r\n"
            assert s.command(b"QUIT") == reply
            assert s.memory.messages("alice") == left

    def test_never(self) -> None:
        """
        EXPIRE NEVER is announced and deletes nothing.
        """
        s = session(SitePolicy(UserPolicy(expire=NEVER)))
        s.memory.deliver("alice", b"one\r\n")
        assert b"EXPIRE NEVER\r\n" in s.command(b"CAPA")
        s.login()
        s.command(b"RETR 1")
        assert s.command(b"QUIT") == b"+OK Bye, 1 messages left\r\n"


class LateHistory:
    """
    A history whose answers come later, as L{DirectoryHistory}'s do from
    its thread; or fail, as a full or unwritable state directory does.
    """

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.pending: list[Deferred[dict[str, float]]] = []

    def lastLogin(self, user: str) -> Deferred[float | None]:
        return succeed(None)

    def recordLogin(self, user: str, when: float) -> Deferred[None]:
        return succeed(None)

    def retrievals(self, user: str) -> Deferred[dict[str, float]]:
        if self.error is not None:
            return fail(self.error)
        d: Deferred[dict[str, float]] = Deferred()
        self.pending.append(d)
        return d

    def saveRetrievals(self, user: str, times: dict[str, float]) -> Deferred[None]:
        return succeed(None)


class TestUpdateWithHistory:
    def test_hangUpWhileHistoryRead(self) -> None:
        """
        A client that sends QUIT and closes at once still has its DELE
        applied (it reached UPDATE, RFC 1939 section 6), though EXPIRE's
        history was still being read when it left; the maildrop stays
        locked until the deletions are over.
        """
        history = LateHistory()
        s = session(SitePolicy(UserPolicy(expire=30), history=history))
        s.memory.deliver("alice", b"one\r\n")
        s.memory.deliver("alice", b"two\r\n")
        s.login()
        s.command(b"RETR 1")
        s.command(b"DELE 2")
        s.send(b"QUIT\r\n")
        s.protocol.connectionLost(None)
        assert "alice" in s.memory._locked
        history.pending.pop().callback({})
        assert s.memory.messages("alice") == [b"one\r\n"]
        assert "alice" not in s.memory._locked
        assert s.take() == b""

    def test_historyFails(self) -> None:
        """
        If the history cannot be read at QUIT, EXPIRE removes nothing this
        time, the messages marked with DELE are still removed, and the
        session ends as usual rather than waiting in UPDATE for the
        autologout.
        """
        history = LateHistory(OSError(28, "No space left on device"))
        s = session(SitePolicy(UserPolicy(expire=30), history=history))
        for body in (b"one\r\n", b"two\r\n"):
            s.memory.deliver("alice", body)
        s.login()
        s.command(b"DELE 2")
        with capturedLogs() as events:
            assert s.command(b"QUIT") == b"+OK Bye, 1 deleted, 1 left\r\n"
        assert s.transport.disconnecting
        assert s.memory.messages("alice") == [b"one\r\n"]
        assert "alice" not in s.memory._locked
        [logged] = [e for e in events if "log_failure" in e]
        assert logged["log_failure"].check(OSError)

    @pytest.mark.parametrize("expire", [30, None])
    def test_updateFails(self, monkeypatch: Any, expire: int | None) -> None:
        """
        Whatever goes wrong in UPDATE, with EXPIRE's history to read first or
        without, the session gives the maildrop back and ends with an error,
        rather than waiting in UPDATE, locked, for the autologout.
        """
        history = LateHistory()
        s = session(SitePolicy(UserPolicy(expire=expire), history=history))
        s.memory.deliver("alice", b"one\r\n")
        s.login()
        s.command(b"DELE 1")

        def broken(*args: object) -> None:
            raise RuntimeError("a bug")

        monkeypatch.setattr(s.protocol, "_update", broken)
        with capturedLogs() as events:
            s.send(b"QUIT\r\n")
            if expire is not None:
                history.pending.pop().callback({})
        assert s.take() == b"-ERR [SYS/TEMP] Some deleted messages not removed\r\n"
        assert s.transport.disconnecting
        assert "alice" not in s.memory._locked
        [logged] = [e["log_failure"] for e in events if "log_failure" in e]
        assert logged.getErrorMessage() == "a bug"


def test_directoryHistory(tmp_path: Path) -> None:
    """
    The state directory keeps login and retrieval times across policy
    objects (processes), one file per user.
    """

    history = DirectoryHistory(str(tmp_path), runInThread=syncRun)
    assert result(history.lastLogin("alice")) is None
    result(history.recordLogin("alice", 1234.0))
    result(history.saveRetrievals("alice", {"uid1": 1e9}))
    again = DirectoryHistory(str(tmp_path), runInThread=syncRun)
    assert result(again.lastLogin("alice")) == 1234.0
    assert result(again.retrievals("alice")) == {"uid1": 1e9}
    assert result(again.retrievals("bob")) == {}
    with pytest.raises(PolicyError):
        DirectoryHistory(str(tmp_path / "missing"))


def test_directoryHistoryFollowsNoLinks(tmp_path: Path) -> None:
    """
    Whoever else can write the state directory cannot make popserv write
    through a symbolic link (to any file the server may write) or read one;
    a leftover temporary file is replaced, not written through.  The files
    are readable by the server only: they tell when a user logged in and
    what they retrieved.
    """
    state = tmp_path / "state"
    state.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("intact")
    history = DirectoryHistory(str(state), runInThread=syncRun)
    result(history.recordLogin("alice", 1234.0))
    result(history.saveRetrievals("alice", {"uid1": 1e9}))
    login, retrieved = sorted(state.iterdir())
    assert [login.suffix, retrieved.suffix] == [".login", ".retrieved"]
    assert [stat.S_IMODE(p.stat().st_mode) for p in (login, retrieved)] == [0o600, 0o600]
    for path in (login, retrieved, Path(str(retrieved) + ".tmp")):
        path.unlink(missing_ok=True)
        path.symlink_to(victim)
    with pytest.raises(OSError):
        result(history.recordLogin("alice", 5678.0))
    assert result(history.lastLogin("alice")) is None
    with pytest.raises(OSError):
        result(history.retrievals("alice"))
    result(history.saveRetrievals("alice", {"uid2": 2e9}))
    assert victim.read_text() == "intact"
    assert victim.stat().st_mtime != 5678.0
    assert not retrieved.is_symlink()
    assert result(history.retrievals("alice")) == {"uid2": 2e9}


def test_directoryHistoryOpensOnlyRegularFiles(tmp_path: Path) -> None:
    """
    A directory or a FIFO in a state file's place is refused at once: a
    directory leaked a descriptor at every QUIT, and a FIFO held a worker
    thread for ever.  A file hard-linked there from elsewhere keeps its
    mode (it is not the server's to change).
    """
    history = DirectoryHistory(str(tmp_path), runInThread=syncRun)
    result(history.recordLogin("alice", 1.0))
    result(history.saveRetrievals("alice", {"u": 1e9}))
    login, retrieved = sorted(tmp_path.iterdir())
    login.unlink()
    retrieved.unlink()
    retrieved.mkdir()
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        with pytest.raises(OSError):
            result(history.retrievals("alice"))
    assert len(os.listdir("/proc/self/fd")) == before
    retrieved.rmdir()
    for path in (login, retrieved):
        os.mkfifo(path)
    with pytest.raises(OSError):
        result(history.recordLogin("alice", 2.0))  # would block in open()
    with pytest.raises(OSError):
        result(history.retrievals("alice"))  # would block in read()
    login.unlink()
    shared = tmp_path.parent / f"{tmp_path.name}-shared"
    shared.write_text("")
    shared.chmod(0o664)
    os.link(shared, login)
    result(history.recordLogin("alice", 3.0))
    assert stat.S_IMODE(shared.stat().st_mode) == 0o664


def test_damagedRetrievalTimesForgotten(tmp_path: Path) -> None:
    """
    A retrieval time that is not a number, or not one popserv could have
    recorded (before 2000, infinite, too large for a float), is damage: it
    is forgotten (the message kept longer), never taken as a retrieval
    long ago (the message deleted early), and the rest of the file still
    counts.
    """
    history = DirectoryHistory(str(tmp_path), runInThread=syncRun)
    result(history.saveRetrievals("alice", {"good": 1e9}))
    [path] = tmp_path.iterdir()
    path.write_text(
        '{"good": 1000000000, "text": "abc", "zero": 0, "early": 5, "no": true,'
        ' "inf": Infinity, "huge": 1' + "0" * 400 + "}"
    )
    assert result(history.retrievals("alice")) == {"good": 1e9}


def test_expiredAgainAfterFailedDeletion() -> None:
    """
    A message EXPIRE dooms stays in the history until it is gone: if its
    deletion fails, or the server stops first, the next UPDATE dooms it
    again; once it is gone, its record is dropped.
    """
    clock = FakeTime(1_000_000.0)
    history = MemoryHistory()
    policy = SitePolicy(UserPolicy(expire=1), history=history, clock=clock)
    uids = ["a", "b"]
    assert result(policy.expired("alice", lambda: uids, {0})) == set()
    clock.now += 86400
    assert result(policy.expired("alice", lambda: uids, set())) == {0}
    assert result(policy.expired("alice", lambda: uids, set())) == {0}
    assert result(policy.expired("alice", lambda: ["b"], set())) == set()
    assert result(history.retrievals("alice")) == {}


class BrokenHistory(MemoryHistory):
    """
    A state directory that is full, or read-only: every write fails.
    """

    def recordLogin(self, user: str, when: float) -> Deferred[None]:
        return fail(OSError(28, "No space left on device"))


def test_loginWithoutDelayNotRecorded() -> None:
    """
    A user without LOGIN-DELAY logs in without the history being written:
    a broken state directory does not keep them out.
    """
    s = session(SitePolicy(UserPolicy(expire=5), history=BrokenHistory()))
    assert s.login().startswith(b"+OK Logged in")


def test_brokenHistoryAllowsLogin() -> None:
    """
    With LOGIN-DELAY, a history that cannot be written is logged and the
    login allowed, not refused: the delay is not worth every user.
    """
    s = session(SitePolicy(UserPolicy(loginDelay=900), history=BrokenHistory()))
    with capturedLogs() as events:
        assert s.login().startswith(b"+OK Logged in")
    [logged] = [e for e in events if "log_failure" in e]
    assert logged["log_failure"].check(OSError)


def test_perUserValuesAfterLogin() -> None:
    """
    Each user gets their own values and their own history: after login CAPA
    shows the user's values, and one user's login does not delay another's.
    """
    clock = FakeTime(1_000_000.0)
    policy = SitePolicy(
        UserPolicy(loginDelay=900, expire=30),
        {"alice": UserPolicy(loginDelay=0, expire=NEVER)},
        clock=clock,
    )
    users = {b"alice": b"secret", b"bob": b"hunter2"}
    bob = Session(users=users, policy=policy)
    assert bob.login(b"bob", b"hunter2").startswith(b"+OK")
    lines = bob.command(b"CAPA")
    assert b"LOGIN-DELAY 900\r\n" in lines and b"EXPIRE 30\r\n" in lines
    alice = Session(users=users, store=bob.memory, policy=policy)
    assert alice.login(b"alice", b"secret").startswith(b"+OK")
    lines = alice.command(b"CAPA")
    assert b"LOGIN-DELAY 0\r\n" in lines and b"EXPIRE NEVER\r\n" in lines
    alice.command(b"QUIT")
    alice.protocol.connectionLost(None)
    again = Session(users=users, store=bob.memory, policy=policy)
    assert again.login(b"alice", b"secret").startswith(b"+OK")
    bob.command(b"QUIT")
    bob.protocol.connectionLost(None)
    bobAgain = Session(users=users, store=bob.memory, policy=policy)
    assert bobAgain.login(b"bob", b"hunter2").startswith(b"-ERR [LOGIN-DELAY]")


def test_realmTellsTheUser() -> None:
    """
    The realm puts the logged-in user's name on the LoginMind.
    """
    from popserv.interfaces import IMaildrop
    from popserv.memorystore import MemoryStore
    from popserv.realm import LoginMind, MaildropRealm

    mind = LoginMind()
    _, _, logout = result(
        MaildropRealm(MemoryStore()).requestAvatar(b"b\xc3\xb6b", mind, IMaildrop)
    )
    assert mind.user == "b\u00f6b"
    logout()


def test_stateFileNames(tmp_path: Path) -> None:
    """
    A user's state files are named by the first 32 hex digits of the
    SHA-256 of the name's bytes (as the client sent them, even if not
    UTF-8): renaming them would forget every user's history at an upgrade,
    and two names must not share a file.
    """
    history = DirectoryHistory(str(tmp_path), runInThread=syncRun)
    result(history.recordLogin("alice", 1234.0))
    result(history.saveRetrievals("alice", {"u": 1e9}))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "2bd806c97f0e00af1a1fc3328fa763a9.login",
        "2bd806c97f0e00af1a1fc3328fa763a9.retrieved",
    ]
    # b"b\xf6b", Latin-1 and not UTF-8, as the realm decodes it.
    latin = b"b\xf6b".decode("utf-8", "surrogateescape")
    result(history.recordLogin(latin, 5678.0))
    result(history.saveRetrievals(latin, {"v": 2e9}))
    assert result(history.lastLogin(latin)) == 5678.0
    assert result(history.retrievals(latin)) == {"v": 2e9}
    assert result(history.lastLogin("b\u00f6b")) is None
    assert result(history.lastLogin("alice")) == 1234.0


def test_loginFileOfEarlierVersionMadePrivate(tmp_path: Path, monkeypatch: Any) -> None:
    """
    A login file left readable by all (0644, by an earlier version) is made
    readable by the server only at the next login; one the server does not
    own is left as it is.  Writing login times does not leak descriptors.
    """
    history = DirectoryHistory(str(tmp_path), runInThread=syncRun)
    result(history.recordLogin("alice", 1.0))
    [login] = tmp_path.iterdir()
    login.chmod(0o644)
    before = len(os.listdir("/proc/self/fd"))
    for when in range(2, 22):
        result(history.recordLogin("alice", float(when)))
    assert len(os.listdir("/proc/self/fd")) == before
    assert stat.S_IMODE(login.stat().st_mode) == 0o600
    assert result(history.lastLogin("alice")) == 21.0
    login.chmod(0o644)
    euid = os.geteuid()
    monkeypatch.setattr(os, "geteuid", lambda: euid + 1)
    result(history.recordLogin("alice", 30.0))
    assert stat.S_IMODE(login.stat().st_mode) == 0o644
    assert result(history.lastLogin("alice")) == 30.0


@pytest.mark.parametrize("damage", ['{"uid1": 1000000', "[1000000000]", '"uid1"', ""])
def test_damagedRetrievalFileForgotten(tmp_path: Path, damage: str) -> None:
    """
    A retrieval file that is not a JSON object (cut short, or replaced) is
    forgotten as a whole: EXPIRE goes on, deleting nothing by it, and the
    next UPDATE writes a good file again.
    """
    clock = FakeTime(1_000_000_000.0)
    history = DirectoryHistory(str(tmp_path), runInThread=syncRun)
    policy = SitePolicy(UserPolicy(expire=1), history=history, clock=clock)
    assert result(policy.expired("alice", lambda: ["uid1", "uid2"], {0})) == set()
    [path] = tmp_path.iterdir()
    path.write_text(damage)
    assert result(history.retrievals("alice")) == {}
    clock.now += 86400
    assert result(policy.expired("alice", lambda: ["uid1", "uid2"], {1})) == set()
    assert result(history.retrievals("alice")) == {"uid2": 1_000_086_400.0}


def test_leftoverTemporaryReplaced(tmp_path: Path, monkeypatch: Any) -> None:
    """
    A leftover temporary retrieval file (a regular one, from a crash) is
    replaced by one readable by the server only; the times are on disk
    (flushed and synced) before the file takes the old one's place.
    """
    history = DirectoryHistory(str(tmp_path), runInThread=syncRun)
    result(history.saveRetrievals("alice", {"u": 1e9}))
    [retrieved] = tmp_path.iterdir()
    temporary = Path(str(retrieved) + ".tmp")
    temporary.write_text("leftover")
    temporary.chmod(0o644)
    synced: list[tuple[bool, bytes]] = []
    realFsync = os.fsync

    def fsync(fd: int) -> None:
        realFsync(fd)
        synced.append((retrieved.read_text() == '{"u": 1000000000.0}', temporary.read_bytes()))

    monkeypatch.setattr(os, "fsync", fsync)
    result(history.saveRetrievals("alice", {"v": 2e9}))
    assert synced == [(True, b'{"v": 2000000000.0}')]
    assert not temporary.exists()
    assert stat.S_IMODE(retrieved.stat().st_mode) == 0o600
    assert result(history.retrievals("alice")) == {"v": 2e9}


def test_retrievalTimeFrom2000Kept(tmp_path: Path) -> None:
    """
    A retrieval at the very start of 2000 is one popserv could have
    recorded: it counts.
    """
    history = DirectoryHistory(str(tmp_path), runInThread=syncRun)
    result(history.saveRetrievals("alice", {"first": 946_684_800, "before": 946_684_799.5}))
    assert result(history.retrievals("alice")) == {"first": 946_684_800.0}


def test_announcedWhenOnlySomeUsersHaveAPolicy() -> None:
    """
    With no server-wide value but some users with one, the most lenient
    value is announced before login, with USER: LOGIN-DELAY 0, EXPIRE NEVER.
    """
    policy = SitePolicy(UserPolicy(), {"alice": UserPolicy(loginDelay=900, expire=30)})
    assert (policy.loginDelay().value, policy.loginDelay().perUser) == (0, True)
    assert (policy.expire().value, policy.expire().perUser) == (NEVER, True)
    lines = session(policy).command(b"CAPA")
    assert b"LOGIN-DELAY 0 USER\r\n" in lines and b"EXPIRE NEVER USER\r\n" in lines


@pytest.mark.parametrize("delay", [None, 0])
def test_checkLoginWithoutDelay(tmp_path: Path, delay: int | None) -> None:
    """
    A user without a LOGIN-DELAY (none, or 0) may always log in, and their
    logins are not written to the state directory.
    """
    history = DirectoryHistory(str(tmp_path), runInThread=syncRun)
    policy = SitePolicy(UserPolicy(loginDelay=delay), history=history, clock=FakeTime())
    with capturedLogs() as events:
        assert result(policy.checkLogin("alice")) is True
        assert result(policy.checkLogin("alice")) is True
    assert list(tmp_path.iterdir()) == []
    assert events == []


def test_checkLogin(tmp_path: Path) -> None:
    """
    checkLogin answers True or False: False within the delay, without
    recording that refused login; True once it has passed, recorded.
    """
    clock = FakeTime(1_000_000.0)
    history = DirectoryHistory(str(tmp_path), runInThread=syncRun)
    policy = SitePolicy(UserPolicy(loginDelay=60), history=history, clock=clock)
    assert result(policy.checkLogin("alice")) is True
    clock.now += 59
    assert result(policy.checkLogin("alice")) is False
    assert result(history.lastLogin("alice")) == 1_000_000.0
    clock.now += 1
    assert result(policy.checkLogin("alice")) is True
    assert result(history.lastLogin("alice")) == 1_000_060.0


def test_brokenHistoryLogged() -> None:
    """
    The log says whose login history could not be kept, and that their
    LOGIN-DELAY was not applied.
    """
    from twisted.logger import formatEvent

    policy = SitePolicy(UserPolicy(loginDelay=900), history=BrokenHistory())
    with capturedLogs() as events:
        assert result(policy.checkLogin("alice")) is True
    [logged] = [e for e in events if "log_failure" in e]
    assert formatEvent(logged) == (
        "Cannot keep the login history of alice: LOGIN-DELAY not applied"
    )


class NoHistory:
    """
    A history that must not be used.
    """

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"history.{name} used")


def noUids() -> list[str]:
    raise AssertionError("uids asked for")


@pytest.mark.parametrize("expire", [None, NEVER])
def test_expiredNothing(expire: str | None) -> None:
    """
    A user whose mail does not expire (EXPIRE NEVER, or none) has nothing
    removed by EXPIRE, and neither the history nor the message list is
    read for it; C{expires} says so beforehand.
    """
    policy = SitePolicy(
        UserPolicy(expire=30), {"alice": UserPolicy(expire=expire)}, history=NoHistory()
    )
    assert policy.expires("alice") is False
    assert result(policy.expired("alice", noUids, {0, 1})) == set()
    assert policy.expires("bob") is True
    assert SitePolicy(UserPolicy(expire=0)).expires("alice") is True


def test_expiredZeroWithoutHistory() -> None:
    """
    With EXPIRE 0, what was retrieved in the session is removed, and no
    more: no history is read or written, no message list made.
    """
    policy = SitePolicy(UserPolicy(expire=0), history=NoHistory())
    assert result(policy.expired("alice", noUids, {0, 2})) == {0, 2}
    assert result(policy.expired("alice", noUids, set())) == set()
