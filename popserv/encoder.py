"""
The wire form of a message (RFC 1939 section 3): line endings, byte-stuffing
and the TOP line limit, as a streaming encoder over arbitrary chunks.

A stored message may use LF, CRLF or both.  On the wire every line ends in
CRLF, an unterminated last line gets a CRLF, every line that starts with "."
gets one more "." (including the first line and a line that starts right
after a chunk boundary), and the response ends with ".CRLF".

The I{wire size} of a message is the number of octets the server sends for it
before stuffing and the terminator: what STAT and LIST report
(RFC 1939 section 5: "the exact size of the message in octets").

Everything is done with C{bytes} operations on whole chunks; the only state
carried between chunks is a held-back CR, whether the output is at the start
of a line, and for TOP where the header/body boundary search stands.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TypeAlias

from popserv.downgrade import CR_OCTET, MAX_HEADER, HeaderDowngrade, downgradeGrowth, headerEnd

CR = b"\r"
LF = b"\n"
CRLF = b"\r\n"
#: Where a line starts with the termination octet, after the first line:
#: the regular expression engine's way, for chunks with many "." octets
#: (L{_stuffParts}).
_DOT_AFTER_LF = re.compile(rb"\n\.")


#: The most lines in a chunk that L{_stuffParts} stuffs by cutting the chunk
#: into views of itself, two parts a line; more are joined into one copy.
#: A message and its status line and terminator go out in one C{sendmsg()},
#: which takes at most IOV_MAX (1,024 on Linux) parts.
MAX_STUFFED_VIEWS = 32

#: What a chunk of the encoder's output is made of: C{bytes}, or views of
#: the C{bytes} it was stuffed from.
Part: TypeAlias = bytes | memoryview


def _stuffParts(out: bytes) -> list[Part]:
    """
    C{out} with one more "." at the start of every line that starts with
    one, the first line excepted (the octet after each LF), as parts that
    joined make it.
    """
    # Searching for LF "." looks at each octet in turn, whichever way it is
    # done: the regular expression engine's loop, the fastest, took 34 us of
    # the 43 us that encoding a 50 kB message of the benchmark's took
    # (CPython 3.11).  Finding one octet is a memchr(), which skips 32
    # octets a step, and "." octets are few in most of a message (none in
    # base64).  So a chunk with no "." is not searched at all, and one
    # whose "." octets lie in a stretch of it (a text part before base64)
    # only there.
    first = out.find(b".", 1)
    if first < 0:
        return [out]
    end = out.rfind(b".") + 1
    if len(out) - end < end - first:
        # Spread over the chunk: all of it, in one pass (split/join, where
        # replace() would search twice: it counts first).  Bounding the
        # engine's search short of the end makes its loop a fifth slower
        # (CPython 3.11): worth it only to skip more than it reads.
        pieces = _DOT_AFTER_LF.split(out)
        return [b"\n..".join(pieces)] if len(pieces) > 1 else [out]
    # A stretch of the chunk: from its first line that starts with "." to
    # its last ".", split through a memoryview so that it is not copied
    # first.  The stretch starts with LF ".", so the first piece is empty.
    match = _DOT_AFTER_LF.search(out, first - 1, end)
    if match is None:
        return [out]
    start = match.start()
    pieces = _DOT_AFTER_LF.split(memoryview(out)[start:end])
    # (The engine's split is its fastest search.  Of its pieces, copies of
    # the stretch's lines, the views below use only the lengths.)
    if len(pieces) > MAX_STUFFED_VIEWS + 1:
        pieces[0] = out[:start]
        pieces[-1] = out[end - len(pieces[-1]) :]
        return [b"\n..".join(pieces)]
    # A few such lines (as in most text that has any): the chunk itself,
    # cut after each LF that a "." follows, with the extra "." between the
    # cuts.  Joining would copy the whole chunk, and slicing off the octets
    # after the stretch most of it again; sendmsg() takes the parts as
    # they are (popserv.sendnow).
    view = memoryview(out)
    parts: list[Part] = []
    previous = 0
    cut = start
    for piece in pieces[:-1]:
        cut += len(piece)  # the LF of the next LF "."
        parts += (view[previous : cut + 1], b".")
        previous = cut + 1
        cut += 2
    parts.append(view[previous:])
    return parts


class _LineEndings:
    """
    Converts a stream of chunks to CRLF line endings.

    Only LF and CRLF end lines; a CR not followed by LF is data and passes
    through (RFC 5322 forbids it, but changing it would change the message).
    A CR at the end of a chunk is held back until the next chunk shows
    whether an LF follows it.
    """

    __slots__ = ("_heldCR",)

    def __init__(self) -> None:
        self._heldCR = False

    def feed(self, data: bytes) -> bytes:
        if self._heldCR:
            data = CR + data
            self._heldCR = False
        if data.endswith(CR):
            data = data[:-1]
            self._heldCR = True
        # Fast paths, fastest first.  No CR at all: the usual Maildir file,
        # written by an MDA with LF line endings (one memchr, one replace).
        if CR_OCTET not in data:
            return data.replace(LF, CRLF)
        # Already all CRLF (stored as received over SMTP): no copying.
        lfs = data.count(LF)
        if lfs == 0 or data.count(CRLF) == lfs:
            return data
        return data.replace(CRLF, LF).replace(LF, CRLF)

    def finish(self) -> bytes:
        """
        The held-back CR, if the message ended with a bare CR.
        """
        if self._heldCR:
            self._heldCR = False
            return CR
        return b""


class WireSize:
    """
    Counts the wire size of a message fed in chunks.

    >>> counter = WireSize()
    >>> counter.feed(b"Subject: x\\n\\nbody")
    >>> counter.finish()
    20
    """

    __slots__ = ("_downgrade", "_endings", "_endsWithLF", "_size")

    def __init__(self, downgrade: bool = False) -> None:
        """
        @param downgrade: count the size a client that did not enable UTF8
            sees (L{popserv.downgrade}).
        """
        self._endings = _LineEndings()
        self._downgrade = HeaderDowngrade() if downgrade else None
        self._size = 0
        self._endsWithLF = True

    def feed(self, data: bytes) -> None:
        out = self._endings.feed(data)
        if self._downgrade is not None:
            out = self._downgrade.feed(out)
        self._count(out)

    def _count(self, out: bytes) -> None:
        if out:
            self._size += len(out)
            self._endsWithLF = out.endswith(LF)

    def finish(self) -> int:
        """
        The wire size of everything fed so far, as a whole message.
        """
        tail = self._endings.finish()
        if self._downgrade is not None:
            tail = self._downgrade.feed(tail) + self._downgrade.finish()
        self._count(tail)
        if self._size and not self._endsWithLF:
            return self._size + len(CRLF)
        return self._size


def wireSize(message: bytes | Iterable[bytes], downgrade: bool = False) -> int:
    """
    The wire size of a whole message given as bytes or as chunks; with
    C{downgrade}, as a client that did not enable UTF8 gets it.
    """
    counter = WireSize(downgrade)
    if isinstance(message, bytes):
        counter.feed(message)
    else:
        for chunk in message:
            counter.feed(chunk)
    return counter.finish()


class MessageEncoder:
    """
    Turns a stored message, fed in chunks of any size, into the body of a
    RETR or TOP response, terminator included.

    Feed chunks with L{feed} and send what it returns; when the message ends
    (or L{done} becomes true) send what L{finish} returns.

    @ivar done: true once a TOP limit has been reached: the rest of the
        message is not needed.
    @ivar octets: the octets of the message encoded so far, before
        byte-stuffing and without the terminator: once L{finish} is called
        for a whole message (RETR), its wire size (L{WireSize}), which the
        listing gave.
    """

    __slots__ = (
        "_atLineStart",
        "_bodyLinesLeft",
        "_downgrade",
        "_endings",
        "_inHeaders",
        "_tail",
        "done",
        "octets",
    )

    def __init__(self, bodyLines: int | None = None, downgrade: bool = False) -> None:
        """
        @param bodyLines: for TOP (RFC 1939 section 7), how many lines of the
            body to send after the header and the blank line; L{None} sends
            the whole message (RETR).
        @param downgrade: downgrade UTF-8 header fields for a client that
            did not enable UTF8 (L{popserv.downgrade}).
        """
        self._endings = _LineEndings()
        self._downgrade = HeaderDowngrade() if downgrade else None
        self._atLineStart = True
        self._bodyLinesLeft = bodyLines
        self._inHeaders = bodyLines is not None
        # The last three octets seen while looking for the blank line that
        # ends the header; the message is treated as if preceded by CRLF so a
        # message that starts with a blank line has an empty header.
        self._tail = CRLF
        self.done = False
        self.octets = 0

    def feed(self, data: bytes) -> bytes:
        """
        Encode the next chunk of the stored message.
        """
        parts = self.feedParts(data)
        if len(parts) == 1:
            return bytes(parts[0])  # a chunk that was not stuffed: itself
        return b"".join(parts)

    def feedParts(self, data: bytes) -> list[Part]:
        """
        L{feed}, as parts that joined make what it returns: views of the
        chunk's own octets where only a few lines are byte-stuffed, so a
        transport that can send parts as they are (C{sendmsg()}) need not
        copy the chunk to stuff it.
        """
        if self.done:
            return []
        out = self._endings.feed(data)
        if self._downgrade is not None:
            out = self._downgrade.feed(out)
        if self._bodyLinesLeft is not None:
            out = self._limit(out)
        return self._stuff(out)

    def finish(self) -> bytes:
        """
        The end of the response: what was held back, a CRLF if the last line
        was unterminated, and the terminating ".CRLF".
        """
        out = b""
        if not self.done:
            out = self._endings.finish()
            if self._downgrade is not None:
                out = self._downgrade.feed(out) + self._downgrade.finish()
            if self._bodyLinesLeft is not None:
                out = self._limit(out)
            out = b"".join(self._stuff(out))
        if not self._atLineStart:
            out += CRLF
            self.octets += len(CRLF)
        self.done = True
        return out + b".\r\n"

    def _stuff(self, out: bytes) -> list[Part]:
        # RFC 1939 section 3: "If any line of the multi-line response begins
        # with the termination octet, the line is 'byte-stuffed'".  After
        # line-ending conversion every line ends in CRLF, so a line start is
        # the start of the stream or the octet after an LF.
        if not out:
            return []
        self.octets += len(out)
        parts = _stuffParts(out)
        if self._atLineStart and out[0] == 0x2E:  # "."
            parts.insert(0, b".")
        self._atLineStart = out.endswith(LF)
        return parts

    def _limit(self, out: bytes) -> bytes:
        """
        Cut the CRLF-normalised stream after the header, the blank line and
        C{_bodyLinesLeft} body lines.
        """
        start = 0
        if self._inHeaders:
            window = self._tail + out
            end = window.find(b"\r\n\r\n")
            if end < 0:
                self._tail = window[-3:]
                return out
            self._inHeaders = False
            start = end + 4 - len(self._tail)
        left = self._bodyLinesLeft
        assert left is not None
        if left == 0:
            self.done = True
            return out[:start]
        count = out.count(LF, start)
        if count < left:
            self._bodyLinesLeft = left - count
            return out
        position = start
        for _ in range(left):
            position = out.index(LF, position) + 1
        self._bodyLinesLeft = 0
        self.done = True
        return out[:position]


def encodeMessage(message: bytes, bodyLines: int | None = None, downgrade: bool = False) -> bytes:
    """
    The complete response body for a whole message in memory: what RETR (or
    TOP with C{bodyLines}) sends after its status line.
    """
    encoder = MessageEncoder(bodyLines, downgrade)
    return encoder.feed(message) + encoder.finish()


def downgradeDelta(prefix: bytes | bytearray) -> int:
    """
    How much longer a message gets when its header is downgraded for a
    client that did not enable UTF8, from a stored C{prefix} of it that
    holds the whole header section (or more than L{MAX_HEADER} octets of
    it): the downgraded wire size is the wire size plus this.
    """
    # Only the header section matters: cut the prefix after the blank line
    # that ends it (the downgrade filter finds the same end in the CRLF
    # form, so the difference is the same as over the whole message).
    if prefix.startswith((b"\n", b"\r\n")):
        return 0
    end = headerEnd(prefix)
    if end < 0:
        # All header, or more of it than the prefix holds: the encoder's way.
        if prefix.isascii():
            return 0
        whole = bytes(prefix)
        return wireSize(whole, downgrade=True) - wireSize(whole)
    # The usual case, computed directly (a login sizes every message): the
    # fields up to the LF that ends the last one, in the CRLF form the
    # downgrade filter sees, are all that change.
    header = prefix[: end + 1]
    if header.isascii():
        return 0
    if CR_OCTET in header:
        header = header.replace(CRLF, LF)
    header = bytes(header.replace(LF, CRLF))
    if len(header) > MAX_HEADER:
        return 0  # sent as it is
    return downgradeGrowth(header)
