"""
Tests for popserv.limits and their use by the protocol: the failed-login
penalty, connection limits, login and stall timeouts, bad commands.
"""

from __future__ import annotations

from protocol_helpers import Session
from synchronous import FakeTime
from test_protocol import PausingTransport

from popserv.limits import ConnectionCounter, Limits, PenaltyBox

FAILED = b"-ERR [AUTH] Authentication failed\r\n"


def test_penaltyDoublesToMaximum() -> None:
    """
    Each failure from an address waits 2, 4, 8, then at most 15 seconds
    before its reply; success or an hour's quiet clears it.
    """
    clock = FakeTime(0.0)
    box = PenaltyBox(clock=clock)
    assert [box.failed("192.0.2.1") for _ in range(6)] == [0, 2, 4, 8, 15, 15]
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


class TestProtocol:
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

    def test_connectionsPerAddress(self) -> None:
        """
        A connection over the per-address limit gets -ERR [SYS/TEMP] and is
        closed at once; other addresses are not affected.
        """
        first = Session(limits=Limits(maxConnectionsPerAddress=1))
        second = Session(factory=first.factory)
        assert second.greeting == (b"-ERR [SYS/TEMP] Too many connections from your address\r\n")
        assert second.transport.disconnecting
        second.protocol.connectionLost(None)
        other = Session(peer="127.0.0.2", factory=first.factory)
        assert other.greeting.startswith(b"+OK")
        first.protocol.connectionLost(None)
        assert Session(factory=first.factory).greeting.startswith(b"+OK")

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

    def test_stallTimeout(self) -> None:
        """
        A transfer the client stops reading ends after the stall timeout,
        with nothing deleted.
        """
        s = Session(transport=PausingTransport())
        s.memory.deliver("alice", b"x" * (4 * 1024 * 1024))
        s.login()
        s.command(b"DELE 1")
        s.command(b"RSET")
        s.send(b"RETR 1\r\n")
        s.clock.advance(299)
        assert not s.transport.disconnecting
        s.clock.advance(1)
        assert s.transport.disconnecting
        s.protocol.connectionLost(None)
        assert len(s.memory.messages("alice")) == 1

    def test_tooManyBadCommands(self) -> None:
        """
        After 20 unknown or malformed commands the session is closed.
        """
        s = Session()
        for _ in range(19):
            assert s.command(b"XYZZY") == b"-ERR Unknown command\r\n"
        assert s.command(b"XYZZY") == b"-ERR Unknown command\r\n-ERR Too many bad commands\r\n"
        assert s.transport.disconnecting
