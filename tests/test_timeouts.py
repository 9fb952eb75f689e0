"""
Tests for popserv.timeouts: many sessions' inactivity timers on one
reactor timer.
"""

from __future__ import annotations

import random

from twisted.internet.task import Clock
from twisted.logger import LogEvent, globalLogPublisher

from popserv.timeouts import Timeouts


def make() -> tuple[Clock, Timeouts, list[str]]:
    clock = Clock()
    return clock, Timeouts(clock), []


def test_expiresAtItsDeadline() -> None:
    """
    A timeout expires once, when its seconds are up, not before.
    """
    clock, timeouts, expired = make()
    timeout = timeouts.start(10, lambda: expired.append("a"))
    clock.advance(9.999)
    assert expired == [] and timeout.active
    clock.advance(0.001)
    assert expired == ["a"] and not timeout.active
    clock.advance(100)
    assert expired == ["a"]


def test_restartMovesTheDeadline() -> None:
    """
    Each restart counts the seconds again from then, however often it comes.
    """
    clock, timeouts, expired = make()
    timeout = timeouts.start(10, lambda: expired.append("a"))
    for _ in range(5):
        clock.advance(7)
        timeout.restart()
    assert timeout.deadline == 45
    clock.advance(9.5)
    assert expired == []
    clock.advance(0.5)
    assert expired == ["a"]


def test_extend() -> None:
    """
    A longer wait takes effect in place, with no reactor call: the timeout
    expires at its new deadline and restarts count the new seconds.  A
    wait that would end before the time it is queued for, or a timeout
    that expired, is refused and left as it was.
    """
    clock, timeouts, expired = make()
    timeout = timeouts.start(60, lambda: expired.append("a"))
    call = clock.getDelayedCalls()[0]
    clock.advance(10)
    assert not timeout.extend(40)  # 10 + 40 < 60: it would expire late
    assert timeout.seconds == 60 and timeout.deadline == 60
    assert timeout.extend(600)
    assert timeout.deadline == 610
    assert clock.getDelayedCalls() == [call] and call.getTime() == 60
    clock.advance(590)
    timeout.restart()
    assert timeout.deadline == 1200
    clock.advance(599)
    assert expired == []
    clock.advance(1)
    assert expired == ["a"]
    assert not timeout.extend(600)
    assert not timeout.active and expired == ["a"]


def test_extendToTheTimeItIsQueuedFor() -> None:
    """
    A wait that ends exactly when the timeout is queued for is not one that
    ends before it: it is taken.
    """
    clock, timeouts, expired = make()
    timeout = timeouts.start(60, lambda: expired.append("a"))
    clock.advance(10)
    assert timeout.extend(50)
    assert timeout.seconds == 50 and timeout.deadline == 60


def test_extendRefusedWhenCancelledOrExpiring() -> None:
    """
    A cancelled timeout, or one whose expiry is under way (here another
    timeout due at the same time tries to extend it), is not extended: the
    caller must start another.
    """
    clock, timeouts, expired = make()
    cancelled = timeouts.start(10, lambda: expired.append("cancelled"))
    cancelled.cancel()
    assert not cancelled.extend(60)
    extended: list[bool] = []
    timeouts.start(10, lambda: extended.append(second.extend(60)))
    second = timeouts.start(10, lambda: expired.append("second"))
    clock.advance(10)
    assert extended == [False] and expired == ["second"]


def test_lastCancelLeavesNothingScheduledAgain() -> None:
    """
    Each time the last live timeout is cancelled, the reactor call goes
    too, not only the first time.
    """
    clock, timeouts, expired = make()
    for name in ("a", "b"):
        timeout = timeouts.start(10, lambda name=name: expired.append(name))
        timeout.cancel()
        assert clock.getDelayedCalls() == [] and len(timeouts) == 0
    clock.advance(20)
    assert expired == []


def test_cancel() -> None:
    """
    A cancelled timeout never expires; cancelling twice, or after expiry,
    does nothing.
    """
    clock, timeouts, expired = make()
    a = timeouts.start(1, lambda: expired.append("a"))
    b = timeouts.start(2, lambda: expired.append("b"))
    a.cancel()
    a.cancel()
    clock.advance(3)
    b.cancel()
    assert expired == ["b"]
    assert not a.active and not b.active


