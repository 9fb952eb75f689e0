"""
Reading a Maildir through the real server: STAT, LIST, UIDL and RETR octet
for octet, pipelined commands, and the errors a session survives.
"""

from __future__ import annotations

import poplib

import pytest

pytestmark = pytest.mark.integration

#: The store reads files in chunks of this many octets (popserv.transfer);
#: the big message puts line endings and dots right at its boundaries.
CHUNK = 256 * 1024


def _filler(buf: bytearray, end: int, ending: bytes = b"\r\n") -> None:
    """
    Append lines to C{buf} until it is exactly C{end} octets long.
    """
    line = b"x" * 98 + ending
    while end - len(buf) >= 2 * len(line):
        buf += line
    rest = end - len(buf)
    assert rest >= len(ending)
    buf += b"y" * (rest - len(ending)) + ending


def big_message() -> bytes:
    """
    A message of more than 1 MB that puts the hard cases at the store's
    read boundaries: a CRLF split across two chunks, a "." line starting
    right at a chunk boundary, a lone "." line, and LF-only lines.
    """
    buf = bytearray(b"Subject: big\r\n\r\n")
    # CR as the last octet of chunk 1, its LF the first of chunk 2.
    _filler(buf, CHUNK - 1 - 10)
    buf += b"z" * 10 + b"\r\n"
    assert buf[CHUNK - 1 : CHUNK + 1] == b"\r\n"
    # A line starting with "." as the first octet of chunk 3.
    _filler(buf, 2 * CHUNK)
    buf += b".dot at a chunk boundary\r\n"
    # A lone "." line right at chunk 4, with LF endings around it.
    _filler(buf, 3 * CHUNK, ending=b"\n")
    buf += b".\n"
    # LF endings and dots for the rest, past 1 MB.
    while len(buf) < 1_200_000:
        buf += b"..two dots, LF\n" + b"w" * 200 + b"\n" + b"crlf\r\n"
    buf += b"last line, unterminated"
    return bytes(buf)


#: The stored messages, in delivery order (message numbers 1, 2, ...).
MESSAGES = {
    "crlf": b"From: a@example.org\r\nSubject: crlf\r\n\r\nHello\r\nWorld\r\n",
    "lf": b"From: a@example.org\nSubject: lf\n\nHello\nWorld\n",
    "mixed": b"Subject: mixed\r\n\nan LF line\na CRLF line\r\nLF again\n",
    "unterminated": b"Subject: no final newline\n\nlast line",
    "body dots": (b"Subject: dots\r\n\r\n.first body line\r\n..two\r\n.\r\nmid\r\n.\r\n"),
    "first line dot": b".first line of the message\nSubject: x\n\n.\nbody\n",
    "empty": b"",
    "bare CR": b"Subject: cr\r\n\r\na bare\rCR\r\r\nends with CR\r",
    "big": big_message(),
}


@pytest.fixture
def drop(maildir, deliver):
    """
    Alice's Maildir holding L{MESSAGES}; the delivered paths, in order.
    """
    return [deliver(maildir, message) for message in MESSAGES.values()]


def test_stat_list_uidl(server, drop, wire_form):
    """
    STAT, LIST and UIDL over poplib report every message, numbered in
    delivery order, with its size in octets as sent before stuffing and the
    terminator, and the Maildir file name as its unique id.
    """
    sizes = [len(wire_form(m)) for m in MESSAGES.values()]
    client = poplib.POP3("127.0.0.1", server.port, timeout=10)
    try:
        client.user("alice")
        client.pass_("secret")
        assert client.stat() == (len(sizes), sum(sizes))
        _, listing, _ = client.list()
        assert listing == [b"%d %d" % (n, s) for n, s in enumerate(sizes, 1)]
        for n, size in enumerate(sizes, 1):
            assert client.list(n) == b"+OK %d %d" % (n, size)
        _, uids, _ = client.uidl()
        assert uids == [b"%d %s" % (n, p.name.encode()) for n, p in enumerate(drop, 1)]
        assert client.uidl(2) == b"+OK 2 " + drop[1].name.encode()
        assert client.quit().startswith(b"+OK")
    finally:
        client.close()


