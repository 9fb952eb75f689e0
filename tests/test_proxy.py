"""
Tests for popserv.proxy: the HAProxy PROXY protocol in front of POP3.
"""

from __future__ import annotations

import select
import socket
import struct
from pathlib import Path
from typing import Any

import pytest
from certificates import CertificateAuthority
from loopback import Connection, TLSClient
from protocol_helpers import Session
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from popserv.proxy import ProxyWrappingFactory, parseNetworks
from popserv.tls import ReloadableTLS, TLSFiles

V1 = b"PROXY TCP4 203.0.113.5 192.0.2.1 51000 110\r\n"


def v2(source: str = "203.0.113.5", port: int = 51000) -> bytes:
    addresses = socket.inet_aton(source) + socket.inet_aton("192.0.2.1")
    addresses += struct.pack("!HH", port, 110)
    return (
        b"\r\n\r\n\x00\r\nQUIT\n"  # signature
        + bytes([0x21, 0x11])  # v2 PROXY, TCP over IPv4
        + struct.pack("!H", len(addresses))
        + addresses
    )


SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"

#: A v2 LOCAL header: the proxy's own connection (a health check), no
#: client address.
V2_LOCAL = SIGNATURE + bytes([0x20, 0x00]) + struct.pack("!H", 0)

#: A v2 header for a client on a UNIX socket of the proxy's machine: the
#: proxy's socket's path as source and destination (108 octets each).
_PATHS = b"/run/haproxy/pop3.sock".ljust(108, b"\0") * 2
V2_UNIX = SIGNATURE + bytes([0x21, 0x31]) + struct.pack("!H", len(_PATHS)) + _PATHS


def connect(proxy: str = "10.1.2.3", timeout: float = 10.0) -> tuple[Any, StringTransport, Clock]:
    session = Session(allowCleartext=False)
    clock = Clock()
    wrapping = ProxyWrappingFactory(
        session.factory, parseNetworks("10.0.0.0/8,fd00::/8"), timeout=timeout, reactor=clock
    )
    protocol = wrapping.buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", proxy, 40000))
    protocol.makeConnection(transport)
    return protocol, transport, clock


@pytest.mark.parametrize("header", [V1, v2()])
def test_headerGivesClientAddress(header: bytes) -> None:
    """
    After a valid v1 or v2 header from a trusted proxy the greeting comes,
    and the session sees the client's address, not the proxy's: here a
    remote client, so a cleartext USER is refused.
    """
    protocol, transport, _ = connect()
    assert transport.value() == b""
    protocol.dataReceived(header)
    assert transport.value().startswith(b"+OK POP3 server ready")
    assert protocol.getPeer() == IPv4Address("TCP", "203.0.113.5", 51000)
    assert protocol.wrappedProtocol.address == "203.0.113.5"
    transport.clear()
    protocol.dataReceived(b"USER alice\r\n")
    assert transport.value().startswith(b"-ERR [AUTH] Plaintext")


def test_headerSplitAndDataBehindIt() -> None:
    """
    The header may arrive in pieces, and commands right behind it in the
    same packet are not lost.
    """
    protocol, transport, _ = connect()
    for octet in V1[:10]:
        protocol.dataReceived(bytes([octet]))
    protocol.dataReceived(V1[10:] + b"CAPA\r\n")
    assert b"Capability list follows" in transport.value()


def test_untrustedProxy() -> None:
    """
    A connection from outside the trusted networks is closed at once.
    """
    _, transport, _ = connect(proxy="198.51.100.9")
    assert transport.disconnecting
    assert transport.value() == b""


@pytest.mark.parametrize(
    "data",
    [b"USER alice\r\n" + b"x" * 20, b"PROXY GARBAGE\r\n", b"GET / HTTP/1.0\r\n\r\n"],
)
def test_notAHeader(data: bytes) -> None:
    """
    Anything but a valid header closes the connection without a greeting.
    """
    protocol, transport, _ = connect()
    protocol.dataReceived(data)
    assert transport.disconnecting
    assert not transport.value().startswith(b"+OK")