def test_oneReactorCallForAll() -> None:
    """
    However many timeouts wait, the clock holds one call, for the earliest;
    a shorter timeout started later brings it forward.
    """
    clock, timeouts, expired = make()
    for i in range(100):
        timeouts.start(600 + i, lambda i=i: expired.append(f"long{i}"))
    calls = clock.getDelayedCalls()
    assert len(calls) == 1 and calls[0].getTime() == 600
    timeouts.start(30, lambda: expired.append("short"))
    calls = clock.getDelayedCalls()
    assert len(calls) == 1 and calls[0].getTime() == 30
    clock.advance(30)
    assert expired == ["short"]
    assert [c.getTime() for c in clock.getDelayedCalls()] == [600]


def test_eachExpiresExactlyAtItsDeadline() -> None:
    """
    Whatever order timeouts were started and restarted in, each expires
    exactly at its deadline: with the clock stepped from one deadline to
    the next, the ones that expire at each step are the ones due then.
    """
    rng = random.Random(5)
    clock, timeouts, expired = make()
    deadlines = {}
    for i in range(300):
        # Multiples of 1/64 second add up exactly in binary floating point.
        clock.advance(rng.randrange(8) / 64)
        name = f"t{i}"
        timeout = timeouts.start(rng.choice([60, 300, 600]), lambda name=name: expired.append(name))
        if rng.random() < 0.3:
            clock.advance(rng.randrange(1, 8) / 64)
            timeout.restart()
        deadlines[name] = timeout.deadline
    assert expired == []
    for deadline in sorted(set(deadlines.values())):
        before = len(expired)
        clock.advance(deadline - clock.seconds())
        assert clock.seconds() == deadline
        due = {name for name, d in deadlines.items() if d == deadline}
        assert set(expired[before:]) == due
    assert sorted(expired) == sorted(deadlines)


def test_cancelledOnesAreDropped() -> None:
    """
    Sessions that come and go (each cancelling its timer) leave the queue
    no longer than twice the live timers, plus a small constant.
    """
    clock, timeouts, expired = make()
    live = [timeouts.start(600, lambda: expired.append("live")) for _ in range(10)]
    for _ in range(10_000):
        timeouts.start(600, lambda: expired.append("gone")).cancel()
        clock.advance(0.001)
    assert len(timeouts) <= 2 * len(live) + 65
    clock.advance(600)
    assert expired == ["live"] * 10


def test_nothingScheduledWithoutTimeouts() -> None:
    """
    Once every timeout expired or was cancelled, the clock holds no call
    (twisted.trial fails a test that leaves one), and starting one again
    schedules it again.
    """
    clock, timeouts, expired = make()
    a = timeouts.start(600, lambda: expired.append("a"))
    b = timeouts.start(30, lambda: expired.append("b"))
    a.cancel()
    assert len(clock.getDelayedCalls()) == 1
    b.cancel()
    assert clock.getDelayedCalls() == [] and len(timeouts) == 0
    timeouts.start(5, lambda: expired.append("c"))
    clock.advance(5)
    assert expired == ["c"]
    assert clock.getDelayedCalls() == []


def test_expiryCanStartAndCancel() -> None:
    """
    An expiry that starts a timeout (even one of zero seconds) or cancels
    one due at the same moment is safe: the new one expires in a call of
    its own, the cancelled one never.
    """
    clock, timeouts, expired = make()
    later = timeouts.start(5, lambda: expired.append("later"))

    def first() -> None:
        expired.append("first")
        later.cancel()
        timeouts.start(0, lambda: expired.append("zero"))

    timeouts.start(4.5, first)
    clock.advance(5)
    assert expired == ["first", "zero"]
    clock.advance(100)
    assert expired == ["first", "zero"]


def test_failingExpiryIsLogged() -> None:
    """
    An expiry that raises is logged, and the timeouts due with it still
    expire.
    """
    clock, timeouts, expired = make()
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:

        def fail() -> None:
            raise RuntimeError("boom")

        timeouts.start(1, fail)
        timeouts.start(1, lambda: expired.append("b"))
        clock.advance(1)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert expired == ["b"]
    failures = [e for e in events if "log_failure" in e]
    assert len(failures) == 1
    assert isinstance(failures[0]["log_failure"].value, RuntimeError)
    assert failures[0]["log_format"] == "Timeout handler failed"


