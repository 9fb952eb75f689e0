"""
A contract test-suite that any L{IMailStore} can run against itself.

Subclass L{StoreContract} in a pytest module, implement L{makeStore} and
L{deliver}, and every test below runs against your store::

    from popserv.testing import StoreContract

    class TestMyStore(StoreContract):
        def makeStore(self, tmp_path):
            return MyStore(tmp_path)

        def deliver(self, store, user, message):
            store.add(user, message)

The tests need pytest and pytest-twisted (popserv's C{test} extra): they run
the reactor, so stores that use threads or network drivers are tested as
they will run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from zope.interface.verify import verifyObject

from popserv.encoder import wireSize
from popserv.errors import MaildropInUse
from popserv.interfaces import (
    UID,
    IMaildrop,
    IMailStore,
    IMessageReader,
    IWholeMessageReader,
)

#: Messages with every kind of line ending and the awkward cases.
SAMPLES = [
    b"Subject: crlf\r\n\r\nbody\r\n",
    b"Subject: lf\n\n.starts with a dot\nend\n",
    b"Subject: mixed\r\n\nline\r\nline\nno newline at the end",
    b"",
    b"Subject: big\r\n\r\n" + b"x" * 1000 + b"\r\n" + b"y" * 300_000 + b"\n",
    "Subject: Gr\u00fc\u00dfe\nFrom: J\u00fcrgen <j@example.org>\n\nK\u00f6rper\n".encode(),
]


async def readAll(maildrop: IMaildrop, index: int, size: int = 65536) -> bytes:
    """
    Read message C{index} of C{maildrop} to the end, C{size} octets at a
    time, checking the L{IMessageReader} contract on the way.
    """
    reader = await maildrop.openMessage(index)
    try:
        return await readRest(reader, size)
    finally:
        reader.close()


async def readRest(reader: IMessageReader, size: int = 65536) -> bytes:
    """
    Read an open message from where C{reader} is to the end, C{size}
    octets at a time, checking the L{IMessageReader} contract on the way.
    """
    assert verifyObject(IMessageReader, reader)
    parts: list[bytes] = []
    for _ in range(10_000_000 // size + 10):
        chunk = await reader.read(size)
        assert isinstance(chunk, bytes)
        assert len(chunk) <= size
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)
    raise AssertionError("reader never reached the end")


class StoreContract:
    """
    The behaviour every mail store must have.  Subclasses implement
    L{makeStore} and L{deliver}; C{user} names used are plain ASCII.
    """

    def makeStore(self, tmp_path: Path) -> IMailStore:
        """
        A new, empty store (may keep its data under C{tmp_path}).
        """
        raise NotImplementedError

    def deliver(self, store: IMailStore, user: str, message: bytes) -> None:
        """
        Add C{message}, exactly these octets, to C{user}'s maildrop, as a
        mail delivery agent would while the server runs.
        """
        raise NotImplementedError

    @pytest.fixture
    def store(self, tmp_path: Path) -> IMailStore:
        return self.makeStore(tmp_path)

    async def _open(self, store: IMailStore, user: str = "alice") -> Any:
        maildrop = await store.openMaildrop(user)
        assert verifyObject(IMaildrop, maildrop)
        return maildrop

    @pytest_twisted.ensureDeferred
    async def test_providesIMailStore(self, store: IMailStore) -> None:
        """
        The store provides L{IMailStore}.
        """
        assert verifyObject(IMailStore, store)

    @pytest_twisted.ensureDeferred
    async def test_emptyMaildrop(self, store: IMailStore) -> None:
        """
        A user with no mail has an empty maildrop, not an error.
        """
        maildrop = await self._open(store, "nobody-yet")
        try:
            assert list(await maildrop.listMessages()) == []
        finally:
            maildrop.close()

    @pytest_twisted.ensureDeferred
    async def test_listsInDeliveryOrderWithWireSizes(self, store: IMailStore) -> None:
        """
        Messages are listed in delivery order, each with its exact wire size.
        """
        for message in SAMPLES:
            self.deliver(store, "alice", message)
        maildrop = await self._open(store)
        try:
            infos = list(await maildrop.listMessages())
            assert [i.size for i in infos] == [wireSize(m) for m in SAMPLES]
            # Stores may leave downgradedSize unset; when set, it is exact.
            for info, message in zip(infos, SAMPLES, strict=True):
                if info.downgradedSize is not None:
                    assert info.downgradedSize == wireSize(message, downgrade=True)
            contents = [await readAll(maildrop, i) for i in range(len(infos))]
            assert contents == SAMPLES
        finally:
            maildrop.close()

    @pytest_twisted.ensureDeferred
    async def test_readsInSmallChunks(self, store: IMailStore) -> None:
        """
        Reading a few octets at a time gives back the stored bytes exactly,
        line endings untouched.
        """
        self.deliver(store, "alice", SAMPLES[2])
        maildrop = await self._open(store)
        try:
            assert await readAll(maildrop, 0, size=7) == SAMPLES[2]
        finally:
            maildrop.close()

    @pytest_twisted.ensureDeferred
    async def test_wholeIsTheMessage(self, store: IMailStore) -> None:
        """
        A reader that offers the message whole (L{IWholeMessageReader})
        gives its stored bytes exactly, and is then at its end; one that
        declines can still be read.  Asked with a size smaller than the
        message, it declines.
        """
        for message in SAMPLES:
            self.deliver(store, "alice", message)
        maildrop = await self._open(store)
        try:
            for index, message in enumerate(SAMPLES):
                reader = await maildrop.openMessage(index)
                try:
                    if not IWholeMessageReader.providedBy(reader):
                        continue
                    assert verifyObject(IWholeMessageReader, reader)
                    whole = reader.whole(len(message) + 1)
                    if whole is None:
                        assert await readRest(reader) == message
                    else:
                        assert whole == message
                        assert await reader.read(65536) == b""
                finally:
                    reader.close()
                if message:
                    reader = await maildrop.openMessage(index)
                    try:
                        assert reader.whole(len(message) - 1) is None
                    finally:
                        reader.close()
        finally:
            maildrop.close()

    @pytest_twisted.ensureDeferred
    async def test_uidsValidUniqueAndStable(self, store: IMailStore) -> None:
        """
        Unique ids have RFC 1939 syntax, differ between messages and are the
        same in the next session.
        """
        for message in SAMPLES:
            self.deliver(store, "alice", message)
        maildrop = await self._open(store)
        first = [i.uid for i in await maildrop.listMessages()]
        maildrop.close()
        assert all(UID.match(uid) for uid in first)
        assert len(set(first)) == len(first)
        maildrop = await self._open(store)
        try:
            assert [i.uid for i in await maildrop.listMessages()] == first
        finally:
            maildrop.close()

    @pytest_twisted.ensureDeferred
    async def test_lockIsExclusive(self, store: IMailStore) -> None:
        """
        A second open of a locked maildrop fails at once with
        L{MaildropInUse}; after close it opens again.  Other users are not
        affected.
        """
        maildrop = await self._open(store)
        try:
            with pytest.raises(MaildropInUse):
                await store.openMaildrop("alice")
            other = await self._open(store, "bob")
            other.close()
        finally:
            maildrop.close()
        again = await self._open(store)
        again.close()

    @pytest_twisted.ensureDeferred
    async def test_deleteRemovesOnlyNamed(self, store: IMailStore) -> None:
        """
        deleteMessages removes the named messages and nothing else.
        """
        for message in SAMPLES:
            self.deliver(store, "alice", message)
        maildrop = await self._open(store)
        infos = list(await maildrop.listMessages())
        await maildrop.deleteMessages([0, 2])
        maildrop.close()
        maildrop = await self._open(store)
        try:
            remaining = list(await maildrop.listMessages())
            kept = [i for i in range(len(SAMPLES)) if i not in (0, 2)]
            assert [i.uid for i in remaining] == [infos[i].uid for i in kept]
            assert [await readAll(maildrop, i) for i in range(len(kept))] == [
                SAMPLES[i] for i in kept
            ]
        finally:
            maildrop.close()

    @pytest_twisted.ensureDeferred
    async def test_snapshotExcludesLaterDeliveries(self, store: IMailStore) -> None:
        """
        Mail delivered during a session is not listed in it and survives
        the session's deletions.
        """
        self.deliver(store, "alice", SAMPLES[0])
        maildrop = await self._open(store)
        infos = list(await maildrop.listMessages())
        self.deliver(store, "alice", SAMPLES[1])
        assert len(await maildrop.listMessages()) == 1
        await maildrop.deleteMessages(range(len(infos)))
        maildrop.close()
        maildrop = await self._open(store)
        try:
            assert len(list(await maildrop.listMessages())) == 1
            assert await readAll(maildrop, 0) == SAMPLES[1]
        finally:
            maildrop.close()

    @pytest_twisted.ensureDeferred
    async def test_readerClosedEarly(self, store: IMailStore) -> None:
        """
        A reader closed before the end releases what it held; the message
        can be read again.
        """
        self.deliver(store, "alice", SAMPLES[4])
        maildrop = await self._open(store)
        try:
            reader = await maildrop.openMessage(0)
            await reader.read(10)
            reader.close()
            assert await readAll(maildrop, 0) == SAMPLES[4]
        finally:
            maildrop.close()
