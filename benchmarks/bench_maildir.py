#!/usr/bin/env python3
"""
Benchmark popserv serving Maildirs, run by hand (not a test: nothing here
asserts a speed).

Three workloads, each against a fresh C{twistd popserv} process started
exactly as an operator would start it, on generated data in a temporary
directory:

 - C{churn}: C concurrent clients, each with its own user (the maildrop lock
   would otherwise serialise them), loop connect, USER, PASS, STAT, QUIT for
   D seconds: sessions per second and server CPU seconds per 1,000 sessions.
 - C{bulk}: one client logs in, sends LIST and UIDL and retrieves N messages
   of S bytes: MB/s, every byte checked against the expected wire form.
 - C{large}: one client retrieves one large message (a few times): MB/s and
   how much the server's resident memory grows during the transfer.

The server is pinned to one CPU and the load generator (a non-blocking
socket loop over epoll, in separate processes) to another; the client's own
CPU use is reported so a reader can see it was not the bottleneck.

Units: KB = 1,000 octets, MB = 1,000,000 octets.  Only 127.0.0.1 is used.

    .venv/bin/python benchmarks/bench_maildir.py --quick
    .venv/bin/python benchmarks/bench_maildir.py --json /tmp/bench.json
"""

from __future__ import annotations

import argparse
import base64
import bisect
import errno
import json
import multiprocessing
import os
import platform
import random
import re
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

KB = 1000
MB = 1000 * 1000

#: How long the server may take to start listening.
STARTUP_TIMEOUT = 60.0
#: The longest wait for any one response before the session counts as failed.
RESPONSE_TIMEOUT = 60.0
#: After the measured window, in-flight churn sessions get this long to end.
DRAIN_TIMEOUT = 10.0
#: Octets asked of the socket per recv().
RECV_SIZE = 256 * 1024

CRLF = b"\r\n"


# Message generation: what an MDA (Postfix local, procmail) leaves in new/:
# LF line endings, the Received trail, a DKIM signature, MIME structure;
# text with lines that need byte-stuffing, and base64 attachments for the
# bigger ones.

_VOCABULARY = """
    the of and to in is that for it as with was on be by this are at from or
    have an they which one you were all we when there can more if out so up
    said what about into than them only other new some could time these two
    may first then do any like my now over such our man me even most made
    after also did many before must through back years where much your way
    well down should because each just those people how too little state
    good very make world still own see men work long get here between both
    life being under never day same another know while last might us great
    old year off come since against go came right used take three server
    mailbox message protocol delivery queue header envelope retrieve client
    session password login maildir octet terminator stuffing timeout socket
    Grüße naïve Zürich façade smørrebrød déjà vu
"""
_WORDS = _VOCABULARY.split()

#: Lines that a POP3 server must byte-stuff (RFC 1939 section 3), including a
#: lone "." that would end the response early if it were not stuffed.
_DOT_LINES = [
    ".",
    "..",
    "...",
    ".NET 8 is out; see the release notes.",
    ".profile and .bashrc are read at login",
    ". leading dot and a space",
    "..double dot",
]

_NAMES = ["Alice Example", "Bob Müller", "Carol Ng", "Dave O'Brien", "Eve Søndergaard"]


def _wrap(rng: random.Random, words: int, width: int = 72) -> list[str]:
    lines, line = [], ""
    for _ in range(words):
        word = rng.choice(_WORDS)
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    if line:
        lines.append(line)
    return lines


def _textBody(rng: random.Random, targetOctets: int) -> list[str]:
    """
    Paragraphs, quoted replies, long URL lines and dot lines, about
    C{targetOctets} long.
    """
    # Every body gets a lone "." and a ".." line, whatever the dice say.
    out: list[str] = [*_wrap(rng, 30), ".", "..", ""]
    size = sum(len(line.encode("utf-8")) + 1 for line in out)
    while size < targetOctets:
        roll = rng.random()
        if roll < 0.12:
            block = [rng.choice(_DOT_LINES)]
        elif roll < 0.25:
            block = ["> " + line for line in _wrap(rng, rng.randint(10, 60), 70)]
        elif roll < 0.30:
            block = [
                "https://lists.example.org/archive/"
                + "/".join(rng.choice(_WORDS) for _ in range(40))
            ]
        else:
            block = [*_wrap(rng, rng.randint(20, 120)), ""]
        out.extend(block)
        size += sum(len(line.encode("utf-8")) + 1 for line in block)
    return out


def _headers(rng: random.Random, seq: int, user: str, boundary: str | None) -> list[str]:
    when = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(1_700_000_000 + seq * 97))
    sender = rng.choice(_NAMES)
    address = sender.split()[0].lower().replace("'", "") + "@example.net"
    queueID = "".join(rng.choice("0123456789ABCDEFGHJKLMNPQRSTVWXYZ") for _ in range(10))
    signature = base64.b64encode(rng.randbytes(256)).decode("ascii")
    headers = [
        f"Return-Path: <{address}>",
        f"Delivered-To: {user}@example.org",
        "Received: from mx.example.org (localhost [127.0.0.1])",
        f"\tby mail.example.org (Postfix) with ESMTP id {queueID}",
        f"\tfor <{user}@example.org>; {when}",
        "Received: from out.example.net (out.example.net [192.0.2.25])",
        "\tby mx.example.org (Postfix) with ESMTPS id "
        + queueID[::-1]
        + " (version=TLSv1.3 cipher=TLS_AES_256_GCM_SHA384)",
        f"\tfor <{user}@example.org>; {when}",
        "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.net;",
        "\ts=2026; h=from:to:subject:date:message-id:mime-version;",
        "\tbh=" + base64.b64encode(rng.randbytes(32)).decode("ascii") + ";",
        "\tb=" + signature[:70],
        *("\t " + signature[i : i + 70] for i in range(70, len(signature), 70)),
        f"Message-ID: <{seq}.{queueID}@example.net>",
        f"Date: {when}",
        f'From: "{sender}" <{address}>',
        f"To: {user}@example.org",
        "Subject: " + " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 9))),
        "MIME-Version: 1.0",
    ]
    if boundary is None:
        headers += [
            "Content-Type: text/plain; charset=utf-8",
            "Content-Transfer-Encoding: 8bit",
        ]
    else:
        headers.append(f'Content-Type: multipart/mixed; boundary="{boundary}"')
    return headers


#: Messages up to this size are plain text; bigger ones are a text part and
#: a base64 attachment that makes up the rest.
_TEXT_ONLY_MAX = 16 * KB


