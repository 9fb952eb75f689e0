"""
The TRANSACTION-state view of a maildrop: message numbers, deletion marks and
the answers of STAT, LIST and UIDL (RFC 1939 section 5).

Pure bookkeeping over the L{MessageInfo} snapshot; no I/O.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from functools import partial
from operator import is_not
from typing import TypeVar

from popserv.errors import POP3Error
from popserv.interfaces import UID, UID_OCTETS, MessageInfo, column


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

_T = TypeVar("_T", bound=type)


#: The maildrop classes whose listings are right by construction: see
#: L{trustListings}.
_TRUSTED: set[type] = set()


def trustListings(cls: _T) -> _T:
    """
    A class decorator for popserv's own maildrops, which make their
    listings right (the Maildir store derives every unique-id from a file
    name it checks, and measures every size) and are tested for it by
    L{popserv.testing.StoreContract}: a session takes their listings without
    L{checkListing}, which cost 20 to 30 ms a login to 100,000 messages.
    """
    _TRUSTED.add(cls)
    return cls


def needsCheck(maildrop: object) -> bool:
    """
    Whether a session must L{checkListing} the listings of C{maildrop}.
    """
    return type(maildrop) not in _TRUSTED


class BrokenListing(ValueError):
    """
    A store listed its messages against the L{IMaildrop} contract
    (L{MessageInfo}): the session cannot be served from that listing.
    """


def checkListing(messages: Sequence[MessageInfo]) -> None:
    """
    Check a store's listing before a session takes it in: sizes that are
    whole numbers from 0, unique-ids of 1 to 70 characters from 0x21 to
    0x7E, none given twice.  The built-in stores make them so; another
    store's bug would otherwise reach the wire, where a unique-id holding
    CRLF adds lines of its own to a UIDL listing, and one given twice makes
    a client that leaves mail on the server skip a message for good.
    Checked column by column in C; only a listing found wrong is looked at
    message by message, to say which.

    @raise BrokenListing: what is wrong, and with which message.
    """
    if not isinstance(messages, Sequence):
        raise BrokenListing(f"listMessages gave a {type(messages).__name__}, not a sequence")
    try:
        uids = column(messages, "uid")
        sizeColumn = column(messages, "size")
        downgradedColumn = column(messages, "downgradedSize")
    except AttributeError:
        # Not a MessageInfo (a plain tuple, most often): named, not left
        # to fail as "'tuple' object has no attribute 'uid'".
        raise _culprit(messages) from None
    # array() takes a bool (and anything with __index__) as a number, but
    # LIST would send it as it formats: "1 True".
    if not (_intsOnly(sizeColumn) and _intsOnly(downgradedColumn, type(None))):
        raise _culprit(messages)
    try:
        sizes = array("q", sizeColumn)
        downgraded = array("q", filter(partial(is_not, None), downgradedColumn))
    except OverflowError:  # 2**63 or more; the types were checked above
        raise _culprit(messages) from None
    if (sizes and min(sizes) < 0) or (downgraded and min(downgraded) < 0):
        raise _culprit(messages)
    if not uids:
        return
    try:
        joined = " ".join(uids).encode("ascii")
    except (TypeError, UnicodeEncodeError):
        raise _culprit(messages) from None
    if (
        joined.translate(None, UID_OCTETS) != b" " * (len(uids) - 1)
        or min(map(len, uids)) < 1
        or max(map(len, uids)) > 70
        or len(set(uids)) != len(uids)
    ):
        raise _culprit(messages)


def _culprit(messages: Sequence[MessageInfo]) -> BrokenListing:
    """
    The first message of a listing L{checkListing} found wrong, and why.
    """
    seen: set[str] = set()
    for number, info in enumerate(messages, 1):
        if not all(hasattr(info, name) for name in MessageInfo._fields):
            return BrokenListing(
                f"the store listed message {number} as {info!r}, not a MessageInfo (IMaildrop)"
            )
        size, uid, downgraded = info.size, info.uid, info.downgradedSize
        if not all(_isSize(n) for n in (size, 0 if downgraded is None else downgraded)):
            why = f"size {size!r}, downgraded size {downgraded!r}: not whole numbers from 0"
        elif not (isinstance(uid, str) and UID.match(uid)):
            why = f"unique-id {uid!r}: not 1 to 70 characters from 0x21 to 0x7E"
        elif uid in seen:
            why = f"unique-id {uid!r}: given to an earlier message too"
        else:
            seen.add(uid)
            continue
        return BrokenListing(f"the store listed message {number} with {why} (IMaildrop)")
    return BrokenListing("the store's listing is not one of MessageInfo (IMaildrop)")


def _intsOnly(values: Sequence[object], *others: type) -> bool:
    """
    Whether every one of C{values} is an L{int} but a L{bool}, as
    L{_isSize} asks, or of one of the types C{others}; by the types found,
    so in C.
    """
    if isinstance(values, array) and values.typecode in "bBhHiIlLqQ":
        return True
    return all(
        t in others or (issubclass(t, int) and t is not bool) for t in set(map(type, values))
    )


def _isSize(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


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
