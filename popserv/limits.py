"""
Abuse resistance: the failed-login penalty per source address and the
connection limits.  Pure bookkeeping with an injectable clock; the protocol
applies the answers without blocking anyone.

The penalty is Dovecot's: after a failed login from an address, the next
failure's reply from that address waits 2 seconds, then 4, 8, up to 15; a
successful login, or an hour without failures, clears it.  Other addresses
are never slowed.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """
    The abuse-resistance settings of a server.

    @ivar penaltyInitial: seconds the first penalised failure waits.
    @ivar penaltyMaximum: the most seconds a failure waits.
    @ivar penaltyForget: seconds without failures after which an address
        starts afresh.
    @ivar maxAuthFailures: failed logins after which a session is closed.
    @ivar maxBadCommands: unknown or malformed commands after which a
        session is closed.
    @ivar maxConnections: connections the server accepts at once.
    @ivar maxConnectionsPerAddress: connections one source address may have
        at once.
    @ivar loginTimeout: seconds a client has to log in (the RFC 1939
        ten-minute autologout applies after login).
    @ivar stallTimeout: seconds a message transfer may make no progress
        because the client does not read.
    """

    penaltyInitial: float = 2.0
    penaltyMaximum: float = 15.0
    penaltyForget: float = 3600.0
    maxAuthFailures: int = 3
    maxBadCommands: int = 20
    maxConnections: int = 1000
    maxConnectionsPerAddress: int = 20
    loginTimeout: float = 60.0
    stallTimeout: float = 300.0


class PenaltyBox:
    """
    Failed logins per source address, and the delay they earn.

    Bounded: at most C{capacity} addresses are remembered, the least
    recently failing forgotten first.
    """

    def __init__(
        self,
        limits: Limits = Limits(),
        clock: Callable[[], float] = time.monotonic,
        capacity: int = 100_000,
    ) -> None:
        self.limits = limits
        self.clock = clock
        self.capacity = capacity
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def _count(self, address: str) -> int:
        entry = self._failures.get(address)
        if entry is None:
            return 0
        count, last = entry
        if self.clock() - last > self.limits.penaltyForget:
            del self._failures[address]
            return 0
        return count

    def delay(self, address: str) -> float:
        """
        Seconds the reply to a failed login from C{address} should wait now,
        given the failures before it.
        """
        count = self._count(address)
        if count == 0:
            return 0.0
        delay = self.limits.penaltyInitial * float(2 ** (count - 1))
        return min(delay, self.limits.penaltyMaximum)

    def failed(self, address: str) -> float:
        """
        Record a failed login from C{address}; the delay its reply should
        wait.
        """
        delay = self.delay(address)
        count = self._count(address) + 1
        self._failures[address] = (count, self.clock())
        self._failures.move_to_end(address)
        while len(self._failures) > self.capacity:
            self._failures.popitem(last=False)
        return delay

    def succeeded(self, address: str) -> None:
        """
        A login from C{address} succeeded: its penalty is cleared.
        """
        self._failures.pop(address, None)


class ConnectionCounter:
    """
    Connections open now, in all and per source address.
    """

    def __init__(self, limits: Limits = Limits()) -> None:
        self.limits = limits
        self.total = 0
        self._perAddress: dict[str, int] = {}

    def admit(self, address: str) -> str | None:
        """
        Count a new connection from C{address}, or say why it is refused
        (and then it is not counted).
        """
        if self.total >= self.limits.maxConnections:
            return "Too many connections, try again later"
        if self._perAddress.get(address, 0) >= self.limits.maxConnectionsPerAddress:
            return "Too many connections from your address"
        self.total += 1
        self._perAddress[address] = self._perAddress.get(address, 0) + 1
        return None

    def release(self, address: str) -> None:
        """
        A connection counted by L{admit} ended.
        """
        self.total -= 1
        left = self._perAddress.get(address, 0) - 1
        if left > 0:
            self._perAddress[address] = left
        else:
            self._perAddress.pop(address, None)
