"""
Tests for popserv.limits and their use by the protocol: the failed-login
penalty, connection limits, login and stall timeouts, bad commands.
"""

from __future__ import annotations

import base64
import os
from typing import Any

import pytest
from protocol_helpers import Session, SlowChecker
from synchronous import FakeTime
from test_protocol import PausingTransport
from twisted.cred.portal import Portal
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent

from popserv.addresses import penaltyKey
from popserv.limits import ConnectionCounter, Exemptions, Limits, LoginGate, PenaltyBox
from popserv.memorystore import MemoryStore
from popserv.protocol import POP3ServerFactory
from popserv.realm import MaildropRealm

FAILED = b"-ERR [AUTH] Authentication failed\r\n"


def test_penaltyDoublesToMaximum() -> None:
    """
    After each failure from an address its next attempt waits 2, 4, 8,
    then at most 15 seconds; success or an hour's quiet clears it.
    """
    clock = FakeTime(0.0)
    box = PenaltyBox(clock=clock)
    delays = []
    for _ in range(6):
        delays.append(box.delay("192.0.2.1"))
        box.failed("192.0.2.1")
    assert delays == [0, 2, 4, 8, 15, 15]
    assert box.delay("192.0.2.2") == 0
    box.succeeded("192.0.2.1")
    assert box.delay("192.0.2.1") == 0
    box.failed("192.0.2.1")
    box.failed("192.0.2.1")
    clock.now += 3601
    assert box.delay("192.0.2.1") == 0


def test_penaltyBounded() -> None:
    """
    The box remembers a bounded number of addresses.
    """
    box = PenaltyBox(capacity=3)
    for i in range(10):
        box.failed(f"192.0.2.{i}")
        box.failed(f"192.0.2.{i}")
    assert box.delay("192.0.2.0") == 0
    assert box.delay("192.0.2.9") == 4


def test_penaltyForgetsLeastRecentlyFailing() -> None:
    """
    The box holds C{capacity} addresses; past that, the one whose last
    failure is oldest is forgotten, not one that failed again lately.
    """
    box = PenaltyBox(clock=FakeTime(0.0), capacity=3)
    for address in ("192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.1"):
        box.failed(address)
    assert [box.delay(f"192.0.2.{i}") for i in (1, 2, 3)] == [4, 2, 2]
    box.failed("192.0.2.4")
    assert [box.delay(f"192.0.2.{i}") for i in (1, 2, 3, 4)] == [4, 0, 2, 2]


def test_connectionCounter() -> None:
    """
    Connections are refused past the total and per-address limits, and
    admitted again once others end.
    """
    counter = ConnectionCounter(Limits(maxConnections=3, maxConnectionsPerAddress=2))
    assert counter.admit("a") is None and counter.admit("a") is None
    assert counter.admit("a") == "Too many connections from your address"
    assert counter.admit("b") is None
    assert counter.admit("c") == "Too many connections, try again later"
    counter.release("a")
    assert counter.admit("a") is None


def test_connectionCounterReleasesOne() -> None:
    """
    A release gives back one connection, of the total and of its address's
    count: the address's other connections still count towards its limit.
    """
    counter = ConnectionCounter(Limits(maxConnections=10, maxConnectionsPerAddress=2))
    assert [counter.admit(address) for address in ("a", "a", "b")] == [None, None, None]
    counter.release("a")
    assert counter.total == 2
    assert counter.admit("a") is None
    assert counter.admit("a") == "Too many connections from your address"


def test_exemptionsLocal() -> None:
    """
    By default this machine's own connections are exempt from the
    per-address limit: loopback, IPv4 or IPv6 or IPv4 written as IPv6, and
    UNIX sockets; nothing else.
    """
    local = Exemptions()
    for address in ("127.0.0.1", "127.255.0.9", "::1", "::ffff:127.0.0.1", "unix"):
        assert address in local, address
    for address in ("192.0.2.1", "::ffff:192.0.2.1", "2001:db8::1", "10.0.0.1", "", "local"):
        assert address not in local, address
    assert str(local) == "local"


