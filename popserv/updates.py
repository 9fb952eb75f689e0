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

So a server stopping first stops listening, then waits for the sessions
already in UPDATE to end (L{SessionsInUpdate.drained}), a bounded time:
every one of them replies, closes and logs its line, as if the server were
not stopping.  Sessions in any other state are cut when it stops, and
remove nothing, as RFC 1939 section 6 has it for a session that ends
without C{QUIT}.  L{popserv.tap.Listener} does this when it stops.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from popserv.clock import reactorTime


class SessionsInUpdate:
    """
    Counts the sessions of a factory that are in UPDATE, from C{QUIT} to
    the end of the connection (their reply sent, their maildrop released,
    their audit line written).
    """

    __slots__ = ("_clock", "_timer", "_waiting", "count")

    _log = Logger()

    def __init__(self, clock: IReactorTime | None = None) -> None:
        """
        @param clock: what L{drained} times out on; the global reactor if
            L{None}.
        """
        self._clock = clock
        self._waiting: list[Deferred[bool]] = []
        self._timer: IDelayedCall | None = None
        #: Sessions in UPDATE now.
        self.count = 0

    def begin(self) -> None:
        """
        A session entered UPDATE.
        """
        self.count += 1

    def end(self) -> None:
        """
        A session that entered UPDATE has ended.
        """
        self.count -= 1
        if not self.count and self._timer is not None:
            self._timer.cancel()
            self._fire(True)

    def drained(self, timeout: float) -> Deferred[bool]:
        """
        Wait until no session is in UPDATE, at most C{timeout} seconds from
        the first of the calls that wait together (each listener of a
        factory calls it when it stops).

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
            self._timer = reactorTime(self._clock).callLater(timeout, self._timedOut, timeout)
        return d

    def _timedOut(self, timeout: float) -> None:
        self._log.warn(
            "Stopping with {count} sessions still applying their deletions"
            " after {timeout} s: their clients get no reply",
            count=self.count,
            timeout=timeout,
        )
        self._fire(False)

    def _fire(self, result: bool) -> None:
        waiting, self._waiting, self._timer = self._waiting, [], None
        for d in waiting:
            d.callback(result)
