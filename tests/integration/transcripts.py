"""
Client-server sessions as the documentation shows them ("C: " and "S: "
lines in text blocks), found in a page and replayed against a real server.
"""

from __future__ import annotations

import socket
from pathlib import Path

from processes import TIMEOUT

DOCS = Path(__file__).resolve().parents[2] / "docs"

#: How every greeting starts; its timestamp differs every time.
GREETING = "+OK POP3 server ready"


def transcripts(page: str) -> list[list[str]]:
    """
    Every session shown in C{docs/PAGE.rst}, in order: the text blocks made
    of "C: " and "S: " lines, and "# " lines that say what the line above
    decodes to (kept, and skipped by L{replay}).
    """
    found = []
    for part in (DOCS / f"{page}.rst").read_text().split(".. code-block:: text\n")[1:]:
        lines = []
        for line in part.lstrip("\n").splitlines():
            if not line.startswith("   "):
                break
            lines.append(line[3:])
        exchange = [line for line in lines if not line.lstrip().startswith("# ")]
        if exchange and all(line[:2] in ("C:", "S:") for line in exchange):
            found.append(lines)
    return found


def replay(port: int, transcript: list[str]) -> None:
    """
    Play the client's side of C{transcript} on a new connection to
    127.0.0.1 and check the server's, line by line: exactly, CRLF-ended,
    but for the greeting's timestamp.
    """
    with (
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock,
        sock.makefile("rb") as received,
    ):
        if not transcript[0].startswith(f"S: {GREETING}"):
            assert received.readline().startswith(GREETING.encode())
        for number, line in enumerate(transcript, 1):
            if line.lstrip().startswith("# "):
                continue
            if line.startswith("C:"):
                sock.sendall(line[3:].encode() + b"\r\n")
                continue
            got = received.readline()
            assert got.endswith(b"\r\n"), (number, got)
            text, expected = got[:-2].decode(), line[3:]
            if expected == "+":
                # An empty SASL challenge is "+" and a space (RFC 5034
                # section 4), which a text block cannot show at a line's
                # end; authentication.rst says so beside it.
                expected = "+ "
            if expected.startswith(GREETING):
                assert text == GREETING or (
                    text.startswith(f"{GREETING} <") and text.endswith("@popserv>")
                ), text
                assert (text == GREETING) == (expected == GREETING), (text, expected)
            else:
                assert text == expected, f"line {number} of {transcript}"
