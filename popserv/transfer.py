"""
Streaming one message to the client with flow control.

L{MessageTransfer} is a push producer: it reads the next chunk from the
store only while the transport wants more, so a client that stops reading
stops the reads and the server's buffer stays at one chunk or so, whatever
the message's size.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IConsumer, IPushProducer, ITransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from popserv.encoder import MessageEncoder, Part
from popserv.interfaces import IMessageReader, IWholeMessageReader
from popserv.sendnow import sendNow

_log = Logger()

#: Octets asked of the store per read.  Large enough that per-chunk costs
#: (a Deferred, a thread hop for files, a write) vanish next to copying.
CHUNK_SIZE = 256 * 1024


def _checkEnd(data: object, method: str) -> None:
    """
    Check that C{data}, an empty value a reader's C{method} gave, is the
    empty message C{b""}.

    @raise TypeError: it is anything else (L{None}, C{""}, ...).
    """
    if data != b"":
        raise TypeError(
            f"IMessageReader.{method} gave {data!r}, not bytes; b'' is the end of the message"
        )


class Consumer(IConsumer, ITransport):
    """
    What a transfer writes to: a transport (C{write}, C{writeSequence})
    that takes a producer.  Every TCP and TLS transport is one; on plain
    TCP the transfer sends at once where it can (L{popserv.sendnow}).
    """


class TransferAborted(Exception):
    """
    The transport stopped the transfer (the connection went away).
    """


class ShorterThanListed(Exception):
    """
    A store's reader ended a message before the size the listing gave it:
    the store's bug, or its storage cut the message short.  Not a refusal
    the client can be told of: with a DELE pipelined behind the RETR, an
    -ERR would let the client delete a message it never got whole, so the
    session is dropped as for any fault in the middle of a message.
    """

    def __init__(self, octets: int, listed: int) -> None:
        super().__init__(f"The store gave {octets} octets of a message listed as {listed}")
        self.octets = octets
        self.listed = listed


@implementer(IPushProducer)
class MessageTransfer:
    """
    Sends the encoded message from C{reader}, then the terminator.

    @ivar deferred: fires with L{None} when the terminator was written, or
        fails: with L{TransferAborted} if the transport stopped it, or with
        the store's error if a read failed (the response is then cut short
        and the caller must drop the connection: a multi-line response cannot
        be taken back).
    """

    def __init__(
        self,
        transport: Consumer,
        reader: IMessageReader,
        encoder: MessageEncoder,
        prefix: bytes = b"",
        onProgress: Callable[[], object] = lambda: None,
        chunkSize: int = CHUNK_SIZE,
        expected: int | None = None,
    ) -> None:
        """
        @param prefix: octets to send with the first chunk (the status line),
            so short messages go out in one write.
        @param onProgress: called after each chunk is written (to reset an
            idle timer).
        @param expected: for a whole message (RETR), the size the listing
            gave it (L{MessageEncoder.octets}).  If the reader ends before
            that, the transfer fails with L{ShorterThanListed} instead of
            sending the terminator: a message cut short must not look whole
            to a client that deletes what it downloaded.  One that is
            longer is sent, and logged.
        """
        self._transport = transport
        self._reader = reader
        self._encoder = encoder
        self._pending = prefix
        self._onProgress = onProgress
        self._chunkSize = chunkSize
        self._expected = expected
        self._paused = False
        self._reading = False
        self._pumping = False
        self._finished = False
        # Everything, terminator included, is in the transport.
        self._written = False
        #: Octets written so far, the status line included.
        self.sent = 0
        self.deferred: Deferred[None] = Deferred()

    def start(self) -> Deferred[None]:
        """
        Register with the transport and start sending.
        """
        self._transport.registerProducer(self, True)
        reader = self._reader
        try:
            whole = (
                reader.whole(self._chunkSize) if IWholeMessageReader.providedBy(reader) else None
            )
            if whole is None:
                self._pump()
            elif not whole:
                _checkEnd(whole, "whole")
                self._finish()
            else:
                # The store holds the whole message (as a Maildir store does
                # for most): one write, status line to terminator, no reads.
                self._finish(*self._encoder.feedParts(whole))
        except Exception:
            # A store's bug (no reader at all, a whole() that raises): the
            # transfer fails, and is no longer the transport's producer.
            # Raised from here, it stayed registered, and the transport,
            # stopping it when the connection went, failed in its turn.
            self._end(Failure())
        return self.deferred

    # IPushProducer

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        if self._written:
            self._end(None)
        else:
            self._pump()

    def stopProducing(self) -> None:
        self._end(Failure(TransferAborted()))

    # The loop

    def _pump(self) -> None:
        # A loop rather than recursion: a store whose reads fire at once
        # would otherwise nest one call per chunk.
        if self._pumping:
            return
        self._pumping = True
        try:
            while not (self._paused or self._reading or self._finished):
                self._reading = True
                # maybeDeferred: a store's reader that returns bytes, or
                # raises, is taken as its other methods are (the contract
                # asks for a Deferred).
                read = maybeDeferred(self._reader.read, self._chunkSize)
                read.addCallbacks(self._gotChunk, self._end)
        finally:
            self._pumping = False

    def _gotChunk(self, data: bytes) -> None:
        self._reading = False
        if self._finished:
            return
        encoder = self._encoder
        try:
            if not data:
                # Only b"" ends the message.  Any other empty value is a
                # reader's bug, most often a read that falls off its end
                # (None): taken as the end, it ended the message there as
                # if whole, and a client that then deleted it lost it.
                _checkEnd(data, "read")
                self._finish()
                return
            out = encoder.feedParts(data)
            if encoder.done:
                self._finish(*out)
                return
            self._write(*out)
        except Exception:
            # A chunk that cannot be encoded or sent (a reader that gave
            # something other than bytes) fails the transfer as a failed
            # read does.  Raised out of here, it went unhandled, and the
            # loop in _pump, no longer reading, read again: forever, for a
            # reader whose reads fire at once, and the reactor with it.
            self._end(Failure())
            return
        self._onProgress()
        self._pump()

    def _finish(self, *out: Part) -> None:
        """
        Write C{out} and the end of the response.  The transfer is over
        once the transport wants more: at once, or, if this filled its
        buffer, when the client has read enough of it (L{resumeProducing}).
        So the session's next command waits too, and pipelined commands
        from a client that does not read add at most a message each to the
        buffer.
        """
        encoder = self._encoder
        end = encoder.finish()
        expected = self._expected
        if expected is not None and encoder.octets != expected:
            if encoder.octets < expected:
                self._end(Failure(ShorterThanListed(encoder.octets, expected)))
                return
            _log.warn(
                "The store gave {octets} octets of a message listed as {expected}",
                octets=encoder.octets,
                expected=expected,
            )
        self._write(*out, end)
        self._written = True
        if not self._paused:
            self._end(None)

    def _write(self, *parts: Part) -> None:
        # As a sequence, not joined here: sent at once, the parts (views of
        # the chunk among them, where it was stuffed) go out in one
        # sendmsg(); buffered, they are joined once, as the transport would
        # join them anyway.  Each join of a whole message is a copy.
        if self._pending:
            parts = (self._pending, *parts)
            self._pending = b""
        parts = tuple(part for part in parts if part)
        if parts:
            self.sent += sum(map(len, parts))
            sendNow(self._transport, *parts)

    def _end(self, result: Failure | None) -> None:
        if self._finished:
            return
        self._finished = True
        self._transport.unregisterProducer()
        try:
            self._reader.close()
        except Exception:
            # A store's bug: logged, and the transfer still ends.  Raised
            # from here it left the session waiting for the transfer forever
            # or, when the transport stopped it as the connection went, cut
            # the transport's connectionLost short: the connection and the
            # maildrop's lock were then never released.
            _log.failure("Closing the message reader failed")
        if result is None:
            self.deferred.callback(None)
        else:
            self.deferred.errback(result)
