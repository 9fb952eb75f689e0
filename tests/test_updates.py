"""
Tests for L{popserv.updates}: a server that stops lets its sessions in
UPDATE reply, release their maildrops and log their audit lines first.
"""

from __future__ import annotations

from typing import Any

from protocol_helpers import DelayedStore, Session
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.ssl import CertificateOptions
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from popserv.memorystore import MemoryStore
from popserv.proxy import ProxyWrappingFactory
from popserv.tap import UPDATE_GRACE, Listener
from popserv.updates import SessionsInUpdate

M1 = b"Subject: one\r\n\r\nfirst\r\n"
M2 = b"Subject: two\r\n\r\nsecond\r\n"


def _outcome(d: Deferred[Any]) -> list[object]:
    results: list[object] = []
    d.addBoth(results.append)
    return results


def test_drainedAtOnceWhenNoneInUpdate() -> None:
    """
    With no session in UPDATE, waiting ends at once, and sets no timer.
    """
    clock = Clock()
    assert _outcome(SessionsInUpdate(clock).drained(10)) == [True]
    assert clock.getDelayedCalls() == []


def test_drainedWhenTheLastEnds() -> None:
    """
    The wait ends when the last session in UPDATE ends, for every caller
    waiting (one per listener), and its timer is cancelled.
    """
    clock = Clock()
    updates = SessionsInUpdate(clock)
    updates.begin()
    updates.begin()
    first, second = _outcome(updates.drained(10)), _outcome(updates.drained(10))
    updates.end()
    assert (first, second, updates.count) == ([], [], 1)
    updates.end()
    assert (first, second, clock.getDelayedCalls()) == ([True], [True], [])


def test_drainedTimesOut() -> None:
    """
    A session still in UPDATE after the timeout (from the first caller)
    ends the wait with False, and says so in the log.
    """
    clock = Clock()
    updates = SessionsInUpdate(clock)
    updates.begin()
    with capturedLogs() as events:
        first = _outcome(updates.drained(10))
        clock.advance(4)
        second = _outcome(updates.drained(10))
        clock.advance(5.9)
        assert (first, second) == ([], [])
        clock.advance(0.1)
    assert (first, second, clock.getDelayedCalls()) == ([False], [False], [])
    assert [formatEvent(e) for e in events] == [
        "Waiting for 1 sessions to apply their deletions (at most 10 s)",
        "Stopping with 1 sessions still applying their deletions after 10 s:"
        " their clients get no reply",
    ]
    updates.end()  # later: nothing left to fire
    assert updates.count == 0


def _quitPending() -> tuple[Session, DelayedStore, MemoryStore]:
    """
    A session that sent DELE 1 and QUIT, its deletion not yet done.
    """
    memory = MemoryStore()
    memory.deliver("alice", M1)
    memory.deliver("alice", M2)
    store = DelayedStore(memory)
    s = Session(store=store)
    s.send(b"USER alice\r\nPASS secret\r\n")
    store.fireAll()
    s.take()
    s.send(b"DELE 1\r\nQUIT\r\n")
    return s, store, memory


def test_sessionInUpdateUntilItEnds() -> None:
    """
    A session is in UPDATE from QUIT to the end of its connection: a wait
    ends only once its reply is written, its maildrop released and its
    audit line logged.
    """
    s, store, memory = _quitPending()
    updates = s.factory.updates
    assert (updates.count, s.take()) == (1, b"+OK Message 1 deleted\r\n")
    seen: list[tuple[bytes, bool, list[str]]] = []
    with capturedLogs() as events:
        wait = updates.drained(10)
        wait.addCallback(
            lambda _: seen.append(
                (
                    s.transport.value(),
                    s.protocol._maildrop is None,
                    [formatEvent(e) for e in events],
                )
            )
        )
        store.fireAll()  # the deletion is done: the reply, then the close
        assert s.transport.disconnecting and seen == []
        s.protocol.connectionLost(Failure(ConnectionDone()))
    assert memory.messages("alice") == [M2]
    [(written, released, logged)] = seen
    assert (written, released, updates.count) == (b"+OK Bye, 1 deleted, 1 left\r\n", True, 0)
    assert logged[-1].startswith("popserv session: user=alice ip=127.0.0.1 tls=- mechanism=USER")
    assert " dele=1 " in logged[-1]


