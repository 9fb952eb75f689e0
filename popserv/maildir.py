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
   wire size for files with LF line endings, so it cannot stand in.
 - The lock is an C{flock} on C{popserv.lock} in the Maildir: exclusive across
   processes and within one, never waited for, and released by the kernel
   when its holder dies, so a crash cannot lock a user out.
 - All file-system work runs in a thread pool, never on the reactor thread.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import string
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from popserv.downgrade import prefixNeeded
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
from popserv.interfaces import IMaildrop, IMailStore, IMessageReader, MessageInfo
from popserv.threads import Runner, deferToThread

LOCK_NAME = "popserv.lock"
_SUBDIRS = ("new", "cur")
_READ_SIZE = 256 * 1024
_WIRE_SIZE = re.compile(r",W=(\d{1,15})(?:,|$)")
#: RFC 1939 section 7: a unique-id is 1 to 70 characters from 0x21 to 0x7E.
_UID_OK = re.compile(r"[\x21-\x7e]{1,70}\Z")
_FIELDS = frozenset({"user", "localpart", "domain"})

_log = Logger()


def uidFor(base: str) -> str:
    """
    The UIDL of a message whose file name, without flags, is C{base}.

    Names that are not valid unique-ids (too long, spaces, non-ASCII) get a
    digest of the name instead: still stable, still unique.
    """
    if _UID_OK.match(base):
        return base
    return "x" + hashlib.sha256(base.encode("utf-8", "surrogateescape")).hexdigest()[:40]


def _sortKey(name: str) -> tuple[int, str]:
    # Maildir names start with the delivery time in seconds; order by it
    # numerically so the oldest mail gets the lowest message number.
    head = name.split(".", 1)[0]
    return (int(head) if head.isdigit() and len(head) < 20 else 0, name)


def _sizesOfFile(path: str, size: int | None) -> tuple[int, int]:
    """
    The wire size (unless already known from ,W=) and the downgraded wire
    size of a message file.  With a known size only the header is read.
    """
    counter = WireSize()
    prefix = b""
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(_READ_SIZE):
            if prefixNeeded(prefix):
                prefix += chunk
            elif size is not None:
                break
            if size is None:
                counter.feed(chunk)
    if size is None:
        size = counter.finish()
    return size, size + downgradeDelta(prefix)


class MaildirTemplate:
    """
    Maps user names to Maildir paths with a template such as
    C{/srv/mail/{user}} or C{/srv/{domain}/{localpart}/Maildir}.
    """

    def __init__(self, template: str) -> None:
        """
        @raise StoreConfigError: the template has no user field, an unknown
            field, bad braces, or its fixed leading directory does not exist.
        """
        if not template:
            raise StoreConfigError("maildir: needs a path template, e.g. maildir:/srv/mail/{user}")
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
        except ValueError as e:
            raise StoreConfigError(f"maildir: bad template {template!r}: {e}") from None
        unknown = fields - _FIELDS
        if unknown:
            raise StoreConfigError(
                f"maildir: unknown field {{{sorted(unknown)[0]}}} in {template!r};"
                " use {user}, {localpart} or {domain}"
            )
        if not fields & {"user", "localpart"}:
            raise StoreConfigError(
                f"maildir: template {template!r} must contain {{user}} or {{localpart}}"
            )
        if not os.path.isabs(template):
            # Resolve against the directory popserv starts in (not normpath:
            # that would fold "{user}/.." away).
            template = os.path.join(os.getcwd(), template)
        fixed = ""
        for literal, field, _, _ in string.Formatter().parse(template):
            fixed += literal
            if field is not None:
                break
        variable = template[len(fixed) :]
        if any(part in (".", "..") for part in variable.split(os.sep)):
            raise StoreConfigError(
                f"maildir: template {template!r} must not use . or .. after a field"
            )
        self.template = template
        self.fields = fields
        root = os.path.normpath(fixed if fixed.endswith(os.sep) else os.path.dirname(fixed))
        if not os.path.isdir(root):
            raise StoreConfigError(f"maildir: directory {root} does not exist")
        self.root = root

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


class _Entry:
    """
    Where one message of the snapshot is: it may move from new/ to cur/, or
    be renamed for flags, while the session runs.
    """

    __slots__ = ("base", "info", "name", "subdir")

    def __init__(self, subdir: str, name: str, base: str, info: MessageInfo) -> None:
        self.subdir = subdir
        self.name = name
        self.base = base
        self.info = info


