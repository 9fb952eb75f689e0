"""
The sessions in the UPDATE state, so that a server stopping lets them end.

A session that receives C{QUIT} in the TRANSACTION state enters UPDATE
(RFC 1939 section 6): it removes the messages marked as deleted, replies
and closes.  The removal runs in a worker thread.  Were the server to stop
then, Twisted would cut every connection at once (the reactor's
C{disconnectAll}) and then wait for the worker threads: the removal would
finish, but its result would come back to a reactor that no longer runs,
so the client would never get the reply that tells it its mail was
removed, and the session's audit line would never be written.

So when the reactor shuts down, each L{popserv.protocol.POP3ServerFactory}
that is listening first waits for its sessions in UPDATE, a bounded time
(L{SessionsInUpdate.drained}): every one of them applies its deletions and
sends its reply, as if the server were not stopping.  Meanwhile the other
sessions go on as usual (one that sends C{QUIT} is waited for too); those
still open when the wait ends are cut, and remove nothing, as RFC 1939
section 6 has it for a session that ends without C{QUIT}.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from popserv.clock import reactorTime

#: How long a factory waits for its sessions in UPDATE when the reactor
#: shuts down, in seconds.
UPDATE_GRACE = 10.0


class SessionsInUpdate:
    """
    Counts the sessions of a factory that are in UPDATE: from C{QUIT} until
    their reply has left for the client (or their connection is gone).
    """

    __slots__ = ("_clock", "_deadline", "_timeout", "_timer", "_waiting", "count")

    _log = Logger()

    def __init__(self, clock: IReactorTime | None = None) -> None:
        """
        @param clock: what L{drained} times out on; the global reactor if
            L{None}.
        """
        self._clock = clock
        self._waiting: list[Deferred[bool]] = []
        self._timer: IDelayedCall | None = None
        self._deadline = 0.0
        self._timeout = 0.0
        #: Sessions in UPDATE now.
        self.count = 0

    def begin(self) -> None:
        """
        A session entered UPDATE.
        """
        self.count += 1

    def end(self) -> None:
        """
        A session that entered UPDATE is out of it.
        """
        self.count -= 1
        if not self.count and self._timer is not None:
            # From the reactor, not from here: what the waiters go on to do
            # (a shutdown, which cuts every connection) must not run inside
            # the session's own callbacks.
            self._timer.cancel()
            self._timer = reactorTime(self._clock).callLater(0, self._check)

    def drained(self, timeout: float) -> Deferred[bool]:
        """
        Wait until no session is in UPDATE, at most C{timeout} seconds from
        the first of the calls that wait together.

        @return: a Deferred firing with C{True} once none is (at once if
            none is now), or with C{False} if some still were in time.
        """
        if not self.count:
            return succeed(True)
        d: Deferred[bool] = Deferred()
        self._waiting.append(d)
        if self._timer is None:
            self._log.info(
                "Waiting for {count} sessions to apply their deletions (at most {timeout} s)",
                count=self.count,
                timeout=timeout,
            )
            clock = reactorTime(self._clock)
            self._deadline = clock.seconds() + timeout
            self._timeout = timeout
            self._timer = clock.callLater(timeout, self._timedOut)
        return d

    def _check(self) -> None:
        if not self.count:
            self._fire(True)
        else:
            # One more began since (a QUIT meanwhile): wait for it too.
            clock = reactorTime(self._clock)
            self._timer = clock.callLater(
                max(0.0, self._deadline - clock.seconds()), self._timedOut
            )

    def _timedOut(self) -> None:
        self._log.warn(
            "Stopping with {count} sessions still applying their deletions"
            " after {timeout} s: their clients get no reply",
            count=self.count,
            timeout=self._timeout,
        )
        self._fire(False)

    def _fire(self, result: bool) -> None:
        waiting, self._waiting, self._timer = self._waiting, [], None
        for d in waiting:
            d.callback(result)
