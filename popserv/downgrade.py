"""
Presenting messages with UTF-8 header fields to clients that did not enable
UTF8 (RFC 6856 section 2), by the simplified downgrading of RFC 6858.

Such a client must not receive raw UTF-8 in header fields, and hiding the
message would keep mail from it that it can never remove (RFC 6857 section
1).  So each header field whose body is non-ASCII UTF-8 is rewritten with
RFC 2047 encoded-words: an unstructured field (Subject, ...) keeps its text,
encoded; an address field (From, To, ...) becomes an empty group whose
display name is the encoded original, which is valid syntax and shows the
addresses, though a reply cannot reach them.  Fields that are ASCII, or
8-bit but not UTF-8, are left alone; the body is never touched.

Everything here works on the header section with CRLF line endings, as the
encoder has it after converting line endings.
"""

from __future__ import annotations

import base64

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


#: What an address field's encoded display name is followed by: it becomes
#: an empty group.
_GROUP_END = b" :;"


def _fieldText(field: bytes) -> tuple[bytes, bytes, bytes] | None:
    """
    The name, the unfolded UTF-8 body and what follows the encoded body
    (L{_GROUP_END} for an address field) of one header field that is to be
    downgraded; L{None} if it is sent as it is (ASCII, no colon, or 8-bit
    but not UTF-8).
    """
    if field.isascii():
        return None
    name, colon, body = field.partition(b":")
    if not colon:
        return None
    unfolded = body.replace(b"\r\n", b"").strip(b" \t\r\n")
    try:
        unfolded.decode()  # UTF-8
    except UnicodeDecodeError:
        return None  # legacy 8-bit, not UTF-8: RFC 6856 is not about it
    return name, unfolded, _GROUP_END if name.strip().lower() in ADDRESS_FIELDS else b""


def _downgradeField(field: bytes) -> bytes:
    """
    One header field, folded lines included, with its final CRLF.
    """
    parts = _fieldText(field)
    if parts is None:
        return field
    name, text, end = parts
    return name + b": " + _encodedWords(text, len(name) + 2) + end + b"\r\n"


def _fieldGrowth(field: bytes) -> int:
    """
    C{len(_downgradeField(field)) - len(field)}, without encoding.
    """
    parts = _fieldText(field)
    if parts is None:
        return 0
    name, text, end = parts
    length = len(name) + 2 + _encodedLength(text, len(name) + 2) + len(end) + 2
    return length - len(field)


def downgradeHeader(header: bytes) -> bytes:
    """
    Downgrade a header section: CRLF-terminated fields, without the blank
    line that ends it.
    """
    if header.isascii():
        return header
    out = []
    field = b""
    for line in header.split(b"\r\n")[:-1]:
        if line[:1] in (b" ", b"\t") and field:
            field += line + b"\r\n"
            continue
        if field:
            out.append(_downgradeField(field))
        field = line + b"\r\n"
    if field:
        out.append(_downgradeField(field))
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
