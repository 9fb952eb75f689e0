"""
A message whose listed size is wrong, as a user meets it with real
clients: a Maildir file of 64 KiB or more whose C{,W=} name gives a wire
size larger than the file has (it changed after delivery, under its
name), delivered between two small messages.

popserv lists such a file with its name's size unread.  RETR holds a
message to its listed size, so the first RETR of it comes out short: the
connection is dropped before the terminating ".", nothing the session
deleted is removed, and the server logs the file and both sizes and keeps
the count, so that the next login lists the message right and a client
gets it whole (operating.rst, "Sizes"; protocol.rst, "Errors").  TOP is
not held to a listed size: it sends the message whole.

Each test runs sessions of one client (fetchmail, mpop, getmail6 or
Python's poplib) and checks the wire, what the client delivered and the
server's Maildir, byte for byte, after each.
"""

from __future__ import annotations

import poplib
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

BEFORE = b"From: a@example.org\nSubject: before\n\n.a dotted line\nfirst\n"
#: 77,146 octets on disk with LF endings, 78,149 on the wire; dotted lines
#: throughout, so un-stuffing is checked too.
BIG = b"From: b@example.org\nSubject: big\n\n" + b"".join(
    b"%s%05d %s\n" % (b"." if n % 9 == 0 else b"", n, b"y" * 70) for n in range(1000)
)
AFTER = b"From: c@example.org\nSubject: after\n\nlast\n"
#: How much more than its true wire size BIG's name says: within what a
#: file of its size can have, so popserv takes it.
OVERSTATED = 1000


class Drop:
    """
    Alice's Maildir holding L{BEFORE}, L{BIG} (named with a wrong C{,W=})
    and L{AFTER}, numbered 1 to 3, and what its files held when delivered.
    """

    def __init__(self, maildir: Path, deliver, wire_form) -> None:
        self.maildir = maildir
        self.messages = [BEFORE, BIG, AFTER]
        self.wire_sizes = [len(wire_form(m)) for m in self.messages]
        self.true_size = self.wire_sizes[1]
        self.named_size = self.true_size + OVERSTATED
        assert len(BIG) >= 64 * 1024 and self.named_size < 2 * len(BIG)
        self.paths = [
            deliver(maildir, BEFORE),
            deliver(maildir, BIG, wire_size=self.named_size),
            deliver(maildir, AFTER),
        ]
        self.local = [wire_form(m).replace(b"\r\n", b"\n") for m in self.messages]

    @property
    def big(self) -> Path:
        return self.paths[1]

    def untouched(self) -> bool:
        """
        Whether the Maildir holds exactly the delivered files, each with
        the octets it was delivered with, and the server's lock (and
        index).
        """
        files = {str(p.relative_to(self.maildir)) for p in self.maildir.rglob("*") if p.is_file()}
        delivered = {f"new/{p.name}" for p in self.paths}
        return files - {"popserv.lock", "popserv.index"} == delivered and all(
            p.read_bytes() == m for p, m in zip(self.paths, self.messages, strict=True)
        )

    def emptied(self) -> bool:
        """
        Whether every message file is gone, the server's files aside.
        """
        files = {p.name for p in self.maildir.rglob("*") if p.is_file()}
        return files <= {"popserv.lock", "popserv.index"}

    def warnings(self, server) -> list[tuple[int, int]]:
        """
        The (counted, listed) sizes of each warning the server logged about
        BIG's size.
        """
        pattern = re.compile(
            re.escape(f"Message {self.big.name!r} in {self.maildir} has ")
            + r"(\d+) octets on the wire, not the (\d+) it was listed with;"
            r" listed so from the next login"
        )
        return [(int(a), int(b)) for a, b in pattern.findall(server.output())]

    def cut(self, server) -> list[str]:
        """
        The server's log lines saying a RETR was cut short.
        """
        return re.findall(
            r"ShorterThanListed: The store gave (\d+) octets of a message listed as (\d+)",
            server.output(),
        )


@pytest.fixture
def drop(maildir, deliver, wire_form) -> Drop:
    """
    Alice's L{Drop}.
    """
    return Drop(maildir, deliver, wire_form)


@pytest.fixture
def next_login(server, drop, stat_when_free, wait_until):
    """
    A callable that waits until the session the server dropped has let go
    of the maildrop (a login at once may be refused [IN-USE] until the
    server has seen the connection go), then checks that STAT counts
    BIG's true size: what a client's next poll, minutes later, finds.
    """

    def wait() -> None:
        stat = wait_until(lambda: stat_when_free(server.port))
        assert stat == b"+OK 3 %d\r\n" % sum(drop.wire_sizes)

    return wait


