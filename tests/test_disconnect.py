"""
A connection lost in the middle of a multi-line reply, on a real loopback
socket: Twisted stops the reply's producer before it tells the protocol
the connection is gone, and nothing the client pipelined behind the
command may run in between (RFC 1939 section 6: only a QUIT received in a
live session enters the UPDATE state).
"""

from __future__ import annotations

import select
import socket
import time
from typing import Any

import pytest
from loopback import Connection, resetByClient
from protocol_helpers import DelayedStore, MaildropOver, StoreOver, VanishingReader
from test_backlog import read, smallBuffers
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from zope.interface import implementer

from popserv.errors import MessageUnavailable
from popserv.interfaces import IMessageReader
from popserv.memorystore import BytesReader, MemoryStore
from popserv.protocol import POP3ServerFactory
from popserv.realm import MaildropRealm

#: Larger than one read of the transfer: it reads it in parts.
BIG = b"".join(b"line %07d of a long message\r\n" % n for n in range(50_000))
SMALL = b"Subject: small\r\n\r\nhello\r\n"


@implementer(IMessageReader)
class HeldReader:
    """
    Reads as a store's thread does: each read answers only when the test
    says (L{answer}).
    """

    def __init__(self, data: bytes) -> None:
        self._reader = BytesReader(data)
        self.reads: list[tuple[Deferred[bytes], int]] = []

    def read(self, size: int) -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        self.reads.append((d, size))
        return d

    def answer(self) -> None:
        d, size = self.reads.pop(0)
        self._reader.read(size).chainDeferred(d)

    def close(self) -> None:
        self._reader.close()


class HeldMaildrop(MaildropOver):
    """
    A maildrop whose readers are L{HeldReader}s, kept in C{readers}.
    """

    def __init__(self, maildrop: Any, readers: list[HeldReader]) -> None:
        super().__init__(maildrop)
        self.readers = readers

    def openMessage(self, index: int) -> Any:
        def held(reader: BytesReader) -> HeldReader:
            data = reader.read(len(BIG) * 2).result  # type: ignore[attr-defined]
            self.readers.append(HeldReader(data))
            return self.readers[-1]

        return self._maildrop.openMessage(index).addCallback(held)


def clientReads(c: Connection) -> None:
    """
    Let the server send all it holds, the client reading it.
    """
    for _ in range(10_000):
        if not c.waiting():
            return
        c.transport.doWrite()
        c.receivedNow(wait=0.01)
    raise AssertionError("the server never sent what it held")


def midReply(command: bytes) -> tuple[Connection, MemoryStore, HeldReader]:
    """
    A logged-in session on a loopback connection with small buffers that
    has pipelined C{command} (a long RETR or TOP), DELE 1, DELE 2 and QUIT:
    the reply's first part has gone out and the client has read it, the
    store's next read waits (the reader's one pending read).
    """
    store = MemoryStore()
    store.deliver("alice", BIG)
    store.deliver("alice", SMALL)
    readers: list[HeldReader] = []
    portal = Portal(
        MaildropRealm(StoreOver(store, lambda maildrop: HeldMaildrop(maildrop, readers))),
        [InMemoryUsernamePasswordDatabaseDontUse(alice=b"secret")],
    )
    c = Connection(POP3ServerFactory(portal, clock=Clock()).buildProtocol(None))
    try:
        smallBuffers(c)
        c.reactor.advance(0)
        assert c.receivedNow(wait=5).startswith(b"+OK POP3 server ready")
        c.client.sendall(b"USER alice\r\nPASS secret\r\n")
        assert read(c, b"+OK Send PASS\r\n+OK Logged in, 2 messages")
        c.client.sendall(command + b"\r\nDELE 1\r\nDELE 2\r\nQUIT\r\n")
        select.select([c.transport.socket], [], [], 5)
        c.transport.doRead()
        [reader] = readers
        reader.answer()  # the first part goes out; the next read waits
        clientReads(c)
        assert len(reader.reads) == 1
    except BaseException:
        c.close()
        raise
    return c, store, reader


def assertNothingRan(c: Connection, store: MemoryStore) -> None:
    assert store.messages("alice") == [BIG, SMALL]
    record = c.protocol.record  # type: ignore[attr-defined]
    assert (record.reason, record.dele) == ("disconnected", 0)


@pytest.mark.parametrize("command", [b"RETR 1", b"TOP 1 100000"])
def test_nothingRunsAfterCutReply(command: bytes) -> None:
    """
    A client that pipelines DELE and QUIT behind a long RETR or TOP and
    resets the connection in the middle of the reply, while the store is
    reading the next part, loses nothing: the DELE and the QUIT never run,
    and the session's audit line says so.
    """
    c, store, _ = midReply(command)
    try:
        resetByClient(c)
        # What the reactor does when a read finds the reset: the transport
        # stops the reply's producer, then tells the protocol.
        lost = c.transport.doRead()
        assert lost is not None
        c.transport.connectionLost(Failure(lost))
        c.reactor.advance(0)
    finally:
        c.close()
    assertNothingRan(c, store)