def makeMessage(rng: random.Random, seq: int, user: str, size: int) -> bytes:
    """
    One message of about C{size} octets, with LF line endings.
    """
    if size <= _TEXT_ONLY_MAX:
        lines = [*_headers(rng, seq, user, None), ""]
        head = "\n".join(lines).encode("utf-8") + b"\n"
        text = "\n".join(_textBody(rng, max(size - len(head), 1)))
        return head + text.encode("utf-8") + b"\n"
    boundary = f"=_popbench_{seq}_{rng.getrandbits(32):08x}"
    lines = _headers(rng, seq, user, boundary)
    lines += [
        "",
        "This is a multi-part message in MIME format.",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "",
        *_textBody(rng, min(8 * KB, size // 4)),
        f"--{boundary}",
        "Content-Type: application/octet-stream; name=data.bin",
        "Content-Transfer-Encoding: base64",
        'Content-Disposition: attachment; filename="data.bin"',
        "",
    ]
    head = ("\n".join(lines) + "\n").encode("utf-8")
    tail = f"--{boundary}--\n".encode("ascii")
    room = max(size - len(head) - len(tail), 77)
    # base64.encodebytes writes 76-character lines plus LF for 57 octets.
    # In 57,000-octet pieces (whole base64 lines): randbytes() of more than
    # 2**28 octets overflows, and one piece at a time keeps memory flat.
    wanted = room * 57 // 77
    piece = 57 * 1000
    body = b"".join(
        base64.encodebytes(rng.randbytes(min(piece, wanted - start)))
        for start in range(0, wanted, piece)
    )
    return head + body + tail


def deliver(maildir: str, message: bytes, seq: int, stamp: int, wireNames: bool) -> str:
    """
    Write C{message} into C{maildir} the way an MDA does: into tmp/, then a
    rename into new/.  With C{wireNames}, the name carries C{,S=} and C{,W=}
    as Dovecot's LDA writes them.

    @return: the base name (the message's unique id).
    """
    base = f"{stamp}.M{seq:06d}P{os.getpid()}.bench.example.org"
    if wireNames:
        base += f",S={len(message)},W={len(expectedWire(message))}"
    tmp = os.path.join(maildir, "tmp", base)
    with open(tmp, "wb") as f:
        f.write(message)
    os.rename(tmp, os.path.join(maildir, "new", base))
    return base


def makeMaildir(root: str, user: str) -> str:
    """
    An empty Maildir for C{user} under C{root}.
    """
    path = os.path.join(root, user)
    for subdir in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(path, subdir), mode=0o700)
    return path


def fillMaildir(path: str, user: str, sizes: Sequence[int], seed: int, wireNames: bool) -> int:
    """
    Deliver messages of the given C{sizes} into C{path}, oldest first.

    @return: the octets written.
    """
    rng = random.Random(seed)
    start = int(time.time()) - len(sizes) - 10
    total = 0
    for seq, size in enumerate(sizes):
        message = makeMessage(rng, seq, user, size)
        deliver(path, message, seq, start + seq, wireNames)
        total += len(message)
    return total


# The wire form, computed independently of popserv.encoder.


def expectedWire(stored: bytes) -> bytes:
    """
    What RFC 1939 says a client must end up with for a stored message once
    it has undone the byte-stuffing: every line ends in CRLF.
    """
    lines = stored.split(b"\n")
    last = lines.pop()
    out = [line[:-1] if line.endswith(b"\r") else line for line in lines]
    if last:
        out.append(last)
    return b"".join(line + CRLF for line in out)


def unstuff(body: bytes) -> bytes:
    """
    Undo byte-stuffing (RFC 1939 section 3) of a multi-line response body
    without its terminating ".CRLF": drop the first "." of every line that
    starts with one.
    """
    if body.startswith(b"."):
        body = body[1:]
    return body.replace(b"\r\n.", CRLF)


# /proc readings


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def processCPU(pid: int) -> float:
    """
    User plus system CPU seconds of process C{pid}, all its threads.
    """
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    # The command name is in parentheses and may hold spaces.
    fields = data[data.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def processStatus(pid: int) -> dict[str, str]:
    """
    The fields of C{/proc/PID/status}.
    """
    result = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            result[key] = value.strip()
    return result


def rssKB(pid: int) -> int:
    """
    Resident set size of C{pid} in KiB (VmRSS).
    """
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1])
    return 0


def cpuTimes() -> dict[str, list[int]]:
    """
    The per-CPU lines of C{/proc/stat}: cpuN -> jiffies by kind.
    """
    result = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *values = line.split()
                result[name] = [int(v) for v in values]
    return result


_KINDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def coreLoad(
    before: dict[str, list[int]], after: dict[str, list[int]], cpu: int | None
) -> dict[str, float]:
    """
    How one CPU spent the time between two L{cpuTimes} readings, in percent.

    Softirq matters on loopback: the kernel's receive-side TCP work is
    accounted there, not to either process, so a core can be saturated
    while the process pinned to it shows spare CPU.
    """
    name = f"cpu{cpu}"
    if cpu is None or name not in before or name not in after:
        return {}
    delta = dict(
        zip(_KINDS, (b - a for a, b in zip(before[name], after[name], strict=False)), strict=False)
    )
    total = sum(delta.values()) or 1
    share = {kind: round(100.0 * value / total, 1) for kind, value in delta.items()}
    share["busy"] = round(100.0 - share["idle"] - share["iowait"] - share["steal"], 1)
    return {
        f"{kind}_pct": share[kind]
        for kind in ("busy", "user", "system", "softirq", "irq", "steal", "iowait")
    }


# The server under test


class Server:
    """
    One C{twistd popserv} process serving Maildirs under C{root}.
    """

    def __init__(
        self,
        twistd: str,
        workdir: str,
        root: str,
        users: Sequence[tuple[str, str]],
        cpu: int | None,
        profile: str | None = None,
    ) -> None:
        self.logPath = os.path.join(workdir, "server.log")
        auth = "memory:" + ":".join(f"{u}:{p}" for u, p in users)
        command = [
            twistd,
            "-n",
            "--pidfile=",
            "popserv",
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--auth",
            auth,
            "--mailstore",
            f"maildir:{root}/{{user}}",
        ]
        if profile:
            # twistd's own profiler: "python -m cProfile" never writes its
            # file, as twistd ends by killing itself with the signal it got.
            command[1:1] = ["--profile", profile, "--profiler", "cprofile", "--savestats"]
        self.command = command
        self.cpu = cpu
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.workdir = workdir

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        """
        Start the server and wait (bounded) until it says which port it got.
        """
        with open(self.logPath, "wb") as log, pinned(self.cpu):
            # The child inherits the affinity set around Popen, so every
            # thread it ever starts is on the server CPU.
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
        raise RuntimeError(
            f"server did not start (exit status {self.process.poll()}):\n" + self.logTail()
        )

    def logTail(self, lines: int = 20) -> str:
        """
        The end of the server's log.
        """
        try:
            with open(self.logPath, "rb") as f:
                data = f.read()
        except OSError:
            return ""
        return b"\n".join(data.splitlines()[-lines:]).decode("utf-8", "replace")

    def logProblems(self) -> list[str]:
        """
        Log lines that look like errors (tracebacks, server faults).
        """
        try:
            with open(self.logPath, "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return []
        markers = ("Traceback", "Unhandled", "fault", "CRITICAL", "Error", "error")
        return [line for line in text.splitlines() if any(m in line for m in markers)]

    def stop(self) -> None:
        """
        SIGTERM, then SIGKILL if it has not gone within 15 seconds.
        """
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(15)


@contextmanager
def pinned(cpu: int | None) -> Iterator[None]:
    """
    Run the block (and any process started in it) on CPU C{cpu} only.
    """
    if cpu is None:
        yield
        return
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, saved)


