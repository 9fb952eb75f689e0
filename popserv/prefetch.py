"""
Reading the start of many files without waiting for the disk file by file.

A first login to a big Maildir reads every message file to size it.  When
the files are in the page cache that costs a few microseconds each; when
they are not (after a reboot, or on a host whose cache is smaller than its
mail) each read waits for the disk in turn.  On the virtual disk of the
machine popserv is benchmarked on that was 0.11 ms a file: 3.4 s for 30,000
files of 900 octets, one after another.

Linux can say that a read would wait instead of waiting: C{preadv2} with
C{RWF_NOWAIT} (Linux 4.14) fails with C{EAGAIN}.  L{readEach} then asks the
kernel to fetch that file (C{posix_fadvise(POSIX_FADV_WILLNEED)}, which
returns at once), goes on with the files that are cached, and comes back to
the ones it asked for later, when the disk has fetched them together: 0.46 s
for the same 30,000 files.  A cached file costs what it did before (one read
call), so nothing is lost when everything is in memory.  Where there is no
C{RWF_NOWAIT} (other systems, or a file system that refuses it), every file
is read in turn.

The RETR read-ahead of the Maildir store uses the same two calls one file at
a time: L{cached} asks whether a file's start is in the page cache, and
L{advise} asks the disk for files that are not, so that reading ahead never
makes a client wait.

Reading a file to size it is not reading the mail: L{readEach} opens with
C{O_NOATIME} when asked to (L{NOATIME}), as C{tar --atime-preserve=system}
does for the same reason.  On a file system mounted C{relatime}, the
default, the first read of a file since it was written would otherwise
update its access time, a change of its inode to be written back: measured
here at 2 to 5 microseconds more per file, 20 to 40 % of opening and
reading it.  A first login reads every file for the first time.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

_K = TypeVar("_K")
_R = TypeVar("_R")

#: What C{preadv} takes to fail rather than wait for the disk, if this
#: system has it.
NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None) if hasattr(os, "preadv") else None
if not hasattr(os, "posix_fadvise"):
    NOWAIT = None

#: What C{open} takes not to change a file's access time, where the system
#: has it (0 elsewhere).  Only the file's owner (or a process with
#: C{CAP_FOWNER}) may ask it: L{openAt} opens anyone else's file without it.
NOATIME: int = getattr(os, "O_NOATIME", 0)

#: Files asked of the disk and not yet read, at most: enough to keep a disk
#: busy, few enough that their pages are still cached when they are read.
WINDOW = 256

_PAGE = mmap.PAGESIZE

#: Reads a file's start without waiting; C{os.preadv}, or a test's fake.
Preadv = Callable[[int, list[bytearray], int, int], int]


def readEach(
    files: Iterable[tuple[_K, int, str]],
    buffer: bytearray,
    then: Callable[[_K, int, int], _R],
    flags: int = os.O_RDONLY | os.O_CLOEXEC,
    nowait: int | None = NOWAIT,
    preadv: Preadv | None = None,
    window: int = WINDOW,
) -> Iterator[tuple[_K, _R | OSError]]:
    """
    Open each file, read its start into C{buffer} and call C{then}; yield
    each file's key with what C{then} returned, or with the L{OSError} that
    opening, reading or C{then} raised.

    The files come in the order given, except that those whose read would
    have waited for the disk come later (in order among themselves), at
    most C{window} files after they would have.

    @param files: each file's key, a descriptor of its directory and its
        name in that directory.
    @param buffer: where every first read goes.
    @param then: called as C{then(key, fd, length)} with C{buffer[:length]}
        the file's first octets.  If C{length} is less than C{len(buffer)} they
        are the whole file; otherwise C{fd} is positioned after them.  The
        descriptor is closed when C{then} returns.
    @param flags: how to open each file.  If they hold L{NOATIME} and the
        system refuses it for a file, that file and the rest are opened
        without it (L{openAt}).
    @param nowait: the C{preadv} flag for a read that must not wait, or
        L{None} to read each file in turn.
    @param preadv: reads without waiting; C{os.preadv} if L{None}.
    @param window: files asked of the disk and not yet read, at most.
    """
    read: Preadv = preadv or getattr(os, "preadv", None) or _unsupported
    later: deque[tuple[_K, int, str]] = deque()
    buffers = [buffer]

    def readNow(key: _K, directory: int, name: str) -> _R | OSError:
        # Open, read (waiting if need be), call then() and close.
        nonlocal flags
        try:
            fd, flags = openAt(name, flags, directory)
        except OSError as e:
            return e
        try:
            return then(key, fd, os.readv(fd, [buffer]))
        except OSError as e:
            return e
        finally:
            os.close(fd)

    for key, directory, name in files:
        if nowait is None:
            yield key, readNow(key, directory, name)
            continue
        try:
            fd, flags = openAt(name, flags, directory)
        except OSError as e:
            yield key, e
            continue
        try:
            length = read(fd, buffers, 0, nowait)
        except BlockingIOError:
            # Not (all) in the page cache: have the disk fetch what the
            # first read wants while we read the others, and read it then.
            # (Linux 5 and later start that much already when they say
            # EAGAIN; older ones may not.)
            willNeed(fd, len(buffer))
            os.close(fd)
            later.append((key, directory, name))
            if len(later) >= window:
                for _ in range(max(1, window // 2)):
                    key, directory, name = later.popleft()
                    yield key, readNow(key, directory, name)
            continue
        except OSError as e:
            os.close(fd)
            if e.errno == errno.EOPNOTSUPP:
                nowait = None  # a file system without it: read in turn
            # Else a file that cannot be read this way (a FIFO, a
            # directory): the plain read gives its own answer.
            yield key, readNow(key, directory, name)
            continue
        except BaseException:
            os.close(fd)
            raise
        try:
            if length % _PAGE == 0 or length == len(buffer):
                # Not the common case (a read that ended inside a page, so
                # at the end of the file): the file may go on.
                length = _complete(fd, length, buffer)
            result: _R | OSError = then(key, fd, length)
        except OSError as e:
            result = e
        finally:
            os.close(fd)
        yield key, result
    while later:
        key, directory, name = later.popleft()
        yield key, readNow(key, directory, name)


def openAt(name: str, flags: int, directory: int) -> tuple[int, int]:
    """
    Open C{name} in the directory C{directory} with C{flags}, or without
    L{NOATIME} if the system refuses it (C{EPERM}: the process neither owns
    the file nor has C{CAP_FOWNER}, as when popserv runs as another user
    than the one that owns the mail and reads it through its group).

    @return: the descriptor, and the flags it was opened with: a caller
        opening many files of one owner passes them on, and asks once.
    """
    try:
        return os.open(name, flags, dir_fd=directory), flags
    except PermissionError as e:
        if e.errno != errno.EPERM or not flags & NOATIME:
            raise
    flags &= ~NOATIME
    return os.open(name, flags, dir_fd=directory), flags


#: Where L{cached} reads the octet it asks for, which nobody looks at: one
#: buffer for every call, in every thread.
_PROBE = [bytearray(1)]


def cached(fd: int) -> bool:
    """
    Whether reading the start of the open file C{fd} now would not wait for
    the disk: its first octet is in the page cache.  True where that cannot
    be asked (no C{RWF_NOWAIT}, or a file system that refuses it): then the
    read just waits, as it always did.
    """
    if NOWAIT is None:
        return True
    try:
        os.preadv(fd, _PROBE, 0, NOWAIT)
    except BlockingIOError:
        return False
    except OSError:
        return True
    return True


def willNeed(fd: int, length: int) -> None:
    """
    Ask the disk for the first C{length} octets of the open file C{fd},
    without waiting for them (C{POSIX_FADV_WILLNEED}).  Only advice: if it
    cannot be given, the read later waits.
    """
    with contextlib.suppress(OSError):
        os.posix_fadvise(fd, 0, length, os.POSIX_FADV_WILLNEED)


def advise(path: str, length: int, flags: int) -> None:
    """
    L{willNeed} for the file at C{path}, opened with C{flags}; nothing if
    it cannot be opened, or where L{cached} cannot tell what to ask for.
    """
    if NOWAIT is None:
        return
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        willNeed(fd, length)
    finally:
        os.close(fd)


def _unsupported(fd: int, buffers: list[bytearray], offset: int, flags: int) -> int:
    raise OSError(errno.EOPNOTSUPP, "no preadv")


def _complete(fd: int, length: int, buffer: bytearray) -> int:
    """
    Complete a read of C{length} octets into C{buffer} that did not wait
    (and so did not move the file's offset), as L{readEach} promises
    C{then}: the buffer as full as the file allows, and the offset after
    it if it is full.

    @return: the octets now in C{buffer}.
    """
    if length % _PAGE == 0 and length < len(buffer):
        # A read that must not wait stops at the first page that is not
        # cached; one that ends inside a page ended at the end of the
        # file.  This one may have stopped short: read on, waiting.
        view = memoryview(buffer)
        try:
            while length < len(buffer):
                more = os.preadv(fd, [view[length:]], length)
                if not more:
                    break
                length += more
        finally:
            view.release()
    if length == len(buffer):
        os.lseek(fd, length, os.SEEK_SET)
    return length
