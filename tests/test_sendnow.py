"""
L{popserv.sendnow.sendNow} on real loopback TCP sockets (L{loopback}).
"""

from __future__ import annotations

import socket
from itertools import pairwise
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
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import StringTransport

from popserv.sendnow import sendNow

REPLY = b"+OK POP3 server ready\r\n"


def test_sentAtOnce(connection: Connection) -> None:
    """
    With nothing unsent, the reply is on the wire when sendNow returns, and
    the transport never asked the reactor to write.
    """
    sendNow(connection.transport, REPLY)
    assert not connection.waiting()
    assert connection.receivedNow(wait=5) == REPLY


def test_behindUnsentBytes(connection: Connection) -> None:
    """
    A reply never overtakes bytes the transport still holds: both wait for
    the reactor's turn, and arrive in the order written.
    """
    connection.transport.write(b"+OK first\r\n")
    sendNow(connection.transport, b"+OK second\r\n")
    assert connection.waiting()
    assert connection.receivedNow() == b""
    connection.transport.doWrite()
    assert not connection.waiting()
    assert connection.receivedNow(wait=5) == b"+OK first\r\n+OK second\r\n"


def test_partsSentAtOnce(connection: Connection) -> None:
    """
    Several parts (a status line, a message, the terminator) go out at once
    too, in order, as they are: nothing is added between them.
    """
    sendNow(connection.transport, b"+OK 7 octets\r\n", b"Hello\r\n", b".\r\n")
    assert not connection.waiting()
    assert connection.receivedNow(wait=5) == b"+OK 7 octets\r\nHello\r\n.\r\n"


def test_noLimitButTheSocket(connection: Connection) -> None:
    """
    A part larger than Twisted's own 128 KiB limit per send goes out whole
    when the socket's buffers take it (the rest would have been copied to
    be buffered).
    """
    connection.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    connection.client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    data = bytes(range(256)) * 800  # 204,800 octets
    assert len(data) > connection.transport.SEND_LIMIT
    sendNow(connection.transport, data)
    assert not connection.waiting()
    assert drain(connection, len(data)) == data


@pytest.mark.parametrize("views", [False, True], ids=["bytes", "views"])
@pytest.mark.parametrize(
    "cuts", [[], [1000], [1000, 1001, 3_000_000]], ids=["one part", "two parts", "four parts"]
)
def test_restWrittenInOrder(connection: Connection, cuts: list[int], views: bool) -> None:
    """
    What the socket does not take at once is left to the transport, after
    what was sent, wherever the send stopped among the parts: every octet
    arrives, in order, once.  So it does when the parts are views of bytes
    (as the encoder gives), which the transport's own C{write()} would
    refuse.
    """
    smallBuffers(connection)
    bounds = [0, *cuts, len(BIG)]
    whole = memoryview(BIG) if views else BIG
    parts = [whole[a:b] for a, b in pairwise(bounds)]
    sendNow(connection.transport, *parts)
    assert connection.waiting()
    assert drain(connection, len(BIG)) == BIG
    assert not connection.waiting()


def test_pushProducer(connection: Connection) -> None:
    """
    With a push producer registered (a message being sent), parts still go
    out at once; what the socket does not take fills the transport's buffer,
    which pauses the producer, and resumes it once sent.
    """
    producer = Producer()
    connection.transport.registerProducer(producer, True)
    sendNow(connection.transport, REPLY)
    assert not connection.waiting()
    assert connection.receivedNow(wait=5) == REPLY
    assert producer.asked == []

    smallBuffers(connection)
    sendNow(connection.transport, BIG)
    assert producer.asked == ["pause"]
    assert drain(connection, len(BIG)) == BIG
    assert producer.asked == ["pause", "resume"]


def test_pullProducer(connection: Connection) -> None:
    """
    A pull producer is asked for more only when the transport's buffer
    empties: so with one registered, everything goes through the buffer.
    """
    producer = Producer()
    connection.transport.registerProducer(producer, False)
    producer.asked.clear()  # registering a pull producer resumes it once
    sendNow(connection.transport, REPLY)
    assert connection.waiting()
    assert producer.asked == []
    connection.transport.doWrite()
    assert connection.receivedNow(wait=5) == REPLY
    assert producer.asked == ["resume"]


