"""
Testing like an attacker: random command streams, junk and over-long lines,
cut into random reads, against a store that answers at once and one whose
every answer is still pending, checked against the model in fuzz_model.py.
"""

from __future__ import annotations

import base64
import gc
import os
import random
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from fuzz_model import (
    CLOSED,
    MAX_LINE,
    MAX_RESPONSE_LINE,
    PASSWORDS,
    Model,
    Unmodelled,
    check,
    expected,
    mailboxes,
    sessions,
)
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from protocol_helpers import DelayedStore, SizesUnknownStore
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import provider

from popserv.limits import Limits
from popserv.memorystore import MemoryStore
from popserv.protocol import POP3ServerFactory
from popserv.realm import MaildropRealm

#: Bounded, and reproducible in CI: the same examples on every run there.
CI = bool(os.environ.get("CI"))
FUZZ = settings(
    max_examples=120,
    deadline=None,
    derandomize=CI,
    database=None if CI else settings.default.database,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class RecordingTransport(StringTransport):
    """
    A StringTransport that remembers what the protocol wrote after it
    closed the connection or was told the connection was lost.
    """

    def __init__(self) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "127.0.0.1", 54321))
        self.closed = False
        self.late: list[bytes] = []

    def write(self, data: bytes) -> None:
        if self.closed:
            self.late.append(data)
        super().write(data)

    def writeSequence(self, data: Sequence[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        self.closed = True
        super().loseConnection()

    def abortConnection(self) -> None:
        self.closed = True
        super().abortConnection()

    def pauseProducing(self) -> None:
        # A TCP transport stops reading, closing or not; StringTransport
        # raises once loseConnection was called.
        if not self.disconnecting:
            super().pauseProducing()

    def resumeProducing(self) -> None:
        if not self.disconnecting:
            super().resumeProducing()


class World:
    """
    One server (factory, portal, store) and the messages delivered to it.
    """

    def __init__(
        self, boxes: dict[str, list[bytes]], pending: bool, sizesUnknown: bool = False
    ) -> None:
        self.memory = MemoryStore()
        self.boxes = {
            user: [(m, self.memory.deliver(user, m)) for m in messages]
            for user, messages in boxes.items()
        }
        store: Any = SizesUnknownStore(self.memory) if sizesUnknown else self.memory
        self.delayed = DelayedStore(store) if pending else None
        checker = InMemoryUsernamePasswordDatabaseDontUse(**PASSWORDS)
        portal = Portal(MaildropRealm(self.delayed or store), [checker])
        # No penalty delay (it waits on the clock, which these tests do not
        # advance); the failure and bad-command limits stay at their defaults.
        self.factory = POP3ServerFactory(
            portal, clock=Clock(), limits=Limits(penaltyInitial=0, penaltyMaximum=0)
        )

    def connect(self) -> Client:
        return Client(self)

    def settle(self) -> None:
        """
        Fire every pending store answer.
        """
        if self.delayed is not None:
            self.delayed.fireAll(limit=5_000)

    def fireSome(self, rnd: random.Random) -> None:
        """
        Fire a few pending store answers, as a slow store would.
        """
        if self.delayed is not None:
            for _ in range(rnd.randint(0, 3)):
                self.delayed.fireOne()

    def stored(self) -> dict[str, list[bytes]]:
        return {user: self.memory.messages(user) for user in self.boxes}

    def model(self, challenge: bytes) -> Model:
        return Model({u: list(b) for u, b in self.boxes.items()}, challenge)


class Client:
    """
    One connection to a L{World}'s factory.
    """

    def __init__(self, world: World) -> None:
        self.world = world
        self.transport = RecordingTransport()
        self.protocol = world.factory.buildProtocol(None)
        self.protocol.makeConnection(self.transport)
        greeting = self.transport.value()
        self.transport.clear()
        match = re.fullmatch(rb"\+OK POP3 server ready (<[^>]+>)\r\n", greeting)
        assert match is not None, greeting
        self.challenge = match.group(1)

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def output(self) -> bytes:
        return self.transport.value()

    def lose(self) -> None:
        self.transport.closed = True
        self.protocol.connectionLost(Failure(ConnectionDone()))


@contextmanager
def loggedFailures() -> Iterator[list[LogEvent]]:
    """
    Collect every failure logged (server faults, unhandled Deferred errors)
    while the block runs.
    """
    failures: list[LogEvent] = []

    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        if "log_failure" in event:
            failures.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        yield failures
        gc.collect()
    finally:
        globalLogPublisher.removeObserver(observe)


def describe(failures: list[LogEvent]) -> list[str]:
    return [f"{e.get('log_format')}: {e['log_failure'].getErrorMessage()}" for e in failures]


def chunked(data: st.DataObject, stream: bytes) -> list[bytes]:
    """
    C{stream} cut into reads: whole, one octet at a time, between every CR
    and LF, or at random places.
    """
    how = data.draw(st.sampled_from(["whole", "octets", "crlf", "random"]), label="chunking")
    if how == "whole" or not stream:
        return [stream]
    if how == "octets" and len(stream) <= 600:
        return [stream[i : i + 1] for i in range(len(stream))]
    if how == "crlf":
        return stream.replace(b"\r\n", b"\r\0\n").split(b"\0") if b"\0" not in stream else [stream]
    cuts = sorted(set(data.draw(st.lists(st.integers(1, len(stream)), max_size=12))))
    return [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]


def assertWellFramed(output: bytes) -> None:
    """
    Every response line ends in CRLF and is at most 512 octets with it
    (RFC 2449 section 4); the test messages' own lines are short.
    """
    if not output:
        return
    assert output.endswith(b"\r\n"), output[-80:]
    assert output.count(b"\n") == output.count(b"\r\n"), output
    assert output.count(b"\r") == output.count(b"\r\n"), output
    longest = max(len(line) for line in output.split(b"\r\n"))
    assert longest + 2 <= MAX_RESPONSE_LINE


def assertStillServes(world: World) -> None:
    """
    A new client of the same factory and store logs in: the last session
    released its lock whatever it was sent.
    """
    client = world.connect()
    client.send(b"USER alice\r\nPASS secret\r\n")
    world.settle()
    assert client.output().startswith(b"+OK Send PASS\r\n+OK Logged in, "), client.output()
    client.lose()
    world.settle()


def model(world: World, client: Client, stream: bytes) -> tuple[Model, list[Any]]:
    m = world.model(client.challenge)
    try:
        return m, expected(m, stream)
    except Unmodelled:
        reject()


def drive(
    world: World, client: Client, chunks: list[bytes], rnd: random.Random, segments: list[Any]
) -> None:
    """
    Send C{chunks} one read at a time, firing a few pending store answers
    between reads; after each read the output so far is a prefix of what
    the model expects.
    """
    for chunk in chunks:
        if client.transport.disconnecting:
            # The reactor reads nothing more once the server closed.
            break
        client.send(chunk)
        world.fireSome(rnd)
        if len(chunks) < 200:
            check(client.output(), segments, complete=False)


stores = st.fixed_dictionaries({"pending": st.booleans(), "sizesUnknown": st.booleans()})


def runAgainstModel(world: Any, client: Any, stream: Any, data: st.DataObject) -> Any:
    """
    Feed C{stream} to C{client} in a drawn chunking and order of store
    answers, then check the whole output against the model: the replies are
    the model's, well framed, the connection closed exactly when the model
    says, and nothing written after the client went away.  Returns the
    model, for the caller's checks on the store.
    """
    m, segments = model(world, client, stream)
    rnd = data.draw(st.randoms(use_true_random=False))
    drive(world, client, chunked(data, stream), rnd, segments)
    world.settle()
    check(client.output(), segments, complete=True)
    assertWellFramed(client.output())
    assert client.transport.closed == (m.state is CLOSED)
    client.lose()
    world.settle()
    assert client.transport.late == []
    return m


@FUZZ
@given(boxes=mailboxes, session=sessions(), store=stores, data=st.data())
def test_repliesFollowTheModel(
    boxes: dict[str, list[bytes]], session: Any, store: dict[str, bool], data: st.DataObject
) -> None:
    """
    Whatever mix of commands, junk and line endings a client sends, cut
    into reads however the network cuts them, and however late the store
    answers: the replies are exactly the model's, in order, well framed;
    the server closes exactly when the model does (QUIT, over-long line)
    and writes nothing after; QUIT applies exactly the model's deletions;
    nothing is logged as a failure; and the next client can log in.
    """
    with loggedFailures() as failures:
        world = World(boxes, **store)
        client = world.connect()
        stream = session(client.challenge)
        m = runAgainstModel(world, client, stream, data)
        assert world.stored() == {u: [d for d, _ in b] for u, b in m.mailboxes.items()}
        assertStillServes(world)
    assert describe(failures) == []


@FUZZ
@given(boxes=mailboxes, session=sessions(quit=False), store=stores, data=st.data())
def test_dropDeletesNothing(
    boxes: dict[str, list[bytes]], session: Any, store: dict[str, bool], data: st.DataObject
) -> None:
    """
    A connection lost at any point without QUIT, even while the store still
    owes answers (a login, a header read, a message), deletes nothing,
    writes nothing after the loss, logs no failure, and releases the
    maildrop.
    """
    with loggedFailures() as failures:
        world = World(boxes, **store)
        before = world.stored()
        client = world.connect()
        stream = session(client.challenge)
        _, segments = model(world, client, stream)
        chunks = chunked(data, stream)
        rnd = data.draw(st.randoms(use_true_random=False))
        dropAt = data.draw(st.integers(0, len(chunks)), label="dropAt")
        drive(world, client, chunks[:dropAt], rnd, segments)
        if world.delayed is not None:
            for _ in range(data.draw(st.integers(0, 12), label="firedBeforeDrop")):
                world.delayed.fireOne()
        client.lose()
        world.settle()
        assert client.transport.late == []
        check(client.output(), segments, complete=False)
        assert world.stored() == before
        assertStillServes(world)
    assert describe(failures) == []


def test_dropWhileSizingHeaders() -> None:
    """
    A connection lost while the protocol reads message headers at login
    (a store that gives no downgraded sizes, answering later) logs no
    server fault and releases the maildrop.  Minimal example found by
    test_dropDeletesNothing: two messages, the drop after two store
    answers (the maildrop, its listing), with the first header read pending.
    """
    with loggedFailures() as failures:
        world = World(
            {"alice": [b"Subject: hi\n\n", b"Subject: hi\n\n"]}, pending=True, sizesUnknown=True
        )
        client = world.connect()
        client.send(b"USER alice\r\nPASS secret\r\n")
        assert world.delayed is not None
        world.delayed.fireOne()
        world.delayed.fireOne()
        client.lose()
        world.settle()
        assert client.transport.late == []
        assertStillServes(world)
    assert describe(failures) == []


def test_overlongLineBehindSASLLogin() -> None:
    """
    A 256-octet command line (one over RFC 2449's 255, CRLF included)
    pipelined behind AUTH PLAIN whose login the store answers later gets
    "-ERR Line too long", as it does with a store that answers at once.  Minimal example found by
    test_overlongLineAnsweredInTurnThenClosed.
    """
    world = World({"alice": []}, pending=True)
    client = world.connect()
    response = base64.b64encode(b"\0alice\0secret")
    client.send(b"AUTH PLAIN " + response + b"\r\nNOOP " + b"x" * 249 + b"\r\n")
    world.settle()
    assert client.output() == (b"+OK Logged in, 0 messages (0 octets)\r\n-ERR Line too long\r\n")


@FUZZ
@given(
    prefix=st.sampled_from([b"", b"USER alice\r\nPASS secret\r\n", b"UTF8\nUSER bob\n"]),
    junk=st.binary(max_size=700),
    store=stores,
    data=st.data(),
)
def test_junkIsAnsweredNotFatal(
    prefix: bytes, junk: bytes, store: dict[str, bool], data: st.DataObject
) -> None:
    """
    Raw binary (NULs, invalid UTF-8, lone CRs and LFs, long runs without a
    newline) never raises out of dataReceived: each line gets its -ERR in
    turn, an over-long one ends the session, and the server stays usable.
    """
    with loggedFailures() as failures:
        world = World({"alice": [b"Subject: a\r\n\r\nbody\r\n"], "bob": []}, **store)
        client = world.connect()
        stream = prefix + junk
        runAgainstModel(world, client, stream, data)
        assertStillServes(world)
    assert describe(failures) == []


@FUZZ
@given(
    boxes=mailboxes,
    session=sessions(tooLong=False, continuation=False),
    length=st.integers(MAX_LINE + 1, 1200),
    ending=st.sampled_from([b"\r\n", b"\n", b""]),
    after=st.binary(max_size=50),
    store=stores,
    data=st.data(),
)
def test_overlongLineAnsweredInTurnThenClosed(
    boxes: dict[str, list[bytes]],
    session: Any,
    length: int,
    ending: bytes,
    after: bytes,
    store: dict[str, bool],
    data: st.DataObject,
) -> None:
    """
    A line over 255 octets with its CRLF, ended or not, is answered
    "-ERR Line too long" after every earlier command's reply, and the
    connection closes; nothing sent after it is executed.
    """
    with loggedFailures() as failures:
        world = World(boxes, **store)
        client = world.connect()
        head = session(client.challenge)
        # The session's last line may be unfinished: end it first.
        stream = head + b"\r\n" + b"NOOP " + b"x" * (length - 5) + ending + after
        m, segments = model(world, client, stream)
        rnd = data.draw(st.randoms(use_true_random=False))
        drive(world, client, chunked(data, stream), rnd, segments)
        world.settle()
        check(client.output(), segments, complete=True)
        assert m.state is CLOSED and client.transport.closed
        # Unless QUIT or a limit closed the session first.
        assert client.output().endswith(b"-ERR Line too long\r\n") == m.tooLongSeen
        client.lose()
        world.settle()
        assert client.transport.late == []
        assertStillServes(world)
    assert describe(failures) == []
