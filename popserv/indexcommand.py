"""
C{popserv index [--jobs N] MAILDIR...}: bring Maildirs' indexes up to date
ahead of their first logins (L{popserv.maildir.indexMaildir}).

Each Maildir gets one line, on standard output what it holds, or on
standard error why it was not indexed, after the warnings a login would
have logged of it.  The lines come in the order the Maildirs were given,
also when several are indexed at once.

With C{--jobs N}, N processes index Maildirs at once: processes, not
threads, since a scan holds the interpreter's lock for most of the time
it does not wait for the disk.  On two CPUs, two threads indexed 40
Maildirs in 7.5 s where one took 8.0 (files from the disk) and in 2.9 s
where one took 1.7 (files in the page cache); two processes were 2.3 and
1.45 times faster than one (docs/maildir.rst).  A worker hands what it
did back to this process, which prints it, so the lines of different
Maildirs never mix.  Names of one directory go to one worker.

An interrupt (Ctrl-C, C{SIGINT} to the process group) or C{SIGTERM}
stops every Maildir being indexed as the one-process command stops its
Maildir: the Maildir's lock is let go and, run as root, its lock file
and index are given to the Maildir's owner first
(L{popserv.maildir.indexMaildir}).  Workers that are starting or waiting
for work ignore it and end when the pool is shut down, so no traceback
of theirs reaches the terminal.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from zope.interface import implementer

from popserv.errors import MaildropInUse
from popserv.maildir import IndexNotWritten, NotAMaildir, indexMaildir

#: What a Maildir came to: whether it was indexed, and the lines to print
#: for it, each with whether it goes to standard error.
Report = tuple[bool, list[tuple[bool, str]]]


def indexMaildirs(paths: Sequence[str], jobs: int = 1) -> int:
    """
    Index each Maildir, in this process or in a pool of C{jobs} processes,
    and print each one's report (L{report}) in the order of C{paths}: the
    number of Maildirs not indexed.

    Call it from the main thread: C{SIGTERM} is taken as C{SIGINT} while it
    runs (L{KeyboardInterrupt}), so that a Maildir being indexed is left as
    an interrupt leaves it, not with root's lock file in it; and only the
    first of them, so that a second cannot cut that cleanup short.
    """
    previous = {
        signum: signal.signal(signum, _interruptOnce) for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        return _indexAll(paths, jobs)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _indexAll(paths: Sequence[str], jobs: int) -> int:
    # Names of one directory (a symbolic link to a Maildir beside it, a
    # path given twice) go to one worker, in turn: two at once would find
    # each other's lock, and one would be reported in use.
    sameDirectory: dict[object, list[str]] = {}
    where: list[tuple[object, int]] = []  # each path's directory, and its place in its list
    for path in paths:
        key = _directoryOf(path)
        named = sameDirectory.setdefault(key, [])
        where.append((key, len(named)))
        named.append(path)
    if jobs == 1 or len(sameDirectory) < 2:
        # One job, or one Maildir: this process does it, without a pool.
        return _printed(map(report, paths))
    # Spawned, not forked: a worker starts from a fresh interpreter, the
    # same on every system and Python version (3.14 no longer forks by
    # default), with nothing of this process's state but its arguments.
    pool = ProcessPoolExecutor(
        min(jobs, len(sameDirectory)), mp_context=multiprocessing.get_context("spawn")
    )
    try:
        # The workers start as the Maildirs are handed out, and ignore
        # interrupts from birth (an ignored signal stays ignored across
        # exec, and Python then installs no handler for it): one that is
        # still starting or waits for work has nothing to stop, and its
        # KeyboardInterrupt would print a traceback.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            handedOut = {
                key: pool.submit(_reportInWorker, named) for key, named in sameDirectory.items()
            }
        finally:
            # Unless a SIGTERM meanwhile stopped the command, which ignores
            # both signals from then on (_interruptOnce).
            if signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN:
                signal.signal(signal.SIGINT, previous)
        return _printed(_outcome(handedOut[key], sameDirectory[key])[place] for key, place in where)
    finally:
        # Also on an interrupt or a closed standard output: no Maildir not
        # yet begun is begun, and those begun end (as interrupted, their
        # locks let go) before this process does.
        pool.shutdown(wait=True, cancel_futures=True)


def _directoryOf(path: str) -> object:
    """
    What tells the directory at C{path} from others: its device and inode,
    or the path itself if it cannot be found (its report will say why).
    """
    try:
        info = os.stat(path)
    except OSError:
        return path
    return info.st_dev, info.st_ino


def _outcome(job: Future[list[Report]], paths: list[str]) -> list[Report]:
    try:
        return job.result()
    except BrokenProcessPool:
        # A worker was killed (the OOM killer, kill -9): the pool is broken,
        # and no Maildir it had not yet reported on is indexed.  Run as
        # root, the one it was indexing may keep root's lock file until the
        # command runs again.
        problem = "a process of the command ended unexpectedly (killed?); not indexed"
        return [(False, [(True, f"popserv: error: {path}: {problem}")]) for path in paths]


def _printed(reports: Iterable[Report]) -> int:
    failed = 0
    for indexed, lines in reports:
        for toError, line in lines:
            print(line, file=sys.stderr if toError else sys.stdout)
        failed += not indexed
    return failed


class _Terminated(BaseException):
    """
    C{SIGTERM} came while a worker indexed: what the pool sends the workers
    left when one was killed, and what a service manager sends to stop.
    """


def _ignoreStops() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _interruptOnce(signum: int, frame: object) -> None:
    """
    The command's C{SIGINT} and C{SIGTERM}: L{KeyboardInterrupt}, once.
    Later ones are ignored, so that none cuts short the cleanup this one
    starts.
    """
    _ignoreStops()
    raise KeyboardInterrupt()


def _stopWorkerOnce(signum: int, frame: object) -> None:
    """
    A worker's: L{KeyboardInterrupt}, or L{_Terminated} for C{SIGTERM},
    once (the pool sends C{SIGTERM} to every worker left when one has
    ended, maybe while this one cleans up after the first).
    """
    _ignoreStops()
    raise _Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _reportInWorker(paths: list[str]) -> list[Report]:
    # While it indexes, a worker is interrupted as the command is
    # (KeyboardInterrupt, which indexMaildir's cleanup runs under), and
    # stopped by SIGTERM only once that cleanup has run.
    signal.signal(signal.SIGINT, _stopWorkerOnce)
    signal.signal(signal.SIGTERM, _stopWorkerOnce)
    try:
        return list(map(report, paths))
    except _Terminated:
        # The lock let go and root's files given away: end, as asked.  (An
        # exception would go back to the pool, and this process wait for
        # more work, where the pool waits for it to end.)
        os._exit(128 + signal.SIGTERM)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def report(path: str) -> Report:
    """
    Index one Maildir (L{popserv.maildir.indexMaildir}): whether it was
    indexed, with the warnings the Maildir store logged meanwhile (a file
    it skipped, an index it could not write) and one line that says what
    the Maildir holds, or why it was not indexed.
    """
    lines: list[tuple[bool, str]] = []
    warn = _Warnings(lines)
    globalLogPublisher.addObserver(warn)
    began = time.monotonic()
    try:
        count, octets = indexMaildir(path)
    except MaildropInUse:
        problem = "in use by a session (try again when it ends)"
    except (NotAMaildir, IndexNotWritten) as e:
        problem = str(e)
    except OSError as e:
        problem = e.strerror or str(e)
        if e.filename and e.filename != path:
            problem = f"{e.filename}: {problem}"
    else:
        took = time.monotonic() - began
        messages = "1 message" if count == 1 else f"{count} messages"
        lines.append((False, f"{path}: {messages}, {octets} octets, indexed in {took:.2f} s"))
        return True, lines
    finally:
        globalLogPublisher.removeObserver(warn)
    lines.append((True, f"popserv: error: {path}: {problem}; not indexed"))
    return False, lines


@implementer(ILogObserver)
class _Warnings:
    """
    A log observer that keeps the warnings and errors logged, as lines
    for standard error.
    """

    def __init__(self, lines: list[tuple[bool, str]]) -> None:
        self._lines = lines

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("log_level") in (LogLevel.warn, LogLevel.error, LogLevel.critical):
            text = formatEvent(event)
            failure = event.get("log_failure")
            if failure is not None:
                # The error, not its traceback: "Cannot update the index
                # of PATH: [Errno 28] No space left on device".
                text += f": {failure.getErrorMessage()}"
            self._lines.append((True, f"popserv: warning: {text}"))
