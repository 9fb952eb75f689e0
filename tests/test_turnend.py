"""
L{popserv.turnend.writeReply} on real loopback TCP sockets (L{loopback}):
replies wait for the end of the reactor's turn (a timed call of 0 s, run
here with C{reactor.advance(0)}), go out then without the transport asking
the reactor to report the socket writable, and keep their order with
everything else written to the connection.
"""

from __future__ import annotations

import gc
import select
import weakref
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from loopback import (
    BIG,
    Connection,
    Producer,
    TLSClient,
    behindProxyHeader,
    connectionFixture,  # noqa: F401 (a fixture)
    drain,
    resetByClient,
    smallBuffers,
    startServerTLS,
)
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure

from popserv.memorystore import MemoryStore
from popserv.protocol import POP3ServerFactory
from popserv.realm import MaildropRealm
from popserv.sendnow import sendNow
from popserv.turnend import writeReply

REPLY = b"+OK POP3 server ready\r\n"


def test_sentAtTurnEnd(connection: Connection) -> None:
    """
    A reply is not sent while the turn runs, and is on the wire once it
    ends; the transport never asked the reactor to write.
    """
    writeReply(connection.transport, REPLY)
    assert not connection.waiting()
    assert connection.receivedNow() == b""
    connection.reactor.advance(0)
    assert not connection.waiting()
    assert connection.receivedNow(wait=5) == REPLY


def test_oneCallForATurn() -> None:
    """
    However many replies and connections a turn has, it asks the reactor
    for one call; each connection's replies arrive in order, together.
    """
    first, second = Connection(), Connection()
    try:
        second.reactor = first.reactor
        second.transport.reactor = first.reactor
        writeReply(first.transport, b"+OK one\r\n")
        writeReply(second.transport, b"+OK two\r\n")
        writeReply(first.transport, b"+OK three\r\n")
        assert len(first.reactor.getDelayedCalls()) == 1
        first.reactor.advance(0)
        assert first.reactor.getDelayedCalls() == []
        assert first.receivedNow(wait=5) == b"+OK one\r\n+OK three\r\n"
        assert second.receivedNow(wait=5) == b"+OK two\r\n"
        # The next turn asks again.
        writeReply(second.transport, b"+OK four\r\n")
        assert len(first.reactor.getDelayedCalls()) == 1
        first.reactor.advance(0)
        assert second.receivedNow(wait=5) == b"+OK four\r\n"
    finally:
        first.close()
        second.close()


def test_writeAfter(connection: Connection) -> None:
    """
    A plain write() after a reply goes behind it; the end of the turn sends
    both, and the transport no longer asks to write.
    """
    writeReply(connection.transport, b"+OK first\r\n")
    connection.transport.write(b"+OK second\r\n")
    assert connection.waiting()
    connection.reactor.advance(0)
    assert not connection.waiting()
    assert connection.receivedNow(wait=5) == b"+OK first\r\n+OK second\r\n"


def test_sendNowAfter(connection: Connection) -> None:
    """
    A message sent "at once" after a reply still waiting does not overtake
    it: sendNow sees the bytes in the transport's buffer.
    """
    writeReply(connection.transport, b"+OK first\r\n")
    sendNow(connection.transport, b"+OK 5 octets\r\n", b"Hi\r\n", b".\r\n")
    assert connection.receivedNow() == b""
    connection.reactor.advance(0)
    assert connection.receivedNow(wait=5) == b"+OK first\r\n+OK 5 octets\r\nHi\r\n.\r\n"


def test_behindUnsentBytes(connection: Connection) -> None:
    """
    Behind bytes a write() left for the reactor, a reply waits its turn too.
    """
    connection.transport.write(b"+OK first\r\n")
    writeReply(connection.transport, b"+OK second\r\n")
    connection.reactor.advance(0)
    assert connection.receivedNow(wait=5) == b"+OK first\r\n+OK second\r\n"
    assert not connection.waiting()


def test_loseConnectionAfter(connection: Connection) -> None:
    """
    A reply then loseConnection() (QUIT): the reply is sent, then the
    connection closed, by the transport as after a write().
    """
    writeReply(connection.transport, b"+OK bye\r\n")
    connection.transport.loseConnection()
    connection.reactor.advance(0)
    assert connection.waiting()
    assert connection.receivedNow() == b""
    assert isinstance(connection.transport.doWrite(), ConnectionDone)
    assert connection.receivedNow(wait=5) == b"+OK bye\r\n"


