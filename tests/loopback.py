"""
Both ends of a real loopback TCP connection for tests: Twisted's own server
connection (C{twisted.internet.tcp.Server}) over an accepted socket, with a
L{MemoryReactorClock} taking its read and write registrations and its timed
calls, so a test sees what is on the wire before any turn of a reactor, and
turns it by hand (C{doRead}, C{doWrite}, C{advance}) where one is needed;
and the client's end, a plain socket.
"""

from __future__ import annotations

import select
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from certificates import CertificateAuthority
from twisted.internet import tcp
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock

from popserv.proxy import ProxyWrappingFactory, parseNetworks
from popserv.tls import TLSFiles


class Received(Protocol):
    def __init__(self) -> None:
        self.data = b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data


class Connection:
    """
    Both ends of one loopback TCP connection: the server's, as Twisted's
    transport, and the client's, a plain socket.
    """

    def __init__(self, protocol: Protocol | None = None) -> None:
        with socket.create_server(("127.0.0.1", 0)) as listener:
            self.client = socket.create_connection(listener.getsockname(), timeout=5)
            accepted, address = listener.accept()
        accepted.setblocking(False)
        self.reactor = MemoryReactorClock()
        self.protocol = protocol if protocol is not None else Received()
        # No listening port: Twisted takes None (it names the port in repr only).
        self.transport = tcp.Server(
            accepted,
            self.protocol,
            address,
            None,  # type: ignore[arg-type]
            1,
            self.reactor,
        )
        self.protocol.makeConnection(self.transport)
        self.transport.setTcpNoDelay(True)  # as popserv does

    def waiting(self) -> bool:
        """
        Whether the transport has asked to be told when it can write: it
        holds bytes it has not sent.
        """
        return self.transport in self.reactor.getWriters()

    def receivedNow(self, wait: float = 0) -> bytes:
        """
        What the client can read at once; with C{wait}, after waiting up to
        that many seconds for the first octet.
        """
        chunks = []
        while select.select([self.client], [], [], wait)[0]:
            wait = 0
            chunk = self.client.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        self.client.close()
        # Twisted deletes the socket attribute once the connection is lost.
        sock = getattr(self.transport, "socket", None)
        if sock is not None:
            sock.close()


def drain(connection: Connection, length: int) -> bytes:
    """
    Turn the transport and read from the client until C{length} octets
    came, or 30 seconds passed.
    """
    received = bytearray()
    deadline = time.monotonic() + 30
    for _ in range(100_000):
        if len(received) >= length or time.monotonic() > deadline:
            break
        if connection.waiting():
            assert connection.transport.doWrite() is None
        received += connection.receivedNow()
    return bytes(received)


#: 4 MiB, far more than the small socket buffers below hold.
BIG = bytes(range(256)) * 16384


def smallBuffers(connection: Connection) -> None:
    connection.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    connection.client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)


def exchange(
    connection: Connection, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, wait: float
) -> None:
    """
    One round of TLS: the client's pending octets to the server, which
    reads them (waiting up to C{wait} seconds for them) and sends what it
    has to, and that to the client.
    """
    pending = outgoing.read()
    if pending:
        connection.client.sendall(pending)
    select.select([connection.transport.socket], [], [], wait)
    connection.transport.doRead()
    if connection.waiting():
        connection.transport.doWrite()
    incoming.write(connection.receivedNow())


def handshake(
    connection: Connection, client: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO
) -> None:
    """
    Run the TLS handshake between the transport and C{client}, turning the
    server side by hand.
    """
    deadline = time.monotonic() + 10
    for _ in range(1000):
        try:
            client.do_handshake()
        except ssl.SSLWantReadError:
            exchange(connection, incoming, outgoing, 0.01)
        else:
            # The client's last flight, for the server to end its side, and
            # what the server sends then (TLS 1.3 session tickets), so that
            # it holds nothing unsent.
            exchange(connection, incoming, outgoing, 1)
            return
        assert time.monotonic() < deadline, "the TLS handshake did not end"
    raise AssertionError("the TLS handshake did not end")


