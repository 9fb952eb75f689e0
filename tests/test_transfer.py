"""
Tests for popserv.transfer: a message held whole in memory goes out in one
write, and still waits for a client that does not read.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from popserv.encoder import MessageEncoder, encodeMessage, wireSize
from popserv.errors import MessageUnavailable
from popserv.memorystore import BytesReader
from popserv.transfer import CHUNK_SIZE, MessageTransfer, ShorterThanListed, TransferAborted

MESSAGE = b"Subject: x\n\n.dot\nbody\n"


class RecordingTransport(StringTransport):
    """
    Records each write as the sequence it was given (a single C{write} as
    a sequence of one), and pauses its producer on a write when told to
    (as a TCP transport does when its buffer is full).
    """

    def __init__(self, pauseOnWrite: bool = False) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "127.0.0.1", 5000))
        self.writes: list[tuple[bytes, ...]] = []
        self.pauseOnWrite = pauseOnWrite

    def write(self, data: bytes) -> None:
        self.writeSequence([data])

    def writeSequence(self, data: Sequence[bytes]) -> None:
        self.writes.append(tuple(data))
        super().write(b"".join(data))
        if self.pauseOnWrite and self.producer is not None:
            self.producer.pauseProducing()


class ChunkReader(BytesReader):
    """
    A reader that never offers the message whole: the transfer reads it.
    """

    def whole(self, size: int) -> bytes | None:
        return None


def failedTransfer(
    reader: object, **options: object
) -> tuple[RecordingTransport, MessageTransfer, Failure]:
    """
    Start a transfer of C{reader}'s message after C{b"+OK\\r\\n"}, which
    must fail: the transport, the transfer and its one failure.
    """
    transport = RecordingTransport()
    errors: list[Failure] = []
    transfer = MessageTransfer(
        transport,
        reader,  # type: ignore[arg-type]
        MessageEncoder(),
        b"+OK\r\n",
        **options,  # type: ignore[arg-type]
    )
    transfer.start().addErrback(errors.append)
    [failure] = errors
    assert transport.producer is None
    return transport, transfer, failure


def test_wholeMessageInOneWrite() -> None:
    """
    A message the reader holds whole is sent as one write: status line,
    encoded message and terminator; the transfer is then over.
    """
    transport = RecordingTransport()
    transfer = MessageTransfer(transport, BytesReader(MESSAGE), MessageEncoder(), b"+OK\r\n")
    done: list[object] = []
    transfer.start().addCallback(done.append)
    assert transport.writes == [(b"+OK\r\nSubject: x\r\n\r\n..dot\r\nbody\r\n.\r\n",)]
    assert done == [None]
    assert transfer.sent == len(b"+OK\r\n" + encodeMessage(MESSAGE))
    assert transport.producer is None


def test_sameBytesWhenRead() -> None:
    """
    Read in chunks instead, the message goes out as the same octets.
    """
    whole, chunks = RecordingTransport(), RecordingTransport()
    MessageTransfer(whole, BytesReader(MESSAGE), MessageEncoder(), b"+OK\r\n").start()
    MessageTransfer(chunks, ChunkReader(MESSAGE), MessageEncoder(), b"+OK\r\n", chunkSize=4).start()
    assert len(chunks.writes) > 2
    assert chunks.value() == whole.value() == b"+OK\r\n" + encodeMessage(MESSAGE)


def test_largerThanAChunkIsRead() -> None:
    """
    A message larger than a chunk is not taken whole, even from memory:
    it is read a chunk at a time, so flow control can hold it back.
    """
    transport = RecordingTransport()
    MessageTransfer(transport, BytesReader(MESSAGE), MessageEncoder(), chunkSize=8).start()
    assert len(transport.writes) > 2
    assert transport.value() == encodeMessage(MESSAGE)


def test_progressAfterEachChunk() -> None:
    """
    Each chunk written but the last is progress (the session resets its
    idle timer), so a large message that the client reads slowly is not
    taken for an idle session.
    """
    progress: list[None] = []
    transport = RecordingTransport()
    MessageTransfer(
        transport,
        ChunkReader(MESSAGE),
        MessageEncoder(),
        chunkSize=4,
        onProgress=lambda: progress.append(None),
    ).start()
    assert transport.value() == encodeMessage(MESSAGE)
    assert len(progress) == len(transport.writes) - 1 > 1


class CountingReader(ChunkReader):
    """
    Counts its reads.
    """

    reads = 0

    def read(self, size: int) -> Deferred[bytes]:
        self.reads += 1
        return super().read(size)


def test_topStopsReading() -> None:
    """
    TOP (an encoder with a line limit) ends the transfer once the limit is
    reached: the rest of the message is not read.
    """
    message = b"Subject: x\n\none\n" + b"more\n" * 100
    reader = CountingReader(message)
    transport = RecordingTransport()
    done: list[object] = []
    transfer = MessageTransfer(transport, reader, MessageEncoder(1), chunkSize=8)
    transfer.start().addCallback(done.append)
    assert transport.value() == encodeMessage(message, 1) == b"Subject: x\r\n\r\none\r\n.\r\n"
    assert done == [None]
    assert reader.reads <= 3


class PlainReader:
    """
    A store's reader that returns bytes rather than a Deferred, and raises
    rather than fails one.
    """

    def __init__(self, data: bytes, error: Exception | None = None) -> None:
        self._data = data
        self._error = error

    def read(self, size: int) -> bytes:
        if not self._data and self._error is not None:
            raise self._error
        chunk, self._data = self._data[:size], self._data[size:]
        return chunk

    def close(self) -> None:
        pass


def _depth() -> int:
    frame, depth = sys._getframe(1), 0
    while frame is not None and depth < 10_000:
        frame, depth = frame.f_back, depth + 1
    return depth


class DepthReader(PlainReader):
    """
    A reader whose reads return at once, noting how deep the stack is at
    each.
    """

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.depths: list[int] = []

    def read(self, size: int) -> bytes:
        self.depths.append(_depth())
        return super().read(size)


def test_readsThatFireAtOnceDoNotNest() -> None:
    """
    A reader whose reads fire at once is read in a loop, every read at the
    same depth of the stack: nested one call per chunk, a large message
    would exceed the recursion limit.
    """
    reader = DepthReader(MESSAGE)
    transport = RecordingTransport()
    done: list[object] = []
    MessageTransfer(transport, reader, MessageEncoder(), chunkSize=1).start().addCallback(
        done.append
    )
    assert transport.value() == encodeMessage(MESSAGE)
    assert done == [None]
    assert len(reader.depths) == len(MESSAGE) + 1
    assert set(reader.depths) == {reader.depths[0]}


def test_plainValuesFromTheReader() -> None:
    """
    A reader's plain bytes are taken as a fired Deferred, and an exception
    it raises as a failed one: the transfer fails with it.
    """
    transport = RecordingTransport()
    done = MessageTransfer(transport, PlainReader(MESSAGE), MessageEncoder(), chunkSize=8).start()
    assert transport.value() == encodeMessage(MESSAGE)
    assert done.called
    failing = PlainReader(b"partial", MessageUnavailable())
    failed = MessageTransfer(RecordingTransport(), failing, MessageEncoder(), chunkSize=4).start()
    errors: list[Failure] = []
    failed.addErrback(errors.append)
    assert len(errors) == 1 and errors[0].check(MessageUnavailable)


def test_wholeMessageWaitsForTheClient() -> None:
    """
    When the write fills the transport's buffer, the transfer (and so the
    session's next command) waits until the transport wants more.
    """
    transport = RecordingTransport(pauseOnWrite=True)
    transfer = MessageTransfer(transport, BytesReader(MESSAGE), MessageEncoder())
    done: list[object] = []
    transfer.start().addCallback(done.append)
    assert transport.value() == encodeMessage(MESSAGE)
    assert done == [] and transport.producer is transfer
    transfer.resumeProducing()
    assert done == [None] and transport.producer is None
    assert len(transport.writes) == 1


def test_wholeMessageAbortedWhileWaiting() -> None:
    """
    A connection lost while the transfer waits ends it with
    L{TransferAborted}.
    """
    transport = RecordingTransport(pauseOnWrite=True)
    transfer = MessageTransfer(transport, BytesReader(MESSAGE), MessageEncoder())
    failures: list[object] = []
    transfer.start().addErrback(failures.append)
    transfer.stopProducing()
    assert len(failures) == 1 and failures[0].check(TransferAborted)  # type: ignore[attr-defined]


class SlowReader(ChunkReader):
    """
    A reader whose reads fire only when the test says so.
    """

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads: list[Deferred[bytes]] = []

    def read(self, size: int) -> Deferred[bytes]:
        self.reads.append(Deferred())
        return self.reads[-1]


def test_chunkAfterAbortIsDropped() -> None:
    """
    A read that completes after the transport stopped the transfer (the
    connection went while the store was reading) writes nothing, does not
    count as progress, and reads no more.
    """
    reader = SlowReader(MESSAGE)
    transport = RecordingTransport()
    progress: list[None] = []
    transfer = MessageTransfer(
        transport, reader, MessageEncoder(), b"+OK\r\n", lambda: progress.append(None)
    )
    failures: list[Failure] = []
    transfer.start().addErrback(failures.append)
    transfer.stopProducing()
    assert len(failures) == 1 and failures[0].check(TransferAborted)
    [read] = reader.reads
    read.callback(b"Subject: x\n")
    assert transport.writes == []
    assert transfer.sent == 0
    assert progress == []
    assert len(reader.reads) == 1


def test_emptyMessage() -> None:
    """
    An empty message held whole is just the terminator.
    """
    transport = RecordingTransport()
    MessageTransfer(transport, BytesReader(b""), MessageEncoder(), b"+OK\r\n").start()
    assert transport.writes == [(b"+OK\r\n.\r\n",)]


def test_viewsHandedOnUnjoined(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    What the encoder gives as views of a chunk (a long chunk with a line
    that starts with ".") reaches C{sendNow} as it is, for one
    C{sendmsg()}: the transfer joins nothing.
    """
    sent: list[tuple[object, ...]] = []
    monkeypatch.setattr("popserv.transfer.sendNow", lambda transport, *parts: sent.append(parts))
    message = b"Subject: x\n\n" + b"Q" * 1000 + b"\n.dot\n" + b"Q" * 1000 + b"\n"
    transfer = MessageTransfer(
        RecordingTransport(), BytesReader(message), MessageEncoder(), b"+OK\r\n"
    )
    transfer.start()
    [parts] = sent
    assert [type(part) for part in parts] == [bytes, memoryview, bytes, memoryview, bytes]
    assert b"".join(parts) == b"+OK\r\n" + encodeMessage(message)  # type: ignore[arg-type]


