"""
Tests for what a session holds: the attributes a POP3Protocol sets, the
size of its instance dict when many clients connect at once, and that an
ended session is freed at once.
"""

from __future__ import annotations

import gc
import sys
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FunctionType
from typing import Any

import pytest
from maildir_helpers import store
from protocol_helpers import Session, SizesUnknownStore
from test_stores_contract import deliverToMaildir

from popserv.limits import Limits
from popserv.maildir import MaildirStore
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
    # 3.14 and 3.15 checked in a Debian sid chroot: 300 instances made
    # before each sets 3 more names hold 832-octet dicts, 216 octets when
    # __init__ sets them, as on 3.11 to 3.13.
    sys.implementation.name != "cpython" or not (3, 11) <= sys.version_info[:2] <= (3, 15),
    reason="the shared attribute table's rules are CPython 3.11 to 3.15's",
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


@pytest.fixture
def collectorOff() -> Iterator[None]:
    """
    The cycle collector stopped for the test, so that only reference
    counting frees objects.
    """
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


UTF8_HEADER = "Subject: Gr\u00fc\u00dfe\r\n\r\nbody\r\n".encode()
DOT_LINE = b"Subject: hi\r\n\r\n.dot\r\n"


def memoryStore(tmp_path: Path) -> MemoryStore:
    store = MemoryStore()
    store.deliver("alice", UTF8_HEADER)
    store.deliver("alice", DOT_LINE)
    return store


def sizesUnknownStore(tmp_path: Path) -> SizesUnknownStore:
    return SizesUnknownStore(memoryStore(tmp_path))


def maildirStore(tmp_path: Path) -> MaildirStore:
    deliverToMaildir(tmp_path / "alice", UTF8_HEADER, name="1.a")
    deliverToMaildir(tmp_path / "alice", DOT_LINE, name="2.b")
    return store(tmp_path)


@pytest.mark.parametrize("makeStore", [memoryStore, sizesUnknownStore, maildirStore])
@pytest.mark.parametrize("utf8", [False, True], ids=["ascii", "utf8"])
@pytest.mark.usefixtures("collectorOff")
def test_endedSessionFreedAtOnce(
    tmp_path: Path, makeStore: Callable[[Path], Any], utf8: bool
) -> None:
    """
    An ended session leaves no reference cycle: its protocol, and with it
    the listing of the maildrop, is freed as soon as the connection is
    gone.  Held in a cycle, it would wait for the cycle collector, which
    for objects that have aged into its oldest generation can be a long
    time on a busy server, and for a large maildrop that is megabytes.
    """
    session = Session(store=makeStore(tmp_path))
    if utf8:
        assert session.command(b"UTF8").startswith(b"+OK")
    assert session.login().startswith(b"+OK")
    for line in (b"STAT", b"LIST", b"UIDL", b"RETR 1", b"TOP 2 0", b"DELE 2", b"QUIT"):
        assert session.command(line).startswith(b"+OK"), line
    session.protocol.connectionLost(None)
    protocol = weakref.ref(session.protocol)
    del session
    assert protocol() is None


def _reachable(root: object, stop: set[int], bound: int = 50_000) -> dict[int, object]:
    """
    The objects C{root} refers to, directly or not, by id, not going
    through classes, modules, functions (whose globals are a module's) or
    the ids in C{stop}.  Fails if there are more than C{bound}: the walk
    has escaped into the process's globals, and would find what other
    tests left there.
    """
    found: dict[int, object] = {}
    todo = [root]
    while todo:
        assert len(found) < bound, "the walk reached the process's globals"
        for referent in gc.get_referents(todo.pop()):
            if id(referent) in found or id(referent) in stop:
                continue
            if isinstance(referent, (type, type(sys), FunctionType)):
                continue
            found[id(referent)] = referent
            todo.append(referent)
    return found


def test_idleMaildirSessionHoldsNoDicts(tmp_path: Path) -> None:
    """
    What a logged-in Maildir session keeps of its own while it waits for
    its next command (its maildrop, listing, index, transaction, timer,
    audit record and read-ahead) is made of objects without an instance
    dict: a dict costs 100 to 300 octets a session, against a target of
    4 KB for all of it (docs/performance.rst).  Objects every session of
    the server shares (the factory, the store, the states) are left out:
    found from a second session too.
    """
    for user in ("alice", "bob"):
        for n in range(3):
            deliverToMaildir(tmp_path / user, DOT_LINE, name=f"{n}.{user}")
    users = {b"alice": b"secret", b"bob": b"secret"}
    first = Session(store=store(tmp_path), users=users)
    second = Session(factory=first.factory)
    for session, user in ((first, b"alice"), (second, b"bob")):
        assert session.login(user).startswith(b"+OK")
        for line in (b"STAT", b"UIDL", b"RETR 1", b"DELE 2"):
            assert session.command(line).startswith(b"+OK"), line
    shared = _reachable(second.protocol, {id(first.protocol)})
    own = _reachable(first.protocol, set(shared) | {id(first.transport)})
    popservObjects = [o for o in own.values() if type(o).__module__.startswith("popserv.")]
    names = {type(o).__qualname__ for o in popservObjects}
    # The parts named above, each found (else the walk missed them).  The
    # timer is not among them: the server's one queue of timers holds it,
    # so the second session reaches it too (test_timeouts checks it).
    assert {"MaildirMaildrop", "MaildirIndex", "Transaction", "_ReadAhead"} <= names
    assert [type(o).__qualname__ for o in popservObjects if hasattr(o, "__dict__")] == []
