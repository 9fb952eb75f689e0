"""
Tests for the audit trail (popserv.audit), the fail2ban filter shipped in
contrib/, and the JSON log observer (popserv.logs).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from protocol_helpers import DelayedStore, MaildropOver, Session
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.internet.address import UNIXAddress
from twisted.internet.defer import fail
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent, globalLogPublisher
from zope.interface import implementer

from popserv.audit import SessionRecord, authFailed, safe
from popserv.credentials import CheckerChain
from popserv.errors import DeletionFailed
from popserv.memorystore import MemoryStore
from popserv.policy import SitePolicy, UserPolicy

FILTER = Path(__file__).parent.parent / "contrib" / "fail2ban" / "filter.d" / "popserv.conf"


@pytest.fixture
def events() -> Iterator[list[dict[str, Any]]]:
    caught: list[dict[str, Any]] = []

    def observer(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "popserv.audit":
            caught.append(event)

    globalLogPublisher.addObserver(observer)
    try:
        yield caught
    finally:
        globalLogPublisher.removeObserver(observer)


def failregex() -> re.Pattern[str]:
    """
    The filter's failregex with fail2ban's <HOST> made a named group.
    """
    text = FILTER.read_text()
    line = next(x for x in text.splitlines() if x.startswith("failregex"))
    pattern = line.split("=", 1)[1].strip().replace("<HOST>", r"(?P<host>[0-9a-fA-F.:]+)")
    return re.compile(pattern)


def test_authFailureLine(events: list[dict[str, Any]]) -> None:
    """
    A failed login logs one line with the user, the client's address and
    the mechanism, which the shipped fail2ban filter matches, host and all.
    """
    s = Session(peer="127.0.0.9")
    s.login(password=b"wrong")
    s.command(b"AUTH PLAIN AGFsaWNlAG5vcGU=")
    s.clock.advance(2)
    lines = [formatEvent(e) for e in events]
    assert lines == [
        "popserv auth-failed: user=alice ip=127.0.0.9 mechanism=USER",
        "popserv auth-failed: user=alice ip=127.0.0.9 mechanism=PLAIN",
    ]
    for line in lines:
        match = failregex().search("2026-11-22T10:00:00+0000 [popserv.audit#warn] " + line)
        assert match is not None and match.group("host") == "127.0.0.9"


def test_uncheckedCredentialsAreNoFailure(events: list[dict[str, Any]]) -> None:
    """
    A login that no checker could check (its password file unreadable)
    gets -ERR [SYS/TEMP] at once and logs no auth-failed line, which
    fail2ban would count against a user who gave the right password.
    """

    @implementer(ICredentialsChecker)
    class Broken:
        credentialInterfaces = (IUsernamePassword,)

        def requestAvatarId(self, credentials: Any) -> Any:
            raise OSError("cannot read the password file")

    s = Session(peer="127.0.0.9", checkers=[CheckerChain([Broken()])])
    with capturedLogs():
        assert s.login() == b"-ERR [SYS/TEMP] Cannot check credentials now, try again later\r\n"
    assert s.command(b"NOOP") == b"-ERR Command not valid in this state\r\n"
    s.clock.advance(2)
    assert [formatEvent(e) for e in events] == []


@pytest.mark.parametrize(
    ("exchange", "mechanism"),
    [
        ([b"AUTH LOGIN", base64.b64encode(b"alice"), base64.b64encode(b"nope")], "LOGIN"),
        ([b"AUTH CRAM-MD5", base64.b64encode(b"alice " + b"0" * 32)], "CRAM-MD5"),
    ],
)
def test_authFailureMechanism(
    events: list[dict[str, Any]], exchange: list[bytes], mechanism: str
) -> None:
    """
    A failed login by a SASL mechanism names it in the line.
    """
    s = Session(peer="127.0.0.9")
    for line in exchange:
        reply = s.command(line)
    s.clock.advance(2)
    assert reply.startswith(b"-ERR [AUTH]")
    assert [formatEvent(e) for e in events] == [
        f"popserv auth-failed: user=alice ip=127.0.0.9 mechanism={mechanism}"
    ]


def test_apopMechanism(events: list[dict[str, Any]]) -> None:
    """
    A failed APOP login names APOP as its mechanism in the auth-failed
    line, and a session logged in by APOP records APOP.
    """
    s = Session(peer="127.0.0.9")
    digest = hashlib.md5(s.challenge() + b"wrong").hexdigest().encode()
    assert s.command(b"APOP alice " + digest) == b"-ERR [AUTH] Authentication failed\r\n"
    assert [formatEvent(e) for e in events] == [
        "popserv auth-failed: user=alice ip=127.0.0.9 mechanism=APOP"
    ]
    digest = hashlib.md5(s.challenge() + b"secret").hexdigest().encode()
    s.command(b"APOP alice " + digest)
    s.clock.advance(2)  # the failure's penalty
    assert s.take() == b"+OK Logged in, 0 messages (0 octets)\r\n"
    assert (s.protocol.record.user, s.protocol.record.mechanism) == ("alice", "APOP")


def test_undecodableUserName(events: list[dict[str, Any]]) -> None:
    """
    A user name that is not UTF-8 fails its login as any wrong password
    does, and is logged octet for octet (%XX), not a server fault.
    """
    s = Session(peer="127.0.0.9")
    assert s.login(user=b"\xff\xfeme", password=b"x") == b"-ERR [AUTH] Authentication failed\r\n"
    assert [formatEvent(e) for e in events] == [
        "popserv auth-failed: user=%FF%FEme ip=127.0.0.9 mechanism=USER"
    ]


def test_unixSocketClient(events: list[dict[str, Any]]) -> None:
    """
    A client on a UNIX socket, which has no IP address, is logged (and
    counted by the limits) as ip=unix.
    """
    transport = StringTransport(peerAddress=UNIXAddress(b"/run/popserv.sock"))
    s = Session(transport=transport)
    assert s.login(password=b"wrong") == b"-ERR [AUTH] Authentication failed\r\n"
    assert [formatEvent(e) for e in events] == [
        "popserv auth-failed: user=alice ip=unix mechanism=USER"
    ]


def test_hostileUserNames() -> None:
    """
    User names are logged as one token: spaces, controls, '%' and
    non-ASCII become %XX, so a name cannot forge another field or line;
    nor can the name "-" pass for the absence of one.
    """
    assert safe("a b") == "a%20b"
    assert safe("x ip=1.2.3.4\nfake") == "x%20ip=1.2.3.4%0Afake"
    assert safe("j\u00fcrgen") == "j%C3%BCrgen"
    assert safe("") == "-"
    assert safe("-") == "%2D"  # not the "-" of no user at all
    assert safe("100%") == "100%25"
    assert safe("a\x7fb\tc") == "a%7Fb%09c"
    assert safe("\udcff") == "%FF"  # an undecodable octet, as surrogateescape keeps it
    # Quoting one character quotes no other: the first and last printable
    # ones ("!" and "~") stay as they are.
    assert safe("!a b~") == "!a%20b~"


def test_authFailedQuotesTheName() -> None:
    """
    The auth-failed line, which fail2ban matches, quotes the name the
    client chose: it cannot forge the ip= field or a second line.
    """
    with capturedLogs() as events:
        authFailed("x ip=192.0.2.1\nfake", "192.0.2.7", "PLAIN")
    assert [formatEvent(e) for e in events] == [
        "popserv auth-failed: user=x%20ip=192.0.2.1%0Afake ip=192.0.2.7 mechanism=PLAIN"
    ]


def test_plainUserNamesUnchanged() -> None:
    """
    A name of printable ASCII without space or '%' is logged as it is
    (punctuation included), cut at 256 characters like any other.
    """
    assert safe("alice") == "alice"
    assert safe("a.b+tag@example.org") == "a.b+tag@example.org"
    assert safe("{user}!#$&'()*,/:;<=>?[]^`|~\"") == "{user}!#$&'()*,/:;<=>?[]^`|~\""
    assert safe("x" * 300) == "x" * 256
    assert safe("x" * 255 + " ") == "x" * 255 + "%"


def test_sessionEnd(events: list[dict[str, Any]]) -> None:
    """
    Every session ends with one event giving who, how, what was done and
    why it ended.
    """
    s = Session()
    s.memory.deliver("alice", b"Subject: a\r\n\r\nbody\r\n")
    s.memory.deliver("alice", b"Subject: b\r\n\r\nbody two\r\n")
    s.login()
    s.command(b"RETR 1")
    s.command(b"TOP 2 0")
    s.command(b"DELE 1")
    s.command(b"QUIT")
    s.protocol.connectionLost(None)
    (event,) = [e for e in events if "session" in e]
    assert event["user"] == "alice"
    assert event["ip"] == "127.0.0.1"
    assert event["mechanism"] == "USER"
    assert (event["retr"], event["retrBytes"], event["top"], event["dele"]) == (1, 20, 1, 1)
    assert event["topBytes"] == len(b"+OK Top of message follows\r\nSubject: b\r\n\r\n.\r\n")
    assert (event["left"], event["leftBytes"]) == (1, 24)
    assert event["reason"] == "quit"
    assert formatEvent(event).startswith(
        "popserv session: user=alice ip=127.0.0.1 tls=- mechanism=USER retr=1/20 top=1/"
    )


def test_sessionEndLoggedOnce(events: list[dict[str, Any]]) -> None:
    """
    A session's end is logged once, however often it is ended (a
    connection lost twice, say), with the time from its start; a clock
    that went back (the wall clock set back during the session) gives a
    duration of 0, not a negative one.
    """
    record = SessionRecord(ip="192.0.2.7", started=100.0, user="alice")
    record.end(103.25)
    record.end(200.0)
    assert [formatEvent(e) for e in events if "session" in e] == [
        "popserv session: user=alice ip=192.0.2.7 tls=- mechanism=- retr=0/0 top=0/0"
        " dele=0 left=0/0 duration=3.250 reason=disconnected"
    ]
    SessionRecord(ip="192.0.2.7", started=100.0).end(99.5)
    assert [e["duration"] for e in events if "session" in e] == [3.25, 0.0]


def test_leftWithoutQuit(events: list[dict[str, Any]]) -> None:
    """
    A session that ends without QUIT removed nothing: every message is
    left, those marked with DELE too.
    """
    s = Session()
    s.memory.deliver("alice", b"Subject: a\r\n\r\nbody\r\n")
    s.memory.deliver("alice", b"Subject: b\r\n\r\nbody two\r\n")
    s.login()
    s.command(b"DELE 1")
    s.protocol.connectionLost(None)
    (event,) = [e for e in events if "session" in e]
    assert (event["left"], event["leftBytes"], event["dele"]) == (2, 44, 0)
    assert event["reason"] == "disconnected"


@pytest.mark.parametrize(
    "hangUp",
    [b"NOOP " + b"x" * 300 + b"\r\n", b"BOGUS\r\n" * 20],
    ids=["line-too-long", "bad-commands"],
)
def test_leftAfterHangUp(events: list[dict[str, Any]], hangUp: bytes) -> None:
    """
    A session the server hangs up on (a line too long, too many bad
    commands) removed nothing either: every message is left.
    """
    s = Session()
    s.memory.deliver("alice", b"Subject: a\r\n\r\nbody\r\n")
    s.memory.deliver("alice", b"Subject: b\r\n\r\nbody two\r\n")
    s.login()
    s.command(b"DELE 1")
    s.send(hangUp)
    s.protocol.connectionLost(None)
    (event,) = [e for e in events if "session" in e]
    assert (event["left"], event["leftBytes"], event["dele"]) == (2, 44, 0)
    assert s.memory.messages("alice") != []


@pytest.mark.parametrize(
    ("act", "reason"),
    [
        (lambda s: s.protocol.connectionLost(None), "disconnected"),
        (lambda s: (s.clock.advance(600), s.protocol.connectionLost(None)), "timeout"),
        (
            lambda s: (s.send(b"NOOP " + b"x" * 300 + b"\r\n"), s.protocol.connectionLost(None)),
            "line-too-long",
        ),
    ],
)
def test_endReasons(events: list[dict[str, Any]], act: Any, reason: str) -> None:
    """
    The session event says why the session ended.
    """
    s = Session()
    s.login()
    act(s)
    (event,) = [e for e in events if "session" in e]
    assert event["reason"] == reason


def test_jsonObserver(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    popserv.logs.json writes each event as one JSON object per line, the
    audit fields as keys.
    """
    from twisted.logger import Logger

    import popserv.logs

    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    observer = popserv.logs.json()
    log = Logger(namespace="popserv.audit", observer=observer)
    log.warn(
        "popserv auth-failed: user={user} ip={ip} mechanism={mechanism}",
        user="alice",
        ip="192.0.2.1",
        mechanism="PLAIN",
    )
    record = json.loads(out.getvalue().strip())
    assert (record["user"], record["ip"], record["mechanism"]) == ("alice", "192.0.2.1", "PLAIN")