class StrReader(ChunkReader):
    """
    A reader that breaks the contract: its read fires at once with L{str}.
    It counts its reads, and raises at the sixth so that a transfer that
    keeps reading ends.
    """

    reads = 0

    def read(self, size: int) -> Deferred[bytes]:
        self.reads += 1
        if self.reads > 5:
            raise RuntimeError("read again after a chunk that could not be sent")
        return succeed("not bytes")  # type: ignore[arg-type]


def test_chunkThatCannotBeSentEndsTheTransfer() -> None:
    """
    A chunk that cannot be encoded (a reader whose read fired at once with
    a L{str}) fails the transfer with that error, and nothing more is read:
    the read loop used to go on reading the same broken chunk forever,
    holding up the reactor and logging an unhandled error for each.
    """
    reader = StrReader(MESSAGE)
    transport = RecordingTransport()
    errors: list[Failure] = []
    MessageTransfer(transport, reader, MessageEncoder()).start().addErrback(errors.append)
    assert reader.reads == 1
    assert len(errors) == 1 and errors[0].check(TypeError)
    assert transport.producer is None


class RaisingCloseReader(BytesReader):
    """
    A reader whose close raises (a store's bug).
    """

    def close(self) -> None:
        raise RuntimeError("close failed")


def test_readerCloseRaising() -> None:
    """
    A reader whose close raises does not stop the transfer from ending: it
    still fires its Deferred and unregisters from the transport, and the
    error is logged.  (It used to escape from the end of the transfer: the
    session then waited forever, and from the transport's connectionLost
    it left the connection and the maildrop's lock held.)
    """
    transport = RecordingTransport()
    observed: list[dict[str, object]] = []
    globalLogPublisher.addObserver(observed.append)
    try:
        done: list[object] = []
        transfer = MessageTransfer(transport, RaisingCloseReader(MESSAGE), MessageEncoder())
        transfer.start().addCallback(done.append)
    finally:
        globalLogPublisher.removeObserver(observed.append)
    assert done == [None]
    assert transport.producer is None
    assert [e["log_failure"].check(RuntimeError) for e in observed if "log_failure" in e] == [
        RuntimeError
    ]