def test_headerTimeout() -> None:
    """
    A proxy that sends no complete header within the timeout is cut off.
    """
    protocol, transport, clock = connect(timeout=5)
    protocol.dataReceived(b"PROXY TCP4 ")
    clock.advance(4.9)
    assert not transport.disconnecting
    clock.advance(0.1)
    assert transport.disconnecting


def test_trustedProxyOnDualStackListener() -> None:
    """
    A dual-stack listener sees an IPv4 proxy as ::ffff:10.1.2.3; it is in
    the trusted 10.0.0.0/8 all the same, and an IPv4 address outside it is
    not trusted however it is written.
    """
    wrapping = ProxyWrappingFactory(
        Session().factory, parseNetworks("10.0.0.0/8,fd00::/8"), reactor=Clock()
    )
    assert wrapping.trusts(IPv6Address("TCP", "::ffff:10.1.2.3", 40000))
    assert wrapping.trusts(IPv6Address("TCP", "fd00::7", 40000))
    assert not wrapping.trusts(IPv6Address("TCP", "::ffff:198.51.100.9", 40000))
    assert not wrapping.trusts(UNIXAddress(b"/run/popserv.sock"))


def test_loopbackNotTrustedUnlessListed() -> None:
    """
    This machine is no more trusted to send a PROXY header than any other
    address: a client on loopback (any local user) outside
    --proxy-trusted may not claim another client's address.
    """
    wrapping = ProxyWrappingFactory(Session().factory, parseNetworks("10.0.0.0/8"), reactor=Clock())
    assert not wrapping.trusts(IPv4Address("TCP", "127.0.0.1", 40000))
    assert not wrapping.trusts(IPv6Address("TCP", "::1", 40000))
    assert not wrapping.trusts(IPv6Address("TCP", "::ffff:127.0.0.1", 40000))


def test_parseNetworks() -> None:
    """
    Networks are comma-separated CIDRs or single addresses; an address
    with host bits set stands for its network, empty items (a trailing
    comma) are skipped, and nothing at all is an error.
    """
    assert [str(n) for n in parseNetworks("10.0.0.0/8, ::1")] == ["10.0.0.0/8", "::1/128"]
    assert [str(n) for n in parseNetworks(",192.0.2.77/24, ,fd00::1/8,")] == [
        "192.0.2.0/24",
        "fd00::/8",
    ]
    with pytest.raises(ValueError):
        parseNetworks("not-a-network")
    with pytest.raises(ValueError, match="no networks given"):
        parseNetworks(" , ")


@pytest.mark.parametrize("header", [V1, v2()])
def test_headerOctetByOctet(header: bytes) -> None:
    """
    A v1 or v2 header arriving one octet at a time is waited for, not
    refused as soon as it is incomplete, then starts the session.
    """
    protocol, transport, _ = connect()
    for octet in header[:-1]:
        protocol.dataReceived(bytes([octet]))
        assert not transport.disconnecting
        assert transport.value() == b""
    protocol.dataReceived(header[-1:])
    assert not transport.disconnecting
    assert transport.value().startswith(b"+OK POP3 server ready")
    assert protocol.getPeer() == IPv4Address("TCP", "203.0.113.5", 51000)


@pytest.mark.parametrize("data", [b"USER", b"HELLO THERE", b"CAPA\r\n", b"\r\n\r\nX", b"PROXX"])
def test_shortNotAHeader(data: bytes) -> None:
    """
    A few octets that cannot begin a v1 or v2 header are refused at once,
    without waiting for more (or for a line end).
    """
    protocol, transport, _ = connect()
    protocol.dataReceived(data)
    assert transport.disconnecting
    assert transport.value() == b""


def test_headerTooLong() -> None:
    """
    A v2 header announcing more than 4,096 octets (L{MAX_HEADER}) is
    refused once more than that has arrived without it being complete.
    """
    protocol, transport, _ = connect()
    start = SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", 60000)
    protocol.dataReceived(start)
    protocol.dataReceived(b"\0" * (4096 - len(start)))
    assert not transport.disconnecting
    protocol.dataReceived(b"\0")
    assert transport.disconnecting
    assert transport.value() == b""


