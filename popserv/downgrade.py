"""
Presenting messages with UTF-8 header fields to clients that did not enable
UTF8 (RFC 6856 section 2): the simplified downgrading of RFC 6858, but
for address fields, which keep their ASCII addresses where they can.

Such a client must not receive raw UTF-8 in header fields, and hiding the
message would keep mail from it that it can never remove (RFC 6857 section
1).  So each header field whose body is non-ASCII UTF-8 is rewritten with
RFC 2047 encoded-words: an unstructured field (Subject, ...) keeps its text,
encoded.  In an address field (From, To, ...) each mailbox whose address is
ASCII keeps it, its display name encoded (RFC 2047 section 5 allows an
encoded-word as a phrase), so that a reply still reaches it: the common
case, a sender whose name is not ASCII.  A field with an address that is
not ASCII, or of a form this does not take apart (groups, comments,
routes), becomes an empty group whose display name is the encoded original
(RFC 6858): valid syntax that shows the addresses, though a reply cannot
reach them.  In a MIME field (Content-Type, Content-Disposition), where an
encoded-word may not stand (RFC 2047 section 5), each UTF-8 parameter is
written as RFC 2231 says, so that a mail reader still finds the part's
type and its file name.  Fields that are ASCII, or 8-bit but not UTF-8,
are left alone; the body is never touched.

Everything here works on the header section with CRLF line endings, as the
encoder has it after converting line endings.
"""

from __future__ import annotations

import base64
import re
from collections import Counter

#: RFC 5322 section 3.6 address fields, and their Resent- forms.
ADDRESS_FIELDS = frozenset(
    name
    for base in (b"from", b"sender", b"reply-to", b"to", b"cc", b"bcc")
    for name in (base, b"resent-" + base)
)

#: RFC 2047 section 2: a line holding encoded-words is at most 76
#: characters, a word at most 75; "=?UTF-8?B?" and "?=" take 12.
_LINE = 76
_WORD_OVERHEAD = 12


def _capacity(used: int) -> int:
    """
    The UTF-8 octets one encoded-word can carry on a line that already has
    C{used} characters.
    """
    # A word is at most 75 characters even on an empty line.  (Tests
    # rather than min() and max(), which cost more than the arithmetic: a
    # login asks this of each UTF-8 field of every message it sizes.)
    base64Characters = (_LINE - used if used > 0 else 75) - _WORD_OVERHEAD
    return base64Characters // 4 * 3 if base64Characters > 0 else 0


#: A CR as an int: C{CR_OCTET in data} is one memchr, where C{b"\\r" in
#: data} first tries C{b"\\r"} as an integer, and makes and discards a
#: TypeError (CPython 3.11): 30 rather than 220 ns, for each of the
#: several such tests a login makes of every message it sizes.
CR_OCTET = ord("\r")


#: The most header octets the downgrade looks at; a header section that
#: ends later is sent as it is (no real message has one, and the bound keeps
#: memory flat for a hostile one).  The decision depends only on where the
#: header ends, never on how the message was cut into chunks, so sizes
#: counted from a prefix agree with what is sent.
MAX_HEADER = 256 * 1024


def _words(data: bytes, used: int) -> list[bytes]:
    """
    The UTF-8 octets C{data}, cut into what each RFC 2047 encoded-word of
    L{_encodedWords} carries; the first line already has C{used}
    characters.  An empty first word means the text starts on the next
    line.  Words end only between whole characters.
    """
    words: list[bytes] = []
    capacity = _capacity(used)
    if capacity < 4:  # no room for a character after a long field name
        words.append(b"")
        capacity = _capacity(1)
    start = 0
    while start < len(data):
        end = min(start + capacity, len(data))
        # Back off to a character boundary: never cut before a UTF-8
        # continuation octet (0b10xxxxxx).
        while end < len(data) and end > start and 0x80 <= data[end] < 0xC0:
            end -= 1
        words.append(data[start:end])
        start = end
        capacity = _capacity(1)  # continuation lines start with a space
    return words