def test_notAReader() -> None:
    """
    What a store gave as a reader that is none (L{None}, from a broken
    C{openMessage}) fails the transfer, which unregisters from the
    transport: it used to raise out of C{start} and stay registered, and
    the transport, stopping it when the connection was lost, then raised
    in its turn and never closed the connection.
    """
    transport = RecordingTransport()
    errors: list[Failure] = []
    transfer = MessageTransfer(transport, None, MessageEncoder())  # type: ignore[arg-type]
    transfer.start().addErrback(errors.append)
    assert len(errors) == 1 and errors[0].check(AttributeError)
    assert transport.producer is None


class FallsOffItsEndReader(ChunkReader):
    """
    A reader that breaks the contract as a read that falls off its end
    does: after the message's octets, its read fires with L{None} rather
    than C{b""}.
    """

    def read(self, size: int) -> Deferred[bytes]:
        if self._offset < len(self._data):
            return super().read(size)
        return succeed(None)  # type: ignore[arg-type]


def test_readGivingNoneIsNoEnd() -> None:
    """
    A read that fires with L{None} fails the transfer with a L{TypeError}
    that says what the reader gave, and the response is not ended: what
    was read is sent without the terminator, so that the client, whose
    connection the session then drops, never takes what it got for the
    whole message (and deletes it).  L{None} used to end the message as
    C{b""} does: a RETR of a reader that gave it at once sent an empty
    message, complete.
    """
    transport, _, failure = failedTransfer(FallsOffItsEndReader(MESSAGE))
    assert failure.check(TypeError)
    assert str(failure.value) == (
        "IMessageReader.read gave None, not bytes; b'' is the end of the message"
    )
    assert transport.value() == b"+OK\r\nSubject: x\r\n\r\n..dot\r\nbody\r\n"


