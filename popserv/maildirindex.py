"""
The persistent index of a Maildir: what popserv learnt about each message by
reading it, so the next login need not read it again.

A message file's name (up to the ":" of the flags: its I{base name}) never
changes its content (Maildir names are unique, and files are not rewritten),
so the index maps base names to what reading the file told: the wire size,
the downgraded wire size (RFC 6856, L{popserv.downgrade}) and the size on
disk it was computed from.  It is a cache and nothing more:

 - the messages of a session come from listing C{new/} and C{cur/}, and the
   index only supplies sizes for the names it has; unless the index ends
   with a I{stamp} that the two directories still match (below);
 - a message opened with a different size on disk than recorded is
   forgotten (L{MaildirIndex.forget}) so the next login reads it again, and
   so are the messages a session deletes (a careless delivery program could
   give a later message the same name);
 - a missing, unreadable, damaged or unknown-version file is rebuilt;
 - a store keeps small files parsed in memory (L{IndexCache}) only while
   the file is the one it parsed.

Nothing cheaper than a C{stat} per file would check more at login: the
inode numbers that a directory listing gives for free would catch a file
replaced under its name, but asking for them (C{scandir} rather than
C{listdir}) and comparing them costs a quarter of a warm login.

The file, C{popserv.index} in the Maildir, is written only by the holder of
the Maildir's lock.  It is a text header line followed by I{blocks}, each
a self-checking batch of records, and I{stamps}::

    popserv-maildir-index 6\\n
    block COUNT NAMESLENGTH CRC32\\n       (ASCII: decimal, decimal, 8 hex digits)
    NAMES                                 (NAMESLENGTH octets: COUNT base names,
                                           UTF-8 with surrogateescape, NUL-separated)
    WIRE DOWNGRADED DISK                  (3 x COUNT unsigned 64-bit little-endian)
    stamp VALUE ... CRC32\\n              (ASCII: 1 to 16 signed decimals, 8 hex digits)

CRC32 (C{zlib.crc32}) covers NAMES and the numbers, or a stamp line up to
its last space.  A later record for a name replaces an earlier one; a
record whose DISK is L{NO_SIZE} (no file is that large) forgets the name.

A login that learns new sizes I{appends} one block (one C{write}).  When
the file did not parse to its end, or has records of messages that are gone
or out of order, or many blocks, the login I{rewrites} it whole instead, so
that the next login reads an index that matches its listing: into
C{popserv.index.tmp}, then renamed over C{popserv.index}.  So a writer
killed at any moment leaves the old index (a torn appended block fails its
check and is ignored, up to the next rewrite) or the new one; a leftover
temporary file is removed by the next login that lists the Maildir
(L{removeLeftover}) or the next writer.  Nothing is fsynced: after a
power failure the worst case is a damaged file, which is detected and
rebuilt, and an fsync per login would cost more than the rebuild saves.

A stamp says that the records before it are exactly the messages of the
Maildir, in message order, as long as its directories are in the state the
stamp's values describe (L{popserv.maildir} writes and checks them; to this
module they are numbers).  It counts only as the last thing in the file:
anything appended after it, even a record that forgets a name, voids it.
Files of versions 1 to 5 are recognised and rebuilt at the next login, as
a missing file is, without a warning: their downgraded sizes followed older
rules, and no record shows which ones (a message whose header is not ASCII
may have grown by nothing under the old rule and not under the new), so
each file is read again once.

Why binary numbers in a text frame, rather than text records: loading 100,000
records this way takes about 15 ms (one C{split}, three C{array.frombytes});
parsing them as text lines takes about 60 ms, a third of the time a warm
login of that size may take.  Nothing in the file is evaluated: it can only
ever produce strings and unsigned integers, so a file written by someone
else (the Maildir's owner can write it) can at worst give wrong sizes for
that Maildir's own messages, which reading a message then catches, or, with
a stamp, a wrong list of them (L{popserv.maildir} says what that can do).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import sys
import threading
import zlib
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from itertools import compress, repeat
from typing import NamedTuple

from twisted.logger import Logger

INDEX_NAME = "popserv.index"
TEMP_NAME = "popserv.index.tmp"
#: The current version, 6.  The versions before it had the same blocks
#: (version 1 no stamps), with sizes worked out by older rules, and are
#: rebuilt unread: version 5 had an older rule for a MIME field that names
#: an ASCII parameter twice; 4, for a MIME parameter a field also gives in
#: RFC 2231's form; 3, for MIME parameters, and WIRE taken from a name's
#: ,W= even for a file read whole; 2, for address fields too.
VERSION = 6
MAGIC = b"popserv-maildir-index %d\n" % VERSION
_HEADER = re.compile(rb"popserv-maildir-index (\d{1,9})\n")

#: An index may be this large before it is ignored (and rebuilt) unread,
#: plus L{_BYTES_PER_MESSAGE} for every listed message: a record takes at
#: most 255 + 1 + 24 octets, so this allows for many records of messages
#: deleted since the index was written.
_BASE_LIMIT = 4 * 1024 * 1024
_BYTES_PER_MESSAGE = 1024
#: The longest block header line: "block", three numbers, spaces, LF.
_MAX_HEADER_LINE = 64
#: The most values a stamp may have.
_MAX_STAMP_VALUES = 16
#: A stamp line: "stamp", 1 to L{_MAX_STAMP_VALUES} integers of at most 21
#: characters, sign included (a 64-bit value takes 20), the CRC-32 of what
#: precedes it in 8 hex digits, LF.  One match instead of a check per field:
#: a login whose index is up to date parses one at every login.  Each field
#: starts with a space, so the match cannot backtrack far on a damaged line.
_STAMP_LINE = re.compile(
    rb"(stamp(?: (?:-[0-9]{1,20}|[0-9]{1,21})){1,%d}) ([0-9a-f]{8})\n" % _MAX_STAMP_VALUES
)
#: Rewrite, rather than append to, an index with this many blocks and
#: stamps.
_MAX_BLOCKS = 32
#: A size on disk that no file has: in a record it forgets the name, and
#: for a message it says that no size on disk is known.
NO_SIZE = 2**64 - 1
_COLUMNS = 3

_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
_APPEND_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

_log = Logger()

#: What a stamp records: signed integers, at most L{_MAX_STAMP_VALUES}.
Stamp = tuple[int, ...]


def numbers(values: Iterable[int] = ()) -> array[int]:
    """
    A column of unsigned 64-bit numbers.
    """
    return array("Q", values)


class Records(NamedTuple):
    """
    Records as parallel columns: element C{i} of each is about C{names[i]}.
    """

    names: list[str]
    wire: array[int]
    downgraded: array[int]
    disk: array[int]

    @classmethod
    def empty(cls) -> Records:
        return cls([], numbers(), numbers(), numbers())

    def add(self, name: str, wire: int, downgraded: int, disk: int) -> None:
        """
        Add one record at the end.
        """
        self.names.append(name)
        self.wire.append(wire)
        self.downgraded.append(downgraded)
        self.disk.append(disk)

    def copy(self) -> Records:
        """
        Records that share nothing changeable with these.
        """
        return Records(self.names[:], self.wire[:], self.downgraded[:], self.disk[:])

    def pick(self, keep: Sequence[int]) -> Records:
        """
        The records at the indexes C{keep}, in that order.
        """
        return Records(
            [self.names[i] for i in keep],
            numbers(map(self.wire.__getitem__, keep)),
            numbers(map(self.downgraded.__getitem__, keep)),
            numbers(map(self.disk.__getitem__, keep)),
        )


def sizeLimit(messages: int) -> int:
    """
    The size above which the index of a Maildir with C{messages} listed
    messages is not read.
    """
    return _BASE_LIMIT + _BYTES_PER_MESSAGE * messages


def _littleEndian(column: array[int]) -> bytes:
    if sys.byteorder == "big":
        column = array("Q", column)
        column.byteswap()
    return column.tobytes()


def encodeBlock(records: Records) -> bytes:
    """
    One block holding C{records}.

    @raise ValueError: a name holds a NUL (no file name can).
    """
    joined = "\0".join(records.names)
    if joined.count("\0") != max(len(records.names) - 1, 0):
        raise ValueError("a name holds NUL")
    names = joined.encode("utf-8", "surrogateescape")
    columns = b"".join(
        _littleEndian(column) for column in (records.wire, records.downgraded, records.disk)
    )
    crc = zlib.crc32(columns, zlib.crc32(names))
    header = b"block %d %d %08x\n" % (len(records.names), len(names), crc)
    return header + names + columns


class Parsed(NamedTuple):
    """
    What L{parse} made of an index file.

    @ivar records: the records of every intact block, in file order.
    @ivar blocks: how many blocks were intact.
    @ivar end: how many octets parsed: the file's length when it parsed to
        its end, less when the rest was damaged.
    @ivar problem: why the file (or its rest from C{end}) was not used, or
        L{None}.
    @ivar stamp: the stamp that ends the file, if one does and the file
        parsed to its end.
    @ivar version: the file's version (1 to L{VERSION}), 0 if it has none.
    """

    records: Records
    blocks: int
    end: int
    problem: str | None
    stamp: Stamp | None = None
    version: int = VERSION


def encodeStamp(stamp: Stamp) -> bytes:
    """
    A stamp line holding C{stamp}.

    @raise ValueError: it has no values, or too many.
    """
    if not 0 < len(stamp) <= _MAX_STAMP_VALUES:
        raise ValueError(f"a stamp has 1 to {_MAX_STAMP_VALUES} values, not {len(stamp)}")
    line = b"stamp " + b" ".join(b"%d" % value for value in stamp)
    return line + b" %08x\n" % zlib.crc32(line)


def parse(data: bytes) -> Parsed:
    """
    Parse the contents of an index file.  Never raises: a damaged block
    ends the parse, and the blocks before it are kept.
    """
    records = Records.empty()
    header = _HEADER.match(data)
    version = int(header.group(1)) if header else 0
    if 0 < version < VERSION:
        # Rebuilt whatever it holds (module docstring): not worth parsing.
        return Parsed(records, 0, 0, f"an older version ({version})", None, version)
    if version != VERSION:
        # (Its version may have more digits than this one's header holds.)
        firstLine = data[:_MAX_HEADER_LINE].split(b"\n", 1)[0]
        if firstLine.startswith(b"popserv-maildir-index "):
            return Parsed(records, 0, 0, f"an unknown version {firstLine[22:32]!r}", None, 0)
        # Each problem completes "The index PATH has ...".
        problem = "no popserv index header" if data else "nothing in it"
        return Parsed(records, 0, 0, problem, None, 0)
    position = len(MAGIC)
    blocks = 0
    stamp: Stamp | None = None
    while position < len(data):
        if data.startswith(b"stamp ", position):
            parsedStamp = _parseStamp(data, position)
            if isinstance(parsedStamp, str):
                problem = f"{parsedStamp} at offset {position}"
                return Parsed(records, blocks, position, problem, None, version)
            position, stamp = parsedStamp
            blocks += 1
            continue
        block = _parseBlock(data, position)
        if isinstance(block, str):
            return Parsed(records, blocks, position, f"{block} at offset {position}", None, version)
        position, names, columns = block
        records.names.extend(names)
        for column, values in zip(records[1:], columns, strict=True):
            column.extend(values)
        blocks += 1
        stamp = None  # records after a stamp void it
    return Parsed(records, blocks, position, None, stamp, version)


def _parseStamp(data: bytes, start: int) -> str | tuple[int, Stamp]:
    """
    The stamp line at C{start}: where the next item starts, and its
    values; or what is wrong with it.
    """
    match = _STAMP_LINE.match(data, start)
    if match is None:
        return "a damaged stamp"
    line, crc = match.groups()
    if zlib.crc32(line) != int(crc, 16):
        return "a stamp that fails its checksum"
    return match.end(), tuple(map(int, line[len(b"stamp ") :].split(b" ")))


def _parseBlock(data: bytes, start: int) -> str | tuple[int, list[str], list[array[int]]]:
    """
    The block at C{start}: where the next one starts, its names and its
    number columns; or what is wrong with it.
    """
    lineEnd = data.find(b"\n", start, start + _MAX_HEADER_LINE)
    if lineEnd < 0:
        return "a damaged block header"
    fields = data[start:lineEnd].split(b" ")
    if (
        len(fields) != 4
        or fields[0] != b"block"
        or not fields[1].isdigit()
        or not fields[2].isdigit()
        or len(fields[3]) != 8
        or fields[3].strip(b"0123456789abcdef")
    ):
        return "a damaged block header"
    count, namesLength, crc = int(fields[1]), int(fields[2]), int(fields[3], 16)
    namesStart = lineEnd + 1
    numbersStart = namesStart + namesLength
    end = numbersStart + 8 * _COLUMNS * count
    if end > len(data):
        return "a truncated block"
    crcNow = zlib.crc32(data[namesStart:numbersStart])
    if zlib.crc32(data[numbersStart:end], crcNow) != crc:
        return "a block that fails its checksum"
    names = data[namesStart:numbersStart].decode("utf-8", "surrogateescape").split("\0")
    if names == [""] and count == 0:
        names = []
    if len(names) != count:
        return "a block with the wrong number of names"
    columns = []
    for column in range(_COLUMNS):
        values = numbers()
        offset = numbersStart + 8 * count * column
        values.frombytes(data[offset : offset + 8 * count])
        if sys.byteorder == "big":
            values.byteswap()
        columns.append(values)
    return end, names, columns


def lookup(records: Records, names: list[str]) -> tuple[Records, list[int], bool]:
    """
    The latest record of each of the distinct C{names} in C{records}.

    @return: the records in the order of C{names} (sizes 0 and disk size
        L{NO_SIZE} where there is none); the indexes in C{names} of those
        without one; and whether C{records} are exactly records of the
        first of C{names}, in order, so that new records can be appended
        and the next lookup will be as quick.
    """
    known = len(records.names)
    if names[:known] == records.names and NO_SIZE not in records.disk:
        # The common case, which needs no lookups: the index was written by
        # the last login and holds no messages that are gone, and new mail
        # sorts after the old.
        new = len(names) - known
        found = Records(
            names,
            records.wire + numbers(repeat(0, new)),
            records.downgraded + numbers(repeat(0, new)),
            records.disk + numbers(repeat(NO_SIZE, new)),
        )
        return found, list(range(known, len(names))), True
    # Later records win: dict() keeps the last value given for a key.
    position = dict(zip(records.names, range(known), strict=True))
    for forgotten in compress(range(known), map(NO_SIZE.__eq__, records.disk)):
        name = records.names[forgotten]
        if position.get(name) == forgotten:
            del position[name]
    positions = list(map(position.get, names, repeat(known)))
    missing = list(compress(range(len(names)), map(known.__eq__, positions)))

    def column(values: array[int], default: int) -> array[int]:
        padded = numbers(values)
        padded.append(default)  # at position "known": no record
        return numbers(map(padded.__getitem__, positions))

    found = Records(
        names,
        column(records.wire, 0),
        column(records.downgraded, 0),
        column(records.disk, NO_SIZE),
    )
    return found, missing, False


def _copied(parsed: Parsed) -> Parsed:
    # An entry's records never leave the cache, nor do a caller's enter it:
    # a login may keep the records it loaded as its snapshot and change them
    # (a message whose file changed size gets NO_SIZE), while another login
    # to the same Maildir loads them again.
    return parsed._replace(records=parsed.records.copy())


def _identity(info: os.stat_result) -> tuple[int, ...]:
    # What every write of an index file changes: appending changes its size
    # and its times, rewriting makes a new file (a new inode, new times).
    # The size is third (L{_Cached.octets}).
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


class _Cached(NamedTuple):
    """
    An index file as parsed (whole, of the current version), and which file
    it was.  Its records are the cache's own: they go in and come out as
    copies (L{IndexCache.put}, L{IndexCache.get}).
    """

    identity: tuple[int, ...]
    parsed: Parsed

    @property
    def octets(self) -> int:
        """
        The file's size, which its identity holds.
        """
        return self.identity[2]


class IndexCache:
    """
    Index files parsed by one process, kept so that a login whose index has
    not changed since the last login to that Maildir takes its records
    without reading and parsing the file again: one C{lstat} instead of
    opening, reading and closing it, and the parse.  Counted with
    C{bench_instructions.py}, that is about 80,000 instructions of the
    1,210,000 of a login session to a small Maildir.

    An entry counts only while the file is the one it was parsed from: the
    same device, inode, size, and modification and change times.  Every
    write of an index changes one of these (an append its size, a rewrite
    makes a new file), whoever makes it, another popserv process included;
    and a L{MaildirIndex} of this process drops the entry before it writes
    the file.  Only whole files (of the current version, that parsed to
    their end) of at most C{maxFileOctets} are kept, up to C{maxOctets} of
    them in all, the least recently used going first.  In memory an entry
    takes about three times the octets of its file.

    Thread-safe: logins to different Maildirs run in different threads.
    """

    def __init__(self, maxFileOctets: int = 8 * 1024, maxOctets: int = 2 * 1024 * 1024) -> None:
        self.maxFileOctets = maxFileOctets
        self.maxOctets = maxOctets
        self._entries: OrderedDict[str, _Cached] = OrderedDict()
        self._octets = 0
        self._mutex = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def octets(self) -> int:
        """
        The size of the files whose records are kept.
        """
        return self._octets

    def get(self, path: str, limit: int) -> Parsed | None:
        """
        What the index file C{path} parsed to, if the file is still the one
        it was parsed from and at most C{limit} octets long; else L{None},
        and the entry is dropped.  The records are a copy, the caller's to
        change.
        """
        with self._mutex:
            entry = self._entries.get(path)
            if entry is None:
                return None
            self._entries.move_to_end(path)
        try:
            identity: tuple[int, ...] | None = _identity(os.lstat(path))
        except OSError:
            identity = None
        if identity != entry.identity or entry.octets > limit:
            self.drop(path)
            return None
        return _copied(entry.parsed)

    def put(self, path: str, info: os.stat_result, parsed: Parsed) -> None:
        """
        Keep what the index file C{path}, as C{info} (its C{fstat}) says
        it was, C{parsed} to, if it is worth keeping.
        """
        octets = info.st_size
        if parsed.problem is not None or parsed.version != VERSION or octets > self.maxFileOctets:
            return
        entry = _Cached(_identity(info), _copied(parsed))
        with self._mutex:
            self._remove(path)
            self._entries[path] = entry
            self._octets += octets
            while self._octets > self.maxOctets:
                oldest = next(iter(self._entries))
                self._remove(oldest)

    def drop(self, path: str) -> None:
        """
        Forget the index file C{path}.
        """
        with self._mutex:
            self._remove(path)

    def _remove(self, path: str) -> None:
        # Holding the mutex.
        entry = self._entries.pop(path, None)
        if entry is not None:
            self._octets -= entry.octets


class MaildirIndex:
    """
    The index file of one Maildir, as one session found and keeps it.  Every
    method does file I/O: call it in a thread, holding the Maildir's lock.

    @ivar missing: there was no index file.
    @ivar blocks: the number of blocks and stamps in the file.
    @ivar stamp: the stamp that ends the file, or L{None}; a holder done
        comparing it may set it to L{None}, as only comparisons read it.
    """

    # Every logged-in session holds one, so its path is made when needed.
    __slots__ = ("_appendAt", "_cache", "blocks", "maildir", "missing", "stamp")

    def __init__(self, maildir: str, cache: IndexCache | None = None) -> None:
        self.maildir = maildir
        # Where this process keeps the file parsed, if anywhere: told of
        # every write.
        self._cache = cache
        self.missing = True
        self.blocks = 0
        self.stamp: Stamp | None = None
        # Where the next block goes: the file's size when it parsed to its
        # end (so appending is safe), else None (rewrite it).
        self._appendAt: int | None = None

    @property
    def path(self) -> str:
        return os.path.join(self.maildir, INDEX_NAME)

    @classmethod
    def load(
        cls, maildir: str, limit: int, cache: IndexCache | None = None
    ) -> tuple[MaildirIndex, Records]:
        """
        Read the index of C{maildir}: the index and its records.  An index
        larger than C{limit} octets, unreadable or damaged is logged and
        its intact blocks (if any) used; a missing one is empty.  With a
        C{cache}, records kept there of the same file are taken instead of
        reading it, and what is read is kept there.
        """
        loaded = cls._load(maildir, limit, cache, quiet=False)
        assert loaded is not None
        return loaded

    @classmethod
    def loadWithin(
        cls, maildir: str, limit: int, cache: IndexCache | None = None
    ) -> tuple[MaildirIndex, Records] | None:
        """
        L{load}, but L{None}, with nothing logged, when the index is larger
        than C{limit} octets: for a caller that will know a better limit
        later.
        """
        return cls._load(maildir, limit, cache, quiet=True)

    @classmethod
    def _load(
        cls, maildir: str, limit: int, cache: IndexCache | None, quiet: bool
    ) -> tuple[MaildirIndex, Records] | None:
        index = cls(maildir, cache)
        parsed = cache.get(index.path, limit) if cache is not None else None
        if parsed is None:
            try:
                data, info = _readBounded(index.path, limit)
            except FileNotFoundError:
                return index, Records.empty()
            except OSError as e:
                if quiet and isinstance(e, _TooLarge):
                    return None
                index.missing = False
                _log.warn("Ignoring the index {path}: {e}; rebuilding it", path=index.path, e=e)
                return index, Records.empty()
            parsed = parse(data)
            if cache is not None:
                cache.put(index.path, info, parsed)  # if it is worth keeping
        index.missing = False
        index.blocks = parsed.blocks
        index.stamp = parsed.stamp
        if parsed.version == VERSION and parsed.problem is None:
            index._appendAt = parsed.end
        elif not 0 < parsed.version < VERSION:
            # (An older version is rebuilt without a word: module docstring.)
            _log.warn(
                "The index {path} has {problem}; rebuilding it",
                path=index.path,
                problem=parsed.problem,
            )
        return index, parsed.records

    @property
    def appendable(self) -> bool:
        """
        Whether the file parsed to its end, so a block can be appended.
        """
        return self._appendAt is not None

    @property
    def fragmented(self) -> bool:
        """
        Whether the file has so many blocks that it is worth rewriting.
        """
        return self.blocks >= _MAX_BLOCKS

    def rewrite(self, records: Records, stamp: Stamp | None = None) -> bool:
        """
        Replace the file with one holding just C{records}, and C{stamp}
        after them if given; False (logged) if it could not be written.
        """
        content = MAGIC + encodeBlock(records)
        if stamp is not None:
            content += encodeStamp(stamp)
        self._uncache()
        temp = os.path.join(self.maildir, TEMP_NAME)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            fd = os.open(temp, _CREATE_FLAGS, 0o600)
            try:
                _writeAll(fd, content)
            finally:
                os.close(fd)
            os.rename(temp, self.path)
        except OSError as e:
            _log.warn("Cannot write the index {path}: {e}", path=self.path, e=e)
            removeLeftover(self.maildir)
            return False
        self.missing = False
        self._appendAt = len(content)
        self.blocks = 1 if stamp is None else 2
        self.stamp = stamp
        return True

    def append(self, records: Records, stamp: Stamp | None = None) -> bool:
        """
        Add C{records} to the file as one block, and C{stamp} after them if
        given, in one write; False (logged) if it could not be written, or
        if the file is not as this index left it (then rewrite it).  Either
        way the file's stamp, if it had one, no longer counts.  (With no
        records, only the stamp is written; with neither, an empty block,
        which voids the stamp.)
        """
        self._uncache()
        if self._appendAt is None:
            return False
        items = [encodeBlock(records)] if records.names or stamp is None else []
        if stamp is not None:
            items.append(encodeStamp(stamp))
        content = b"".join(items)
        try:
            fd = os.open(self.path, _APPEND_FLAGS)
        except OSError as e:
            _log.warn("Cannot write the index {path}: {e}", path=self.path, e=e)
            self._appendAt = None
            return False
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_size != self._appendAt:
                self._appendAt = None
                return False
            try:
                _writeAll(fd, content)
            except OSError as e:
                # Take back a partial block (ENOSPC): readers would ignore
                # it, but a later block would land behind it.
                _log.warn("Cannot write the index {path}: {e}", path=self.path, e=e)
                try:
                    os.ftruncate(fd, self._appendAt)
                except OSError:
                    self._appendAt = None
                return False
        finally:
            os.close(fd)
        self._appendAt += len(content)
        self.blocks += len(items)
        self.stamp = stamp
        return True

    def _uncache(self) -> None:
        # Before every change to the file: the cache's identity check would
        # see it too, but a rewrite within one tick of the clock that stamps
        # files, the same size, could reuse the inode it replaces.
        if self._cache is not None:
            self._cache.drop(self.path)

    def forget(self, names: Sequence[str]) -> None:
        """
        Make the index forget C{names}, so the next login reads those files
        again: append records that say so or, if that fails, remove the
        file.
        """
        if not names or self.missing:
            return
        zeros = numbers(repeat(0, len(names)))
        forgotten = Records(list(names), zeros, zeros, numbers(repeat(NO_SIZE, len(names))))
        if self.append(forgotten):
            return
        # Whatever the file holds, it must stop vouching for these names.
        # (append() has dropped it from the cache, written or not.)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as e:
            _log.warn("Cannot remove the index {path}: {e}", path=self.path, e=e)
            return
        self.missing = True
        self._appendAt = None
        self.blocks = 0
        self.stamp = None


def removeLeftover(maildir: str) -> None:
    """
    Remove the temporary file of a writer that was killed while it
    rewrote the index of C{maildir}, if there is one.

    Only a login that lists the Maildir need call this: a rewrite happens
    only in such a login, after a change to the Maildir, so the next login
    lists too.  A login that finds the index up to date does not pay for
    the failed C{unlink} (an exception in Python) that this is nearly
    always; and a rewrite removes the file anyway before it writes its own.
    """
    with contextlib.suppress(OSError):
        os.unlink(os.path.join(maildir, TEMP_NAME))


class _TooLarge(OSError):
    """
    The index is larger than it may be.
    """


def _readBounded(path: str, limit: int) -> tuple[bytes, os.stat_result]:
    """
    The contents of the regular file C{path}, not following a symbolic
    link, and its C{fstat} from before they were read.

    @raise _TooLarge: it is larger than C{limit} octets.
    @raise OSError: it cannot be read, or is not a regular file.
    """
    fd = os.open(path, _READ_FLAGS)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(f"not a regular file (mode {info.st_mode:o})")
        if info.st_size > limit:
            raise _TooLarge(f"{info.st_size} octets, more than the {limit} allowed")
        # The size fstat gave, no more: only the lock's holder writes the
        # file, and for the usual small index this is one read, with no
        # second one to find the end.
        parts = []
        left = info.st_size
        while left > 0:
            part = os.read(fd, left)
            if not part:
                break
            parts.append(part)
            left -= len(part)
        return b"".join(parts), info
    finally:
        os.close(fd)


def _writeAll(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.EIO, "write wrote nothing")
        view = view[written:]