def test_tlsWithoutLogin(events: list[dict[str, Any]], ca: Any) -> None:
    """
    A session that switched to TLS records its version even if it never
    logged in (here: STLS, then QUIT), on a real loopback connection.
    """
    import select

    from loopback import Connection, afterSTLS
    from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
    from twisted.cred.portal import Portal
    from twisted.internet import reactor
    from twisted.internet.task import Clock

    from popserv.memorystore import MemoryStore
    from popserv.protocol import POP3ServerFactory
    from popserv.realm import MaildropRealm
    from popserv.tls import ReloadableTLS, TLSFiles

    issued = ca.issue("localhost", ["localhost"])
    portal = Portal(
        MaildropRealm(MemoryStore()), [InMemoryUsernamePasswordDatabaseDontUse(alice=b"secret")]
    )
    tls = ReloadableTLS(TLSFiles(str(issued.certificate), str(issued.key)))
    factory = POP3ServerFactory(portal, clock=Clock(), tls=tls)
    c = Connection(factory.buildProtocol(None))
    try:
        client = afterSTLS(c)
        client.tls.write(b"QUIT\r\n")
        c.client.sendall(client.outgoing.read())
        assert select.select([c.transport.socket], [], [], 5)[0]
        c.transport.doRead()
        reactor.runUntilCurrent()  # type: ignore[attr-defined]
        c.protocol.connectionLost(None)
    finally:
        c.close()
    (event,) = [e for e in events if "session" in e]
    assert event["tls"] in ("TLSv1.2", "TLSv1.3")
    assert event["user"] == "-" and event["reason"] == "quit"


