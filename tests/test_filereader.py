"""
Tests for popserv.filereader.
"""

from __future__ import annotations

import io
from typing import Any

from synchronous import ManualRunner
from twisted.python.failure import Failure

from popserv.errors import MessageUnavailable
from popserv.filereader import FileReader


def test_readsInOrder() -> None:
    """
    Reads return the file's bytes in order, then b"" at the end.
    """
    runner = ManualRunner()
    reader = FileReader(io.BytesIO(b"abcdef"), runner)
    got: list[bytes] = []
    for _ in range(3):
        reader.read(4).addCallback(got.append)
        runner.runOne()
    assert got == [b"abcd", b"ef", b""]
    reader.close()


def test_closeDuringReadWaitsForIt() -> None:
    """
    close() while a read runs in a thread leaves the file open until that
    read returns, then closes it.
    """
    runner = ManualRunner()
    f = io.BytesIO(b"abcdef")
    reader = FileReader(f, runner)
    got: list[bytes] = []
    reader.read(3).addCallback(got.append)
    reader.close()
    assert not f.closed
    runner.runOne()
    assert got == [b"abc"]
    assert f.closed


def test_closeWhenIdle() -> None:
    """
    close() with no read running closes the file at once.
    """
    f = io.BytesIO(b"x")
    FileReader(f, ManualRunner()).close()
    assert f.closed


def test_headIsReadFirstWithoutThreads() -> None:
    """
    A head already read is returned first, in pieces no larger than asked
    for, without a thread; the file follows it.  With no file the head is
    the whole message and then comes b"".
    """
    runner = ManualRunner()
    reader = FileReader(io.BytesIO(b"def"), runner, head=b"abc")
    got: list[bytes] = []
    reader.read(2).addCallback(got.append)
    reader.read(10).addCallback(got.append)
    assert got == [b"ab", b"c"] and runner.calls == []
    reader.read(10).addCallback(got.append)
    runner.runOne()
    assert got == [b"ab", b"c", b"def"]

    whole = FileReader(None, runner, head=b"xyz")
    whole.read(10).addCallback(got.append)
    whole.read(10).addCallback(got.append)
    whole.close()
    assert got[-2:] == [b"xyz", b""] and runner.calls == []


def test_wholeGivesASmallMessageOnce() -> None:
    """
    whole() hands over a message held entirely in memory, if it fits the
    size asked for and nothing was read yet; the reader is then at its end.
    """
    runner = ManualRunner()
    reader = FileReader(None, runner, head=b"xyz")
    assert reader.whole(3) == b"xyz"
    got: list[bytes] = []
    reader.read(10).addCallback(got.append)
    assert got == [b""] and runner.calls == []


def test_wholeDeclines() -> None:
    """
    whole() gives None, and leaves the reader as it was, for a message
    larger than the size asked for, for one whose file is still open, and
    once anything was read.
    """
    runner = ManualRunner()
    got: list[bytes] = []
    large = FileReader(None, runner, head=b"abcd")
    assert large.whole(3) is None
    large.read(10).addCallback(got.append)
    assert got == [b"abcd"]

    followed = FileReader(io.BytesIO(b"def"), runner, head=b"abc")
    assert followed.whole(100) is None
    followed.read(10).addCallback(got.append)
    assert got[-1] == b"abc"

    assert runner.calls == []

    # Nor after a read: what is left is not the message.
    started = FileReader(None, runner, head=b"abcdef")
    started.read(2).addCallback(got.append)
    assert started.whole(100) is None
    started.read(10).addCallback(got.append)
    assert got[-2:] == [b"ab", b"cdef"]


def _threeReads(reader: FileReader, runner: ManualRunner) -> list[Any]:
    """
    The outcomes of three reads of 4 octets, each run to its end: data or
    a Failure.
    """
    got: list[Any] = []
    for _ in range(3):
        reader.read(4).addBoth(got.append)
        if runner.calls:
            runner.runOne()
    return got


def test_fileShorterThanItsSize() -> None:
    """
    With the file's size when it was opened, a file that ends sooner (cut
    while it is sent) fails the read with MessageUnavailable, so that the
    reply is cut rather than ended as if whole, be it by a single octet;
    one that grew gives no more than that size.
    """
    runner = ManualRunner()
    got = _threeReads(FileReader(io.BytesIO(b"cdef"), runner, head=b"ab", size=10), runner)
    assert got[:2] == [b"ab", b"cdef"]
    assert isinstance(got[2], Failure) and got[2].check(MessageUnavailable)
    # What the operator's log says of the cut reply:
    assert got[2].getErrorMessage() == "Message changed while it was being sent"
    got = _threeReads(FileReader(io.BytesIO(b"cdef"), runner, head=b"ab", size=7), runner)
    assert got[:2] == [b"ab", b"cdef"]
    assert isinstance(got[2], Failure) and got[2].check(MessageUnavailable)
    grown = _threeReads(FileReader(io.BytesIO(b"cdefGROWN"), runner, head=b"ab", size=6), runner)
    assert grown == [b"ab", b"cdef", b""]


def test_grownFileNotReadPastItsSize() -> None:
    """
    Once the size given is read, a file that grew since is not read
    again, not even for nothing: the end comes without a trip to a thread.
    Up to that size, every octet is read, the last one too.  And should the
    head already hold more than that size (the file grew between the
    store's fstat and its read of the head), nothing of the file after the
    head is read.  Closed after its reads, the reader closes its file.
    """
    runner = ManualRunner()
    f = io.BytesIO(b"cdefgGROWN")
    grown = FileReader(f, runner, head=b"ab", size=7)
    got: list[bytes] = []
    grown.read(2).addCallback(got.append)
    grown.read(4).addCallback(got.append)
    runner.runOne()
    grown.read(8).addCallback(got.append)
    runner.runOne()
    grown.read(8).addCallback(got.append)
    assert (got, runner.calls) == ([b"ab", b"cdef", b"g", b""], [])
    grown.close()
    assert f.closed
    pastHead = FileReader(io.BytesIO(b"GROWN"), runner, head=b"abcdef", size=4)
    got = []
    pastHead.read(8).addCallback(got.append)
    pastHead.read(8).addCallback(got.append)
    assert (got, runner.calls) == ([b"abcdef", b""], [])
    pastHead.close()


def test_readErrorWithSizeKept() -> None:
    """
    A read that fails fails the reader's read with that error, size given
    or not.
    """
    runner = ManualRunner()

    class Failing(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            raise OSError(5, "Input/output error")

    reader = FileReader(Failing(), runner, head=b"ab", size=10)
    got: list[Any] = []
    reader.read(2).addBoth(got.append)
    reader.read(2).addBoth(got.append)
    d, f, args = runner.calls.pop(0)
    try:
        f(*args)
    except OSError:
        d.errback()
    assert got[0] == b"ab"
    assert isinstance(got[1], Failure) and got[1].check(OSError)
    assert got[1].value.errno == 5
    reader.close()