@pytest.mark.parametrize(
    ("text", "inside", "outside", "written"),
    [
        ("none", [], ["127.0.0.1", "::1", "unix"], "none"),
        ("10.0.0.0/8", ["10.1.2.3", "::ffff:10.0.0.1"], ["127.0.0.1", "unix"], "10.0.0.0/8"),
        ("local,192.0.2.7", ["unix", "192.0.2.7"], ["192.0.2.8"], "local,192.0.2.7/32"),
        (" 2001:db8::/32 ,local", ["2001:db8::5", "::1"], ["2001:db9::"], "local,2001:db8::/32"),
        # A network written with host bits set is the network that holds it.
        ("192.0.2.7/24", ["192.0.2.200"], ["192.0.3.1", "unix"], "192.0.2.0/24"),
    ],
)
def test_exemptionsParse(text: str, inside: list[str], outside: list[str], written: str) -> None:
    """
    The option's syntax: 'local' and networks, or 'none' alone; written
    back as the option would be.
    """
    exempt = Exemptions.parse(text)
    assert [a for a in inside if a not in exempt] == []
    assert [a for a in outside if a in exempt] == []
    assert str(exempt) == written
    assert Exemptions.parse(written) == exempt


@pytest.mark.parametrize(("cpus", "expected"), [(None, 2), (1, 2), (2, 2), (8, 8)])
def test_concurrentLoginsDefault(
    monkeypatch: pytest.MonkeyPatch, cpus: int | None, expected: int
) -> None:
    """
    By default as many logins are checked at once as there are CPUs, and at
    least 2 (docs/operating.rst, --concurrent-logins); 2 too when the CPU
    count is unknown.
    """
    monkeypatch.setattr(os, "cpu_count", lambda: cpus)
    assert Limits().concurrentLogins == expected


@pytest.mark.parametrize("text", ["", "local,", "none,local", "10.0.0.0/33", "localhost"])
def test_exemptionsParseRefuses(text: str) -> None:
    """
    Anything else is refused, with the item that is wrong.
    """
    with pytest.raises(ValueError, match=r"is not a network|give 'local'"):
        Exemptions.parse(text)


def test_connectionCounterExempt() -> None:
    """
    An exempt address is not refused at the per-address limit, but still
    counts towards the total.
    """
    limits = Limits(maxConnections=4, maxConnectionsPerAddress=1)
    counter = ConnectionCounter(limits)
    assert [counter.admit("127.0.0.1") for _ in range(3)] == [None, None, None]
    assert counter.admit("192.0.2.1") is None
    assert counter.admit("127.0.0.1") == "Too many connections, try again later"
    counter.release("192.0.2.1")
    assert counter.admit("192.0.2.2") is None
    strict = ConnectionCounter(
        Limits(maxConnectionsPerAddress=1, perAddressExempt=Exemptions(False))
    )
    assert strict.admit("127.0.0.1") is None
    assert strict.admit("127.0.0.1") == "Too many connections from your address"


def test_trust() -> None:
    """
    An address is trusted after a successful login, until it fails or a
    day passes.
    """
    clock = FakeTime(0.0)
    box = PenaltyBox(clock=clock)
    assert not box.trusted("192.0.2.1")
    box.succeeded("192.0.2.1")
    assert box.trusted("192.0.2.1")
    box.failed("192.0.2.1")
    assert not box.trusted("192.0.2.1")
    box.succeeded("192.0.2.1")
    clock.now += 86401
    assert not box.trusted("192.0.2.1")


def test_trustCountsFromTheSuccess() -> None:
    """
    The day of trust counts from the successful login, whatever the clock
    read then.
    """
    clock = FakeTime(50_000.0)
    box = PenaltyBox(clock=clock)
    box.succeeded("192.0.2.1")
    clock.now += 86_000
    assert box.trusted("192.0.2.1")
    clock.now += 401
    assert not box.trusted("192.0.2.1")


def test_trustForgetsLeastRecentlySucceeding() -> None:
    """
    The box trusts at most C{capacity} addresses; past that, the one whose
    last successful login is oldest is forgotten.
    """
    box = PenaltyBox(clock=FakeTime(0.0), capacity=2)
    for address in ("192.0.2.1", "192.0.2.2", "192.0.2.1", "192.0.2.3"):
        box.succeeded(address)
    assert [box.trusted(f"192.0.2.{i}") for i in (1, 2, 3)] == [True, False, True]


def _turns(gate: LoginGate, address: str, log: list[str]) -> Deferred[Any]:
    d = gate.enter(address)
    d.addCallback(lambda release: log.append(address) or release)
    return d