@implementer(IMaildrop)
class MaildirMaildrop:
    """
    One locked Maildir and the snapshot of its messages.
    """

    def __init__(self, path: str, lockFD: int, runInThread: Runner) -> None:
        self.path = path
        self._lockFD: int | None = lockFD
        self._run = runInThread
        self._entries: list[_Entry] = []

    # Thread-side work

    def scan(self) -> None:
        """
        Take the snapshot: list new/ and cur/ and size every message.  Runs
        in a thread, once, right after the lock was taken.
        """
        found: dict[str, tuple[str, str]] = {}
        # new/ first, then cur/: a message moved between the two listings is
        # seen twice (the cur/ name wins), never missed.
        for subdir in _SUBDIRS:
            try:
                names = os.listdir(os.path.join(self.path, subdir))
            except FileNotFoundError:
                continue
            for name in names:
                if name.startswith("."):
                    continue
                found[name.split(":", 1)[0]] = (subdir, name)
        entries = []
        for base in sorted(found, key=_sortKey):
            subdir, name = found[base]
            match = _WIRE_SIZE.search(base)
            known = int(match.group(1)) if match else None
            path = os.path.join(self.path, subdir, name)
            try:
                size, downgraded = _sizesOfFile(path, known)
            except FileNotFoundError:
                continue  # removed by another program while we looked
            except OSError as e:
                if known is None:
                    # A directory or an unreadable file where a message
                    # should be: leave it out (and so never delete it) rather
                    # than lock the user out of all their other mail.
                    _log.warn("Skipping {path}: {e}", path=path, e=e)
                    continue
                # Listed by its name; RETR will say it cannot be read.
                size = downgraded = known
            info = MessageInfo(size, uidFor(base), downgraded)
            entries.append(_Entry(subdir, name, base, info))
        self._entries = entries

    def _locate(self, entry: _Entry) -> bool:
        """
        Find a message another program moved or renamed; False if it is gone.
        """
        for subdir in reversed(_SUBDIRS):
            try:
                names = os.listdir(os.path.join(self.path, subdir))
            except FileNotFoundError:
                continue
            for name in names:
                if name.split(":", 1)[0] == entry.base:
                    entry.subdir, entry.name = subdir, name
                    return True
        return False

    def _pathOf(self, entry: _Entry) -> str:
        return os.path.join(self.path, entry.subdir, entry.name)

    def _open(self, index: int) -> Any:
        entry = self._entries[index]
        try:
            try:
                return open(self._pathOf(entry), "rb", buffering=0)
            except FileNotFoundError:
                if self._locate(entry):
                    return open(self._pathOf(entry), "rb", buffering=0)
        except FileNotFoundError:
            pass
        except OSError as e:
            _log.error("Cannot read {path}: {e}", path=self._pathOf(entry), e=e)
        raise MessageUnavailable()

    def _delete(self, indexes: Sequence[int]) -> None:
        failed = []
        for index in indexes:
            entry = self._entries[index]
            try:
                os.unlink(self._pathOf(entry))
            except FileNotFoundError:
                if self._locate(entry):
                    try:
                        os.unlink(self._pathOf(entry))
                    except FileNotFoundError:
                        pass
                    except OSError as e:
                        _log.error("Cannot delete {path}: {e}", path=self._pathOf(entry), e=e)
                        failed.append(index)
            except OSError as e:
                _log.error("Cannot delete {path}: {e}", path=self._pathOf(entry), e=e)
                failed.append(index)
        # Make the unlinks durable before we say +OK.
        for subdir in _SUBDIRS:
            _fsyncDirectory(os.path.join(self.path, subdir))
        if failed:
            raise DeletionFailed(failed)

    # IMaildrop

    def listMessages(self) -> Deferred[Sequence[MessageInfo]]:
        return succeed([e.info for e in self._entries])

    def openMessage(self, index: int) -> Deferred[IMessageReader]:
        d = self._run(self._open, index)
        return d.addCallback(lambda f: FileReader(f, self._run))

    def deleteMessages(self, indexes: Sequence[int]) -> Deferred[None]:
        return self._run(self._delete, list(indexes))

    def close(self) -> None:
        fd, self._lockFD = self._lockFD, None
        if fd is not None:
            os.close(fd)


def _makePrivateDirectories(root: str, path: str) -> None:
    """
    Create the Maildir at C{path} with cur/, new/ and tmp/, and any missing
    directories between C{root} and it, all readable by the server only.
    (C{os.makedirs} would give its mode to the last directory alone.)
    """
    missing: list[str] = []
    parent = path
    while parent != root and not os.path.isdir(parent) and len(missing) < 64:
        missing.append(parent)
        parent = os.path.dirname(parent)
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory, 0o700)
    for subdir in ("cur", "new", "tmp"):
        with contextlib.suppress(FileExistsError):
            os.mkdir(os.path.join(path, subdir), 0o700)


def _fsyncDirectory(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _unavailable(failure: Any, user: str) -> Any:
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
            of its result; L{twisted.internet.threads.deferToThread} if
            L{None}.
        @raise StoreConfigError: the template is not usable.
        """
        self.template = MaildirTemplate(template)
        self._run = runInThread or deferToThread

    def _lock(self, user: str) -> MaildirMaildrop:
        path = self.template.pathFor(user)
        _makePrivateDirectories(self.template.root, path)
        fd = os.open(os.path.join(path, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise MaildropInUse() from None
            raise
        maildrop = MaildirMaildrop(path, fd, self._run)
        try:
            maildrop.scan()
        except BaseException:
            maildrop.close()
            raise
        return maildrop

    def openMaildrop(self, user: str) -> Deferred[IMaildrop]:
        d: Deferred[IMaildrop] = self._run(self._lock, user)
        return d.addErrback(_unavailable, user)
