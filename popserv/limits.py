"""
Abuse resistance: the failed-login penalty per source address, the gate
that login attempts pass before their credentials are checked, and the
connection limits.  Bookkeeping with an injectable clock; the protocol
applies the answers without blocking anyone.

The penalty is Dovecot's: after a failed login from an address, the next
attempt from that address waits 2 seconds before it is even checked, then
4, 8, up to 15; a successful login, or an hour without failures, clears it.
Other addresses are never slowed.

The per-address connection limit leaves out this machine's own addresses
by default (L{Exemptions}), as Postfix's per-client limits leave out
C{$mynetworks}: everything that reaches popserv through a proxy on the same
host (stunnel, a webmail front end) comes from 127.0.0.1, and would
otherwise share one address's allowance.
"""

from __future__ import annotations

import ipaddress
import os
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from popserv.addresses import Network, inNetworks, penaltyKey
from popserv.clock import reactorTime

#: How the protocol names the source of a connection over a UNIX socket.
UNIX_PEER = "unix"


@dataclass(frozen=True)
class Exemptions:
    """
    Source addresses whose connections the per-address limit does not
    refuse (the total limit still counts them).

    @ivar local: whether this machine's own connections are exempt: from a
        loopback address (127.0.0.0/8, ::1) or over a UNIX socket.
    @ivar networks: more exempt networks.

    An IPv4 address written as an IPv6 one (C{::ffff:127.0.0.1}, from a
    dual-stack listener) is judged as the IPv4 address.
    """

    local: bool = True
    networks: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Exemptions:
        """
        From the C{--per-address-exempt} syntax: C{local} and networks
        (C{10.0.0.0/8}; single addresses allowed), comma-separated, or
        C{none} alone.

        @raise ValueError: an item is none of those.
        """
        items = [item.strip() for item in text.split(",")]
        if items == ["none"]:
            return cls(local=False)
        local = False
        networks: list[Network] = []
        for item in items:
            if item == "local":
                local = True
            elif item in ("", "none"):
                raise ValueError(
                    f"{text!r}: give 'local' and networks, comma-separated, or 'none' alone"
                )
            else:
                try:
                    networks.append(ipaddress.ip_network(item, strict=False))
                except ValueError:
                    raise ValueError(f"{item!r} is not a network, nor 'local' or 'none'") from None
        return cls(local, tuple(networks))

    def __contains__(self, address: object) -> bool:
        if address == UNIX_PEER:
            return self.local
        return isinstance(address, str) and inNetworks(address, self.networks, self.local)

    def __str__(self) -> str:
        # As the option is written: twistd --help shows the default so.
        items = ["local"] if self.local else []
        return ",".join(items + [str(network) for network in self.networks]) or "none"


def _defaultConcurrentLogins() -> int:
    # Password hashing is CPU-bound: more checks at once than cores only
    # adds memory (an Argon2id check holds 64 MiB) and makes each slower.
    return max(2, os.cpu_count() or 1)


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
    @ivar perAddressExempt: addresses that L{maxConnectionsPerAddress} does
        not apply to; by default this machine's own (L{Exemptions}).
    @ivar loginTimeout: seconds a client has to log in (the RFC 1939
        ten-minute autologout applies after login).
    @ivar stallTimeout: seconds a message transfer may make no progress
        because the client does not read.
    @ivar concurrentLogins: credentials checked at once; further login
        attempts wait their turn in L{LoginGate}.
    @ivar trustFor: seconds an address with a successful login (and no
        failure since) goes to the front of the L{LoginGate} queue.
    """

    penaltyInitial: float = 2.0
    penaltyMaximum: float = 15.0
    penaltyForget: float = 3600.0
    maxAuthFailures: int = 3
    maxBadCommands: int = 20
    maxConnections: int = 1000
    maxConnectionsPerAddress: int = 20
    perAddressExempt: Exemptions = Exemptions()
    loginTimeout: float = 60.0
    stallTimeout: float = 300.0
    concurrentLogins: int = field(default_factory=_defaultConcurrentLogins)
    trustFor: float = 86400.0


class PenaltyBox:
    """
    Failed logins per source address, and the delay they earn.  IPv6
    addresses count per /48 site (L{penaltyKey}).

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
        self._succeeded: OrderedDict[str, float] = OrderedDict()

    def _count(self, key: str) -> int:
        # (By the address's penaltyKey, which each public method works out
        # once.)
        entry = self._failures.get(key)
        if entry is None:
            return 0
        count, last = entry
        if self.clock() - last > self.limits.penaltyForget:
            del self._failures[key]
            return 0
        return count

    def delay(self, address: str) -> float:
        """
        Seconds a login attempt from C{address} should wait now, before it
        is checked, given the failures before it.
        """
        count = self._count(penaltyKey(address))
        if count == 0:
            return 0.0
        delay = self.limits.penaltyInitial * float(2 ** (count - 1))
        return min(delay, self.limits.penaltyMaximum)

    def failed(self, address: str) -> None:
        """
        Record a failed login from C{address}.
        """
        key = penaltyKey(address)
        self._failures[key] = (self._count(key) + 1, self.clock())
        self._failures.move_to_end(key)
        while len(self._failures) > self.capacity:
            self._failures.popitem(last=False)

    def succeeded(self, address: str) -> None:
        """
        A login from C{address} succeeded: its penalty is cleared, and it is
        trusted for L{Limits.trustFor} seconds.
        """
        key = penaltyKey(address)
        self._failures.pop(key, None)
        self._succeeded[key] = self.clock()
        self._succeeded.move_to_end(key)
        while len(self._succeeded) > self.capacity:
            self._succeeded.popitem(last=False)

    def trusted(self, address: str) -> bool:
        """
        Whether C{address} logged in successfully lately and has not failed
        since.
        """
        key = penaltyKey(address)
        since = self._succeeded.get(key)
        if since is None or self.clock() - since > self.limits.trustFor:
            return False
        return self._count(key) == 0


