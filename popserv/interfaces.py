"""
The extension points of popserv, with their whole contracts.

A I{store} (L{IMailStore}) opens the I{maildrop} (L{IMaildrop}) of an
authenticated user; the realm (L{popserv.realm.MaildropRealm}) hands the
maildrop to the protocol through C{twisted.cred}.  A store is made from a
C{--mailstore KIND:ARGS} string by an L{IMailStoreFactory} plugin.

Conventions that hold for every method below:

 - Every method that may touch storage returns a L{Deferred}; it may already
   have fired, fire later, or fire from a callback chain started inside the
   call.  The protocol works with all three.  Implementations must not block
   the reactor thread: run file or database work in a thread pool or use an
   asynchronous driver.
 - Messages are numbered by 0-based I{index} into the list returned by
   L{IMaildrop.listMessages}.  POP3 message numbers are that index plus one;
   only the protocol deals in message numbers.
 - Message bytes are given as stored: lines may end in LF or CRLF, mixed.
   The protocol converts line endings and byte-stuffs; stores never do.
 - Failures that the client should hear about are L{popserv.errors.POP3Error}
   subclasses; any other exception is logged as a server fault and the client
   gets a generic reply.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from itertools import repeat
from operator import attrgetter, eq
from typing import Any, NamedTuple, overload

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

#: A unique-id (RFC 1939 section 7, L{MessageInfo.uid}): 1 to 70
#: characters from 0x21 to 0x7E.
UID = re.compile(r"[\x21-\x7e]{1,70}\Z")
#: The octets a unique-id is made of.
UID_OCTETS = bytes(range(0x21, 0x7F))


class MessageInfo(NamedTuple):
    """
    What the protocol needs to know of one message before reading it.

    A named tuple rather than a dataclass: a store makes one for every
    message at every login, and a tuple is made three times as fast (a
    frozen dataclass sets each field through C{object.__setattr__}).

    @ivar size: the message's wire size: the number of octets RETR sends
        before byte-stuffing and the terminating ".": the stored bytes with
        every line ending converted to CRLF and a CRLF added to an
        unterminated last line.  L{popserv.encoder.wireSize} computes it.
        STAT and LIST report it to a client that enabled UTF8 (the others
        get L{downgradedSize}), so it must be exact.
    @ivar uid: the unique-id listing (RFC 1939 section 7, UIDL): 1 to 70
        characters in the range 0x21 to 0x7E, the same for this message in
        every session, and never reused for another message of the maildrop.
    @ivar downgradedSize: the wire size a client that did not enable UTF8
        gets, after UTF-8 header fields are downgraded (RFC 6856,
        L{popserv.downgrade}): C{wireSize(message, downgrade=True)}, the same
        as C{size} for a message whose header is ASCII.  L{None} if the
        store did not work it out; the protocol then reads the message's
        header at login to find it.
    """

    size: int
    uid: str
    downgradedSize: int | None = None

    @classmethod
    def many(
        cls, sizes: Iterable[int], uids: Iterable[str], downgradedSizes: Iterable[int | None]
    ) -> list[MessageInfo]:
        """
        One for each message, from three columns of the same length: what
        C{list(map(MessageInfo, sizes, uids, downgradedSizes))} gives, in
        half the time, for a store that lists many messages at once.  (A
        named tuple's constructor is a Python function; this runs in C.)

        @raise ValueError: the columns differ in length.
        """
        fields = zip(sizes, uids, downgradedSizes, strict=True)
        return list(map(tuple.__new__, repeat(cls), fields))


class MessageList(Sequence[MessageInfo]):
    """
    The L{MessageInfo} of many messages, kept as three columns rather than
    as an object each: a read-only sequence that makes each L{MessageInfo}
    only when asked for it, and whose columns the protocol reads directly.

    For a store that lists a big maildrop at every login.  A login to
    100,000 messages whose index was up to date spent about half of its
    CPU time making their 100,000 objects and in the garbage collector's
    looking them over, and the objects took 14.4 MB for as long as the
    session lasted; the columns take 1.6 MB (docs/performance.rst).

    @ivar sizes: L{MessageInfo.size} of every message, by index.
    @ivar uids: L{MessageInfo.uid} of every message, by index.
    @ivar downgradedSizes: L{MessageInfo.downgradedSize} of every message,
        by index.
    """

    __slots__ = ("downgradedSizes", "sizes", "uids")

    def __init__(
        self, sizes: Sequence[int], uids: Sequence[str], downgradedSizes: Sequence[int | None]
    ) -> None:
        """
        Keep the three columns, which must not change afterwards.

        @raise ValueError: the columns differ in length.
        """
        if not len(sizes) == len(uids) == len(downgradedSizes):
            raise ValueError("the columns of a MessageList differ in length")
        self.sizes = sizes
        self.uids = uids
        self.downgradedSizes = downgradedSizes

    def __len__(self) -> int:
        return len(self.uids)

    @overload
    def __getitem__(self, index: int) -> MessageInfo: ...

    @overload
    def __getitem__(self, index: slice) -> list[MessageInfo]: ...

    def __getitem__(self, index: int | slice) -> MessageInfo | list[MessageInfo]:
        if isinstance(index, slice):
            return MessageInfo.many(
                self.sizes[index], self.uids[index], self.downgradedSizes[index]
            )
        return MessageInfo(self.sizes[index], self.uids[index], self.downgradedSizes[index])

    def __iter__(self) -> Iterator[MessageInfo]:
        fields = zip(self.sizes, self.uids, self.downgradedSizes, strict=True)
        return map(tuple.__new__, repeat(MessageInfo), fields)

    def __eq__(self, other: object) -> bool:
        # Equal where a list of the same MessageInfo would be: to such a
        # list, or to another MessageList.
        if not isinstance(other, list | MessageList):
            return NotImplemented
        return len(self) == len(other) and all(map(eq, self, other))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"MessageList({list(self)!r})"


#: The L{MessageList} column of each L{MessageInfo} field.
_COLUMNS = {"size": "sizes", "uid": "uids", "downgradedSize": "downgradedSizes"}


def column(messages: Sequence[MessageInfo], field: str) -> Sequence[Any]:
    """
    One field (C{"size"}, C{"uid"} or C{"downgradedSize"}) of every message
    of C{messages}, by index: a L{MessageList}'s own column, which must not
    be changed, or a new list made from any other sequence.
    """
    if isinstance(messages, MessageList):
        return getattr(messages, _COLUMNS[field])  # type: ignore[no-any-return]
    return list(map(attrgetter(field), messages))


class IMessageReader(Interface):
    """
    An open message, read in order from start to end.
    """

    def read(size: int) -> Deferred[bytes]:
        """
        Read the next part of the message.

        @param size: the most octets to return; a positive L{int}.
        @return: a L{Deferred} firing with the next 1 to C{size} octets as
            L{bytes}, or C{b""} at the end of the message.  The protocol
            never calls C{read} again before the previous Deferred fired.
            It may fail with L{popserv.errors.MessageUnavailable}.  What
            the reads give in all has, as sent (its line endings CRLF), the
            size the listing gave (L{MessageInfo}): a message that ends
            before it is not sent as whole
            (L{popserv.transfer.ShorterThanListed}).
        """

    def close() -> None:
        """
        Release what the reader holds.  Called exactly once, also when the
        reader was not read to the end; never blocks.
        """


class IWholeMessageReader(IMessageReader):
    """
    An L{IMessageReader} that may hold the whole message in memory already:
    a small file read in the trip that opened it, or a message kept in
    memory.  The protocol then encodes and sends it in one write, without
    the reads (for a 1 KB message they were a seventh of a RETR's CPU).
    Optional: a reader that provides only L{IMessageReader} is read.
    """

    def whole(size: int) -> bytes | None:
        """
        Take the whole message, if this reader holds all of it, it is at
        most C{size} octets, and nothing was read from it yet.

        @param size: the most octets the protocol takes in one piece (what
            it would ask L{read} for); a larger message is read in chunks,
            so that a session holds about one chunk whatever the message.
        @return: every octet of the message (the reader is then at its end:
            a L{read} would give C{b""}), or L{None}, and then the protocol
            reads as usual.  Never blocks; called at most once, before any
            L{read}.
        """


class IMaildrop(Interface):
    """
    One user's mail as seen by one POP3 session, locked for that session.

    A maildrop is a I{snapshot}: the messages that were present when it was
    opened.  Mail delivered during the session is not part of it and must
    not be affected by L{deleteMessages}.
    """

    def listMessages() -> Deferred[Sequence[MessageInfo]]:
        """
        List the messages of this session: those present when the maildrop
        was opened.

        @return: a L{Deferred} firing with a sequence of L{MessageInfo}; the
            message with index C{i} is element C{i}.  Every call gives the
            same sequence.
        """

    def openMessage(index: int) -> Deferred[IMessageReader]:
        """
        Open message C{index} for reading.

        @param index: a 0-based index into L{listMessages}' result; the
            protocol only passes valid indexes.
        @return: a L{Deferred} firing with an L{IMessageReader}, or failing
            with L{popserv.errors.MessageUnavailable} if another program
            removed the message meanwhile.
        """

    def deleteMessages(indexes: Sequence[int]) -> Deferred[None]:
        """
        Remove messages permanently; called only in the UPDATE state, after
        the client sent QUIT (RFC 1939 section 6), at most once a session.

        @param indexes: a sequence of distinct 0-based indexes.
        @return: a L{Deferred} firing with L{None} when every message is gone
            (a message that some other program already removed counts as
            gone), or failing with L{popserv.errors.DeletionFailed} naming
            the indexes still present.  A failure must never lose a message
            that was not named in C{indexes}, nor leave one half-removed.
        """

    def close() -> None:
        """
        Release the maildrop's lock.  Called exactly once when the session
        ends in any way (QUIT, dropped connection, timeout, server shutdown);
        may be called while a read or L{deleteMessages} is still running and
        must then release the lock when that work ends.  Never blocks.
        """


class IMailStore(Interface):
    """
    Where maildrops live: a directory tree, a database, memory, ...
    """

    def openMaildrop(user: str) -> Deferred[IMaildrop]:
        """
        Open and exclusively lock the maildrop of C{user}.

        @param user: the authenticated user name (the cred avatar ID) as
            text.  It was authenticated, but a store that maps it to a path
            must still refuse names that would escape its root.
        @return: a L{Deferred} firing with an L{IMaildrop}.  If another
            session holds the lock it fails at once (no waiting) with
            L{popserv.errors.MaildropInUse}; other failures are
            L{popserv.errors.MaildropUnavailable} (temporary) or
            L{popserv.errors.MaildropRefused} (permanent).
        """


class IMailStoreFactory(Interface):
    """
    A plugin that makes an L{IMailStore} from a C{--mailstore KIND:ARGS}
    string.  popserv finds every object providing this interface with
    L{twisted.plugin.getPlugins} in the C{twisted.plugins} package, so a
    third-party store ships a dropin module in its own C{twisted/plugins/}.
    Like every Twisted plugin, the object must also provide
    L{twisted.plugin.IPlugin}, or the plugin scan will not see it.
    """

    storeKind = Attribute("The KIND before the first colon, e.g. 'maildir'.")
    storeHelp = Attribute("One paragraph of help shown by --help-mailstores.")
    argStringFormat = Attribute("The shape of ARGS, e.g. 'TEMPLATE'.")

    def makeStore(argstring: str) -> IMailStore:
        """
        Make the store.

        @param argstring: everything after C{KIND:} (empty if there was no
            colon).
        @return: an L{IMailStore}.
        @raise popserv.errors.StoreConfigError: the arguments are wrong; the
            message is one line for the operator.  Called once at start-up
            before the reactor runs, so it may check the file system.
        """