@pytest.mark.parametrize("header", [V1, v2()])
def test_headerGivesServerAddress(header: bytes) -> None:
    """
    Before the header the addresses are the proxy connection's own; after
    it the peer is the client and the host the address the client
    connected to, both from the header.
    """
    protocol, transport, _ = connect()
    assert protocol.connected
    assert protocol.getPeer() == IPv4Address("TCP", "10.1.2.3", 40000)
    assert protocol.getHost() == transport.getHost()
    protocol.dataReceived(header)
    assert protocol.getPeer() == IPv4Address("TCP", "203.0.113.5", 51000)
    assert protocol.getHost() == IPv4Address("TCP", "192.0.2.1", 110)


def test_v1IPv6Header() -> None:
    """
    A v1 TCP6 header gives the session IPv6 addresses, in their usual
    form.
    """
    protocol, transport, _ = connect()
    protocol.dataReceived(b"PROXY TCP6 2001:DB8:0::5 2001:db8::1 51000 995\r\nCAPA\r\n")
    assert transport.value().startswith(b"+OK POP3 server ready")
    assert protocol.getPeer() == IPv6Address("TCP", "2001:db8::5", 51000)
    assert protocol.getHost() == IPv6Address("TCP", "2001:db8::1", 995)
    assert b"+OK Capability list follows" in transport.value()


@pytest.mark.parametrize(
    "header", [b"PROXY UNKNOWN 203.0.113.5 192.0.2.1 51000 110\r\n", V2_LOCAL, V2_UNIX]
)
def test_headerWithoutAddresses(header: bytes) -> None:
    """
    A v1 UNKNOWN or v2 LOCAL header carries no client address (whatever
    follows UNKNOWN is ignored), and a v2 header's AF_UNIX addresses name
    a socket on the proxy's machine: the session starts with the proxy
    connection's own addresses, and a client from another machine is not
    taken for a local one: USER in clear is refused (with v2's AF_UNIX
    source the session saw a UNIX socket, and took the client for local).
    """
    protocol, transport, _ = connect()
    protocol.dataReceived(header)
    assert transport.value().startswith(b"+OK POP3 server ready")
    assert protocol.getPeer() == IPv4Address("TCP", "10.1.2.3", 40000)
    assert protocol.getHost() == transport.getHost()
    assert protocol.wrappedProtocol.address == "10.1.2.3"
    transport.clear()
    protocol.dataReceived(b"USER alice\r\n")
    assert transport.value().startswith(b"-ERR [AUTH] Plaintext")


def test_v1LineLength() -> None:
    """
    A v1 header is at most 107 octets with its CRLF (section 2.1): one of
    108 is refused, whether its CRLF comes with the rest or in a read of
    its own (Twisted's parser refuses only a line that grows past 107
    octets before its CRLF).
    """
    longest = b"PROXY UNKNOWN " + b"x" * (107 - 16) + b"\r\n"
    assert len(longest) == 107
    for chunks in ([longest[:-2] + b"x\r\n"], [longest[:-2] + b"x", b"\r\n"]):
        protocol, transport, _ = connect()
        for chunk in chunks:
            protocol.dataReceived(chunk)
        assert transport.disconnecting
        assert transport.value() == b""
    protocol, transport, _ = connect()
    protocol.dataReceived(longest)
    assert transport.value().startswith(b"+OK POP3 server ready")


def test_unknownShortForm() -> None:
    """
    "PROXY UNKNOWN" followed at once by CRLF is the short form of a v1
    header without addresses (the PROXY protocol specification, section
    2.1: the receiver must accept it; HAProxy sends it for a client on a
    UNIX socket).
    """
    protocol, transport, _ = connect()
    protocol.dataReceived(b"PROXY UNKNOWN\r\n")
    assert transport.value().startswith(b"+OK POP3 server ready")
    assert protocol.getPeer() == IPv4Address("TCP", "10.1.2.3", 40000)