def test_gateQueuesTrustedFirst() -> None:
    """
    Past the concurrency limit attempts queue; a trusted address is served
    before untrusted ones that came earlier, each in arrival order; a
    release lets exactly one more in, and releasing twice does nothing.
    """
    clock = Clock()
    box = PenaltyBox(Limits(concurrentLogins=2), clock=clock.seconds)
    box.succeeded("trusted")
    gate = LoginGate(box, clock)
    log: list[str] = []
    first, second = _turns(gate, "a", log), _turns(gate, "b", log)
    waiting = [_turns(gate, name, log) for name in ("c", "d", "trusted")]
    assert log == ["a", "b"] and gate.active == 2 and gate.waiting == 3
    release = first.result
    release()
    release()
    assert log == ["a", "b", "trusted"] and gate.active == 2
    second.result()
    assert log == ["a", "b", "trusted", "c"]
    waiting[2].result()
    waiting[0].result()
    assert log == ["a", "b", "trusted", "c", "d"]
    waiting[1].result()
    assert gate.active == 0 and gate.waiting == 0


def _guesserWaiting(limits: Limits) -> tuple[Clock, LoginGate, list[str], Deferred[Any]]:
    """
    A gate under C{limits} and an address, "guesser", that has failed once
    and now waits for its turn: the clock, the gate, the log of turns
    taken and the wait.
    """
    clock = Clock()
    box = PenaltyBox(limits, clock=clock.seconds)
    gate = LoginGate(box, clock)
    box.failed("guesser")
    log: list[str] = []
    return clock, gate, log, _turns(gate, "guesser", log)


def test_gateWaitsAPenaltyUnderASecond() -> None:
    """
    A penalty shorter than a second (an embedder's L{Limits.penaltyInitial})
    is waited too.
    """
    clock, gate, log, waiting = _guesserWaiting(Limits(penaltyInitial=0.5, concurrentLogins=1))
    clock.advance(0.4)
    assert log == []
    clock.advance(0.1)
    assert log == ["guesser"]
    waiting.result()
    assert gate.active == 0


def test_gatePenaltyAndCancel() -> None:
    """
    An address with failures waits its penalty before it queues; a
    cancelled wait, or a cancelled place in the queue, takes no turn.
    """
    clock, gate, log, waiting = _guesserWaiting(Limits(concurrentLogins=1))
    clock.advance(1.9)
    assert log == []
    waiting.cancel()
    clock.advance(1)
    assert log == [] and gate.active == 0
    waiting.addErrback(lambda f: None)

    holder = _turns(gate, "a", log)
    queued = _turns(gate, "b", log)
    assert gate.waiting == 1
    queued.cancel()
    queued.addErrback(lambda f: None)
    assert gate.waiting == 0
    holder.result()
    assert log == ["a"] and gate.active == 0


