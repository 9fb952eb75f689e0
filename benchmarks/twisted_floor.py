#!/usr/bin/env python3
"""
The floor of popserv's benchmarks: the least a POP3 server on Twisted can do.

    python twisted_floor.py --port 0 --users FILE --mailroot ROOT

It reads every user's Maildir (ROOT/USER) into memory when it starts, each
message already in its wire form (CRLF, byte-stuffed, with its "+OK" line
and the terminating "."), and the STAT, LIST and UIDL replies already
built.  A session is then a Twisted C{LineOnlyReceiver} answering each
command with bytes it holds: no password hashing, no lock, no file, no
thread, no timer, no log line, no limit.  It listens on 127.0.0.1 only and
prints "twisted_floor listening on PORT" once it does.

It is not a server anyone should run: it serves mail as it was at start-up,
forgets nothing (DELE is refused), and holds every message in memory.  It
is an instrument.  Whatever it reaches is what Twisted's reactor, a line
receiver and the kernel allow for the workload; a Twisted server that does
its work (reads the files, sizes them, locks the maildrop, keeps limits and
an audit trail) can come close to that figure but not pass it.  So the
benchmark runs it beside the servers under test, in the scenarios where
mail held in memory serves the same bytes (churn, bulk, parallel, sizes,
concurrency), and not in those that measure reading a Maildir or a
session's memory.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

# The wire form the load generator checks every message against, and its
# byte-stuffing: the benchmark's own (this script's directory is first on
# sys.path), so the floor does not write them again.
from suite.data import expectedWire, messageFiles, stuff
from twisted.internet import endpoints, protocol, reactor
from twisted.protocols.basic import LineOnlyReceiver

GREETING = b"+OK twisted_floor ready\r\n"
OK = b"+OK\r\n"


class Maildrop:
    """
    One user's messages in wire form, and the replies that list them.
    """

    def __init__(self, path: str) -> None:
        files = list(messageFiles(path))
        self.retr: list[bytes] = []
        listing = [b"+OK\r\n"]
        uidl = [b"+OK\r\n"]
        total = 0
        for number, (name, filePath) in enumerate(files, 1):
            with open(filePath, "rb") as f:
                wire = expectedWire(f.read())
            # RFC 1939 section 11: a message's size is its octets with CRLF
            # line ends, before byte-stuffing (section 3) is applied.
            total += len(wire)
            self.retr.append(b"+OK %d octets\r\n%s.\r\n" % (len(wire), stuff(wire)))
            listing.append(b"%d %d\r\n" % (number, len(wire)))
            # The unique-id: the file's base name (RFC 1939 allows 0x21-0x7E).
            uid = name.split(":")[0].encode()
            uidl.append(b"%d %s\r\n" % (number, uid))
        listing.append(b".\r\n")
        uidl.append(b".\r\n")
        self.stat = b"+OK %d %d\r\n" % (len(files), total)
        self.list = b"".join(listing)
        self.uidl = b"".join(uidl)


class FloorPOP3(LineOnlyReceiver):
    """
    Canned answers to the commands the benchmark sends.
    """

    maildrops: dict[bytes, Maildrop]
    passwords: dict[bytes, bytes]

    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)  # type: ignore[attr-defined]
        self.user = b""
        self.maildrop: Maildrop | None = None
        self.transport.write(GREETING)

    def lineReceived(self, line: bytes) -> None:
        keyword, _, argument = line.partition(b" ")
        keyword = keyword.upper()
        write = self.transport.write
        drop = self.maildrop
        if keyword == b"QUIT":
            write(b"+OK bye\r\n")
            self.transport.loseConnection()
        elif drop is not None:
            if keyword == b"RETR":
                try:
                    write(drop.retr[int(argument) - 1])
                except (ValueError, IndexError):
                    write(b"-ERR no such message\r\n")
            elif keyword == b"STAT":
                write(drop.stat)
            elif keyword == b"LIST" and not argument:
                write(drop.list)
            elif keyword == b"UIDL" and not argument:
                write(drop.uidl)
            elif keyword == b"NOOP":
                write(OK)
            else:
                write(b"-ERR not in the floor server\r\n")
        elif keyword == b"USER":
            self.user = argument
            write(OK)
        elif keyword == b"PASS":
            if self.passwords.get(self.user) == argument and self.user in self.maildrops:
                self.maildrop = self.maildrops[self.user]
                write(b"+OK logged in\r\n")
            else:
                write(b"-ERR [AUTH] no\r\n")
        elif keyword == b"UTF8":
            # Messages are served as stored, which is what UTF8 asks for.
            write(OK)
        else:
            write(b"-ERR not in the floor server\r\n")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--users", required=True, help='file of "user password" lines')
    parser.add_argument("--mailroot", required=True, help="directory of Maildirs, one per user")
    options = parser.parse_args(argv)

    passwords: dict[bytes, bytes] = {}
    with open(options.users, "rb") as f:
        for line in f:
            if line.strip():
                user, password = line.split()
                passwords[user] = password
    FloorPOP3.passwords = passwords
    FloorPOP3.maildrops = {
        user: Maildrop(os.path.join(options.mailroot, os.fsdecode(user))) for user in passwords
    }
    factory = protocol.ServerFactory.forProtocol(FloorPOP3)
    # popserv's backlog, so that neither waits on the other's SYN queue.
    endpoint = endpoints.TCP4ServerEndpoint(
        reactor, options.port, backlog=1024, interface="127.0.0.1"
    )

    def listening(port: Any) -> None:
        print(f"twisted_floor listening on {port.getHost().port}", flush=True)

    def failed(reason: Any) -> None:
        print(f"twisted_floor cannot listen: {reason.getErrorMessage()}", flush=True)
        reactor.stop()  # type: ignore[attr-defined]

    endpoint.listen(factory).addCallbacks(listening, failed)
    reactor.run()  # type: ignore[attr-defined]
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
