"""
A small, independent model of a POP3 session for the fuzz suite
(tests/test_fuzz.py): what the server must answer to each line, written
from RFC 1939, RFC 2449, RFC 5034 and RFC 6856 rather than from
popserv.protocol, plus the hypothesis strategies that produce sessions.

Only message encoding and sizes come from popserv (L{encodeMessage},
L{wireSize}); test_encoder.py tests those on their own.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass, field

from hypothesis import strategies as st

from popserv.encoder import encodeMessage, wireSize

#: RFC 2449 section 4: 255 octets per command line including CRLF; the line
#: receiver counts a line with its CR and without its LF.
MAX_LINE = 254
#: SASL responses may be longer (RFC 5034 section 4): 8192 with CRLF.
MAX_SASL_LINE = 8191
MAX_RESPONSE_LINE = 512
#: popserv.limits.Limits defaults: the session closes after these.
MAX_BAD_COMMANDS = 20
MAX_AUTH_FAILURES = 3

PASSWORDS = {"alice": b"secret", "bob": b"two words"}

AUTHORIZATION, TRANSACTION, CLOSED = "AUTHORIZATION", "TRANSACTION", "CLOSED"
LEGAL = {
    AUTHORIZATION: {"USER", "PASS", "APOP", "QUIT", "CAPA", "STLS", "AUTH", "UTF8"},
    TRANSACTION: {"STAT", "LIST", "RETR", "DELE", "NOOP", "RSET", "TOP", "UIDL", "QUIT", "CAPA"},
}
KEYWORDS = LEGAL[AUTHORIZATION] | LEGAL[TRANSACTION]
USAGE = {
    "USER": "USER name",
    "PASS": "PASS password",
    "APOP": "APOP name digest",
    "QUIT": "QUIT",
    "STAT": "STAT",
    "LIST": "LIST [msg]",
    "RETR": "RETR msg",
    "DELE": "DELE msg",
    "NOOP": "NOOP",
    "RSET": "RSET",
    "TOP": "TOP msg n",
    "UIDL": "UIDL [msg]",
    "CAPA": "CAPA",
    "STLS": "STLS",
    "AUTH": "AUTH [mechanism [initial-response]]",
    "UTF8": "UTF8",
}


@dataclass(frozen=True)
class Listing:
    """
    A multi-line response whose status line is C{first} exactly and whose
    lines the model does not predict (CAPA, the AUTH mechanism list).
    """

    first: bytes


Segment = bytes | Listing


class Mismatch(AssertionError):
    """
    The server's output is not what the model expects.
    """


def _ok(text: str = "") -> bytes:
    return b"+OK" + (b" " + text.encode() if text else b"") + b"\r\n"


def _err(text: str) -> bytes:
    return b"-ERR " + text.encode() + b"\r\n"


def _printable(token: bytes) -> bool:
    return all(b > 0x20 and b != 0x7F for b in token)


def _number(token: bytes, minimum: int) -> int | None:
    # RFC 1939 message numbers: ASCII digits; the server bounds them at ten.
    if not (0 < len(token) <= 10 and re.fullmatch(rb"[0-9]+", token)):
        return None
    value = int(token)
    return value if value >= minimum else None


class Unmodelled(Exception):
    """
    The line starts an exchange the model does not follow (SASL mechanisms
    other than PLAIN); the example is discarded.
    """


class SyntaxProblem(Exception):
    """
    The line does not fit its keyword's grammar.
    """


@dataclass
class Model:
    """
    One client's session against a shared set of maildrops.

    @ivar mailboxes: user -> messages; updated at QUIT like the store.
    @ivar locked: users whose maildrop another session holds.
    """

    mailboxes: dict[str, list[tuple[bytes, str]]]
    challenge: bytes
    locked: set[str] = field(default_factory=set)
    state: str = AUTHORIZATION
    utf8: bool = False
    pendingUser: bytes | None = None
    saslPlain: bool = False
    user: str | None = None
    #: the logged-in user's (message, uid) pairs, numbered from 1.
    snapshot: list[tuple[bytes, str]] = field(default_factory=list)
    deleted: set[int] = field(default_factory=set)
    quit: bool = False
    badCommands: int = 0
    tooLongSeen: bool = False
    authFailures: int = 0

    # Lines

    def limit(self) -> int:
        return MAX_SASL_LINE if self.saslPlain else MAX_LINE

    def tooLong(self) -> list[Segment]:
        if self.state is CLOSED:
            return []
        self.state = CLOSED
        self.tooLongSeen = True
        return [_err("Line too long")]

    def line(self, line: bytes) -> list[Segment]:
        """
        The response to one line (without its LF).  The session ends after
        too many command errors or failed logins (popserv.limits).
        """
        if self.state is CLOSED:
            return []
        out = self._line(line)
        if self.badCommands >= MAX_BAD_COMMANDS and self.state is not CLOSED:
            self.state = CLOSED
            out.append(_err("Too many bad commands"))
        if self.authFailures >= MAX_AUTH_FAILURES:
            self.state = CLOSED
        return out

    def _bad(self, text: str) -> bytes:
        self.badCommands += 1
        return _err(text)

    def _line(self, line: bytes) -> list[Segment]:
        if self.state is CLOSED:
            return []
        if line.endswith(b"\r"):
            line = line[:-1]
        if self.saslPlain:
            self.saslPlain = False
            if line == b"*":
                return [self._bad("Authentication cancelled")]
            return self._plain(line)
        keyword, _, rest = line.partition(b" ")
        if not (0 < len(keyword) <= 4 and keyword.isalnum()):
            return [self._bad("Unknown command")]
        name = keyword.decode("ascii").upper()
        if name not in KEYWORDS:
            return [self._bad("Unknown command")]
        if name not in LEGAL[self.state]:
            if name in ("USER", "PASS", "APOP"):
                return [self._bad("Already logged in")]
            return [self._bad("Command not valid in this state")]
        try:
            return getattr(self, "do" + name)(rest)
        except SyntaxProblem:
            return [self._bad("Syntax: " + USAGE[name])]

    # Argument shapes

    def _tokens(self, rest: bytes, count: int | tuple[int, int]) -> list[bytes]:
        tokens = [token for token in rest.split(b" ") if token]
        low, high = (count, count) if isinstance(count, int) else count
        if not low <= len(tokens) <= high:
            raise SyntaxProblem()
        return tokens

    def _msg(self, rest: bytes, optional: bool = False) -> int | None:
        tokens = self._tokens(rest, (0 if optional else 1, 1))
        if not tokens:
            return None
        number = _number(tokens[0], 1)
        if number is None:
            raise SyntaxProblem()
        return number

    # AUTHORIZATION

    def doUSER(self, rest: bytes) -> list[Segment]:
        (name,) = self._tokens(rest, 1)
        if not _printable(name):
            raise SyntaxProblem()
        self.pendingUser = name
        return [_ok("Send PASS")]

    def doPASS(self, rest: bytes) -> list[Segment]:
        if not rest:
            raise SyntaxProblem()
        if self.pendingUser is None:
            return [self._bad("Send USER first")]
        user, self.pendingUser = self.pendingUser, None
        return self._login(user, lambda password: password == rest)

    def doAPOP(self, rest: bytes) -> list[Segment]:
        name, digest = self._tokens(rest, 2)
        if not (_printable(name) and _printable(digest)):
            raise SyntaxProblem()
        if not re.fullmatch(rb"[0-9a-fA-F]{32}", digest):
            return [self._bad("Syntax: APOP name digest (32 hex digits)")]
        self.pendingUser = None
        return self._login(
            name,
            lambda password: (
                hashlib.md5(self.challenge + password).hexdigest().encode() == digest.lower()
            ),
        )

    def doAUTH(self, rest: bytes) -> list[Segment]:
        tokens = self._tokens(rest, (0, 2))
        if not tokens:
            return [Listing(b"+OK Methods supported\r\n")]
        if not (len(tokens[0]) <= 20 and _printable(tokens[0])):
            raise SyntaxProblem()
        if tokens[0].upper() in (b"LOGIN", b"CRAM-MD5", b"SCRAM-SHA-256", b"SCRAM-SHA-256-PLUS"):
            raise Unmodelled(tokens[0])
        if tokens[0].upper() != b"PLAIN":
            # The other offered mechanisms are not generated; EXTERNAL and
            # unknown names are refused alike on a cleartext local link.
            return [self._bad("Unsupported authentication mechanism")]
        if len(tokens) == 1:
            self.pendingUser = None
            self.saslPlain = True
            return [b"+ \r\n"]
        if tokens[1] == b"=":
            self.pendingUser = None
            return self._plainDecoded(b"")
        return self._plain(tokens[1], clearUser=True)

    def _plain(self, response: bytes, clearUser: bool = False) -> list[Segment]:
        try:
            decoded = base64.b64decode(response, validate=True)
        except binascii.Error:
            return [self._bad("Invalid base64 data")]
        if clearUser:
            self.pendingUser = None
        return self._plainDecoded(decoded)

    def _plainDecoded(self, decoded: bytes) -> list[Segment]:
        # RFC 4616: authzid NUL authcid NUL passwd.
        parts = decoded.split(b"\0")
        if len(parts) != 3 or not parts[1] or not parts[2]:
            return [self._bad("Malformed SASL response")]
        authzid, authcid, password = parts
        if authzid and authzid != authcid:
            return [self._bad("Proxy authorization is not supported")]
        return self._login(authcid, lambda stored: stored == password)

    def _login(self, name: bytes, verify: object) -> list[Segment]:
        user = name.decode("utf-8", "surrogateescape")
        stored = PASSWORDS.get(user)
        if stored is None or not verify(stored):  # type: ignore[operator]
            self.authFailures += 1
            return [_err("[AUTH] Authentication failed")]
        if user in self.locked:
            self.state = CLOSED  # popserv closes after [IN-USE]
            return [_err("[IN-USE] Maildrop is in use by another session")]
        self.user = user
        self.locked.add(user)
        self.snapshot = list(self.mailboxes.get(user, []))
        self.state = TRANSACTION
        count, octets = self._stat()
        return [_ok(f"Logged in, {count} messages ({octets} octets)")]

    def doCAPA(self, rest: bytes) -> list[Segment]:
        self._tokens(rest, 0)
        return [Listing(b"+OK Capability list follows\r\n")]

    def doSTLS(self, rest: bytes) -> list[Segment]:
        self._tokens(rest, 0)
        return [self._bad("STLS is not available on this server")]

    def doUTF8(self, rest: bytes) -> list[Segment]:
        self._tokens(rest, 0)
        self.utf8 = True
        return [_ok("UTF8 enabled")]

    def doQUIT(self, rest: bytes) -> list[Segment]:
        self._tokens(rest, 0)
        wasLoggedIn = self.state is TRANSACTION
        self.state = CLOSED
        self.quit = True
        if not wasLoggedIn:
            return [_ok("Bye")]
        assert self.user is not None
        left = len(self.snapshot) - len(self.deleted)
        self.mailboxes[self.user] = [
            m for i, m in enumerate(self.snapshot) if i not in self.deleted
        ]
        if not self.deleted:
            return [_ok(f"Bye, {left} messages left")]
        return [_ok(f"Bye, {len(self.deleted)} deleted, {left} left")]

    # TRANSACTION

    def size(self, index: int) -> int:
        """
        The wire size this client sees of message C{index} (RFC 6856: with
        UTF-8 headers downgraded unless it enabled UTF8).
        """
        return wireSize(self.snapshot[index][0], downgrade=not self.utf8)

    def _stat(self) -> tuple[int, int]:
        visible = [i for i in range(len(self.snapshot)) if i not in self.deleted]
        return len(visible), sum(self.size(i) for i in visible)

    def _visible(self, number: int) -> int | bytes:
        if number > len(self.snapshot):
            return _err("No such message")
        if number - 1 in self.deleted:
            return _err(f"Message {number} is deleted")
        return number - 1

    def doSTAT(self, rest: bytes) -> list[Segment]:
        self._tokens(rest, 0)
        count, octets = self._stat()
        return [_ok(f"{count} {octets}")]

    def _listing(self, rest: bytes, first: bytes, item: object) -> list[Segment]:
        number = self._msg(rest, optional=True)
        if number is None:
            lines = b"".join(
                b"%d %s\r\n" % (i + 1, item(i))  # type: ignore[operator]
                for i in range(len(self.snapshot))
                if i not in self.deleted
            )
            return [first + lines + b".\r\n"]
        index = self._visible(number)
        if isinstance(index, bytes):
            return [index]
        return [b"+OK %d %s\r\n" % (number, item(index))]  # type: ignore[operator]

    def doLIST(self, rest: bytes) -> list[Segment]:
        count, octets = self._stat()
        first = _ok(f"{count} messages ({octets} octets)")
        return self._listing(rest, first, lambda i: b"%d" % self.size(i))

    def doUIDL(self, rest: bytes) -> list[Segment]:
        return self._listing(
            rest, _ok("Unique-ID listing follows"), lambda i: self.snapshot[i][1].encode()
        )

    def doRETR(self, rest: bytes) -> list[Segment]:
        number = self._msg(rest)
        assert number is not None
        index = self._visible(number)
        if isinstance(index, bytes):
            return [index]
        body = encodeMessage(self.snapshot[index][0], downgrade=not self.utf8)
        return [_ok(f"{self.size(index)} octets") + body]

    def doTOP(self, rest: bytes) -> list[Segment]:
        tokens = self._tokens(rest, 2)
        number, lines = _number(tokens[0], 1), _number(tokens[1], 0)
        if lines is None and re.fullmatch(rb"[0-9]{11,}", tokens[1]):
            # RFC 1939: n is any non-negative number; one of more than ten
            # significant digits asks for every line there is.
            lines = min(int(tokens[1]), 10**10)
        if number is None or lines is None:
            raise SyntaxProblem()
        index = self._visible(number)
        if isinstance(index, bytes):
            return [index]
        body = encodeMessage(self.snapshot[index][0], lines, downgrade=not self.utf8)
        return [_ok("Top of message follows") + body]

    def doDELE(self, rest: bytes) -> list[Segment]:
        number = self._msg(rest)
        assert number is not None
        index = self._visible(number)
        if isinstance(index, bytes):
            return [index]
        self.deleted.add(index)
        return [_ok(f"Message {number} deleted")]

    def doNOOP(self, rest: bytes) -> list[Segment]:
        self._tokens(rest, 0)
        return [_ok()]

    def doRSET(self, rest: bytes) -> list[Segment]:
        self._tokens(rest, 0)
        self.deleted.clear()
        count, octets = self._stat()
        return [_ok(f"{count} messages ({octets} octets)")]


def expected(model: Model, stream: bytes) -> list[Segment]:
    """
    Everything the server must write after its greeting when a client
    sends C{stream}, however it is cut into reads: complete lines are
    answered in order; the first over-long line, complete or not, is
    answered "-ERR Line too long" in turn and ends the session.
    """
    out: list[Segment] = []
    *lines, tail = stream.split(b"\n")
    for line in lines:
        if model.state is CLOSED:
            return out
        if len(line) > model.limit():
            return out + model.tooLong()
        out += model.line(line)
    if len(tail) > model.limit():
        out += model.tooLong()
    return out


def check(actual: bytes, segments: list[Segment], complete: bool) -> None:
    """
    Raise L{Mismatch} unless C{actual} is the output C{segments} describe
    (C{complete}) or a prefix of it (a session still under way).
    """
    rest = actual
    for segment in segments:
        if isinstance(segment, bytes):
            if rest.startswith(segment):
                rest = rest[len(segment) :]
                continue
            if not complete and segment.startswith(rest):
                return
            raise Mismatch(f"expected {segment!r}, got {rest[: len(segment) + 40]!r}")
        if not rest.startswith(segment.first):
            if not complete and segment.first.startswith(rest):
                return
            raise Mismatch(f"expected {segment.first!r}..., got {rest[:80]!r}")
        rest = rest[len(segment.first) :]
        while not rest.startswith(b".\r\n"):
            line, crlf, after = rest.partition(b"\r\n")
            if not crlf:
                if complete:
                    raise Mismatch(f"unterminated listing {rest[:80]!r}")
                return
            if not line or line.startswith(b".") or not _printable(line.replace(b" ", b"x")):
                raise Mismatch(f"bad listing line {line!r}")
            rest = after
        rest = rest[3:]
    if rest:
        raise Mismatch(f"unexpected output {rest[:80]!r}")


# Strategies

_headerText = st.sampled_from(["hi", "caf\u00e9", ".dot", "\u65e5\u672c", "x y"])
_bodyLine = st.text(alphabet="a .\u00e9-", max_size=40)


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    """
    A stored message: a Subject (sometimes UTF-8, RFC 6532), a body with
    lines that start with ".", LF or CRLF endings, maybe no final newline.
    """
    ending = draw(st.sampled_from([b"\n", b"\r\n"]))
    header = b"Subject: " + draw(_headerText).encode() + ending
    body = [line.encode() for line in draw(st.lists(_bodyLine, max_size=6))]
    data = header + ending + ending.join(body)
    if body and draw(st.booleans()):
        data += ending
    return data


mailboxes = st.fixed_dictionaries(
    {
        "alice": st.lists(messages(), max_size=4),
        "bob": st.lists(messages(), max_size=2),
    }
)

_numbers = st.sampled_from(
    [
        *(b"1", b"2", b"3", b"4", b"5", b"0", b"01", b"0000000002", b"12345678901"),
        *(b"-1", b"x", b"99999999999999999999", b"\xff", b"+1"),
    ]
)
_names = st.sampled_from([b"alice", b"bob", b"nobody", b"\xc3\xa9l\xc3\xa8ve", b"al\x00ice"])
_passwords = st.sampled_from([b"secret", b"two words", b"wrong", b" secret", b""])
_plain = st.sampled_from(
    [
        b"\0alice\0secret",
        b"alice\0alice\0secret",
        b"\0bob\0two words",
        b"bob\0alice\0secret",
        b"\0alice\0wrong",
        b"\0alice",
        b"",
    ]
)


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data) if data else b"="


@st.composite
def commands(draw: st.DrawFn, quit: bool = True, saslContinue: bool = True) -> object:
    """
    One command as a function of the greeting's APOP timestamp, giving the
    lines to send (without endings).  Keywords in random case, arguments
    valid and not, with extra spaces.
    """
    keyword = draw(
        st.sampled_from(
            ["USER", "PASS", "APOP", "AUTH", "CAPA", "STLS", "UTF8", "NOOP", "STAT", "RSET"]
            + ["LIST", "UIDL", "RETR", "DELE", "TOP"] * 3
            + (["QUIT"] if quit else [])
        )
    )
    cased = "".join(c.swapcase() if draw(st.booleans()) else c for c in keyword).encode()
    space = draw(st.sampled_from([b" ", b"  "]))
    trail = draw(st.sampled_from([b"", b"", b" "]))
    args: list[bytes] = []
    if keyword in ("LIST", "UIDL") or keyword in ("RETR", "DELE"):
        args = draw(st.lists(_numbers, max_size=2))
    elif keyword == "TOP":
        args = draw(st.lists(_numbers, min_size=1, max_size=3))
    elif keyword == "USER":
        args = [draw(_names)]
    elif keyword in ("NOOP", "STAT", "RSET", "CAPA", "STLS", "UTF8", "QUIT"):
        args = draw(st.sampled_from([[], [], [], [b"x"]]))
    if keyword == "PASS":
        password = draw(_passwords)
        return lambda challenge: [cased + (b" " + password if password else b"")]
    if keyword == "APOP":
        name = draw(_names)
        secret = draw(st.sampled_from([b"secret", b"two words", b"wrong", None]))
        upper = draw(st.booleans())

        def apop(challenge: bytes) -> list[bytes]:
            digest = hashlib.md5(challenge + secret).hexdigest().encode() if secret else b"xyz"
            return [cased + b" " + name + b" " + (digest.upper() if upper else digest)]

        return apop
    if keyword == "AUTH":
        shapes = ["list", "bad", "other"]
        if saslContinue:
            shapes += ["initial", "continue", "cancel"]
        shape = draw(st.sampled_from(shapes))
        mechanism = draw(st.sampled_from([b"PLAIN", b"plain"]))
        response = _b64(draw(_plain))
        lines = {
            "list": [cased],
            "initial": [cased + b" " + mechanism + b" " + response],
            "continue": [cased + b" " + mechanism, response],
            "cancel": [cased + b" " + mechanism, b"*"],
            "bad": [cased + b" " + mechanism + b" " + b"!!!"],
            "other": [cased + b" " + draw(st.sampled_from([b"XYZ", b"EXTERNAL", b"x" * 21]))],
        }[shape]
        return lambda challenge: lines
    line = space.join([cased, *args]) + (trail if args else b"")
    return lambda challenge: [line]


#: Lines that are not commands: binary, NUL, invalid UTF-8, lone CR, empty.
junkLines = st.one_of(
    st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")),
    st.sampled_from([b"", b"\r", b"\x00", b"\xff\xfe\xfd", b"NO\rOP", b"\r\r", b"NOOP\r"]),
)


@st.composite
def sessions(
    draw: st.DrawFn, quit: bool = True, tooLong: bool = True, continuation: bool = True
) -> object:
    """
    A client's whole input as a function of the APOP timestamp: commands
    and junk lines, each ending in CRLF or a bare LF, sometimes an
    over-long line, sometimes a last line without ending.
    """
    long = draw(st.none() | st.integers(MAX_LINE + 1, 1200)) if tooLong else None
    saslContinue = continuation
    items = draw(
        st.lists(
            st.one_of(
                commands(quit=quit, saslContinue=saslContinue),
                commands(quit=quit, saslContinue=saslContinue),
                commands(quit=quit, saslContinue=saslContinue),
                junkLines.map(lambda junk: lambda challenge: [junk]),
            ),
            max_size=25,
        )
    )
    # Most sessions log in first, so TRANSACTION is explored as well.
    preambles: list[list[bytes] | None] = [
        [],
        [b"USER alice", b"PASS secret"],
        [b"UTF8", b"USER alice", b"PASS secret"],
        [b"user bob", b"pass two words"],
        None,
    ]
    if saslContinue:
        preambles.append([b"AUTH PLAIN " + base64.b64encode(b"\0alice\0secret")])
    preamble = draw(st.sampled_from(preambles))
    endings = draw(st.lists(st.sampled_from([b"\r\n", b"\n"]), min_size=60, max_size=60))
    longAt = draw(st.integers(0, len(items)))
    tail = draw(st.sampled_from([b"", b"NOO", b"QU", b"x" * 10]))

    def render(challenge: bytes) -> bytes:
        out = []
        if preamble is None:
            digest = hashlib.md5(challenge + b"secret").hexdigest().encode()
            out.append(b"APOP alice " + digest + b"\r\n")
        else:
            out += [line + b"\r\n" for line in preamble]
        for position, item in enumerate(items):
            if position == longAt and long is not None:
                out.append(b"USER " + b"a" * (long - 5) + draw_ending(position))
            for line in item(challenge):  # type: ignore[operator]
                out.append(line + draw_ending(len(out)))
        if longAt == len(items) and long is not None:
            out.append(b"NOOP " + b"z" * (long - 5))
        return b"".join(out) + tail

    def draw_ending(position: int) -> bytes:
        return endings[position % len(endings)]

    return render
