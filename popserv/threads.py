"""
Running blocking work off the reactor thread.

Stores and checkers take a L{Runner} so tests can run the work
synchronously and embedders can choose their own thread pool.  The default,
L{deferToThread}, is one process-wide L{ThreadRunner}.

Why not Twisted's own thread pool: a login hands one small job to a thread
(lock the Maildir, list it, read its index), and Twisted's pool passes each
job through a coordinator of its own (C{twisted._threads}), several lock
hand-overs between threads per job.  On one busy core every hand-over is a
context switch and a fight for the GIL; measured under login churn that was
about 70 microseconds of CPU per login, an eighth of the whole session.  A
L{ThreadRunner} hands a job over through one C{queue.SimpleQueue} and its
result back through C{callFromThread}, and on Linux its threads ask not to
preempt the reactor thread when they wake (L{disfavourWakeups}).
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

#: Runs a blocking callable with arguments somewhere other than the reactor
#: thread and returns a Deferred of its result, like
#: L{twisted.internet.threads.deferToThread}.
Runner = Callable[..., "Deferred[Any]"]

#: Threads a L{ThreadRunner} starts at most, as Twisted's pool: work beyond
#: that waits its turn.
DEFAULT_MAX_THREADS = 10

#: How long L{ThreadRunner.stop} waits for the work already given, in
#: seconds: a job that hangs (a file system gone, as an NFS server can)
#: must not keep a stopping server from exiting.
STOP_TIMEOUT = 10.0

_STOP = object()

_log = Logger()


def disfavourWakeups() -> None:
    """
    Schedule the calling thread as C{SCHED_BATCH} (Linux, sched(7)), where
    the platform offers it and allows it; otherwise leave it as it is.

    Why: on a busy core, a worker woken for a job would, as an ordinary
    thread, preempt the reactor thread at once, since the scheduler favours
    a thread that has just woken.  It would then wait for the GIL, which
    the thread it preempted holds, and the reactor thread would run again:
    switches that do no work.  Under login churn with the server on one
    CPU they came to six context switches a session, two of them the
    reactor thread preempted, and cost about 6 % of the server's CPU time;
    with C{SCHED_BATCH}, half a switch a session.  C{SCHED_BATCH} only
    tells the scheduler not to preempt for the thread when it wakes: it
    runs when the reactor thread waits or has had its time slice, keeps its
    nice value and its fair share of CPU, and on an idle CPU it runs at
    once, as before.
    """
    # Not Linux (no SCHED_BATCH), or a sandbox that forbids the call: the
    # thread keeps the ordinary policy, which is only slower.
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))


class RunnerStopped(Exception):
    """
    Work was given to a L{ThreadRunner} after it was stopped.
    """


class ThreadRunner:
    """
    A L{Runner}: calls each callable in one of at most C{maxThreads} worker
    threads, started as work needs them, and fires its Deferred with the
    result (or the failure) in the reactor thread.

    Work is taken in the order given.  A job never waits behind a running
    one while fewer than C{maxThreads} threads exist: each job either
    claims a thread that is waiting or starts a new one.

    @ivar maxThreads: the most worker threads.
    """

    def __init__(
        self,
        callFromThread: Callable[..., Any],
        maxThreads: int = DEFAULT_MAX_THREADS,
        name: str = "popserv-worker",
    ) -> None:
        """
        @param callFromThread: runs a callable in the reactor thread, soon;
            C{reactor.callFromThread}.
        """
        if maxThreads < 1:
            raise ValueError("maxThreads must be at least 1")
        self.maxThreads = maxThreads
        self._callFromThread = callFromThread
        self._name = name
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        # Guards the two counts below, which workers and the reactor thread
        # both change.  Workers waiting for a job that no job has claimed:
        self._idle = 0
        # Jobs queued that no waiting worker was claimed for:
        self._unclaimed = 0
        self._mutex = threading.Lock()
        self._stopped = False

    def __call__(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        if self._stopped:
            raise RunnerStopped("the thread runner is stopped")
        d: Deferred[Any] = Deferred()
        with self._mutex:
            if self._idle:
                self._idle -= 1
                start = False
            else:
                start = len(self._threads) < self.maxThreads
                if not start:
                    self._unclaimed += 1
        if start:
            thread = threading.Thread(
                target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True
            )
            try:
                thread.start()
            except RuntimeError:
                # The system starts no more threads (a process or thread
                # limit).  With none running the job could never run: say
                # so.  Otherwise it waits for one that does, like a job
                # queued beyond maxThreads; a thread that never started is
                # never counted, nor joined by stop().
                if not self._threads:
                    raise
                with self._mutex:
                    self._unclaimed += 1
            else:
                self._threads.append(thread)
        self._jobs.put((f, args, d))
        return d

    def _work(self) -> None:
        # A new thread was started for the job just queued: it takes a job
        # without counting itself idle.  Afterwards it is idle unless a job
        # is waiting for any thread.
        disfavourWakeups()
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            self._run(*job)
            del job  # nothing of a finished job stays alive in this thread
            with self._mutex:
                if self._unclaimed:
                    self._unclaimed -= 1
                else:
                    self._idle += 1

    def _run(self, f: Callable[..., Any], args: tuple[Any, ...], d: Deferred[Any]) -> None:
        try:
            result = f(*args)
        except BaseException:
            self._callFromThread(d.errback, Failure())
        else:
            self._callFromThread(d.callback, result)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """
        Refuse new work, let the work already given finish, and wait for
        every worker thread to end, at most C{timeout} seconds in all.
        Called when the reactor shuts down.

        Threads still working then are left to the process's exit (they
        are daemon threads): for a job, as if the process had been killed,
        which the stores are made to survive (docs/maildir.rst).
        """
        if self._stopped:
            return
        self._stopped = True
        for _ in self._threads:
            self._jobs.put(_STOP)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        busy = sum(thread.is_alive() for thread in self._threads)
        if busy:
            _log.warn(
                "{busy} worker threads still busy after {timeout} s; not waiting for them",
                busy=busy,
                timeout=timeout,
            )
        self._threads = []


_default: ThreadRunner | None = None


def defaultRunner() -> ThreadRunner:
    """
    The process-wide L{ThreadRunner}, made on first use with the global
    reactor (so that importing popserv does not import it) and stopped
    when that reactor shuts down.
    """
    global _default
    if _default is None:
        from twisted.internet import reactor
        from twisted.internet.interfaces import IReactorCore, IReactorThreads

        runner = ThreadRunner(IReactorThreads(reactor).callFromThread)
        IReactorCore(reactor).addSystemEventTrigger("during", "shutdown", runner.stop)
        _default = runner
    return _default


def deferToThread(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
    """
    Run C{f(*args)} in a worker thread of the L{defaultRunner}; like
    L{twisted.internet.threads.deferToThread}.
    """
    return defaultRunner()(f, *args)