def sent(log: str, prefix: str, *names: str) -> list[str]:
    """
    The commands C{names} a client log shows it sent, after C{prefix}.
    """
    lines = [line[len(prefix) :] for line in log.splitlines() if line.startswith(prefix)]
    return [line for line in lines if line.startswith(names)]


# fetchmail.


def test_fetchmail_flush_fetches_with_top(server, drop, fetchmail):
    """
    fetchmail without keep fetches with "TOP n 99999999" and DELE: TOP is
    not held to the listed size, so the first session gets the message
    whole, byte for byte, though LIST said 1,000 octets more (fetchmail
    does not complain), and deletes all three.  That TOP counts the size
    as RETR would: the warning is logged, once.
    """
    run = fetchmail.run(server.port, keep=False)
    assert run.returncode == 0, run.log
    assert run.messages == sorted(drop.local)
    assert f"fetchmail: POP3< +OK 2 {drop.named_size}" in run.log.splitlines()
    assert sent(run.log, "fetchmail: POP3> ", "TOP", "RETR", "DELE", "QUIT") == [
        *(c for n in (1, 2, 3) for c in (f"TOP {n} 99999999", f"DELE {n}")),
        "QUIT",
    ]
    assert drop.emptied()
    assert drop.warnings(server) == [(drop.true_size, drop.named_size)]
    assert drop.cut(server) == []


def test_fetchmail_keep_then_flush(server, drop, fetchmail, next_login):
    """
    fetchmail with keep fetches with RETR: the first session gets message
    1 and then a socket error at RETR 2 (exit status 2, PS_SOCKET); the
    Maildir is untouched and the server logs the file with both sizes.  A
    second session, without keep, is told the true size by LIST, gets
    messages 2 and 3 whole (message 1 it remembers as seen and leaves on
    the server) and deletes them.

    The reset discards what fetchmail had not read of RETR 2, usually all
    of it.  Should fetchmail have read part of it first, it closes its
    MDA's input, and an MDA that delivers at end of input (this one, as
    procmail does) delivers that part: a truncated copy besides the whole
    one the second session brings.  (A fake server that waits before the
    reset shows it every time.)
    """
    first = fetchmail.run(server.port, keep=True)
    assert first.returncode == 2, first.log
    assert "fetchmail: Query status=2 (SOCKET)" in first.log
    assert first.messages[0] == drop.local[0]
    for partial in first.messages[1:]:
        assert drop.local[1].startswith(partial) and len(partial) < len(drop.local[1])
    assert len(first.messages) <= 2
    assert sent(first.log, "fetchmail: POP3> ", "RETR", "DELE") == ["RETR 1", "RETR 2"]
    assert drop.untouched()
    assert drop.warnings(server) == [(drop.true_size, drop.named_size)]
    assert drop.cut(server) == [(str(drop.true_size), str(drop.named_size))]

    next_login()
    second = fetchmail.run(server.port, keep=False)
    assert second.returncode == 0, second.log
    assert f"fetchmail: POP3< +OK 2 {drop.true_size}" in second.log.splitlines()
    assert second.messages == sorted(drop.local[1:])
    assert sent(second.log, "fetchmail: POP3> ", "TOP", "RETR", "DELE") == [
        "TOP 2 99999999",
        "DELE 2",
        "TOP 3 99999999",
        "DELE 3",
    ]
    assert {p.name for p in drop.maildir.glob("*/*")} == {drop.paths[0].name}
    assert drop.paths[0].read_bytes() == BEFORE
    assert len(drop.warnings(server)) == 1


# mpop: "--> COMMAND" and "<-- REPLY" lines in its --debug log.


def test_mpop_pipelined_delete(server, drop, mpop, next_login):
    """
    mpop with keep off pipelines RETR 1, 2 and 3 (the server offers
    PIPELINING): the connection is reset during RETR 2, mpop exits 74
    (EX_IOERR) with message 1 delivered and the Maildir untouched, its
    DELEs never sent.  The next session lists the true size, retrieves 2
    and 3 whole (1 it remembers by UIDL) and deletes all three.

    (Whether mpop read message 1 before the reset discarded what it had
    not read is a race it has always won here; should it lose, it gets
    message 1 in the second session: each message must arrive once.)
    """
    first = mpop.run(server.port, keep=False)
    assert first.returncode == 74, first.log
    assert "mpop: network read error: Connection reset by peer" in first.log
    assert first.messages in ([drop.local[0]], [])
    assert sent(first.log, "--> ", "RETR", "DELE") == ["RETR 1", "RETR 2", "RETR 3"]
    assert drop.untouched()
    assert drop.warnings(server) == [(drop.true_size, drop.named_size)]

    next_login()
    second = mpop.run(server.port, keep=False)
    assert second.returncode == 0, second.log
    assert f"<-- 2 {drop.true_size}" in second.log.splitlines()
    assert sorted(first.messages + second.messages) == sorted(drop.local)
    fetched = [f"RETR {n}" for n in (1, 2, 3)][len(first.messages) :]
    assert sent(second.log, "--> ", "RETR", "DELE") == [*fetched, "DELE 1", "DELE 2", "DELE 3"]
    assert drop.emptied()
    assert len(drop.warnings(server)) == 1


