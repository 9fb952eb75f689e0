"""
Tests for what an idle session holds: the attributes a POP3Protocol sets,
and the size of its instance dict when many clients connect at once.
"""

from __future__ import annotations

import sys

import pytest
from protocol_helpers import Session

from popserv.limits import Limits
from popserv.memorystore import MemoryStore
from popserv.protocol import POP3Protocol

#: What a session sets when the connection is made, before any other
#: session can be made (Twisted builds and connects each in turn).
CONNECTION_NAMES = {
    "factory",
    "transport",
    "connected",
    "address",
    "record",
    "_counted",
    "_timeout",
}


def sessionStore() -> MemoryStore:
    store = MemoryStore()
    for _ in range(3):
        store.deliver("alice", b"Subject: hi\r\n\r\nHello\r\n")
    return store


def test_everyUsualAttributeSetAtCreation() -> None:
    """
    A session that logs in, lists, retrieves, deletes and quits sets no
    attribute that __init__ (or making the connection) did not set first.
    CPython shares one table of attribute names among a class's instances,
    and one that sets a name missing from it gets a dict of its own.
    """
    made = set(vars(POP3Protocol())) | CONNECTION_NAMES
    session = Session(store=sessionStore(), users={b"alice": b"secret"}, timeout=600)
    assert session.login().startswith(b"+OK")
    for line in (b"STAT", b"LIST", b"UIDL", b"RETR 1", b"TOP 2 0", b"DELE 3", b"NOOP", b"QUIT"):
        assert session.command(line).startswith(b"+OK"), line
    session.protocol.connectionLost(None)
    assert set(vars(session.protocol)) - made == set()


@pytest.mark.skipif(
    sys.implementation.name != "cpython" or sys.version_info[:2] not in ((3, 11), (3, 12)),
    reason="the shared attribute table's rules are CPython 3.11 and 3.12's",
)
def test_burstOfConnectionsShareTheNames() -> None:
    """
    Sessions made all at once, before any logs in (a thousand clients
    reconnecting after a restart), hold their values in the class's shared
    table of names, as sessions made one after another do: none has a dict
    of its own.
    """
    store = sessionStore()
    limits = Limits(maxConnections=1000, maxConnectionsPerAddress=1000)
    first = Session(store=store, users={b"alice": b"secret"}, limits=limits)

    class Fresh(POP3Protocol):
        """
        A class of its own has a table of its own, which no earlier test
        has filled.
        """

    first.factory.protocol = Fresh
    sessions = [Session(factory=first.factory) for _ in range(300)]
    for session in sessions:
        assert session.login().startswith(b"+OK")
        assert session.command(b"QUIT").startswith(b"+OK")
        session.protocol.connectionLost(None)
    # A dict that holds its values in the shared table is about 250 to
    # 300 octets here; one of its own, 832.
    sizes = {sys.getsizeof(vars(s.protocol)) for s in sessions}
    assert max(sizes) < 400, sizes
