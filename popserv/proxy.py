"""
The HAProxy PROXY protocol (v1 and v2) in front of POP3, from trusted
proxies only, with a header timeout.

A load balancer that speaks PROXY sends a header with the real client's
address before anything else; popserv then uses that address for the
cleartext policy, limits, penalties and logs.  The POP3 session (and its
greeting: the server speaks first) starts only once a valid header has
arrived.  Twisted's own wrapper (C{haproxy:} endpoints) connects the
wrapped protocol at once, before the header, so popserv has its own, built
on Twisted's header parsers.

A connection from an address outside the trusted networks, one whose header
is malformed, or one that sends no complete header in time is closed
without a word.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHandshakeListener,
    IReactorTime,
    ITransport,
)
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger

# Twisted's PROXY header parsers: private modules, but the parsing is
# exactly what is needed and not worth writing again.
from twisted.protocols.haproxy._exceptions import InvalidProxyHeader
from twisted.protocols.haproxy._info import ProxyInfo
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

from popserv.addresses import Network, inNetworks, parseNetworks
from popserv.clock import reactorTime

__all__ = ["MAX_HEADER", "ProxyHeaderWrapper", "ProxyWrappingFactory", "parseNetworks"]

#: The longest header accepted: v1 is at most 107 octets; v2 may carry TLVs,
#: but nothing popserv needs comes near this.
MAX_HEADER = 4096


#: A v1 header's protocols: the address each names, as Twisted has it,
#: and as it is written.
_V1_FAMILIES: dict[bytes, tuple[type[IPv4Address | IPv6Address], Any]] = {
    b"TCP4": (IPv4Address, ipaddress.IPv4Address),
    b"TCP6": (IPv6Address, ipaddress.IPv6Address),
}


class _V1Parser(V1Parser):
    """
    Twisted's v1 header reader, with the header line parsed as the PROXY
    protocol specification (section 2.1) has it: Twisted's parser refuses
    the short form "PROXY UNKNOWN", takes any text for an address, and
    lets a port that is not a number escape as a ValueError.
    """

    @classmethod
    def parse(cls, line: bytes) -> ProxyInfo:
        # At most 107 octets with the CRLF (section 2.1).  Twisted's feed
        # refuses only a line that grows past that before its CRLF.
        if len(line) > 105:
            raise InvalidProxyHeader()
        # "UNKNOWN": the receiver ignores the rest of the line and uses
        # the connection's own addresses.
        if line == b"PROXY UNKNOWN" or line.startswith(b"PROXY UNKNOWN "):
            return ProxyInfo(line, None, None)
        fields = line.split(b" ")
        if len(fields) != 6 or fields[0] != b"PROXY" or fields[1] not in _V1_FAMILIES:
            raise InvalidProxyHeader()
        family, source, destination, sourcePort, destinationPort = fields[1:]
        return ProxyInfo(
            line,
            _endpoint(family, source, sourcePort),
            _endpoint(family, destination, destinationPort),
        )


def _endpoint(family: bytes, host: bytes, port: bytes) -> IPv4Address | IPv6Address:
    """
    The address of a v1 header's protocol C{family} at C{host} and C{port},
    the host in its usual form.

    @raise InvalidProxyHeader: C{host} is not an address of that family,
        or C{port} not a decimal number from 0 to 65535.
    """
    kind, syntax = _V1_FAMILIES[family]
    if not (port.isdigit() and len(port) <= 5 and int(port) <= 65535):
        raise InvalidProxyHeader()
    if b"%" in host:
        # An IPv6 scope ("fe80::1%eth0") names an interface of the proxy's,
        # not an address, and ipaddress takes any text for it, control
        # characters too, which would reach the logs as the client's ip=.
        raise InvalidProxyHeader()
    try:
        text = str(syntax(host.decode("ascii")))
    except ValueError:  # UnicodeDecodeError is one
        raise InvalidProxyHeader() from None
    return kind("TCP", text, int(port))


@implementer(IHandshakeListener)
class ProxyHeaderWrapper(ProtocolWrapper):
    """
    Reads the PROXY header, then hands the connection to the wrapped
    protocol with the client's real addresses.
    """

    _log = Logger()
    transport: Any
    factory: Any

    def __init__(self, factory: ProxyWrappingFactory, wrappedProtocol: Any) -> None:
        super().__init__(factory, wrappedProtocol)
        self._buffer = b""
        self._parser: _V1Parser | V2Parser | None = None
        self._info: Any = None
        self._started = False
        self._timer: IDelayedCall | None = None

    def makeConnection(self, transport: Any) -> None:
        # Like ProtocolWrapper.makeConnection, but the wrapped protocol is
        # connected only when the header has arrived.
        directlyProvides(self, providedBy(transport))
        self.connected = 1
        self.transport = transport
        self.factory.registerProtocol(self)
        peer = transport.getPeer()
        factory = self.factory
        assert isinstance(factory, ProxyWrappingFactory)
        if not factory.trusts(peer):
            self._log.warn("PROXY connection from untrusted {peer}; closed", peer=peer)
            transport.loseConnection()
            return
        self._timer = factory.clock().callLater(factory.timeout, self._timedOut)

    def _timedOut(self) -> None:
        self._timer = None
        self._log.info("No PROXY header within {timeout} s; closed", timeout=self.factory.timeout)
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._started:
            self.wrappedProtocol.dataReceived(data)
            return
        self._buffer += data
        if self._parser is None:
            buffer = self._buffer
            if len(buffer) >= 16 and buffer[:12] == V2Parser.PREFIX:
                self._parser = V2Parser()
            elif len(buffer) >= 6 and buffer[:6] == b"PROXY ":
                self._parser = _V1Parser()
            elif len(buffer) >= 16 or not (
                V2Parser.PREFIX.startswith(buffer[:12]) or b"PROXY ".startswith(buffer[:6])
            ):
                self._refuse("not a PROXY header")
                return
            else:
                return
            data, self._buffer = self._buffer, b""
        else:
            data, self._buffer = self._buffer, b""
        try:
            info, remaining = self._parser.feed(data)
        except InvalidProxyHeader:
            self._refuse("malformed PROXY header")
            return
        if info is None:
            if self._parser is not None and len(getattr(self._parser, "buffer", b"")) > MAX_HEADER:
                self._refuse("PROXY header too long")
            return
        if not isinstance(info.source, IPv4Address | IPv6Address):
            # A v2 header's AF_UNIX addresses name a socket on the proxy's
            # machine, not on this one, where the session would take the
            # client for local (cleartext, --per-address-exempt local): as
            # for v1's UNKNOWN, which HAProxy sends for the same client,
            # the proxy connection's own addresses stand.
            info = ProxyInfo(info.header, None, None)
        self._info = info
        self._started = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.wrappedProtocol.makeConnection(cast(ITransport, self))
        if remaining:
            self.wrappedProtocol.dataReceived(remaining)

    def _refuse(self, why: str) -> None:
        self._log.warn(
            "PROXY connection from {peer} closed: {why}", peer=self.transport.getPeer(), why=why
        )
        self._started = False
        self.transport.loseConnection()

    def getPeer(self) -> IAddress:
        if self._info is not None and self._info.source is not None:
            return cast(IAddress, self._info.source)
        return cast(IAddress, self.transport.getPeer())

    def getHost(self) -> IAddress:
        if self._info is not None and self._info.destination is not None:
            return cast(IAddress, self._info.destination)
        return cast(IAddress, self.transport.getHost())

    # TLS after STLS (RFC 2595 section 4), under this wrapper: Twisted starts
    # it on the TCP transport, which then provides ISSLTransport and hands
    # the bytes to a TLS layer whose protocol is this wrapper.

    def startTLS(self, contextFactory: Any, normal: bool = True) -> None:
        self.transport.startTLS(contextFactory, normal)
        # The interfaces were copied when the connection was made: the
        # session tells an encrypted connection by ISSLTransport.
        directlyProvides(self, providedBy(self.transport))

    def handshakeCompleted(self) -> None:
        if IHandshakeListener.providedBy(self.wrappedProtocol):
            self.wrappedProtocol.handshakeCompleted()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._started:
            super().connectionLost(reason)
        else:
            self.factory.unregisterProtocol(self)


if TYPE_CHECKING:
    _WrappingFactory = WrappingFactory[ProxyHeaderWrapper]
else:
    # Generic only from Twisted 26.4 on, as is ServerFactory (protocol.py).
    _WrappingFactory = WrappingFactory


class ProxyWrappingFactory(_WrappingFactory):
    """
    Puts L{ProxyHeaderWrapper} in front of every connection of a factory.
    """

    protocol = ProxyHeaderWrapper

    def __init__(
        self,
        wrappedFactory: Any,
        trusted: Sequence[Network],
        timeout: float = 10.0,
        reactor: IReactorTime | None = None,
    ) -> None:
        """
        @param trusted: the networks proxies may connect from.
        @param timeout: seconds a proxy has to send the header.
        """
        super().__init__(wrappedFactory)
        self.trusted = list(trusted)
        self.timeout = timeout
        self._reactor = reactor

    def clock(self) -> IReactorTime:
        return reactorTime(self._reactor)

    def trusts(self, peer: IAddress) -> bool:
        host = getattr(peer, "host", None)
        return isinstance(host, str) and inNetworks(host, self.trusted)

    def logPrefix(self) -> str:
        return f"{self.wrappedFactory.__class__.__name__} (PROXY)"
