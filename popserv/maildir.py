"""
A store for Maildir (https://cr.yp.to/proto/maildir.html) directories.

 - A session sees the messages in C{new/} and C{cur/} when it logs in; mail
   delivered later is not part of the session and is never deleted by it.
 - The unique id of a message is its file name up to the ":" that starts
   the flags, so it survives the move from C{new/} to C{cur/} and flag
   changes by other programs.
 - Sizes come from the C{,W=} field of the file name (the size with CRLF
   line endings, as Dovecot and Courier write it) when present, else by
   reading the file.  C{,S=} is the size on disk, which differs from the
   wire size for files with LF line endings, so it cannot stand in.  A
   C{,W=} that reading the message for RETR proves wrong is replaced by
   the count in the index (L{_NamedSizeReader}).  What reading a file
   told is kept in the Maildir's index (L{popserv.maildirindex}), so each
   file is read once, not at every login.
 - The listing of C{new/} and C{cur/} decides which messages there are.  A
   login that listed them, sized every message and found both directories
   unchanged for a while (L{_SETTLE_NS}) ends the index with a stamp of
   them; the next login whose directories still match it takes the
   messages from the index without listing.  Adding, removing or renaming
   a file in a directory changes its modification and change times, so a
   stamp never outlives a change, as in Dovecot's maildir sync
   (src/lib-storage/index/maildir/maildir-sync.c).
 - A session finds its files through a listing made when it first needs
   one (L{MaildirMaildrop._whereMap}), not through the login's: a session
   that only lists or idles keeps no list of file names.
 - Deleting appends the sizes removed to a Maildir++ quota file,
   C{maildirsize}, where the Maildir has one (L{_recordRemoved}), as
   every program that removes mail must, or Dovecot's C{quota = maildir}
   goes on counting it.
 - The lock is an C{flock} on C{popserv.lock} in the Maildir: exclusive across
   processes and within one, never waited for, and released by the kernel
   when its holder dies, so a crash cannot lock a user out.
 - All file-system work runs in a thread pool, never on the reactor thread,
   but for closing a file: a message file once read (L{FileReader}) and
   the lock file (L{MaildirMaildrop._unlock}).  A close never waits for a
   local disk; on NFS, releasing the lock is one request to the server.
 - A first login reads the files the page cache holds before the others,
   which the disk fetches meanwhile (L{popserv.prefetch}).

A login lists and sizes up to 100,000 messages, so the code that does it
works on whole lists with C-level operations (C{map}, C{zip}, C{sorted},
one regular expression over all names) rather than a Python loop per
message; the per-message loop is left for the files that must be read.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
import hashlib
import os
import re
import stat
import string
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from itertools import compress, islice, repeat
from operator import itemgetter
from typing import Any, BinaryIO, NamedTuple, TypeVar, cast

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from popserv.downgrade import CR_OCTET, prefixNeeded
from popserv.encoder import WireSize, downgradeDelta
from popserv.errors import (
    DeletionFailed,
    MaildropInUse,
    MaildropRefused,
    MaildropUnavailable,
    MessageUnavailable,
    StoreConfigError,
)
from popserv.filereader import FileReader
from popserv.interfaces import (
    UID,
    UID_OCTETS,
    IMaildrop,
    IMailStore,
    IMessageReader,
    IWholeMessageReader,
    MessageInfo,
    MessageList,
)
from popserv.maildirindex import (
    INDEX_NAME,
    NO_SIZE,
    IndexCache,
    MaildirIndex,
    Records,
    Stamp,
    lookup,
    numbers,
    removeLeftover,
    sizeLimit,
)
from popserv.prefetch import NOATIME, NOWAIT, advise, cached, readEach, willNeed
from popserv.threads import Runner, deferToThread
from popserv.transaction import trustListings

LOCK_NAME = "popserv.lock"
_SUBDIRS = ("new", "cur")
#: The first read of a message file: the whole of most messages, and small
#: enough that the buffer is cheap to allocate for each.
_FIRST_READ = 64 * 1024
_READ_SIZE = 256 * 1024
#: How many octets of whole messages the thread that opens a message also
#: reads after it, for a client fetching in order (L{_ReadAhead}).  The same
#: bound as one chunk of a transfer, so a session never holds more than it
#: already could while sending a large message.
_READ_AHEAD = 256 * 1024
#: Opening a message never blocks (a FIFO where a message should be) and
#: never makes a terminal ours; the file type is checked after opening.  A
#: symbolic link is not followed: a user who can write in their Maildir
#: could otherwise have the server read any file it can (ELOOP, so the
#: message is left out, or unavailable).
_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY | os.O_NOFOLLOW
#: Sizing a message at login is the server's bookkeeping, not a reading of
#: the mail: it leaves the file's access time alone (and is cheaper for it,
#: L{popserv.prefetch}).  RETR and TOP read as a client reading mail does.
_SIZING_FLAGS = _OPEN_FLAGS | NOATIME
_LF_OCTET = ord("\n")
_WIRE_SIZE = re.compile(r",W=(\d{1,15})(?:,|$)")
#: What L{uidFor} makes of a name that is not a valid unique-id.
_DIGEST_UID = re.compile(r"x[0-9a-f]{40}\Z")
#: A name of that form among "/"-joined names.
_DIGEST_NAME = re.compile(r"(?:^|/)x[0-9a-f]{40}(?:/|$)")
_FIELDS = frozenset({"user", "localpart", "domain"})
#: A directory changed less than this long before it was listed may change
#: again within the same timestamp, unseen: it gets no stamp.  File systems
#: stamp changes from a coarse clock (a tick of a few milliseconds on
#: Linux; on NFS, the server's clock); one second is Dovecot's
#: MAILDIR_SYNC_SECS, "maximum clock drift between all computers accessing
#: the maildir (eg. via NFS), rounded up to next second".
_SETTLE_NS = 1_000_000_000

#: The last value of every stamp: the rule the stamped records are ordered
#: by.  A stamp is taken as the message order, so a login checks it only
#: against stamps of the same rule: 1 is L{_sortKey} with microseconds.
#: Stamps written before that have no such value; they match no Maildir,
#: and the next login lists it and rewrites the index in this order.
_STAMP_ORDER = 1
#: An index read before the listing, to check its stamp, may be this many
#: times as large as new/ and cur/ together, plus the fixed allowance of
#: L{sizeLimit}.  A directory takes at least 12 octets per name on ext4 and
#: 20 on tmpfs, an index record at most 280; a larger index is read only
#: after listing, within L{sizeLimit} for the names listed.
_INDEX_PER_DIRECTORY_OCTET = 8

_log = Logger()

_T = TypeVar("_T")
_K = TypeVar("_K")


def uidFor(base: str) -> str:
    """
    The UIDL of a message whose file name, without flags, is C{base}.

    Names that are not valid unique-ids (too long, spaces, non-ASCII) get a
    digest of the name instead: still stable, still unique.  So does a name
    that is itself such a digest, which would otherwise share its UIDL with
    the message it is the digest of (RFC 1939 section 7: unique in the
    maildrop).
    """
    if UID.match(base) and not _DIGEST_UID.match(base):
        return base
    return "x" + hashlib.sha256(base.encode("utf-8", "surrogateescape")).hexdigest()[:40]


#: The microseconds in the middle part of a Maildir name: an "M" and the
#: digits after it (https://cr.yp.to/proto/maildir.html), as dovecot-lda
#: ("1700000000.M6303P1234.host") and Postfix ("...V803I1bM6303.host")
#: write them.  The first "M" counts, with however many digits follow,
#: as in Dovecot's maildir_fname_get_usecs.
_MICROSECONDS = re.compile(r"[^.M]*M([0-9]*)")


def _sortKey(name: str) -> tuple[int, int, str]:
    # Maildir names start with the delivery time in seconds; order by it
    # numerically so the oldest mail gets the lowest message number, then
    # by the microseconds the name may carry, as numbers too, so that mail
    # delivered in one second keeps its order and its numbers are those
    # Dovecot gives it (maildir_filename_sort_cmp in
    # src/lib-storage/index/maildir/maildir-filename.c).  A name without
    # them counts as 0: Dovecot compares such a pair by the names, which
    # no key can do for every mix.
    # (isdecimal, not isdigit: int() refuses digits such as "²".)
    head, _, rest = name.partition(".")
    microseconds = _MICROSECONDS.match(rest)
    return (
        int(head) if head.isdecimal() and len(head) < 20 else 0,
        int(microseconds[1] or 0) if microseconds else 0,
        name,
    )


def _orderWithinSeconds(order: list[str]) -> None:
    """
    Put the names in C{order} that share a delivery time in L{_sortKey}'s
    order, in place.  C{order} is sorted as strings, and every name in it
    starts with the same number of digits and a ".", so names of the same
    second stand together, ordered as strings: "M114294" before "M6303".

    Only those runs are sorted by the key: for 100,000 names, slicing and
    comparing their times took 11 ms here, sorting them all by the key
    60 ms.
    """
    if len(order) < 2:
        return
    width = order[0].find(".") + 1
    seconds = list(map(itemgetter(slice(0, width)), order))
    # same[i]: the name at i was delivered in the second of the one after it
    same = list(map(str.__eq__, seconds, islice(seconds, 1, None)))
    start = 0
    while True:
        try:
            start = same.index(True, start)
        except ValueError:
            return
        try:
            end = same.index(False, start)
        except ValueError:
            end = len(same)
        order[start : end + 1] = sorted(order[start : end + 1], key=_sortKey)
        start = end


def _allUIDs(joined: list[str], names: list[str]) -> bool:
    """
    Whether each of C{names}, also given as "/"-joined strings, is its own
    UIDL (L{uidFor}'s rule, checked for all names at once in C).
    """
    for part in joined:
        if not part.isascii() or part.encode("ascii").translate(None, UID_OCTETS):
            return False
        # (Maildir names start with a digit: the search nearly never runs.)
        if (part.startswith("x") or "/x" in part) and _DIGEST_NAME.search(part):
            return False
    if not names:
        return True
    return len(min(names, key=len)) >= 1 and len(max(names, key=len)) <= 70


class _NameOrder(NamedTuple):
    """
    What comparing a listing's base names as strings does (L{_checkNames}).

    @ivar byTime: it orders them by their delivery times, as L{_sortKey}
        does; names of the same second stand together, in the order of
        their names.
    @ivar exact: it orders them as L{_sortKey} does, the microseconds too.
    """

    byTime: bool
    exact: bool


def _checkNames(joined: list[str], names: list[str]) -> tuple[_NameOrder, bool]:
    """
    How C{names}, also given as "/"-joined strings, sort when compared as
    strings, and whether each is its own UIDL.

    Names compare by their times as L{_sortKey} does when every one starts
    with a delivery time of the same number of digits (ten from 2001 to
    2286): equal-length digit strings compare as their numbers.  Names of
    the same second then stand together, for L{_orderWithinSeconds} to
    put in order.  They are already in order, with no need of it, when
    every name's microseconds follow the "." with the same number of
    digits ("1764000000.M004242P..."; as numbers they compare as strings),
    or no name has any (qmail's "1764000000.P4242Q1..."): as most Maildirs
    written by one program.  One regular expression over all names checks
    each, so the sort needs no key function.  ("/" is the one octet that
    no file name holds.)
    """
    uidsValid = _allUIDs(joined, names)
    first = next((j for j in joined if j), "")
    digits = first.find(".")
    if not 0 < digits < 20:
        return _NameOrder(not first, not first), uidsValid
    # (Each pattern is written without optional groups, which made the
    # engine's loop over 100,000 names five times slower.)
    second = rf"[0-9]{{{digits}}}\."
    microseconds = _MICROSECONDS.match(first, digits + 1)
    if microseconds is None:
        # No "M" in the first name's middle part: nor may any other have one.
        exact = re.compile(rf"(?:{second}[^./M]*(?![^./])[^/]*(?:/|\Z))*\Z")
    elif microseconds.start(1) == digits + 2:
        # "M" right after the ".", then this many digits in every name.
        width = len(microseconds[1])
        exact = re.compile(rf"(?:{second}M[0-9]{{{width}}}(?![0-9])[^/]*(?:/|\Z))*\Z")
    else:
        exact = None
    if exact is not None and all(exact.match(j) for j in joined):
        return _NameOrder(True, True), uidsValid
    byTime = re.compile(rf"(?:{second}[^/]*(?:/|\Z))*\Z")
    return _NameOrder(all(byTime.match(j) for j in joined), False), uidsValid


#: How many names a C-level step of a login takes at once where it can take
#: them a slice at a time: a few milliseconds of work, after which Python
#: may hand the interpreter's lock to the reactor thread.
_NAMES_AT_ONCE = 10_000


def _ordered(listing: _Listing, hint: list[str]) -> tuple[list[str], list[str]]:
    """
    The distinct base names of C{listing} in message order (L{_sortKey}),
    and their UIDLs.

    @param hint: names in about the order they will have: those of the
        index.  Sorting 100,000 names in the random order of a directory
        listing takes longer than checking them against the index; given
        that order, C{sort} has little more to do than confirm it.
    """
    listed = set(listing.bases)  # a message moved from new/ to cur/ is listed twice
    # What came since the index was written: one pass over the index's
    # names, in C, where picking the new ones out of the listing by looking
    # each up in the index took twice as long.  In slices, as one call
    # would keep the interpreter's lock from the reactor thread for as
    # long as the whole pass (40 ms for 100,000 fresh names once).
    new = set(listed)
    for start in range(0, len(hint), _NAMES_AT_ONCE):
        new.difference_update(hint[start : start + _NAMES_AT_ONCE])
    if len(listed) - len(new) == len(hint):
        # Every name of the index is still listed, each once: nothing
        # went.  Its order, then the new mail (checked by the sort below).
        order = hint + list(new)
    else:
        order = list(filter(listed.__contains__, dict.fromkeys(hint)))
        order += new
    if listing.nameOrder.byTime:
        order.sort()
        if not listing.nameOrder.exact:
            _orderWithinSeconds(order)
    else:
        order.sort(key=_sortKey)
    return order, order if listing.uidsValid else list(map(uidFor, order))


class _CollectorPaused:
    """
    A context manager: pause the cyclic garbage collector while a block
    makes many objects that form no cycles.

    Each 700 new objects start a collection that visits every young object,
    and every so often one that visits every object in the process.  A
    login to 100,000 messages makes several objects for each (names,
    tuples) and keeps them: with the collector running, the first login
    took 0.3 s longer, and the next 30 ms (measured when it also made a
    MessageInfo for each; as Mercurial found, whose C{util.nogc} does the
    same).

    The collector is process-wide, and scans run in several threads: it is
    paused from the start of the first of overlapping blocks to the end of
    the last, and turned back on then only if it was on when the first
    began, so a program that keeps it off is not overruled.  (One that
    turns it off from another thread while a scan runs would find it on
    again afterwards: a pause cannot tell that call from its own.)

    A class rather than a generator: L{contextlib.contextmanager} takes
    four times the calls, at every login.
    """

    _lock = threading.Lock()
    #: Blocks running now, in every thread.
    _running = 0
    #: Whether the first of them found the collector on.
    _resume = False

    def __enter__(self) -> None:
        with self._lock:
            cls = _CollectorPaused
            if not cls._running:
                cls._resume = gc.isenabled()
                gc.disable()
            cls._running += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            cls = _CollectorPaused
            cls._running -= 1
            if not cls._running and cls._resume:
                gc.enable()


def _knownWireSize(base: str) -> int | None:
    """
    The wire size that the C{,W=} field of a file name gives, if any.
    """
    if ",W=" not in base:
        return None  # most names: no regular expression needed
    match = _WIRE_SIZE.search(base)
    return int(match.group(1)) if match else None


def _wholeWireSize(data: bytes | bytearray) -> int:
    """
    The wire size (L{WireSize}) of a whole message in memory: each LF not
    after a CR gains a CR, and an unterminated last line gains a CRLF.
    """
    if CR_OCTET in data:
        size = len(data) + data.count(b"\n") - data.count(b"\r\n")
    else:
        # Most stored mail has bare LFs.  Converting them takes a memchr()
        # per line, where count() tests every octet (CPython 3.11): 12
        # rather than 27 us for 50 kB, and a first login to 4,000 such
        # messages took 0.11 rather than 0.14 s (no change for small ones).
        size = len(data.replace(b"\n", b"\r\n"))
    if data and not data.endswith(b"\n"):
        size += 2
    return size


def measureEach(
    files: Iterable[tuple[_K, int, str]],
    knownSize: Callable[[_K], int | None] | None,
    nowait: int | None = NOWAIT,
) -> Iterator[tuple[_K, tuple[int, int, int] | OSError]]:
    """
    Read message files to learn each one's wire size, its downgraded wire
    size and its size on disk; those in the page cache first
    (L{popserv.prefetch.readEach}).

    @param files: each file's key, a descriptor of its directory and its
        name in that directory.
    @param knownSize: a file's wire size from its name, by its key, or
        L{None}; L{None} for no function if no name gives one.
    @param nowait: see L{popserv.prefetch.readEach}.
    @return: each file's key with its sizes (wire, downgraded, on disk),
        or with the L{OSError} that reading it raised: it cannot be opened
        or read, or is not a regular file.
    """
    # One buffer for all the files: a new 64 kB object for each of 100,000
    # small files costs more than reading them.
    buffer = bytearray(_FIRST_READ)
    return readEach(files, buffer, partial(_measureRead, buffer, knownSize), _SIZING_FLAGS, nowait)


def _measureRead(
    buffer: bytearray,
    knownSize: Callable[[_K], int | None] | None,
    key: _K,
    fd: int,
    length: int,
) -> tuple[int, int, int]:
    """
    The sizes of an open file whose first C{length} octets are in C{buffer}:
    all of it if that is less than the buffer holds, else C{fd} is
    positioned after them.  C{knownSize} (L{measureEach}) is asked about
    C{key} only in the second case, a file too large to read whole: one
    read whole is counted anyway.
    """
    if 0 < length < len(buffer):
        # The whole message, in one read: a regular file gives less than
        # asked only at its end (L{readEach} makes sure of that; and a file
        # that is not, or that changed, has another size when it is opened
        # to be read).  This is the common case; it needs no fstat.
        # It is counted even when its name gives its size (,W=): counting
        # costs less than the read did, and a name can be wrong.
        data = buffer[:length]
        wire = _wholeWireSize(data)
        delta = 0 if data.isascii() else downgradeDelta(data)
        return wire, wire + delta, length
    # Empty, or large: only now is it worth asking what it is, so that a
    # FIFO or a device (/dev/zero) is never taken for a message.
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise OSError(errno.EINVAL, "not a regular file")
    known = knownSize(key) if knownSize else None
    if known is not None and not info.st_size <= known <= 2 * info.st_size:
        known = None  # no file of this size has that wire size: count it
    counter = WireSize() if known is None else None
    prefix = b""
    needed = True
    disk = 0
    chunk = bytes(buffer[:length])
    while chunk:
        disk += len(chunk)
        if needed:
            prefix += chunk
            # Asked after the chunk is in: a name that gives the size then
            # costs no read past the one that ended the header.
            needed = prefixNeeded(prefix)
        if counter is not None:
            counter.feed(chunk)
        elif not needed:
            break
        chunk = os.read(fd, _READ_SIZE)
    if counter is None:
        assert known is not None
        # Dovecot's ,W= counts the lines as they are; popserv ends an
        # unterminated last line with a CRLF (so does Dovecot, without
        # counting it).
        disk = info.st_size
        wire = known + (2 if disk and os.pread(fd, 1, disk - 1) != b"\n" else 0)
    else:
        wire = counter.finish()
    return wire, wire + downgradeDelta(prefix), disk


@implementer(IWholeMessageReader)
class _NamedSizeReader:
    """
    The reader of a large message whose name gives a wire size (C{,W=}),
    which the store listed it with unread (L{_measureRead}).  A name can
    be wrong (the file changed after delivery, under its name), and RETR,
    which holds a message to its listed size, then drops the session at
    every try.  So this counts the wire size of what it gives, and at the
    end of the message calls C{wrong} with it if that is not the size
    listed: the store keeps it, and lists the message right from the next
    login, as Dovecot renames a file whose C{,W=} it finds wrong.

    Counted as L{_wholeWireSize} does, with no copy of a chunk: a LF gains
    a CR unless one is before it (in this chunk or at the end of the last).
    """

    __slots__ = ("_last", "_listed", "_octets", "_reader", "_wrong")

    def __init__(self, reader: FileReader, listed: int, wrong: Callable[[int], object]) -> None:
        self._reader = reader
        self._listed = listed
        self._wrong = wrong
        self._octets = 0
        self._last = _LF_OCTET  # as if after a line: an empty message gains nothing

    def whole(self, size: int) -> bytes | None:
        data = self._reader.whole(size)
        if data is not None:
            self._check(_wholeWireSize(data))
        return data

    def read(self, size: int) -> Deferred[bytes]:
        return self._reader.read(size).addCallback(self._counted)

    def _counted(self, data: bytes) -> bytes:
        if not data:
            self._check(self._octets + (0 if self._last == _LF_OCTET else 2))
            return data
        self._octets += len(data) + data.count(b"\n")
        if CR_OCTET in data or self._last == CR_OCTET:
            self._octets -= data.count(b"\r\n") + (self._last == CR_OCTET and data[0] == _LF_OCTET)
        self._last = data[-1]
        return data

    def _check(self, counted: int) -> None:
        if counted != self._listed:
            self._wrong(counted)

    def close(self) -> None:
        self._reader.close()


class _Directories(NamedTuple):
    """
    What C{stat} says of new/ and cur/.

    @ivar stamp: device, inode, modification and change time of each, in
        nanoseconds: what changes when a file is added, removed or renamed
        in it, or it is replaced; then L{_STAMP_ORDER}.
    @ivar newest: the latest of those times.
    @ivar octets: their sizes together.
    """

    stamp: Stamp
    newest: int
    octets: int


def _directories(maildir: str) -> _Directories | None:
    """
    Stat new/ and cur/; L{None} if either is missing or not a directory.
    """
    stamp: list[int] = []
    octets = 0
    for subdir in _SUBDIRS:
        try:
            info = os.stat(os.path.join(maildir, subdir))
        except OSError:
            return None
        if not stat.S_ISDIR(info.st_mode):
            return None
        stamp += (info.st_dev, info.st_ino, info.st_mtime_ns, info.st_ctime_ns)
        octets += info.st_size
    newest = max(stamp[2::4] + stamp[3::4])
    stamp.append(_STAMP_ORDER)
    return _Directories(tuple(stamp), newest, octets)


def _listDirectory(maildir: str, subdir: str) -> tuple[list[str], list[str], str] | None:
    """
    The names in one subdirectory of a Maildir, dot files left out; their
    base names; and the base names joined by "/" (the one octet no name
    holds).  L{None} if the directory is missing.
    """
    try:
        names = os.listdir(os.path.join(maildir, subdir))
    except FileNotFoundError:
        return None
    joined = "/".join(names)
    if joined.startswith(".") or "/." in joined:
        names = [name for name in names if not name.startswith(".")]
        joined = "/".join(names)
    if ":" in joined:
        bases = [name.partition(":")[0] for name in names]
        joined = "/".join(bases)
    else:
        bases = names
    return names, bases, joined


class _Listing:
    """
    The names in new/ and cur/ at one moment, dot files left out.

    @ivar bases: the base name of every message, in no order; a message
        that moved from new/ to cur/ between the two listings is in it
        twice.
    @ivar parts: for each directory listed: its name, and the names and the
        base names of its files.
    @ivar nameOrder: how comparing the base names as strings sorts them
        (L{_checkNames}).
    @ivar uidsValid: every base name is its own UIDL.
    @ivar sizesInNames: some base name may give its wire size (C{,W=}).
    """

    def __init__(self, maildir: str) -> None:
        self.maildir = maildir
        self.bases: list[str] = []
        self.parts: list[tuple[str, list[str], list[str]]] = []
        # Descriptors of the directories, opened only to measure files in
        # them (an open by name relative to one resolves less path): a
        # login that measures nothing makes no more system calls than the
        # listing needs.
        self._directories: dict[str, int] = {}
        joinedBases = []
        for subdir in _SUBDIRS:
            listed = _listDirectory(maildir, subdir)
            if listed is None:
                continue
            names, bases, joined = listed
            if names:
                self.parts.append((subdir, names, bases))
                self.bases += bases
            joinedBases.append(joined)
        self.nameOrder, self.uidsValid = _checkNames(joinedBases, self.bases)
        self.sizesInNames = any(",W=" in joined for joined in joinedBases)

    def entries(self, wanted: set[str] | None = None) -> dict[str, tuple[int, str]]:
        """
        Where the messages named C{wanted} (all, if L{None}) are: a
        descriptor of their directory, and their file name (cur/ winning
        over new/).

        @raise OSError: a directory cannot be opened.
        """
        found: dict[str, tuple[int, str]] = {}
        for subdir, names, bases in self.parts:
            located: Iterable[tuple[str, tuple[int, str]]]
            located = zip(bases, zip(repeat(self._directory(subdir)), names), strict=True)
            if wanted is not None:
                located = compress(located, map(wanted.__contains__, bases))
            found.update(located)
        return found

    def subdirectory(self, directory: int) -> str:
        """
        The name of the subdirectory whose descriptor L{entries} gave.
        """
        return next(subdir for subdir, fd in self._directories.items() if fd == directory)

    def _directory(self, subdir: str) -> int:
        directory = self._directories.get(subdir)
        if directory is None:
            directory = os.open(
                os.path.join(self.maildir, subdir), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
            )
            self._directories[subdir] = directory
        return directory

    def close(self) -> None:
        directories, self._directories = self._directories, {}
        for directory in directories.values():
            os.close(directory)


def _checkField(template: str, field: str, conversion: str | None, spec: str) -> None:
    """
    Refuse a field of C{template} that L{MaildirTemplate.pathFor} could not
    fill safely: one it does not know, or one with a conversion or format
    spec.  Those would make another name than the login's, which the checks
    of the login name do not see (C{{localpart:.2}} makes C{..} of
    C{..x}), or fail at every login (C{{user:d}}).

    @raise StoreConfigError: the field is refused.
    """
    if field not in _FIELDS:
        raise StoreConfigError(
            f"maildir: unknown field {{{field}}} in {template!r};"
            " use {user}, {localpart} or {domain}"
        )
    if conversion or spec:
        written = field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
        raise StoreConfigError(
            f"maildir: {{{written}}} in {template!r}: a field takes no conversion or"
            f" format spec; write {{{field}}}"
        )


class MaildirTemplate:
    """
    Maps user names to Maildir paths with a template such as
    C{/srv/mail/{user}} or C{/srv/{domain}/{localpart}/Maildir}.
    """

    def __init__(self, template: str) -> None:
        """
        @raise StoreConfigError: the template has no user field, an unknown
            field, a field with a conversion or format spec, bad braces, a
            NUL character, or its fixed leading directory does not exist.
        """
        if not template:
            raise StoreConfigError("maildir: needs a path template, e.g. maildir:/srv/mail/{user}")
        if "\0" in template:
            # No path holds one (the system calls take C strings): refused
            # here, not at every login that would fill it in.
            raise StoreConfigError(f"maildir: template {template!r} holds a NUL character")
        try:
            parsed = [
                (name, conversion, spec or "")
                for _, name, spec, conversion in string.Formatter().parse(template)
                if name is not None
            ]
        except ValueError as e:
            raise StoreConfigError(f"maildir: bad template {template!r}: {e}") from None
        for name, conversion, spec in parsed:
            _checkField(template, name, conversion, spec)
        fields = {name for name, _, _ in parsed}
        if not fields & {"user", "localpart"}:
            raise StoreConfigError(
                f"maildir: template {template!r} must contain {{user}} or {{localpart}}"
            )
        if not os.path.isabs(template):
            # Resolve against the directory popserv starts in (not normpath:
            # that would fold "{user}/.." away), whose braces are its name's.
            started = os.getcwd().replace("{", "{{").replace("}", "}}")
            template = os.path.join(started, template)
        fixed = ""
        for literal, field, _, _ in string.Formatter().parse(template):
            fixed += literal
            if field is not None:
                break
        # The literal text comes unescaped: each brace in it was two in the
        # template ("{{").
        variable = template[len(fixed) + fixed.count("{") + fixed.count("}") :]
        if any(part in (".", "..") for part in variable.split(os.sep)):
            raise StoreConfigError(
                f"maildir: template {template!r} must not use . or .. after a field"
            )
        self.template = template
        self.fields = fields
        # The directory the first field is in: dirname drops the text before
        # the field in its name ("/srv/mail/u-"), or only the final "/".  It
        # must exist as written: the system resolves "/srv/a/.." only if
        # /srv/a is a directory (normalised first, it would be taken
        # without, and the first login would make /srv/a).
        written = os.path.dirname(fixed)
        if not os.path.isdir(written):
            if os.path.exists(written):
                raise StoreConfigError(f"maildir: {written} is not a directory")
            raise StoreConfigError(f"maildir: directory {written} does not exist")
        self.root = os.path.normpath(written)

    def pathFor(self, user: str) -> str:
        """
        The Maildir of C{user}.

        @raise MaildropRefused: the name cannot be mapped safely (it would
            leave the template's directory, or the template needs a domain
            and the name has none).
        """
        localpart, at, domain = user.rpartition("@")
        if not at:
            localpart, domain = user, ""
        if "domain" in self.fields and not domain:
            raise MaildropRefused("Maildrop not available: user name has no domain")
        values = {"user": user, "localpart": localpart, "domain": domain}
        for name in self.fields:
            value = values[name]
            if value in ("", ".", "..") or "/" in value or "\0" in value:
                raise MaildropRefused()
        return self.template.format(**values)


#: How often a file another program keeps moving is looked for again.
_ATTEMPTS = 3


class _Gone(FileNotFoundError):
    """
    No file in new/ or cur/ has a message's base name any more.
    """


class _NotCached(OSError):
    """
    A message read ahead is not in the page cache.
    """


class _ReadAhead:
    """
    Messages read ahead of a client that fetches its mail in order.

    Most clients send RETR 1, RETR 2, ... (fetchmail, getmail, a mail
    reader downloading new mail).  Each message would cost a trip to a
    thread and back: two context switches, which cost about as much CPU as
    encoding and sending a 50 KB message.  So once a client asked for two
    consecutive messages, the trip that opens one also reads the next ones
    whole, up to L{_READ_AHEAD} octets, and they are served from memory.
    When the last of them is served, the next run is read in a thread while
    it is sent and the client asks for the next one (L{fetching}): a client
    that fetches in order then waits for a thread only at the start.

    Touched only on the reactor thread; the worker returns what it read.
    Maildir files never change, and the session holds the lock, so what was
    read a moment ago is what RETR would read now.
    """

    __slots__ = ("fetching", "last", "messages")

    def __init__(self) -> None:
        #: The index last opened.
        self.last = -2
        #: Index -> the whole stored message.
        self.messages: dict[int, bytes] = {}
        #: Fires (with L{None}, never failing) once the run after message
        #: L{last} that a thread is reading is in L{messages}, or was
        #: dropped; L{None} when no such reading is under way.
        self.fetching: Deferred[None] | None = None

    def take(self, index: int) -> tuple[bytes | None, bool]:
        """
        Note that message C{index} is being opened.

        @return: the message if it was read ahead, and whether the client
            is fetching in order (so reading ahead is worth it).
        """
        inOrder = index == self.last + 1
        self.last = index
        data = self.messages.pop(index, None)
        if data is None:
            self.messages.clear()  # read for an order the client left
        return data, inOrder

    def keep(self, index: int, following: dict[int, bytes]) -> None:
        """
        Keep C{following}, the run read after message C{index}, if the
        client is still there; else it was read for an order the client
        left, and is dropped.  (A maildrop that was closed meanwhile has
        dropped this object: what it keeps then goes with it.)
        """
        if self.last == index:
            self.messages = following


#: A message file opened to be read: the file, positioned after the octets
#: read (L{None} if they are the whole message); those octets; its size.
_Opened = tuple[BinaryIO | None, bytes, int]


@trustListings
@implementer(IMaildrop)
class MaildirMaildrop:
    """
    One locked Maildir and the snapshot of its messages.

    The lock is released when the maildrop is closed and no file work it
    started is still running: that work may write the Maildir's index,
    which only the lock's holder may do.
    """

    # Held by every logged-in session, idle ones too.
    __slots__ = (
        "_ahead",
        "_bases",
        "_closed",
        "_disk",
        "_index",
        "_infos",
        "_lockFD",
        "_mutex",
        "_run",
        "_running",
        "_wasWhere",
        "_where",
        "path",
    )

    def __init__(self, path: str, lockFD: int, runInThread: Runner) -> None:
        self.path = path
        self._lockFD: int | None = lockFD
        self._run = runInThread
        # The snapshot, by message index.
        self._bases: list[str] = []
        self._infos: Sequence[MessageInfo] = ()
        # The size on disk each message's sizes were computed from, or
        # NO_SIZE.
        self._disk = numbers()
        # Base name -> (subdir, file name), from a listing made when a file
        # is first needed: the login's own listing is not kept, so that an
        # idle session holds no list of names but its messages'.
        self._where: dict[str, tuple[str, str]] | None = None
        # The listing before it, once one was made again (L{_gone}).
        self._wasWhere: dict[str, tuple[str, str]] | None = None
        self._index: MaildirIndex | None = None
        self._mutex = threading.Lock()
        self._running = 0
        self._ahead: _ReadAhead | None = None
        self._closed = False

    # Thread-side work

    def scan(self, indexes: IndexCache | None = None) -> bool:
        """
        Take the snapshot: list new/ and cur/ and size every message, from
        the index or by reading it, and bring the index up to date.  Runs
        in a thread, once, right after the lock was taken.

        @param indexes: where the store keeps index files parsed.
        @return: whether the index is up to date; it is not if it could not
            be written (logged), and a login goes on without it.
        """
        # Every object it makes is acyclic, and there are hundreds of
        # thousands of them for a big Maildir.
        with _CollectorPaused():
            return self._scan(indexes)

    def _scan(self, indexes: IndexCache | None) -> bool:
        started = time.time_ns()
        directories = _directories(self.path)
        loaded = None
        if directories is not None:
            limit = sizeLimit(0) + _INDEX_PER_DIRECTORY_OCTET * directories.octets
            loaded = MaildirIndex.loadWithin(self.path, limit, indexes)
            if loaded is not None and self._fromIndex(directories.stamp, *loaded):
                return True
        # The stamp this listing earns, taken before it: a change made while
        # or after it lists changes the directories' times.
        stamp = None
        if directories is not None and directories.newest <= started - _SETTLE_NS:
            stamp = directories.stamp
        # Only here, not at every login: an unlink that fails (as it nearly
        # always does) raises an exception, about 10,000 instructions of a
        # real server's 1.39 million per short session (bench_instructions).
        removeLeftover(self.path)
        # new/ first, then cur/: a message moved between the two listings is
        # seen twice, never missed.
        listing = _Listing(self.path)
        try:
            if loaded is None:
                loaded = MaildirIndex.load(self.path, sizeLimit(len(listing.bases)), indexes)
            index, records = loaded
            del loaded
            order, uids = _ordered(listing, records.names)
            known, misses, inOrder = lookup(records, order)
            del records
            dropped, learnt = self._measure(listing, known, misses)
        finally:
            listing.close()
        if dropped:
            # The index will not name every file: no stamp may say it does.
            stamp = None
            keep = [i for i in range(len(order)) if i not in dropped]
            uids = [uids[i] for i in keep]
            known = known.pick(keep)
        updated = self._updateIndex(index, known, learnt, inOrder, stamp)
        self._take(known, uids, index)
        return updated

    def _fromIndex(self, stamp: Stamp, index: MaildirIndex, records: Records) -> bool:
        """
        Take the snapshot from the index if it ends with C{stamp}, that of
        new/ and cur/ now: its records are the messages, in message order.
        False if it does not, or they cannot be (an index changed by
        someone else): then list.
        """
        if index.stamp != stamp:
            return False
        names = records.names
        # The login that wrote the stamp wrote the records in message order,
        # each name once, every one sized.
        if NO_SIZE in records.disk or len(set(names)) != len(names):
            return False
        joined = "/".join(names)
        if joined.count("/") != max(len(names) - 1, 0):
            return False  # a name no file can have
        uids = names if _allUIDs([joined], names) else list(map(uidFor, names))
        self._take(records, uids, index)
        return True

    def _take(self, records: Records, uids: list[str], index: MaildirIndex) -> None:
        """
        Make C{records} (one per message, in message order) the snapshot,
        and keep C{index}.
        """
        self._bases = records.names
        self._disk = records.disk
        self._infos = MessageList(records.wire, uids, records.downgraded)
        # The session keeps its index only to make it forget names; the
        # stamp was for the scan, and its eight large integers took 280
        # octets of every idle session.
        index.stamp = None
        self._index = index

    def _measure(
        self, listing: _Listing, known: Records, misses: list[int]
    ) -> tuple[set[int], Records]:
        """
        Read the messages at the indexes C{misses} of C{known}, which the
        index does not know, filling in their sizes.  Messages another
        program moved or renamed meanwhile (a mail reader moving new/ to
        cur/) are looked for again, at most L{_ATTEMPTS} times in all.

        @return: the indexes of the messages to leave out, and the records
            learnt.
        """
        dropped: set[int] = set()
        if not misses:
            return dropped, Records.empty()
        names = known.names
        # A cold login measures every message: no need to pick them out.
        wanted = None if len(misses) == len(names) else set(map(names.__getitem__, misses))
        where = listing.entries(wanted)
        measured: list[int] = []
        relistings: list[_Listing] = []
        try:
            for attempt in range(_ATTEMPTS):
                vanished = self._sizeFiles(listing, where, known, misses, measured, dropped)
                if not vanished:
                    break
                bases = {names[i] for i in vanished}
                relisted = None if attempt == _ATTEMPTS - 1 else self._relocate(bases)
                if relisted is None:
                    dropped.update(vanished)  # for the next login to find
                    break
                listing, where = relisted
                relistings.append(listing)
                misses = [i for i in vanished if names[i] in where]
                dropped.update(i for i in vanished if names[i] not in where)  # gone
        finally:
            for relisting in relistings:
                relisting.close()
        if len(measured) == len(names):
            # All of them (a first login): the snapshot is what was learnt,
            # and the index takes it as it is rather than a copy.
            return dropped, known
        measured.sort()  # the records learnt, in message order
        return dropped, known.pick(measured)

    def _relocate(self, bases: set[str]) -> tuple[_Listing, dict[str, tuple[int, str]]] | None:
        """
        List new/ and cur/ again, to find the messages C{bases} under the
        names they have now (L{_Listing.entries}); L{None} if a directory
        has become unreadable since the login listed it (the messages then
        wait for the next login).
        """
        listing = None
        try:
            listing = _Listing(self.path)
            return listing, listing.entries(bases)
        except OSError as e:
            if listing is not None:
                listing.close()
            _log.warn("Cannot list {path} again: {e}", path=self.path, e=e)
            return None

    def _sizeFiles(
        self,
        listing: _Listing,
        where: dict[str, tuple[int, str]],
        known: Records,
        indexes: list[int],
        measured: list[int],
        dropped: set[int],
    ) -> list[int]:
        """
        Read the messages at C{indexes} of C{known}, found by C{where}, and
        fill in their sizes: add each to C{measured}, or to C{dropped} if it
        is no message (logged).

        @return: the indexes of the messages whose files were not there.
        """
        names, wire, downgraded, disk = known
        # In message order (about the order the files were written in),
        # except that files not in the page cache come after the others,
        # read while the disk fetches them.  Each file is its key, its
        # directory and its name, (i,) + where[names[i]]: made in C, as a
        # generator expression here took a tenth of a cold login.
        located = map(where.__getitem__, map(names.__getitem__, indexes))
        files = cast("Iterator[tuple[int, int, str]]", map(tuple.__add__, zip(indexes), located))
        knownSize = (lambda i: _knownWireSize(names[i])) if listing.sizesInNames else None
        vanished = []
        for i, sizes in measureEach(files, knownSize):
            if not isinstance(sizes, OSError):
                measured.append(i)
                wire[i], downgraded[i], disk[i] = sizes
            elif isinstance(sizes, FileNotFoundError):
                # Removed, or moved or renamed by another program, while we
                # looked.
                vanished.append(i)
            else:
                # A directory, a link, a FIFO or an unreadable file where a
                # message should be: leave it out (and so never delete it)
                # rather than lock the user out of their other mail.
                directory, name = where[names[i]]
                path = os.path.join(self.path, listing.subdirectory(directory), name)
                # File names are quoted in the log (here and below): whoever
                # delivers names the file, and a line break in the name
                # would start a line of its own, an auth-failed line that
                # the fail2ban filter takes as one.
                _log.warn("Skipping {path!r}: {e}", path=path, e=sizes)
                dropped.add(i)
        return vanished

    def _updateIndex(
        self,
        index: MaildirIndex,
        snapshot: Records,
        learnt: Records,
        inOrder: bool,
        stamp: Stamp | None,
    ) -> bool:
        """
        Write what this scan learnt to the index: append it when the index
        is whole and in order (L{lookup}), else rewrite the index with the
        snapshot's records, so that the next login finds it in order.  End
        it with C{stamp} if given and the index then names exactly the
        snapshot's messages; void an older stamp otherwise.  Never raises:
        without an index the next login just reads the files again.

        @return: False if the index could not be written (logged).
        """
        try:
            if not index.appendable or not inOrder or index.fragmented:
                if snapshot.names or not index.missing:
                    index.rewrite(snapshot, stamp)
            elif learnt.names or stamp != index.stamp:
                index.append(learnt, stamp)
        except Exception:
            _log.failure("Cannot update the index of {path}", path=self.path)
            return False
        return True

    def _whereMap(self) -> dict[str, tuple[str, str]]:
        """
        Where each message is: base name -> (subdir, file name), from a
        listing of new/ and cur/ made when a file is first needed (cur/
        winning, as a message moved between the two is in both).
        """
        with self._mutex:
            if self._where is None:
                where: dict[str, tuple[str, str]] = {}
                for subdir in _SUBDIRS:
                    found = _listDirectory(self.path, subdir)
                    if found is not None:
                        names, bases, _ = found
                        where.update(zip(bases, zip(repeat(subdir), names), strict=True))
                self._where = where
            return self._where

    def _locate(self, base: str, missed: str) -> None:
        """
        Have new/ and cur/ listed again at the next lookup, to find a
        message another program moved, renamed or removed, unless a listing
        made since C{missed} (the path that was not there) was read already.

        One listing serves every message moved or removed before it: a
        mail reader that moves the whole of new/ to cur/ costs one listing,
        not one per message (which made retrieving N moved messages take N
        listings of N names).
        """
        with self._mutex:
            if self._where is not None and self._pathIn(self._where, base) == missed:
                self._listAgain()

    def _gone(self, base: str, where: dict[str, tuple[str, str]]) -> bool:
        """
        Whether message C{base}, not in the listing C{where}, is gone: it is
        in neither that listing nor the one before.  Else list again.

        One listing that lacks a name does not prove it gone: a mail reader
        may move a message back from cur/ to new/ ("mark as new") between
        the reads of the two, or rename it in cur/ while cur/ is read, which
        the read may miss.  Two do; and the two serve every message removed
        before them, so that removed messages cost two listings in all, not
        one each.
        """
        with self._mutex:
            if where is not self._where:
                return False  # listed again meanwhile: look there
            if self._wasWhere is not None and base not in self._wasWhere:
                return True
            self._listAgain()
            return False

    def _listAgain(self) -> None:
        # (The caller holds the mutex.)  _whereMap lists when next asked.
        self._wasWhere, self._where = self._where, None

    def _pathIn(self, where: dict[str, tuple[str, str]], base: str) -> str | None:
        place = where.get(base)
        return None if place is None else os.path.join(self.path, *place)

    def _pathOf(self, base: str) -> str:
        """
        @raise FileNotFoundError: C{base} was not listed.
        """
        path = self._pathIn(self._whereMap(), base)
        if path is None:
            raise FileNotFoundError(errno.ENOENT, "not in new/ or cur/", base)
        return path

    def _open(self, index: int) -> _Opened:
        """
        Open message C{index} and read its start.

        @return: the open file, positioned after the octets read, or
            L{None} if they are the whole message; those octets; and the
            file's size when it was opened.
        @raise MessageUnavailable: it is gone, or cannot be read (logged).
        """
        try:
            return self._read(index)
        except FileNotFoundError:
            raise MessageUnavailable() from None
        except OSError as e:
            # (By base name: the error may be that new/ or cur/ cannot be
            # listed, and then no path is known.)
            base = self._bases[index]
            _log.error(
                "Cannot read message {base!r} in {path}: {e}", base=base, path=self.path, e=e
            )
            raise MessageUnavailable() from None

    def _openReadingAhead(self, index: int) -> tuple[_Opened, dict[int, bytes]]:
        """
        L{_open}, and L{_readRun} after C{index}.
        """
        opened = self._open(index)
        return opened, self._readRun(self._runAfter(index))

    def _readRun(self, run: list[int]) -> dict[int, bytes]:
        """
        The whole of the messages at the indexes C{run} (L{_runAfter}), by
        index; a message that cannot be read ends the run quietly, and its
        own L{_open} reports it.

        A message not in the page cache ends the run too: the disk is asked
        for it and for the rest of the run, all at once, and the next trip
        reads them.  The message asked for never waits for the disk on
        their account, and they are not fetched one after another.
        """
        following: dict[int, bytes] = {}
        for position, later in enumerate(run):
            recorded = self._disk[later]
            try:
                f, data, _ = self._read(later, ahead=True)
            except _NotCached:  # asked of the disk already
                self._advise(run[position + 1 :])
                break
            except OSError:
                break
            if f is not None:  # larger than it was: leave it to RETR
                f.close()
                break
            following[later] = data
            if len(data) != recorded:
                break  # changed since it was sized: the budget no longer adds up
        return following

    def _runAfter(self, index: int) -> list[int]:
        """
        The messages after C{index} that fit in L{_READ_AHEAD} octets, by
        the sizes on disk recorded for them (L{NO_SIZE}, unknown, is over
        any budget).
        """
        disk = self._disk
        budget = _READ_AHEAD
        run = []
        index += 1
        while index < len(disk) and disk[index] <= budget:
            run.append(index)
            budget -= disk[index]
            index += 1
        return run

    def _advise(self, indexes: list[int]) -> None:
        """
        Ask the disk for the messages at C{indexes} (L{popserv.prefetch.advise}).
        """
        for index in indexes:
            try:
                path = self._pathOf(self._bases[index])
            except FileNotFoundError:
                return
            advise(path, self._disk[index], _OPEN_FLAGS)

    def _read(self, index: int, ahead: bool = False) -> _Opened:
        """
        L{_open} without the error handling.

        @param ahead: read only if the start of the file is in the page
            cache; else ask the disk for it and raise L{_NotCached}.
        """
        base = self._bases[index]
        fd = self._retrying(base, lambda path: os.open(path, _OPEN_FLAGS))
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise OSError(errno.EISDIR, "not a regular file")
        except BaseException:
            os.close(fd)
            raise
        recorded = self._disk[index]
        if recorded != NO_SIZE and info.st_size != recorded:
            # Maildir files do not change, but this one did: its listed
            # sizes were for other content.  Let the next login read it.
            _log.warn(
                "{path!r} is {size} octets, not the {recorded} it was sized at;"
                " it will be sized again at the next login",
                path=self._pathOf(base),
                size=info.st_size,
                recorded=recorded,
            )
            self._disk[index] = NO_SIZE
            self._forget([base])
        # Read the start now, in this thread: most messages end within it,
        # and then RETR needs no further trip to a thread.
        try:
            if ahead and not cached(fd):
                # Ask the disk for it now, while it is open (the rest of
                # the run is asked by the caller).
                willNeed(fd, info.st_size)
                raise _NotCached(errno.EAGAIN, "not in the page cache")
            head = os.read(fd, _READ_SIZE)
        except BaseException:
            os.close(fd)
            raise
        if len(head) < _READ_SIZE:
            os.close(fd)
            return None, head, len(head)
        return os.fdopen(fd, "rb", buffering=0), head, info.st_size

    def _retrying(self, base: str, act: Callable[[str], _T]) -> _T:
        """
        C{act} on the path of message C{base}, found again if another
        program moved or renamed it meanwhile, at most L{_ATTEMPTS} times.

        @raise _Gone: no file has that base name any more.
        @raise FileNotFoundError: it moved again at every attempt.
        """
        for attempt in range(_ATTEMPTS):
            where = self._whereMap()
            path = self._pathIn(where, base)
            if path is None:
                if self._gone(base, where):
                    break
                continue
            try:
                return act(path)
            except FileNotFoundError:
                if attempt == _ATTEMPTS - 1:
                    raise
            self._locate(base, path)
        raise _Gone(errno.ENOENT, "no longer in new/ or cur/", base)

    def _forget(self, bases: list[str]) -> None:
        self._changeIndex(lambda index: index.forget(bases))

    def _changeIndex(self, change: Callable[[MaildirIndex], object]) -> None:
        # Like every index update, never fails what the session is doing.
        try:
            with self._mutex:
                if self._index is not None:
                    change(self._index)
        except Exception:
            _log.failure("Cannot update the index of {path}", path=self.path)

    def _delete(self, indexes: Sequence[int]) -> None:
        failed = []
        removed = []
        quotaPath = os.path.join(self.path, MAILDIRSIZE_NAME)
        quota = _openMaildirSize(quotaPath)
        octets = count = 0
        try:
            for index in indexes:
                base = self._bases[index]
                # Sizes are needed only for a quota file, and read from the
                # disk only for names that do not give one (S=).
                named = None if quota is None else _QUOTA_SIZE.search(base)
                unlink: Callable[[str], int | None]
                unlink = os.unlink if quota is None or named else _unlinkCounted
                try:
                    size = self._retrying(base, unlink)
                except _Gone:
                    removed.append(base)  # removed by another program: as the client wished
                    continue
                except OSError as e:
                    # Moved under us at every try, or cannot be removed: kept.
                    _log.error(
                        "Cannot delete {base!r} in {path}: {e}", base=base, path=self.path, e=e
                    )
                    failed.append(index)
                    continue
                removed.append(base)
                if quota is not None:
                    octets += int(named[1]) if named else cast(int, size)
                    count += 1
            # Recorded before the directories are synced: the files are
            # gone whether or not that succeeds.
            if quota is not None:
                _recordRemoved(quota, quotaPath, octets, count)
        finally:
            if quota is not None:
                os.close(quota)
        # Make the unlinks durable before we say +OK.
        for subdir in _SUBDIRS:
            _fsyncDirectory(os.path.join(self.path, subdir))
        # A careless delivery program could give a later message a removed
        # one's name: the index must not vouch for that name any more.
        self._forget(removed)
        if failed:
            raise DeletionFailed(failed)

    # Work in threads, holding the lock

    def _inThread(self, f: Any, *args: Any) -> Deferred[Any]:
        self._running += 1
        # maybeDeferred: a runner that refuses the work at once (stopped, or
        # no thread to be had) fails the Deferred, and the count still goes
        # down, or close() would never unlock.
        d: Deferred[Any] = maybeDeferred(self._run, f, *args)
        return d.addBoth(self._workDone)

    def _workDone(self, result: _T) -> _T:
        self._running -= 1
        if self._closed and not self._running:
            self._unlock()
        return result

    def _unlock(self) -> None:
        fd, self._lockFD = self._lockFD, None
        if fd is not None:
            os.close(fd)

    # IMaildrop

    def listMessages(self) -> Deferred[Sequence[MessageInfo]]:
        return succeed(self._infos)  # read-only: every session may keep it

    def openMessage(self, index: int) -> Deferred[IMessageReader]:
        ahead = self._ahead
        if ahead is None:
            ahead = self._ahead = _ReadAhead()
        fetching = ahead.fetching
        if fetching is not None and index == ahead.last + 1:
            # The next message is being read with the run after the last:
            # wait for it rather than read it twice.
            waited: Deferred[IMessageReader] = Deferred()

            def resume(_: None) -> None:
                if self._closed:
                    # The session ended while it waited: no file work
                    # without the lock, which may be released by now.
                    waited.errback(Failure(MessageUnavailable()))
                    return
                maybeDeferred(self.openMessage, index).chainDeferred(waited)

            fetching.addCallback(resume)
            return waited
        data, inOrder = ahead.take(index)
        if data is not None:
            if not ahead.messages and fetching is None:
                self._fetchAfter(ahead, index)
            return succeed(self._reader(index, (None, data, len(data))))
        if not inOrder:
            d = self._inThread(self._open, index)
            return d.addCallback(lambda opened: self._reader(index, opened))

        def readAhead(result: tuple[_Opened, dict[int, bytes]]) -> IMessageReader:
            opened, following = result
            ahead.keep(index, following)
            return self._reader(index, opened)

        return self._inThread(self._openReadingAhead, index).addCallback(readAhead)

    def _fetchAfter(self, ahead: _ReadAhead, index: int) -> None:
        """
        Read the run after message C{index}, the last one read ahead, in a
        thread, while it is sent; into C{ahead} if the client is still at
        C{index} then (else what it read is dropped).
        """
        run = self._runAfter(index)
        if not run:
            return  # none, or the next one is over the budget: its RETR reads it

        def done(following: dict[int, bytes]) -> None:
            ahead.fetching = None
            ahead.keep(index, following)

        def failed(failure: Failure) -> None:
            # (The runner refused the work: stopping.)  Each RETR reads its
            # own message, and says so if it cannot.
            ahead.fetching = None

        # Kept before the callbacks are added: a runner that has done the
        # work already (in tests) fires them at once, and they clear it.
        ahead.fetching = self._inThread(self._readRun, run)
        ahead.fetching.addCallbacks(done, failed)

    def _reader(self, index: int, opened: _Opened) -> IMessageReader:
        f, head, size = opened
        reader = FileReader(f, self._run, head, size)
        base = self._bases[index]
        if size < _FIRST_READ or ",W=" not in base or _knownWireSize(base) is None:
            return reader  # sized by reading it at login: nothing to check
        return _NamedSizeReader(
            reader, self._infos[index].size, lambda counted: self._wrongSize(index, size, counted)
        )

    def _wrongSize(self, index: int, disk: int, counted: int) -> None:
        """
        Message C{index}, C{disk} octets when it was opened, has the wire
        size C{counted}, not the one listed (from its name): logged, and
        kept in the index, so that the next login lists it so.
        """
        base = self._bases[index]
        info = self._infos[index]
        _log.warn(
            "Message {base!r} in {path} has {counted} octets on the wire, not the {listed}"
            " it was listed with; listed so from the next login",
            base=base,
            path=self.path,
            counted=counted,
            listed=info.size,
        )
        if self._closed or disk != self._disk[index]:
            return  # changed since it was sized: forgotten, it is read again
        # The header's growth for a client without UTF8 is the same.
        growth = 0 if info.downgradedSize is None else info.downgradedSize - info.size
        downgraded = counted + growth
        record = Records([base], numbers([counted]), numbers([downgraded]), numbers([disk]))
        self._inThread(self._changeIndex, lambda index: index.append(record))

    def deleteMessages(self, indexes: Sequence[int]) -> Deferred[None]:
        return self._inThread(self._delete, list(indexes))

    def close(self) -> None:
        self._closed = True
        self._ahead = None
        if not self._running:
            self._unlock()


#: The Maildir++ quota file in a Maildir's root (Courier's
#: README.maildirquota; Dovecot's quota = maildir keeps it too).
MAILDIRSIZE_NAME = "maildirsize"
#: The size a Maildir++ writer puts in a message's name: ",S=" and digits,
#: ending the name or followed by another "," field (as Dovecot reads it,
#: maildir_sum_dir in src/plugins/quota/quota-maildir.c).  The quota
#: counts a message by it, and by its size on disk only without it.
_QUOTA_SIZE = re.compile(r",S=([0-9]+)(?:,|\Z)")


def _lockAndScan(
    path: str, runInThread: Runner, indexes: IndexCache | None, makeFrom: str | None
) -> tuple[MaildirMaildrop, bool]:
    """
    Lock the Maildir at C{path} and take its snapshot (L{MaildirMaildrop.scan}):
    the maildrop, and whether its index is up to date.

    @param makeFrom: where to make whatever is missing of the Maildir from
        (the template's fixed directory), at its first login; L{None} to
        make only the lock file, in a Maildir that must be there.
    @raise MaildropInUse: another session holds the lock.
    @raise OSError: the Maildir cannot be made, locked or listed.
    """
    lockPath = os.path.join(path, LOCK_NAME)
    try:
        # Not through a symbolic link, which could have the server
        # create or lock a file anywhere it may write.
        fd = os.open(lockPath, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        # The first login to this Maildir: make whatever is missing of
        # it.  (Trying to make it at every login cost four system calls
        # of the thirty a login makes.)
        if makeFrom is not None:
            _makePrivateDirectories(makeFrom, path)
        fd = os.open(lockPath, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise MaildropInUse() from None
        raise
    maildrop = MaildirMaildrop(path, fd, runInThread)
    try:
        return maildrop, maildrop.scan(indexes)
    except BaseException:
        maildrop.close()
        raise


class NotAMaildir(ValueError):
    """
    What L{indexMaildir} was given is not a Maildir: not a directory, or
    one without a C{new/} or C{cur/} directory.  The message says which.
    """


class IndexNotWritten(Exception):
    """
    L{indexMaildir} read the Maildir but could not write its index; the
    log says why.
    """


def indexMaildir(path: str) -> tuple[int, int]:
    """
    Bring the index of the Maildir at C{path} up to date, as a login to it
    does, so that the next login reads only the message files that came
    after it (C{popserv index}; docs/maildir.rst).  It takes the Maildir's
    lock for as long as it works, as a session does, and makes nothing but
    the lock file and the index.

    Run as root on another user's Maildir, it gives those two files to
    the Maildir's owner if they are root's, as root makes them: a server
    running as that user could not open them, and would turn its logins
    away.  Files another user owns are left as they are.

    @return: the number of messages and their size on the wire together,
        as C{STAT} gives them.
    @raise NotAMaildir: C{path} is not a directory, or has no C{new/} or
        C{cur/} directory.
    @raise MaildropInUse: a session (or another indexing) holds the lock.
    @raise IndexNotWritten: the index could not be written.
    @raise OSError: the Maildir cannot be locked or listed.
    """
    # Named in the error if it is not there at all.
    info = os.stat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise NotAMaildir("not a directory")
    if _directories(path) is None:
        raise NotAMaildir("not a Maildir (no new/ or cur/ directory)")

    def giveAway() -> None:
        if os.geteuid() == 0 and info.st_uid != 0:
            for name in (LOCK_NAME, INDEX_NAME):
                _giveFile(os.path.join(path, name), (info.st_uid, info.st_gid))

    try:
        maildrop, indexed = _lockAndScan(path, maybeDeferred, None, None)
    except BaseException:
        giveAway()  # the lock file, if the scan failed after it was made
        raise
    try:
        # A login goes on without an index it could not write (the scan
        # logged why); here the index is the point.
        if not indexed:
            raise IndexNotWritten("the index could not be written")
        # The snapshot a scan takes is always a MessageList (_take).
        listing = cast(MessageList, maildrop._infos)
        return len(listing), sum(listing.sizes)
    finally:
        giveAway()  # before the lock is let go: no login finds them root's
        maildrop.close()


def _giveFile(path: str, owner: tuple[int, int]) -> None:
    """
    Give the file at C{path} to C{owner} (L{_giveOpen}); a symbolic link is
    never followed, and a missing file skipped.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        _giveOpen(fd, os.fstat(fd), owner)
    finally:
        os.close(fd)


def _giveOpen(fd: int, made: os.stat_result, owner: tuple[int, int]) -> None:
    """
    Give the open file C{fd}, which C{os.fstat} described as C{made}, to
    C{owner} (user and group) if it is this process's own, where the
    process may (it runs as root).  Through the descriptor, so that a file
    replaced meanwhile is never the one changed; another user's is left.
    """
    if made.st_uid == os.geteuid() and (made.st_uid, made.st_gid) != owner:
        with contextlib.suppress(PermissionError):
            os.fchown(fd, *owner)


def _openMaildirSize(path: str) -> int | None:
    """
    The Maildir's quota file at C{path} opened for appending, or L{None}
    if there is none.  It is not created: a Maildir without one has no
    quota, or the next program that needs the quota counts the Maildir
    afresh.
    """
    # The Maildir's owner may put anything there: a symbolic link is
    # refused (ELOOP), and a FIFO opened without O_NONBLOCK would hold
    # the thread until something reads it (with it, ENXIO, or a FIFO
    # that is read is refused as not a regular file).
    flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as e:
        _log.warn("Cannot record the deletions in {path}: {e}", path=path, e=e)
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        _log.warn("Cannot record the deletions in {path}: not a regular file", path=path)
        return None
    return fd


def _unlinkCounted(path: str) -> int:
    """
    Remove the file at C{path}; its size.  (A file renamed between the two
    calls fails the unlink, and is found again by L{_retrying}.)
    """
    size = os.lstat(path).st_size
    os.unlink(path)
    return size


def _recordRemoved(fd: int, path: str, octets: int, count: int) -> None:
    """
    Append to the quota file C{path}, open at C{fd}, that C{count}
    messages of C{octets} were removed.  The Maildir++ rules
    have every program that removes mail append such a line, in one write
    so that it stays whole among other programs' appends.  Without it, the
    quota goes on counting the mail, and a Maildir that was nearly full
    refuses new mail: readers count the Maildir afresh only when the file
    reaches 5120 octets, or says the Maildir is over its limit (and has
    more lines than one, or is 15 minutes old).
    """
    try:
        if count:
            os.write(fd, b"%d %d\n" % (-octets, -count))
    except OSError as e:
        _log.warn("Cannot record the deletions in {path}: {e}", path=path, e=e)


def _makePrivateDirectories(root: str, path: str) -> None:
    """
    Create the Maildir at C{path} with cur/, new/ and tmp/, and any missing
    directories between C{root} and it, each mode 0700 and owned as
    L{_makeDirectory} says.  (C{os.makedirs} would give its mode to the
    last directory alone.)  C{root} itself is never made: gone, it is a
    file system not mounted, or removed by someone who meant it.

    @param root: the normalised fixed directory of C{path}'s template, which
        C{path} may spell otherwise ("/srv//mail/bob", "/srv/up/../mail/bob").
    """
    missing: list[str] = []
    parent = path
    while os.path.normpath(parent) != root and not os.path.isdir(parent) and len(missing) < 64:
        missing.append(parent)
        parent = os.path.dirname(parent)
    for directory in reversed(missing):
        _makeDirectory(directory)
    for subdir in ("cur", "new", "tmp"):
        _makeDirectory(os.path.join(path, subdir))


def _makeDirectory(path: str) -> None:
    """
    Make the directory C{path}, mode 0700, and give it the owner and group
    of the directory it is made in, where the server may (it runs as
    root); one that exists is left as it is.

    The delivery agent writes to the Maildir as the owner of the place it
    is in: Postfix's local(8) as the user whose home it is
    (C{home_mailbox = Maildir/}), virtual(8) as C{virtual_uid_maps}, the
    owner of C{virtual_mailbox_base}.  A Maildir a server running as root
    made for a user's first login, before any mail, was root's, and
    Postfix refused every message to it: local(8) bounced each one
    ("maildir delivery failed: create maildir file ...: Permission
    denied", 5.2.0), virtual(8) deferred it.  A server that may not give
    the directory away keeps it, as before.

    The directory is changed through a descriptor opened without following
    a symbolic link, and only while it is the server's: the owner of the
    directory it is in (a user's home) could replace it meanwhile, and
    must not be given one of the server's directories elsewhere.
    """
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        made = os.fstat(fd)
        parent = os.stat(os.pardir, dir_fd=fd)
        owner = (parent.st_uid, parent.st_gid)
        if parent.st_mode & stat.S_IWOTH:
            # (Postfix's mail_spool_directory, mode 1777.)  Its owner says
            # nothing of whose the new directory is, so it stays the
            # server's, and a delivery agent writing as the user will be
            # refused: say so where the operator looks when mail bounces.
            _log.warn(
                "Made {path!r} in a directory every user may write; it is the"
                " server's (uid {uid}), so a delivery agent that writes as the"
                " user cannot deliver to it: make users' Maildirs there beforehand",
                path=path,
                uid=made.st_uid,
            )
        else:
            _giveOpen(fd, made, owner)
    finally:
        os.close(fd)


def _fsyncDirectory(path: str) -> None:
    """
    Make the removals from directory C{path} durable.  A failure is logged
    and otherwise ignored: the messages are gone from the listing already,
    and what a crash could undo is only that (they would come back, to be
    downloaded twice, never lost).  Some file systems do not sync
    directories at all (EINVAL): that is no failure.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        _log.warn("Cannot open {path} to sync its deletions: {e}", path=path, e=e)
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno != errno.EINVAL:
            _log.warn("Cannot sync the deletions in {path}: {e}", path=path, e=e)
    finally:
        os.close(fd)


def _unavailable(failure: Any, user: str) -> Any:
    """
    A system error opening C{user}'s maildrop (an L{OSError}: a directory
    that cannot be made, a lock that is a link, no locks over NFS) is
    logged, with its reason, and answered L{MaildropUnavailable}, whose
    reply does not show it; a refused name or a maildrop in use passes.
    """
    if failure.check(OSError):
        _log.error("Maildrop of {user!r} unavailable: {e}", user=user, e=failure.value)
        raise MaildropUnavailable()
    return failure


@implementer(IMailStore)
class MaildirStore:
    """
    Maildirs found by a path template.

    >>> store = MaildirStore("/srv/mail/{user}")  # doctest: +SKIP
    """

    def __init__(self, template: str, runInThread: Runner | None = None) -> None:
        """
        @param template: where each user's Maildir is; see L{MaildirTemplate}.
        @param runInThread: runs a blocking callable and returns a Deferred
            of its result; L{popserv.threads.deferToThread} if L{None}.
        @raise StoreConfigError: the template is not usable.
        """
        self.template = MaildirTemplate(template)
        self._run = runInThread or deferToThread
        self._indexes = IndexCache()

    def _lock(self, user: str) -> MaildirMaildrop:
        """
        Lock and list C{user}'s Maildir, made at the first login (in a
        worker thread: every step is a system call that may wait).

        @raise MaildropRefused: the name has no safe path.
        @raise MaildropInUse: another session holds the lock.
        @raise OSError: the Maildir cannot be made, locked or listed.
        """
        path = self.template.pathFor(user)
        # A login goes on without an index it could not write (logged).
        maildrop, _ = _lockAndScan(path, self._run, self._indexes, self.template.root)
        return maildrop

    def openMaildrop(self, user: str) -> Deferred[IMaildrop]:
        d: Deferred[IMaildrop] = self._run(self._lock, user)
        return d.addErrback(_unavailable, user)
