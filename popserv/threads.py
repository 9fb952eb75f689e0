"""
Running blocking work off the reactor thread.

Stores and checkers take a L{Runner} so tests can run the work
synchronously and embedders can choose their own thread pool.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred

#: Runs a blocking callable with arguments somewhere other than the reactor
#: thread and returns a Deferred of its result, like
#: L{twisted.internet.threads.deferToThread}.
Runner = Callable[..., "Deferred[Any]"]


def deferToThread(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
    """
    L{twisted.internet.threads.deferToThread}, imported when first used so
    that importing popserv does not import the global reactor.
    """
    from twisted.internet import threads

    return threads.deferToThread(f, *args)