def test_clientGoneInUpdate() -> None:
    """
    A client that hangs up in UPDATE leaves the session counted until its
    deletions are over.
    """
    s, store, memory = _quitPending()
    s.protocol.connectionLost(Failure(ConnectionDone()))
    assert s.factory.updates.count == 1
    store.fireAll()
    assert (s.factory.updates.count, memory.messages("alice")) == (0, [M2])


def test_onlyQuitInTransactionCounts() -> None:
    """
    A session that quits before logging in, or ends without QUIT, removes
    nothing, and no stop waits for it.
    """
    early = Session()
    assert early.command(b"QUIT") == b"+OK Bye\r\n"
    early.protocol.connectionLost(Failure(ConnectionDone()))
    cut = Session(factory=early.factory)
    cut.login()
    cut.protocol.connectionLost(Failure(ConnectionDone()))
    assert early.factory.updates.count == 0


class _Port:
    def __init__(self) -> None:
        self.listening = True

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 110)

    def stopListening(self) -> None:
        self.listening = False


class _Endpoint:
    def __init__(self) -> None:
        self.port = _Port()

    def listen(self, factory: Any) -> Deferred[_Port]:
        return succeed(self.port)


def test_listenerStopWaitsForUpdates() -> None:
    """
    A listener that stops stops listening, then waits for the sessions in
    UPDATE of the factory it serves, found through TLS and PROXY wrappers.
    """
    s, store, _ = _quitPending()
    served = ProxyWrappingFactory(
        TLSMemoryBIOFactory(CertificateOptions(), False, s.factory), ["127.0.0.1"]
    )
    endpoint = _Endpoint()
    listener = Listener("tcp:110", endpoint, served)
    assert listener.grace == UPDATE_GRACE
    listener.privilegedStartService()
    stopped = _outcome(listener.stopService())
    assert (endpoint.port.listening, stopped) == (False, [])
    store.fireAll()
    s.protocol.connectionLost(Failure(ConnectionDone()))
    assert stopped == [True]


def test_listenerStopGivesUp() -> None:
    """
    The wait is bounded by the listener's grace.
    """
    clock = Clock()
    memory = MemoryStore()
    memory.deliver("alice", M1)
    store = DelayedStore(memory)
    s = Session(store=store, clock=clock)
    s.send(b"USER alice\r\nPASS secret\r\n")
    store.fireAll()
    s.send(b"DELE 1\r\nQUIT\r\n")
    listener = Listener("tcp:110", _Endpoint(), s.factory, grace=3)
    listener.privilegedStartService()
    stopped = _outcome(listener.stopService())
    clock.advance(3)
    assert stopped == [False]


def test_sessionsCutByShutdown() -> None:
    """
    Sessions the reactor cuts as it shuts down are logged with
    reason=shutdown; those whose clients left before, with
    reason=disconnected.  The factory watches for the shutdown from when
    it starts (a listener starts it), once however often it starts.
    """
    reactor = MemoryReactorClock()
    first = Session(clock=reactor)  # type: ignore[arg-type]
    factory = first.factory
    factory.doStart()
    factory.doStop()
    factory.doStart()
    assert reactor.triggers["before"]["shutdown"] == [(factory._shuttingDown, (), {})]
    first.login()
    with capturedLogs() as events:
        first.protocol.connectionLost(Failure(ConnectionDone()))
        second = Session(factory=factory)
        second.login()
        for call, args, kwargs in reactor.triggers["before"]["shutdown"]:
            call(*args, **kwargs)
        second.protocol.connectionLost(Failure(ConnectionDone()))
    reasons = [formatEvent(e).rsplit(" reason=", 1)[1] for e in events if "session" in e]
    assert reasons == ["disconnected", "shutdown"]
