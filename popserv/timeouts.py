"""
Inactivity timeouts for many sessions on one reactor timer.

Every session runs a timer that each command line and each chunk of a
message sent restarts: the autologout timer of RFC 1939 section 3, and the
login and stall timeouts of L{popserv.limits.Limits}.  Twisted's
C{TimeoutMixin} gives each session a C{DelayedCall} of its own (about 400
octets with what it refers to) and reschedules it on every restart.  Here
all the sessions of a factory share one C{DelayedCall}:

  - a session's L{Timeout} waits in a heap, ordered by the time it was
    queued for (its I{due} time);
  - restarting it only moves its deadline later: one attribute write, no
    heap work, no reactor call; so does giving it a longer wait
    (L{Timeout.extend});
  - when a timeout comes due, one whose deadline moved is queued again for
    its new deadline, and one whose deadline passed expires.

A timeout therefore expires exactly at its deadline, as a C{DelayedCall}
would.  (If the wall clock steps back, a deadline can fall before the time
its timeout is queued for; it then expires when that time comes, late by
at most the step.)

Cancelled timeouts stay in the heap until they come due, as cancelled
C{DelayedCall}s do in the reactor's; when they are more than half of it,
the heap is rebuilt without them, so it never holds more than twice the
live timeouts.  When the last live one is cancelled, the C{DelayedCall} is
cancelled too: a server without sessions leaves nothing scheduled.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from popserv.clock import reactorTime

#: Rebuild the heap only when at least this many cancelled timeouts are in
#: it (and they are more than half of it): a small heap is cheap to keep.
_MIN_COMPACTION = 64


class Timeout:
    """
    One session's timer, made by L{Timeouts.start}.

    @ivar seconds: how long it waits after a L{restart}.
    @ivar deadline: when it expires unless restarted before.
    """

    __slots__ = ("_due", "_expire", "_owner", "_queued", "deadline", "seconds")

    def __init__(
        self, owner: Timeouts, seconds: float, now: float, expire: Callable[[], None]
    ) -> None:
        self.seconds = seconds
        self.deadline = self._due = now + seconds
        self._queued = False
        self._expire: Callable[[], None] | None = expire
        self._owner = owner

    def __lt__(self, other: Timeout) -> bool:
        # The heap's order: the time it is queued for, which a restart
        # leaves alone (moving a key inside a heap would break it).
        return self._due < other._due

    @property
    def active(self) -> bool:
        """
        Neither expired nor cancelled.
        """
        return self._expire is not None

    def restart(self) -> None:
        """
        Wait L{seconds} again from now.  Does nothing once it expired or was
        cancelled.
        """
        self.deadline = self._owner.now() + self.seconds

    def extend(self, seconds: float) -> bool:
        """
        Wait C{seconds} from now, and from every later L{restart}, if that
        does not end before the time this timeout is queued for: as when a
        session's login timeout gives way to the longer autologout.  Then
        it is one attribute write more than L{restart}.

        @return: whether it did; if not (a shorter wait, or a timeout that
            expired, was cancelled or is expiring), nothing changed, and
            the caller cancels it and starts another.
        """
        if self._expire is None or not self._queued:
            return False
        deadline = self._owner.now() + seconds
        if deadline < self._due:
            return False
        self.seconds = seconds
        self.deadline = deadline
        return True

    def cancel(self) -> None:
        """
        Never expire.  Does nothing if it already expired or was cancelled.
        """
        if self._expire is not None:
            self._expire = None
            if self._queued:
                self._owner._cancelled()


class Timeouts:
    """
    The timeouts of many sessions, on one C{DelayedCall} of C{clock}.
    """

    _log = Logger()

    def __init__(self, clock: IReactorTime | None = None) -> None:
        """
        @param clock: what to schedule on; the global reactor if L{None}
            (looked up at the first L{start}, once twistd chose it).
        """
        self._clockGiven = clock
        self._clock: IReactorTime | None = None
        self._heap: list[Timeout] = []
        self._dead = 0
        self._call: IDelayedCall | None = None

    def now(self) -> float:
        """
        The clock's time.
        """
        if self._clock is None:
            self._clock = reactorTime(self._clockGiven)
        return self._clock.seconds()

    def start(self, seconds: float, expire: Callable[[], None]) -> Timeout:
        """
        Call C{expire} after C{seconds}, unless the timeout is restarted or
        cancelled before.
        """
        now = self.now()
        timeout = Timeout(self, seconds, now, expire)
        self._queue(timeout, now + seconds)
        if self._heap[0] is timeout:
            self._schedule()
        return timeout

    def _queue(self, timeout: Timeout, due: float) -> None:
        timeout._due = due
        timeout._queued = True
        heapq.heappush(self._heap, timeout)

    def __len__(self) -> int:
        """
        How many timeouts are queued, cancelled ones not yet dropped
        included: at most twice the live ones (plus L{_MIN_COMPACTION}).
        """
        return len(self._heap)

    def _cancelled(self) -> None:
        self._dead += 1
        if self._dead == len(self._heap):
            # None is left to wait for: leave nothing scheduled either, so
            # that a server with no sessions leaves the reactor clean (as
            # twisted.trial checks at the end of every test).
            self._heap.clear()
            self._dead = 0
            if self._call is not None:
                self._call.cancel()
                self._call = None
        elif self._dead > _MIN_COMPACTION and self._dead * 2 > len(self._heap):
            self._heap = [timeout for timeout in self._heap if timeout._expire is not None]
            heapq.heapify(self._heap)
            self._dead = 0

    def _schedule(self) -> None:
        if not self._heap:
            return
        assert self._clock is not None
        due = self._heap[0]._due
        if self._call is None:
            self._call = self._clock.callLater(max(due - self.now(), 0.0), self._run)
        elif due < self._call.getTime():
            self._call.reset(max(due - self.now(), 0.0))

    def _run(self) -> None:
        self._call = None
        now = self.now()
        due = []
        while self._heap and self._heap[0]._due <= now:
            timeout = heapq.heappop(self._heap)
            timeout._queued = False
            if timeout._expire is None:
                self._dead -= 1
            else:
                due.append(timeout)
        # Expiring can start and cancel timeouts; those it starts wait for
        # the next call, even if they are already due, so this is bounded.
        for timeout in due:
            expire = timeout._expire
            if expire is None:
                continue  # cancelled by an earlier expiry
            if timeout.deadline > now:
                self._queue(timeout, timeout.deadline)
                continue
            timeout._expire = None
            try:
                expire()
            except Exception:
                self._log.failure("Timeout handler failed")
        self._schedule()