class EmptyTextWholeReader(BytesReader):
    """
    A reader whose C{whole} gives an empty L{str} rather than C{b""}.
    """

    def whole(self, size: int) -> bytes | None:
        return ""  # type: ignore[return-value]


def test_wholeGivingEmptyTextIsNoMessage() -> None:
    """
    A C{whole} that gives an empty value other than C{b""} fails the
    transfer with a L{TypeError}, and nothing of the response is sent: it
    used to send an empty message, complete.  C{b""} from C{whole} is the
    empty message (L{test_emptyMessage}).
    """
    transport, _, failure = failedTransfer(EmptyTextWholeReader(MESSAGE))
    assert failure.check(TypeError)
    assert "IMessageReader.whole gave ''" in str(failure.value)
    assert transport.value() == b""


@pytest.mark.parametrize("reader", [BytesReader, ChunkReader], ids=["whole", "read"])
def test_shorterThanListedIsNotEnded(reader: type[BytesReader]) -> None:
    """
    A message that ends before the size the listing gave it (a store's
    reader that stops early) fails the transfer with L{ShorterThanListed},
    which has both sizes, and is not ended with the terminator, so the
    client never takes it for the whole message.  Read in chunks, what
    came is sent; held whole, nothing is.
    """
    # The listing's size: the octets before byte-stuffing ("..dot").
    assert len(b"Subject: x\r\n\r\n.dot\r\nbody\r\n") == 26
    transport, transfer, failure = failedTransfer(
        reader(MESSAGE), chunkSize=8 if reader is ChunkReader else 1024, expected=27
    )
    assert failure.check(ShorterThanListed)
    assert str(failure.value) == "The store gave 26 octets of a message listed as 27"
    assert (failure.value.octets, failure.value.listed) == (26, 27)
    if reader is ChunkReader:
        assert transport.value() == b"+OK\r\nSubject: x\r\n\r\n..dot\r\nbody\r\n"
    else:
        assert transport.value() == b""
        assert transfer.sent == 0


