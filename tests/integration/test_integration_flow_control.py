"""
Flow control: the real server holds back a big message from a client that
does not read, instead of buffering it.
"""

from __future__ import annotations

import socket
import time

import pytest
from bigmessage import MB, block, expected_retr, read_retr

pytestmark = pytest.mark.integration

#: The message: the 1 MiB block repeated.
BLOCK_COUNT = 200
#: How much the server's resident memory may grow while the client does
#: not read: a few chunks in flight, far below the message's size.
MAX_GROWTH_KIB = 30 * 1024
#: How long the client reads nothing after RETR.
STALL = 2.0
#: Time to read the whole message once the client reads again.
READ_DEADLINE = 60.0


def test_stalled_client_does_not_grow_server(server, big_files, deliver, raw_client, retr_body):
    """
    While a client with a small receive buffer reads nothing after RETR of
    a 200 MiB message, the server's resident memory grows by less than
    30 MiB; when the client reads again it gets the whole message, stuffed
    and terminated, octet for octet.
    """
    data = block()
    deliver(big_files, (data for _ in range(BLOCK_COUNT)))
    expected = expected_retr(data, BLOCK_COUNT, retr_body)

    client = raw_client(server.port, rcvbuf=4096)
    assert client.login() == b"+OK Logged in, 1 messages (%d octets)\r\n" % expected.size
    baseline = server.rss_kib()
    client.send(b"RETR 1\r\n")
    peak = baseline
    stall_end = time.monotonic() + STALL
    while time.monotonic() < stall_end:
        time.sleep(0.1)
        peak = max(peak, server.rss_kib())
    assert peak - baseline < MAX_GROWTH_KIB, (baseline, peak)

    # Now read it all, without keeping it.
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * MB)
    read_retr(client.sock, expected, time.monotonic() + READ_DEADLINE)
    assert client.command(b"QUIT").startswith(b"+OK")