def test_abortedBefore(connection: Connection) -> None:
    """
    A connection aborted in the turn (the inactivity timer) sends nothing:
    abortConnection() drops what is buffered, and the turn's end does not
    ask the reactor to write it again (it is still connected until its
    connectionLost, which runs after the turn's end).
    """
    waitingWhenLost: list[bool] = []
    lost = connection.transport.connectionLost

    def connectionLost(reason: Failure) -> None:
        waitingWhenLost.append(connection.waiting())
        lost(reason)

    connection.transport.connectionLost = connectionLost  # type: ignore[method-assign]
    writeReply(connection.transport, REPLY)
    connection.transport.abortConnection()
    connection.reactor.advance(0)  # the turn's end, then connectionLost
    assert waitingWhenLost == [False]
    assert not connection.waiting()
    assert connection.transport.disconnected
    # An abort resets the connection: the client reads no reply.
    with pytest.raises(ConnectionResetError):
        connection.receivedNow(wait=5)


def test_lostBefore(connection: Connection) -> None:
    """
    A connection lost before the turn ends is left alone.
    """
    writeReply(connection.transport, REPLY)
    connection.transport.connectionLost(Failure(ConnectionDone()))
    connection.reactor.advance(0)
    assert not connection.waiting()


def test_restLeftToTheReactor(connection: Connection) -> None:
    """
    What the socket does not take at the end of the turn is left to the
    transport, which asks to write; every octet arrives, in order, once.
    """
    smallBuffers(connection)
    writeReply(connection.transport, BIG)
    connection.reactor.advance(0)
    assert connection.waiting()
    assert drain(connection, len(BIG)) == BIG
    assert not connection.waiting()


def test_connectionReset(connection: Connection) -> None:
    """
    A send that fails at the end of the turn is left to the transport,
    which reports the lost connection as it would for any write.
    """
    resetByClient(connection)
    writeReply(connection.transport, REPLY)
    connection.reactor.advance(0)
    assert connection.waiting()
    assert isinstance(connection.transport.doWrite(), ConnectionLost)


def test_withProducer(connection: Connection) -> None:
    """
    With a producer registered, a reply is a plain write(): the transport
    alone decides when to ask the producer for more.
    """
    producer = Producer()
    connection.transport.registerProducer(producer, True)
    writeReply(connection.transport, REPLY)
    assert connection.waiting()
    assert connection.reactor.getDelayedCalls() == []


def test_producerRegisteredInTheTurn(connection: Connection) -> None:
    """
    A producer registered after a reply, in the same turn (a RETR's message
    behind its status line): the end of the turn leaves the buffer to the
    transport, which asks to write, so that it resumes the producer once
    the buffer is sent, as it would have.
    """
    writeReply(connection.transport, b"+OK message follows\r\n")
    producer = Producer()
    connection.transport.registerProducer(producer, False)
    producer.asked.clear()
    connection.reactor.advance(0)
    assert connection.waiting()
    assert connection.receivedNow() == b""
    assert connection.transport.doWrite() is None
    assert connection.receivedNow(wait=5) == b"+OK message follows\r\n"
    assert producer.asked == ["resume"]


def test_behindProxyHeader() -> None:
    """
    Behind a PROXY header, a reply written to the header reader goes into
    the TCP connection under it, and out at the end of the turn.
    """
    c, session = behindProxyHeader()
    try:
        writeReply(session.transport, REPLY)
        assert not c.waiting()
        c.reactor.advance(0)
        assert c.receivedNow(wait=5) == REPLY
    finally:
        c.close()


def test_otherTransports() -> None:
    """
    Any transport but Twisted's plain TCP server connection is written to
    as before, at once.
    """
    transport = StringTransport()
    writeReply(transport, REPLY)
    assert transport.value() == REPLY


def test_startTLSInTheTurn(connection: Connection, tmp_path: Path) -> None:
    """
    STLS: the "+OK" written before startTLS() in the same turn goes out in
    clear, ahead of the handshake; a reply after it goes through TLS.
    """
    writeReply(connection.transport, b"+OK Begin TLS negotiation\r\n")
    startServerTLS(connection, tmp_path)
    connection.reactor.advance(0)
    assert connection.waiting()
    connection.transport.doWrite()
    assert connection.receivedNow(wait=5) == b"+OK Begin TLS negotiation\r\n"

    client = TLSClient(connection)
    writeReply(connection.transport, b"+OK a secret reply\r\n")
    raw, clear = client.receive()
    assert raw and b"secret" not in raw
    assert clear == b"+OK a secret reply\r\n"


def test_reactorNotKept() -> None:
    """
    The table of turn ends holds its reactors weakly: a test's reactor is
    not kept alive by having had replies.
    """
    c = Connection()
    try:
        writeReply(c.transport, REPLY)
        c.reactor.advance(0)
        assert c.receivedNow(wait=5) == REPLY
    finally:
        c.close()
    reactor = weakref.ref(c.reactor)
    c.transport.reactor = MemoryReactorClock()
    del c
    gc.collect()
    assert reactor() is None