# The load generator: sessions are generator scripts driven by one
# non-blocking socket loop.  A script yields (command or None, multiline)
# and is sent the response: the line without CRLF, or for a multi-line
# command (status line, stuffed body without its terminator or None after
# -ERR).

Script = Generator[tuple[bytes | None, bool], Any, None]


class _Session:
    __slots__ = (
        "done",
        "expectMulti",
        "inbuf",
        "onEnd",
        "outbuf",
        "scanFrom",
        "script",
        "sock",
        "timeoutAt",
        "writing",
    )

    def __init__(
        self, sock: socket.socket, script: Script, onEnd: Callable[[str | None], None]
    ) -> None:
        self.sock = sock
        self.script = script
        self.onEnd = onEnd
        self.inbuf = bytearray()
        self.outbuf = b""
        self.expectMulti = False
        self.scanFrom = 0
        self.done = False
        self.timeoutAt = 0.0
        self.writing = False


class LoadLoop:
    """
    Drives many L{Script}s over non-blocking sockets with one epoll loop.
    """

    def __init__(self, address: tuple[str, int], responseTimeout: float = RESPONSE_TIMEOUT) -> None:
        self.address = address
        self.responseTimeout = responseTimeout
        self.selector = selectors.DefaultSelector()
        self.sessions: set[_Session] = set()
        self._lastTimeoutCheck = 0.0

    def start(self, script: Script, onEnd: Callable[[str | None], None]) -> None:
        """
        Open a connection for C{script}; C{onEnd} is called with L{None}
        when the script has finished and the server closed, or with the
        reason the session failed.
        """
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        session = _Session(sock, script, onEnd)
        code = sock.connect_ex(self.address)
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            onEnd(f"connect: {errno.errorcode.get(code, code)}")
            return
        self.sessions.add(session)
        self.selector.register(sock, selectors.EVENT_READ, session)
        session.timeoutAt = time.monotonic() + self.responseTimeout
        try:
            command, session.expectMulti = next(script)
        except StopIteration:
            self._end(session, None)
            return
        if command:
            self._send(session, command)

    def runOnce(self, timeout: float) -> None:
        """
        Wait up to C{timeout} seconds for socket events and handle them.
        """
        for key, mask in self.selector.select(timeout):
            session = key.data
            if mask & selectors.EVENT_WRITE:
                self._flush(session)
            if mask & selectors.EVENT_READ and session in self.sessions:
                self._readable(session)
        now = time.monotonic()
        if now - self._lastTimeoutCheck > 0.1:
            self._lastTimeoutCheck = now
            for session in [s for s in self.sessions if s.timeoutAt < now]:
                self._end(session, "no close after QUIT" if session.done else "timeout")

    def abortAll(self, reason: str) -> None:
        """
        Drop every open session.
        """
        for session in list(self.sessions):
            self._end(session, reason)

    def _send(self, session: _Session, data: bytes) -> None:
        session.outbuf += data
        self._flush(session)

    def _flush(self, session: _Session) -> None:
        try:
            sent = session.sock.send(session.outbuf)
        except BlockingIOError:
            sent = 0
        except OSError as e:
            self._end(session, f"send: {errno.errorcode.get(e.errno or 0, e)}")
            return
        session.outbuf = session.outbuf[sent:]
        # Only touch epoll when the interest changes: commands are small and
        # nearly always go out whole.
        writing = bool(session.outbuf)
        if writing != session.writing:
            session.writing = writing
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if writing else 0)
            self.selector.modify(session.sock, events, session)

    def _readable(self, session: _Session) -> None:
        eof = False
        for _ in range(64):  # bounded: a fast server must not starve the others
            try:
                chunk = session.sock.recv(RECV_SIZE)
            except BlockingIOError:
                break
            except OSError as e:
                self._end(session, f"recv: {errno.errorcode.get(e.errno or 0, e)}")
                return
            if not chunk:
                eof = True
                break
            session.inbuf += chunk
        while not session.done:
            response = self._response(session)
            if response is None:
                break
            session.timeoutAt = time.monotonic() + self.responseTimeout
            try:
                command, session.expectMulti = session.script.send(response)
            except StopIteration:
                # The server closes after QUIT; wait briefly for that.
                session.done = True
                session.timeoutAt = time.monotonic() + 5.0
                break
            except Exception as e:
                self._end(session, f"script: {e!r}")
                return
            if command:
                self._send(session, command)
        if eof:
            self._end(session, None if session.done else "server closed early")
        elif session.done and session.inbuf:
            self._end(session, "data after last response")

    def _response(self, session: _Session) -> Any:
        buf = session.inbuf
        end = buf.find(CRLF)
        if end < 0:
            return None
        status = bytes(buf[:end])
        if not session.expectMulti or not status.startswith(b"+OK"):
            del buf[: end + 2]
            session.scanFrom = 0
            return (status, None) if session.expectMulti else status
        bodyStart = end + 2
        if buf[bodyStart : bodyStart + 3] == b".\r\n":
            del buf[: bodyStart + 3]
            session.scanFrom = 0
            return (status, b"")
        at = buf.find(b"\r\n.\r\n", max(bodyStart, session.scanFrom - 4))
        if at < 0:
            session.scanFrom = len(buf)
            return None
        body = bytes(buf[bodyStart : at + 2])
        del buf[: at + 5]
        session.scanFrom = 0
        return (status, body)

    def _end(self, session: _Session, reason: str | None) -> None:
        if session not in self.sessions:
            return
        self.sessions.discard(session)
        self.selector.unregister(session.sock)
        session.sock.close()
        session.script.close()
        session.onEnd(reason)


def _errorKind(line: bytes) -> str:
    match = re.match(rb"-ERR (\[[A-Z/-]+\])?", line)
    code = match.group(1) if match and match.group(1) else b""
    return "-ERR " + code.decode("ascii", "replace") if code else "-ERR"


# Workload 1: login churn (runs in a client process)


@dataclass
class ChurnPlan:
    """
    What one churn client process does.
    """

    address: tuple[str, int]
    users: list[tuple[str, str]]
    expectedCount: int
    begin: float
    windowStart: float
    windowEnd: float
    maxSessions: int