class TestProtocol:
    def test_guessNotCheckedDuringPenalty(self) -> None:
        """
        After a failure, the address's next guess is not checked until its
        penalty has passed; a client that hangs up meanwhile cost no check.
        """
        checker = SlowChecker()
        s = Session(checkers=[checker], peer="127.0.0.7")
        s.send(b"USER alice\r\nPASS x\r\n")
        checker.release()
        assert s.take() == b"+OK Send PASS\r\n" + FAILED
        s.send(b"USER alice\r\nPASS y\r\n")
        s.clock.advance(1.9)
        assert checker.pending == []
        s.clock.advance(0.1)
        assert len(checker.pending) == 1
        checker.release()
        assert s.take() == b"+OK Send PASS\r\n" + FAILED
        s.send(b"USER alice\r\nPASS z\r\n")
        s.protocol.connectionLost(None)
        s.clock.advance(60)
        assert checker.pending == []
        assert s.factory.gate.active == 0

    def test_hangUpDuringPenaltyLogsNothing(self) -> None:
        """
        A client that hangs up while its login waits out the penalty ends
        quietly: the cancelled wait is no server fault in the log.
        """
        s = Session(peer="127.0.0.7")
        assert s.login(password=b"x") == FAILED
        s.send(b"USER alice\r\nPASS secret\r\n")
        with capturedLogs() as events:
            s.protocol.connectionLost(None)
            s.clock.advance(2)
        assert [formatEvent(e) for e in events] == [
            "popserv session: user=- ip=127.0.0.7 tls=- mechanism=- retr=0/0 top=0/0"
            " dele=0 left=0/0 duration=0.000 reason=disconnected"
        ]
        assert s.take() == b"+OK Send PASS\r\n"

    def test_guessCheckedAfterHangUpStillCounts(self) -> None:
        """
        A guess whose check had begun when the client hung up counts when
        it fails: the auth-failed line is logged (for fail2ban) and the
        address's next attempt waits its penalty.
        """
        checker = SlowChecker()
        s = Session(checkers=[checker], peer="127.0.0.7")
        s.send(b"USER alice\r\nPASS wrong\r\n")
        s.protocol.connectionLost(None)
        with capturedLogs() as events:
            checker.release()
        assert [formatEvent(e) for e in events] == [
            "popserv auth-failed: user=alice ip=127.0.0.7 mechanism=USER"
        ]
        assert s.factory.penalties.delay("127.0.0.7") == Limits().penaltyInitial

    def test_penaltyOnTheFactoryClock(self) -> None:
        """
        The failed-login penalty counts time on the server's clock (the
        reactor's, here the test's): an hour after a failure the address
        is forgotten, and its next login is checked at once.
        """
        s = Session(peer="127.0.0.7")
        assert s.login(password=b"x") == FAILED
        s.clock.advance(3601)
        later = Session(factory=s.factory, peer="127.0.0.7")
        assert later.login().startswith(b"+OK Logged in")

    def test_floodDoesNotDelayTrustedUser(self) -> None:
        """
        While guesses from many new addresses fill the checks in flight, a
        user who logged in before from their address is checked next, ahead
        of the guesses that queued before them.
        """
        checker = SlowChecker()
        good = Session(checkers=[checker], peer="127.0.1.1", limits=Limits(concurrentLogins=2))
        good.send(b"USER alice\r\nPASS secret\r\n")
        checker.release()
        assert good.take().endswith(b"+OK Logged in, 0 messages (0 octets)\r\n")
        good.command(b"QUIT")
        good.protocol.connectionLost(None)
        guessers = [Session(factory=good.factory, peer=f"127.0.2.{i}") for i in range(1, 6)]
        for guesser in guessers:
            guesser.send(b"USER alice\r\nPASS wrong\r\n")
        assert len(checker.pending) == 2 and good.factory.gate.waiting == 3
        again = Session(factory=good.factory, peer="127.0.1.1")
        again.send(b"USER alice\r\nPASS secret\r\n")
        checker.release()
        assert len(checker.pending) == 2
        assert checker.pending[-1][1].password == b"secret"
        checker.release()
        checker.release()
        assert again.take().endswith(b"+OK Logged in, 0 messages (0 octets)\r\n")
        while checker.pending:
            checker.release()
        assert all(g.take().endswith(FAILED) for g in guessers)
        assert good.factory.gate.active == 0

    def test_penaltyDelaysOnlyTheFailingAddress(self) -> None:
        """
        After a failure, the next failure's reply from that address waits,
        while other clients (a good login from elsewhere) go on at once;
        the third failure closes the session.
        """
        attacker = Session(peer="127.0.0.9")
        assert attacker.login(password=b"x") == FAILED
        assert attacker.login(password=b"y") == b""
        good = Session(peer="127.0.0.1", factory=attacker.factory)
        assert good.login().startswith(b"+OK Logged in")
        attacker.clock.advance(1.9)
        assert attacker.take() == b""
        attacker.clock.advance(0.1)
        assert attacker.take() == FAILED
        assert attacker.login(password=b"z") == b""
        attacker.clock.advance(4)
        assert attacker.take() == FAILED
        assert attacker.transport.disconnecting

    def test_commandsWaitBehindPenalty(self) -> None:
        """
        Commands pipelined behind a penalised failure wait for its reply.
        """
        s = Session()
        s.login(password=b"x")
        s.send(b"USER alice\r\nPASS y\r\nNOOP\r\n")
        assert s.take() == b"+OK Send PASS\r\n"
        s.clock.advance(2)
        assert s.take() == FAILED + b"-ERR Command not valid in this state\r\n"

    def test_goneClientGivesUpItsTurn(self) -> None:
        """
        A client that leaves while its login waits for a turn (all the
        concurrent logins taken) gives up its place in the queue, and one
        that leaves while serving a penalty leaves no timer behind.
        """
        checker = SlowChecker()
        first = Session(checkers=[checker], limits=Limits(concurrentLogins=1))
        gate = first.factory.gate
        first.send(b"USER alice\r\nPASS secret\r\n")
        second = Session(factory=first.factory)
        second.send(b"USER alice\r\nPASS secret\r\n")
        assert (len(checker.pending), gate.waiting) == (1, 1)
        second.protocol.connectionLost(None)
        assert gate.waiting == 0
        checker.release()
        assert first.take() == b"+OK Send PASS\r\n+OK Logged in, 0 messages (0 octets)\r\n"
        first.protocol.connectionLost(None)
        # A penalty's wait:
        s = Session()
        assert s.login(password=b"wrong") == b"-ERR [AUTH] Authentication failed\r\n"
        assert s.login() == b""
        s.protocol.connectionLost(None)
        assert s.clock.getDelayedCalls() == []

    def test_connectionsPerAddress(self) -> None:
        """
        A connection over the per-address limit gets -ERR [SYS/TEMP] and is
        closed at once; other addresses are not affected.
        """
        first = Session(peer="192.0.2.1", limits=Limits(maxConnectionsPerAddress=1))
        second = Session(peer="192.0.2.1", factory=first.factory)
        assert second.greeting == (b"-ERR [SYS/TEMP] Too many connections from your address\r\n")
        assert second.transport.disconnecting
        second.protocol.connectionLost(None)
        assert second.protocol.record.reason == "too-many-connections"
        # The refused connection's end frees no slot: the first still holds
        # its address's one.
        third = Session(peer="192.0.2.1", factory=first.factory)
        assert third.greeting == second.greeting
        third.protocol.connectionLost(None)
        other = Session(peer="192.0.2.2", factory=first.factory)
        assert other.greeting.startswith(b"+OK")
        first.protocol.connectionLost(None)
        assert Session(peer="192.0.2.1", factory=first.factory).greeting.startswith(b"+OK")

    def test_connectionsPerAddressLocal(self) -> None:
        """
        Connections from this machine are not limited per address by
        default (a proxy on the same host brings everyone from 127.0.0.1),
        and are when the exemption is taken away.
        """
        first = Session(limits=Limits(maxConnectionsPerAddress=1))
        assert first.protocol.address == "127.0.0.1"
        second = Session(factory=first.factory)
        assert second.greeting.startswith(b"+OK")
        strict = Session(
            limits=Limits(maxConnectionsPerAddress=1, perAddressExempt=Exemptions(False))
        )
        refused = Session(factory=strict.factory)
        assert refused.greeting == (b"-ERR [SYS/TEMP] Too many connections from your address\r\n")

    def test_loginTimeout(self) -> None:
        """
        A client that does not log in within the login timeout is
        disconnected; after login the ten-minute autologout applies.
        """
        s = Session()
        s.clock.advance(59)
        assert not s.transport.disconnecting
        s.clock.advance(1)
        assert s.transport.disconnecting
        t = Session()
        t.login()
        t.clock.advance(599)
        assert not t.transport.disconnecting
        t.clock.advance(1)
        assert t.transport.disconnecting

    def test_loginTimeoutIsADeadline(self) -> None:
        """
        The login timeout counts from the connection: commands that do not
        log in (CAPA, an AUTH cancelled) do not extend it.  Once logged in,
        every command starts the autologout again.
        """
        s = Session()
        for _ in range(5):
            s.clock.advance(11)
            assert s.command(b"CAPA").startswith(b"+OK")
            assert s.command(b"AUTH PLAIN") == b"+ \r\n"
            assert s.command(b"*") == b"-ERR Authentication cancelled\r\n"
        assert not s.transport.disconnecting
        s.clock.advance(5)
        assert s.transport.disconnecting
        t = Session()
        t.clock.advance(59)
        t.login()
        for _ in range(3):
            t.clock.advance(599)
            assert t.command(b"NOOP") == b"+OK\r\n"
        assert not t.transport.disconnecting
        t.clock.advance(600)
        assert t.transport.disconnecting

    def test_stallTimeout(self) -> None:
        """
        A transfer the client stops reading ends after the stall timeout,
        with nothing deleted, and the log says why (not "autologout").
        """
        s = Session(transport=PausingTransport())
        s.memory.deliver("alice", b"x" * (4 * 1024 * 1024))
        s.login()
        s.command(b"DELE 1")
        s.command(b"RSET")
        s.send(b"RETR 1\r\n")
        s.clock.advance(299)
        assert not s.transport.disconnecting
        with capturedLogs() as events:
            s.clock.advance(1)
        assert s.transport.disconnecting
        assert [formatEvent(e) for e in events] == [
            "The client stopped reading the reply for too long; closing"
        ]
        s.protocol.connectionLost(None)
        assert s.protocol.record.reason == "stalled"
        assert len(s.memory.messages("alice")) == 1

    def test_stallTimeoutOnlyWhileWaiting(self) -> None:
        """
        A message written whole at once leaves the session's timer alone
        (no timeout is started for it); a transfer that has to wait for the
        client switches to the stall timeout, and back to the ten-minute
        autologout once it is done.
        """
        s = Session(transport=PausingTransport(), limits=Limits(stallTimeout=30))
        s.memory.deliver("alice", b"small\n")
        s.memory.deliver("alice", b"x" * (4 * 1024 * 1024))
        s.login()
        started: list[float] = []
        start = s.factory.timeouts.start

        def counting(seconds: float, expire: Any) -> Any:
            started.append(seconds)
            return start(seconds, expire)

        s.factory.timeouts.start = counting  # type: ignore[method-assign]
        assert s.command(b"RETR 1") == b"+OK 7 octets\r\nsmall\r\n.\r\n"
        assert started == []
        s.send(b"RETR 2\r\n")
        assert started == [30]
        # 16 chunks of 256 KB; bounded, so that a transfer that never ends
        # fails the test rather than spinning it forever.
        for _ in range(1000):
            if s.transport.producer is None:
                break
            s.transport.clear()
            s.transport.producer.resumeProducing()
        assert s.transport.producer is None
        # Back to the autologout: a longer wait, set in place (extend).
        assert started == [30]
        s.clock.advance(599)
        assert not s.transport.disconnecting
        s.clock.advance(1)
        assert s.transport.disconnecting

    def test_tooManyBadCommands(self) -> None:
        """
        After 20 unknown or malformed commands the session is closed.
        """
        s = Session()
        for _ in range(19):
            assert s.command(b"XYZZY") == b"-ERR Unknown command\r\n"
        assert s.command(b"XYZZY") == b"-ERR Unknown command\r\n-ERR Too many bad commands\r\n"
        assert s.transport.disconnecting

    def test_closedForBadCommandsStaysSo(self) -> None:
        """
        A session closed for too many bad commands, whose client then
        reads nothing (the close waits for the replies to be sent) until
        the login timeout aborts it, is logged with reason=bad-commands,
        not timeout; nothing behind the closing command is answered.
        """
        s = Session()
        s.send(b"XYZZY\r\n" * 20 + b"CAPA\r\nQUIT\r\n")
        assert s.take() == b"-ERR Unknown command\r\n" * 20 + b"-ERR Too many bad commands\r\n"
        assert s.transport.disconnecting
        s.clock.advance(60)
        s.protocol.connectionLost(None)
        assert s.protocol.record.reason == "bad-commands"

    def test_tooManyAuthFailures(self) -> None:
        """
        The third failed login closes the session, logged with
        reason=auth-failures.
        """
        s = Session(peer="127.0.0.7")
        assert s.login(password=b"x") == FAILED
        for password in (b"y", b"z"):
            s.send(b"USER alice\r\nPASS " + password + b"\r\n")
            s.clock.advance(15)  # the penalty, at most
            assert s.take() == b"+OK Send PASS\r\n" + FAILED
        assert s.transport.disconnecting
        s.protocol.connectionLost(None)
        assert s.protocol.record.reason == "auth-failures"

    def test_cleartextRefusalsCount(self) -> None:
        """
        USER refused on a cleartext connection from another machine counts
        as a bad command: a client repeating it is closed, not answered
        until the login timeout.
        """
        s = Session(peer="192.0.2.1")
        refused = b"-ERR [AUTH] Plaintext authentication disallowed on non-secure connections\r\n"
        for _ in range(19):
            assert s.command(b"USER alice") == refused
        assert s.command(b"USER alice") == refused + b"-ERR Too many bad commands\r\n"
        assert s.transport.disconnecting

    @pytest.mark.parametrize(
        "lines, reply",
        [
            ([b"AUTH PLAIN !!!"], b"-ERR Invalid base64 data\r\n"),
            ([b"AUTH PLAIN AGE="], b"-ERR Malformed SASL response\r\n"),
            ([b"AUTH LOGIN", b"*"], b"-ERR Authentication cancelled\r\n"),
            (
                [b"AUTH SCRAM-SHA-256 " + base64.b64encode(b"junk")],
                b"-ERR Malformed SCRAM message\r\n",
            ),
        ],
    )
    def test_badSASLExchangesCount(self, lines: list[bytes], reply: bytes) -> None:
        """
        Malformed and cancelled SASL exchanges are not failed logins, but
        they count as bad commands: a client could otherwise send them,
        each answered, until the login timeout.
        """
        s = Session()
        for n in range(20):
            for line in lines[:-1]:
                assert s.command(line).startswith(b"+ ")
            answer = s.command(lines[-1])
            if n < 19:
                assert answer == reply
        assert answer == reply + b"-ERR Too many bad commands\r\n"
        assert s.transport.disconnecting
        assert s.protocol.record.reason == "bad-commands"


