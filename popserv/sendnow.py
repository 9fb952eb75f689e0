"""
Messages sent at once on plain TCP, not on the reactor's next turn.

Twisted's TCP transport never sends in C{write()}: it keeps the bytes, asks
epoll to report the socket writable (an C{epoll_ctl} system call), sends
them when the reactor next turns, and asks epoll to stop (C{epoll_ctl}
again).  A POP3 response answers one command, and the socket's send buffer
is nearly always empty when it is written, so that is two system calls and
a dispatch of the reactor around the one C{send()} that does the work; for
a message, Twisted also joins its parts (a copy) before sending them, and
sends at most 128 KiB at a time.

Only messages are sent this way (L{popserv.transfer.MessageTransfer}).
Short replies were too, for a time, and a login session did a ninth fewer
instructions; but under login churn the server then spent more CPU time,
not less, waking the clients: a reply sent the moment it is ready reaches
a client that has gone back to sleep, where the replies Twisted sends
together at the end of a reactor turn reach clients that are still awake
from the first of them.  So replies go out at the end of the reactor's
turn, as the transport's C{write()} sends them (L{popserv.turnend}, which
does so without its two C{epoll_ctl} calls).

L{sendNow} sends itself, with one C{send()} on the transport's socket (a
message, its status line and its terminator with one C{sendmsg()}), and
hands C{write()} whatever the socket did not take.  It does so only where
that changes nothing but the timing:

 - the transport is Twisted's plain TCP server connection (or popserv's
   PROXY header reader, which passes writes straight to one), so there is
   no layer, such as TLS, whose own C{write()} would be skipped;
 - it has not switched to TLS (after STLS, Twisted's C{startTLS} keeps the
   same transport object and routes its C{write()} through TLS: sending on
   the socket then would put a reply in clear on the wire);
 - it is connected, not closing, and holds no bytes it has yet to send, so
   the reply cannot overtake earlier ones;
 - no pull producer is registered with it: the transport asks one for more
   only when its own buffer empties, which bytes sent at once never fill.
   A push producer (L{popserv.transfer.MessageTransfer}) keeps its flow
   control: what the socket does not take goes into the transport's
   buffer, which pauses the producer when it fills, as before.

Anything else goes to C{write()} as before.  A send that fails also goes to
C{write()}, so the transport finds the failure itself and reports the lost
connection as it always does.

The checks read attributes Twisted does not document
(L{popserv.twistedtcp.ATTRIBUTES}).  C{tests/test_sendnow.py} checks on a
real socket that the fast path is taken, so an upgrade of Twisted that
changed them would fail the tests rather than silently slow popserv down
or misorder its bytes; and a Twisted that no longer has them gets its own
C{write()} (L{popserv.twistedtcp}).
"""

from __future__ import annotations

from typing import Any

from popserv.encoder import Part
from popserv.twistedtcp import isOpen, plainTCP


def sendNow(transport: Any, *parts: Part) -> None:
    """
    Write C{parts}, in order, to C{transport}: on a plain TCP connection
    with nothing left to send, sent at once; otherwise, and for what the
    socket does not take, joined, through the transport's C{write()}.

    @param parts: C{bytes}, or C{memoryview}s of C{bytes} (the encoder's
        views of a message, L{popserv.encoder.MessageEncoder.feedParts}).
    """
    tcp = plainTCP(transport)
    if (
        tcp is not None
        and isOpen(tcp)
        and not tcp.dataBuffer
        and not tcp._tempDataLen
        and (tcp.producer is None or tcp.streamingProducer)
    ):
        parts = _send(tcp.getHandle(), parts)
        if not parts:
            return
    # Joined here, not given to writeSequence(), which takes only bytes:
    # Twisted's TCP transport joins what it buffers before it sends it, and
    # a single bytes object it takes as it is, so that is one copy either
    # way.
    first = parts[0]
    transport.write(first if len(parts) == 1 and type(first) is bytes else b"".join(parts))


def _send(sock: Any, parts: tuple[Part, ...]) -> tuple[Part, ...]:
    """
    Send as much of C{parts} as C{sock} takes at once, with C{send()} for
    one part and one C{sendmsg()} for several, without joining them; what
    is left, in order.  All of them if it failed: the transport will meet
    the error itself.

    Nothing limits a send but the socket's buffer: Twisted's own
    C{writeSomeData} sends at most 128 KiB (for Windows' sake), and the
    rest of a 256 KiB chunk of a message would then be copied to be
    buffered.
    """
    try:
        sent = sock.send(parts[0]) if len(parts) == 1 else sock.sendmsg(parts)
    except OSError:
        # A full buffer (EAGAIN) leaves it all to the transport; so does any
        # other error, which the transport meets again and reports.
        return parts
    for index, part in enumerate(parts):
        if sent < len(part):
            return (part[sent:], *parts[index + 1 :])
        sent -= len(part)
    return ()
