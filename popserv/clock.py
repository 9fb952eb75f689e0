"""
Which clock to schedule on: the one an embedder or a test gave, else the
global reactor, imported only then, so that importing popserv never
installs a reactor (twistd chooses it first).
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime


def reactorTime(clock: IReactorTime | None) -> IReactorTime:
    """
    C{clock}, or the global reactor if it is L{None}.
    """
    if clock is not None:
        return clock
    from twisted.internet import reactor

    return reactor
