#!/usr/bin/env python3
"""
Count the instructions a server executes per login session, run by hand:
nothing here asserts a figure.

The ``churn`` scenario of C{bench_maildir.py} measures CPU time, and on a
shared virtual machine that moves by a third from one run to the next: a
change of a few per cent to the login's code cannot be seen through it.
Instructions counted by valgrind's callgrind do not move: the same code,
inputs and data give the same count to within a fraction of a per cent,
whatever else the machine is doing.  So a change to the login path can be
compared with the commit before it, and with twisted.mail.pop3 and the
floor, at a glance.

Each server runs twice under C{valgrind --tool=callgrind}, started as
C{bench_maildir.py} starts it, on a fresh copy of the same mail (one
900-octet message for each of C clients).  C clients make, between them,
N sessions the first time and 5N the second, each connect, USER, PASS,
STAT, QUIT; the difference of the two totals over the 4N sessions more is
the count per session, with start-up and shut-down taken out.

With C{--retr M}, each user has M messages of C{--size} octets, and each
session retrieves them all after C{STAT} (C{RETR 1} to C{RETR M}, every
response read to its terminator): the count per session less the count
of a plain session, divided by M, is the work of one C{RETR}.

Only the server process's own instructions are counted (Python, Twisted,
popserv, the C library), not the kernel's work for it: its system calls,
TCP and the switches between its threads, which the CPU time of ``churn``
includes.  And an instruction is not a fixed time: a copy or a cache miss
costs more than an addition.  Read the count as the size of the work, and
the ``churn`` CPU time as its cost on this machine.

    .venv/bin/python benchmarks/bench_instructions.py
    .venv/bin/python benchmarks/bench_instructions.py --servers popserv --sessions 400
    .venv/bin/python benchmarks/bench_instructions.py --retr 20 --size 50000 --sessions 20
    PYTHONPATH=/other/checkout .venv/bin/python benchmarks/bench_instructions.py --servers popserv

Needs valgrind (C{apt-get install valgrind}).  Under it a server runs some
fifty times slower: the default run takes about three minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_maildir
from suite.data import fillMaildir, makeMaildir
from suite.servers import HOST, SERVERS, ServerAdapter, Unavailable

#: The servers this can count, in the order printed.
NAMES = ("popserv", "twisted", "floor")
PASSWORD = "pw"


async def _session(port: int, user: str, messages: int) -> None:
    reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 24)
    try:
        for line in (None, f"USER {user}", f"PASS {PASSWORD}", "STAT", "QUIT"):
            if line is not None:
                writer.write(line.encode() + b"\r\n")
            reply = await asyncio.wait_for(reader.readline(), 120)
            if not reply.startswith(b"+OK"):
                raise RuntimeError(f"{user}: {line!r} got {reply!r}")
            if line == "STAT":
                for number in range(1, messages + 1):
                    writer.write(f"RETR {number}\r\n".encode())
                    # The status line's CRLF, the message, the terminator.
                    response = await asyncio.wait_for(reader.readuntil(b"\r\n.\r\n"), 120)
                    if not response.startswith(b"+OK"):
                        raise RuntimeError(f"{user}: RETR {number} got {response[:80]!r}")
    finally:
        writer.close()
        await writer.wait_closed()


async def _sessions(port: int, users: Sequence[str], count: int, messages: int) -> None:
    """
    C{count} sessions, one client per user at a time (a Maildir is locked
    while a session holds it).
    """

    async def client(user: str, n: int) -> None:
        for _ in range(n):
            await _session(port, user, messages)

    share, extra = divmod(count, len(users))
    await asyncio.gather(*(client(u, share + (i < extra)) for i, u in enumerate(users)))


def _counted(path: str) -> int:
    """
    The instructions callgrind counted, from its output file.
    """
    with open(path) as f:
        for line in f:
            match = re.match(r"(?:summary|totals): (\d+)", line)
            if match:
                return int(match.group(1))
    raise RuntimeError(f"no totals in {path}")


def count(
    name: str, sessions: int, clients: int, workdir: str, options: Any, retr: tuple[int, int]
) -> int:
    """
    Run server C{name} under callgrind, make C{sessions} sessions, stop it:
    the instructions it executed.  With C{retr} (messages, size), each user
    has that many messages of that size and each session retrieves them
    all; else one 900-octet message that no session retrieves.
    """
    root = tempfile.mkdtemp(prefix=f"{name}-", dir=workdir)
    users = [f"u{i}" for i in range(clients)]
    mailroot = os.path.join(root, "mail")
    messages, size = retr if retr[0] else (1, 900)
    for user in users:
        fillMaildir(makeMaildir(mailroot, user), user, [size] * messages, 1, False)
    out = os.path.join(root, "callgrind.out")
    server: ServerAdapter = SERVERS[name](os.path.join(root, "server"), options)
    server.wrapper = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    # Python and Twisted start in about 20 s under callgrind on an idle
    # machine; on a loaded one (a CI runner, a test suite beside it), 60 s
    # was seen to be too short.
    server.startupTimeout = 300.0
    server.start(mailroot, [(u, PASSWORD) for u in users], None)
    try:
        asyncio.run(_sessions(server.port, users, sessions, retr[0]))
    finally:
        server.stop()
    return _counted(out)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--servers", default=",".join(NAMES), help=f"comma-separated ({','.join(NAMES)})"
    )
    parser.add_argument("--sessions", type=int, default=200, help="N: sessions in the first run")
    parser.add_argument("--clients", type=int, default=10, help="concurrent clients (10)")
    parser.add_argument("--twistd", default=None, help="the twistd to run popserv with")
    parser.add_argument(
        "--retr",
        type=int,
        default=0,
        metavar="M",
        help="each session also retrieves M messages (of --size octets) after STAT",
    )
    parser.add_argument("--size", type=int, default=50_000, help="octets a message for --retr")
    options = parser.parse_args(argv)
    if options.retr < 0 or options.size < 1:
        parser.error("--retr must be at least 0 and --size at least 1")
    names = [n for n in options.servers.split(",") if n]
    unknown = set(names) - set(NAMES)
    if unknown:
        parser.error(f"unknown servers: {', '.join(sorted(unknown))}")
    if shutil.which("valgrind") is None:
        print("bench_instructions.py: valgrind is not installed (apt-get install valgrind)")
        return 2
    # The servers are started as bench_maildir.py starts them by default.
    serverOptions = bench_maildir.parseArgs(["--twistd", options.twistd] if options.twistd else [])
    first, second = options.sessions, 5 * options.sessions
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-instructions-") as workdir:
        for name in names:
            try:
                version = SERVERS[name].check(serverOptions)
            except Unavailable as e:
                print(f"{name}: skipped: {e}")
                continue
            retr = (options.retr, options.size)
            low = count(name, first, options.clients, workdir, serverOptions, retr)
            high = count(name, second, options.clients, workdir, serverOptions, retr)
            results[name] = (high - low) / (second - first)
            what = f", each retrieving {options.retr} of {options.size:,} octets" if retr[0] else ""
            print(
                f"{name} ({version}): {results[name]:,.0f} instructions per session"
                f" ({first} and {second} sessions, {options.clients} clients{what})",
                flush=True,
            )
    if "popserv" in results:
        for name, value in results.items():
            if name != "popserv":
                print(f"popserv / {name}: {results['popserv'] / value:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
