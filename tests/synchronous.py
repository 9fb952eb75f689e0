"""
Running asynchronous code synchronously in tests: the result of a Deferred
that has fired, a "thread" runner that runs at once, and a settable clock.
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


class FakeTime:
    """
    A C{time.time}-like callable whose time the test sets (C{now}).
    """

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now