def churnClient(plan: ChurnPlan, conn: Any) -> None:
    """
    Loop sessions on one connection slot per user until the window ends,
    then report through C{conn}.
    """
    loop = LoadLoop(plan.address)
    errors: Counter[str] = Counter()
    latencies: list[float] = []
    state = {"started": 0, "completed": 0, "inWindow": 0}
    cpu: dict[str, float] = {}
    restarts: list[tuple[float, int]] = []

    def script(slot: int) -> Script:
        user, password = plan.users[slot]
        began = time.monotonic()
        commands = [
            (b"USER", b"USER " + user.encode() + CRLF),
            (b"PASS", b"PASS " + password.encode() + CRLF),
            (b"STAT", b"STAT" + CRLF),
        ]
        reply = yield None, False
        if not reply.startswith(b"+OK"):
            errors["greeting " + _errorKind(reply)] += 1
            return
        for keyword, command in commands:
            reply = yield command, False
            if not reply.startswith(b"+OK"):
                errors[keyword.decode() + " " + _errorKind(reply)] += 1
                # End the session properly, so the server closes it.
                yield b"QUIT" + CRLF, False
                return
            if keyword == b"STAT" and int(reply.split()[1]) != plan.expectedCount:
                errors["STAT wrong count"] += 1
        reply = yield b"QUIT" + CRLF, False
        if not reply.startswith(b"+OK"):
            errors["QUIT " + _errorKind(reply)] += 1
            return
        finished = time.monotonic()
        state["completed"] += 1
        if plan.windowStart <= finished < plan.windowEnd:
            state["inWindow"] += 1
            latencies.append(finished - began)

    def launch(slot: int) -> None:
        state["started"] += 1
        loop.start(script(slot), lambda reason: ended(slot, reason))

    def ended(slot: int, reason: str | None) -> None:
        if reason is not None:
            errors[reason] += 1
        now = time.monotonic()
        if now >= plan.windowEnd or state["started"] >= plan.maxSessions:
            return
        if reason is None:
            launch(slot)
        else:
            # Do not spin on a failing server.
            restarts.append((now + 0.05, slot))

    while time.monotonic() < plan.begin:
        time.sleep(min(0.01, max(plan.begin - time.monotonic(), 0)))
    for slot in range(len(plan.users)):
        launch(slot)
    hardStop = plan.windowEnd + DRAIN_TIMEOUT
    while True:
        now = time.monotonic()
        if "start" not in cpu and now >= plan.windowStart:
            cpu["start"] = time.process_time()
        if "end" not in cpu and now >= plan.windowEnd:
            cpu["end"] = time.process_time()
        if now >= plan.windowEnd and not loop.sessions:
            break
        if now >= hardStop:
            loop.abortAll("drain timeout")
            break
        if restarts and now < plan.windowEnd:
            due = [r for r in restarts if r[0] <= now]
            for r in due:
                restarts.remove(r)
                launch(r[1])
        nextEdge = plan.windowStart if "start" not in cpu else plan.windowEnd
        loop.runOnce(max(0.0, min(0.05, nextEdge - now)) if now < nextEdge else 0.05)
    conn.send(
        {
            "sessions": state["inWindow"],
            "completed_total": state["completed"],
            "started_total": state["started"],
            "client_cpu_s": cpu.get("end", time.process_time()) - cpu.get("start", 0.0),
            "latencies": latencies,
            "errors": dict(errors),
        }
    )
    conn.close()


# Workloads 2 and 3: downloads (run in a client process)


@dataclass
class DownloadPlan:
    """
    What one download client does: log in, LIST, UIDL, RETR each number in
    C{retrieve}, QUIT; then check the bytes against the files in C{maildir}.
    """

    address: tuple[str, int]
    user: str
    password: str
    maildir: str
    retrieve: list[int]


@dataclass
class DownloadEvents:
    """
    Monotonic timestamps and CPU readings of one download session.
    """

    connected: float = 0.0
    loggedIn: float = 0.0
    listStart: float = 0.0
    listed: float = 0.0
    retrStarts: list[float] = field(default_factory=list)
    retrEnds: list[float] = field(default_factory=list)
    quit: float = 0.0
    cpuListStart: float = 0.0
    cpuRetrEnd: float = 0.0


def downloadClient(plan: DownloadPlan, conn: Any) -> None:
    """
    Run one download session, verify it, and report through C{conn}.
    """
    loop = LoadLoop(plan.address)
    events = DownloadEvents()
    got: dict[str, Any] = {"bodies": []}
    outcome: dict[str, str | None] = {}

    def script() -> Script:
        events.connected = time.monotonic()
        greeting = yield None, False
        if not greeting.startswith(b"+OK"):
            raise RuntimeError(f"greeting: {greeting!r}")
        # The generated messages have UTF-8 header fields; a client that
        # does not enable UTF8 gets them downgraded (RFC 6856), while this
        # one verifies the stored bytes.
        reply = yield b"UTF8" + CRLF, False
        if not reply.startswith(b"+OK"):
            raise RuntimeError(f"UTF8: {reply!r}")
        reply = yield b"USER " + plan.user.encode() + CRLF, False
        reply = yield b"PASS " + plan.password.encode() + CRLF, False
        if not reply.startswith(b"+OK"):
            raise RuntimeError(f"PASS: {reply!r}")
        events.loggedIn = time.monotonic()
        events.cpuListStart = time.process_time()
        events.listStart = time.monotonic()
        status, listing = yield b"LIST" + CRLF, True
        if listing is None:
            raise RuntimeError(f"LIST: {status!r}")
        got["list"] = listing
        status, uids = yield b"UIDL" + CRLF, True
        if uids is None:
            raise RuntimeError(f"UIDL: {status!r}")
        got["uidl"] = uids
        events.listed = time.monotonic()
        for number in plan.retrieve:
            events.retrStarts.append(time.monotonic())
            status, body = yield b"RETR %d\r\n" % number, True
            events.retrEnds.append(time.monotonic())
            if body is None:
                raise RuntimeError(f"RETR {number}: {status!r}")
            got["bodies"].append((number, status, body))
        events.cpuRetrEnd = time.process_time()
        reply = yield b"QUIT" + CRLF, False
        events.quit = time.monotonic()
        if not reply.startswith(b"+OK"):
            raise RuntimeError(f"QUIT: {reply!r}")

    loop.start(script(), lambda reason: outcome.setdefault("reason", reason))
    limit = time.monotonic() + 3600
    while loop.sessions and time.monotonic() < limit:
        loop.runOnce(0.5)
    loop.abortAll("client time limit")
    result: dict[str, Any] = {
        "error": outcome.get("reason"),
        "events": asdict(events),
        "wire_octets": sum(len(s) + 2 + len(b) + 3 for _, s, b in got["bodies"]),
    }
    if result["error"] is None:
        result.update(verify(plan, got))
    conn.send(result)
    conn.close()


