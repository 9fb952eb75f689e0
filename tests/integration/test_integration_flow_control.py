"""
Flow control: the real server holds back a big message from a client that
does not read, instead of buffering it.
"""

from __future__ import annotations

import hashlib
import socket
import time

import pytest

pytestmark = pytest.mark.integration

MB = 1024 * 1024
#: The message: this block (1 MiB of CRLF lines, some starting with ".")
#: repeated.
BLOCK_COUNT = 200
#: How much the server's resident memory may grow while the client does
#: not read: a few chunks in flight, far below the message's size.
MAX_GROWTH_KIB = 30 * 1024
#: How long the client reads nothing after RETR.
STALL = 2.0
#: Time to read the whole message once the client reads again.
READ_DEADLINE = 60.0


def _block() -> bytes:
    line = b"x" * 78 + b"\r\n"
    dotted = b"." + b"y" * 77 + b"\r\n"
    block = bytearray()
    while len(block) + len(line) <= MB:
        block += dotted if len(block) % (len(line) * 97) == 0 else line
    block += b"z" * (MB - len(block) - 2) + b"\r\n"
    assert len(block) == MB
    return bytes(block)


@pytest.fixture
def big_files(maildir):
    """
    Alice's Maildir, emptied after the test: pytest keeps the last few
    runs' temporary directories, and 200 MiB each is too much to keep.
    """
    yield maildir
    for path in (maildir / "new").iterdir():
        path.unlink()


def test_stalled_client_does_not_grow_server(server, big_files, deliver, raw_client, retr_body):
    """
    While a client with a small receive buffer reads nothing after RETR of
    a 200 MiB message, the server's resident memory grows by less than
    30 MiB; when the client reads again it gets the whole message, stuffed
    and terminated, octet for octet.
    """
    block = _block()
    deliver(big_files, (block for _ in range(BLOCK_COUNT)))
    size = len(block) * BLOCK_COUNT
    # The block ends with CRLF, so the message's encoding is the block's,
    # repeated.
    encoded = retr_body(block)[: -len(b".\r\n")]
    status = b"+OK %d octets\r\n" % size
    expected = hashlib.blake2b(status)
    for _ in range(BLOCK_COUNT):
        expected.update(encoded)
    expected.update(b".\r\n")
    total = len(status) + len(encoded) * BLOCK_COUNT + 3

    client = raw_client(server.port, rcvbuf=4096)
    assert client.login() == b"+OK Logged in, 1 messages (%d octets)\r\n" % size
    baseline = server.rss_kib()
    client.send(b"RETR 1\r\n")
    peak = baseline
    stall_end = time.monotonic() + STALL
    while time.monotonic() < stall_end:
        time.sleep(0.1)
        peak = max(peak, server.rss_kib())
    assert peak - baseline < MAX_GROWTH_KIB, (baseline, peak)

    # Now read it all, without keeping it.
    sock = client.sock
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * MB)
    received = hashlib.blake2b()
    buffer = bytearray(4 * MB)
    view = memoryview(buffer)
    count = 0
    tail = b""
    deadline = time.monotonic() + READ_DEADLINE
    while count < total:
        assert time.monotonic() < deadline, f"read only {count} of {total} octets"
        n = sock.recv_into(view)
        assert n, f"connection closed after {count} of {total} octets"
        received.update(view[:n])
        count += n
        tail = (tail + bytes(view[max(0, n - 16) : n]))[-16:]
    assert count == total
    assert tail.endswith(b"z\r\n.\r\n")
    assert received.hexdigest() == expected.hexdigest()
    assert client.command(b"QUIT").startswith(b"+OK")
