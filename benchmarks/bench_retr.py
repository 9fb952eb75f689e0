#!/usr/bin/env python3
"""
Benchmark the CPU popserv spends on one RETR, in this process, run by hand:
nothing here asserts a speed.

The side-by-side ``bulk`` scenario of C{bench_maildir.py} is a round trip
per message through the kernel and the load generator, and on a shared
machine its figures move by a fifth from one run to the next: too much to
see a change of a few microseconds in popserv's own work.  This measures
only that work: a real L{POP3ServerFactory} and L{MaildirStore} on a
Maildir of N generated messages of S octets (the benchmark's own mail:
headers with UTF-8, quoted text, dot-lines), one session on a
C{StringTransport}, and the store's file work run at once in this thread
(so a read-ahead's file reads count too).  It sends C{RETR 1} to
C{RETR N} in order, as a downloading client does, and reports the CPU time
per RETR over R sessions.

Not included: Twisted's TCP transport and reactor, the kernel, and the
hand-over to a worker thread; C{bulk} and the floor server measure those.

With C{--pause US}, the session waits that many microseconds before each
RETR, as a real server waits for the client's next command; the CPU time
excludes the waits, and so does the wall time.  A CPU that was idle runs
the next request slower (on a virtual machine the host may run other work
meanwhile, and caches cool): this shows how much of the gap between this
script's figure and a real server's CPU per message is that.

With C{--uncached}, every message file is dropped from the page cache
before each measured session, as after a reboot, and the wall time per
RETR is the figure to read: how long the client waits while the files
come from the disk.

To compare with another version of popserv, put it first on the path:
C{PYTHONPATH=/path/to/other/checkout .venv/bin/python benchmarks/bench_retr.py}.

    .venv/bin/python benchmarks/bench_retr.py
    .venv/bin/python benchmarks/bench_retr.py --size 50000 --count 1000
    .venv/bin/python benchmarks/bench_retr.py --size 50000 --count 1000 --pause 300
    .venv/bin/python benchmarks/bench_retr.py --count 5000 --uncached
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from suite.data import deliver, evictMessageFiles, makeMaildir, makeMessage
from suite.procfs import pinned
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet.address import IPv4Address
from twisted.internet.defer import maybeDeferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

import popserv
from popserv.maildir import MaildirStore
from popserv.protocol import POP3ServerFactory
from popserv.realm import MaildropRealm

USER, PASSWORD = "alice", b"secret"


def session(
    factory: POP3ServerFactory, count: int, utf8: bool, pause: float = 0.0
) -> tuple[float, float]:
    """
    One session that retrieves every message in order, C{pause} seconds
    before each: the CPU seconds and the wall seconds of the RETRs, the
    pauses left out.
    """
    protocol = factory.buildProtocol(None)
    assert protocol is not None
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5000))
    protocol.makeConnection(transport)
    login = (b"UTF8\r\n" if utf8 else b"") + b"USER %s\r\nPASS %s\r\n" % (USER.encode(), PASSWORD)
    protocol.dataReceived(login)
    if not transport.value().splitlines()[-1].startswith(b"+OK"):
        raise SystemExit(f"login failed: {transport.value()!r}")
    transport.clear()
    lines = [b"RETR %d\r\n" % number for number in range(1, count + 1)]
    began, wall = time.process_time(), time.perf_counter()
    for line in lines:
        if pause:
            time.sleep(pause)
        protocol.dataReceived(line)
        transport.clear()
    spent, wall = time.process_time() - began, time.perf_counter() - wall
    # time.sleep sleeps at least as long as asked (the excess, a timer's
    # slack, stays in the wall time).
    wall -= pause * len(lines)
    protocol.dataReceived(b"QUIT\r\n")
    if not transport.value().startswith(b"+OK"):
        raise SystemExit(f"QUIT failed: {transport.value()!r}")
    # What the reactor does once the closed connection is gone: the session
    # releases its maildrop.
    protocol.connectionLost(Failure(ConnectionDone()))
    return spent, wall


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--size", type=int, default=1000, help="octets per message [1000]")
    parser.add_argument("--count", type=int, default=5000, help="messages [5000]")
    parser.add_argument("--repeat", type=int, default=5, help="measured sessions [5]")
    parser.add_argument("--no-utf8", dest="utf8", action="store_false", help="downgrade (RFC 6856)")
    parser.add_argument("--cpu", type=int, default=0, help="CPU to pin to [0]")
    parser.add_argument(
        "--uncached",
        action="store_true",
        help="drop the message files from the page cache before each measured session",
    )
    parser.add_argument(
        "--pause",
        type=float,
        default=0.0,
        metavar="US",
        help="wait this many microseconds before each RETR, as for a client's next command [0]",
    )
    options = parser.parse_args(argv)
    if options.pause < 0:
        parser.error("--pause must not be negative")
    pause = options.pause / 1e6

    root = tempfile.mkdtemp(prefix="popserv-bench-retr-")
    try:
        maildir = makeMaildir(root, USER)
        rng = random.Random(1)
        for seq in range(options.count):
            deliver(maildir, makeMessage(rng, seq, USER, options.size), seq, 1_700_000_000, False)
        checker = InMemoryUsernamePasswordDatabaseDontUse(**{USER: PASSWORD})
        store = MaildirStore(os.path.join(root, "{user}"), runInThread=maybeDeferred)
        factory = POP3ServerFactory(Portal(MaildropRealm(store), [checker]), clock=Clock())
        with pinned(options.cpu):
            session(factory, options.count, options.utf8, pause)  # warm-up; writes the index
            cpu, wall = [], []
            for _ in range(options.repeat):
                if options.uncached:
                    evictMessageFiles(maildir)
                spent, waited = session(factory, options.count, options.utf8, pause)
                cpu.append(spent / options.count * 1e6)
                wall.append(waited / options.count * 1e6)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(
        f"popserv {popserv.__file__}: {options.count} messages of {options.size} octets,"
        f" UTF8 {'on' if options.utf8 else 'off'},"
        f" {'not in' if options.uncached else 'in'} the page cache,"
        f" {options.pause:g} us pause before each:"
        f" CPU per RETR {min(cpu):.1f} us best, {statistics.median(cpu):.1f} us median;"
        f" wall {min(wall):.1f} us best, {statistics.median(wall):.1f} us median"
        f" ({options.repeat} sessions)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