def test_leftAfterDeletionsOutliveTheConnection(events: list[dict[str, Any]]) -> None:
    """
    A client that sends QUIT and goes at once: the session's line is
    written when the deletions are over, and counts them.
    """
    memory = MemoryStore()
    memory.deliver("alice", b"Subject: a\r\n\r\nbody\r\n")
    memory.deliver("alice", b"Subject: b\r\n\r\nbody two\r\n")
    store = DelayedStore(memory)
    s = Session(store=store)
    s.send(b"USER alice\r\nPASS secret\r\n")
    store.fireAll()
    s.send(b"DELE 1\r\nQUIT\r\n")
    s.protocol.connectionLost(None)
    assert [e for e in events if "session" in e] == []
    store.fireAll()
    (event,) = [e for e in events if "session" in e]
    assert (event["dele"], event["left"], event["leftBytes"], event["reason"]) == (
        1,
        1,
        24,
        "quit",
    )


def test_leftCountsWhatExpireRemoved(events: list[dict[str, Any]]) -> None:
    """
    Messages EXPIRE removes at UPDATE are not counted as left.
    """
    s = Session(policy=SitePolicy(UserPolicy(expire=0)))
    s.memory.deliver("alice", b"Subject: a\r\n\r\nbody\r\n")
    s.memory.deliver("alice", b"Subject: b\r\n\r\nbody two\r\n")
    s.login()
    s.command(b"RETR 2")
    assert s.command(b"QUIT") == b"+OK Bye, 1 deleted, 1 left\r\n"
    s.protocol.connectionLost(None)
    (event,) = [e for e in events if "session" in e]
    assert (event["dele"], event["left"], event["leftBytes"]) == (1, 1, 20)


