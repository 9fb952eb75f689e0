"""
Holding a session's next command while its replies wait to be sent.

Twisted's transports keep whatever the socket does not take, without a
limit.  A client that sends commands and reads none of the replies would
so make the server hold every reply: six octets of C{LIST} bring a line
per message, 1.3 MB for a 100,000-message maildrop, and nothing stops it
sending the command again.  So after each command the session asks
L{unsent} how much of its output the socket has not taken.  Beyond the
transport's own C{bufferSize} (64 KiB, where Twisted pauses a producer),
the session runs no more commands until the transport has sent it all
(L{whenSent}); the lines that come meanwhile wait in its queue, which
stops reading when it is full.  The server then holds at most that much,
one reply and the queue for each client, as a message transfer holds at
most a chunk or so (L{popserv.transfer}, which is a producer of its own).

Both read what Twisted's TCP transport (the UNIX one is a kind of it)
holds unsent, in attributes it does not document that
L{popserv.twistedtcp.understood} checks are there: the session's own
transport, or the one under Twisted's TLS or popserv's PROXY header
reader.  Over anything else (a test's string transport) L{socketOf} gives
L{None}, and the session is not held.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import IPushProducer
from twisted.internet.tcp import Server
from zope.interface import implementer

from popserv.twistedtcp import understood


def socketOf(transport: Any) -> Server | None:
    """
    The Twisted transport that writes C{transport}'s octets to its socket:
    C{transport} itself, or the one under Twisted's TLS (an C{ssl:}
    listener) and popserv's PROXY header reader; L{None} if there is none
    or it lacks an attribute L{popserv.twistedtcp.ATTRIBUTES} names.
    """
    # At most TLS over the PROXY header reader over TCP: three layers.
    for _ in range(3):
        if isinstance(transport, Server):
            return transport if understood(transport) else None
        transport = getattr(transport, "transport", None)
    return None


def unsent(socket: FileDescriptor) -> int:
    """
    The octets C{socket} holds that its socket has not taken yet.
    """
    return len(socket.dataBuffer) - socket.offset + socket._tempDataLen


@implementer(IPushProducer)
class _Sent:
    """
    A producer registered only to be told when the transport has sent all
    it held: Twisted resumes a paused producer then.
    """

    def __init__(self, socket: FileDescriptor, then: Callable[[], object]) -> None:
        self._socket = socket
        self._then = then

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        # Unregistered with FileDescriptor's own method: on a connection
        # switched to TLS (STLS) the transport's would go to the TLS layer,
        # which never saw this producer.
        FileDescriptor.unregisterProducer(self._socket)
        self._then()

    def stopProducing(self) -> None:
        # The connection is gone; the session learns it from connectionLost.
        pass


def whenSent(socket: FileDescriptor, then: Callable[[], object]) -> bool:
    """
    Call C{then} once C{socket} has sent everything it holds, from the
    reactor's write of the last of it; never, if the connection is lost
    first.  False, and C{then} is not called, if C{socket} already has a
    producer (a message transfer): that one is told instead.
    """
    if socket.producer is not None:
        return False
    # Registered directly, under any TLS layer, and marked paused: the
    # transport resumes a paused push producer when its buffer empties
    # (FileDescriptor.doWrite), and pauses one only in a write.
    FileDescriptor.registerProducer(socket, _Sent(socket, then), True)
    socket.producerPaused = True
    return True
