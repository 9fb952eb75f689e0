#!/usr/bin/env python3
"""
Benchmark logging in to one big Maildir, cold (no C{popserv.index}) and
warm (with it), run by hand: nothing here asserts a speed.

The Maildir holds N messages of S octets named as Postfix's C{local} and
procmail name them (C{SECONDS.MusecPpid.host}, no C{,S=}/C{,W=}), so popserv
must read every file to size it unless its index knows the message.  A share
of them is in C{cur/} with flags, as a mail client leaves them; every K-th
has a UTF-8 Subject, so some downgraded sizes are not the plain ones.

It measures, in this process and pinned to one CPU,
C{MaildirStore.openMaildrop} and C{listMessages} with popserv's default
thread runner: cold (index removed first), warm (index as the previous
login left it), and warm after a delivery of D more messages.  A client's
time from connecting to the end of a full UIDL listing, through a real
C{twistd popserv} and beside Dovecot and twisted.mail.pop3, is the
C{maildrop} scenario of C{bench_maildir.py}.

With C{--pauses} a 1 ms timer runs on the reactor meanwhile, and it
reports the longest time the reactor thread went without running it
during each login: how long every other session of the server would have
waited at worst.  The login's work runs in a worker thread, but its
C-level steps over all names (sorting, joining, a regular expression)
hold the interpreter's lock while they run, and Python hands the lock
over only every 5 ms (C{sys.getswitchinterval}) otherwise.

With C{--parts} it also times, on the same files, the parts of a cold
login that grow with the number of messages: listing C{new/} and C{cur/};
opening, reading and closing every file; and the same with each file
sized (both sizes, as a cold login does), of which the downgraded size
(RFC 6856) is timed alone over the files' contents in memory.  What a cold
login takes beyond them is ordering the names, the index and the
snapshot.  C{--data suite} makes the messages with C{bench_maildir.py}'s
generator and seed instead (its C{maildrop} scenario's mail: text with non-ASCII
words, and a UTF-8 sender's name or subject in about half the messages),
all in C{new/}.

Each figure is given as wall time and as CPU time of this process: on a
shared machine the wall time includes waiting for the CPU.  Before each
cold login every message file is read once, so that "cold" means "no
index", not "not in the page cache" (some virtual machines reclaim page
cache within minutes); with C{--uncached} they are dropped from the page
cache instead, as after a reboot, and a cold login reads them from the
disk.  With C{--unread}, their access times are set back after that
read, as for mail delivered and never read: a server's first read of each
then updates it, on a file system mounted C{relatime}.

To compare with another version of popserv, put it first on the path:
C{PYTHONPATH=/path/to/other/checkout .venv/bin/python benchmarks/bench_index.py}.

    .venv/bin/python benchmarks/bench_index.py
    .venv/bin/python benchmarks/bench_index.py --count 20000 --repeat 5
    .venv/bin/python benchmarks/bench_index.py --count 30000 --uncached
    .venv/bin/python benchmarks/bench_index.py --unread
    .venv/bin/python benchmarks/bench_index.py --data suite --parts
    .venv/bin/python benchmarks/bench_index.py --pauses
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import suppress
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from suite.data import (
    evictMessageFiles,
    fillMaildir,
    markUnread,
    messageFiles,
    readMessageFiles,
)
from suite.data import makeMaildir as makeSuiteMaildir
from suite.procfs import pinned

INDEX_FILES = ("popserv.index", "popserv.index.tmp")
USER, PASSWORD = "big", "pw"


def makeMessage(seq: int, size: int, utf8: bool) -> bytes:
    """
    A message of exactly C{size} octets (at least 300) with LF line endings.
    """
    subject = "Gr\u00fc\u00dfe aus Z\u00fcrich" if utf8 else "Weekly report"
    head = (
        "Return-Path: <alice@example.net>\n"
        f"Delivered-To: {USER}@example.org\n"
        "Received: from mx.example.org (localhost [127.0.0.1])\n"
        f"\tby mail.example.org (Postfix) with ESMTP id {seq:010X}\n"
        f"Message-ID: <{seq}.bench@example.net>\n"
        "From: Alice <alice@example.net>\n"
        f"To: {USER}@example.org\n"
        f"Subject: {subject} #{seq}\n"
        "\n"
    ).encode()
    line = b"The quick brown fox jumps over the lazy dog, then again and again.\n"
    room = max(size - len(head), 1)
    body = (line * (room // len(line) + 1))[: room - 1] + b"\n"
    return head + body


def makeMaildir(path: str, count: int, size: int, curShare: float, utf8Every: int) -> None:
    """
    C{count} messages in C{path}, oldest first, some moved to cur/.
    """
    for subdir in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(path, subdir), mode=0o700, exist_ok=True)
    start = int(time.time()) - count - 10
    curEvery = round(1 / curShare) if curShare > 0 else 0
    pid = os.getpid()
    for seq in range(count):
        data = makeMessage(seq, size, utf8Every > 0 and seq % utf8Every == 0)
        base = f"{start + seq}.M{seq * 7 % 1000000}P{pid}Q{seq}.bench.example.org"
        if curEvery and seq % curEvery == 0:
            name = os.path.join(path, "cur", base + ":2,S")
        else:
            name = os.path.join(path, "new", base)
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)


_lastDelivery = [0]


def deliverMore(path: str, count: int, size: int) -> None:
    """
    Deliver C{count} more messages into new/, newer than the others, one a
    second as their names tell (names in the future, later at each call,
    so that new mail sorts after old as it does in a real Maildir).
    """
    start = max(int(time.time()) + 10, _lastDelivery[0] + 1)
    _lastDelivery[0] = start + count
    for seq in range(count):
        base = f"{start + seq}.M{seq}P{os.getpid()}R{time.monotonic_ns()}.bench.example.org"
        with open(os.path.join(path, "new", base), "xb") as f:
            f.write(makeMessage(10**7 + seq, size, False))


def removeIndex(path: str) -> None:
    for name in INDEX_FILES:
        with suppress(FileNotFoundError):
            os.unlink(os.path.join(path, name))


Figures = dict[str, list[tuple[float, float]]]
#: For each kind of login, the longest time the reactor thread went
#: without running a 1 ms timer during each login: what every other
#: session waited at worst meanwhile.
Pauses = dict[str, list[float]]


def summary(runs: Sequence[tuple[float, float]]) -> str:
    wall = [w for w, _ in runs]
    cpu = [c for _, c in runs]
    return (
        f"wall median {statistics.median(wall):6.3f} s  best {min(wall):6.3f} s"
        f"   cpu median {statistics.median(cpu):6.3f} s  best {min(cpu):6.3f} s"
        f"   ({len(runs)} runs)"
    )


# In-process: the store alone.


def benchStore(root: str, maildir: str, options: argparse.Namespace) -> tuple[Figures, Pauses]:
    """
    Time the store's logins, and with C{options.pauses} the longest pause
    of the reactor thread during each (L{Pauses}).
    """
    from twisted.internet import defer, task

    from popserv.maildir import MaildirStore

    times: Figures = {"cold": [], "warm": [], "warm+new": []}
    pauses: Pauses = {kind: [] for kind in times}
    count: list[int] = []
    # The reactor thread's view: when it last ran a tick, the longest gap
    # between two ticks since the login began.
    lastTick, longest = [0.0], [0.0]

    def tick() -> None:
        now = time.perf_counter()
        longest[0] = max(longest[0], now - lastTick[0])
        lastTick[0] = now

    async def login(store: Any, kind: str) -> None:
        began, cpu = time.perf_counter(), time.process_time()
        lastTick[0], longest[0] = began, 0.0
        maildrop = await store.openMaildrop(USER)
        infos = await maildrop.listMessages()
        ended = time.perf_counter()
        times[kind].append((ended - began, time.process_time() - cpu))
        pauses[kind].append(max(longest[0], ended - lastTick[0]))
        count.append(len(infos))
        maildrop.close()

    async def run(reactor: Any) -> None:
        store = MaildirStore(os.path.join(root, "{user}"))
        ticker = task.LoopingCall(tick)
        if options.pauses:
            ticker.start(0.001)
        for _ in range(options.repeat):
            removeIndex(maildir)
            if options.uncached:
                evictMessageFiles(maildir)
            else:
                # So that a cold login finds the files in the page cache.
                readMessageFiles(maildir)
            if options.unread:
                markUnread(maildir)
            await login(store, "cold")
            await login(store, "warm")
            await login(store, "warm")
            deliverMore(maildir, options.deliver, options.size)
            await login(store, "warm+new")
        if ticker.running:
            ticker.stop()

    def main(reactor: Any) -> Any:
        return defer.ensureDeferred(run(reactor))

    with pinned(options.cpu if options.pin else None):
        try:
            task.react(main)
        except SystemExit as e:
            if e.code:
                raise
    print(f"  messages listed: {count[0]} .. {count[-1]}", file=sys.stderr)
    return times, pauses if options.pauses else {}


# In-process: the parts of a cold login.


def benchParts(maildir: str, options: argparse.Namespace) -> Figures:
    """
    Time the parts of a cold login that grow with the number of messages,
    each C{options.repeat} times, the files in the page cache.
    """
    from popserv.encoder import downgradeDelta
    from popserv.maildir import measureEach
    from popserv.prefetch import NOATIME, readEach

    readMessageFiles(maildir)
    directories = {
        subdir: os.open(os.path.join(maildir, subdir), os.O_RDONLY | os.O_DIRECTORY)
        for subdir in ("new", "cur")
    }
    files = []
    contents = []
    for i, (name, path) in enumerate(messageFiles(maildir)):
        files.append((i, directories[os.path.basename(os.path.dirname(path))], name))
        with open(path, "rb") as f:
            contents.append(f.read(1 << 16))  # what a login's first read takes
    buffer = bytearray(1 << 16)
    flags = os.O_RDONLY | os.O_CLOEXEC | NOATIME

    def listing() -> None:
        for subdir in directories:
            os.listdir(os.path.join(maildir, subdir))

    def reading() -> None:
        for _ in readEach(files, buffer, lambda key, fd, length: length, flags):
            pass

    def sizing() -> None:
        for _, sizes in measureEach(files, None):
            assert not isinstance(sizes, OSError), sizes

    def downgraded() -> None:
        # As the login does it: a message that is all ASCII needs no look.
        for data in contents:
            if not data.isascii():
                downgradeDelta(data)

    parts = {
        "list": listing,
        "read": reading,
        "read+size": sizing,
        "downgrade": downgraded,
    }
    times: Figures = {name: [] for name in parts}
    try:
        with pinned(options.cpu if options.pin else None):
            for _ in range(options.repeat):
                for name, part in parts.items():
                    began, cpu = time.perf_counter(), time.process_time()
                    part()
                    times[name].append((time.perf_counter() - began, time.process_time() - cpu))
    finally:
        for fd in directories.values():
            os.close(fd)
    return times


def parseArgs(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--count", type=int, default=100_000, help="messages in the Maildir (100000)")
    add("--size", type=int, default=900, help="octets per message (900)")
    add("--cur-share", type=float, default=0.5, help="share of messages in cur/ (0.5)")
    add("--utf8-every", type=int, default=20, help="every K-th has a UTF-8 Subject (20; 0: none)")
    add("--deliver", type=int, default=100, help="messages delivered before warm+new (100)")
    add(
        "--uncached",
        action="store_true",
        help="before each cold login, drop the message files from the page cache"
        " instead of reading them into it",
    )
    add(
        "--unread",
        action="store_true",
        help="before each cold login, set the message files' access times back, as"
        " for mail never read since it was delivered (on a relatime file system the"
        " first read then updates them)",
    )
    add(
        "--data",
        choices=("plain", "suite"),
        default="plain",
        help="plain: the messages described above; suite: bench_maildir.py's"
        " generator's (its maildrop scenario's mail, all in new/; --cur-share and"
        " --utf8-every do not apply)",
    )
    add("--seed", type=int, default=1939, help="seed of the suite's generator (1939)")
    add(
        "--parts",
        action="store_true",
        help="also time the parts of a cold login: listing, reading, sizing",
    )
    add(
        "--pauses",
        action="store_true",
        help="also report the longest pause of the reactor thread during each login"
        " (a 1 ms timer runs meanwhile, which slows the logins a little)",
    )
    add("--repeat", type=int, default=3, help="runs of each measurement (3)")
    add("--cpu", type=int, default=0, help="CPU to pin to (0)")
    add("--no-pin", dest="pin", action="store_false", help="do not pin to a CPU")
    add("--workdir", help="parent of the temporary directory (default: system temp)")
    add("--keep", action="store_true", help="keep the temporary directory")
    options = parser.parse_args(argv)
    if options.count < 1 or options.size < 300 or options.repeat < 1:
        parser.error("--count and --repeat must be at least 1, --size at least 300")
    if options.pin and options.cpu not in os.sched_getaffinity(0):
        print(f"note: CPU {options.cpu} is not available; not pinning", file=sys.stderr)
        options.pin = False
    return options


def main(argv: Sequence[str]) -> int:
    options = parseArgs(argv)
    workdir = tempfile.mkdtemp(prefix="popserv-bench-index-", dir=options.workdir)
    root = os.path.join(workdir, "mail")
    maildir = os.path.join(root, USER)
    try:
        began = time.perf_counter()
        if options.data == "suite":
            makeSuiteMaildir(root, USER)
            fillMaildir(maildir, USER, [options.size] * options.count, options.seed, False)
        else:
            makeMaildir(maildir, options.count, options.size, options.cur_share, options.utf8_every)
        os.sync()
        print(
            f"made {options.count} messages of {options.size} octets"
            f" in {time.perf_counter() - began:.1f} s",
            file=sys.stderr,
        )
        # The parts first, over the same messages as the first cold login
        # (later ones also have the deliveries of warm+new).
        parts = benchParts(maildir, options) if options.parts else {}
        logins, pauses = benchStore(root, maildir, options)
        figures = logins | parts
        print()
        print(
            f"{options.count} messages x {options.size} octets ({options.data}),"
            f" Python {sys.version.split()[0]},"
            f" pinned: {'yes' if options.pin else 'no'}"
        )
        for kind, times in figures.items():
            print(f"{kind:9} {summary(times)}")
        for kind, longest in pauses.items():
            print(
                f"{kind:9} reactor paused at most {statistics.median(longest) * 1000:5.1f} ms"
                f" (median of the logins), {max(longest) * 1000:5.1f} ms (worst)"
            )
    finally:
        if options.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
