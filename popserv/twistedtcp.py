"""
What popserv's two fast paths for writes, and its hold on a client that
does not read its replies, rely on in Twisted's TCP transport
(C{twisted.internet.tcp.Server}, of which the UNIX one is a kind) that
Twisted does not document.

L{popserv.sendnow} sends a message at once when the transport holds
nothing unsent, and L{popserv.turnend} puts a reply in the transport's
buffer without asking epoll.  Both take their path only on Twisted's plain
TCP server connection (L{plainTCP}, L{isOpen}), and both read attributes of
it that are not part of Twisted's interfaces (L{ATTRIBUTES});
L{popserv.turnend} fills two of them.  They have been there, with these
meanings, since Twisted 8, and the tests check them on a real socket; but
popserv accepts any Twisted from 23.10 on, so a release that renamed one
must not break a server already installed.  Before either path is taken,
L{understood} checks that the transport has them all.  If not, both paths
write through the transport's documented C{write()}, which is slower and
never wrong, and the log says so once.  L{popserv.backlog} reads how much
the transport holds unsent, and marks a producer paused, through the same
check: without the attributes a session is not held back.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.tcp import Server
from twisted.logger import Logger

from popserv.proxy import ProxyHeaderWrapper

_log = Logger()

#: The attributes read or filled: the transport's two buffers, their
#: length, how far the first is sent and how much it may hold before it
#: pauses a producer, and what says it is closing, half-closed, aborted,
#: switched to TLS, or has a producer, and whether that one is paused.
ATTRIBUTES = (
    "dataBuffer",
    "offset",
    "bufferSize",
    "_tempDataBuffer",
    "_tempDataLen",
    "connected",
    "disconnecting",
    "_writeDisconnecting",
    "_writeDisconnected",
    "_aborting",
    "TLS",
    "producer",
    "streamingProducer",
    "producerPaused",
)

#: Whether Twisted's TCP transport has them: unknown until the first
#: connection, the same for every one after (two are set in __init__, so
#: the class alone cannot tell).
_understood: bool | None = None


def understood(transport: Server) -> bool:
    """
    Whether C{transport}, one of Twisted's TCP server connections, has
    every attribute in L{ATTRIBUTES}; asked of the first only.
    """
    global _understood
    if _understood is None:
        missing = [name for name in ATTRIBUTES if not hasattr(transport, name)]
        _understood = not missing
        if missing:
            _log.warn(
                "Twisted's TCP transport has no {missing}: replies and messages"
                " go through its write(), which is slower, and a client that"
                " does not read its replies is not held back",
                missing=", ".join(missing),
            )
    return _understood


def plainTCP(transport: Any) -> Server | None:
    """
    Twisted's plain TCP server connection that C{transport} is, or that is
    under it when it is popserv's PROXY header reader (whose C{write()},
    C{writeSequence()} and C{registerProducer()} pass straight to it), if it
    has every attribute in L{ATTRIBUTES}; else L{None}.
    """
    if type(transport) is ProxyHeaderWrapper:
        transport = transport.transport
    if type(transport) is Server and understood(transport):
        return transport
    return None


def isOpen(transport: Server) -> bool:
    """
    Whether bytes sent on C{transport}'s socket now reach the client as
    written: it is connected, not closing, and has not switched to TLS
    (after STLS Twisted keeps the same transport object and encrypts what
    its C{write()} is given).
    """
    return bool(transport.connected and not transport.disconnecting and not transport.TLS)
