"""
Tests for popserv.protocol over in-memory transports and a fake clock:
exact bytes on the wire for every RFC 1939 command, state and failure.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from protocol_helpers import DelayedStore, MaildropOver, Session, SlowChecker, VanishingReader
from twisted.cred.checkers import ICredentialsChecker, InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.portal import Portal
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure
from zope.interface import implementer

from popserv.encoder import encodeMessage
from popserv.errors import (
    DeletionFailed,
    MaildropRefused,
    MaildropUnavailable,
    MessageUnavailable,
    POP3Error,
)
from popserv.interfaces import MessageInfo
from popserv.memorystore import BytesReader, MemoryStore
from popserv.policy import SitePolicy, UserPolicy
from popserv.protocol import MAX_QUEUED_LINES, POP3ServerFactory
from popserv.realm import MaildropRealm
from popserv.transaction import BrokenListing, Transaction

M1 = b"Subject: one\r\n\r\nfirst\r\n"
M2 = b"Subject: two\n\n.dotted\nlast line"


def session(*messages: bytes, store: Any = None, **kwargs: Any) -> Session:
    s = Session(store=store, **kwargs)
    for m in messages or (M1, M2):
        s.memory.deliver("alice", m)
    return s


def loggedIn(*messages: bytes, **kwargs: Any) -> Session:
    s = session(*messages, **kwargs)
    assert s.login().startswith(b"+OK Logged in")
    return s


class TestGreetingAndLogin:
    def test_greetingHasAPOPTimestamp(self) -> None:
        """
        With a checker that knows plaintext passwords the greeting carries
        an RFC 1939 section 7 timestamp, different for every connection.
        """
        a, b = session(), session()
        assert a.greeting.startswith(b"+OK POP3 server ready <")
        assert a.greeting.endswith(b"@popserv>\r\n")
        assert a.challenge() != b.challenge()

    def test_noTimestampWithoutAPOPChecker(self) -> None:
        """
        When no checker can verify APOP digests the greeting has no
        timestamp and APOP is refused.
        """

        @implementer(ICredentialsChecker)
        class PlainOnly:
            credentialInterfaces = (IUsernamePassword,)

            def requestAvatarId(self, credentials: Any) -> Deferred[bytes]:
                if credentials.checkPassword(b"secret"):
                    return succeed(credentials.username)
                return fail(Exception())

        s = Session(checkers=[PlainOnly()])
        assert s.greeting == b"+OK POP3 server ready\r\n"
        assert (
            s.command(b"APOP alice " + b"0" * 32)
            == b"-ERR APOP is not available on this server\r\n"
        )
        assert s.login() == b"+OK Logged in, 0 messages (0 octets)\r\n"

    def test_userPass(self) -> None:
        """
        USER then PASS logs in and reports the maildrop's size.
        """
        s = session()
        assert s.login() == b"+OK Logged in, 2 messages (59 octets)\r\n"
        assert s.command(b"STAT") == b"+OK 2 59\r\n"

    def test_wrongPassword(self) -> None:
        """
        A wrong password is -ERR [AUTH] and the client may try again.
        """
        s = session()
        assert s.login(password=b"wrong") == b"-ERR [AUTH] Authentication failed\r\n"
        assert s.login(user=b"nobody") == b""  # the penalty: see test_limits
        s.clock.advance(2)
        assert s.take() == b"-ERR [AUTH] Authentication failed\r\n"
        assert s.login() == b""
        s.clock.advance(4)
        assert s.take().startswith(b"+OK Logged in")

    def test_passWithoutUser(self) -> None:
        """
        PASS must follow USER; a failed PASS forgets the user.
        """
        s = session()
        assert s.command(b"PASS secret") == b"-ERR Send USER first\r\n"
        s.command(b"USER alice")
        s.command(b"PASS wrong")
        assert s.command(b"PASS secret") == b"-ERR Send USER first\r\n"

    def test_passwordWithSpaces(self) -> None:
        """
        RFC 1939 section 7: a PASS argument may contain spaces.
        """
        s = session(users={b"alice": b"two words "})
        assert s.login(password=b"two words ").startswith(b"+OK Logged in")

    def test_apop(self) -> None:
        """
        APOP with the MD5 digest of the timestamp and the secret logs in; a
        wrong digest is -ERR [AUTH]; a digest that is not 32 hex digits is
        a syntax error.
        """
        s = session()
        bad = hashlib.md5(s.challenge() + b"wrong").hexdigest().encode()
        assert s.command(b"APOP alice " + bad) == b"-ERR [AUTH] Authentication failed\r\n"
        assert s.command(b"APOP alice xyz") == b"-ERR Syntax: APOP name digest (32 hex digits)\r\n"
        good = hashlib.md5(s.challenge() + b"secret").hexdigest().encode()
        assert s.command(b"APOP alice " + good.upper()) == b""  # the penalty
        s.clock.advance(2)
        assert s.take() == b"+OK Logged in, 2 messages (59 octets)\r\n"

    @pytest.mark.parametrize(
        "digest",
        [b"0" * 31 + b"g", b"0" * 30, b"0" * 34, b"0" * 31, b"0" * 33],
        ids=["not-hex", "30-digits", "34-digits", "31-digits", "33-digits"],
    )
    def test_apopDigestMustBe32HexDigits(self, digest: bytes) -> None:
        """
        An APOP digest that is not exactly 32 hex digits (RFC 1939 section
        7: the MD5 digest "in hexadecimal") is a syntax error, not a failed
        login: no [AUTH] reply, no penalty for the address's next attempt.
        """
        s = session()
        reply = s.command(b"APOP alice " + digest)
        assert reply == b"-ERR Syntax: APOP name digest (32 hex digits)\r\n"
        assert s.login() == b"+OK Logged in, 2 messages (59 octets)\r\n"

    def test_apopForgetsUser(self) -> None:
        """
        APOP forgets a USER sent before it: a PASS after a failed APOP is
        "Send USER first", not a login as the user USER named.
        """
        s = session()
        assert s.command(b"USER alice") == b"+OK Send PASS\r\n"
        assert s.command(b"APOP alice " + b"0" * 32) == b"-ERR [AUTH] Authentication failed\r\n"
        assert s.command(b"PASS secret") == b"-ERR Send USER first\r\n"

    def test_secondLoginRefused(self) -> None:
        """
        USER, PASS and APOP after login are -ERR and change nothing.
        """
        s = loggedIn()
        for line in (b"USER bob", b"PASS x", b"APOP bob " + b"0" * 32):
            assert s.command(line) == b"-ERR Already logged in\r\n"
        assert s.command(b"STAT") == b"+OK 2 59\r\n"

    def test_inUse(self) -> None:
        """
        A second session for a user whose maildrop is locked gets
        -ERR [IN-USE] at once and is closed (RFC 1939 section 4 allows it);
        after the first ends, login works.
        """
        first = loggedIn()
        second = Session(store=first.store)
        assert second.login() == b"-ERR [IN-USE] Maildrop is in use by another session\r\n"
        assert second.transport.disconnecting
        assert second.command(b"NOOP") == b""
        second.protocol.connectionLost(None)
        assert second.protocol.record.reason == "in-use"
        first.command(b"QUIT")
        first.protocol.connectionLost(Failure(ConnectionError()))
        assert Session(store=first.store).login().startswith(b"+OK Logged in")

    @pytest.mark.parametrize(
        ("error", "reply"),
        [
            (MaildropUnavailable, b"-ERR [SYS/TEMP] Maildrop temporarily unavailable\r\n"),
            (MaildropRefused, b"-ERR [SYS/PERM] Maildrop not available for this user\r\n"),
            (
                lambda: MaildropRefused("Maildrop not available: no domain"),
                b"-ERR [SYS/PERM] Maildrop not available: no domain\r\n",
            ),
            (POP3Error, b"-ERR Error\r\n"),
        ],
    )
    def test_maildropNotOpened(self, error: Callable[[], Exception], reply: bytes) -> None:
        """
        A store that cannot open the maildrop, for now (SYS/TEMP) or for
        good (SYS/PERM, RFC 3206 section 4), has its error's reply sent,
        code and text (its own text when it gives one; a bare POP3Error
        has no code); the session stays in AUTHORIZATION, where the
        client may log in again.
        """

        class FailingStore:
            def openMaildrop(self, user: str) -> Deferred[Any]:
                return fail(error())

        s = Session(store=FailingStore())
        assert s.login() == reply
        assert not s.transport.disconnecting
        assert s.command(b"USER alice") == b"+OK Send PASS\r\n"

    def test_freeOnceQuitAnswered(self) -> None:
        """
        The maildrop is free once the reply to QUIT is written, deletions or
        none, before the connection has closed: a client that logs in again
        the moment it reads +OK is not told [IN-USE].  The session's end
        still counts what was left.
        """
        first = loggedIn()
        assert first.command(b"QUIT") == b"+OK Bye, 2 messages left\r\n"
        second = Session(store=first.store)
        assert second.login().startswith(b"+OK Logged in, 2 messages")
        remaining = int(second.command(b"LIST 2").split()[2])
        assert second.command(b"DELE 1") == b"+OK Message 1 deleted\r\n"
        assert second.command(b"QUIT") == b"+OK Bye, 1 deleted, 1 left\r\n"
        assert Session(store=first.store).login().startswith(b"+OK Logged in, 1 messages")
        for session in (first, second):
            session.protocol.connectionLost(None)
        assert (first.protocol.record.left, second.protocol.record.left) == (2, 1)
        assert (first.protocol.record.leftBytes, second.protocol.record.leftBytes) == (
            59,
            remaining,
        )

    def test_quitBeforeLogin(self) -> None:
        """
        QUIT in AUTHORIZATION says goodbye and closes.
        """
        s = session()
        assert s.command(b"QUIT") == b"+OK Bye\r\n"
        assert s.transport.disconnecting


class TestTransaction:
    def test_list(self) -> None:
        """
        LIST gives every message's number and wire size; LIST n just one.
        """
        s = loggedIn()
        assert s.command(b"LIST") == b"+OK 2 messages (59 octets)\r\n1 23\r\n2 36\r\n.\r\n"
        assert s.command(b"LIST 2") == b"+OK 2 36\r\n"
        assert s.command(b"LIST 3") == b"-ERR No such message\r\n"

    def test_uidl(self) -> None:
        """
        UIDL gives the store's unique ids.
        """
        s = loggedIn()
        assert s.command(b"UIDL") == b"+OK Unique-ID listing follows\r\n1 1\r\n2 2\r\n.\r\n"
        assert s.command(b"UIDL 1") == b"+OK 1 1\r\n"

    def test_retr(self) -> None:
        """
        RETR sends the size, then the message with CRLF line endings,
        byte-stuffing and a terminated last line.
        """
        s = loggedIn()
        assert s.command(b"RETR 1") == b"+OK 23 octets\r\n" + M1 + b".\r\n"
        assert s.command(b"RETR 2") == (
            b"+OK 36 octets\r\nSubject: two\r\n\r\n..dotted\r\nlast line\r\n.\r\n"
        )

    def test_top(self) -> None:
        """
        TOP n k sends the header, the blank line and k body lines.
        """
        s = loggedIn()
        assert s.command(b"TOP 2 0") == b"+OK Top of message follows\r\nSubject: two\r\n\r\n.\r\n"
        assert s.command(b"TOP 2 1") == (
            b"+OK Top of message follows\r\nSubject: two\r\n\r\n..dotted\r\n.\r\n"
        )
        assert s.command(b"TOP 2 99") == (
            b"+OK Top of message follows\r\nSubject: two\r\n\r\n..dotted\r\nlast line\r\n.\r\n"
        )
        assert s.command(b"TOP 3 1") == b"-ERR No such message\r\n"

    def test_deleteHidesAndRsetRestores(self) -> None:
        """
        A deleted message vanishes from STAT, LIST, UIDL, RETR and TOP
        without renumbering the others; RSET brings it back.
        """
        s = loggedIn()
        assert s.command(b"DELE 1") == b"+OK Message 1 deleted\r\n"
        assert s.command(b"DELE 1") == b"-ERR Message 1 is deleted\r\n"
        assert s.command(b"STAT") == b"+OK 1 36\r\n"
        assert s.command(b"LIST") == b"+OK 1 messages (36 octets)\r\n2 36\r\n.\r\n"
        assert s.command(b"UIDL") == b"+OK Unique-ID listing follows\r\n2 2\r\n.\r\n"
        for line in (b"LIST 1", b"UIDL 1", b"RETR 1", b"TOP 1 0"):
            assert s.command(line) == b"-ERR Message 1 is deleted\r\n"
        assert s.command(b"RSET") == b"+OK 2 messages (59 octets)\r\n"
        assert s.command(b"LIST 1") == b"+OK 1 23\r\n"

    def test_listingsAfterDeletionsKeepEachMessageItsValue(self) -> None:
        """
        With messages 1 and 3 of four deleted, LIST and UIDL give 2 and 4
        each its own size and unique-id (RFC 1939 section 5: deleted
        messages are not listed, the others keep their numbers), not
        another message's.
        """
        s = loggedIn(b"a\r\n", b"bb\r\n", b"ccc\r\n", b"dddd\r\n")
        assert s.command(b"DELE 1") == b"+OK Message 1 deleted\r\n"
        assert s.command(b"DELE 3") == b"+OK Message 3 deleted\r\n"
        assert s.command(b"LIST") == b"+OK 2 messages (10 octets)\r\n2 4\r\n4 6\r\n.\r\n"
        assert s.command(b"UIDL") == b"+OK Unique-ID listing follows\r\n2 2\r\n4 4\r\n.\r\n"

    def test_quitAppliesDeletions(self) -> None:
        """
        QUIT in TRANSACTION removes the deleted messages, says so, closes.
        """
        s = loggedIn()
        s.command(b"DELE 2")
        assert s.command(b"QUIT") == b"+OK Bye, 1 deleted, 1 left\r\n"
        assert s.transport.disconnecting
        s.protocol.connectionLost(Failure(ConnectionError()))
        assert s.memory.messages("alice") == [M1]

    def test_quitWithoutDeletions(self) -> None:
        """
        QUIT with nothing deleted leaves the maildrop as it was.
        """
        s = loggedIn()
        assert s.command(b"QUIT") == b"+OK Bye, 2 messages left\r\n"
        assert s.memory.messages("alice") == [M1, M2]

    def test_dropDeletesNothing(self) -> None:
        """
        A connection that ends without QUIT deletes nothing and releases the
        lock.
        """
        s = loggedIn()
        s.command(b"DELE 1")
        s.protocol.connectionLost(Failure(ConnectionError()))
        assert s.memory.messages("alice") == [M1, M2]
        assert Session(store=s.memory).login().startswith(b"+OK Logged in")

    def test_deletionFailure(self) -> None:
        """
        If the store cannot apply the deletions, QUIT answers -ERR and no
        message that was not deleted is lost.
        """

        class FailingMaildrop(MaildropOver):
            def deleteMessages(self, indexes: Any) -> Deferred[None]:
                return fail(DeletionFailed(indexes))

        s = Session()
        s.wrapMaildrops(FailingMaildrop)
        s.memory.deliver("alice", M1)
        s.login()
        s.command(b"DELE 1")
        assert s.command(b"QUIT") == b"-ERR [SYS/TEMP] Some deleted messages not removed\r\n"
        assert s.transport.disconnecting
        assert s.memory.messages("alice") == [M1]
        # And the maildrop is free for the client's next try at once.
        assert Session(store=s.memory).login().startswith(b"+OK Logged in, 1 messages")

    @pytest.mark.parametrize("raised", [False, True])
    def test_deletionFault(self, raised: bool) -> None:
        """
        A store that fails the deletions with anything but DeletionFailed (a
        bug, returned or raised) gets the same -ERR for QUIT (RFC 1939
        section 6), logged as a fault, and the session ends with every
        message still there and the maildrop free.
        """

        class BrokenMaildrop(MaildropOver):
            def deleteMessages(self, indexes: Any) -> Deferred[None]:
                if raised:
                    raise RuntimeError("a bug")
                return fail(RuntimeError("a bug"))

        s = Session()
        s.wrapMaildrops(BrokenMaildrop)
        s.memory.deliver("alice", M1)
        s.login()
        s.command(b"DELE 1")
        with capturedLogs() as events:
            assert s.command(b"QUIT") == b"-ERR [SYS/TEMP] Some deleted messages not removed\r\n"
        assert s.transport.disconnecting
        [logged] = [e["log_failure"] for e in events if "log_failure" in e]
        assert logged.getErrorMessage() == "a bug"
        assert s.memory.messages("alice") == [M1]
        assert Session(store=s.memory).login().startswith(b"+OK Logged in, 1 messages")

    def test_openMessageFault(self) -> None:
        """
        A store whose openMessage fails with a bug, not a POP3Error, gets
        RETR a generic -ERR [SYS/TEMP]; the bug itself is what is logged,
        and the session goes on.
        """

        class BrokenOpen(MaildropOver):
            def openMessage(self, index: int) -> Deferred[Any]:
                return fail(RuntimeError("a bug"))

        s = Session()
        s.wrapMaildrops(BrokenOpen)
        s.memory.deliver("alice", M1)
        s.login()
        with capturedLogs() as events:
            assert s.command(b"RETR 1") == b"-ERR [SYS/TEMP] Internal server error\r\n"
        [logged] = [e["log_failure"] for e in events if "log_failure" in e]
        assert logged.type is RuntimeError and logged.getErrorMessage() == "a bug"
        assert s.command(b"NOOP") == b"+OK\r\n"

    def test_messageGoneBeforeRetrieval(self) -> None:
        """
        A message another program removed since the listing is -ERR
        [SYS/TEMP] for RETR and TOP (its reader did not open), and the
        session goes on.
        """

        class Vanished(MaildropOver):
            def openMessage(self, index: int) -> Deferred[Any]:
                return fail(MessageUnavailable())

        s = Session()
        s.wrapMaildrops(Vanished)
        s.memory.deliver("alice", M1)
        s.login()
        for line in (b"RETR 1", b"TOP 1 0"):
            assert s.command(line) == b"-ERR [SYS/TEMP] Message no longer available\r\n"
        assert s.command(b"NOOP") == b"+OK\r\n"

    def test_messageOpenedAfterTheClientLeft(self) -> None:
        """
        A message whose reader comes only after the connection is gone is
        not sent, and its reader is closed at once, not left open.
        """
        opening: list[Deferred[Any]] = []
        closed: list[bool] = []

        class Reader:
            sent = False

            def read(self, size: int) -> Deferred[bytes]:
                data, self.sent = (b"" if self.sent else M1), True
                return succeed(data)

            def close(self) -> None:
                closed.append(True)

        class SlowOpen(MaildropOver):
            def openMessage(self, index: int) -> Deferred[Any]:
                d: Deferred[Any] = Deferred()
                opening.append(d)
                return d

        s = Session()
        s.wrapMaildrops(SlowOpen)
        s.memory.deliver("alice", M1)
        s.login()
        assert s.command(b"RETR 1") == b""
        s.protocol.connectionLost(None)
        opening[0].callback(Reader())
        assert (s.take(), closed) == (b"", [True])


def test_messageGoneWhileSent() -> None:
    """
    A reader that refuses in the middle of a message with
    MessageUnavailable, as its contract lets it (another program removed
    the file), cuts the response off: the connection is aborted, nothing is
    deleted, and the log has a warning, not a server fault.
    """

    class VanishingMaildrop(MaildropOver):
        def openMessage(self, index: int) -> Deferred[Any]:
            return succeed(
                VanishingReader(lambda size: b"Subject: x\r\n\r\n" + b"line\r\n" * (size // 6 - 3))
            )

    s = Session()
    s.wrapMaildrops(VanishingMaildrop)
    s.memory.deliver("alice", b"y" * 1_000_000)
    s.login()
    s.command(b"DELE 1")
    s.command(b"RSET")
    with capturedLogs() as events:
        sent = s.command(b"RETR 1")
    assert sent.startswith(b"+OK 1000002 octets\r\nSubject: x\r\n\r\nline\r\n")
    assert not sent.endswith(b".\r\n")
    assert s.transport.disconnecting
    [warning] = [e for e in events if e["log_level"] is LogLevel.warn]
    assert formatEvent(warning) == (
        "Message unavailable in the middle of sending it: Message no longer available; closing"
    )
    assert not [e for e in events if "log_failure" in e]
    s.protocol.connectionLost(None)
    assert s.memory.messages("alice") == [b"y" * 1_000_000]


class ShortReader(BytesReader):
    """
    A store's reader that gives the message without its last line, as one
    whose storage cut it short would: less than the listing said.
    """

    def __init__(self, data: bytes) -> None:
        super().__init__(data[: data.rindex(b"\n", 0, -1) + 1])


class ShortMaildrop(MaildropOver):
    def openMessage(self, index: int) -> Deferred[Any]:
        return self._maildrop.openMessage(index).addCallback(
            lambda reader: ShortReader(reader._data)
        )


def test_messageShorterThanListedDropped() -> None:
    """
    RETR of a message the store gives shorter than the size it listed
    (held whole, so nothing of it was sent yet) drops the connection, and
    the fault is logged with both sizes: an -ERR would let the DELE the
    client pipelined behind it delete a message it never got whole.
    """
    s = Session()
    s.wrapMaildrops(ShortMaildrop)
    s.memory.deliver("alice", M1)
    s.memory.deliver("alice", M2)
    assert s.login() == b"+OK Logged in, 2 messages (59 octets)\r\n"
    with capturedLogs() as events:
        s.send(b"RETR 1\r\nDELE 1\r\nQUIT\r\n")
    assert s.take() == b""
    assert s.transport.disconnecting
    [logged] = [e["log_failure"] for e in events if "log_failure" in e]
    assert str(logged.value) == "The store gave 16 octets of a message listed as 23"
    s.protocol.connectionLost(None)
    assert s.memory.messages("alice") == [M1, M2]


class RefusingReader(BytesReader):
    """
    A reader whose whole() refuses: the file went between opening and
    reading.
    """

    def whole(self, size: int) -> bytes | None:
        raise MessageUnavailable()


class LaterRefusingReader(BytesReader):
    """
    A reader that does not offer the message whole and whose first read
    fails, when the test fires C{pending}, as a file gone meanwhile does.
    """

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.pending: Deferred[bytes] = Deferred()

    def whole(self, size: int) -> bytes | None:
        return None

    def read(self, size: int) -> Deferred[bytes]:
        return self.pending


@pytest.mark.parametrize("reader", [RefusingReader, LaterRefusingReader], ids=["whole", "read"])
def test_refusedBeforeAnyOctet(reader: type[BytesReader]) -> None:
    """
    A reader that refuses before the first octet of the response went out
    (MessageUnavailable from whole(), at once, or from its first read,
    later) is answered with that -ERR, as a refusal to open the message
    is, logged as a warning, and the session goes on as after any answer:
    on the autologout timer again, not the stall timeout that waited for
    the read, and closed once the client half-closes.  It used to drop
    the connection.
    """
    readers: list[BytesReader] = []

    class RefusingMaildrop(MaildropOver):
        def openMessage(self, index: int) -> Deferred[Any]:
            readers.append(reader(M1))
            return succeed(readers[-1])

    s = Session()
    s.wrapMaildrops(RefusingMaildrop)
    s.memory.deliver("alice", M1)
    s.login()
    with capturedLogs() as events:
        s.send(b"RETR 1\r\n")
        if isinstance(readers[0], LaterRefusingReader):
            assert s.take() == b""
            readers[0].pending.errback(MessageUnavailable())
    assert s.take() == b"-ERR [SYS/TEMP] Message no longer available\r\n"
    assert [(e["log_level"], formatEvent(e)) for e in events] == [
        (LogLevel.warn, "Message unavailable: Message no longer available")
    ]
    s.clock.advance(599)
    assert not s.transport.disconnecting
    assert s.command(b"NOOP") == b"+OK\r\n"
    s.protocol.readConnectionLost()
    assert s.transport.disconnecting
    assert s.take() == b""


def test_messageShorterThanListedCutOff() -> None:
    """
    Sent in chunks (a message larger than one), a message shorter than
    listed is cut off before its terminator, and the connection dropped:
    a DELE pipelined behind it removes nothing.
    """
    s = Session()
    s.wrapMaildrops(ShortMaildrop)
    big = b"Subject: big\r\n\r\n" + b"x" * 300_000 + b"\r\nlast\r\n"
    s.memory.deliver("alice", big)
    s.login()
    with capturedLogs() as events:
        s.send(b"RETR 1\r\nDELE 1\r\nQUIT\r\n")
    sent = s.take()
    assert sent == b"+OK 300024 octets\r\n" + big[: -len(b"last\r\n")]
    assert s.transport.disconnecting
    [logged] = [e["log_failure"] for e in events if "log_failure" in e]
    assert str(logged.value) == "The store gave 300018 octets of a message listed as 300024"
    s.protocol.connectionLost(None)
    assert s.memory.messages("alice") == [big]


def test_readErrorWhileSentIsAFault() -> None:
    """
    A reader that fails in the middle of a message with anything but a
    POP3Error (an I/O error) cuts the response off as a vanished message
    does, but the operator is told of a fault: the error itself is
    logged, not the warning about a message another program removed.
    """

    class FailingReader:
        reads = 0

        def read(self, size: int) -> Deferred[bytes]:
            self.reads += 1
            if self.reads > 1:
                return fail(OSError(5, "Input/output error"))
            return succeed(b"Subject: x\r\n\r\n" + b"line\r\n" * (size // 6 - 3))

        def close(self) -> None:
            pass

    class FailingMaildrop(MaildropOver):
        def openMessage(self, index: int) -> Deferred[Any]:
            return succeed(FailingReader())

    s = Session()
    s.wrapMaildrops(FailingMaildrop)
    s.memory.deliver("alice", b"y" * 1_000_000)
    s.memory.deliver("alice", M1)
    s.login()
    s.command(b"DELE 2")
    with capturedLogs() as events:
        s.send(b"RETR 1\r\nQUIT\r\n")
    sent = s.take()
    assert sent.startswith(b"+OK 1000002 octets\r\nSubject: x\r\n\r\nline\r\n")
    assert not sent.endswith(b".\r\n")
    assert s.transport.disconnecting
    [logged] = [e["log_failure"] for e in events if "log_failure" in e]
    assert logged.type is OSError
    assert not [e for e in events if e["log_level"] is LogLevel.warn]
    s.protocol.connectionLost(None)
    assert s.memory.messages("alice") == [b"y" * 1_000_000, M1]


def test_readGivingNoneIsAFault() -> None:
    """
    A reader whose read fires with L{None} (a store's read that falls off
    its end) is a server fault, not the end of the message: the response
    is not sent, the connection is dropped, the L{TypeError} logged, and
    nothing deleted.  The message used to end there as if whole: RETR
    sent it complete, and empty, and the client's DELE and QUIT lost it.
    """

    class NoneReader:
        def read(self, size: int) -> Deferred[bytes]:
            return succeed(None)  # type: ignore[arg-type]

        def close(self) -> None:
            pass

    class NoneMaildrop(MaildropOver):
        def openMessage(self, index: int) -> Deferred[Any]:
            return succeed(NoneReader())

    s = Session()
    s.wrapMaildrops(NoneMaildrop)
    s.memory.deliver("alice", M1)
    s.login()
    with capturedLogs() as events:
        s.send(b"RETR 1\r\nDELE 1\r\nQUIT\r\n")
    # The status line waits to go out with the first chunk: there is none.
    assert s.take() == b""
    assert s.transport.disconnecting
    [logged] = [e["log_failure"] for e in events if "log_failure" in e]
    assert logged.type is TypeError
    s.protocol.connectionLost(None)
    assert s.memory.messages("alice") == [M1]


class TestRobustness:
    @pytest.mark.parametrize(
        ("line", "reply"),
        [
            (b"XYZZY", b"-ERR Unknown command\r\n"),
            (b"", b"-ERR Unknown command\r\n"),
            (b"\x00\xff", b"-ERR Unknown command\r\n"),
            (b"RETR x", b"-ERR Syntax: RETR msg\r\n"),
            (b"RETR 0", b"-ERR Syntax: RETR msg\r\n"),
            (b"RETR 99", b"-ERR No such message\r\n"),
            (b"RETR 99999999999999999999", b"-ERR Syntax: RETR msg\r\n"),
            (b"DELE 3", b"-ERR No such message\r\n"),
            (b"TOP 1", b"-ERR Syntax: TOP msg n\r\n"),
            # A tab is not an argument separator (RFC 1939 section 3): such
            # a line is malformed, and never runs as the command it resembles.
            (b"TOP 1\t0", b"-ERR Syntax: TOP msg n\r\n"),
            (b"DELE 1\t", b"-ERR Syntax: DELE msg\r\n"),
        ],
    )
    def test_badCommandsKeepSession(self, line: bytes, reply: bytes) -> None:
        """
        Unknown, malformed and out-of-range commands get a fixed -ERR and
        the session goes on.
        """
        s = loggedIn()
        assert s.command(line) == reply
        assert s.command(b"NOOP") == b"+OK\r\n"

    def test_wrongState(self) -> None:
        """
        Transaction commands before login are refused, the session goes on.
        """
        s = session()
        for line in (b"STAT", b"LIST", b"RETR 1", b"DELE 1", b"NOOP", b"RSET", b"TOP 1 1", b"UIDL"):
            assert s.command(line) == b"-ERR Command not valid in this state\r\n"
        assert s.login().startswith(b"+OK")

    def test_lfOnlyLines(self) -> None:
        """
        Clients that end lines with a bare LF are understood.
        """
        s = session()
        s.send(b"USER alice\nPASS secret\nSTAT\n")
        assert s.take() == b"+OK Send PASS\r\n+OK Logged in, 2 messages (59 octets)\r\n+OK 2 59\r\n"

    def test_emptyLfOnlyLine(self) -> None:
        """
        An empty line ended by a bare LF (the empty octet string, which
        Python makes one shared object) is an unknown command, as an empty
        CRLF line is: not taken for the queue's stand-in for an over-long
        line, which would close the session.
        """
        s = loggedIn()
        s.send(b"\n")
        assert s.take() == b"-ERR Unknown command\r\n"
        assert not s.transport.disconnecting
        assert s.command(b"NOOP") == b"+OK\r\n"

    def test_halfCloseWithNothingPending(self) -> None:
        """
        A client that shuts its sending side when every command it sent is
        answered gets the connection closed at once, with nothing more
        written, rather than left open until the autologout.
        """
        s = loggedIn()
        assert s.command(b"STAT") == b"+OK 2 59\r\n"
        s.protocol.readConnectionLost()
        assert s.transport.disconnecting
        assert s.take() == b""
        s.protocol.connectionLost(Failure(ConnectionError()))
        assert s.memory.messages("alice") == [M1, M2]

    def test_halfCloseWaitsForThePendingAnswer(self) -> None:
        """
        A client that shuts its sending side while its last command (here
        PASS, with nothing queued behind it) is still pending gets its
        answer before the connection closes.
        """
        checker = SlowChecker()
        s = session(checkers=[checker])
        s.send(b"USER alice\r\nPASS secret\r\n")
        s.protocol.readConnectionLost()
        assert s.take() == b"+OK Send PASS\r\n"
        assert not s.transport.disconnecting
        checker.release()
        assert s.take() == b"+OK Logged in, 2 messages (59 octets)\r\n"
        assert s.transport.disconnecting

    def test_lineTooLong(self) -> None:
        """
        A command line over 255 octets gets -ERR and the connection closes.
        """
        s = session()
        s.send(b"USER " + b"a" * 300 + b"\r\n")
        assert s.take() == b"-ERR Line too long\r\n"
        assert s.transport.disconnecting

    def test_longestLegalLine(self) -> None:
        """
        A 255-octet line including CRLF is accepted (RFC 2449 section 4).
        """
        s = session()
        line = b"USER " + b"a" * 248
        assert len(line + b"\r\n") == 255
        assert s.command(line) == b"+OK Send PASS\r\n"
        # One octet more is too long.
        assert s.command(line + b"a") == b"-ERR Line too long\r\n"
        assert s.transport.disconnecting

    def test_serverFaultLeaksNothing(self) -> None:
        """
        An unexpected exception in a store is logged; the client gets a
        generic -ERR [SYS/TEMP] and can try again.
        """

        class BrokenStore:
            def openMaildrop(self, user: str) -> Deferred[Any]:
                return fail(RuntimeError("secret internal detail"))

        s = Session(store=BrokenStore())
        assert s.login() == b"-ERR [SYS/TEMP] Login failed, try again later\r\n"
        assert s.command(b"USER alice") == b"+OK Send PASS\r\n"

    def test_listingThatFailsLateLeavesAuthorization(self) -> None:
        """
        A listing that fails only once the session takes it in (an iterator
        rather than a sequence: it has no length) is a server fault like a
        failed listMessages: the session stays in the AUTHORIZATION state,
        with the maildrop released.  It used to be left in TRANSACTION
        without a transaction, and its next command raised an
        AssertionError that dropped the connection.
        """

        class IteratorMaildrop(MaildropOver):
            def listMessages(self) -> Deferred[Any]:
                return self._maildrop.listMessages().addCallback(iter)

        s = session()
        s.wrapMaildrops(IteratorMaildrop)
        with capturedLogs() as events:
            assert s.login() == b"-ERR [SYS/TEMP] Login failed, try again later\r\n"
        assert [e["log_failure"].type for e in events if "log_failure" in e] == [BrokenListing]
        assert s.command(b"STAT") == b"-ERR Command not valid in this state\r\n"
        assert not s.transport.disconnecting
        s.memory.openMaildrop("alice").addCallback(lambda maildrop: maildrop.close())

    def test_listingFailureStartsAfresh(self) -> None:
        """
        A login whose listing failed leaves the session as it was before
        it: the maildrop given back (another session logs in), and CAPA
        announcing the server-wide EXPIRE again, not that user's own.
        """

        class IteratorMaildrop(MaildropOver):
            def listMessages(self) -> Deferred[Any]:
                return self._maildrop.listMessages().addCallback(iter)

        policy = SitePolicy(UserPolicy(expire=30), {"alice": UserPolicy(expire=7)})
        s = session(policy=policy)
        s.wrapMaildrops(IteratorMaildrop)
        with capturedLogs():
            assert s.login() == b"-ERR [SYS/TEMP] Login failed, try again later\r\n"
        assert b"EXPIRE 30 USER\r\n" in s.command(b"CAPA")
        assert Session(store=s.memory).login().startswith(b"+OK Logged in")

    def test_releaseFailureLoggedAndQuitAnswered(self) -> None:
        """
        A maildrop whose release (close) fails is logged, and the session
        goes on: QUIT is answered and the connection closed.
        """

        class CloseFails(MaildropOver):
            def close(self) -> None:
                raise OSError("the lock file's directory is gone")

        s = session()
        s.wrapMaildrops(CloseFails)
        assert s.login().startswith(b"+OK Logged in")
        with capturedLogs() as events:
            assert s.command(b"QUIT") == b"+OK Bye, 2 messages left\r\n"
        assert [formatEvent(e) for e in events] == ["Releasing the maildrop failed"]
        assert s.transport.disconnecting

    def test_commandRaisingIsAServerFault(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """
        A command that raises at once (a bug: here UIDL, over a listing it
        cannot read) is a server fault: logged, and answered with the
        generic -ERR [SYS/TEMP]; the session goes on.  The exception used
        to escape into the transport, which logged an Unhandled Error and
        dropped the connection without a reply.
        """

        def broken(self: Transaction) -> Any:
            raise UnicodeEncodeError("ascii", "\u00fc", 0, 1, "a bug")

        s = session()
        assert s.login().startswith(b"+OK Logged in")
        monkeypatch.setattr(Transaction, "uids", broken)
        with capturedLogs() as events:
            assert s.command(b"UIDL") == b"-ERR [SYS/TEMP] Internal server error\r\n"
        assert [e["log_failure"].type for e in events if "log_failure" in e] == [UnicodeEncodeError]
        assert s.command(b"NOOP") == b"+OK\r\n"
        assert not s.transport.disconnecting

    @pytest.mark.parametrize(
        ("listing", "why"),
        [
            (
                [MessageInfo(5, "a"), MessageInfo(5, "b\r\n+OK forged")],
                "message 2 with unique-id 'b\\r\\n+OK forged': not 1 to 70 characters"
                " from 0x21 to 0x7E",
            ),
            (
                [MessageInfo(5, "a"), MessageInfo(5, "b"), MessageInfo(5, "a")],
                "message 3 with unique-id 'a': given to an earlier message too",
            ),
            ([MessageInfo(5, "")], "message 1 with unique-id '': not 1 to 70 characters"),
            ([MessageInfo(5, "x" * 71)], f"message 1 with unique-id {'x' * 71!r}: not 1 to 70"),
            ([MessageInfo(5, "j\u00f6rg")], "message 1 with unique-id 'j\u00f6rg': not 1 to 70"),
            ([MessageInfo(-3, "a")], "message 1 with size -3, downgraded size None: not whole"),
            ([MessageInfo(2.5, "a")], "message 1 with size 2.5, downgraded size None: not whole"),
            ([MessageInfo(5, "a", -1)], "message 1 with size 5, downgraded size -1: not whole"),
            ([MessageInfo(-1, "a")], "message 1 with size -1, downgraded size None: not whole"),
            # A bool is no size: LIST would have said "1 True".
            ([MessageInfo(True, "a")], "message 1 with size True, downgraded size None: not whole"),
            (
                [MessageInfo(5, "a"), MessageInfo(5, "b", False)],
                "message 2 with size 5, downgraded size False: not whole",
            ),
        ],
    )
    def test_brokenListingFailsLogin(self, listing: list[MessageInfo], why: str) -> None:
        """
        A store's listing that breaks the IMaildrop contract fails the login
        as a server fault, naming the message and what is wrong with it,
        rather than reaching the wire: a unique-id holding CRLF would add
        lines of its own to a UIDL listing; one given twice makes a client
        that leaves mail on the server skip a message for good; a bool for
        a size (which the check used to take as the number it converts to)
        would have gone out in LIST as "1 True" or "2 False".
        """

        class BrokenMaildrop(MaildropOver):
            def listMessages(self) -> Deferred[Any]:
                return succeed(listing)

        s = session()
        s.wrapMaildrops(BrokenMaildrop)
        with capturedLogs() as events:
            assert s.login() == b"-ERR [SYS/TEMP] Login failed, try again later\r\n"
        [failure] = [e["log_failure"] for e in events if "log_failure" in e]
        assert failure.check(BrokenListing)
        assert str(failure.value).startswith(f"the store listed {why}")
        assert s.command(b"STAT") == b"-ERR Command not valid in this state\r\n"

    def test_goodListingOfAnotherStore(self) -> None:
        """
        Another store's listing that keeps the contract is taken as it is:
        the longest unique-id, every octet it may hold, a size of 0.
        """
        longest = bytes(range(0x21, 0x67)).decode("ascii")
        listing = [MessageInfo(0, longest, 0), MessageInfo(7, "~!", 9)]

        class GoodMaildrop(MaildropOver):
            def listMessages(self) -> Deferred[Any]:
                return succeed(listing)

        s = session()
        s.wrapMaildrops(GoodMaildrop)
        assert s.login() == b"+OK Logged in, 2 messages (9 octets)\r\n"
        assert s.command(b"UIDL") == (
            b"+OK Unique-ID listing follows\r\n1 " + longest.encode("ascii") + b"\r\n2 ~!\r\n.\r\n"
        )

    def test_linesAfterQuitIgnored(self) -> None:
        """
        Nothing sent after QUIT is executed.
        """
        s = loggedIn()
        s.send(b"QUIT\r\nDELE 1\r\n")
        assert s.take() == b"+OK Bye, 2 messages left\r\n"
        assert s.memory.messages("alice") == [M1, M2]

    def test_linesAfterQuitBeforeLoginIgnored(self) -> None:
        """
        QUIT in AUTHORIZATION ends the session too (RFC 1939 section 6): a
        login pipelined behind it, queued while a failed one was checked,
        is neither answered nor tried.
        """
        checker = SlowChecker()
        s = session(checkers=[checker])
        s.send(b"USER alice\r\nPASS wrong\r\nQUIT\r\nUSER alice\r\nPASS secret\r\n")
        assert s.take() == b"+OK Send PASS\r\n"
        checker.release()
        s.clock.advance(60)  # past any penalty a next attempt would wait
        assert s.take() == b"-ERR [AUTH] Authentication failed\r\n+OK Bye\r\n"
        assert (checker.pending, s.transport.disconnecting) == ([], True)


class TestTimeout:
    def test_autologout(self) -> None:
        """
        After 10 idle minutes the connection is closed with no response and
        nothing deleted (RFC 1939 section 3).
        """
        s = loggedIn()
        s.command(b"DELE 1")
        s.clock.advance(599)
        assert not s.transport.disconnecting
        s.command(b"NOOP")
        s.clock.advance(599)
        assert not s.transport.disconnecting
        with capturedLogs() as events:
            s.clock.advance(1)
        assert s.transport.disconnecting
        assert s.take() == b""
        # The operator is told which timer it was.
        assert [formatEvent(e) for e in events] == ["Autologout timer expired; closing"]
        assert s.protocol.record.reason == "timeout"
        s.protocol.connectionLost(Failure(ConnectionError()))
        assert s.memory.messages("alice") == [M1, M2]

    def test_defaultIsTenMinutes(self) -> None:
        """
        A factory made without a timeout (the embedding API's default)
        logs out after exactly the RFC 1939 section 3 ten minutes: the
        minimum the RFC allows, and no longer.
        """
        portal = Portal(
            MaildropRealm(MemoryStore()), [InMemoryUsernamePasswordDatabaseDontUse(alice=b"secret")]
        )
        s = Session(factory=POP3ServerFactory(portal, clock=Clock()))
        assert s.login() == b"+OK Logged in, 0 messages (0 octets)\r\n"
        s.clock.advance(599.9)
        assert not s.transport.disconnecting
        s.clock.advance(0.1)
        assert s.transport.disconnecting
        assert s.take() == b""

    def test_noTimerAfterTheConnectionIsGone(self) -> None:
        """
        A session whose client left holds no timer: nothing fires for it
        later (the audit reason stays the client's leaving), and the
        server's timers do not keep it in memory until the autologout.
        """
        s = loggedIn()
        s.protocol.connectionLost(Failure(ConnectionError()))
        assert s.protocol._timeout is None
        with capturedLogs() as events:
            s.clock.advance(3600)
        assert [formatEvent(e) for e in events] == []
        assert s.protocol.record.reason == "disconnected"

    def test_configurable(self) -> None:
        """
        The autologout timer after login is the factory's timeout.
        """
        s = session(timeout=1800)
        s.login()
        s.clock.advance(1799)
        assert not s.transport.disconnecting
        s.clock.advance(1)
        assert s.transport.disconnecting


class TestPendingStore:
    """
    The same session against a store whose every answer is still pending
    when the call returns.
    """

    def test_pipelinedCommandsAnsweredInOrder(self) -> None:
        """
        Commands pipelined behind PASS and RETR wait for them and are
        answered in order, none early, none lost.
        """
        memory = MemoryStore()
        memory.deliver("alice", M1)
        memory.deliver("alice", M2)
        store = DelayedStore(memory)
        s = Session(store=store)
        s.send(b"USER alice\r\nPASS secret\r\nSTAT\r\nRETR 2\r\nDELE 1\r\nLIST\r\nQUIT\r\n")
        assert s.take() == b"+OK Send PASS\r\n"
        store.fireAll()
        assert s.take() == (
            b"+OK Logged in, 2 messages (59 octets)\r\n"
            b"+OK 2 59\r\n"
            b"+OK 36 octets\r\n" + encodeMessage(M2) + b"+OK Message 1 deleted\r\n"
            b"+OK 1 messages (36 octets)\r\n2 36\r\n.\r\n"
            b"+OK Bye, 1 deleted, 1 left\r\n"
        )
        assert memory.messages("alice") == [M2]

    def loggedInPending(self) -> tuple[Session, DelayedStore, MemoryStore]:
        """
        A session logged in to alice's maildrop of M1, whose store's every
        later answer waits for the test.
        """
        memory = MemoryStore()
        memory.deliver("alice", M1)
        store = DelayedStore(memory)
        s = Session(store=store)
        s.send(b"USER alice\r\nPASS secret\r\n")
        store.fireAll()
        s.take()
        return s, store, memory

    def test_nothingQueuedRunsAfterAutologout(self) -> None:
        """
        The autologout ends the session at once: a DELE and QUIT queued
        behind a command the store answers only afterwards never run
        (RFC 1939 section 3: no UPDATE), though the abort reaches
        connectionLost later.
        """
        s, store, memory = self.loggedInPending()
        s.send(b"RETR 1\r\nDELE 1\r\nQUIT\r\n")
        s.clock.advance(600)
        assert s.transport.disconnecting
        store.fireAll()
        s.protocol.connectionLost(Failure(ConnectionError()))
        assert memory.messages("alice") == [M1]
        assert s.protocol.record.reason == "timeout"

    def test_autologoutDuringUpdateKeepsQuit(self) -> None:
        """
        Deletions that outlast the autologout timer are still applied, and
        the session's audit reason stays QUIT, not timeout.
        """
        s, store, memory = self.loggedInPending()
        s.send(b"DELE 1\r\nQUIT\r\n")
        s.clock.advance(600)
        store.fireAll()
        s.protocol.connectionLost(Failure(ConnectionError()))
        assert memory.messages("alice") == []
        assert (s.protocol.record.reason, s.protocol.record.dele) == ("quit", 1)

    def test_lineTooLongAnsweredInTurn(self) -> None:
        """
        An over-long line behind pending commands is answered after them,
        never before, and nothing after it is read.
        """
        memory = MemoryStore()
        memory.deliver("alice", M1)
        store = DelayedStore(memory)
        s = Session(store=store)
        s.send(b"USER alice\r\nPASS secret\r\nRETR 1\r\nNOOP " + b"x" * 300 + b"\r\nQUIT\r\n")
        assert s.take() == b"+OK Send PASS\r\n"
        assert s.transport.producerState == "paused"
        store.fireAll()
        assert s.take() == (
            b"+OK Logged in, 1 messages (23 octets)\r\n"
            b"+OK 23 octets\r\n" + M1 + b".\r\n"
            b"-ERR Line too long\r\n"
        )
        assert s.transport.disconnecting

    def test_dropWhileLoggingIn(self) -> None:
        """
        A connection lost while the login is pending releases the maildrop
        when the login completes.
        """
        memory = MemoryStore()
        store = DelayedStore(memory)
        s = Session(store=store)
        s.send(b"USER alice\r\nPASS secret\r\n")
        s.protocol.connectionLost(Failure(ConnectionError()))
        store.fireAll()
        assert Session(store=memory).login().startswith(b"+OK Logged in")

    def test_dropWhileLoggingInIsNoLogin(self) -> None:
        """
        A connection lost while its maildrop was being opened is no login
        for LOGIN-DELAY (RFC 2449 section 8.1.2): it records none, and the
        user's next login is not refused with [LOGIN-DELAY].
        """
        memory = MemoryStore()
        store = DelayedStore(memory)
        policy = SitePolicy(UserPolicy(loginDelay=900), clock=lambda: 1000.0)
        s = Session(store=store, policy=policy)
        s.send(b"USER alice\r\nPASS secret\r\n")
        s.protocol.connectionLost(Failure(ConnectionError()))
        store.fireAll()
        assert s.transport.value() == b"+OK Send PASS\r\n"
        again = Session(store=memory, policy=policy)
        assert again.login() == b"+OK Logged in, 0 messages (0 octets)\r\n"

    def test_autologoutWhileWaitingPenaltyChecksNothing(self) -> None:
        """
        A login waiting out the failed-login penalty when the login timeout
        ends the session is never checked: the session is over (aborted,
        its loss not yet reported), no checker is asked for it, and its turn
        at the login gate is given back.
        """
        checker = SlowChecker()
        s = Session(checkers=[checker])
        s.clock.advance(59)  # the login timeout is 60 seconds
        s.send(b"USER alice\r\nPASS wrong\r\n")
        checker.release()
        assert s.take() == b"+OK Send PASS\r\n-ERR [AUTH] Authentication failed\r\n"
        s.send(b"USER alice\r\nPASS secret\r\n")  # waits 2 seconds: the penalty
        s.clock.advance(1)
        assert s.transport.disconnecting  # aborted at 60 seconds
        s.clock.advance(1)
        assert checker.pending == []
        assert s.factory.gate.active == 0  # its turn given back to the gate
        assert s.take() == b"+OK Send PASS\r\n"

    def test_floodPausesReading(self) -> None:
        """
        While a command is pending, a client that keeps sending is held back:
        the server stops reading its socket, and resumes once it catches up.
        """
        store = DelayedStore(MemoryStore())
        s = Session(store=store)
        s.send(b"USER alice\r\nPASS secret\r\n")
        # docs/capabilities.rst promises the bound: "with 64 lines queued,
        # popserv stops reading".
        assert MAX_QUEUED_LINES == 64
        # The lines wait behind PASS: one short of the bound, reading goes
        # on; at it, it stops.
        s.send(b"NOOP\r\n" * (MAX_QUEUED_LINES - 1))
        assert s.transport.producerState == "producing"
        s.send(b"NOOP\r\n")
        assert s.transport.producerState == "paused"
        store.fireAll()
        assert s.transport.producerState == "producing"
        assert s.take().count(b"+OK\r\n") == MAX_QUEUED_LINES

    def test_readingResumesAtHalfTheBound(self) -> None:
        """
        Reading resumes once the queue is below half its bound, not before,
        and a second flood pauses it again.  (Each RETR waits on the store,
        so the queue shrinks one line at a time.)
        """
        s, store, _ = self.loggedInPending()
        for flood in range(2):
            s.send(b"RETR 1\r\n" * (MAX_QUEUED_LINES + 1))
            assert s.transport.producerState == "paused"
            for _ in range(10_000):
                if len(s.protocol._queue) <= MAX_QUEUED_LINES // 2 or not store.fireOne():
                    break
            assert len(s.protocol._queue) == MAX_QUEUED_LINES // 2
            assert s.transport.producerState == "paused", flood
            for _ in range(10_000):
                if len(s.protocol._queue) < MAX_QUEUED_LINES // 2 or not store.fireOne():
                    break
            assert s.transport.producerState == "producing", flood
            store.fireAll()
            assert s.take() == (b"+OK 23 octets\r\n" + encodeMessage(M1)) * (MAX_QUEUED_LINES + 1)


class PausingTransport(StringTransport):
    """
    Pauses its producer when more than C{limit} octets are unread, as a TCP
    transport does when the peer stops reading.
    """

    limit = 512 * 1024

    def __init__(self) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "127.0.0.1", 5000))

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.producer is not None and len(self.value()) > self.limit:
            self.producer.pauseProducing()

    def writeSequence(self, data: Sequence[bytes]) -> None:
        self.write(b"".join(data))


class TestStreaming:
    def test_flowControl(self) -> None:
        """
        A large RETR never gets far ahead of the reader: the server writes
        only while the transport wants data, and the bytes are exact.
        """
        big = b"Subject: big\n\n" + b"".join(b".line %07d\n" % i for i in range(400_000))
        s = Session(transport=PausingTransport())
        s.memory.deliver("alice", big)
        s.login()
        s.send(b"RETR 1\r\n")
        received = []
        for _ in range(10_000):
            value = s.take()
            assert len(value) < PausingTransport.limit + 2 * 256 * 1024 + 100
            received.append(value)
            if s.transport.producer is None:
                break
            s.transport.producer.resumeProducing()
        expected = encodeMessage(big)
        assert (
            b"".join(received)
            == b"+OK %d octets\r\n" % (len(expected) - len(b".\r\n") - 400_000) + expected
        )

    def test_pipelinedRetrievalsWaitForTheReader(self) -> None:
        """
        Small messages go out whole, one write each, but pipelined RETRs to
        a client that does not read still stop once the transport is full:
        what is buffered stays within one message of the limit.
        """
        message = b"Subject: small\n\n" + b"x" * 9_000 + b"\n"
        transport = PausingTransport()
        transport.limit = 64 * 1024
        s = Session(transport=transport)
        for _ in range(40):
            s.memory.deliver("alice", message)
        s.login()
        s.send(b"".join(b"RETR %d\r\n" % n for n in range(1, 41)))
        wire = b"+OK %d octets\r\n" % (len(message) + message.count(b"\n")) + encodeMessage(message)
        received = b""
        for _ in range(100):
            value = s.take()
            assert len(value) <= transport.limit + len(wire)
            received += value
            if transport.producer is None:
                break
            transport.producer.resumeProducing()
        assert received == wire * 40

    def test_clientGoneMidTransferIsNoFault(self) -> None:
        """
        A client that drops the connection in the middle of a RETR is
        routine, not a server fault: nothing is logged as an error, and the
        DELE and QUIT it pipelined behind the RETR never run.  (The
        transport stops its producer before it calls connectionLost.)
        """
        big = b"x" * (2 * 1024 * 1024)
        s = Session(transport=PausingTransport())
        s.memory.deliver("alice", big)
        s.login()
        s.send(b"RETR 1\r\nDELE 1\r\nQUIT\r\n")
        producer = s.transport.producer
        assert producer is not None
        with capturedLogs() as events:
            producer.stopProducing()
            s.protocol.connectionLost(Failure(ConnectionError()))
        assert [formatEvent(e) for e in events if e["log_level"] is not LogLevel.info] == []
        assert s.memory.messages("alice") == [big]

    def test_dropDuringTransfer(self) -> None:
        """
        A connection lost in the middle of RETR stops the reads, deletes
        nothing and releases the maildrop.
        """
        big = b"x" * (2 * 1024 * 1024)
        s = Session(transport=PausingTransport())
        s.memory.deliver("alice", big)
        s.login()
        s.command(b"DELE 1")
        s.command(b"RSET")
        s.send(b"RETR 1\r\n")
        assert s.transport.producer is not None
        s.protocol.connectionLost(Failure(ConnectionError()))
        assert s.memory.messages("alice") == [big]
        assert Session(store=s.memory).login().startswith(b"+OK Logged in")


def test_deletionFailedFields() -> None:
    """
    DeletionFailed keeps the indexes left, as a tuple even when given an
    iterator, and its own text when given one, else the RFC 1939 one.
    """
    error = DeletionFailed(iter([0, 2]), "Disk full")
    assert (error.notDeleted, error.text, error.code) == ((0, 2), "Disk full", "SYS/TEMP")
    assert str(error) == "Disk full"
    assert DeletionFailed([1]).text == "Some deleted messages not removed"