def test_connectionReset(connection: Connection) -> None:
    """
    A send that fails is left to the transport, which reports the lost
    connection as it would for any write.
    """
    resetByClient(connection)
    sendNow(connection.transport, REPLY)
    assert connection.waiting()
    assert isinstance(connection.transport.doWrite(), ConnectionLost)


def test_behindProxyHeader() -> None:
    """
    Behind a PROXY header, what the session writes to the header reader
    goes out at once through the TCP connection under it.
    """
    c, session = behindProxyHeader()
    try:
        sendNow(session.transport, REPLY)
        assert not c.waiting()
        assert c.receivedNow(wait=5) == REPLY
    finally:
        c.close()


#: One step of a random mix: sendNow of parts (their sizes), a plain
#: write() (its size), a turn of the reactor, or a read by the client.
#: Sizes from a few that matter (nothing, a line, most or more than all of
#: what the small buffers below hold), so that sends often stop short.
_SIZES = st.sampled_from([0, 1, 70, 30_000, 100_000, 300_000])
_STEPS: st.SearchStrategy[tuple[str, list[int]]] = st.one_of(
    st.tuples(st.just("send"), st.lists(_SIZES, min_size=1, max_size=4)),
    st.tuples(st.just("write"), st.lists(_SIZES.filter(bool), min_size=1, max_size=1)),
    st.tuples(st.just("turn"), st.just([])),
    st.tuples(st.just("read"), st.just([])),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(_STEPS, max_size=25))
def test_anyMixKeepsOrder(steps: list[tuple[str, list[int]]]) -> None:
    """
    Whatever mix of sendNow, write(), reactor turns and client reads, with
    socket buffers small enough that sends stop short: the client gets
    every octet written, once, in the order written.
    """
    c = Connection()
    try:
        smallBuffers(c)
        expected, received = bytearray(), bytearray()
        for number, (step, sizes) in enumerate(steps):
            # Each part its own octet value, so a part out of place shows.
            parts = [bytes([(number * 5 + i) % 256]) * size for i, size in enumerate(sizes)]
            if step == "send":
                sendNow(c.transport, *parts)
            elif step == "write":
                c.transport.write(parts[0])
            elif step == "turn" and c.waiting():
                assert c.transport.doWrite() is None
            elif step == "read":
                received += c.receivedNow()
            expected += b"".join(parts)
        received += drain(c, len(expected) - len(received))
        assert received == expected
        assert not c.waiting() and c.receivedNow() == b""
    finally:
        c.close()


class BytesOnly(StringTransport):
    """
    A transport that records its writes and, as C{ITransport} allows,
    takes only C{bytes}.
    """

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        if type(data) is not bytes:
            raise TypeError(f"not bytes: {type(data).__name__}")
        self.writes.append(data)
        super().write(data)


def test_otherTransports() -> None:
    """
    Any transport but Twisted's plain TCP server connection is written to
    as before: one C{write()} of C{bytes}, the parts joined, views too.
    """
    transport = BytesOnly()
    sendNow(transport, REPLY)
    sendNow(transport, b"+OK 3 octets\r\n", memoryview(b"xabcx")[1:4], b".\r\n")
    sendNow(transport, memoryview(b"+OK\r\n"))
    assert transport.writes == [REPLY, b"+OK 3 octets\r\nabc.\r\n", b"+OK\r\n"]


def test_afterStartTLS(connection: Connection, tmp_path: Path) -> None:
    """
    After STLS, Twisted keeps the same transport object and encrypts what is
    written to it: a reply then goes through TLS, never in clear.
    """
    startServerTLS(connection, tmp_path)
    client = TLSClient(connection)
    # Nothing unsent, no producer: only the switch to TLS tells sendNow.
    assert not connection.waiting() and connection.transport.producer is None
    sendNow(connection.transport, b"+OK a secret reply\r\n")
    raw, clear = client.receive()
    assert raw and b"secret" not in raw
    assert clear == b"+OK a secret reply\r\n"