# getmail6.


def test_getmail_delete_delivers_the_first_message_twice(server, drop, getmail, next_login):
    """
    getmail6 with delete on retrieves and DELEs message 1, then fails at
    RETR 2 (a socket error; it exits non-zero) with the Maildir untouched:
    its DELE 1 was never committed.  It does not remember message 1 (it
    keeps no UIDL of what it meant to delete), so the next session, told
    the true size, retrieves all three whole and deletes them: message 1
    is delivered twice.  Duplicated, not lost.
    """
    first = getmail.run(server.port, delete=True)
    assert first.returncode != 0, first.log
    assert "socket error ([Errno 104] Connection reset by peer)" in first.log
    assert first.messages == [drop.local[0]]
    assert drop.untouched()
    assert drop.warnings(server) == [(drop.true_size, drop.named_size)]

    next_login()
    second = getmail.run(server.port, delete=True)
    assert second.returncode == 0, second.log
    assert f"msg 2/3 ({drop.true_size} bytes)" in second.log
    assert second.messages == sorted(drop.local)
    assert drop.emptied()
    assert len(drop.warnings(server)) == 1


# Python's poplib, driven as a client that deletes what it fetched.


def login(port: int) -> poplib.POP3:
    client = poplib.POP3("127.0.0.1", port, timeout=10)
    client.user("alice")
    client.pass_("secret")
    return client


def test_poplib_retr_dele(server, drop, wire_form, next_login):
    """
    poplib fetching each message with RETR and deleting it with DELE: RETR
    2 says "+OK {listed} octets" and fails (the connection is dropped
    before the terminating "."), after RETR 1 and DELE 1 succeeded; the
    Maildir is untouched.  The second session's LIST gives the true size,
    RETR 2 sends exactly that many octets, un-stuffed equal to the file
    with CRLF line endings, and QUIT removes all three.
    """
    client = login(server.port)
    try:
        assert client.list()[1] == [
            b"1 %d" % drop.wire_sizes[0],
            b"2 %d" % drop.named_size,
            b"3 %d" % drop.wire_sizes[2],
        ]
        _, lines, _ = client.retr(1)
        assert b"\r\n".join(lines) + b"\r\n" == wire_form(BEFORE)
        assert client.dele(1).startswith(b"+OK")
        with pytest.raises((poplib.error_proto, OSError)):
            client.retr(2)
    finally:
        client.close()
    assert drop.untouched()
    assert drop.warnings(server) == [(drop.true_size, drop.named_size)]
    assert drop.cut(server) == [(str(drop.true_size), str(drop.named_size))]

    next_login()
    client = login(server.port)
    try:
        assert client.list()[1] == [b"%d %d" % (n, s) for n, s in enumerate(drop.wire_sizes, 1)]
        for number, message in enumerate(drop.messages, 1):
            status, lines, _ = client.retr(number)
            assert status == b"+OK %d octets" % drop.wire_sizes[number - 1]
            assert b"\r\n".join(lines) + b"\r\n" == wire_form(message)
            assert client.dele(number).startswith(b"+OK")
        assert client.quit() == b"+OK Bye, 3 deleted, 0 left"
    finally:
        client.close()
    assert drop.emptied()
    assert len(drop.warnings(server)) == 1


def test_poplib_top_counts_the_whole_message(server, drop, wire_form):
    """
    TOP with more lines than the message has (fetchmail's "TOP n
    99999999") sends it whole, not held to its listed size, and counts it
    as RETR would: the warning is logged and, though nothing is deleted,
    the next login lists the true size.
    """
    client = login(server.port)
    try:
        _, lines, _ = client.top(2, 99999999)
        assert b"\r\n".join(lines) + b"\r\n" == wire_form(BIG)
        assert client.quit().startswith(b"+OK")
    finally:
        client.close()
    assert drop.untouched()
    assert drop.warnings(server) == [(drop.true_size, drop.named_size)]
    assert drop.cut(server) == []

    client = login(server.port)
    try:
        assert client.list()[1] == [b"%d %d" % (n, s) for n, s in enumerate(drop.wire_sizes, 1)]
        assert client.quit().startswith(b"+OK")
    finally:
        client.close()
