"""
Parsing POP3 command lines (RFC 1939 section 3) into L{Command} values.

No I/O: a line of bytes goes in, a L{Command} or a L{CommandError} comes
out.  Each keyword's argument syntax is one row of L{SYNTAX}, so the whole
grammar the server accepts can be read in one place.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from popserv.errors import POP3Error

#: RFC 1939 section 3: keywords are 3 or 4 characters; RFC 2449 section 4
#: allows up to 255 octets per command line including CRLF.  The line
#: receiver enforces the line limit; these bound the pieces.
MAX_KEYWORD = 4
#: Message numbers and line counts: ten digits is more than any maildrop
#: holds, and keeps int() on hostile input cheap.
MAX_NUMBER_DIGITS = 10
#: TOP's line count for a number longer than that (RFC 1939 allows any).
_MORE_LINES_THAN_ANY: int = 10**MAX_NUMBER_DIGITS


class CommandError(POP3Error):
    """
    The command line is malformed; C{text} says what was expected.
    """


class Args(enum.Enum):
    """
    The shapes of argument list the RFC 1939 commands take.
    """

    NONE = "no arguments"
    #: Everything after the keyword and one space, spaces included
    #: (RFC 1939 section 7 allows spaces inside the PASS argument).
    REST = "one argument"
    NAME = "one name"
    NAME_DIGEST = "a name and a digest"
    MSG = "a message number"
    OPTIONAL_MSG = "an optional message number"
    MSG_LINES = "a message number and a line count"
    #: AUTH [mechanism [initial-response]] (RFC 5034 section 4).
    AUTH = "an optional mechanism and initial response"


#: keyword -> (argument shape, usage text shown on a syntax error)
SYNTAX: dict[str, tuple[Args, str]] = {
    "USER": (Args.NAME, "USER name"),
    "PASS": (Args.REST, "PASS password"),
    "APOP": (Args.NAME_DIGEST, "APOP name digest"),
    "QUIT": (Args.NONE, "QUIT"),
    "STAT": (Args.NONE, "STAT"),
    "LIST": (Args.OPTIONAL_MSG, "LIST [msg]"),
    "RETR": (Args.MSG, "RETR msg"),
    "DELE": (Args.MSG, "DELE msg"),
    "NOOP": (Args.NONE, "NOOP"),
    "RSET": (Args.NONE, "RSET"),
    "TOP": (Args.MSG_LINES, "TOP msg n"),
    "UIDL": (Args.OPTIONAL_MSG, "UIDL [msg]"),
    "CAPA": (Args.NONE, "CAPA"),
    "STLS": (Args.NONE, "STLS"),
    "AUTH": (Args.AUTH, "AUTH [mechanism [initial-response]]"),
    "UTF8": (Args.NONE, "UTF8"),
}


@dataclass(frozen=True)
class Command:
    """
    One parsed command line.

    @ivar keyword: the upper-cased keyword, a key of L{SYNTAX}.
    @ivar args: the arguments: L{int} for message numbers and line counts,
        L{bytes} for names, passwords and digests.
    """

    keyword: str
    args: tuple[int | bytes, ...] = ()


def splitKeyword(line: bytes) -> tuple[str, bytes]:
    """
    Split a command line into its upper-cased keyword and the raw rest.

    @raise CommandError: the keyword is not a known command.
    """
    keyword, _, rest = line.partition(b" ")
    # Keywords are letters and digits (UTF8, RFC 6856).
    if not (0 < len(keyword) <= MAX_KEYWORD and keyword.isalnum()):
        raise CommandError("Unknown command")
    name = keyword.decode("ascii").upper()
    if name not in SYNTAX:
        raise CommandError("Unknown command")
    return name, rest


def _number(token: bytes, usage: str, minimum: int) -> int:
    # isdigit() on bytes is ASCII-only: no signs, no spaces, no Unicode digits.
    if not (0 < len(token) <= MAX_NUMBER_DIGITS and token.isdigit()):
        raise CommandError(f"Syntax: {usage}")
    value = int(token)
    if value < minimum:
        raise CommandError(f"Syntax: {usage}")
    return value


def _word(token: bytes, usage: str) -> bytes:
    # RFC 2449 section 4 suggests 40-character arguments, but user@domain
    # names are often longer; the 255-octet line limit bounds them instead.
    if not token or not _printable(token):
        raise CommandError(f"Syntax: {usage}")
    return token


def _printable(token: bytes) -> bool:
    # RFC 1939 arguments are printable ASCII, RFC 6856 adds UTF-8: allow
    # anything but controls and space.
    return all(b > 0x20 and b != 0x7F for b in token)


def parseArguments(keyword: str, rest: bytes) -> Command:
    """
    Parse the arguments of C{keyword} from C{rest}, the line after the
    keyword and its separating space.

    @raise CommandError: the arguments do not match the keyword's syntax; the
        error's text shows the expected usage.
    """
    shape, usage = SYNTAX[keyword]
    if shape is Args.REST:
        if not rest:
            raise CommandError(f"Syntax: {usage}")
        return Command(keyword, (rest,))
    # RFC 1939 section 3 separates arguments by a single space; tolerate
    # runs of spaces and trailing spaces, which real clients send.  Only
    # spaces: a tab (or VT, FF, CR) is no separator, as it is none after the
    # keyword, and the token holding it is malformed.
    # (Filtered only when there is something to filter: a list
    # comprehension at every command was 0.5 % of a login session's work.)
    tokens = rest.split(b" ") if rest else []
    if b"" in tokens:
        tokens = list(filter(None, tokens))
    if shape is Args.NONE:
        if tokens:
            raise CommandError(f"Syntax: {usage}")
        return Command(keyword)
    if shape is Args.NAME:
        if len(tokens) != 1:
            raise CommandError(f"Syntax: {usage}")
        return Command(keyword, (_word(tokens[0], usage),))
    if shape is Args.NAME_DIGEST:
        if len(tokens) != 2:
            raise CommandError(f"Syntax: {usage}")
        return Command(keyword, (_word(tokens[0], usage), _word(tokens[1], usage)))
    if shape is Args.AUTH:
        if len(tokens) > 2:
            raise CommandError(f"Syntax: {usage}")
        if tokens and not (len(tokens[0]) <= 20 and _printable(tokens[0])):
            raise CommandError(f"Syntax: {usage}")
        # The mechanism name is case-insensitive (RFC 4422 section 3.1).
        return Command(keyword, tuple(t.upper() if i == 0 else t for i, t in enumerate(tokens)))
    if shape is Args.MSG:
        if len(tokens) != 1:
            raise CommandError(f"Syntax: {usage}")
        return Command(keyword, (_number(tokens[0], usage, 1),))
    if shape is Args.OPTIONAL_MSG:
        if len(tokens) > 1:
            raise CommandError(f"Syntax: {usage}")
        return Command(keyword, tuple(_number(t, usage, 1) for t in tokens))
    # Args.MSG_LINES
    if len(tokens) != 2:
        raise CommandError(f"Syntax: {usage}")
    return Command(keyword, (_number(tokens[0], usage, 1), _lineCount(tokens[1], usage)))


def _lineCount(token: bytes, usage: str) -> int:
    # RFC 1939 section 7: TOP's n is "a non-negative number", of any size;
    # a client may ask for a huge one to mean the whole body.  Any run of
    # digits (the line limit bounds it) is taken, and more than ten digits
    # asks for more lines than any message has.
    if token.isdigit() and len(token) > MAX_NUMBER_DIGITS:
        significant = token.lstrip(b"0")
        if len(significant) > MAX_NUMBER_DIGITS:
            return _MORE_LINES_THAN_ANY
        return int(significant or b"0")
    return _number(token, usage, 0)


def parseCommand(line: bytes) -> Command:
    """
    Parse a whole command line (without its line ending).

    @raise CommandError: unknown keyword or bad arguments.
    """
    keyword, rest = splitKeyword(line)
    return parseArguments(keyword, rest)