LARGE = b"Subject: large\n\n" + b"y" * CHUNK_SIZE + b"\n.end"


@pytest.mark.parametrize(
    ("message", "wire"),
    [
        (MESSAGE, b"Subject: x\r\n\r\n..dot\r\nbody\r\n.\r\n"),
        (b"", b".\r\n"),
        (b".first\n", b"..first\r\n.\r\n"),
        (b"no end", b"no end\r\n.\r\n"),
        (b"bare CR\r", b"bare CR\r\r\n.\r\n"),
        (b"CR\r\nLF\n", b"CR\r\nLF\r\n.\r\n"),
        (
            LARGE,
            b"Subject: large\r\n\r\n" + b"y" * CHUNK_SIZE + b"\r\n..end\r\n.\r\n",
        ),
    ],
    ids=["stuffed", "empty", "first-dot", "unterminated", "bare-CR", "mixed", "large"],
)
@pytest.mark.parametrize("reader", [BytesReader, ChunkReader], ids=["whole", "read"])
def test_listedSizeMet(message: bytes, wire: bytes, reader: type[BytesReader]) -> None:
    """
    The listed size is the message's wire size (RFC 1939 section 11):
    after byte-stuffing is taken off (the first line's "." too) and with
    the CRLF an unterminated last line gets and the bare CR at its end.  A
    message of exactly that size is sent whole, with nothing logged: held
    whole or read in chunks, small, empty, or larger than a chunk.
    """
    expected = len(wire) - len(b".\r\n") - wire.count(b"\n..") - wire.startswith(b"..")
    assert expected == wireSize(message)
    transport = RecordingTransport()
    logged: list[dict[str, object]] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        transfer = MessageTransfer(
            transport,
            reader(message),
            MessageEncoder(),
            b"+OK\r\n",
            chunkSize=8 if reader is ChunkReader and message is not LARGE else CHUNK_SIZE,
            expected=expected,
        )
        done: list[object] = []
        transfer.start().addCallback(done.append)
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert done == [None]
    assert transport.value() == b"+OK\r\n" + wire
    assert [e for e in logged if "expected" in e] == []


@pytest.mark.parametrize("listed", [20, 0])
def test_longerThanListedIsSentAndLogged(listed: int) -> None:
    """
    A message longer than its listed size is sent whole, terminator and
    all (nothing of it is lost to the client), and the mismatch logged
    as the store's error it is: also one listed as empty.
    """
    transport = RecordingTransport()
    logged: list[dict[str, object]] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        transfer = MessageTransfer(
            transport, BytesReader(MESSAGE), MessageEncoder(), b"+OK\r\n", expected=listed
        )
        done: list[object] = []
        transfer.start().addCallback(done.append)
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert done == [None]
    assert transport.value() == b"+OK\r\n" + encodeMessage(MESSAGE)
    assert [(e["octets"], e["expected"]) for e in logged if "expected" in e] == [(26, listed)]
