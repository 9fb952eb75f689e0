"""
The benchmark's mail: generated, delivered like an MDA, cloned for each
server, and the expected wire form that every retrieved byte is checked
against.

Messages are written as an MDA (Postfix C{local}, procmail) writes them: into
C{tmp/}, renamed into C{new/}, LF line endings, names C{TIME.MSEQPPID.host}
without size fields (unless C{wireNames}).  Generation is seeded, so runs with
the same options serve identical bytes, and every server in a run is given
the same files: L{DataSet.cloneTo} hard-links the generated tree into each
server's own mail root, so what a server does to its copy (Dovecot moves
files to C{cur/} and renames them, popserv writes its index) does not reach
the next server.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

KB = 1000
MB = 1000 * 1000
CRLF = b"\r\n"

#: twisted.mail.pop3 byte-stuffs each 16 KiB chunk of a file on its own, so a
#: line starting with "." exactly at a multiple of this offset goes out
#: unstuffed (and a lone "." there ends the response early).  The generator
#: keeps such lines off those offsets; the data stays the same for every server.
TWISTED_CHUNK = 16 * 1024

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

#: Messages up to this size are plain text; bigger ones are a text part and
#: a base64 attachment that makes up the rest.
_TEXT_ONLY_MAX = 16 * KB
#: Below this size a message gets a short header (one Received field, no
#: DKIM signature), or the header alone would be bigger than the message.
_SHORT_HEADER_MAX = 2500


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
    C{targetOctets} long (at least a few lines).
    """
    # Every body gets a lone "." and a ".." line, whatever the dice say.
    out: list[str] = [*_wrap(rng, 12), ".", "..", ""]
    size = sum(len(line.encode("utf-8")) + 1 for line in out)
    while size < targetOctets:
        roll = rng.random()
        if roll < 0.12:
            block = [rng.choice(_DOT_LINES)]
        elif roll < 0.25:
            block = ["> " + line for line in _wrap(rng, rng.randint(5, 60), 70)]
        elif roll < 0.30:
            block = [
                "https://lists.example.org/archive/"
                + "/".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 40)))
            ]
        else:
            block = [*_wrap(rng, rng.randint(5, 120)), ""]
        out.extend(block)
        size += sum(len(line.encode("utf-8")) + 1 for line in block)
    return out


def _headers(
    rng: random.Random, seq: int, user: str, boundary: str | None, short: bool
) -> list[str]:
    when = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(1_700_000_000 + seq * 97))
    sender = rng.choice(_NAMES)
    address = sender.split()[0].lower().replace("'", "") + "@example.net"
    queueID = "".join(rng.choice("0123456789ABCDEFGHJKLMNPQRSTVWXYZ") for _ in range(10))
    headers = [
        f"Return-Path: <{address}>",
        f"Delivered-To: {user}@example.org",
        "Received: from mx.example.org (localhost [127.0.0.1])",
        f"\tby mail.example.org (Postfix) with ESMTP id {queueID}",
        f"\tfor <{user}@example.org>; {when}",
    ]
    if not short:
        signature = base64.b64encode(rng.randbytes(256)).decode("ascii")
        headers += [
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
        ]
    headers += [
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


def _keepDotsOffChunkEdges(message: bytes) -> bytes:
    """
    Indent any line that starts with "." at a multiple of L{TWISTED_CHUNK}
    octets into the file, so that twisted.mail.pop3's per-chunk stuffing
    does not corrupt it.
    """
    position = TWISTED_CHUNK
    while position < len(message):
        if message[position : position + 1] == b"." and message[position - 1 : position] == b"\n":
            message = message[:position] + b" " + message[position:]
        position += TWISTED_CHUNK
    return message


def makeMessage(rng: random.Random, seq: int, user: str, size: int) -> bytes:
    """
    One message of about C{size} octets, with LF line endings.
    """
    short = size <= _SHORT_HEADER_MAX
    if size <= _TEXT_ONLY_MAX:
        lines = [*_headers(rng, seq, user, None, short), ""]
        head = "\n".join(lines).encode("utf-8") + b"\n"
        text = "\n".join(_textBody(rng, max(size - len(head), 1)))
        return _keepDotsOffChunkEdges(head + text.encode("utf-8") + b"\n")
    boundary = f"=_popbench_{seq}_{rng.getrandbits(32):08x}"
    lines = _headers(rng, seq, user, boundary, short)
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
    return _keepDotsOffChunkEdges(head + body + tail)


def deliver(maildir: str, message: bytes, seq: int, stamp: int, wireNames: bool) -> str:
    """
    Write C{message} into C{maildir} the way an MDA does: into tmp/, then a
    rename into new/.  With C{wireNames}, the name carries C{,S=} and C{,W=}
    as Dovecot's LDA writes them.

    @return: the base name.
    """
    base = f"{stamp}.M{seq:06d}P{os.getpid()}.bench.example.org"
    if wireNames:
        base += f",S={len(message)},W={len(expectedWire(message))}"
    tmp = os.path.join(maildir, "tmp", base)
    with open(tmp, "wb") as f:
        f.write(message)
    os.rename(tmp, os.path.join(maildir, "new", base))
    return base


def messageFiles(maildir: str) -> Iterator[tuple[str, str]]:
    """
    (name, path) of every message file of a generated Maildir: new/, then
    cur/, each in name order.
    """
    for subdir in ("new", "cur"):
        directory = os.path.join(maildir, subdir)
        for name in sorted(os.listdir(directory)):
            yield name, os.path.join(directory, name)


def readMessageFiles(maildir: str) -> None:
    """
    Read every message file of a Maildir once, so that they are in the page
    cache.
    """
    # One buffer for every file: a new 1 MB object per read would be mapped
    # and unmapped again for each of 100,000 small files.
    buffer = bytearray(1 << 20)
    for _, path in messageFiles(maildir):
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buffer):
                pass


