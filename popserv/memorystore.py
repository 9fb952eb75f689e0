"""
A store that keeps every maildrop in memory: for embedding, examples and
tests.  It follows the whole L{IMailStore} contract, lock included, and its
Deferreds fire at once.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from popserv.encoder import wireSize
from popserv.errors import MaildropInUse, MessageUnavailable
from popserv.interfaces import (
    IMaildrop,
    IMailStore,
    IMessageReader,
    IWholeMessageReader,
    MessageInfo,
)
from popserv.transaction import trustListings


@implementer(IWholeMessageReader)
class BytesReader:
    """
    Reads a message held in memory.
    """

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._offset = 0

    def whole(self, size: int) -> bytes | None:
        if self._offset or len(self._data) > size:
            return None
        self._offset = len(self._data)
        return self._data

    def read(self, size: int) -> Deferred[bytes]:
        start = self._offset
        self._offset = min(start + size, len(self._data))
        return succeed(self._data[start : self._offset])

    def close(self) -> None:
        self._data = b""


class _Message:
    __slots__ = ("data", "info")

    def __init__(self, data: bytes, uid: str) -> None:
        self.data = data
        self.info = MessageInfo(wireSize(data), uid, wireSize(data, downgrade=True))


@trustListings
@implementer(IMaildrop)
class MemoryMaildrop:
    """
    A snapshot of one user's messages in a L{MemoryStore}.
    """

    def __init__(self, store: MemoryStore, user: str) -> None:
        self._store = store
        self._user = user
        self._messages = list(store._mailboxes.get(user, []))
        self._closed = False

    def listMessages(self) -> Deferred[Sequence[MessageInfo]]:
        return succeed([m.info for m in self._messages])

    def openMessage(self, index: int) -> Deferred[IMessageReader]:
        message = self._messages[index]
        if message not in self._store._mailboxes.get(self._user, []):
            return fail(MessageUnavailable())
        return succeed(BytesReader(message.data))

    def deleteMessages(self, indexes: Sequence[int]) -> Deferred[None]:
        doomed = {id(self._messages[i]) for i in indexes}
        mailbox = self._store._mailboxes.get(self._user, [])
        mailbox[:] = [m for m in mailbox if id(m) not in doomed]
        return succeed(None)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._store._locked.discard(self._user)


@implementer(IMailStore)
class MemoryStore:
    """
    Maildrops in memory, created on first delivery or first login.

    >>> store = MemoryStore()
    >>> store.deliver("alice", b"Subject: hi\\r\\n\\r\\nHello\\r\\n")
    '1'
    """

    def __init__(self) -> None:
        self._mailboxes: dict[str, list[_Message]] = {}
        self._locked: set[str] = set()
        self._uids = itertools.count(1)

    def deliver(self, user: str, message: bytes) -> str:
        """
        Add C{message} (any line endings) to C{user}'s maildrop.

        @return: the new message's unique id.  Sessions already open do not
            see it.
        """
        uid = str(next(self._uids))
        self._mailboxes.setdefault(user, []).append(_Message(message, uid))
        return uid

    def messages(self, user: str) -> list[bytes]:
        """
        The messages now in C{user}'s maildrop, as delivered.
        """
        return [m.data for m in self._mailboxes.get(user, [])]

    def openMaildrop(self, user: str) -> Deferred[IMaildrop]:
        if user in self._locked:
            return fail(MaildropInUse())
        self._locked.add(user)
        return succeed(MemoryMaildrop(self, user))
