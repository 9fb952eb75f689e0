"""
Site policy announced and enforced per RFC 2449: LOGIN-DELAY (section 6.5),
the least time between two logins of a user, and EXPIRE (section 6.7), how
long retrieved mail stays on the server.

Both have a server-wide value and may differ per user (the C{--policy-file});
CAPA shows the server-wide value before login, with C{USER} when some users
differ, and the user's own value after.  Enforcement needs to remember when
each user last logged in and when each message was first retrieved: in
memory for one process, or in a state directory that several processes (and
restarts) share.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import stat
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from popserv.capabilities import Policy
from popserv.threads import Runner, deferToThread

_log = Logger()

#: EXPIRE's "never" (RFC 2449 section 6.7).
NEVER = "NEVER"

Expire = int | str | None


class PolicyError(ValueError):
    """
    A policy value or file line is wrong; one line for the operator.
    """


@dataclass(frozen=True)
class UserPolicy:
    """
    The policy of one user.

    @ivar loginDelay: seconds between logins, or L{None} for no limit.
    @ivar expire: days retrieved mail is kept, 0 to delete it at the end of
        the session that retrieved it, L{NEVER}, or L{None} when not
        announced at all.
    """

    loginDelay: int | None = None
    expire: Expire = None


def parseExpire(value: str) -> Expire:
    """
    C{"NEVER"} (any case) or a whole number of days.
    """
    if value.upper() == NEVER:
        return NEVER
    if not value.isdigit() or len(value) > 6:
        raise PolicyError(f"expire must be a number of days or NEVER, not {value!r}")
    return int(value)


def parseSeconds(value: str) -> int:
    """
    A whole number of seconds for LOGIN-DELAY.
    """
    if not value.isdigit() or len(value) > 9:
        raise PolicyError(f"login-delay must be a number of seconds, not {value!r}")
    return int(value)


def parsePolicyFile(text: str, defaults: UserPolicy) -> dict[str, UserPolicy]:
    """
    Per-user overrides, one user a line::

        # user          settings
        alice           login-delay=0 expire=NEVER
        bob@example.org expire=30

    Unset settings take the server-wide value.
    """
    users: dict[str, UserPolicy] = {}
    lines: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        user, *settings = line.split()
        if user in lines:
            # Which line wins would be a guess: say so instead.
            raise PolicyError(f"line {number}: {user} is already on line {lines[user]}")
        lines[user] = number
        values: dict[str, Any] = {"loginDelay": defaults.loginDelay, "expire": defaults.expire}
        for setting in settings:
            name, equals, value = setting.partition("=")
            try:
                if name == "login-delay" and equals:
                    values["loginDelay"] = parseSeconds(value)
                elif name == "expire" and equals:
                    values["expire"] = parseExpire(value)
                else:
                    raise PolicyError(f"unknown setting {setting!r}")
            except PolicyError as e:
                raise PolicyError(f"line {number}: {e}") from None
        users[user] = UserPolicy(**values)
    return users


class MemoryHistory:
    """
    Login and retrieval times kept in this process only.
    """

    def __init__(self) -> None:
        self._logins: dict[str, float] = {}
        self._retrieved: dict[str, dict[str, float]] = {}

    def lastLogin(self, user: str) -> Deferred[float | None]:
        return succeed(self._logins.get(user))

    def recordLogin(self, user: str, when: float) -> Deferred[None]:
        self._logins[user] = when
        return succeed(None)

    def retrievals(self, user: str) -> Deferred[dict[str, float]]:
        return succeed(dict(self._retrieved.get(user, {})))

    def saveRetrievals(self, user: str, times: Mapping[str, float]) -> Deferred[None]:
        self._retrieved[user] = dict(times)
        return succeed(None)


#: How every state file is opened: never through a symbolic link, and
#: never waiting on a FIFO (O_NONBLOCK does nothing to a regular file).
_SAFELY = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _openRegular(path: str, flags: int) -> tuple[int, os.stat_result]:
    """
    Open C{path} with C{flags} and L{_SAFELY}: a descriptor of a regular
    file, and its status.

    @raise OSError: it is a link, a directory, a FIFO or a device (or
        cannot be opened).
    """
    fd = os.open(path, flags | _SAFELY, 0o600)
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
    except BaseException:
        os.close(fd)
        raise
    return fd, status


class DirectoryHistory:
    """
    Login and retrieval times in a directory shared by every popserv process
    of a site: one file per user, named by a digest of the user name.  The
    caller holds the user's maildrop lock, so no two writers meet.
    """

    def __init__(self, path: str, runInThread: Runner = deferToThread) -> None:
        if not os.path.isdir(path):
            what = "is not a directory" if os.path.exists(path) else "does not exist"
            raise PolicyError(f"state directory {path} {what}")
        self.path = path
        self._run = runInThread

    def _file(self, user: str, kind: str) -> str:
        digest = hashlib.sha256(user.encode("utf-8", "surrogateescape")).hexdigest()[:32]
        return os.path.join(self.path, f"{digest}.{kind}")

    # Whoever else can write the directory must not make popserv write
    # through a symbolic link (to a file the server may write, run as root
    # without --uid), nor read one, nor hold a thread on a FIFO: files are
    # opened by _openRegular, and made readable by the server only, as
    # they tell when each user logged in and what they retrieved.

    def lastLogin(self, user: str) -> Deferred[float | None]:
        def read() -> float | None:
            try:
                status = os.stat(self._file(user, "login"), follow_symlinks=False)
            except FileNotFoundError:
                return None
            return status.st_mtime if stat.S_ISREG(status.st_mode) else None

        return self._run(read)

    def recordLogin(self, user: str, when: float) -> Deferred[None]:
        def write() -> None:
            fd, status = _openRegular(self._file(user, "login"), os.O_WRONLY | os.O_CREAT)
            try:
                if status.st_nlink == 1 and status.st_uid == os.geteuid():
                    # Made 0644 by an earlier version.  (Not a file linked
                    # here from elsewhere: its mode is not ours to change.)
                    os.fchmod(fd, 0o600)
                os.utime(fd, (when, when))
            finally:
                os.close(fd)

        return self._run(write)

    def retrievals(self, user: str) -> Deferred[dict[str, float]]:
        def read() -> dict[str, float]:
            try:
                fd, _ = _openRegular(self._file(user, "retrieved"), os.O_RDONLY)
            except FileNotFoundError:
                return {}
            try:
                with open(fd, encoding="utf-8") as f:
                    data = json.load(f)
            except ValueError:
                return {}
            if not isinstance(data, dict):
                return {}
            times = {str(k): _retrievalTime(v) for k, v in data.items()}
            return {k: t for k, t in times.items() if t is not None}

        return self._run(read)

    def saveRetrievals(self, user: str, times: Mapping[str, float]) -> Deferred[None]:
        def write() -> None:
            path = self._file(user, "retrieved")
            temporary = path + ".tmp"
            # O_EXCL: a leftover (from a crash, or planted) is removed, not
            # written through.  The maildrop lock keeps other writers out.
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _SAFELY
            try:
                fd = os.open(temporary, flags, 0o600)
            except FileExistsError:
                os.unlink(temporary)
                fd = os.open(temporary, flags, 0o600)
            with open(fd, "w", encoding="utf-8") as f:
                json.dump(dict(times), f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, path)

        return self._run(write)


History = MemoryHistory | DirectoryHistory

#: 2000-01-01: no retrieval popserv recorded is older.
_EARLIEST = 946_684_800.0


def _retrievalTime(value: Any) -> float | None:
    """
    A retrieval time read from a history file; L{None} for one that is not
    a number, or not a time popserv could have recorded (before 2000, or
    not finite): damage, forgotten so that the message is kept longer
    rather than deleted early.
    """
    if type(value) not in (int, float):
        return None
    try:
        time = float(value)
    except OverflowError:
        return None
    return time if _EARLIEST <= time < math.inf else None


class SitePolicy:
    """
    The LOGIN-DELAY and EXPIRE policy of a server.
    """

    def __init__(
        self,
        defaults: UserPolicy = UserPolicy(),
        users: Mapping[str, UserPolicy] | None = None,
        history: History | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.defaults = defaults
        self.users = dict(users or {})
        self.history: History = history if history is not None else MemoryHistory()
        self.clock = clock

    def forUser(self, user: str) -> UserPolicy:
        return self.users.get(user, self.defaults)

    def _announced(self, attribute: str, user: str | None) -> Policy | None:
        if user is not None:
            value = getattr(self.forUser(user), attribute)
            return None if value is None else Policy(value)
        value = getattr(self.defaults, attribute)
        differs = any(getattr(p, attribute) != value for p in self.users.values())
        if value is None:
            if not differs:
                return None
            # Some users have a policy, the default has none: announce the
            # most lenient value with USER.
            value = 0 if attribute == "loginDelay" else NEVER
        return Policy(value, perUser=differs)

    def loginDelay(self, user: str | None = None) -> Policy | None:
        """
        The LOGIN-DELAY to announce: server-wide before login, the user's after.
        """
        return self._announced("loginDelay", user)

    def expire(self, user: str | None = None) -> Policy | None:
        """
        The EXPIRE to announce: server-wide before login, the user's after.
        """
        return self._announced("expire", user)

    def checkLogin(self, user: str) -> Deferred[bool]:
        """
        Whether C{user} may log in now; if so, and C{user} has a
        LOGIN-DELAY, the login is recorded.  A history that cannot be read
        or written (a full or read-only state directory) is logged and the
        login allowed: the delay is a courtesy to the server (RFC 2449
        section 6.8), not worth locking every user out for.
        """
        delay = self.forUser(user).loginDelay
        if not delay:
            return succeed(True)
        now = self.clock()

        def decide(last: float | None) -> Any:
            if last is not None and now - last < delay:
                return False
            return self.history.recordLogin(user, now).addCallback(lambda _: True)

        def failed(failure: Failure) -> bool:
            _log.failure(
                "Cannot keep the login history of {user}: LOGIN-DELAY not applied",
                failure,
                user=user,
            )
            return True

        d = maybeDeferred(self.history.lastLogin, user).addCallback(decide)
        return d.addErrback(failed)

    def expires(self, user: str) -> bool:
        """
        Whether EXPIRE removes anything of C{user}'s at UPDATE: whether
        L{expired} needs asking.
        """
        expire = self.forUser(user).expire
        return expire is not None and expire != NEVER

    def expired(
        self, user: str, uids: Callable[[], Sequence[str]], retrievedNow: set[int]
    ) -> Deferred[set[int]]:
        """
        Which messages EXPIRE removes at this session's UPDATE, and record
        the first retrieval of the messages retrieved in it.

        @param uids: gives the unique id of every message of the session,
            by index; called only for a user whose mail expires after some
            days (making the list costs a large maildrop's every QUIT).
        @param retrievedNow: the indexes retrieved (RETR) in this session.
        """
        expire = self.forUser(user).expire
        if expire is None or expire == NEVER:
            return succeed(set())
        assert isinstance(expire, int)
        if expire == 0:
            return succeed(set(retrievedNow))
        now = self.clock()

        def decide(times: dict[str, float]) -> Any:
            byIndex = uids()
            present = set(byIndex)
            kept = {uid: t for uid, t in times.items() if uid in present}
            for index in retrievedNow:
                kept.setdefault(byIndex[index], now)
            doomed = {
                index
                for index, uid in enumerate(byIndex)
                if uid in kept and now - kept[uid] >= expire * 86400
            }
            # The doomed stay in the history: if their deletion fails, or
            # the server stops before it is done, the next UPDATE finds
            # them again; once they are gone, the next one drops them as
            # it drops every message no longer present.
            return self.history.saveRetrievals(user, kept).addCallback(lambda _: doomed)

        return self.history.retrievals(user).addCallback(decide)
