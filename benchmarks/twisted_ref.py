#!/usr/bin/env python3
"""
The twisted.mail.pop3 reference server of popserv's benchmarks.

    python twisted_ref.py --port 0 --users FILE --mailroot ROOT [--nagle]

What a Twisted user would assemble from the library: twisted.mail.pop3.POP3
(unchanged) behind a twisted.cred portal with an in-memory checker (FILE
holds "user password" lines), and a twisted.mail.maildir.MaildirMailbox on
ROOT/USER for each login.  It listens on 127.0.0.1 only and prints
"twisted_ref listening on PORT" once it does.

Two changes from the library's defaults, both so that the comparison
measures the server and not a known defect:

 - TCP_NODELAY on every connection (C{--nagle} leaves it off, as Twisted
   ships).  Without it each multi-segment RETR waits for the client's
   delayed ACK (about 40 ms), and downloads measure Nagle's algorithm.
 - MaildirMailbox.getMessage opens the file in text mode, which makes RETR
   fail with TypeError on Python 3 (POP3.transformChunk works on bytes);
   L{BinaryMaildirMailbox} opens it in binary mode.

Everything else is Twisted's own, including what differs from RFC 1939
and from popserv: LIST and STAT give on-disk (LF) sizes, not the octets
sent; UIDL is an MD5 of the file name; messages are sorted by file name;
each 16 KiB chunk of a file is byte-stuffed on its own.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from twisted.cred import checkers, portal
from twisted.internet import endpoints, protocol, reactor
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.mail import maildir, pop3
from zope.interface import implementer


class BinaryMaildirMailbox(maildir.MaildirMailbox):
    """
    MaildirMailbox whose messages are read as bytes.
    """

    def getMessage(self, i: int) -> Any:
        # FileSender reads it to the end; the mailbox object keeps no handle.
        return open(self.list[i], "rb")


@implementer(portal.IRealm)
class MaildirRealm:
    """
    A MaildirMailbox on ROOT/USER for each login.
    """

    def __init__(self, root: bytes) -> None:
        self.root = root

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> Any:
        if pop3.IMailbox not in interfaces:
            raise NotImplementedError("only IMailbox avatars")
        if isinstance(avatarId, str):
            avatarId = avatarId.encode()
        mailbox = BinaryMaildirMailbox(os.path.join(self.root, avatarId))
        return pop3.IMailbox, mailbox, lambda: None


class NoDelayPOP3(pop3.POP3):
    """
    twisted.mail.pop3.POP3 with TCP_NODELAY set when the connection opens.
    """

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.setTcpNoDelay(True)
        super().connectionMade()


class POP3Factory(protocol.ServerFactory):
    def __init__(self, portal_: portal.Portal, nodelay: bool) -> None:
        self.portal = portal_
        self.protocol: Any = NoDelayPOP3 if nodelay else pop3.POP3

    def buildProtocol(self, addr: Any) -> Any:
        p: Any = protocol.ServerFactory.buildProtocol(self, addr)
        p.portal = self.portal
        return p


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--users", required=True, help='file of "user password" lines')
    parser.add_argument("--mailroot", required=True, help="directory of Maildirs, one per user")
    parser.add_argument("--nagle", action="store_true", help="do not set TCP_NODELAY")
    options = parser.parse_args(argv)

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    checker = checkers.InMemoryUsernamePasswordDatabaseDontUse()
    with open(options.users) as f:
        for line in f:
            if line.strip():
                user, password = line.split()
                checker.addUser(user.encode(), password.encode())
    root = os.fsencode(os.path.abspath(options.mailroot))
    factory = POP3Factory(portal.Portal(MaildirRealm(root), [checker]), not options.nagle)
    # Twisted's default listen backlog (50), as popserv's tcp: endpoint has.
    endpoint = endpoints.TCP4ServerEndpoint(reactor, options.port, interface="127.0.0.1")

    def listening(port: Any) -> None:
        print(f"twisted_ref listening on {port.getHost().port}", flush=True)

    def failed(reason: Any) -> None:
        print(f"twisted_ref cannot listen: {reason.getErrorMessage()}", flush=True)
        reactor.stop()

    endpoint.listen(factory).addCallbacks(listening, failed)
    reactor.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
