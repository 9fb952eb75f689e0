"""
Tests for popserv.encoder: line endings, byte-stuffing, TOP and wire sizes,
over every way of cutting a message into chunks.
"""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from popserv.downgrade import prefixNeeded
from popserv.encoder import (
    MAX_STUFFED_VIEWS,
    MessageEncoder,
    WireSize,
    _stuffParts,
    downgradeDelta,
    encodeMessage,
    wireSize,
)


def reference(message: bytes, bodyLines: int | None = None) -> bytes:
    """
    An independent, line-by-line statement of RFC 1939's wire form, to
    check the chunked encoder against.
    """
    lines = re.split(rb"\r?\n", message)
    if lines[-1] == b"":
        lines.pop()  # the message ended with a line ending
    if bodyLines is not None:
        try:
            blank = lines.index(b"")
        except ValueError:
            blank = len(lines)
        lines = lines[: blank + 1 + bodyLines]
    out = b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)
    return out + b".\r\n"


def chunked(message: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(message) + 1) for c in cuts} | {0, len(message)})
    return [message[a:b] for a, b in itertools.pairwise(points)]


def encodeChunks(chunks: list[bytes], bodyLines: int | None = None) -> bytes:
    """
    The encoder's output for C{chunks}, fed as a transfer feeds them
    (L{MessageEncoder.feedParts}), joined.
    """
    encoder = MessageEncoder(bodyLines)
    out = [part for c in chunks for part in encoder.feedParts(c)]
    assert all(type(part) is bytes or type(part.obj) is bytes for part in out)
    return b"".join(out) + encoder.finish()


# Messages built from the octets that matter: CR, LF, "." and a letter.
messages = st.lists(
    st.sampled_from([b"\r", b"\n", b"\r\n", b".", b"a", b"..", b"\n."]), max_size=60
).map(b"".join)


@pytest.mark.parametrize(
    ("message", "wire"),
    [
        (b"", b".\r\n"),
        (b"a", b"a\r\n.\r\n"),
        (b"a\n", b"a\r\n.\r\n"),
        (b"a\r\n", b"a\r\n.\r\n"),
        (b".", b"..\r\n.\r\n"),
        (b".\r\n", b"..\r\n.\r\n"),
        (b"\n.\n", b"\r\n..\r\n.\r\n"),
        (b"a\nb\r\nc", b"a\r\nb\r\nc\r\n.\r\n"),
        (b"a\r\rb\n", b"a\r\rb\r\n.\r\n"),
        (b"a\r", b"a\r\r\n.\r\n"),
        (b"..x\n", b"...x\r\n.\r\n"),
    ],
)
def test_examples(message: bytes, wire: bytes) -> None:
    """
    LF and CRLF become CRLF, a bare CR is data, an unterminated line is
    terminated, and every line starting with "." is stuffed, the first line
    included.
    """
    assert encodeMessage(message) == wire
    assert reference(message) == wire


@settings(max_examples=400, deadline=None)
@given(messages, st.lists(st.integers(min_value=0, max_value=200), max_size=10))
def test_chunkingNeverMatters(message: bytes, cuts: list[int]) -> None:
    """
    However the stored message is cut into chunks (a CR at the end of one
    and LF at the start of the next, a "." right after a boundary), the
    output is the same as the reference wire form.
    """
    assert encodeChunks(chunked(message, cuts)) == reference(message)


# Longer messages: runs with no "." (as base64 is) between the octets that
# matter, so that where byte-stuffing searches (L{popserv.encoder}'s
# stretch between a chunk's first and last ".") meets chunk edges.
longMessages = st.lists(
    st.sampled_from([b"\r", b"\n", b"\r\n", b".", b"a", b"\n.", b"y" * 300]), max_size=40
).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(longMessages, st.lists(st.integers(min_value=0, max_value=12000), max_size=10))
def test_longMessagesOverChunks(message: bytes, cuts: list[int]) -> None:
    """
    Long runs without a "." before, between and after the lines that start
    with one, cut anywhere: the output is the reference wire form.
    """
    assert encodeChunks(chunked(message, cuts)) == reference(message)


