"""
The store contract test-suite, run for both built-in stores.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from popserv.errors import MaildropInUse
from popserv.interfaces import IMaildrop, IMessageReader, MessageInfo
from popserv.maildir import MaildirStore
from popserv.memorystore import BytesReader, MemoryMaildrop, MemoryStore
from popserv.testing import StoreContract


class TestMemoryStore(StoreContract):
    """
    MemoryStore honours the store contract.
    """

    def makeStore(self, tmp_path: Path) -> MemoryStore:
        return MemoryStore()

    def deliver(self, store, user: str, message: bytes) -> None:
        store.deliver(user, message)

    def test_deliverReturnsTheUid(self) -> None:
        """
        deliver returns the new message's unique id, the one its listing
        gives: "1" for the store's first message, as its docstring shows.
        """
        store = MemoryStore()
        uids = [store.deliver("alice", b"a\r\n"), store.deliver("bob", b"b\r\n")]
        assert uids[0] == "1"
        listed: list[str] = []
        for user in ("alice", "bob"):
            store.openMaildrop(user).addCallback(
                lambda maildrop: maildrop.listMessages().addCallback(
                    lambda infos: listed.extend(i.uid for i in infos)
                )
            )
        assert listed == uids

    def test_secondCloseKeepsTheNextSessionsLock(self) -> None:
        """
        A maildrop closed twice (the contract says once; an embedder's
        mistake) does not release the lock that a later session holds.
        """
        store = MemoryStore()
        opened: list[Any] = []
        store.openMaildrop("alice").addCallback(opened.append)
        first = opened.pop()
        first.close()
        store.openMaildrop("alice").addCallback(opened.append)
        second = opened.pop()
        first.close()
        failures: list[Failure] = []
        store.openMaildrop("alice").addErrback(failures.append)
        [failure] = failures
        assert failure.check(MaildropInUse)
        second.close()
        store.openMaildrop("alice").addCallback(opened.append)
        assert len(opened) == 1


_counter = iter(range(10**9))


def deliverToMaildir(path: Path, message: bytes, name: str | None = None) -> Path:
    """
    Deliver C{message} into the Maildir at C{path} the way an MDA does:
    write into tmp/, then rename into new/.
    """
    for subdir in ("tmp", "new", "cur"):
        (path / subdir).mkdir(parents=True, exist_ok=True)
    if name is None:
        name = f"{int(time.time())}.M{next(_counter):06d}P{os.getpid()}.test"
    tmp = path / "tmp" / name
    tmp.write_bytes(message)
    final = path / "new" / name
    os.rename(tmp, final)
    return final


class TestMaildirStore(StoreContract):
    """
    MaildirStore honours the store contract, its file work in threads.
    """

    def makeStore(self, tmp_path: Path) -> MaildirStore:
        return MaildirStore(str(tmp_path / "{user}"))

    def deliver(self, store, user: str, message: bytes) -> None:
        deliverToMaildir(Path(store.template.pathFor(user)), message)


# The contract must catch a store that breaks it: each store below breaks
# one rule, and the contract test that states the rule fails for it.  Its
# Deferreds fire at once (a MemoryStore's), so the tests run here without
# the reactor.


class _WholeIgnoresSize(BytesReader):
    def whole(self, size: int) -> bytes | None:
        return super().whole(10**9)


class _WholeNotAtEnd(BytesReader):
    def whole(self, size: int) -> bytes | None:
        data = super().whole(size)
        self._offset = 0
        return data


class _OversizedChunks(BytesReader):
    def read(self, size: int) -> Deferred[bytes]:
        return super().read(size + 1)


class _ReaderMaildrop(MemoryMaildrop):
    reader: type[BytesReader] = BytesReader

    def openMessage(self, index: int) -> Deferred[IMessageReader]:
        return succeed(self.reader(self._messages[index].data))


class _BrokenStore(MemoryStore):
    maildrop: type[MemoryMaildrop] = MemoryMaildrop

    def openMaildrop(self, user: str) -> Deferred[IMaildrop]:
        d = super().openMaildrop(user)
        return d.addCallback(lambda _: self.maildrop(self, user))


def _readerStore(reader: type[BytesReader]) -> type[_BrokenStore]:
    maildrop = type("Maildrop", (_ReaderMaildrop,), {"reader": reader})
    return type("Store", (_BrokenStore,), {"maildrop": maildrop})


class _NoLock(MemoryStore):
    def openMaildrop(self, user: str) -> Deferred[IMaildrop]:
        self._locked.discard(user)
        return super().openMaildrop(user)


class _DeletesOneMore(MemoryMaildrop):
    def deleteMessages(self, indexes: Sequence[int]) -> Deferred[None]:
        return super().deleteMessages([*indexes, len(self._messages) - 1])


class _LiveListing(MemoryMaildrop):
    def listMessages(self) -> Deferred[Sequence[MessageInfo]]:
        self._messages = list(self._store._mailboxes.get(self._user, []))
        return super().listMessages()


class _SizesWithoutDotStuffing(MemoryMaildrop):
    def listMessages(self) -> Deferred[Sequence[MessageInfo]]:
        return succeed(
            [MessageInfo(len(m.data), m.info.uid, m.info.downgradedSize) for m in self._messages]
        )


class _UnstableUids(MemoryMaildrop):
    def listMessages(self) -> Deferred[Sequence[MessageInfo]]:
        infos = [
            MessageInfo(m.info.size, f"{m.info.uid}-{id(self)}", m.info.downgradedSize)
            for m in self._messages
        ]
        return succeed(infos)


class _RepeatedUids(MemoryMaildrop):
    def listMessages(self) -> Deferred[Sequence[MessageInfo]]:
        return succeed([MessageInfo(m.info.size, "same", None) for m in self._messages])


def _maildropStore(maildrop: type[MemoryMaildrop]) -> type[_BrokenStore]:
    return type("Store", (_BrokenStore,), {"maildrop": maildrop})


@pytest.mark.parametrize(
    ("store", "rule"),
    [
        (_readerStore(_WholeIgnoresSize), "test_wholeIsTheMessage"),
        (_readerStore(_WholeNotAtEnd), "test_wholeIsTheMessage"),
        (_readerStore(_OversizedChunks), "test_readsInSmallChunks"),
        (_NoLock, "test_lockIsExclusive"),
        (_maildropStore(_DeletesOneMore), "test_deleteRemovesOnlyNamed"),
        (_maildropStore(_LiveListing), "test_snapshotExcludesLaterDeliveries"),
        (_maildropStore(_SizesWithoutDotStuffing), "test_listsInDeliveryOrderWithWireSizes"),
        (_maildropStore(_UnstableUids), "test_uidsValidUniqueAndStable"),
        (_maildropStore(_RepeatedUids), "test_uidsValidUniqueAndStable"),
    ],
)
def test_contractCatchesBrokenStores(store: type[MemoryStore], rule: str) -> None:
    """
    popserv.testing is what a plugin author trusts to say that a store
    works: each of its tests fails for a store that breaks its rule, while
    a correct MemoryStore passes it (TestMemoryStore).
    """

    class Contract(TestMemoryStore):
        def makeStore(self, tmp_path: Path) -> MemoryStore:
            return store()

    def run(contract: TestMemoryStore) -> list[Failure]:
        result = Deferred.fromCoroutine(getattr(contract, rule)(contract.makeStore(Path("."))))
        failures: list[Failure] = []
        result.addErrback(failures.append)
        return failures

    assert run(TestMemoryStore()) == []
    [failure] = run(Contract())
    assert failure.check(AssertionError, pytest.fail.Exception) is not None
