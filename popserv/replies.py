"""
Formatting of POP3 response lines (RFC 1939 section 3, RFC 2449 section 4).

Pure functions from values to bytes; nothing here touches a transport.
"""

from __future__ import annotations

from collections.abc import Iterable

#: RFC 2449 section 4: "Response lines ... are limited to 512 octets,
#: including the terminating CRLF."
MAX_RESPONSE_LINE = 512

CRLF = b"\r\n"
TERMINATOR = b".\r\n"


#: Maps the C0 controls and DEL to a space, every other octet to itself.
_PRINTABLE = bytes(b if 0x20 <= b < 0x7F else 0x20 for b in range(256))


def _clean(text: str) -> bytes:
    """
    Encode a reply text so it can never break the line framing: control
    characters (CR, LF, NUL, ...) become spaces, non-ASCII becomes C{?}.
    """
    return text.encode("ascii", "replace").translate(_PRINTABLE)


def _line(status: bytes, text: str) -> bytes:
    body = status + (b" " + _clean(text) if text else b"")
    limit = MAX_RESPONSE_LINE - len(CRLF)
    return body[:limit] + CRLF


def ok(text: str = "") -> bytes:
    """
    A positive status line: C{+OK text CRLF}, at most 512 octets.
    """
    return _line(b"+OK", text)


def err(text: str, code: str | None = None) -> bytes:
    """
    A negative status line, with the RFC 2449 extended response code in
    brackets before the text when C{code} is given.
    """
    if code:
        text = f"[{code}] {text}"
    return _line(b"-ERR", text)


def multiline(first: bytes, lines: Iterable[bytes]) -> bytes:
    """
    A complete multi-line response: the status line C{first}, then each of
    C{lines} (already-safe bytes without line endings, never starting with
    "."; listings start with a digit) each ending in CRLF, then the
    terminating ".".
    """
    body = CRLF.join(lines)
    if body:
        body += CRLF
    return first + body + TERMINATOR
