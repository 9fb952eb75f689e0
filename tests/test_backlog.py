"""
Tests for popserv.backlog: a session whose client reads none of its
replies runs no more commands until the socket has taken them, on real
loopback sockets (Twisted's own TCP transport, in clear and after STLS).
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from pathlib import Path
from typing import Any

from loopback import Connection, Producer, TLSClient, behindProxyHeader, startServerTLS
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import CertificateOptions
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol

from popserv.backlog import socketOf, unsent, whenSent
from popserv.memorystore import MemoryStore
from popserv.protocol import MAX_QUEUED_LINES, POP3ServerFactory
from popserv.realm import MaildropRealm

#: Messages in the maildrop: LIST's reply is about 13 KB.
MESSAGES = 1000
#: LISTs the client sends without reading a reply: 1.3 MB of replies.
LISTS = 100


def server() -> tuple[POP3ServerFactory, bytes]:
    """
    A server for alice's maildrop of L{MESSAGES}, and the exact reply to
    its LIST.
    """
    store = MemoryStore()
    for n in range(MESSAGES):
        store.deliver("alice", b"message %d\r\n" % n)
    portal = Portal(
        MaildropRealm(store), [InMemoryUsernamePasswordDatabaseDontUse(alice=b"secret")]
    )
    listing = b"".join(
        [b"+OK 1000 messages (12890 octets)\r\n"]
        + [b"%d %d\r\n" % (n, len(b"message %d\r\n" % (n - 1))) for n in range(1, MESSAGES + 1)]
        + [b".\r\n"]
    )
    return POP3ServerFactory(portal, clock=Clock()), listing


def smallBuffers(c: Connection) -> None:
    c.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    c.client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)


def session() -> tuple[Connection, Any, bytes]:
    """
    A logged-in session on a loopback connection with small socket
    buffers, and the exact reply to its LIST.
    """
    factory, listing = server()
    c = Connection(factory.buildProtocol(None))
    smallBuffers(c)
    c.reactor.advance(0)
    assert c.receivedNow(wait=5).startswith(b"+OK POP3 server ready")
    c.client.sendall(b"USER alice\r\nPASS secret\r\n")
    assert read(c, b"+OK Send PASS\r\n+OK Logged in, 1000 messages (12890 octets)\r\n")
    return c, c.protocol, listing


def turn(c: Connection) -> None:
    """
    One turn of the server's reactor: read what came, run the due calls
    (the replies sent at the turn's end), write what waits.
    """
    if c.transport in c.reactor.getReaders() and select.select([c.transport.socket], [], [], 0)[0]:
        c.transport.doRead()
    c.reactor.advance(0)
    if c.waiting():
        c.transport.doWrite()


def read(c: Connection, expected: bytes) -> bool:
    """
    Turn the server until the client has read something that starts with
    C{expected}, for up to 10 seconds.
    """
    got = b""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(got) < len(expected):
        turn(c)
        got += c.receivedNow(wait=0.01)
    return got.startswith(expected)


def test_heldWhileUnread() -> None:
    """
    A client that sends a hundred LISTs and reads nothing leaves the server
    holding about one reply (13 KB) beyond the transport's 64 KiB, not a
    hundred (1.3 MB); the server stops reading once its queue is full.
    Once the client reads, every reply comes, whole and in order.
    """
    c, protocol, listing = session()
    try:
        c.client.setblocking(False)
        sent = 0
        commands = b"LIST\r\n" * LISTS
        deadline = time.monotonic() + 10
        most = 0
        for _ in range(1000):
            if time.monotonic() > deadline:
                break
            with contextlib.suppress(BlockingIOError):
                sent += c.client.send(commands[sent:])
            turn(c)
            most = max(most, unsent(c.transport))
            if sent == len(commands) and not c.waiting():
                break
        assert most <= c.transport.bufferSize + len(listing)
        # Held: the lines wait in the queue, which is past its limit, so
        # the server reads no more.
        assert protocol._busy
        assert len(protocol._queue) >= MAX_QUEUED_LINES
        assert c.transport not in c.reactor.getReaders()

        c.client.setblocking(True)
        received = bytearray()
        deadline = time.monotonic() + 30
        while len(received) < LISTS * len(listing) and time.monotonic() < deadline:
            turn(c)
            received += c.receivedNow(wait=0.01)
            most = max(most, unsent(c.transport))
        assert bytes(received) == listing * LISTS
        assert most <= c.transport.bufferSize + len(listing)
        assert not protocol._busy and protocol._queue == []
        # The session goes on as before.
        c.client.sendall(b"STAT\r\n")
        assert read(c, b"+OK 1000 ")
    finally:
        c.close()


def test_heldOverTLS(tmp_path: Path) -> None:
    """
    After STLS, where Twisted's TLS layer has the transport: the same hold,
    and the replies decrypt whole and in order.
    """
    factory, listing = server()
    c = Connection(factory.buildProtocol(None))
    smallBuffers(c)
    try:
        c.reactor.advance(0)
        assert c.receivedNow(wait=5).startswith(b"+OK POP3 server ready")
        startServerTLS(c, tmp_path)
        client = TLSClient(c)
        protocol = c.protocol
        assert socketOf(protocol.transport) is c.transport

        def send(data: bytes) -> None:
            client.tls.write(data)
            c.client.sendall(client.outgoing.read())

        def receive(wait: float = 0.01) -> bytes:
            # Twisted's TLS gathers small writes in a call on the global
            # reactor's clock.
            reactor.runUntilCurrent()  # type: ignore[attr-defined]
            turn(c)
            client.incoming.write(c.receivedNow(wait=wait))
            out = bytearray()
            while True:
                try:
                    chunk = client.tls.read(1 << 20)
                except Exception:  # ssl.SSLWantReadError: nothing whole yet
                    break
                if not chunk:
                    break
                out += chunk
            return bytes(out)

        send(b"USER alice\r\nPASS secret\r\n")
        got = b""
        deadline = time.monotonic() + 10
        while b"Logged in" not in got and time.monotonic() < deadline:
            got += receive()
        assert got == b"+OK Send PASS\r\n+OK Logged in, 1000 messages (12890 octets)\r\n"

        send(b"LIST\r\n" * LISTS)
        most = 0
        received = bytearray()
        for _ in range(20):
            reactor.runUntilCurrent()  # type: ignore[attr-defined]
            turn(c)
            most = max(most, unsent(c.transport))
        assert protocol._busy
        # Encrypted, a reply is a little longer.
        assert most <= c.transport.bufferSize + 2 * len(listing)
        deadline = time.monotonic() + 30
        while len(received) < LISTS * len(listing) and time.monotonic() < deadline:
            received += receive()
            most = max(most, unsent(c.transport))
        assert bytes(received) == listing * LISTS
        assert most <= c.transport.bufferSize + 2 * len(listing)
    finally:
        c.close()


def test_socketOf() -> None:
    """
    The transport that writes to the socket is found under the PROXY header
    reader and under TLS; a string transport has none.
    """
    c, session = behindProxyHeader()
    try:
        assert socketOf(session.transport) is c.transport
        # Twisted's TLS as an ssl: listener has it, over the header reader.
        tls = TLSMemoryBIOFactory(
            CertificateOptions(), False, Factory.forProtocol(Protocol)
        ).buildProtocol(None)
        assert isinstance(tls, TLSMemoryBIOProtocol)
        tls.transport = session.transport
        assert socketOf(tls) is c.transport
    finally:
        c.close()
    assert socketOf(StringTransport()) is None


def test_unsent() -> None:
    """
    What the transport holds unsent: the part of its first buffer not yet
    sent (from its offset on) and all of the second.
    """
    c = Connection()
    try:
        transport: Any = c.transport
        assert unsent(transport) == 0
        transport.dataBuffer, transport.offset = b"x" * 100, 30
        transport._tempDataLen = 7
        assert unsent(transport) == 77
    finally:
        transport.dataBuffer, transport.offset, transport._tempDataLen = b"", 0, 0
        c.close()


def test_whenSentLeavesAProducerAlone() -> None:
    """
    A transport that already has a producer (a message transfer) keeps it:
    whenSent says False and will never call back.
    """
    c = Connection()
    try:
        producer = Producer()
        c.transport.registerProducer(producer, True)
        called: list[None] = []
        assert whenSent(c.transport, lambda: called.append(None)) is False
        assert c.transport.producer is producer
        c.transport.unregisterProducer()
        assert called == []
    finally:
        c.close()
