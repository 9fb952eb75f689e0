"""
Replies sent at once, on plain TCP, instead of on the reactor's next turn.

Twisted's TCP transport never sends in C{write()}: it keeps the bytes, asks
epoll to report the socket writable (an C{epoll_ctl} system call), sends
them when the reactor next turns, and asks epoll to stop (C{epoll_ctl}
again).  A POP3 reply answers one command, and the socket's send buffer is
nearly always empty when it is written, so that is two system calls and a
dispatch of the reactor around the one C{send()} that does the work.  In
login churn (five replies a session) it was a ninth of popserv's own
instructions per session, before the kernel's share of the system calls.

L{sendNow} sends such a reply itself, through the transport's own
C{writeSomeData} (the socket's C{send()}, as the reactor would call it), and
hands C{write()} whatever the socket did not take.  It does so only where
that changes nothing but the timing:

 - the transport is Twisted's plain TCP server connection, so there is no
   layer (TLS, a PROXY header parser) whose own C{write()} would be skipped;
 - it has not switched to TLS (after STLS, Twisted's C{startTLS} keeps the
   same transport object and routes its C{write()} through TLS: sending on
   the socket then would put a reply in clear on the wire);
 - it is connected, not closing, and holds no bytes it has yet to send, so
   the reply cannot overtake earlier ones;
 - no producer is registered with it (a message being sent streams through
   the transport's own flow control).

Anything else goes to C{write()} as before.  A send that fails also goes to
C{write()}, so the transport finds the failure itself and reports the lost
connection as it always does.

The checks read attributes Twisted does not document (C{TLS},
C{dataBuffer}, C{_tempDataLen}); they have been there, with these meanings,
since Twisted 8.  C{tests/test_sendnow.py} checks on a real socket that the
fast path is taken, so an upgrade of Twisted that changed them would fail
the tests rather than silently slow popserv down or misorder its bytes.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.tcp import Server


def sendNow(transport: Any, data: bytes) -> None:
    """
    Write C{data} to C{transport}: on a plain TCP connection with nothing
    left to send, sent at once; otherwise, and for what the socket does not
    take, through C{transport.write()}.
    """
    if (
        type(transport) is Server
        and not transport.TLS
        and transport.connected
        and not transport.disconnecting
        and not transport.dataBuffer
        and not transport._tempDataLen
        and transport.producer is None
    ):
        sent = transport.writeSomeData(data)
        # An int is the count sent (0 if the buffer was full); anything else
        # is the error the transport will meet again in write() and report.
        if type(sent) is int:
            if sent == len(data):
                return
            data = data[sent:]
    transport.write(data)
