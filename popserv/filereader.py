"""
Reading a message file off the reactor thread: the L{IMessageReader} that
file-based stores (Maildir, or your own) hand to the protocol.
"""

from __future__ import annotations

from typing import Any, BinaryIO

from twisted.internet.defer import Deferred
from zope.interface import implementer

from popserv.interfaces import IMessageReader
from popserv.threads import Runner, deferToThread


@implementer(IMessageReader)
class FileReader:
    """
    Reads an open binary file, each read in a thread.

    L{close} while a read is running closes the file when that read
    returns, never under it.

    >>> reader = FileReader(open(path, "rb", buffering=0))  # doctest: +SKIP
    """

    def __init__(self, f: BinaryIO, runInThread: Runner = deferToThread) -> None:
        """
        @param f: the open file, positioned at the message's start.  The
            reader owns it and closes it.
        @param runInThread: how to run the blocking reads.
        """
        self._file = f
        self._run = runInThread
        self._reading = False
        self._closed = False

    def read(self, size: int) -> Deferred[bytes]:
        self._reading = True
        d: Deferred[bytes] = self._run(self._file.read, size)
        return d.addBoth(self._readDone)

    def _readDone(self, result: Any) -> Any:
        self._reading = False
        if self._closed:
            self._file.close()
        return result

    def close(self) -> None:
        self._closed = True
        if not self._reading:
            self._file.close()
