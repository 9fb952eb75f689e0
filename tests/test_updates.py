"""
Tests for L{popserv.updates}: a server that stops lets its sessions in
UPDATE reply, release their maildrops and log their audit lines first.
"""

from __future__ import annotations

from typing import Any

import pytest
from protocol_helpers import DelayedStore, MaildropOver, Session
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure

from popserv.errors import DeletionFailed
from popserv.memorystore import MemoryStore
from popserv.policy import MemoryHistory, SitePolicy, UserPolicy
from popserv.protocol import POP3ServerFactory
from popserv.realm import MaildropRealm
from popserv.updates import UPDATE_GRACE, SessionsInUpdate

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
    # At the reactor's next turn, not inside the session's own callbacks.
    assert (first, second) == ([], [])
    clock.advance(0)
    assert (first, second, clock.getDelayedCalls()) == ([True], [True], [])


def test_drainedWaitsForOneThatBeganMeanwhile() -> None:
    """
    A session that enters UPDATE after the last one ended, before the wait
    ended (a QUIT in the same turn), is waited for too, until the same
    deadline.
    """
    clock = Clock()
    clock.advance(1000)  # a reactor's clock does not start at 0
    updates = SessionsInUpdate(clock)
    updates.begin()
    waited = _outcome(updates.drained(10))
    clock.advance(4)
    updates.end()
    updates.begin()
    clock.advance(0)
    assert waited == []
    clock.advance(5.9)
    assert waited == []
    clock.advance(0.1)
    assert (waited, updates.count) == ([False], 1)


def test_globalReactorByDefault() -> None:
    """
    Without a clock given, the wait runs on the global reactor (here its
    due calls are run by hand): a session that began meanwhile is waited
    for too, and the last one's end ends the wait.
    """
    from twisted.internet import reactor

    updates = SessionsInUpdate()
    updates.begin()
    with capturedLogs() as events:
        waited = _outcome(updates.drained(10))
        updates.end()
        updates.begin()
        reactor.runUntilCurrent()  # type: ignore[attr-defined]
        assert waited == []
        updates.end()
        reactor.runUntilCurrent()  # type: ignore[attr-defined]
    assert (waited, updates._timer) == ([True], None)
    assert [formatEvent(e) for e in events] == [
        "Waiting for 1 sessions to apply their deletions (at most 10 s)"
    ]


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
    return _quitPendingOn(Clock())


def _quitPendingOn(clock: Clock) -> tuple[Session, DelayedStore, MemoryStore]:
    """
    L{_quitPending}, its factory on C{clock}.
    """
    memory = MemoryStore()
    memory.deliver("alice", M1)
    memory.deliver("alice", M2)
    store = DelayedStore(memory)
    s = Session(store=store, clock=clock)
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
        assert seen == []  # at the reactor's next turn
        s.clock.advance(0)
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


class _Reactor(MemoryReactorClock):
    """
    A memory reactor whose shutdown triggers can be removed, and fired.
    """

    def __init__(self) -> None:
        super().__init__()
        self.shutdownTriggers: dict[int, tuple[str, Any]] = {}
        self._added = 0

    def addSystemEventTrigger(self, phase: str, event: str, f: Any, *args: Any, **kw: Any) -> Any:
        assert (event, args, kw) == ("shutdown", (), {})
        self._added += 1
        self.shutdownTriggers[self._added] = (phase, f)
        return self._added

    def removeSystemEventTrigger(self, triggerID: Any) -> None:
        del self.shutdownTriggers[triggerID]

    def shutDown(self) -> list[object]:
        """
        Fire the "before" shutdown triggers: what each returned.
        """
        befores = [f for phase, f in self.shutdownTriggers.values() if phase == "before"]
        return [_outcome(f()) for f in befores]


def test_factoryWatchesShutdownWhileListening() -> None:
    """
    A factory waits in the reactor's shutdown from when its first listener
    starts it to when its last stops it: one trigger, however often it
    starts, and none left once it stops (the reactor would keep it alive).
    """
    reactor = _Reactor()
    factory = Session(clock=reactor).factory  # type: ignore[arg-type]
    assert reactor.shutdownTriggers == {}
    for _ in range(3):
        factory.doStart()
        factory.doStart()  # a second listener
        assert list(reactor.shutdownTriggers.values()) == [("before", factory._shuttingDown)]
        factory.doStop()
        factory.doStop()
        assert reactor.shutdownTriggers == {}