def verify(plan: DownloadPlan, got: dict[str, Any]) -> dict[str, Any]:
    """
    Compare LIST, UIDL and every retrieved message with the files.
    """
    files: dict[str, str] = {}
    for subdir in ("new", "cur"):
        directory = os.path.join(plan.maildir, subdir)
        for name in os.listdir(directory):
            files[name.split(":", 1)[0]] = os.path.join(directory, name)
    sizes = {int(n): int(s) for n, s in (ln.split() for ln in got["list"].splitlines())}
    uids = {int(n): u.decode() for n, u in (ln.split() for ln in got["uidl"].splitlines())}
    problems: list[str] = []
    if sorted(uids.values()) != sorted(files):
        problems.append(f"UIDL lists {len(uids)} ids, the Maildir has {len(files)} files")
    expectedSizes: dict[int, int] = {}
    for number, uid in uids.items():
        if uid in files:
            with open(files[uid], "rb") as f:
                expectedSizes[number] = len(expectedWire(f.read()))
    wrongSizes = [n for n, s in expectedSizes.items() if sizes.get(n) != s]
    if wrongSizes:
        problems.append(f"LIST size wrong for {len(wrongSizes)} messages, e.g. {wrongSizes[0]}")
    checked = mismatched = 0
    octets = 0
    for number, status, body in got["bodies"]:
        checked += 1
        if uids.get(number) not in files:
            mismatched += 1
            problems.append(f"RETR {number}: no file for its UIDL {uids.get(number)!r}")
            continue
        with open(files[uids[number]], "rb") as f:
            expected = expectedWire(f.read())
        octets += len(expected)
        actual = unstuff(body)
        if actual != expected:
            mismatched += 1
            if mismatched <= 3:
                at = next(
                    (i for i, (a, b) in enumerate(zip(actual, expected, strict=False)) if a != b),
                    min(len(actual), len(expected)),
                )
                problems.append(
                    f"RETR {number}: {len(actual)} octets, expected {len(expected)};"
                    f" first difference at {at}: got {actual[at - 20 : at + 20]!r}"
                    f" expected {expected[at - 20 : at + 20]!r}"
                )
        if not status.startswith(b"+OK"):
            problems.append(f"RETR {number}: status {status!r}")
    return {
        "verified": checked - mismatched,
        "mismatched": mismatched,
        "message_octets": octets,
        "problems": problems,
    }


# Orchestration (the parent process, pinned with the clients)


@dataclass
class Sample:
    """
    One reading of the server process.
    """

    t: float
    cpu: float
    rss: int
    cores: dict[str, list[int]]


def sampleUntil(
    pid: int, conns: list[Any], deadline: float, interval: float
) -> tuple[list[Any], list[Sample], float]:
    """
    Read the server's CPU and RSS every C{interval} seconds until every
    client has reported or C{deadline} passes.

    @return: the clients' reports, the samples, and the share of a CPU (%)
        this sampling took.
    """
    samples: list[Sample] = []
    results: list[Any] = [None] * len(conns)
    began, cpu = time.monotonic(), time.process_time()
    waiting = set(range(len(conns)))
    while waiting and time.monotonic() < deadline:
        try:
            samples.append(Sample(time.monotonic(), processCPU(pid), rssKB(pid), cpuTimes()))
        except (FileNotFoundError, ProcessLookupError):
            break
        for index in list(waiting):
            try:
                if conns[index].poll(interval / max(len(waiting), 1)):
                    results[index] = conns[index].recv()
                    waiting.discard(index)
            except EOFError:
                waiting.discard(index)
    ownCPU = 100 * (time.process_time() - cpu) / max(time.monotonic() - began, 1e-9)
    return results, samples, round(ownCPU, 1)


def cpuAt(samples: list[Sample], t: float) -> float:
    """
    The server's CPU seconds at time C{t}, interpolated between samples.
    """
    times = [s.t for s in samples]
    i = bisect.bisect_left(times, t)
    if i <= 0:
        return samples[0].cpu
    if i >= len(samples):
        return samples[-1].cpu
    a, b = samples[i - 1], samples[i]
    return a.cpu + (b.cpu - a.cpu) * (t - a.t) / ((b.t - a.t) or 1)


def coreLoadBetween(
    samples: list[Sample], t0: float, t1: float, cpu: int | None
) -> dict[str, float]:
    """
    L{coreLoad} over the samples that fall between C{t0} and C{t1}.
    """
    inside = [s for s in samples if t0 <= s.t <= t1]
    if len(inside) < 2:
        return {}
    return coreLoad(inside[0].cores, inside[-1].cores, cpu)


def startClient(target: Callable[..., None], plan: Any) -> tuple[Any, Any]:
    """
    Run C{target(plan, conn)} in a new process; return (process, conn).
    """
    ours, theirs = multiprocessing.Pipe(duplex=False)
    process = multiprocessing.Process(target=target, args=(plan, theirs), daemon=True)
    process.start()
    theirs.close()
    return process, ours


def stopClients(processes: list[Any]) -> None:
    """
    Join client processes, terminating any that do not end.
    """
    for process in processes:
        process.join(5)
        if process.is_alive():
            process.terminate()
            process.join(5)


