"""
The TRANSACTION-state view of a maildrop: message numbers, deletion marks and
the answers of STAT, LIST and UIDL (RFC 1939 section 5).

Pure bookkeeping over the L{MessageInfo} snapshot; no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

from popserv.errors import POP3Error
from popserv.interfaces import MessageInfo, column


class NoSuchMessage(POP3Error):
    """
    The message number is beyond the maildrop.
    """

    text = "No such message"


class MessageDeleted(POP3Error):
    """
    The message number refers to a message marked as deleted.
    """

    text = "Message is deleted"


_NOTHING: frozenset[int] = frozenset()


class Transaction:
    """
    Message numbers (1-based, never changing within the session) and the set
    of messages marked as deleted.
    """

    __slots__ = ("_deleted", "_deletedOctets", "_messages", "_octets", "_sizes")

    def __init__(self, messages: Sequence[MessageInfo], sizes: Sequence[int] | None = None) -> None:
        """
        @param sizes: the size of each message as this client sees it, by
            index (RFC 6856: a client that did not enable UTF8 gets UTF-8
            header fields downgraded); by default each C{MessageInfo.size}.
        """
        self._messages = messages
        # None, the usual case, costs an idle session nothing.
        self._sizes = sizes
        self._octets = sum(column(messages, "size") if sizes is None else sizes)
        # Most sessions delete nothing: share one empty set until a DELE.
        self._deleted: set[int] | frozenset[int] = _NOTHING
        self._deletedOctets = 0

    def index(self, number: int) -> int:
        """
        The 0-based index of visible message C{number}.

        @raise NoSuchMessage: no such message number.
        @raise MessageDeleted: it is marked as deleted.
        """
        index = number - 1
        if not 0 <= index < len(self._messages):
            raise NoSuchMessage()
        if index in self._deleted:
            raise MessageDeleted(f"Message {number} is deleted")
        return index

    def info(self, number: int) -> MessageInfo:
        """
        The L{MessageInfo} of visible message C{number}.
        """
        return self._messages[self.index(number)]

    def size(self, number: int) -> int:
        """
        The size, as this client sees it, of visible message C{number}.
        """
        return self._sizeAt(self.index(number))

    def _sizeAt(self, index: int) -> int:
        return self._messages[index].size if self._sizes is None else self._sizes[index]

    def sizes(self) -> Sequence[int]:
        """
        The size of every message as this client sees it, by index; not to
        be changed.
        """
        if self._sizes is None:
            return column(self._messages, "size")
        return self._sizes

    def uids(self) -> Sequence[str]:
        """
        The unique id of every message, by index; not to be changed.
        """
        return column(self._messages, "uid")

    def stat(self) -> tuple[int, int]:
        """
        The number of visible messages and their total wire size.
        """
        return (
            len(self._messages) - len(self._deleted),
            self._octets - self._deletedOctets,
        )

    def whole(self) -> tuple[int, int]:
        """
        The number of messages and their total wire size, deleted or not:
        what the maildrop still holds if the session never reaches UPDATE.
        """
        return len(self._messages), self._octets

    def delete(self, number: int) -> None:
        """
        Mark visible message C{number} as deleted.
        """
        index = self.index(number)
        if isinstance(self._deleted, frozenset):
            self._deleted = set()
        self._deleted.add(index)
        self._deletedOctets += self._sizeAt(index)

    def reset(self) -> None:
        """
        Unmark every message (RSET).
        """
        self._deleted = _NOTHING
        self._deletedOctets = 0

    def without(self, indexes: Sequence[int]) -> tuple[int, int]:
        """
        The number of messages and their total wire size once those at the
        0-based C{indexes} are removed: what UPDATE leaves.
        """
        return (
            len(self._messages) - len(indexes),
            self._octets - sum(map(self._sizeAt, indexes)),
        )

    def messages(self) -> Sequence[MessageInfo]:
        """
        Every message of the session, deleted or not, by index.
        """
        return self._messages

    def deletedIndexes(self) -> list[int]:
        """
        The 0-based indexes marked as deleted, in order.
        """
        return sorted(self._deleted)