@pytest.mark.parametrize("error", [OSError(5, "Input/output error"), MessageUnavailable()])
def test_nothingRunsAfterAbortedReply(error: Exception) -> None:
    """
    A store read that fails in the middle of a message (an I/O error, or
    a file another program removed) makes the server abort the connection:
    the DELE and QUIT pipelined behind the cut reply never run, though the
    abort reaches the protocol only on the reactor's next turn.
    """
    c, store, reader = midReply(b"RETR 1")
    try:
        failed, _ = reader.reads.pop(0)
        with capturedLogs():
            failed.errback(error)
        c.reactor.advance(0)  # the abort's connectionLost
        assert not c.transport.connected
    finally:
        c.close()
    assertNothingRan(c, store)


@pytest.mark.parametrize("retrieve", [False, True])
def test_halfCloseAnswersEverything(retrieve: bool) -> None:
    """
    A client that sends its commands and shuts its sending side (a script
    piped into nc -N) before the store has answered the login has every
    command answered, in order, its QUIT applied, and then the connection
    closed.
    """
    memory = MemoryStore()
    memory.deliver("alice", BIG)
    memory.deliver("alice", SMALL)
    store = DelayedStore(memory)
    portal = Portal(
        MaildropRealm(store), [InMemoryUsernamePasswordDatabaseDontUse(alice=b"secret")]
    )
    c = Connection(POP3ServerFactory(portal, clock=Clock()).buildProtocol(None))
    try:
        c.reactor.advance(0)
        assert c.receivedNow(wait=5).startswith(b"+OK POP3 server ready")
        commands = b"USER alice\r\nPASS secret\r\nSTAT\r\n"
        commands += b"RETR 2\r\n" if retrieve else b""
        c.client.sendall(commands + b"DELE 1\r\nQUIT\r\n")
        c.client.shutdown(socket.SHUT_WR)
        # The server reads the commands and the end of input while the
        # store has not yet answered the login.
        deadline = time.monotonic() + 10
        for _ in range(1000):
            assert time.monotonic() < deadline, "the end of input never came"
            select.select([c.transport.socket], [], [], 0.1)
            why = c.transport.doRead()
            if why is not None:
                # What the reactor does at the end of input.
                c.reactor.removeReader(c.transport)
                c.transport.readConnectionLost(Failure(why))
                break
        received = b""
        for _ in range(10_000):
            if time.monotonic() > deadline or not c.transport.connected:
                break
            store.fireAll()
            c.reactor.advance(0)
            if c.waiting():
                why = c.transport.doWrite()
                if why is not None:
                    c.transport.connectionLost(Failure(why))
            received += c.receivedNow()
        received += c.receivedNow(wait=1)
        closed = not c.transport.connected
    finally:
        c.close()
    assert closed
    assert received.endswith(b"+OK Message 1 deleted\r\n+OK Bye, 1 deleted, 1 left\r\n")
    assert b"+OK Logged in, 2 messages" in received
    assert memory.messages("alice") == [SMALL]


def test_nothingRunsInTheSameReadAfterAbort() -> None:
    """
    A store read that fails at once in the middle of a message aborts the
    connection while the read that brought the RETR is still being split
    into lines; Twisted's TCP transport, aborting, is not "disconnecting",
    so it is the session that must run none of the DELE and QUIT that came
    in that same read.
    """

    class FailingMaildrop(MaildropOver):
        def openMessage(self, index: int) -> Any:
            return succeed(VanishingReader(lambda size: b"Subject: big\r\n\r\nthe start\r\n"))

    store = MemoryStore()
    store.deliver("alice", BIG)
    store.deliver("alice", SMALL)
    portal = Portal(
        MaildropRealm(StoreOver(store, FailingMaildrop)),
        [InMemoryUsernamePasswordDatabaseDontUse(alice=b"secret")],
    )
    c = Connection(POP3ServerFactory(portal, clock=Clock()).buildProtocol(None))
    try:
        c.reactor.advance(0)
        assert c.receivedNow(wait=5).startswith(b"+OK POP3 server ready")
        c.client.sendall(b"USER alice\r\nPASS secret\r\n")
        assert read(c, b"+OK Send PASS\r\n+OK Logged in, 2 messages")
        c.client.sendall(b"RETR 1\r\nDELE 1\r\nDELE 2\r\nQUIT\r\n")
        select.select([c.transport.socket], [], [], 5)
        with capturedLogs():
            c.transport.doRead()
        c.reactor.advance(0)  # the abort's connectionLost
        assert not c.transport.connected
    finally:
        c.close()
    assertNothingRan(c, store)