@pytest.mark.parametrize(
    "header",
    [
        b"PROXY TCP4 203.0.113.5 192.0.2.1 x 110\r\n",
        b"PROXY TCP4 203.0.113.5 192.0.2.1 99999 110\r\n",
        b"PROXY TCP4 not-an-ip 192.0.2.1 51000 110\r\n",
        b"PROXY TCP4 2001:db8::1 192.0.2.1 51000 110\r\n",
        b"PROXY TCP6 192.0.2.5 2001:db8::1 51000 110\r\n",
        b"PROXY TCP4 203.0.113.5 192.0.2.1 51000 110 extra\r\n",
        b"PROXY TCP4 203.0.113.5 192.0.2.1 -1 110\r\n",
        b"PROXY TCP4 203.0.113.5 192.0.2.1 051000 110\r\n",
        b"PROXY TCP4 203.0.113.\xc3\xa4 192.0.2.1 51000 110\r\n",
        b"PROXY TCP6 fe80::1%\x1b[31m\tip=198.51.100.7 ::1 51000 110\r\n",
        b"PROXY TCP6 2001:db8::5 fe80::1%eth0 51000 110\r\n",
        # Single spaces only, a known protocol, UNKNOWN as a word of its own.
        b"PROXY TCP4 203.0.113.5  192.0.2.1 51000 110\r\n",
        b"PROXY TCP4 203.0.113.5\t192.0.2.1 51000 110\r\n",
        b"PROXY UDP4 203.0.113.5 192.0.2.1 51000 110\r\n",
        b"PROXY UNKNOWNX\r\n",
    ],
)
def test_malformedAddressInHeader(header: bytes) -> None:
    """
    A v1 header whose port is not a number from 0 to 65535, whose address
    is not an address of its family (an IPv6 scope, with the text after its
    "%" that would reach the logs, is not), whose protocol is neither TCP4
    nor TCP6 (nor UNKNOWN, a word of its own), or whose fields are not
    separated by single spaces (section 2.1), is malformed: the connection
    is closed without a greeting (and without an exception out of
    dataReceived), and no such address reaches the session.
    """
    protocol, transport, _ = connect()
    protocol.dataReceived(header)
    assert transport.disconnecting
    assert transport.value() == b""


@pytest.mark.parametrize("port", [0, 65535])
def test_portRange(port: int) -> None:
    """
    A v1 header's ports run from 0 to 65535, both ends included.
    """
    protocol, transport, _ = connect()
    protocol.dataReceived(b"PROXY TCP4 203.0.113.5 192.0.2.1 %d %d\r\n" % (port, port))
    assert transport.value().startswith(b"+OK POP3 server ready")
    assert protocol.getPeer() == IPv4Address("TCP", "203.0.113.5", port)
    assert protocol.getHost() == IPv4Address("TCP", "192.0.2.1", port)


def recordLost(protocol: Any) -> list[Failure]:
    """
    Record the reasons the wrapped session is told its connection was lost.
    """
    lost: list[Failure] = []
    protocol.wrappedProtocol.connectionLost = lost.append
    return lost


def test_headerCancelsTimeout() -> None:
    """
    Once the header has arrived the header timeout is cancelled: the
    session is not cut off when it would have expired, and when the
    connection is lost the session is told and the wrapper forgotten.
    """
    protocol, transport, clock = connect(timeout=5)
    assert protocol in protocol.factory.protocols
    protocol.dataReceived(V1)
    assert clock.getDelayedCalls() == []
    clock.advance(10)
    assert not transport.disconnecting
    lost = recordLost(protocol)
    protocol.connectionLost(Failure(ConnectionDone()))
    assert len(lost) == 1
    assert protocol not in protocol.factory.protocols


def test_connectionLostBeforeHeader() -> None:
    """
    A connection lost before its header cancels the header timeout and is
    forgotten; there is no session to tell.
    """
    protocol, _, clock = connect()
    protocol.dataReceived(V1[:10])
    lost = recordLost(protocol)
    protocol.connectionLost(Failure(ConnectionDone()))
    assert clock.getDelayedCalls() == []
    assert lost == []
    assert protocol not in protocol.factory.protocols


