"""
Reading a message file off the reactor thread: the L{IMessageReader} that
file-based stores (Maildir, or your own) hand to the protocol.
"""

from __future__ import annotations

from typing import Any, BinaryIO

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from popserv.errors import MessageUnavailable
from popserv.interfaces import IWholeMessageReader
from popserv.threads import Runner, deferToThread


@implementer(IWholeMessageReader)
class FileReader:
    """
    Reads an open binary file, each read in a thread.

    L{close} while a read is running closes the file when that read
    returns, never under it.

    A store that already read the start of the file in the thread that
    opened it (as the Maildir store does, so that a small message costs one
    trip to a thread instead of three) passes it as C{head}; with C{f}
    L{None}, C{head} is the whole message.

    >>> reader = FileReader(open(path, "rb", buffering=0))  # doctest: +SKIP
    """

    def __init__(
        self,
        f: BinaryIO | None,
        runInThread: Runner = deferToThread,
        head: bytes = b"",
        size: int | None = None,
    ) -> None:
        """
        @param f: the open file, positioned after C{head}, or L{None} when
            C{head} is the whole message.  The reader owns it and closes it.
        @param runInThread: how to run the blocking reads.
        @param head: the message's first octets, already read.
        @param size: the file's size when it was opened, if known: the
            reader then gives no more than that, and a file that ends
            sooner (truncated while it is sent) fails the read with
            L{MessageUnavailable}, so that the client sees a cut reply
            rather than a message that ends early as if whole.
        """
        self._file = f
        self._left = None if size is None else size - len(head)
        self._run = runInThread
        self._head = head
        self._reading = False
        self._closed = False
        self._started = False

    def whole(self, size: int) -> bytes | None:
        # IWholeMessageReader: only before any read (a read that took part
        # of the head would leave the rest, not the message).
        if self._file is not None or len(self._head) > size or self._started:
            return None
        data, self._head = self._head, b""
        return data

    def read(self, size: int) -> Deferred[bytes]:
        self._started = True
        if self._head:
            data, self._head = self._head[:size], self._head[size:]
            return succeed(data)
        if self._file is None:
            return succeed(b"")
        if self._left is not None:
            if self._left <= 0:
                return succeed(b"")  # what a file that grew since has more is not sent
            size = min(size, self._left)
        self._reading = True
        d: Deferred[bytes] = self._run(self._file.read, size)
        return d.addBoth(self._readDone)

    def _readDone(self, result: Any) -> Any:
        self._reading = False
        if self._closed and self._file is not None:
            self._file.close()
        if self._left is not None and isinstance(result, bytes):
            if not result and self._left > 0:
                raise MessageUnavailable("Message changed while it was being sent")
            self._left -= len(result)
        return result

    def close(self) -> None:
        self._closed = True
        self._head = b""
        if not self._reading and self._file is not None:
            self._file.close()