class Bench:
    """
    Runs the scenarios chosen on the command line and collects the results.
    """

    def __init__(self, options: argparse.Namespace, workdir: str) -> None:
        self.options = options
        self.workdir = workdir
        self.notes: list[str] = []
        self.serverCPU: int | None = options.server_cpu if options.pin else None
        self.twistd = options.twistd or os.path.join(os.path.dirname(sys.executable), "twistd")

    def _server(self, name: str, root: str, users: Sequence[tuple[str, str]]) -> Server:
        work = os.path.join(self.workdir, name)
        os.makedirs(work, exist_ok=True)
        profile = None
        if self.options.server_profile:
            os.makedirs(self.options.server_profile, exist_ok=True)
            profile = os.path.join(os.path.abspath(self.options.server_profile), f"{name}.prof")
        server = Server(self.twistd, work, root, users, self.serverCPU, profile)
        return server

    def _preflight(self) -> dict[str, float]:
        """
        How busy both CPUs are for one second before the clients start (the
        server idle): anything much above zero is someone else's load.
        """
        before = cpuTimes()
        time.sleep(1.0)
        after = cpuTimes()
        o = self.options
        result = {}
        for role, cpu in (("server", o.server_cpu), ("client", o.client_cpu)):
            load = coreLoad(before, after, cpu if o.pin else None)
            if load:
                result[f"{role}_core_busy_pct"] = load["busy_pct"]
        return result

    def _finish(self, name: str, server: Server) -> None:
        server.stop()
        problems = server.logProblems()
        if problems:
            self.notes.append(
                f"{name}: {len(problems)} error-like server log lines, first: {problems[0][:200]}"
            )

    def _generate(self, what: str, fill: Callable[[], int]) -> int:
        began = time.monotonic()
        octets = fill()
        # Written data must not be flushed to disk while we measure.
        os.sync()
        print(
            f"  generated {what}: {octets / MB:.1f} MB in {time.monotonic() - began:.1f} s",
            file=sys.stderr,
        )
        return octets

    def churn(self) -> dict[str, Any]:
        """
        Workload 1: concurrent login churn, one user per connection.
        """
        o = self.options
        root = os.path.join(self.workdir, "churn-mail")
        users = [(f"user{i}", f"pw{i}") for i in range(1, o.churn_clients + 1)]
        sizes = [o.churn_msg_size] * o.churn_msgs

        def fill() -> int:
            total = 0
            for index, (user, _) in enumerate(users):
                path = makeMaildir(root, user)
                total += fillMaildir(path, user, sizes, o.seed + index, o.wire_names)
            return total

        octets = self._generate(f"{len(users)} Maildirs x {o.churn_msgs} messages", fill)
        server = self._server("churn", root, users)
        processes: list[Any] = []
        try:
            server.start()
            preflight = self._preflight()
            procs = max(1, min(o.client_procs, len(users)))
            begin = time.monotonic() + 0.5
            windowStart = begin + o.churn_warmup
            windowEnd = windowStart + o.churn_duration
            conns = []
            for index in range(procs):
                plan = ChurnPlan(
                    address=("127.0.0.1", server.port),
                    users=users[index::procs],
                    expectedCount=o.churn_msgs,
                    begin=begin,
                    windowStart=windowStart,
                    windowEnd=windowEnd,
                    maxSessions=o.churn_max_sessions // procs,
                )
                process, conn = startClient(churnClient, plan)
                processes.append(process)
                conns.append(conn)
            rssBefore = rssKB(server.pid)
            time.sleep(max(0.0, windowStart - time.monotonic()))
            cpu0, stat0, t0 = processCPU(server.pid), cpuTimes(), time.monotonic()
            time.sleep(max(0.0, windowEnd - time.monotonic()))
            cpu1, stat1, t1 = processCPU(server.pid), cpuTimes(), time.monotonic()
            results, _, _ = sampleUntil(server.pid, conns, windowEnd + DRAIN_TIMEOUT + 10, 0.05)
            rssAfter = rssKB(server.pid)
        finally:
            stopClients(processes)
            self._finish("churn", server)
        if any(r is None for r in results):
            raise RuntimeError("a churn client did not report")
        wall = t1 - t0
        sessions = sum(r["sessions"] for r in results)
        serverCPU = cpu1 - cpu0
        clientCPU = sum(r["client_cpu_s"] for r in results)
        latencies = sorted(x for r in results for x in r["latencies"])
        errors: Counter[str] = Counter()
        for r in results:
            errors.update(r["errors"])
        return {
            "clients": len(users),
            "client_processes": procs,
            "messages_per_user": o.churn_msgs,
            "maildir_octets": octets,
            "window_s": round(wall, 3),
            "sessions": sessions,
            "sessions_per_s": round(sessions / wall, 1),
            "server_cpu_s": round(serverCPU, 2),
            "server_cpu_pct": round(100 * serverCPU / wall, 1),
            "server_cpu_s_per_1000_sessions": (
                round(1000 * serverCPU / sessions, 3) if sessions else None
            ),
            "client_cpu_pct": round(100 * clientCPU / wall, 1),
            "latency_ms_p50": _percentile(latencies, 50),
            "latency_ms_p90": _percentile(latencies, 90),
            "latency_ms_p99": _percentile(latencies, 99),
            "latency_ms_max": round(latencies[-1] * 1000, 2) if latencies else None,
            "errors": dict(errors),
            "server_rss_mb_before": round(rssBefore / 1024, 1),
            "server_rss_mb_after": round(rssAfter / 1024, 1),
            "server_core": coreLoad(stat0, stat1, server.cpu),
            "client_core": coreLoad(stat0, stat1, self.options.client_cpu if o.pin else None),
            "preflight": preflight,
        }

    def _download(
        self, name: str, sizes: list[int], retrieve: list[int], interval: float
    ) -> tuple[dict[str, Any], list[Sample], Server, dict[str, Any]]:
        o = self.options
        root = os.path.join(self.workdir, f"{name}-mail")
        user, password = "user1", "pw1"
        path = makeMaildir(root, user)
        octets = self._generate(
            f"{len(sizes)} message(s) of {sizes[0] / KB:.0f} KB",
            lambda: fillMaildir(path, user, sizes, o.seed, o.wire_names),
        )
        server = self._server(name, root, [(user, password)])
        processes: list[Any] = []
        try:
            server.start()
            preflight = self._preflight()
            idle = processStatus(server.pid)
            plan = DownloadPlan(("127.0.0.1", server.port), user, password, path, retrieve)
            process, conn = startClient(downloadClient, plan)
            processes.append(process)
            results, samples, samplerCPU = sampleUntil(
                server.pid, [conn], time.monotonic() + 3600, interval
            )
            final = processStatus(server.pid)
        finally:
            stopClients(processes)
            self._finish(name, server)
        result = results[0]
        if result is None:
            raise RuntimeError(f"the {name} client did not report")
        if result["error"]:
            raise RuntimeError(f"{name}: session failed: {result['error']}")
        for problem in result["problems"]:
            self.notes.append(f"{name}: {problem}")
        context = {
            "preflight": preflight,
            "sampler_cpu_pct": samplerCPU,
            "octets_on_disk": octets,
            "idle_rss_kb": int(idle["VmRSS"].split()[0]),
            "idle_hwm_kb": int(idle["VmHWM"].split()[0]),
            "final_hwm_kb": int(final["VmHWM"].split()[0]),
        }
        return result, samples, server, context

    def bulk(self) -> dict[str, Any]:
        """
        Workload 2: one client, LIST, UIDL and RETR of every message.
        """
        o = self.options
        count = o.bulk_count
        result, samples, _, context = self._download(
            "bulk", [o.bulk_size] * count, list(range(1, count + 1)), 0.02
        )
        ev = result["events"]
        section = ev["retrEnds"][-1] - ev["listStart"]
        retrOnly = ev["retrEnds"][-1] - ev["retrStarts"][0]
        serverCPU = cpuAt(samples, ev["retrEnds"][-1]) - cpuAt(samples, ev["listStart"])
        loginCPU = cpuAt(samples, ev["loggedIn"]) - cpuAt(samples, ev["connected"])
        clientCPU = ev["cpuRetrEnd"] - ev["cpuListStart"]
        octets = result["message_octets"]
        return {
            "messages": count,
            "message_size": o.bulk_size,
            "octets_on_disk": context["octets_on_disk"],
            "message_octets": octets,
            "wire_octets": result["wire_octets"],
            "login_s": round(ev["loggedIn"] - ev["connected"], 3),
            "login_server_cpu_s": round(loginCPU, 3),
            "list_uidl_s": round(ev["listed"] - ev["listStart"], 4),
            "transfer_s": round(section, 3),
            "mb_per_s": round(octets / MB / section, 1),
            "retr_only_mb_per_s": round(octets / MB / retrOnly, 1),
            "messages_per_s": round(count / retrOnly, 1),
            "retr_ms_p50": _percentile(
                sorted(b - a for a, b in zip(ev["retrStarts"], ev["retrEnds"], strict=True)), 50
            ),
            "server_cpu_pct": round(100 * serverCPU / section, 1),
            "client_cpu_pct": round(100 * clientCPU / section, 1),
            "verified": result["verified"],
            "mismatched": result["mismatched"],
            **self._cores(samples, ev["listStart"], ev["retrEnds"][-1]),
            "sampler_cpu_pct": context["sampler_cpu_pct"],
            "preflight": context["preflight"],
        }

    def large(self) -> dict[str, Any]:
        """
        Workload 3: one large message, retrieved C{--large-repeat} times;
        the server's RSS sampled throughout.
        """
        o = self.options
        result, samples, _, context = self._download(
            "large", [o.large_mb * MB], [1] * o.large_repeat, 0.005
        )
        ev = result["events"]
        octets = result["message_octets"] // max(len(ev["retrStarts"]), 1)
        durations = [b - a for a, b in zip(ev["retrStarts"], ev["retrEnds"], strict=True)]
        first, last = ev["retrStarts"][0], ev["retrEnds"][-1]
        before = [s.rss for s in samples if s.t <= first]
        during = [s.rss for s in samples if first <= s.t <= last]
        login = [s.rss for s in samples if ev["connected"] <= s.t <= ev["loggedIn"]]
        baseline = before[-1] if before else context["idle_rss_kb"]
        serverCPU = cpuAt(samples, last) - cpuAt(samples, first)
        clientCPU = ev["cpuRetrEnd"] - ev["cpuListStart"]
        return {
            "message_octets": octets,
            "octets_on_disk": context["octets_on_disk"],
            "retrievals": len(durations),
            "login_s": round(ev["loggedIn"] - ev["connected"], 3),
            "retr_s": [round(d, 3) for d in durations],
            "mb_per_s_median": round(octets / MB / statistics.median(durations), 1),
            "mb_per_s_best": round(octets / MB / min(durations), 1),
            "server_cpu_pct": round(100 * serverCPU / (last - first), 1),
            "client_cpu_pct": round(100 * clientCPU / (last - ev["listStart"]), 1),
            "rss_idle_mb": round(context["idle_rss_kb"] / 1024, 1),
            "rss_before_retr_mb": round(baseline / 1024, 1),
            "rss_growth_login_mb": (
                round((max(login) - context["idle_rss_kb"]) / 1024, 1) if login else None
            ),
            "rss_growth_retr_max_mb": (
                round((max(during) - baseline) / 1024, 1) if during else None
            ),
            "rss_samples_during_retr": len(during),
            "hwm_growth_mb": round((context["final_hwm_kb"] - context["idle_hwm_kb"]) / 1024, 1),
            "verified": result["verified"],
            "mismatched": result["mismatched"],
            **self._cores(samples, first, last),
            "sampler_cpu_pct": context["sampler_cpu_pct"],
            "preflight": context["preflight"],
        }

    def _cores(self, samples: list[Sample], t0: float, t1: float) -> dict[str, Any]:
        o = self.options
        return {
            "server_core": coreLoadBetween(samples, t0, t1, self.serverCPU),
            "client_core": coreLoadBetween(samples, t0, t1, o.client_cpu if o.pin else None),
        }