@pytest.fixture(name="connection")
def connectionFixture() -> Iterator[Connection]:
    """
    A L{Connection}, closed after the test.  Import it into a test module
    to use it there as C{connection}.
    """
    c = Connection()
    yield c
    c.close()


class Producer:
    """
    Counts what the transport asks of it.
    """

    def __init__(self) -> None:
        self.asked: list[str] = []

    def pauseProducing(self) -> None:
        self.asked.append("pause")

    def resumeProducing(self) -> None:
        self.asked.append("resume")

    def stopProducing(self) -> None:
        self.asked.append("stop")


def resetByClient(connection: Connection) -> None:
    """
    Close the client's end with a reset, not an orderly close, and wait
    (up to 5 s) until the server's socket has it.
    """
    connection.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
    connection.client.close()
    deadline = time.monotonic() + 5
    while not select.select([connection.transport.socket], [], [], 0.05)[0]:
        assert time.monotonic() < deadline, "the reset never arrived"


def behindProxyHeader() -> tuple[Connection, Any]:
    """
    A connection whose server end is popserv's PROXY header reader, trusting
    loopback, over a protocol that keeps what it receives; the client has
    sent its header and the server read it.  The connection, and the
    session protocol behind the header reader.
    """
    wrapping = ProxyWrappingFactory(
        ServerFactory.forProtocol(Received), parseNetworks("127.0.0.0/8"), reactor=Clock()
    )
    c = Connection(wrapping.buildProtocol(None))
    c.client.sendall(b"PROXY TCP4 203.0.113.5 127.0.0.1 51000 110\r\n")
    assert select.select([c.transport.socket], [], [], 5)[0]
    c.transport.doRead()
    session = c.protocol.wrappedProtocol  # type: ignore[attr-defined]
    assert session.transport is c.protocol
    return c, session


def startServerTLS(connection: Connection, directory: Path) -> None:
    """
    Switch the server's end to TLS (as STLS does), with a certificate for
    "localhost" issued in C{directory}.
    """
    issued = CertificateAuthority(directory).issue("localhost", ["localhost"])
    connection.transport.startTLS(TLSFiles(str(issued.certificate), str(issued.key)).load())


def afterSTLS(connection: Connection) -> TLSClient:
    """
    Take the greeting of the POP3 session on C{connection}, send C{STLS}
    and take its reply; then the client's end of the handshake that
    follows.  (The session's factory needs its C{tls=}.)
    """
    connection.reactor.advance(0)
    assert connection.receivedNow(wait=5).startswith(b"+OK POP3 server ready")
    connection.client.sendall(b"STLS\r\n")
    assert select.select([connection.transport.socket], [], [], 5)[0]
    connection.transport.doRead()
    connection.reactor.advance(0)
    if connection.waiting():
        connection.transport.doWrite()
    assert connection.receivedNow(wait=5) == b"+OK Begin TLS negotiation\r\n"
    return TLSClient(connection)


class TLSClient:
    """
    The client's end of TLS over a L{Connection} whose server end has
    started TLS, after the handshake; it trusts any certificate.
    """

    def __init__(self, connection: Connection) -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        self.connection = connection
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")
        handshake(connection, self.tls, self.incoming, self.outgoing)

    def receive(self) -> tuple[bytes, bytes]:
        """
        Turn the server as a reactor would (the global reactor's due calls,
        where Twisted's TLS gathers small writes, then a write) and read:
        the octets on the wire, and what they decrypt to.
        """
        from twisted.internet import reactor

        reactor.runUntilCurrent()  # type: ignore[attr-defined]
        assert self.connection.waiting()
        self.connection.transport.doWrite()
        raw = self.connection.receivedNow(wait=5)
        self.incoming.write(raw)
        return raw, self.tls.read(100_000)
