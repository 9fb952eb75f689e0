"""
The documentation's examples, read from its pages for the tests that run
them: the output a page shows under a console command, a command with its
continuation lines, the block after a directive, a Python session run as a
doctest, and client-server sessions ("C: " and "S: " lines) replayed
against a real server.  The tests read the pages rather than copies, so a
page and its test cannot drift apart.
"""

from __future__ import annotations

import doctest
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

from processes import TIMEOUT

DOCS = Path(__file__).resolve().parents[2] / "docs"

#: How every greeting starts; its timestamp differs every time.
GREETING = "+OK POP3 server ready"


def lines(page: str) -> list[str]:
    """
    The lines of C{docs/PAGE.rst}.
    """
    return (DOCS / f"{page}.rst").read_text().splitlines()


def _indented(following: list[str], stopAtCommand: bool) -> list[str]:
    """
    The lines of the indented block at the start of C{following}, out of
    their indentation, without blank lines at either end; with
    C{stopAtCommand}, only up to the next console command ("$ ").
    """
    block: list[str] = []
    for line in following:
        if line and not line.startswith("   "):
            break
        if stopAtCommand and line.startswith("   $"):
            break
        block.append(line[3:])
    while block and not block[0]:
        block.pop(0)
    while block and not block[-1]:
        block.pop()
    return block


def shown(page: str, command: str) -> list[str]:
    """
    The output C{page} shows for the console command that starts with
    C{command}: the lines under it, up to the next command or the end of
    the block.
    """
    text = lines(page)
    start = next(i for i, line in enumerate(text) if line.strip().startswith(f"$ {command}"))
    output = _indented(text[start + 1 :], stopAtCommand=True)
    assert output, command
    return output


def command(page: str, prefix: str) -> str:
    """
    The console command of C{page} that starts with C{prefix}, its
    continuation lines joined.
    """
    text = lines(page)
    start = next(i for i, line in enumerate(text) if line.strip().startswith(f"$ {prefix}"))
    joined = text[start].strip()[2:]
    for line in text[start + 1 :]:
        if not joined.endswith("\\"):
            break
        joined = joined[:-1] + " " + line.strip()
    return joined


def blocks(page: str, directive: str, after: str | None = None) -> Iterator[list[str]]:
    """
    The lines of each C{directive} block of C{page} (e.g. ".. code-block::
    text"), in order; with C{after}, only those after the first line that
    contains it.
    """
    text = lines(page)
    start = 0 if after is None else next(i for i, line in enumerate(text) if after in line)
    for i in range(start, len(text)):
        if text[i].strip() == directive:
            yield _indented(text[i + 1 :], stopAtCommand=False)


def block(page: str, directive: str, after: str | None = None) -> list[str]:
    """
    The first of L{blocks}.
    """
    return next(blocks(page, directive, after))


def literal(page: str, after: str) -> list[str]:
    """
    The lines of the first literal block ("...::" and an indented block)
    of C{page} after the first line that contains C{after}.
    """
    text = lines(page)
    start = next(i for i, line in enumerate(text) if after in line)
    end = next(i for i in range(start, len(text)) if text[i].endswith("::"))
    return _indented(text[end + 1 :], stopAtCommand=False)


def runSession(page: str, replacements: dict[str, str]) -> None:
    """
    Run the first Python session C{page} shows (its "pycon" block) as a
    doctest, with each key of C{replacements} replaced by its value first
    (a port, a path); fail with the differences if any example does.
    """
    session = "\n".join(block(page, ".. code-block:: pycon")) + "\n"
    for old, new in replacements.items():
        assert old in session, old
        session = session.replace(old, new)
    test = doctest.DocTestParser().get_doctest(session, {}, page, str(DOCS / f"{page}.rst"), 0)
    assert len(test.examples) >= 5, session
    runner = doctest.DocTestRunner(optionflags=doctest.REPORT_NDIFF)
    report: list[str] = []
    runner.run(test, out=report.append)
    assert runner.summarize(verbose=False).failed == 0, "".join(report)


def transcripts(page: str) -> list[list[str]]:
    """
    Every session shown in C{docs/PAGE.rst}, in order: the text blocks made
    of "C: " and "S: " lines, and "# " lines that say what the line above
    decodes to (kept, and skipped by L{replay}).
    """
    found = []
    for shown in blocks(page, ".. code-block:: text"):
        exchange = [line for line in shown if not line.lstrip().startswith("# ")]
        if exchange and all(line[:2] in ("C:", "S:") for line in exchange):
            found.append(shown)
    return found


def replay(port: int, transcript: list[str], tls: ssl.SSLContext | None = None) -> None:
    """
    Play the client's side of C{transcript} on a new connection to
    127.0.0.1 and check the server's, line by line: exactly, CRLF-ended,
    but for the greeting's timestamp.  With C{tls}, over implicit TLS
    (RFC 8314) made with that context.
    """
    with (
        _connect(port, tls) as sock,
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


def _connect(port: int, tls: ssl.SSLContext | None) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    if tls is None:
        return sock
    try:
        return tls.wrap_socket(sock, server_hostname="127.0.0.1")
    except BaseException:
        sock.close()
        raise