def test_cancelledStayQueuedUntilDue() -> None:
    """
    A cancelled timeout stays queued until the time it was queued for,
    when the reactor call drops it; a reactor call takes only the timeouts
    due.  Cancelling the last live one after that still leaves nothing
    scheduled.
    """
    clock, timeouts, expired = make()
    a = timeouts.start(10, lambda: expired.append("a"))
    b = timeouts.start(20, lambda: expired.append("b"))
    c = timeouts.start(30, lambda: expired.append("c"))
    a.cancel()
    c.cancel()
    assert len(timeouts) == 3
    clock.advance(10)
    assert len(timeouts) == 2
    b.cancel()
    assert clock.getDelayedCalls() == [] and len(timeouts) == 0
    clock.advance(30)
    assert expired == []


def test_expiryCancelsOthersDueWithIt() -> None:
    """
    An expiry that cancels timeouts taken by the same (late) reactor call,
    one of them restarted since it was queued, stops them: neither expires,
    nothing fails, and nothing stays scheduled.
    """
    clock, timeouts, expired = make()
    events: list[LogEvent] = []

    def first() -> None:
        expired.append("first")
        restarted.cancel()
        due.cancel()

    timeouts.start(9, first)
    restarted = timeouts.start(10, lambda: expired.append("restarted"))
    due = timeouts.start(10, lambda: expired.append("due"))
    clock.advance(5)
    restarted.restart()
    globalLogPublisher.addObserver(events.append)
    try:
        clock.advance(5)  # the call for 9 runs at 10, and takes all three
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert expired == ["first"]
    assert [e for e in events if "log_failure" in e] == []
    assert clock.getDelayedCalls() == [] and len(timeouts) == 0


def test_subSecondTimeoutBringsTheCallForward() -> None:
    """
    A timeout of less than a second, started while a longer one waits,
    brings the reactor call forward to its own deadline.
    """
    clock, timeouts, expired = make()
    timeouts.start(600, lambda: expired.append("long"))
    timeouts.start(0.5, lambda: expired.append("short"))
    assert [c.getTime() for c in clock.getDelayedCalls()] == [0.5]
    clock.advance(0.5)
    assert expired == ["short"]


def test_rebuiltPastSixtyFourCancelled() -> None:
    """
    Cancelled timeouts stay queued until more than 64 of them are, and
    more than half the queue: then they all leave it at once.  Cancelling
    the last live one afterwards leaves nothing scheduled.
    """
    clock, timeouts, expired = make()
    live = timeouts.start(600, lambda: expired.append("live"))
    gone = [timeouts.start(600, lambda: expired.append("gone")) for _ in range(65)]
    for timeout in gone[:64]:
        timeout.cancel()
    assert len(timeouts) == 66
    gone[64].cancel()
    assert len(timeouts) == 1
    live.cancel()
    assert clock.getDelayedCalls() == [] and len(timeouts) == 0
    clock.advance(600)
    assert expired == []


def test_rebuiltWhenMoreThanHalfCancelled() -> None:
    """
    Cancelled timeouts that are half the queue stay in it; one more, and
    they leave it.
    """
    clock, timeouts, expired = make()
    live = [timeouts.start(600, lambda: expired.append("live")) for _ in range(100)]
    for _ in range(100):
        timeouts.start(600, lambda: expired.append("gone")).cancel()
    assert len(timeouts) == 200
    timeouts.start(600, lambda: expired.append("gone")).cancel()
    assert len(timeouts) == len(live)
    clock.advance(600)
    assert expired == ["live"] * 100


def test_rebuiltQueueKeepsDeadlines() -> None:
    """
    Once cancelled timeouts have left the queue, the live ones still
    expire each exactly at its deadline.
    """
    rng = random.Random(7)
    clock, timeouts, expired = make()
    deadlines = {}
    cancelled = []
    for i in range(300):
        name = f"t{i}"
        timeout = timeouts.start(rng.randrange(1, 600), lambda name=name: expired.append(name))
        if rng.random() < 0.7:
            cancelled.append(timeout)
        else:
            deadlines[name] = timeout.deadline
    for timeout in cancelled:
        timeout.cancel()
    assert len(timeouts) < 300
    for deadline in sorted(set(deadlines.values())):
        before = len(expired)
        clock.advance(deadline - clock.seconds())
        due = {name for name, d in deadlines.items() if d == deadline}
        assert set(expired[before:]) == due
    assert sorted(expired) == sorted(deadlines)


def test_timeoutHasNoInstanceDict() -> None:
    """
    A Timeout keeps its attributes in slots, not a dict: every idle
    session holds one.
    """
    _, timeouts, expired = make()
    timeout = timeouts.start(10, lambda: expired.append("a"))
    assert not hasattr(timeout, "__dict__")