def _percentile(sortedValues: list[float], percent: float) -> float | None:
    if not sortedValues:
        return None
    index = min(len(sortedValues) - 1, int(len(sortedValues) * percent / 100))
    return round(sortedValues[index] * 1000, 2)


# Reporting


def machineFacts() -> dict[str, Any]:
    """
    What a reader needs to compare runs across machines.
    """
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    facts: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_at_start": os.getloadavg(),
    }
    try:
        import twisted

        facts["twisted"] = twisted.__version__
    except ImportError:
        pass
    try:
        import popserv

        facts["popserv"] = getattr(popserv, "__version__", "?")
    except ImportError:
        pass
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        facts["git_commit"] = subprocess.run(
            ["git", "-C", here, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return facts


_ROWS = {
    "churn": [
        ("sessions_per_s", "sessions/s", "higher"),
        ("server_cpu_s_per_1000_sessions", "server CPU s / 1,000 sessions", "lower"),
        ("sessions", "sessions in window", ""),
        ("server_cpu_pct", "server CPU %", ""),
        ("client_cpu_pct", "client CPU %", ""),
        ("latency_ms_p50", "session latency p50 ms", "lower"),
        ("latency_ms_p99", "session latency p99 ms", "lower"),
        ("errors", "errors", ""),
    ],
    "bulk": [
        ("mb_per_s", "MB/s (LIST+UIDL+RETR)", "higher"),
        ("messages_per_s", "messages/s (RETR)", "higher"),
        ("retr_ms_p50", "RETR p50 ms", "lower"),
        ("login_s", "login s (PASS incl. scan)", "lower"),
        ("list_uidl_s", "LIST+UIDL s", "lower"),
        ("server_cpu_pct", "server CPU %", ""),
        ("client_cpu_pct", "client CPU %", ""),
        ("verified", "messages verified", ""),
        ("mismatched", "messages mismatched", ""),
    ],
    "large": [
        ("mb_per_s_median", "RETR MB/s (median)", "higher"),
        ("mb_per_s_best", "RETR MB/s (best)", "higher"),
        ("login_s", "login s (PASS incl. scan)", "lower"),
        ("rss_growth_retr_max_mb", "server RSS growth in RETR, max MB", "lower"),
        ("rss_growth_login_mb", "server RSS growth in login, max MB", "lower"),
        ("rss_before_retr_mb", "server RSS before RETR MB", ""),
        ("server_cpu_pct", "server CPU %", ""),
        ("client_cpu_pct", "client CPU %", ""),
        ("verified", "retrievals verified", ""),
        ("mismatched", "retrievals mismatched", ""),
    ],
}


def table(results: dict[str, Any]) -> str:
    """
    The results as a fixed-width text table.
    """
    lines = [f"{'scenario':<8} {'figure':<36} {'value':>14}  better"]
    lines.append("-" * len(lines[0]))
    for scenario, rows in _ROWS.items():
        if scenario not in results:
            continue
        result = results[scenario]
        if "error" in result and len(result) == 1:
            lines.append(f"{scenario:<8} {'FAILED':<36} {result['error'][:60]}")
            continue
        for key, label, better in rows:
            value = result.get(key)
            if isinstance(value, dict):
                text = ", ".join(f"{k}: {v}" for k, v in value.items()) or "none"
            elif value is None:
                text = "-"
            else:
                text = f"{value}"
            lines.append(f"{scenario:<8} {label:<36} {text:>14}  {better}")
    return "\n".join(lines)


def noiseNotes(results: dict[str, Any]) -> list[str]:
    """
    Flag figures that the load generator or someone else's load may have
    limited.
    """
    notes = []
    for scenario, result in results.items():
        client = result.get("client_cpu_pct")
        server = result.get("server_cpu_pct")
        if client is not None and server is not None and client > 85 and server < 85:
            notes.append(
                f"{scenario}: client CPU {client}% vs server {server}%: possibly client-bound"
            )
        for role, own in (("server", server), ("client", client)):
            core = result.get(f"{role}_core") or {}
            if not core or own is None:
                continue
            if core["steal_pct"] > 5:
                notes.append(
                    f"{scenario}: the hypervisor stole {core['steal_pct']}% of the {role} CPU"
                )
            # Softirq is mostly our own loopback traffic; the rest is not ours
            # (but for the benchmark's own sampling, on the client CPU).
            if role == "client":
                own += result.get("sampler_cpu_pct", 0)
            other = core["busy_pct"] - own - core["softirq_pct"] - core["irq_pct"]
            if other > 10:
                notes.append(
                    f"{scenario}: about {other:.0f}% of the {role} CPU went to other processes"
                    " (rerun on a quiet machine)"
                )
        for key, busy in (result.get("preflight") or {}).items():
            if busy > 10:
                role = key.split("_")[0]
                notes.append(
                    f"{scenario}: in the idle second before the run the {role} CPU was {busy}% busy"
                )
    return notes


# Command line


def parseArgs(argv: Sequence[str]) -> argparse.Namespace:
    """
    The options; C{--quick} lowers every size that was not given.
    """
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--quick", action="store_true", help="small sizes (about 20 s in all)")
    add("--scenarios", default="churn,bulk,large", help="comma list of churn,bulk,large")
    add("--json", metavar="PATH", help="write all results to PATH")
    add("--churn-clients", type=int, help="concurrent clients, one user each [20; quick 20]")
    add("--churn-duration", type=float, help="measured seconds [10; quick 3]")
    add("--churn-warmup", type=float, help="seconds before measuring [1; quick 0.5]")
    add("--churn-msgs", type=int, help="messages in each churn Maildir [10; quick 10]")
    add("--churn-msg-size", type=int, default=4 * KB, help="octets per churn message")
    add("--churn-max-sessions", type=int, default=2_000_000, help="cap on sessions started")
    add("--bulk-count", type=int, help="messages retrieved [500; quick 100]")
    add("--bulk-size", type=int, help="octets per message [50000; quick 20000]")
    add("--large-mb", type=int, help="size of the large message in MB [50; quick 5]")
    add("--large-repeat", type=int, help="RETRs of the large message [3; quick 1]")
    add("--wire-names", action="store_true", help="name files with ,S= and ,W= (Dovecot LDA)")
    add("--client-procs", type=int, default=1, help="load generator processes for churn")
    add("--seed", type=int, default=1939, help="seed of the message generator")
    add("--server-cpu", type=int, default=0, help="CPU the server is pinned to")
    add("--client-cpu", type=int, default=1, help="CPU the clients are pinned to")
    add("--no-pin", dest="pin", action="store_false", help="do not pin processes to CPUs")
    add("--twistd", help="twistd to run (default: the one next to this Python)")
    add("--server-profile", metavar="DIR", help="run the server under cProfile, write DIR/*.prof")
    add("--workdir", help="parent of the temporary directory (default: system temp)")
    add("--keep", action="store_true", help="keep the temporary directory")
    options = parser.parse_args(argv)
    defaults = {
        "churn_clients": (20, 20),
        "churn_duration": (10.0, 3.0),
        "churn_warmup": (1.0, 0.5),
        "churn_msgs": (10, 10),
        "bulk_count": (500, 100),
        "bulk_size": (50 * KB, 20 * KB),
        "large_mb": (50, 5),
        "large_repeat": (3, 1),
    }
    for name, (full, quick) in defaults.items():
        if getattr(options, name) is None:
            setattr(options, name, quick if options.quick else full)
    options.scenarios = [s.strip() for s in options.scenarios.split(",") if s.strip()]
    unknown = set(options.scenarios) - set(_ROWS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    for name in ("churn_clients", "churn_msgs", "bulk_count", "large_mb", "large_repeat"):
        if getattr(options, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return options


def main(argv: Sequence[str]) -> int:
    """
    Run the chosen scenarios, print the table, write the JSON.
    """
    options = parseArgs(argv)
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    if options.pin and not {options.server_cpu, options.client_cpu} <= cpus:
        print("note: not enough CPUs to pin server and clients apart; not pinning", file=sys.stderr)
        options.pin = False
    if options.pin:
        # The clients (child processes) inherit this.
        os.sched_setaffinity(0, {options.client_cpu})
    facts = machineFacts()
    workdir = tempfile.mkdtemp(prefix="popserv-bench-", dir=options.workdir)
    bench = Bench(options, workdir)
    results: dict[str, Any] = {}
    began = time.monotonic()
    try:
        for scenario in options.scenarios:
            print(f"{scenario}:", file=sys.stderr)
            try:
                results[scenario] = getattr(bench, scenario)()
            except Exception as e:
                traceback.print_exc()
                results[scenario] = {"error": f"{type(e).__name__}: {e}"}
                bench.notes.append(f"{scenario}: failed: {e}")
    finally:
        if options.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    notes = bench.notes + noiseNotes(results)
    pinning = "no"
    if options.pin:
        pinning = f"server CPU {options.server_cpu}, clients CPU {options.client_cpu}"
    print()
    print(
        f"popserv {facts.get('popserv', '?')} ({facts.get('git_commit', '?')}),"
        f" Twisted {facts.get('twisted', '?')}, Python {facts['python']};"
        f" {facts['nproc']} x {facts['cpu_model']};"
        f" pinned: {pinning};"
        f" {time.monotonic() - began:.0f} s"
    )
    print(table(results))
    for note in notes:
        print(f"note: {note}")
    if options.json:
        settings = {k: v for k, v in vars(options).items() if k != "json"}
        with open(options.json, "w") as f:
            json.dump(
                {"machine": facts, "options": settings, "results": results, "notes": notes},
                f,
                indent=2,
                default=str,
            )
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