@settings(max_examples=400, deadline=None)
@given(messages, st.lists(st.integers(min_value=0, max_value=200), max_size=10), st.integers(0, 5))
def test_topOverChunks(message: bytes, cuts: list[int], lines: int) -> None:
    """
    TOP sends the header, the blank line and the first n body lines,
    however the message is chunked.
    """
    assert encodeChunks(chunked(message, cuts), lines) == reference(message, lines)


@settings(max_examples=400, deadline=None)
@given(messages, st.lists(st.integers(min_value=0, max_value=200), max_size=10))
def test_wireSizeIsOctetsBeforeStuffing(message: bytes, cuts: list[int]) -> None:
    """
    The wire size is exactly the octets sent before stuffing and the
    terminator, whatever the chunking.
    """
    unstuffed = reference(message)[:-3].replace(b"\r\n..", b"\r\n.")
    if unstuffed.startswith(b".."):
        unstuffed = unstuffed[1:]
    counter = WireSize()
    for chunk in chunked(message, cuts):
        counter.feed(chunk)
    assert counter.finish() == len(unstuffed) == wireSize(message)


# Messages as a store holds them, with what changes their size on the wire:
# header fields with UTF-8 (downgraded for a client without UTF8), folds,
# both line endings, bare CRs (one at the end too), "." at line starts (the
# first line too), blank lines that end the header or do not.
storedMessages = st.lists(
    st.sampled_from(
        [
            b"Subject: \xc3\xa4\xc3\xb6",
            b"From: \xe2\x82\xac <x@y>",
            b'Content-Type: text/plain; name="\xc3\xa4"',
            b" folded \xc3\xbc",
            b"To: a@b",
            b"X: \xff",
            b".",
            b"a",
            b"\r",
            b"\n",
            b"\r\n",
            b"\n.",
            b"=" * 90,
        ]
    ),
    max_size=40,
).map(b"".join)


def readPrefix(message: bytes, size: int) -> bytes:
    """
    The start of C{message} that the protocol reads, C{size} octets a read,
    to size its header for a store that did not (L{prefixNeeded}).
    """
    prefix = b""
    while True:
        data = message[len(prefix) : len(prefix) + size]
        prefix += data
        if not (data and prefixNeeded(prefix)):
            return prefix


@settings(max_examples=500, deadline=None)
@given(storedMessages, st.lists(st.integers(1, 40), min_size=1, max_size=4), st.booleans())
def test_octetsAreTheListedSize(message: bytes, sizes: list[int], downgrade: bool) -> None:
    """
    What RETR holds a store's message to (L{MessageEncoder.octets} once
    finished, fed in chunks of any size) is the size every listing gives
    it: L{wireSize}, which the memory store lists and which the Maildir
    store's counting must equal, and for a client without UTF8 also the
    wire size plus the header's growth from the start of the message the
    protocol reads when a store gives no downgraded size.  Any difference
    drops the connection at every RETR of that message.
    """
    encoder = MessageEncoder(downgrade=downgrade)
    chunks = itertools.cycle(sizes)
    offset = 0
    while offset < len(message):
        end = offset + next(chunks)
        encoder.feedParts(message[offset:end])
        offset = end
    encoder.finish()
    assert encoder.octets == wireSize(message, downgrade)
    if downgrade:
        delta = downgradeDelta(readPrefix(message, sizes[0]))
        assert encoder.octets == wireSize(message) + delta


def test_topStopsEarly() -> None:
    """
    Once TOP has its lines, the encoder is done and ignores the rest.
    """
    encoder = MessageEncoder(1)
    out = encoder.feed(b"H: v\n\nline 1\nline 2\n")
    assert out == b"H: v\r\n\r\nline 1\r\n"
    assert encoder.done
    assert encoder.feed(b"more\n") == b""
    assert encoder.finish() == b".\r\n"


def test_topNoBodyLinesStopsAtTheBlankLine() -> None:
    """
    TOP msg 0: the encoder is done as soon as it has seen the blank line
    after the header, so the rest of the message need not be read.
    """
    encoder = MessageEncoder(0)
    assert encoder.feed(b"H: v\n\nline 1\n") == b"H: v\r\n\r\n"
    assert encoder.done
    assert encoder.feed(b"more\n") == b""
    assert encoder.finish() == b".\r\n"


