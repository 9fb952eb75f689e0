"""
Embed popserv in a Twisted program.

Serves user "alice" (password "secret") on a Twisted server endpoint, from a
MemoryStore holding one welcome message, or from Maildirs with --maildir:

    python embed.py                                  # tcp:1110:interface=127.0.0.1
    python embed.py tcp:0:interface=127.0.0.1        # any free port
    python embed.py --maildir '/srv/mail/{user}' unix:/run/pop3.sock

Prints "listening on HOST:PORT" (or the socket path) once it listens, then
serves until interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet import endpoints, task
from twisted.internet.defer import Deferred
from twisted.logger import globalLogBeginner, textFileLogObserver

from popserv import MaildirStore, MaildropRealm, MemoryStore, POP3ServerFactory
from popserv.credentials import normalizeChecker
from popserv.endpoints import withDefaultBacklog

#: The message alice finds in the MemoryStore: LF line endings and a line
#: that starts with ".", to show what the server does on the wire.
WELCOME = (
    b"From: postmaster@example.org\n"
    b"To: alice@example.org\n"
    b"Subject: Welcome\n"
    b"\n"
    b"Hello from an embedded popserv.\n"
    b".This line starts with a dot.\n"
)


def makeStore(maildir: str | None) -> Any:
    """
    The store to serve: Maildirs found by the template C{maildir}, or a
    MemoryStore with L{WELCOME} delivered to alice.
    """
    if maildir is not None:
        return MaildirStore(maildir)
    store = MemoryStore()
    store.deliver("alice", WELCOME)
    return store


async def main(reactor: Any, argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="An embedded popserv.")
    parser.add_argument("endpoint", nargs="?", default="tcp:1110:interface=127.0.0.1")
    parser.add_argument("--maildir", metavar="TEMPLATE", help="e.g. /srv/mail/{user}")
    args = parser.parse_args(argv)

    # The server's log goes to stderr; stdout carries only the line below.
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)

    # cred user names are bytes.  Given keyword arguments, this checker
    # stores bytes names; normalizeChecker makes sure of it for any
    # InMemoryUsernamePasswordDatabaseDontUse (strcred's memory: stores str
    # names, which never match) and returns other checkers unchanged.
    checker = normalizeChecker(InMemoryUsernamePasswordDatabaseDontUse(alice=b"secret"))
    portal = Portal(MaildropRealm(makeStore(args.maildir)), [checker])
    factory = POP3ServerFactory(portal)

    # A server's backlog (1024) rather than Twisted's 50, as twistd popserv.
    endpoint = endpoints.serverFromString(reactor, withDefaultBacklog(args.endpoint))
    port = await endpoint.listen(factory)
    address = port.getHost()
    if hasattr(address, "port"):
        where = f"{address.host}:{address.port}"
    else:  # a UNIX socket: its path
        where = os.fsdecode(address.name)
    print(f"listening on {where}", flush=True)

    # When the reactor stops (Ctrl-C, SIGTERM), accept no more clients.  (The
    # factory lets the sessions that sent QUIT finish first, by itself.)
    reactor.addSystemEventTrigger("before", "shutdown", port.stopListening)

    # Serve until the reactor stops.
    await Deferred()


if __name__ == "__main__":
    task.react(lambda reactor: Deferred.fromCoroutine(main(reactor, sys.argv[1:])))
