"""
Big messages for the flow-control and load tests: built from a 1 MiB
block, checked by digest as they arrive instead of being kept.
"""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

MB = 1024 * 1024


def block() -> bytes:
    """
    1 MiB of CRLF lines, some starting with "." (so they are stuffed),
    ending with CRLF: a message of N blocks encodes as N encoded blocks.
    """
    line = b"x" * 78 + b"\r\n"
    dotted = b"." + b"y" * 77 + b"\r\n"
    data = bytearray()
    while len(data) + len(line) <= MB:
        data += dotted if len(data) % (len(line) * 97) == 0 else line
    data += b"z" * (MB - len(data) - 2) + b"\r\n"
    assert len(data) == MB
    return bytes(data)


@dataclass
class Expected:
    """
    What RETR of C{count} blocks must put on the wire: its length and
    digest.
    """

    size: int
    total: int
    digest: str


def expected_retr(data: bytes, count: int, retr_body: Callable[[bytes], bytes]) -> Expected:
    encoded = retr_body(data)[: -len(b".\r\n")]
    size = len(data) * count
    status = b"+OK %d octets\r\n" % size
    digest = hashlib.blake2b(status)
    for _ in range(count):
        digest.update(encoded)
    digest.update(b".\r\n")
    return Expected(size, len(status) + len(encoded) * count + 3, digest.hexdigest())


def read_retr(
    sock: socket.socket,
    expected: Expected,
    deadline: float,
    chunk: int = 4 * MB,
    pause: float = 0.0,
    progress: Callable[[int], None] = lambda count: None,
) -> None:
    """
    Read one RETR response of C{expected} from C{sock}, at most C{chunk}
    octets at a time with C{pause} seconds between reads, and check it.
    """
    received = hashlib.blake2b()
    buffer = bytearray(chunk)
    view = memoryview(buffer)
    count = 0
    while count < expected.total:
        assert time.monotonic() < deadline, f"read only {count} of {expected.total} octets"
        n = sock.recv_into(view, min(chunk, expected.total - count))
        assert n, f"connection closed after {count} of {expected.total} octets"
        received.update(view[:n])
        count += n
        progress(count)
        if pause:
            time.sleep(pause)
    assert received.hexdigest() == expected.digest
