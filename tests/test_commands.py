"""
Tests for popserv.commands: the command-line grammar.
"""

from __future__ import annotations

import pytest

from popserv.commands import SYNTAX, Command, CommandError, parseCommand


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"USER alice", Command("USER", (b"alice",))),
        (b"user alice", Command("USER", (b"alice",))),
        (b"PASS my secret pass", Command("PASS", (b"my secret pass",))),
        (b"PASS  lead", Command("PASS", (b" lead",))),
        (
            b"APOP bob c4c9334bac560ecc979e58001b3e22fb",
            Command("APOP", (b"bob", b"c4c9334bac560ecc979e58001b3e22fb")),
        ),
        (b"STAT", Command("STAT")),
        (b"LIST", Command("LIST")),
        (b"LIST 2", Command("LIST", (2,))),
        (b"LiSt  2 ", Command("LIST", (2,))),
        (b"RETR 1", Command("RETR", (1,))),
        (b"DELE 10", Command("DELE", (10,))),
        (b"TOP 1 0", Command("TOP", (1, 0))),
        # RFC 1939: TOP's n is any non-negative number; past ten digits it
        # asks for more lines than any message has.
        (b"TOP 1 99999999999999999999", Command("TOP", (1, 10**10))),
        (b"TOP 1 0000000000000", Command("TOP", (1, 0))),
        (b"TOP 1 000000000000012", Command("TOP", (1, 12))),
        (b"UIDL 3", Command("UIDL", (3,))),
        # Message numbers and line counts of up to ten digits are numbers.
        (b"RETR 9999999999", Command("RETR", (9999999999,))),
        (b"TOP 1 9999999999", Command("TOP", (1, 9999999999))),
        # Names are any printable octets but space: "!" (0x21) and "~" (0x7E).
        (b"USER !~", Command("USER", (b"!~",))),
        (b"NOOP", Command("NOOP")),
        (b"RSET", Command("RSET")),
        (b"QUIT", Command("QUIT")),
        (b"capa", Command("CAPA")),
        (b"STLS", Command("STLS")),
        (b"UTF8", Command("UTF8")),
        (b"AUTH", Command("AUTH")),
        (b"auth plain", Command("AUTH", (b"PLAIN",))),
        (b"AUTH scram-sha-256 biwsbj11", Command("AUTH", (b"SCRAM-SHA-256", b"biwsbj11"))),
        (b"AUTH PLAIN =", Command("AUTH", (b"PLAIN", b"="))),
        # RFC 4422 section 3.1: a mechanism name is up to 20 characters.
        (b"AUTH " + b"X" * 20, Command("AUTH", (b"X" * 20,))),
    ],
)
def test_parsesValidLines(line: bytes, expected: Command) -> None:
    """
    Keywords are case-insensitive; arguments become ints or bytes; PASS
    keeps everything after the first space, spaces included.
    """
    assert parseCommand(line) == expected


@pytest.mark.parametrize(
    ("line", "text"),
    [
        (b"", "Unknown command"),
        (b"XYZZY", "Unknown command"),
        (b"RETRX 1", "Unknown command"),
        (b"XTND", "Unknown command"),
        (b"AUTH PLAIN a b", "Syntax: AUTH [mechanism [initial-response]]"),
        (b"AUTH " + b"X" * 21, "Syntax: AUTH [mechanism [initial-response]]"),
        (b"AUTH PL\x01IN", "Syntax: AUTH [mechanism [initial-response]]"),
        (b"CAPA x", "Syntax: CAPA"),
        (b"\xff\xfe", "Unknown command"),
        (b"RETR", "Syntax: RETR msg"),
        (b"RETR 0", "Syntax: RETR msg"),
        (b"RETR -1", "Syntax: RETR msg"),
        (b"RETR +1", "Syntax: RETR msg"),
        (b"RETR 1 2", "Syntax: RETR msg"),
        (b"RETR one", "Syntax: RETR msg"),
        (b"RETR \xd9\xa1", "Syntax: RETR msg"),
        (b"RETR 12345678901", "Syntax: RETR msg"),
        (b"TOP 1", "Syntax: TOP msg n"),
        (b"TOP 1 -1", "Syntax: TOP msg n"),
        (b"TOP 0 1", "Syntax: TOP msg n"),
        (b"TOP 1 lines-and-lines", "Syntax: TOP msg n"),
        (b"LIST 0", "Syntax: LIST [msg]"),
        (b"UIDL 0", "Syntax: UIDL [msg]"),
        (b"LIST 1 2", "Syntax: LIST [msg]"),
        (b"STAT 1", "Syntax: STAT"),
        (b"USER", "Syntax: USER name"),
        (b"USER a b", "Syntax: USER name"),
        (b"USER a\x00b", "Syntax: USER name"),
        (b"USER a\x01b", "Syntax: USER name"),
        (b"USER a\x7fb", "Syntax: USER name"),
        (b"APOP bob c4c9\x7f", "Syntax: APOP name digest"),
        (b"PASS", "Syntax: PASS password"),
        (b"APOP bob", "Syntax: APOP name digest"),
        # Arguments are separated by spaces (RFC 1939 section 3); other
        # white space is not a separator, and such a line is malformed, as
        # it already is between the keyword and the first argument.
        (b"TOP 1\t1", "Syntax: TOP msg n"),
        (b"RETR 1\t", "Syntax: RETR msg"),
        (b"LIST \x0b1", "Syntax: LIST [msg]"),
        (b"DELE 1\x0c", "Syntax: DELE msg"),
        (b"UIDL 1\r", "Syntax: UIDL [msg]"),
        (b"STAT \t", "Syntax: STAT"),
        (b"USER alice\t", "Syntax: USER name"),
        (b"APOP bob\tc4c9334bac560ecc979e58001b3e22fb", "Syntax: APOP name digest"),
        (b"AUTH PLAIN\tAGFsaWNlAHNlY3JldA==", "Syntax: AUTH [mechanism [initial-response]]"),
    ],
)
def test_rejectsBadLines(line: bytes, text: str) -> None:
    """
    Unknown keywords and malformed arguments raise CommandError with a fixed
    text that shows the expected usage.
    """
    with pytest.raises(CommandError) as caught:
        parseCommand(line)
    assert caught.value.text == text


def test_everyKeywordHasUsage() -> None:
    """
    Every usage text starts with its own keyword.
    """
    for keyword, (_, usage) in SYNTAX.items():
        assert usage.split()[0] == keyword
