"""
Running asynchronous code synchronously in tests: the result of a Deferred
that has fired, a "thread" runner that runs at once, one that runs when
the test says, and a settable clock.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure


def result(d: Any) -> Any:
    """
    The value of a L{Deferred} that has fired (or a plain value), raising
    its failure.
    """
    if not isinstance(d, Deferred):
        return d
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "Deferred has not fired"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


def syncRun(f: Any, *args: Any) -> Deferred[Any]:
    """
    Run "in a thread" at once, so the Deferreds of stores and checkers fire
    before they are returned.
    """
    return maybeDeferred(f, *args)


class ManualRunner:
    """
    Holds each "thread" call until the test runs it: the work waits as it
    would for a busy thread.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[Deferred[Any], Any, tuple[Any, ...]]] = []

    def __call__(self, f: Any, *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.calls.append((d, f, args))
        return d

    def names(self) -> list[str]:
        """
        The names of the functions held, in order.
        """
        return [f.__name__ for _, f, _ in self.calls]

    def runOne(self) -> None:
        d, f, args = self.calls.pop(0)
        d.callback(f(*args))

    def runAll(self) -> None:
        """
        Run what is held, and what that holds in turn (at most 100 calls).
        """
        for _ in range(100):
            if not self.calls:
                return
            self.runOne()


class FakeTime:
    """
    A C{time.time}-like callable whose time the test sets (C{now}).
    """

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now
