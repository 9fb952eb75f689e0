"""
A popserv mail store where each user's messages are the ``*.eml`` files in
``ROOT/USER/``.

 - A session sees the ``*.eml`` files present when it logs in, in file-name
   order; files delivered later are not part of it.  Names starting with
   "." are ignored, so a deliverer writes ``.NAME.tmp`` and renames it to
   ``NAME.eml`` (see L{deliver}).
 - The unique id (UIDL) of a message is its file name without ``.eml``, so
   a deliverer must never reuse a name.
 - Deleting a message unlinks its file.
 - The lock is a set of user names held in this process: it keeps two
   sessions of this server apart, not two server processes sharing ROOT.
 - Every file-system call runs in the reactor's thread pool through
   C{deferToThread}, and messages are read with popserv's L{FileReader},
   which reads in a thread too: the reactor thread never blocks on the disk.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import time
from collections.abc import Sequence
from typing import Any, BinaryIO

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from popserv.encoder import WireSize
from popserv.errors import (
    DeletionFailed,
    MaildropInUse,
    MaildropRefused,
    MaildropUnavailable,
    MessageUnavailable,
    StoreConfigError,
)
from popserv.filereader import FileReader
from popserv.interfaces import IMaildrop, IMailStore, IMessageReader, MessageInfo

SUFFIX = ".eml"
#: RFC 1939 section 7: a unique-id is 1 to 70 characters from 0x21 to 0x7E.
_UID_OK = re.compile(r"[\x21-\x7e]{1,70}\Z")
_READ_SIZE = 256 * 1024
_sequence = itertools.count()

_log = Logger()

#: The snapshot of a directory: (file name, MessageInfo), in listing order.
Found = list[tuple[str, MessageInfo]]


def uidFor(name: str) -> str:
    """
    The UIDL of the message file C{name}: the name without C{.eml}, or a
    digest of it when the name is not a valid unique-id.
    """
    base = name[: -len(SUFFIX)]
    if _UID_OK.match(base):
        return base
    digest = hashlib.sha256(base.encode("utf-8", "surrogateescape")).hexdigest()
    return "x" + digest[:40]


def deliver(root: str, user: str, message: bytes) -> str:
    """
    Deliver C{message} to C{user} the way a mail delivery agent should:
    write a hidden temporary file, then rename it, so that a session never
    sees half a message.  Blocking; not for the reactor thread.

    @return: the path of the new message file.
    """
    directory = os.path.join(root, user)
    os.makedirs(directory, exist_ok=True)
    # Names sort in delivery order and are never reused.
    name = f"{time.time_ns():020d}.{os.getpid()}.{next(_sequence):06d}"
    temporary = os.path.join(directory, f".{name}.tmp")
    final = os.path.join(directory, name + SUFFIX)
    with open(temporary, "wb") as f:
        f.write(message)
    os.rename(temporary, final)
    return final


# Blocking helpers: these run in the thread pool only.


def _scan(directory: str) -> Found:
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found: Found = []
    for name in sorted(names):
        if name.startswith(".") or not name.endswith(SUFFIX):
            continue
        # Both sizes in the one pass: as sent to a client that enabled
        # UTF8, and to one that did not (UTF-8 header fields downgraded).
        # Without the second, popserv would read every header at each such
        # login to find it.
        counter, downgraded = WireSize(), WireSize(downgrade=True)
        try:
            with open(os.path.join(directory, name), "rb") as f:
                while chunk := f.read(_READ_SIZE):
                    counter.feed(chunk)
                    downgraded.feed(chunk)
        except FileNotFoundError:
            continue  # removed by another program while we looked
        info = MessageInfo(counter.finish(), uidFor(name), downgraded.finish())
        found.append((name, info))
    return found


def _open(path: str) -> BinaryIO:
    try:
        return open(path, "rb", buffering=0)
    except FileNotFoundError:
        raise MessageUnavailable() from None


def _unlink(paths: Sequence[tuple[int, str]]) -> None:
    failed = []
    for index, path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass  # another program removed it: it is gone, as asked
        except OSError as e:
            _log.error("Cannot delete {path!r}: {e}", path=path, e=e)  # quoted: any name
            failed.append(index)
    if failed:
        raise DeletionFailed(failed)


@implementer(IMaildrop)
class EmlMaildrop:
    """
    The snapshot of one user's directory, locked for one session.
    """

    def __init__(self, store: EmlStore, user: str, directory: str, found: Found) -> None:
        self._store = store
        self._user = user
        self._directory = directory
        self._names = [name for name, _ in found]
        self._infos = [info for _, info in found]
        self._deleting = False
        self._closed = False

    def _path(self, index: int) -> str:
        return os.path.join(self._directory, self._names[index])

    def listMessages(self) -> Deferred[Sequence[MessageInfo]]:
        return succeed(self._infos)

    def openMessage(self, index: int) -> Deferred[IMessageReader]:
        # FileReader does each read in a thread too, and closes the file.
        d: Deferred[BinaryIO] = deferToThread(_open, self._path(index))
        return d.addCallback(FileReader)

    def deleteMessages(self, indexes: Sequence[int]) -> Deferred[None]:
        self._deleting = True
        paths = [(i, self._path(i)) for i in indexes]
        d: Deferred[None] = deferToThread(_unlink, paths)
        return d.addBoth(self._deletionDone)

    def _deletionDone(self, result: Any) -> Any:
        self._deleting = False
        if self._closed:
            self._store._release(self._user)
        return result

    def close(self) -> None:
        # The contract: close may come while deletions still run (the
        # client hung up after QUIT); the lock is released when they end, so
        # the next session never lists a file that is being unlinked.
        if self._closed:
            return
        self._closed = True
        if not self._deleting:
            self._store._release(self._user)


@implementer(IMailStore)
class EmlStore:
    """
    One directory of C{*.eml} files per user, under C{root}.
    """

    def __init__(self, root: str) -> None:
        """
        @raise StoreConfigError: C{root} is not a directory.
        """
        if not os.path.isdir(root):
            raise StoreConfigError(f"eml: directory {root} does not exist")
        self.root = os.path.abspath(root)
        # Touched only on the reactor thread, so it needs no mutex.
        self._locked: set[str] = set()

    def openMaildrop(self, user: str) -> Deferred[IMaildrop]:
        # The name is authenticated, but it becomes a path: refuse any name
        # that could leave ROOT or name a hidden file.
        if not user or user.startswith(".") or "/" in user or "\0" in user:
            return fail(MaildropRefused())
        if user in self._locked:
            return fail(MaildropInUse())
        self._locked.add(user)
        directory = os.path.join(self.root, user)

        def scanned(found: Found) -> IMaildrop:
            return EmlMaildrop(self, user, directory, found)

        def failed(failure: Failure) -> Failure:
            self._release(user)
            if failure.check(OSError):
                _log.error("Cannot read {path}: {e}", path=directory, e=failure.value)
                return Failure(MaildropUnavailable())
            return failure

        d: Deferred[Found] = deferToThread(_scan, directory)
        return d.addCallbacks(scanned, failed)

    def _release(self, user: str) -> None:
        self._locked.discard(user)