def test_leftAfterPartialDeletion(events: list[dict[str, Any]]) -> None:
    """
    When some deletions fail, the line counts those that were applied.
    """

    class PartlyFailing(MaildropOver):
        def deleteMessages(self, indexes: Any) -> Any:
            d = self._maildrop.deleteMessages(indexes[:1])
            return d.addCallback(lambda _: fail(DeletionFailed(indexes[1:])))

    s = Session()
    s.wrapMaildrops(PartlyFailing)
    for body in (b"one", b"two", b"three"):
        s.memory.deliver("alice", b"Subject: x\r\n\r\n" + body + b"\r\n")
    s.login()
    s.command(b"DELE 1")
    s.command(b"DELE 3")
    assert s.command(b"QUIT") == b"-ERR [SYS/TEMP] Some deleted messages not removed\r\n"
    s.protocol.connectionLost(None)
    assert len(s.memory.messages("alice")) == 2
    (event,) = [e for e in events if "session" in e]
    # The second and third are left (19 and 21 octets), not the first two.
    assert (event["dele"], event["left"], event["leftBytes"]) == (1, 2, 40)


def test_inUseNamesTheUser(events: list[dict[str, Any]]) -> None:
    """
    A session refused with [IN-USE] had its credentials accepted: its line
    names the user and mechanism, so an operator can tell whose maildrop
    was held.  A wrong password still names nobody in the session line.
    """
    first = Session()
    first.login()
    second = Session(store=first.store, peer="127.0.0.2")
    assert second.login().startswith(b"-ERR [IN-USE]")
    second.protocol.connectionLost(None)
    wrong = Session(store=first.store, peer="127.0.0.3")
    wrong.login(password=b"wrong")
    wrong.protocol.connectionLost(None)
    lines = [formatEvent(e) for e in events if "session" in e]
    assert lines == [
        "popserv session: user=alice ip=127.0.0.2 tls=- mechanism=USER retr=0/0 top=0/0"
        " dele=0 left=0/0 duration=0.000 reason=in-use",
        "popserv session: user=- ip=127.0.0.3 tls=- mechanism=- retr=0/0 top=0/0"
        " dele=0 left=0/0 duration=0.000 reason=disconnected",
    ]


def test_failedListingNamesTheUser(events: list[dict[str, Any]]) -> None:
    """
    A login whose credentials were accepted and whose maildrop opened, but
    whose listing then failed (-ERR [SYS/TEMP]), names the user and
    mechanism in its line, as one whose maildrop did not open does: the
    operator can tell whose maildrop the store fails on.  It used to say
    user=-.
    """

    class FailingListing(MaildropOver):
        def listMessages(self) -> Any:
            return fail(RuntimeError("the store's bug"))

    s = Session()
    s.wrapMaildrops(FailingListing)
    assert s.login() == b"-ERR [SYS/TEMP] Login failed, try again later\r\n"
    s.protocol.connectionLost(None)
    lines = [formatEvent(e) for e in events if "session" in e]
    assert lines == [
        "popserv session: user=alice ip=127.0.0.1 tls=- mechanism=USER retr=0/0 top=0/0"
        " dele=0 left=0/0 duration=0.000 reason=disconnected",
    ]