def evictMessageFiles(maildir: str) -> None:
    """
    Drop every message file of a Maildir from the page cache, as if it had
    not been read since the machine started (C{POSIX_FADV_DONTNEED} on each
    file, after writing back what is not on disk yet: dirty pages stay).
    Needs no privilege, unlike C{/proc/sys/vm/drop_caches}.
    """
    os.sync()
    for _, path in messageFiles(maildir):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def markUnread(maildir: str) -> None:
    """
    Set every message file's access time back to its modification time, as
    for mail delivered and never read since.  On a file system mounted
    C{relatime} (the default) the next read of each file then updates its
    access time, as a server's first read of newly delivered mail does;
    reading the files (L{readMessageFiles}) has done that already.
    """
    for _, path in messageFiles(maildir):
        modified = os.stat(path).st_mtime_ns
        os.utime(path, ns=(modified, modified))
    # Written back, as delivered mail long since is: an inode still dirty
    # from the line above would make the first read's update cheaper.
    os.sync()


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
    it has undone the byte-stuffing: every line ends in CRLF (a stored CRLF
    stays one CRLF; a last line without an end gets one).
    """
    wire = stored.replace(CRLF, b"\n").replace(b"\n", CRLF)
    if wire and not wire.endswith(b"\n"):
        wire += CRLF
    return wire


def stuff(wire: bytes) -> bytes:
    """
    Byte-stuff (RFC 1939 section 3) the CRLF form of a message: one more
    "." at the start of every line that starts with one.  L{unstuff} undoes
    it.
    """
    if wire.startswith(b"."):
        wire = b"." + wire
    return wire.replace(b"\r\n.", b"\r\n..")


def unstuff(body: bytes) -> bytes:
    """
    Undo byte-stuffing (RFC 1939 section 3) of a multi-line response body
    without its terminating ".CRLF": drop the first "." of every line that
    starts with one.
    """
    if body.startswith(b"."):
        body = body[1:]
    return body.replace(b"\r\n.", CRLF)


@dataclass
class DataSet:
    """
    Generated Maildirs under C{root}: C{root/USER} for each user.

    @ivar users: (user, password) pairs in order.
    @ivar counts: messages per user.
    """

    root: str
    users: list[tuple[str, str]]
    counts: dict[str, int] = field(default_factory=dict)
    octets: int = 0
    seconds: float = 0.0

    @classmethod
    def generate(
        cls,
        root: str,
        plan: Sequence[tuple[str, Sequence[int]]],
        seed: int,
        wireNames: bool = False,
    ) -> DataSet:
        """
        Maildirs for each (user, message sizes) in C{plan}; user I{n}'s
        password is C{pw-USER}.  The data is synced to disk, so that no
        writeback runs while a server is measured.
        """
        began = time.monotonic()
        data = cls(root, [(user, f"pw-{user}") for user, _ in plan])
        for index, (user, sizes) in enumerate(plan):
            path = makeMaildir(root, user)
            data.octets += fillMaildir(path, user, sizes, seed + index, wireNames)
            data.counts[user] = len(sizes)
        os.sync()
        data.seconds = time.monotonic() - began
        return data

    def maildir(self, user: str) -> str:
        return os.path.join(self.root, user)

    def cloneTo(self, destination: str) -> None:
        """
        The same Maildirs under C{destination}, files hard-linked (the
        server's copy shares the generated files' bytes, not its directories).
        """
        for dirpath, dirnames, filenames in os.walk(self.root):
            relative = os.path.relpath(dirpath, self.root)
            target = os.path.normpath(os.path.join(destination, relative))
            os.makedirs(target, mode=0o700, exist_ok=True)
            for name in filenames:
                os.link(os.path.join(dirpath, name), os.path.join(target, name))
            dirnames.sort()

    def readMessages(self, users: Sequence[str]) -> None:
        """
        Read every message file of C{users} once, so that the server about
        to be measured finds them in the page cache, as the servers before
        it did.  Some virtual machines hand clean cache pages back to the
        host within a minute: on the project's, 100 MB written and synced
        was 84 % cached after 5 s, 36 % after 20 s and none after 40 s
        (C{fincore}).  A server that reads every file at a first login
        would otherwise pay for reading the disk, or not, by how long ago
        the data was written.  The servers' copies are hard links to these
        files, so they share their cached pages.
        """
        for user in users:
            readMessageFiles(self.maildir(user))

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def writeUsers(self, path: str, users: Sequence[tuple[str, str]] | None = None) -> str:
        """
        A "user password" file for the load generator.
        """
        with open(path, "w") as f:
            for user, password in self.users if users is None else users:
                f.write(f"{user} {password}\n")
        return path


# Verification of what a client received.


def _digest(data: bytes) -> bytes:
    return hashlib.sha1(data, usedforsecurity=False).digest()


class Expected:
    """
    The wire forms of the messages in one user's generated Maildir, by
    digest, to match what a server sent whatever order and unique-ids it
    uses.
    """

    def __init__(self, maildir: str) -> None:
        self.byDigest: dict[bytes, tuple[str, int]] = {}
        for name, path in messageFiles(maildir):
            with open(path, "rb") as f:
                wire = expectedWire(f.read())
            self.byDigest[_digest(wire)] = (name, len(wire))

    def __len__(self) -> int:
        return len(self.byDigest)


def _firstDifference(actual: bytes, expected: bytes) -> int:
    for index, (a, b) in enumerate(zip(actual, expected, strict=False)):
        if a != b:
            return index
    return min(len(actual), len(expected))


def verifySession(session: dict[str, Any], raw: bytes, expected: Expected) -> dict[str, Any]:
    """
    Check one fetch session of the load generator against the files: every
    RETR body un-stuffed must be the CRLF form of one of the user's files,
    each file retrieved the same number of times; LIST must give each
    message's size as the octets RETR sent; STAT must count every file;
    UIDL must give a valid, distinct id for every message.

    @param session: one entry of C{sessions} in popload's fetch output.
    @param raw: everything the session received.
    """
    problems: list[str] = []
    count = session["stat_count"]
    if count != len(expected):
        problems.append(f"STAT counts {count} messages, the Maildir has {len(expected)}")
    sizes: dict[int, int] = {}
    listOff, listLen = session["list"]
    if listLen:
        for line in raw[listOff : listOff + listLen].splitlines():
            number, size = line.split()
            sizes[int(number)] = int(size)
    uids: dict[int, bytes] = {}
    uidlOff, uidlLen = session["uidl"]
    if uidlLen:
        for line in raw[uidlOff : uidlOff + uidlLen].splitlines():
            number, uid = line.split(b" ", 1)
            uids[int(number)] = uid
        bad = [
            u for u in uids.values() if not (1 <= len(u) <= 70 and u.isascii() and b" " not in u)
        ]
        if len(uids) != count or len(set(uids.values())) != len(uids) or bad:
            problems.append(
                f"UIDL: {len(uids)} lines, {len(set(uids.values()))} distinct,"
                f" {len(bad)} invalid, for {count} messages"
            )
    verified = mismatched = listWrong = 0
    octets = 0
    seen: dict[bytes, int] = {}
    for number, offset, length, _, _ in session["retr"]:
        actual = unstuff(raw[offset : offset + length])
        digest = _digest(actual)
        if digest in expected.byDigest:
            verified += 1
            octets += len(actual)
            seen[digest] = seen.get(digest, 0) + 1
        else:
            mismatched += 1
            if mismatched <= 2:
                best = min(expected.byDigest.values(), key=lambda v: abs(v[1] - len(actual)))
                problems.append(
                    f"RETR {number}: {len(actual)} octets match no file"
                    f" (nearest size {best[1]}, {best[0]})"
                )
        if sizes and sizes.get(number) != len(actual):
            listWrong += 1
    if listWrong:
        problems.append(f"LIST size differs from the octets RETR sent for {listWrong} messages")
    if seen and len(set(seen.values())) > 1:
        problems.append("some messages were retrieved more often than others")
    if not mismatched and seen and len(seen) != len(expected):
        problems.append(f"{len(expected) - len(seen)} files were never retrieved")
    return {
        "verified": verified,
        "mismatched": mismatched,
        "message_octets": octets,
        "list_sizes_wrong": listWrong,
        "uidl_lines": len(uids),
        "problems": problems,
    }