def test_factoryOnAClockThatIsNoReactor() -> None:
    """
    A factory whose clock is no reactor (a test's Clock) has no shutdown
    to wait in: it starts and stops without one.
    """
    factory = Session(clock=Clock()).factory
    factory.doStart()
    factory.doStop()
    assert factory._shutdownTrigger is None


def test_factoryWithoutClockWatchesTheGlobalReactor() -> None:
    """
    A factory given no clock (as twistd's is) waits in the global
    reactor's shutdown while it listens, and leaves it when it stops.
    """
    factory = POP3ServerFactory(Portal(MaildropRealm(MemoryStore())))
    factory.doStart()
    try:
        assert factory._shutdownTrigger is not None
    finally:
        factory.doStop()
    assert factory._shutdownTrigger is None


def test_shutdownWaitsForUpdates() -> None:
    """
    The reactor's shutdown waits for the sessions in UPDATE: the sessions it
    then cuts are logged with reason=shutdown; those that ended before, or
    while it waited, with reason=disconnected; one that ends of itself
    after the wait (QUIT) with its own reason.
    """
    reactor = _Reactor()
    memory = MemoryStore()
    memory.deliver("alice", M1)
    store = DelayedStore(memory)
    quitting = Session(store=store, clock=reactor)  # type: ignore[arg-type]
    factory = quitting.factory
    factory.doStart()
    quitting.send(b"USER alice\r\nPASS secret\r\n")
    store.fireAll()
    quitting.send(b"DELE 1\r\nQUIT\r\n")
    memory.deliver("bob", M2)
    leaving, staying = Session(factory=factory), Session(factory=factory)
    late = Session(factory=factory)
    with capturedLogs() as events:
        [stopped] = reactor.shutDown()
        assert (stopped, factory.stopping) == ([], False)
        leaving.protocol.connectionLost(Failure(ConnectionDone()))  # its client left
        store.fireAll()
        quitting.protocol.connectionLost(Failure(ConnectionDone()))
        reactor.advance(0)
        assert (stopped, factory.stopping) == ([None], True)
        # A session that ends of itself meanwhile keeps its own reason:
        assert late.command(b"QUIT") == b"+OK Bye\r\n"
        late.protocol.connectionLost(Failure(ConnectionDone()))
        # The reactor cuts the rest:
        staying.protocol.connectionLost(Failure(ConnectionDone()))
    reasons = [formatEvent(e).rsplit(" reason=", 1)[1] for e in events if "session" in e]
    assert reasons == ["disconnected", "quit", "quit", "shutdown"]
    assert (factory.updateGrace, memory.messages("alice")) == (UPDATE_GRACE, [])
    # As docs/operating.rst tells the operator: "for at most 10 seconds".
    assert UPDATE_GRACE == 10.0
    # The trigger fired: stopping the factory now removes nothing.
    factory.doStop()
    assert len(reactor.shutdownTriggers) == 1


def test_shutdownWaitBounded() -> None:
    """
    The wait in the shutdown ends after the factory's updateGrace.
    """
    reactor = _Reactor()
    s, _, _ = _quitPendingOn(reactor)
    s.factory.updateGrace = 3
    s.factory.doStart()
    [stopped] = reactor.shutDown()
    reactor.advance(2.9)
    assert stopped == []
    reactor.advance(0.1)
    assert (stopped, s.factory.updates.count) == ([None], 1)


class _FailingHistory(MemoryHistory):
    def retrievals(self, user: str) -> Deferred[dict[str, float]]:
        return fail(OSError("history gone"))


def _deleteRaising(error: Exception, synchronous: bool) -> Any:
    class Raising(MaildropOver):
        def deleteMessages(self, indexes: Any) -> Any:
            if synchronous:
                raise error
            return fail(error)

    return Raising


