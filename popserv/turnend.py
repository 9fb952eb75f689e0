"""
Replies sent together at the end of the reactor's turn, without asking epoll.

Twisted's TCP transport never sends in C{write()}: it keeps the bytes, asks
epoll to report the socket writable (an C{epoll_ctl} system call), sends
them from that report on the reactor's next turn, and asks epoll to stop
(C{epoll_ctl} again).  A reply answers one command, and the socket's send
buffer is nearly always empty when it is written: the report tells the
transport nothing it could not assume, at the price of two system calls
and a dispatch of the reactor per reply.

L{writeReply} puts a reply in the transport's own buffer, as C{write()}
does, and instead of asking epoll, asks the reactor for one call, shared
by every connection, once this turn's events have run (C{callLater(0)}:
the reactor runs due calls before it next waits).  That call sends each
connection's bytes with the transport's own C{doWrite()}: one C{send()}
each, where before there were three system calls.  The replies still go
out together at the end of a turn, as they did through C{write()}: sending
each one the moment it was ready cost more CPU time in login churn, waking
clients that had gone back to sleep (L{popserv.sendnow}).

Because the bytes are in the transport's buffer, everything that orders
writes still does: a later C{write()} (which asks epoll, as always),
C{loseConnection()} (which sends the buffer before it closes),
C{startTLS()} (which sends what was written before it in clear), and
L{popserv.sendnow.sendNow} (which sends at once only when the buffer is
empty).  Whatever the socket does not take, or a send that fails, is left
to the transport as after a C{write()}: it asks epoll, and meets the
failure itself.

Only Twisted's plain TCP server connection (or one under popserv's PROXY
header reader) takes this path, and only while it is connected, not
closing, not switched to TLS and without a producer; anything else gets
C{write()}.  The path fills two attributes Twisted does not document
(C{_tempDataBuffer} and C{_tempDataLen}, the buffer C{write()} fills) and
reads others (L{popserv.twistedtcp.ATTRIBUTES}).  C{tests/test_turnend.py}
checks on real sockets that the path is taken and keeps every octet in
order, so an upgrade of Twisted that changed them fails the tests rather
than losing or misordering replies; and a Twisted that no longer has them
gets its own C{write()} (L{popserv.twistedtcp}).
"""

from __future__ import annotations

from typing import Any
from weakref import WeakKeyDictionary

from twisted.internet.tcp import Server
from twisted.logger import Logger

from popserv.twistedtcp import isOpen, plainTCP

_log = Logger()


def writeReply(transport: Any, data: bytes) -> None:
    """
    Write C{data} to C{transport}, to go out at the end of the reactor's
    turn: on a plain TCP connection without asking epoll, otherwise with
    C{write()}.
    """
    tcp = plainTCP(transport)
    if tcp is not None and data and _plain(tcp):
        # FileDescriptor.write() without its startWriting().
        tcp._tempDataBuffer.append(data)
        tcp._tempDataLen += len(data)
        _turnEndOf(tcp.reactor).add(tcp)
    else:
        transport.write(data)


def _plain(transport: Server) -> bool:
    """
    Whether C{transport}'s buffer is sent by C{doWrite()} alone: open
    (L{isOpen}), not half-closed or aborted, and without a producer (which
    C{doWrite()} would resume).
    """
    return bool(
        isOpen(transport)
        and not transport._writeDisconnecting
        and not transport._writeDisconnected
        and not transport._aborting
        and transport.producer is None
    )


class _TurnEnd:
    """
    One reactor's connections with replies to send at the end of this turn.
    """

    def __init__(self) -> None:
        # Insertion-ordered, each connection once: sent in the order they
        # first wrote.  (No reference to the reactor: the table below holds
        # this by its reactor, weakly, and one back would keep it alive.)
        self._pending: dict[Server, None] = {}

    def add(self, transport: Server) -> None:
        if not self._pending:
            # Typed IReactorFDSet by Twisted; every reactor that runs TCP
            # connections is an IReactorTime too.
            reactor: Any = transport.reactor
            reactor.callLater(0, self._send)
        self._pending[transport] = None

    def _send(self) -> None:
        pending, self._pending = self._pending, {}
        for transport in pending:
            try:
                _sendOne(transport)
            except Exception:
                # Not expected: doWrite() meets a socket's errors itself.
                # But one connection's failure must not leave the others'
                # replies unsent, as it would if it ended this loop; the
                # reactor takes this one over, and meets the error in its
                # own doWrite(), which drops the connection.
                _log.failure("Sending replies at the end of the turn failed")
                transport.startWriting()


def _sendOne(transport: Server) -> None:
    if not transport.connected or transport._aborting:
        return  # gone: its buffer went with it
    if not _plain(transport):
        # It changed since (closing, TLS, a producer): what write() would
        # have done, so the reactor sends the buffer in turn.
        transport.startWriting()
    elif transport.doWrite() is not None or transport.dataBuffer or transport._tempDataLen:
        # Not all of it taken, or the send failed: the reactor goes on as
        # after a write(), and meets any failure itself.
        transport.startWriting()


_turnEnds: WeakKeyDictionary[Any, _TurnEnd] = WeakKeyDictionary()


def _turnEndOf(reactor: Any) -> _TurnEnd:
    turnEnd = _turnEnds.get(reactor)
    if turnEnd is None:
        turnEnd = _turnEnds[reactor] = _TurnEnd()
    return turnEnd