def test_factoryWithoutClock() -> None:
    """
    A factory given no clock (as twistd's is) keeps its penalties on the
    real time: a failure makes the address's next attempt wait.
    """
    factory = POP3ServerFactory(Portal(MaildropRealm(MemoryStore())))
    factory.penalties.failed("192.0.2.7")
    assert factory.penalties.delay("192.0.2.7") == Limits().penaltyInitial


def test_sessionOnFactoryWithoutClock() -> None:
    """
    A session of a factory given no clock (as twistd's is) is timed on
    the reactor's: it greets, and its audit line has a duration.
    """
    factory = POP3ServerFactory(Portal(MaildropRealm(MemoryStore())))
    protocol = factory.buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    protocol.makeConnection(transport)
    assert transport.value().startswith(b"+OK POP3 server ready")
    with capturedLogs() as events:
        protocol.connectionLost(None)
    [line] = [formatEvent(e) for e in events]
    assert line.startswith("popserv session: user=- ip=127.0.0.1 ") and " duration=" in line


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("unix", "unix"),
        # Each /48 its own key, also neighbours that share a /47; an
        # address written without "::" (no zero group) is parsed too.
        ("2001:db8:1:2::7", "2001:db8:1::/48"),
        ("2001:db8::7", "2001:db8::/48"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1::/48"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("64:ff9b::c633:6401", "198.51.100.1"),
        # Not an address at all: itself, not an error.
        ("not:an:address", "not:an:address"),
    ],
)
def test_penaltyKey(host: str, key: str) -> None:
    """
    Who a failed login is held against: an IPv4 address, an IPv6 /48, or
    the host as it is when it is no IP address.
    """
    assert penaltyKey(host) == key


def test_penaltyPerIPv6Site() -> None:
    """
    IPv6 addresses are penalised per /48, as Dovecot does: a client with a
    /64 (2**64 addresses) cannot start afresh at each guess.  An IPv4
    address written as IPv6 is the IPv4 address; other sites are not
    slowed.
    """
    box = PenaltyBox(clock=FakeTime(0.0))
    box.failed("2001:db8:1:2::7")
    box.failed("2001:db8:1:ffff::1")
    assert box.delay("2001:db8:1:abcd:1234::9") == 4
    assert box.delay("2001:db8:2::7") == 0
    box.failed("::ffff:192.0.2.7")
    assert box.delay("192.0.2.7") == 2
    # NAT64 (RFC 6052): IPv4 clients, one penalty each.
    box.failed("64:ff9b::c633:6401")
    assert box.delay("198.51.100.1") == 2
    assert box.delay("64:ff9b::c633:6402") == 0
    assert box.delay("unix") == 0
    box.succeeded("2001:db8:1::1")
    assert box.delay("2001:db8:1:2::7") == 0
    assert box.trusted("2001:db8:1:9::9")
    assert not box.trusted("2001:db8:2::1")
