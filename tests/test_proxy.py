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
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

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


def test_parseNetworks() -> None:
    """
    Networks are comma-separated CIDRs or single addresses.
    """
    assert [str(n) for n in parseNetworks("10.0.0.0/8, ::1")] == ["10.0.0.0/8", "::1/128"]
    with pytest.raises(ValueError):
        parseNetworks("not-a-network")


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
