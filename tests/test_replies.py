"""
Tests for popserv.replies: status and multi-line response formatting.
"""

from __future__ import annotations

from popserv import replies


def test_okAndErr() -> None:
    """
    Status lines are +OK/-ERR, a space, the text and CRLF; codes go in
    brackets first (RFC 2449 section 8).
    """
    assert replies.ok() == b"+OK\r\n"
    assert replies.ok("fine") == b"+OK fine\r\n"
    assert replies.err("No such message") == b"-ERR No such message\r\n"
    assert replies.err("busy", "IN-USE") == b"-ERR [IN-USE] busy\r\n"


def test_controlCharactersNeutralised() -> None:
    """
    A text can never inject a line: CR, LF and other controls become spaces
    and non-ASCII becomes '?'.
    """
    assert replies.err("a\r\nb\x00c\u00e9") == b"-ERR a  b c?\r\n"


def test_deleteNeutralised() -> None:
    """
    DEL (0x7F) is a control character too and becomes a space, like the C0
    controls; the printable ASCII just below it passes through.
    """
    assert replies.err("a\x7fb~c") == b"-ERR a b~c\r\n"
    assert replies.ok("\x7f") == b"+OK  \r\n"


def test_longLinesCapped() -> None:
    """
    No response line exceeds 512 octets including CRLF (RFC 2449 section 4).
    """
    line = replies.ok("x" * 2000)
    assert len(line) == 512
    assert line.endswith(b"\r\n")


def test_multiline() -> None:
    """
    A multi-line response is the status line, each line with CRLF, then
    ".CRLF"; an empty listing is just the status line and the terminator.
    """
    assert replies.multiline(b"+OK\r\n", [b"1 10", b"2 20"]) == b"+OK\r\n1 10\r\n2 20\r\n.\r\n"
    assert replies.multiline(b"+OK\r\n", []) == b"+OK\r\n.\r\n"