def _encodedWords(data: bytes, used: int) -> bytes:
    """
    The UTF-8 octets C{data} as RFC 2047 "B" encoded-words, folded so that
    every line stays within 76 characters; the first line already has
    C{used} characters.
    """
    encoded = [
        b"=?UTF-8?B?" + base64.b64encode(w) + b"?=" if w else b"" for w in _words(data, used)
    ]
    return b"\r\n ".join(encoded)


def _encodedLength(data: bytes, used: int) -> int:
    """
    C{len(_encodedWords(data, used))}, without encoding.
    """
    # Base64 makes four characters of every three octets or fewer.
    if 4 <= len(data) <= _capacity(used):
        return (len(data) + 2) // 3 * 4 + _WORD_OVERHEAD  # most fields: one word
    words = _words(data, used)
    # Lines are joined by CRLF and a space.
    return sum([(len(w) + 2) // 3 * 4 + _WORD_OVERHEAD for w in words if w]) + 3 * max(
        len(words) - 1, 0
    )


def _endColumn(words: bytes, column: int) -> int:
    """
    The column where encoded-words made by L{_encodedWords} end, their
    first line starting at C{column}.
    """
    last = words.rsplit(b"\r\n ", 1)
    return (column if len(last) == 1 else 1) + len(last[-1])


def _separator(end: int, following: int) -> bytes:
    """
    What separates encoded-words that end at column C{end} from the
    C{following} characters: a space, or a fold if they would take the line
    past 76 characters (RFC 2047 section 2: a line with encoded-words is at
    most that).
    """
    return b" " if end + 1 + following <= _LINE else b"\r\n "


def _fieldText(field: bytes) -> tuple[bytes, bytes, bytes] | None:
    """
    What goes before the downgraded text (the name, a colon and a space),
    the unfolded UTF-8 text, and the lower-case name, of one header field
    that is to be downgraded; L{None} if it is sent as it is (ASCII, or
    8-bit but not UTF-8).

    A line that is not a field, having no colon or a name that is not
    ASCII (RFC 5322 section 2.2), is encoded whole, with nothing before
    it: it stays a line that is not a field, as a mail reader saw it, and
    no raw UTF-8 reaches the client (RFC 6856 section 2).
    """
    if field.isascii():
        return None
    name, colon, body = field.partition(b":")
    if colon and name.isascii():
        before, text, kind = name + b": ", body, name.strip().lower()
    else:
        before, text, kind = b"", field, b""
    unfolded = text.replace(b"\r\n", b"").strip(b" \t\r\n")
    try:
        unfolded.decode()  # UTF-8
    except UnicodeDecodeError:
        return None  # legacy 8-bit, not UTF-8: RFC 6856 is not about it
    return before, unfolded, kind


#: A quoted string (RFC 5322 section 3.2.4): a double quote, then octets
#: other than a quote or a backslash, or a backslash and any octet (a
#: quoted-pair), up to the closing quote.
_QUOTED_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
#: An address in angle brackets, once the quoted strings are masked.
_ANGLE_ADDRESS = re.compile(rb"<[^<>]*>")
#: What makes an address list a group (":" and ";") or gives it a comment.
_GROUP_OR_COMMENT = re.compile(rb"[():;]")
#: Every octet but the angle brackets, to delete from a masked list.
_NOT_ANGLES = bytes(octet for octet in range(256) if octet not in b"<>")


def _masked(match: re.Match[bytes]) -> bytes:
    """
    As many "q" as the match has octets.
    """
    return b"q" * len(match.group())


def _maskQuoted(text: bytes) -> bytes | None:
    """
    C{text} with every octet of its quoted strings (quotes and
    quoted-pairs included) made "q", so that the specials outside them can
    be found by position; L{None} if a quoted string is not closed.
    """
    if b'"' not in text:
        return text  # most fields
    # One quoted string at a time, from left to right, and stop at the
    # first that is not closed.  (C{_QUOTED_STRING.sub} would try again at
    # every quote after an unclosed one, each try scanning to the end: a
    # field of escaped quotes, which anyone can mail, took minutes.)
    pieces = []
    start = 0
    quote = text.find(b'"')
    while quote >= 0:
        closed = _QUOTED_STRING.match(text, quote)
        if closed is None:
            return None  # a quote that nothing closes
        pieces += [text[start:quote], _masked(closed)]
        start = closed.end()
        quote = text.find(b'"', start)
    pieces.append(text[start:])
    return b"".join(pieces)


def _cut(text: bytes, masked: bytes, separator: bytes) -> list[bytes]:
    """
    C{text} cut where C{masked}, the same text with some parts masked, has
    C{separator}.
    """
    pieces = []
    start = 0
    for part in masked.split(separator):
        pieces.append(text[start : start + len(part)])
        start += len(part) + len(separator)
    return pieces


def _mailboxes(text: bytes) -> list[bytes] | None:
    """
    The mailboxes of an address list, split at the commas that separate
    them (not those in a quoted name or an address); L{None} if it holds a
    group, a comment, or an unbalanced quote or angle bracket, which
    L{_addressBody} does not take apart, or an empty element.
    """
    masked = _maskQuoted(text)
    if masked is None or _GROUP_OR_COMMENT.search(masked):
        return None
    # Outside quoted strings the angle brackets must pair, one address at a
    # time: "<>" over and over.
    angles = masked.translate(None, _NOT_ANGLES)
    if angles != b"<>" * (len(angles) // 2):
        return None
    # A comma in an address does not separate mailboxes.
    masked = _ANGLE_ADDRESS.sub(_masked, masked)
    mailboxes = [mailbox.strip(b" \t") for mailbox in _cut(text, masked, b",")]
    return mailboxes if all(mailboxes) else None


#: A display name and an address in angle brackets; the name, outside
#: quotes, holds none of RFC 5322's specials but "." (common in names, and
#: allowed by its obsolete syntax).
_SPECIALS = frozenset(b'()<>[]:;@\\,"')


def _displayName(phrase: bytes) -> bytes | None:
    """
    The text of a display name: unquoted if it is one quoted string, as it
    is if it is atoms; L{None} for anything else.
    """
    if len(phrase) >= 2 and phrase[0] == phrase[-1] == 0x22:
        inner = phrase[1:-1]
        out = bytearray()
        escaped = False
        for octet in inner:
            if escaped:
                out.append(octet)
                escaped = False
            elif octet == 0x5C:
                escaped = True
            elif octet == 0x22:
                return None  # a second quoted string in the phrase
            else:
                out.append(octet)
        return bytes(out) if not escaped else None
    if any(octet in _SPECIALS for octet in phrase):
        return None
    return phrase


#: RFC 5322 section 2.1.1: a line SHOULD be at most 78 characters.
_ASCII_LINE = 78
#: Where an ASCII part may be folded: before white space that follows
#: something else, but not a backslash, whose quoted-pair it would split.
_FOLD_POINT = re.compile(rb"(?<![ \t\\])[ \t]")


def _folded(text: bytes, column: int, after: int = 0) -> bytes:
    """
    ASCII C{text}, which a downgraded field keeps as it is, folded before
    white space so that its lines stay within 78 characters where its
    white space allows (RFC 5322 section 2.1.1).  The downgrade unfolds a
    field to take it apart: without this, a part once folded over many
    lines came back as one line, past even the 998 characters the RFC
    allows.  It starts at C{column}; C{after} characters follow it.
    """
    if column + len(text) + after <= _ASCII_LINE:
        return text  # nearly always
    lines = []
    start = 0
    fits = -1  # the last fold point that keeps the line within bounds
    for point in _FOLD_POINT.finditer(text, 1):
        at = point.start()
        if column + at - start > _ASCII_LINE:
            if fits > start:  # fold at the last point that fits
                lines.append(text[start:fits])
                start, column = fits, 0
            if column + at - start > _ASCII_LINE:  # no point fits: fold here
                lines.append(text[start:at])
                start, column = at, 0
                continue
        fits = at
    if column + len(text) - start + after > _ASCII_LINE and fits > start:
        lines.append(text[start:fits])
        start = fits
    lines.append(text[start:])
    return b"\r\n".join(lines)


def _addressBody(text: bytes, used: int) -> bytes | None:
    """
    An address field's UTF-8 body, downgraded keeping every address: a
    mailbox that is ASCII as it is, one with a UTF-8 display name and an
    ASCII address as the encoded name and the address; mailboxes one to a
    line.  L{None} if some mailbox is neither: the field then becomes an
    empty group.  The first line already has C{used} characters.
    """
    mailboxes = _mailboxes(text)
    if mailboxes is None:
        return None
    pieces = []
    column = used
    for n, mailbox in enumerate(mailboxes, 1):
        comma = n < len(mailboxes)
        if mailbox.isascii():
            pieces.append(_folded(mailbox, column, comma))
        else:
            less = mailbox.rfind(b"<")
            if less < 0 or not mailbox.endswith(b">"):
                return None
            address = mailbox[less:]
            name = _displayName(mailbox[:less].strip(b" \t"))
            if not address.isascii() or not name:
                return None
            words = _encodedWords(name, column)
            end = _endColumn(words, column)
            # The address, and the comma after it if another mailbox follows.
            before = _separator(end, len(address) + comma)
            # An address may hold white space (RFC 5322's obsolete syntax),
            # and so have been folded in the stored header.
            at = end + 1 if before == b" " else 1
            pieces.append(words + before + _folded(address, at, comma))
        column = 1  # the next mailbox starts a line
    return b",\r\n ".join(pieces)


#: MIME header fields whose parameters (RFC 2045 section 5.1, RFC 2183)
#: carry a value that is not ASCII in RFC 2231's form, never as
#: encoded-words (RFC 2047 section 5: not in a parameter).
PARAMETER_FIELDS = frozenset({b"content-type", b"content-disposition"})

#: RFC 2045 section 5.1: a token is made of these.
_TOKEN = frozenset(range(0x21, 0x7F)) - frozenset(b'()<>@,;:\\"/[]?=')
#: RFC 2231 section 7: what an extended value holds as it is; every other
#: octet is written as "%" and two hexadecimal digits.
_ATTRIBUTE_CHAR = _TOKEN - frozenset(b"*'%")
#: Percent-encoded octets one continuation of a parameter carries: with
#: its name, "*N*=" and ";", a line stays well within 78 characters.
_SEGMENT = 48


#: The most parameters a MIME field is taken apart with: real ones have a
#: handful.  Taking apart the 26,000 that fit in L{MAX_HEADER} took 80 ms
#: on the reactor thread, at every RETR; encoding the field whole, 17.
MAX_PARAMETERS = 100


def _parameters(text: bytes) -> tuple[bytes, list[tuple[bytes, bytes, bytes]]] | None:
    """
    The value of a MIME field's body, and the parameters after it: each
    one's text as written, its name, and its value (a quoted string
    unquoted); L{None} if the body has a comment, an unbalanced quote, more
    than L{MAX_PARAMETERS} parameters, or a parameter that is not
    "name=value" with a token for a name.  The value ends at the first ";"
    outside a quoted string, as each parameter does.
    """
    if text.count(b";") > MAX_PARAMETERS:  # those in quoted values too: C-speed
        return None
    masked = _maskQuoted(text)
    if masked is None or b"(" in masked:  # a comment: not taken apart
        return None
    pieces = _cut(text, masked, b";")
    parameters = []
    for piece in pieces[1:]:
        piece = piece.strip(b" \t")
        if not piece:
            continue  # a trailing ";", as some mailers write
        name, equals, value = piece.partition(b"=")
        name, value = name.strip(b" \t"), value.strip(b" \t")
        if not equals or not name or not all(octet in _TOKEN for octet in name):
            return None
        if value[:1] == b'"':
            if len(value) < 2 or value[-1:] != b'"':
                return None
            value = re.sub(rb"\\(.)", rb"\1", value[1:-1], flags=re.DOTALL)
        parameters.append((piece, name, value))
    return pieces[0].strip(b" \t"), parameters


def _extended(name: bytes, value: bytes) -> list[bytes]:
    """
    A parameter whose value is UTF-8 in RFC 2231's form, in continuations
    (section 3) when long: C{name*=utf-8''%C3%A4...}.
    """
    encoded = [bytes([o]) if o in _ATTRIBUTE_CHAR else b"%%%02X" % o for o in value]
    segments = []
    segment: list[bytes] = []
    length = 0
    for i, piece in enumerate(encoded):
        # A segment ends only before the first octet of a character, so
        # that each holds whole characters (RFC 2231 does not ask it, but
        # some readers decode segment by segment).
        if length + len(piece) > _SEGMENT and not 0x80 <= value[i] < 0xC0:
            segments.append(b"".join(segment))
            segment, length = [], 0
        segment.append(piece)
        length += len(piece)
    segments.append(b"".join(segment))
    if len(segments) == 1:
        return [name + b"*=utf-8''" + segments[0]]
    return [
        name + b"*%d*=" % n + (b"utf-8''" if n == 0 else b"") + part
        for n, part in enumerate(segments)
    ]


def _parametersBody(text: bytes, used: int) -> bytes | None:
    """
    A MIME field's UTF-8 body downgraded: its value as it is, each ASCII
    parameter as it is, each UTF-8 one in RFC 2231's form; a parameter a
    line.  A UTF-8 parameter that the field also gives in RFC 2231's form
    (C{filename="..."; filename*=...}, as mailers write both for readers
    that do not know RFC 2231, which cannot read UTF-8 either) is left
    out: readers take the other, and some would take this one first.  The
    first line already has C{used} characters.  L{None} if the value is
    not ASCII, a UTF-8 parameter is named twice or is of RFC 2231's form
    already (its value should then be ASCII), or the body is
    not taken apart (L{_parameters}): the field is then encoded whole.
    """
    parsed = _parameters(text)
    if parsed is None:
        return None
    # The value ends where the parameters start, at a ";" outside quotes: a
    # quoted ";" (which a value should not hold) does not end it, so that
    # nothing up to the first parameter is lost.
    value, parameters = parsed
    if not value.isascii():
        return None
    # Counted once: a count per parameter made a field of many UTF-8
    # parameters, which anyone can mail, cost their number squared.
    named = Counter(name.lower() for _, name, _ in parameters)
    extended = {name.split(b"*", 1)[0] for name in named if b"*" in name}
    lines = [value]
    for piece, name, unquoted in parameters:
        if piece.isascii():
            lines.append(piece)
        elif b"*" in name or named[name.lower()] > 1:
            return None
        elif name.lower() in extended:
            continue
        else:
            lines += _extended(name, unquoted)
    last = len(lines) - 1
    return b";\r\n ".join(
        _folded(line, used if n == 0 else 1, n < last) for n, line in enumerate(lines)
    )


def _downgradeField(field: bytes) -> bytes:
    """
    One header field, folded lines included, with its final CRLF.
    """
    parts = _fieldText(field)
    if parts is None:
        return field
    before, text, kind = parts
    used = len(before)
    if kind in ADDRESS_FIELDS:
        body = _addressBody(text, used)
        if body is not None:
            return before + body + b"\r\n"
        words = _encodedWords(text, used)
        # The empty group's ":;" after the encoded original.
        return before + words + _separator(_endColumn(words, used), 2) + b":;\r\n"
    if kind in PARAMETER_FIELDS:
        body = _parametersBody(text, used)
        if body is not None:
            return before + body + b"\r\n"
    return before + _encodedWords(text, used) + b"\r\n"


def _fieldGrowth(field: bytes) -> int:
    """
    C{len(_downgradeField(field)) - len(field)}, without encoding (but for
    an address or MIME field, rare enough to be built).
    """
    parts = _fieldText(field)
    if parts is None:
        return 0
    before, text, kind = parts
    used = len(before)
    if kind in PARAMETER_FIELDS:
        return len(_downgradeField(field)) - len(field)
    if kind in ADDRESS_FIELDS:
        # The usual cases, counted rather than built, as a login counts
        # every message's growth: one mailbox, a name and an address.
        simple = (_QUOTED_MAILBOX if text[:1] == b'"' else _ATOMS_MAILBOX).fullmatch(text)
        if simple is not None:
            display, address = simple.groups()
            # A name of one encoded-word; an address that is not ASCII
            # makes the field an empty group, built below.
            if address.isascii() and 4 <= len(display) <= _capacity(used):
                end = used + (len(display) + 2) // 3 * 4 + _WORD_OVERHEAD
                space = len(_separator(end, len(address)))
                return end + space + len(address) + 2 - len(field)
        return len(_downgradeField(field)) - len(field)
    length = used + _encodedLength(text, used) + 2
    return length - len(field)


#: One mailbox as L{_addressBody} takes it apart, in its usual forms: a
#: display name, one quoted string without quoted-pairs or atoms without
#: specials, then an address in angle brackets holding none of the octets
#: that would make L{_mailboxes} refuse or split it.  (Two patterns, each
#: tried where it can match: one with both took twice as long, and a login
#: tries one for every UTF-8 address field of every message it sizes.)
_ADDRESS = rb'[ \t]*(<[^\x00-\x20\x7f<>(),:;"\\]*>)'
_QUOTED_MAILBOX = re.compile(rb'"([^"\\]*)"' + _ADDRESS)
_ATOMS_MAILBOX = re.compile(rb'([^"(),:;<>@\[\]\\]*[^"(),:;<>@\[\]\\ \t])' + _ADDRESS)


def downgradeHeader(header: bytes) -> bytes:
    """
    Downgrade a header section: CRLF-terminated fields, without the blank
    line that ends it.
    """
    if header.isascii():
        return header
    out = []
    # The lines of the field being gathered, joined when it is whole:
    # adding each folded line to the field's bytes would copy it once per
    # line, a cost that grows with the square of a hostile field's length.
    field: list[bytes] = []
    for line in header.split(b"\r\n")[:-1]:
        if line[:1] in (b" ", b"\t") and field:
            field.append(line)
            continue
        if field:
            out.append(_downgradeField(b"\r\n".join(field) + b"\r\n"))
        field = [line]
    if field:
        out.append(_downgradeField(b"\r\n".join(field) + b"\r\n"))
    tail = b"" if header.endswith(b"\r\n") else header.rsplit(b"\r\n", 1)[-1]
    return b"".join(out) + tail


#: Maps every octet that is not ASCII to 0x80, every ASCII one to itself:
#: then C{find} (a memchr) says where the next one is, several times faster
#: than a regular expression.
_MARK_8BIT = bytes(range(0x80)) + b"\x80" * 0x80


def _lineStart(header: bytes, at: int) -> int:
    """
    Where the line that holds C{header[at]} starts: after the CRLF before
    it, or at 0.
    """
    found = header.rfind(b"\r\n", 0, at)
    return 0 if found < 0 else found + 2


def downgradeGrowth(header: bytes) -> int:
    """
    C{len(downgradeHeader(header)) - len(header)}, without building the
    downgraded header: what a login adds up for every message it sizes.

    Only a field with a non-ASCII octet can change, and most fields are
    ASCII: each non-ASCII octet is found in C, and only the field around
    it is looked at.  The fields are those L{downgradeHeader} makes: a
    field starts at the first line and at every line that does not start
    with a space or a tab, and ends with the CRLF before the next one; an
    unterminated last line belongs to no field and is sent as it is.
    """
    growth = 0
    marked = header.translate(_MARK_8BIT)
    at = marked.find(b"\x80")
    while at >= 0:
        end = header.find(b"\r\n", at)
        if end < 0:
            break  # in the unterminated last line
        while header[end + 2 : end + 3] in (b" ", b"\t"):
            following = header.find(b"\r\n", end + 2)
            if following < 0:
                break
            end = following
        start = _lineStart(header, at)
        while start > 0 and header[start : start + 1] in (b" ", b"\t"):
            start = _lineStart(header, start - 2)  # a folded line: go back
        growth += _fieldGrowth(header[start : end + 2])
        at = marked.find(b"\x80", end + 2)
    return growth


class HeaderDowngrade:
    """
    A streaming filter over CRLF-normalised message data: holds back the
    header section until it is complete (or over L{MAX_HEADER}), passes it
    through L{downgradeHeader}, then lets the body through unchanged.
    """

    __slots__ = ("_buffer", "_done")

    def __init__(self) -> None:
        self._buffer = b""
        self._done = False

    def feed(self, data: bytes) -> bytes:
        if self._done:
            return data
        self._buffer += data
        buffer = self._buffer
        if buffer.startswith(b"\r\n"):
            end = 0
        else:
            end = buffer.find(b"\r\n\r\n")
            if end >= 0:
                end += 2
        if end < 0:
            # No end yet: wait, unless it can no longer come within the bound.
            if len(buffer) <= MAX_HEADER + 2:
                return b""
            self._done = True
            self._buffer = b""
            return buffer
        self._done = True
        self._buffer = b""
        if end > MAX_HEADER:
            return buffer
        return downgradeHeader(buffer[:end]) + buffer[end:]

    def finish(self) -> bytes:
        """
        The held-back data when the message ended inside its header.
        """
        if self._done:
            return b""
        self._done = True
        buffer, self._buffer = self._buffer, b""
        if len(buffer) > MAX_HEADER:
            return buffer
        if buffer.endswith(b"\r\n"):
            return downgradeHeader(buffer)
        head, _, last = buffer.rpartition(b"\r\n")
        # An unterminated last field: downgrade it as if terminated, and
        # leave its termination to the encoder.
        whole = downgradeHeader((head + b"\r\n" if head else b"") + last + b"\r\n")
        return whole[:-2]


def headerEnd(data: bytes | bytearray) -> int:
    """
    Where the blank line that ends the header section of stored data (CRLF
    or bare LF line endings) starts: the index of the first C{"\\n\\n"} or
    C{"\\n\\r\\n"}, whichever comes first; -1 if neither.
    """
    if CR_OCTET not in data:
        # Most stored mail (Maildir deliveries): bare LFs only.  One memchr
        # rules out CRLF, and one search finds the end; a login sizes every
        # message this way.
        return data.find(b"\n\n")
    # Search first for the ending the first line has, then for the other
    # only before it: searching the whole of a long message for the ending
    # it does not use cost more than everything else done to size it.
    first = data.find(b"\n")
    likely, other = (
        (b"\n\r\n", b"\n\n") if data[first - 1 : first] == b"\r" else (b"\n\n", b"\n\r\n")
    )
    end = data.find(likely)
    limit = len(data) if end < 0 else end + len(other)
    if other == b"\n\r\n" and data.find(b"\r", 0, limit) < 0:
        return end  # no CR at all before it: one memchr, not a search
    earlier = data.find(other, 0, limit)
    return end if earlier < 0 or 0 <= end < earlier else earlier


def prefixNeeded(prefix: bytes) -> bool:
    """
    Whether more of a stored message must be read before L{downgradeDelta}
    can judge it: the header's end is not in C{prefix} yet and could still
    come within L{MAX_HEADER}.
    """
    if prefix.startswith((b"\n", b"\r\n")):
        return False  # an empty header
    return headerEnd(prefix) < 0 and len(prefix) <= MAX_HEADER + 4