class LoginGate:
    """
    Where a login attempt waits before its credentials are checked.

     - An address with recent failures first waits its penalty
       (L{PenaltyBox.delay}).  The guess is not checked before then, so a
       guesser who hangs up early to skip the wait saves no time and costs
       the server no hashing.
     - At most L{Limits.concurrentLogins} attempts are checked at once; the
       rest queue, those from L{trusted <PenaltyBox.trusted>} addresses
       first.  A flood of guesses from many new addresses then can neither
       take all the CPU, memory and threads that password hashing needs,
       nor keep a user who logged in before from this address waiting
       behind it.

    L{enter} gives a release callable: call it once the credentials are
    checked (calling it again does nothing).
    """

    def __init__(self, penalties: PenaltyBox, clock: IReactorTime | None = None) -> None:
        self.penalties = penalties
        self._reactorTime = clock
        self.active = 0
        self._trusted: deque[Deferred[Callable[[], None]]] = deque()
        self._others: deque[Deferred[Callable[[], None]]] = deque()

    @property
    def waiting(self) -> int:
        """
        Attempts queued for a turn (not counting those serving a penalty).
        """
        return len(self._trusted) + len(self._others)

    def enter(self, address: str) -> Deferred[Callable[[], None]]:
        """
        Wait for C{address}'s penalty and a turn; fires with the release
        callable.
        """
        delay = self.penalties.delay(address)
        if delay <= 0:
            return self._queue(address)
        # A session that ends meanwhile cancels the wait (or, once queued,
        # its place in the queue: cancel() follows the chain).
        waited: Deferred[Any] = Deferred(lambda d: call.cancel())
        call = reactorTime(self._reactorTime).callLater(delay, waited.callback, None)
        return waited.addCallback(lambda _: self._queue(address))

    def _queue(self, address: str) -> Deferred[Callable[[], None]]:
        if self.active < self.penalties.limits.concurrentLogins:
            self.active += 1
            return succeed(self._releaser())
        line = self._trusted if self.penalties.trusted(address) else self._others

        def cancel(d: Deferred[Callable[[], None]]) -> None:
            line.remove(d)

        turn: Deferred[Callable[[], None]] = Deferred(cancel)
        line.append(turn)
        return turn

    def _releaser(self) -> Callable[[], None]:
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            self.active -= 1
            for line in (self._trusted, self._others):
                if line:
                    self.active += 1
                    line.popleft().callback(self._releaser())
                    return

        return release


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
        count = self._perAddress.get(address, 0)
        if (
            count >= self.limits.maxConnectionsPerAddress
            and address not in self.limits.perAddressExempt
        ):
            # (Asked only at the limit: parsing the address is the dearest
            # step here, and most addresses never reach it.)
            return "Too many connections from your address"
        self.total += 1
        self._perAddress[address] = count + 1
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