def test_topWithoutBody() -> None:
    """
    A message with no blank line is all header: TOP n 0 sends all of it.
    """
    assert encodeMessage(b"H: 1\nH: 2", 0) == b"H: 1\r\nH: 2\r\n.\r\n"


def test_wireSizeChunks() -> None:
    """
    wireSize takes a message as bytes or as an iterable of chunks.
    """
    assert wireSize([b"a\r", b"\nb"]) == wireSize(b"a\r\nb") == 6


def stuffedAfterFirst(out: bytes) -> bytes:
    """
    The plain statement of what L{_stuffParts} does: a "." more after
    every LF that a "." follows.
    """
    return out.replace(b"\n.", b"\n..")


# Chunks in the CRLF form, with long runs of octets that are not "." (as
# base64 is), so that the "." octets cluster at the start, the end or the
# middle, and the search's stretch is now short and now most of the chunk.
crlfChunks = st.lists(
    st.sampled_from([b"\r\n", b".", b"a", b"\r\n.", b"x" * 40, b"=" * 300]), max_size=40
).map(b"".join)


@settings(max_examples=500, deadline=None)
@given(crlfChunks)
def test_stuffStretch(out: bytes) -> None:
    """
    Whether the chunk has no ".", "." only in a short stretch, or "."
    octets spread over it, every line after the first that starts with "."
    gets one more, and nothing else changes.  As parts, the views are of
    the chunk itself, and there are never more than two a stuffed line
    and one.
    """
    parts = _stuffParts(out)
    assert b"".join(parts) == stuffedAfterFirst(out)
    assert len(parts) <= 2 * MAX_STUFFED_VIEWS + 1
    assert all(part.obj is out for part in parts if isinstance(part, memoryview))


def test_fewStuffedLinesAreViews() -> None:
    """
    A long chunk with a few lines that start with "." is not copied to be
    stuffed: it goes out as views of itself, cut after each LF that a "."
    follows, with the extra "." between them.
    """
    out = b"Q" * 5000 + b"\r\n.a\r\n" + b"Q" * 100 + b"\r\n..b\r\n" + b"Q" * 5000
    parts = _stuffParts(out)
    assert [bytes(part) for part in parts] == [
        b"Q" * 5000 + b"\r\n",
        b".",
        b".a\r\n" + b"Q" * 100 + b"\r\n",
        b".",
        b"..b\r\n" + b"Q" * 5000,
    ]
    views = parts[::2]
    assert all(isinstance(view, memoryview) and view.obj is out for view in views)


@pytest.mark.parametrize("lines", [MAX_STUFFED_VIEWS, MAX_STUFFED_VIEWS + 1])
def test_manyStuffedLinesJoined(lines: int) -> None:
    """
    Up to L{MAX_STUFFED_VIEWS} such lines a chunk go out as views; a chunk
    with more is stuffed into one copy, so a C{sendmsg()} of a message's
    parts stays far below the system's limit on them.
    """
    out = b"\r\n.x" * lines + b"Q" * 10000
    parts = _stuffParts(out)
    assert b"".join(parts) == stuffedAfterFirst(out)
    if lines > MAX_STUFFED_VIEWS:
        assert parts == [stuffedAfterFirst(out)]
    else:
        assert len(parts) == 2 * lines + 1


@pytest.mark.parametrize(
    "out",
    [
        b"",
        b".",
        b".\r\n",
        b"a.b\r\n",
        b"\r\n.",
        b"\r\n.a\r\n" + b"Q" * 5000,
        b"Q" * 5000 + b"\r\n.a\r\n",
        b"Q" * 5000 + b"\r\n.a\r\n" + b"Q" * 5000,
        b"a.\r\n.\r\nb." + b"Q" * 5000 + b"c.",
        b"\r\n." * 1000,
    ],
)
def test_stuffExamples(out: bytes) -> None:
    """
    The edges of the stretch searched: a "." line at the start, the end or
    the middle of a long chunk with no other "."; "." octets at both ends
    far apart; and the first octet, which the encoder handles itself.
    """
    assert b"".join(_stuffParts(out)) == stuffedAfterFirst(out)
