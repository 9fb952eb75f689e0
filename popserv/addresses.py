"""
Client addresses judged against networks: the proxies trusted to send a
PROXY header (L{popserv.proxy}) and the addresses the per-address
connection limit leaves out (L{popserv.limits.Exemptions}).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parseNetworks(text: str) -> list[Network]:
    """
    Comma-separated networks (C{10.0.0.0/8,::1}); single addresses allowed.

    @raise ValueError: one is not a network.
    """
    networks: list[Network] = []
    for part in text.split(","):
        part = part.strip()
        if part:
            networks.append(ipaddress.ip_network(part, strict=False))
    if not networks:
        raise ValueError("no networks given")
    return networks


def inNetworks(host: str, networks: Iterable[Network], loopback: bool = False) -> bool:
    """
    Whether C{host}, an IP address as text (what C{IAddress.host} holds), is
    in one of C{networks}, or, with C{loopback}, is a loopback address.
    False for anything that is not an IP address.

    An IPv4 address written as an IPv6 one (C{::ffff:10.0.0.5}: what a
    dual-stack listener sees of an IPv4 client) is judged as the IPv4
    address, as whoever wrote C{10.0.0.0/8} meant.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if loopback and address.is_loopback:
        return True
    return any(address in network for network in networks)


#: An IPv6 site gets a /48 (RFC 6177 leaves /48 to /64): the failed-login
#: penalty counts the site's addresses as one, as Dovecot does, or a client
#: with a /64 would have 2**64 fresh addresses to guess from.
PENALTY_IPV6_PREFIX = 48


def penaltyKey(host: str) -> str:
    """
    Who a failed login from C{host} is held against: an IPv4 address (also
    when written as an IPv6 one, C{::ffff:192.0.2.7}, or reached through
    NAT64's C{64:ff9b::/96}) itself; an IPv6
    address, its /48 network (C{2001:db8:1::/48}); anything else (C{unix})
    as it is.
    """
    if ":" not in host:
        return host  # IPv4, or a name such as "unix": no parsing
    try:
        address = ipaddress.IPv6Address(host)
    except ValueError:
        return host
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    if address in _NAT64:
        # An IPv4 client through NAT64 (RFC 6052): every one of them is in
        # this one /96, and each is its own IPv4 address.
        return str(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return str(ipaddress.IPv6Network((address, PENALTY_IPV6_PREFIX), strict=False))


#: The well-known prefix of RFC 6052, where NAT64 puts IPv4 addresses.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