#: One step of a random mix: writeReply (its size), write() (its size),
#: sendNow of parts (their sizes), the end of a turn, a reactor's report
#: that the socket is writable, or a read by the client.
_SIZES = st.sampled_from([0, 1, 70, 30_000, 100_000, 300_000])
_STEPS: st.SearchStrategy[tuple[str, list[int]]] = st.one_of(
    st.tuples(st.just("reply"), st.lists(_SIZES, min_size=1, max_size=1)),
    st.tuples(st.just("write"), st.lists(_SIZES.filter(bool), min_size=1, max_size=1)),
    st.tuples(st.just("send"), st.lists(_SIZES, min_size=1, max_size=3)),
    st.tuples(st.just("turnEnd"), st.just([])),
    st.tuples(st.just("writable"), st.just([])),
    st.tuples(st.just("read"), st.just([])),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(_STEPS, max_size=25))
def test_anyMixKeepsOrder(steps: list[tuple[str, list[int]]]) -> None:
    """
    Whatever mix of replies, write(), sendNow, ends of turns, reports of a
    writable socket and client reads, with socket buffers small enough that
    sends stop short: the client gets every octet written, once, in the
    order written, and the transport is left asking for nothing.
    """
    c = Connection()
    try:
        smallBuffers(c)
        expected, received = bytearray(), bytearray()
        for number, (step, sizes) in enumerate(steps):
            # Each part its own octet value, so a part out of place shows.
            parts = [bytes([(number * 5 + i) % 256]) * size for i, size in enumerate(sizes)]
            if step == "reply":
                writeReply(c.transport, parts[0])
            elif step == "write":
                c.transport.write(parts[0])
            elif step == "send":
                sendNow(c.transport, *parts)
            elif step == "turnEnd":
                c.reactor.advance(0)
            elif step == "writable" and c.waiting():
                assert c.transport.doWrite() is None
            elif step == "read":
                received += c.receivedNow()
            expected += b"".join(parts)
        c.reactor.advance(0)
        received += drain(c, len(expected) - len(received))
        assert received == expected
        assert not c.waiting() and c.receivedNow() == b""
        assert c.reactor.getDelayedCalls() == []
    finally:
        c.close()


def test_sessionOnPlainTCP() -> None:
    """
    A POP3 session on Twisted's TCP connection: every reply waits for the
    turn's end and goes out then, without the transport asking to write; a
    message goes out at once (L{popserv.sendnow}); QUIT's reply is sent
    before the connection closes.
    """
    store = MemoryStore()
    store.deliver("alice", b"Subject: hi\n\nHello\n.dot\n")
    portal = Portal(
        MaildropRealm(store), [InMemoryUsernamePasswordDatabaseDontUse(alice=b"secret")]
    )
    factory = POP3ServerFactory(portal, clock=Clock())
    c = Connection(factory.buildProtocol(None))
    try:

        def turn(line: bytes) -> bytes:
            if line:
                c.client.sendall(line)
                assert select.select([c.transport.socket], [], [], 5)[0]
                c.transport.doRead()
            assert not c.waiting()
            assert c.receivedNow() == b""
            c.reactor.advance(0)
            assert not c.waiting()
            return c.receivedNow(wait=5)

        assert turn(b"").startswith(b"+OK POP3 server ready")
        assert turn(b"USER alice\r\n") == b"+OK Send PASS\r\n"
        assert turn(b"PASS secret\r\n") == b"+OK Logged in, 1 messages (28 octets)\r\n"
        assert turn(b"STAT\r\n") == b"+OK 1 28\r\n"
        c.client.sendall(b"RETR 1\r\n")
        assert select.select([c.transport.socket], [], [], 5)[0]
        c.transport.doRead()
        assert c.receivedNow(wait=5) == (
            b"+OK 28 octets\r\nSubject: hi\r\n\r\nHello\r\n..dot\r\n.\r\n"
        )
        c.client.sendall(b"QUIT\r\n")
        assert select.select([c.transport.socket], [], [], 5)[0]
        c.transport.doRead()
        c.reactor.advance(0)
        assert c.waiting()  # loseConnection() asked; the transport sends, then closes
        assert isinstance(c.transport.doWrite(), ConnectionDone)
        assert c.receivedNow(wait=5).startswith(b"+OK")
    finally:
        c.close()


def test_oneFailureLeavesTheOthers() -> None:
    """
    Should sending one connection's replies raise (it never should:
    doWrite() meets a socket's errors itself), the failure is logged, the
    reactor is left to write that connection as after a write(), and the
    other connections' replies still go out.
    """
    first, second = Connection(), Connection()
    try:
        second.transport.reactor = first.reactor

        def broken() -> None:
            raise RuntimeError("broken")

        first.transport.doWrite = broken  # type: ignore[method-assign]
        writeReply(first.transport, b"+OK one\r\n")
        writeReply(second.transport, b"+OK two\r\n")
        with capturedLogs() as events:
            first.reactor.advance(0)
        assert [(e["log_format"], e["log_failure"].type) for e in events] == [
            ("Sending replies at the end of the turn failed", RuntimeError)
        ]
        assert first.transport in first.reactor.getWriters()
        assert second.receivedNow(wait=5) == b"+OK two\r\n"
    finally:
        first.close()
        second.close()