def test_connectionLostAfterTimeout() -> None:
    """
    A connection cut off by the header timeout is then lost cleanly.
    """
    protocol, transport, clock = connect(timeout=5)
    clock.advance(5)
    assert transport.disconnecting
    lost = recordLost(protocol)
    protocol.connectionLost(Failure(ConnectionDone()))
    assert lost == []
    assert protocol not in protocol.factory.protocols


def test_connectionLostAfterRefusal() -> None:
    """
    A connection refused for a malformed header never had a session: when
    it is lost, no session is told, and data arriving after the refusal
    reaches none.
    """
    protocol, transport, clock = connect()
    protocol.dataReceived(b"PROXY GARBAGE\r\n")
    assert transport.disconnecting
    lost = recordLost(protocol)
    protocol.dataReceived(b"CAPA\r\n")
    protocol.connectionLost(Failure(ConnectionDone()))
    assert lost == []
    assert transport.value() == b""
    assert clock.getDelayedCalls() == []
    assert protocol not in protocol.factory.protocols


def test_untrustedProxyLost() -> None:
    """
    An untrusted proxy's connection starts no header timeout, and is then
    lost cleanly.
    """
    protocol, _, clock = connect(proxy="198.51.100.9")
    assert clock.getDelayedCalls() == []
    protocol.connectionLost(Failure(ConnectionDone()))
    assert protocol not in protocol.factory.protocols


def test_defaultHeaderTimeout() -> None:
    """
    By default a proxy has 10 seconds to send the header.
    """
    clock = Clock()
    wrapping = ProxyWrappingFactory(Session().factory, parseNetworks("10.0.0.0/8"), reactor=clock)
    protocol = wrapping.buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "10.1.2.3", 40000))
    protocol.makeConnection(transport)
    clock.advance(9.9)
    assert not transport.disconnecting
    clock.advance(0.1)
    assert transport.disconnecting


def serve(c: Connection, write: bool = True) -> None:
    """
    Have the server read what the client sent (waiting up to 5 s for it),
    run what is due at the end of that turn and, with C{write}, write.
    """
    assert select.select([c.transport.socket], [], [], 5)[0]
    c.transport.doRead()
    c.reactor.advance(0)
    if write and c.waiting():
        c.transport.doWrite()


def test_startTLSBehindHeader(tmp_path: Path) -> None:
    """
    STLS on a connection behind a PROXY header (RFC 2595 section 4): once
    the handshake is over the session is encrypted, as on a plain
    listener.  A client from another host may then send its password in
    clear text commands, STLS is no longer offered and is refused, and the
    audit line records the TLS version.
    """
    issued = CertificateAuthority(tmp_path).issue("localhost", ["localhost"])
    session = Session(tls=ReloadableTLS(TLSFiles(str(issued.certificate), str(issued.key))))
    wrapping = ProxyWrappingFactory(session.factory, parseNetworks("127.0.0.0/8"), reactor=Clock())
    c = Connection(wrapping.buildProtocol(None))
    try:
        c.client.sendall(b"PROXY TCP4 203.0.113.5 127.0.0.1 51000 110\r\n")
        serve(c)
        pop3 = c.protocol.wrappedProtocol  # type: ignore[attr-defined]
        assert c.receivedNow(wait=5).startswith(b"+OK POP3 server ready")
        c.client.sendall(b"CAPA\r\nSTLS\r\n")
        serve(c)
        inClear = c.receivedNow(wait=5)
        assert b"\r\nSTLS\r\n" in inClear and b"\r\nUSER\r\n" not in inClear
        assert inClear.endswith(b".\r\n+OK Begin TLS negotiation\r\n")
        client = TLSClient(c)
        assert pop3.isEncrypted()
        assert pop3.record.tls.startswith("TLSv1.")

        def command(line: bytes) -> bytes:
            client.tls.write(line + b"\r\n")
            c.client.sendall(client.outgoing.read())
            serve(c, write=False)
            return client.receive()[1]

        capabilities = command(b"CAPA")
        assert b"\r\nUSER\r\n" in capabilities and b"STLS" not in capabilities
        assert command(b"STLS") == b"-ERR Command not permitted when TLS active\r\n"
        assert command(b"USER alice") == b"+OK Send PASS\r\n"
    finally:
        c.close()