def test_retr_octets(server, drop, raw_client, retr_body, wire_form):
    """
    RETR sends each message with CRLF line endings, a CRLF after an
    unterminated last line, one more "." on every line that starts with "."
    (the first line of the message and of the body included, and at the
    store's read boundaries), then ".CRLF"; its status line gives the same
    size as LIST.
    """
    client = raw_client(server.port)
    assert client.login().startswith(b"+OK")
    for n, (name, message) in enumerate(MESSAGES.items(), 1):
        reply = client.multiline(b"RETR %d" % n)
        size = len(wire_form(message))
        status = b"+OK %d octets\r\n" % size
        assert reply[: len(status)] == status, name
        assert reply[len(status) :] == retr_body(message), name
        assert client.buffer == b"", name
        assert client.command(b"LIST %d" % n) == b"+OK %d %d\r\n" % (n, size)
    assert client.command(b"QUIT").startswith(b"+OK")


def top_body(wire: bytes, count: int) -> bytes:
    """
    The body TOP sends for a message whose wire form is C{wire}: the
    header, the blank line and C{count} lines of the body (RFC 1939
    section 7), stuffed and terminated like RETR's.
    """
    # In the wire form every CRLF ends a line and every line ends in one.
    lines = wire.split(b"\r\n")[:-1]
    if b"" in lines:
        lines = lines[: lines.index(b"") + 1 + count]
    out = [(b"." + x if x.startswith(b".") else x) + b"\r\n" for x in lines]
    return b"".join(out) + b".\r\n"


@pytest.mark.parametrize("count", [0, 1, 3])
def test_top_octets(count, server, drop, raw_client, wire_form):
    """
    TOP sends the header, the blank line and the asked number of body
    lines (all of them if the body is shorter), in wire form, stuffed and
    terminated.
    """
    client = raw_client(server.port)
    assert client.login().startswith(b"+OK")
    for n, (name, message) in enumerate(MESSAGES.items(), 1):
        reply = client.multiline(b"TOP %d %d" % (n, count))
        status = b"+OK Top of message follows\r\n"
        assert reply[: len(status)] == status, name
        assert reply[len(status) :] == top_body(wire_form(message), count), name
    assert client.command(b"QUIT").startswith(b"+OK")


def test_retr_poplib(server, drop, wire_form):
    """
    poplib, which un-stuffs, gets back every message's lines unchanged.
    """
    client = poplib.POP3("127.0.0.1", server.port, timeout=10)
    try:
        client.user("alice")
        client.pass_("secret")
        for n, message in enumerate(MESSAGES.values(), 1):
            _, lines, octets = client.retr(n)
            expected = wire_form(message)
            assert lines == expected.split(b"\r\n")[:-1]
            # poplib counts the octets of the un-stuffed lines with CRLF.
            assert octets == len(expected)
        client.quit()
    finally:
        client.close()


def test_pipelining(server, maildir, deliver, raw_client, retr_body, wire_form):
    """
    A whole session sent in one write is answered command by command, in
    order, and the connection is closed after QUIT.
    """
    first = deliver(maildir, b"Subject: one\n\n.dotted\nbody\n")
    second = deliver(maildir, b"Subject: two\r\n\r\nsecond")
    size1 = len(wire_form(first.read_bytes()))
    size2 = len(wire_form(second.read_bytes()))
    client = raw_client(server.port)
    client.send(b"USER alice\r\nPASS secret\r\nSTAT\r\nLIST\r\nRETR 1\r\nUIDL\r\nQUIT\r\n")
    total = size1 + size2
    expected = (
        b"+OK Send PASS\r\n"
        + b"+OK Logged in, 2 messages (%d octets)\r\n" % total
        + b"+OK 2 %d\r\n" % total
        + b"+OK 2 messages (%d octets)\r\n" % total
        + b"1 %d\r\n2 %d\r\n.\r\n" % (size1, size2)
        + b"+OK %d octets\r\n" % size1
        + retr_body(first.read_bytes())
        + b"+OK Unique-ID listing follows\r\n"
        + b"1 %s\r\n2 %s\r\n.\r\n" % (first.name.encode(), second.name.encode())
        + b"+OK Bye, 2 messages left\r\n"
    )
    assert client.read_to_close() == expected