#: Every way a session ends: its commands, and what it needs.
PATHS: dict[str, dict[str, Any]] = {
    "quit-in-authorization": {"script": [b"QUIT"], "login": False},
    "hang-up-in-transaction": {"script": []},
    "quit-no-deletions": {"script": [b"QUIT"]},
    "quit-deletions": {"script": [b"DELE 1", b"QUIT"]},
    "deletion-failed": {
        "script": [b"DELE 1", b"QUIT"],
        "wrap": _deleteRaising(DeletionFailed([0]), False),
    },
    "deletion-fault": {
        "script": [b"DELE 1", b"QUIT"],
        "wrap": _deleteRaising(RuntimeError("x"), False),
    },
    "deletion-fault-raised": {
        "script": [b"DELE 1", b"QUIT"],
        "wrap": _deleteRaising(RuntimeError("x"), True),
    },
    "expire-0": {"script": [b"RETR 1", b"QUIT"], "policy": SitePolicy(UserPolicy(None, 0))},
    "expire-days": {"script": [b"RETR 1", b"QUIT"], "policy": SitePolicy(UserPolicy(None, 1))},
    "expire-history-fails": {
        "script": [b"RETR 1", b"QUIT"],
        "policy": SitePolicy(UserPolicy(None, 1), history=_FailingHistory()),
    },
    "bad-commands": {"script": [b"XYZZY"] * 12},
    "sasl-plain-quit": {"script": [b"AUTH PLAIN AGFsaWNlAHNlY3JldA==", b"QUIT"], "login": False},
}


@pytest.mark.parametrize("name", list(PATHS))
def test_updateCountPairs(name: str) -> None:
    """
    However a session ends, it is out of UPDATE and its maildrop released
    once its connection is gone: a shutdown never waits for it in vain.
    """
    path = PATHS[name]
    s = Session(**({"policy": path["policy"]} if "policy" in path else {}))
    if "wrap" in path:
        s.wrapMaildrops(path["wrap"])
    s.memory.deliver("alice", b"Subject: x\r\n\r\nbody\r\n")
    if path.get("login", True):
        assert s.login().startswith(b"+OK Logged in")
    for line in path["script"]:
        s.command(line)
    s.protocol.connectionLost(Failure(ConnectionDone()))
    assert (s.factory.updates.count, s.protocol._maildrop) == (0, None)


def test_outOfUpdateOnceTheReplyLeftOverTLS(ca: Any) -> None:
    """
    Over TLS the connection closes only once the client's close_notify has
    come: a session that sent QUIT is out of UPDATE once its socket has
    taken the reply (L{POP3Protocol._bye}), and its connection's end later
    does not count it out a second time (a count below zero would make the
    next shutdown wait its whole grace for no session).
    """
    import select

    from loopback import Connection, afterSTLS
    from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
    from twisted.cred.portal import Portal

    from popserv.protocol import POP3ServerFactory
    from popserv.realm import MaildropRealm
    from popserv.tls import ReloadableTLS, TLSFiles

    memory = MemoryStore()
    memory.deliver("alice", M1)
    memory.deliver("alice", M2)
    issued = ca.issue("localhost", ["localhost"])
    portal = Portal(
        MaildropRealm(memory), [InMemoryUsernamePasswordDatabaseDontUse(alice=b"secret")]
    )
    tls = ReloadableTLS(TLSFiles(str(issued.certificate), str(issued.key)))
    factory = POP3ServerFactory(portal, clock=Clock(), tls=tls)
    c = Connection(factory.buildProtocol(None))
    try:
        client = afterSTLS(c)
        client.tls.write(b"USER alice\r\nPASS secret\r\nDELE 1\r\nQUIT\r\n")
        c.client.sendall(client.outgoing.read())
        assert select.select([c.transport.socket], [], [], 5)[0]
        c.transport.doRead()
        assert (factory.updates.count, c.protocol._updating) == (1, True)  # the reply is unsent
        _, clear = client.receive()
        assert clear == (
            b"+OK Send PASS\r\n+OK Logged in, 2 messages (47 octets)\r\n"
            b"+OK Message 1 deleted\r\n+OK Bye, 1 deleted, 1 left\r\n"
        )
        assert (factory.updates.count, c.protocol._updating) == (0, False)
        c.protocol.connectionLost(Failure(ConnectionDone()))
        assert factory.updates.count == 0
    finally:
        c.close()
    assert memory.messages("alice") == [M2]
