#!/usr/bin/env python3
"""
Benchmark logging in to one big Maildir, cold (no C{popserv.index}) and
warm (with it), run by hand: nothing here asserts a speed.

The Maildir holds N messages of S octets named as Postfix's C{local} and
procmail name them (C{SECONDS.MusecPpid.host}, no C{,S=}/C{,W=}), so popserv
must read every file to size it unless its index knows the message.  A share
of them is in C{cur/} with flags, as a mail client leaves them; every K-th
has a UTF-8 Subject, so some downgraded sizes are not the plain ones.

Two measurements:

 - C{store}: in this process, C{MaildirStore.openMaildrop} and
   C{listMessages} with the reactor's real thread pool: cold (index removed
   first), warm (index as the previous login left it), and warm after a
   delivery of D more messages.
 - C{e2e}: a C{twistd popserv} process pinned to one CPU and a socket client
   pinned to another; the time from connect to the end of the full UIDL
   listing: greeting, USER, PASS, STAT, UIDL, then QUIT (not timed).

Each figure is given as wall time and as CPU time (of this process for
C{store}, of the server for C{e2e}): on a shared machine the wall time
includes waiting for the CPU.  Before each cold login every message file
is read once, so that "cold" means "no index", not "not in the page cache"
(some virtual machines reclaim page cache within minutes).

To compare with another version of popserv, put it first on the path:
C{PYTHONPATH=/path/to/other/checkout .venv/bin/python benchmarks/bench_index.py}
(the server process inherits the environment).

    .venv/bin/python benchmarks/bench_index.py
    .venv/bin/python benchmarks/bench_index.py --count 20000 --repeat 5
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from suite.procfs import pinned, processCPU

INDEX_FILES = ("popserv.index", "popserv.index.tmp")
STARTUP_TIMEOUT = 60.0
RESPONSE_TIMEOUT = 120.0
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


def readAll(path: str) -> None:
    """
    Read every message file, so that a cold login finds them in the page
    cache.
    """
    for subdir in ("new", "cur"):
        directory = os.path.join(path, subdir)
        for name in os.listdir(directory):
            with open(os.path.join(directory, name), "rb") as f:
                while f.read(1 << 20):
                    pass


Figures = dict[str, list[tuple[float, float]]]


def summary(runs: Sequence[tuple[float, float]]) -> str:
    wall = [w for w, _ in runs]
    cpu = [c for _, c in runs]
    return (
        f"wall median {statistics.median(wall):6.3f} s  best {min(wall):6.3f} s"
        f"   cpu median {statistics.median(cpu):6.3f} s  best {min(cpu):6.3f} s"
        f"   ({len(runs)} runs)"
    )


# In-process: the store alone.


def benchStore(root: str, maildir: str, options: argparse.Namespace) -> Figures:
    from twisted.internet import defer, task

    from popserv.maildir import MaildirStore

    times: Figures = {"cold": [], "warm": [], "warm+new": []}
    count: list[int] = []

    async def login(store: Any) -> tuple[float, float]:
        began, cpu = time.perf_counter(), time.process_time()
        maildrop = await store.openMaildrop(USER)
        infos = await maildrop.listMessages()
        elapsed = time.perf_counter() - began, time.process_time() - cpu
        count.append(len(infos))
        maildrop.close()
        return elapsed

    async def run(reactor: Any) -> None:
        store = MaildirStore(os.path.join(root, "{user}"))
        for _ in range(options.repeat):
            removeIndex(maildir)
            readAll(maildir)
            times["cold"].append(await login(store))
            times["warm"].append(await login(store))
            times["warm"].append(await login(store))
            deliverMore(maildir, options.deliver, options.size)
            times["warm+new"].append(await login(store))

    def main(reactor: Any) -> Any:
        return defer.ensureDeferred(run(reactor))

    with pinned(options.server_cpu if options.pin else None):
        try:
            task.react(main)
        except SystemExit as e:
            if e.code:
                raise
    print(f"  messages listed: {count[0]} .. {count[-1]}", file=sys.stderr)
    return times


# End to end: a twistd process and a socket client.


class Server:
    def __init__(self, twistd: str, root: str, workdir: str, cpu: int | None) -> None:
        self.logPath = os.path.join(workdir, "server.log")
        self.command = [
            twistd,
            "-n",
            "--pidfile=",
            "popserv",
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--auth",
            f"memory:{USER}:{PASSWORD}:warmup:{PASSWORD}",
            "--mailstore",
            f"maildir:{root}/{{user}}",
        ]
        self.cpu = cpu
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> None:
        with open(self.logPath, "wb") as log, pinned(self.cpu):
            self.process = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        pattern = re.compile(rb"POP3ServerFactory starting on (\d+)")
        while time.monotonic() < deadline:
            with open(self.logPath, "rb") as f:
                match = pattern.search(f.read())
            if match:
                self.port = int(match.group(1))
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError("server did not start; see " + self.logPath)

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(15)


class Client:
    """
    A blocking POP3 client that reads responses whole.
    """

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=RESPONSE_TIMEOUT)
        self.buffer = bytearray()

    def _fill(self) -> None:
        data = self.sock.recv(1 << 20)
        if not data:
            raise ConnectionError("server closed the connection")
        self.buffer += data

    def line(self) -> bytes:
        for _ in range(1_000_000):
            end = self.buffer.find(b"\r\n")
            if end >= 0:
                line = bytes(self.buffer[:end])
                del self.buffer[: end + 2]
                return line
            self._fill()
        raise RuntimeError("no line")

    def command(self, text: str, multiline: bool = False) -> tuple[bytes, bytes]:
        self.sock.sendall(text.encode() + b"\r\n")
        status = self.line()
        if not status.startswith(b"+OK"):
            raise RuntimeError(f"{text.split()[0]}: {status!r}")
        if not multiline:
            return status, b""
        start = 0
        for _ in range(1_000_000):
            end = self.buffer.find(b"\r\n.\r\n", start)
            if end >= 0 or self.buffer.startswith(b".\r\n"):
                end = end if end >= 0 else -2
                body = bytes(self.buffer[: end + 2])
                del self.buffer[: end + 5]
                return status, body
            start = max(len(self.buffer) - 4, 0)
            self._fill()
        raise RuntimeError("no end of listing")

    def close(self) -> None:
        self.sock.close()


def session(port: int, user: str, pid: int) -> tuple[tuple[float, float], int]:
    """
    One timed login with STAT and a full UIDL: the wall time, the CPU time
    of the server process C{pid}, and the number of UIDL lines.
    """
    cpu = processCPU(pid, children=False)
    began = time.perf_counter()
    client = Client(port)
    try:
        if not client.line().startswith(b"+OK"):
            raise RuntimeError("no greeting")
        client.command(f"USER {user}")
        client.command(f"PASS {PASSWORD}")
        client.command("STAT")
        _, body = client.command("UIDL", multiline=True)
        elapsed = time.perf_counter() - began, processCPU(pid, children=False) - cpu
        client.command("QUIT")
    finally:
        client.close()
    return elapsed, body.count(b"\r\n")


def benchEndToEnd(root: str, maildir: str, workdir: str, options: argparse.Namespace) -> Figures:
    twistd = options.twistd or os.path.join(os.path.dirname(sys.executable), "twistd")
    server = Server(twistd, root, workdir, options.server_cpu if options.pin else None)
    times: Figures = {"cold": [], "warm": [], "warm+new": []}
    server.start()
    assert server.process is not None
    pid = server.process.pid
    try:
        with pinned(options.client_cpu if options.pin else None):
            session(server.port, "warmup", pid)  # thread pool and imports
            lines = []
            for _ in range(options.repeat):
                removeIndex(maildir)
                readAll(maildir)
                for name in ("cold", "warm", "warm"):
                    elapsed, n = session(server.port, USER, pid)
                    times[name].append(elapsed)
                    lines.append(n)
                deliverMore(maildir, options.deliver, options.size)
                elapsed, n = session(server.port, USER, pid)
                times["warm+new"].append(elapsed)
                lines.append(n)
        print(f"  UIDL lines: {lines[0]} .. {lines[-1]}", file=sys.stderr)
    finally:
        server.stop()
    return times


def parseArgs(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--count", type=int, default=100_000, help="messages in the Maildir (100000)")
    add("--size", type=int, default=900, help="octets per message (900)")
    add("--cur-share", type=float, default=0.5, help="share of messages in cur/ (0.5)")
    add("--utf8-every", type=int, default=20, help="every K-th has a UTF-8 Subject (20; 0: none)")
    add("--deliver", type=int, default=100, help="messages delivered before warm+new (100)")
    add("--repeat", type=int, default=3, help="runs of each measurement (3)")
    add("--skip", default="", help="comma-separated measurements to skip: store, e2e")
    add("--server-cpu", type=int, default=0, help="CPU for the server (0)")
    add("--client-cpu", type=int, default=1, help="CPU for the client (1)")
    add("--no-pin", dest="pin", action="store_false", help="do not pin to CPUs")
    add("--twistd", help="twistd to run (default: the one next to this Python)")
    add("--workdir", help="parent of the temporary directory (default: system temp)")
    add("--keep", action="store_true", help="keep the temporary directory")
    options = parser.parse_args(argv)
    if options.count < 1 or options.size < 300 or options.repeat < 1:
        parser.error("--count and --repeat must be at least 1, --size at least 300")
    cpus = os.sched_getaffinity(0)
    if options.pin and not {options.server_cpu, options.client_cpu} <= cpus:
        print("note: not enough CPUs to pin; not pinning", file=sys.stderr)
        options.pin = False
    return options


def main(argv: Sequence[str]) -> int:
    options = parseArgs(argv)
    skip = {s.strip() for s in options.skip.split(",") if s.strip()}
    workdir = tempfile.mkdtemp(prefix="popserv-bench-index-", dir=options.workdir)
    root = os.path.join(workdir, "mail")
    maildir = os.path.join(root, USER)
    try:
        began = time.perf_counter()
        makeMaildir(maildir, options.count, options.size, options.cur_share, options.utf8_every)
        os.sync()
        print(
            f"made {options.count} messages of {options.size} octets"
            f" in {time.perf_counter() - began:.1f} s",
            file=sys.stderr,
        )
        results: dict[str, Figures] = {}
        runs: list[tuple[str, Callable[[], Figures]]] = [
            ("store", lambda: benchStore(root, maildir, options)),
            ("e2e", lambda: benchEndToEnd(root, maildir, workdir, options)),
        ]
        for name, run in runs:
            if name in skip:
                continue
            print(f"{name}:", file=sys.stderr)
            results[name] = run()
        print()
        print(
            f"{options.count} messages x {options.size} octets, Python {sys.version.split()[0]},"
            f" pinned: {'yes' if options.pin else 'no'}"
        )
        for name, figures in results.items():
            for kind, times in figures.items():
                print(f"{name:6} {kind:9} {summary(times)}")
    finally:
        if options.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