def test_line_too_long(server, drop, raw_client):
    """
    A command line of 300 octets gets -ERR and the connection is closed
    (RFC 2449 section 4 allows 255).
    """
    client = raw_client(server.port)
    assert client.login().startswith(b"+OK")
    line = b"NOOP " + b"x" * 293 + b"\r\n"
    assert len(line) == 300
    client.send(line)
    assert client.read_to_close() == b"-ERR Line too long\r\n"


def test_line_length_limit(server, raw_client):
    """
    A command line of 255 octets with its CRLF is accepted (RFC 2449
    section 4); one of 256 gets -ERR and the connection is closed.
    """
    client = raw_client(server.port)
    longest = b"USER " + b"a" * 248
    assert len(longest + b"\r\n") == 255
    assert client.command(longest) == b"+OK Send PASS\r\n"
    client.send(longest + b"a\r\n")
    assert client.read_to_close() == b"-ERR Line too long\r\n"


def test_line_too_long_answered_in_order(server, maildir, deliver, raw_client):
    """
    A too-long line pipelined behind USER, PASS and RETR is answered in
    order: after the login reply and the whole RETR response.
    """
    deliver(maildir, b"Subject: x\r\n\r\nbody\r\n")
    client = raw_client(server.port)
    client.send(b"USER alice\r\nPASS secret\r\nRETR 1\r\nNOOP " + b"x" * 300 + b"\r\n")
    assert client.read_to_close() == (
        b"+OK Send PASS\r\n"
        b"+OK Logged in, 1 messages (20 octets)\r\n"
        b"+OK 20 octets\r\nSubject: x\r\n\r\nbody\r\n.\r\n"
        b"-ERR Line too long\r\n"
    )


def test_line_too_long_during_retr(server, maildir, deliver, raw_client):
    """
    A too-long line sent while a big RETR response is still streaming never
    lands inside the message: the whole response comes first, then -ERR.
    """
    line = b"x" * 98 + b"\r\n"
    count = 160_000  # 16 MB: more than the socket buffers hold
    deliver(maildir, (line * 1000 for _ in range(count // 1000)))
    size = len(line) * count
    client = raw_client(server.port, rcvbuf=4096)
    assert client.login().startswith(b"+OK")
    client.send(b"RETR 1\r\n")
    assert client.read_line() == b"+OK %d octets\r\n" % size
    client.send(b"NOOP " + b"x" * 300 + b"\r\n")
    rest = client.buffer
    client.buffer = b""
    chunks = [rest]
    received = len(rest)
    while data := client.sock.recv(1 << 20):
        chunks.append(data)
        received += len(data)
        assert received < 2 * size
    body = b"".join(chunks)
    error = body.find(b"-ERR")
    assert error in (-1, size + 3), body[error - 40 : error + 40]
    assert body == line * count + b".\r\n-ERR Line too long\r\n"


def test_errors_keep_the_session(server, maildir, deliver, raw_client):
    """
    An unknown command gets "-ERR Unknown command" and RETR of a message
    number beyond the drop gets -ERR; the session goes on after both.
    """
    deliver(maildir, b"Subject: a\n\na\n")
    deliver(maildir, b"Subject: b\n\nb\n")
    client = raw_client(server.port)
    assert client.command(b"XYZZY") == b"-ERR Unknown command\r\n"
    assert client.login().startswith(b"+OK")
    assert client.command(b"FROB 1") == b"-ERR Unknown command\r\n"
    assert client.command(b"RETR 99").startswith(b"-ERR")
    assert client.command(b"RETR 3").startswith(b"-ERR")
    assert client.command(b"NOOP") == b"+OK\r\n"
    assert client.command(b"STAT").startswith(b"+OK 2 ")
    assert client.multiline(b"RETR 2").endswith(b"\r\nb\r\n.\r\n")
    assert client.command(b"QUIT").startswith(b"+OK")
