"""
Tests for popserv.threads.ThreadRunner: work runs in worker threads, its
result or failure comes back through callFromThread, and the number of
threads grows with the work up to a bound.
"""

from __future__ import annotations

import gc
import inspect
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from twisted.internet.interfaces import IReactorCore, IReactorThreads
from twisted.logger import capturedLogs, formatEvent
from zope.interface import implementer

from popserv.threads import RunnerStopped, ThreadRunner, disfavourWakeups

#: The longest any test waits for a worker.
WAIT = 10.0


class FakeReactor:
    """
    callFromThread that queues the call; the test runs it with L{deliver},
    in the test's thread, as the reactor would in its own.
    """

    def __init__(self) -> None:
        self.calls: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...]]] = (
            queue.SimpleQueue()
        )

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:
        self.calls.put((f, args))

    def deliver(self, count: int = 1) -> None:
        for _ in range(count):
            f, args = self.calls.get(timeout=WAIT)
            f(*args)


@pytest.fixture
def fake() -> FakeReactor:
    return FakeReactor()


@pytest.fixture
def runner(fake: FakeReactor) -> Iterator[ThreadRunner]:
    runner = ThreadRunner(fake.callFromThread, maxThreads=3)
    yield runner
    runner.stop()


def test_result(fake: FakeReactor, runner: ThreadRunner) -> None:
    """
    The callable runs in another thread with the arguments given; its
    result fires the Deferred only when the reactor runs the call back.
    """
    d = runner(lambda a, b: (a + b, threading.current_thread()), 2, 3)
    results: list[Any] = []
    d.addCallback(results.append)
    assert results == []
    fake.deliver()
    [(total, thread)] = results
    assert total == 5
    assert thread is not threading.current_thread()
    assert thread.name == "popserv-worker-0"


def test_failure(fake: FakeReactor, runner: ThreadRunner) -> None:
    """
    An exception comes back as the Deferred's failure, with its type and
    message.
    """

    def fails() -> None:
        raise OSError(5, "Input/output error")

    failures: list[Any] = []
    runner(fails).addErrback(failures.append)
    fake.deliver()
    [failure] = failures
    assert failure.check(OSError)
    assert failure.value.errno == 5


def test_threadsReused(fake: FakeReactor, runner: ThreadRunner) -> None:
    """
    Work given one job at a time is done by one thread.
    """
    seen = set()
    for _ in range(20):
        d = runner(threading.current_thread)
        d.addCallback(seen.add)
        fake.deliver()
    assert len(seen) == 1


def test_jobDoesNotWaitBehindARunningOne(fake: FakeReactor, runner: ThreadRunner) -> None:
    """
    While one job blocks, the next one gets a thread of its own: here the
    first job waits for the second, which could never run otherwise.
    """
    released = threading.Event()
    first = runner(released.wait, WAIT)
    second = runner(released.set)
    results: list[Any] = []
    first.addCallback(results.append)
    second.addCallback(results.append)
    fake.deliver(2)
    assert sorted(results, key=repr) == [None, True]


def test_idleThreadClaimed(fake: FakeReactor, runner: ThreadRunner) -> None:
    """
    A job given while a thread is idle goes to it rather than starting
    another; a second job given before that thread has picked the first up
    still gets a thread of its own (it does not wait behind the first).
    """
    runner(lambda: None)
    fake.deliver()  # one thread, now idle
    released = threading.Event()
    runner(released.wait, WAIT)
    runner(released.set)
    fake.deliver(2)
    assert len(runner._threads) == 2


def test_atMostMaxThreads(fake: FakeReactor, runner: ThreadRunner) -> None:
    """
    With maxThreads busy, further work waits in order and is done as
    threads come free; no more threads are started.
    """
    gate = threading.Event()
    order: list[int] = []
    lock = threading.Lock()

    def job(n: int) -> int:
        if n < 3:
            gate.wait(WAIT)
        with lock:
            order.append(n)
        return n

    ds = [runner(job, n) for n in range(6)]
    assert len(runner._threads) == 3
    results: list[int] = []
    for d in ds:
        d.addCallback(results.append)
    # Jobs 3-5 have no thread while 0-2 block (a tenth of a second is
    # plenty for a free thread to have taken one).
    assert fake.calls.empty()
    threading.Event().wait(0.1)
    assert order == []
    gate.set()
    fake.deliver(6)
    assert sorted(results) == list(range(6))
    assert len(runner._threads) == 3


def test_stop(fake: FakeReactor, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    stop() lets queued work finish, ends every thread, each by returning
    (not by an exception, which would put a traceback on a stopping
    server's standard error), logs nothing when none is left busy, and
    refuses new work.
    """
    uncaught: list[Any] = []
    monkeypatch.setattr(threading, "excepthook", uncaught.append)
    runner = ThreadRunner(fake.callFromThread, maxThreads=2)
    done = []
    for n in range(4):
        runner(done.append, n)
    threads = list(runner._threads)
    with capturedLogs() as events:
        runner.stop()
    assert sorted(done) == [0, 1, 2, 3]
    assert not [t for t in threads if t.is_alive()]
    assert (uncaught, events) == ([], [])
    with pytest.raises(RunnerStopped, match=r"^the thread runner is stopped$"):
        runner(done.append, 5)


def test_stopBounded(fake: FakeReactor) -> None:
    """
    stop() waits at most its timeout for work that hangs (a file system
    gone), says so in the log, and returns; the hung thread is a daemon
    thread, left to the process's exit.
    """
    runner = ThreadRunner(fake.callFromThread, maxThreads=2)
    hung, started = threading.Event(), threading.Event()

    def hang() -> None:
        started.set()
        hung.wait(WAIT)

    runner(hang)
    done: list[int] = []
    runner(done.append, 1)
    threads = list(runner._threads)
    try:
        assert started.wait(WAIT)
        before = time.monotonic()
        with capturedLogs() as events:
            runner.stop(timeout=0.2)
        waited = time.monotonic() - before
        assert 0.2 <= waited < WAIT / 2
        busy = [thread for thread in threads if thread.is_alive()]
        assert (done, len(busy), busy[0].daemon) == ([1], 1, True)
        assert [formatEvent(e) for e in events] == [
            "1 worker threads still busy after 0.2 s; not waiting for them"
        ]
    finally:
        hung.set()
        for thread in threads:
            thread.join(WAIT)


def test_stopDeadlineAcrossTenThreads() -> None:
    """
    stop(timeout) bounds the wait for all threads together, not each one:
    ten hung threads, 0.3 s.
    """
    runner = ThreadRunner(lambda f, *a: None, maxThreads=10)
    release = threading.Event()
    for _ in range(10):
        runner(release.wait, WAIT)
    threads = list(runner._threads)
    try:
        start = time.monotonic()
        runner.stop(timeout=0.3)
        assert time.monotonic() - start < 1.5
    finally:
        release.set()
        for thread in threads:
            thread.join(WAIT)


def test_maxThreadsChecked(fake: FakeReactor) -> None:
    """
    At least one thread: none is refused, and one does the work.
    """
    with pytest.raises(ValueError, match="at least 1"):
        ThreadRunner(fake.callFromThread, maxThreads=0)
    runner = ThreadRunner(fake.callFromThread, maxThreads=1)
    try:
        results: list[int] = []
        for n in range(2):
            runner(int, n).addCallback(results.append)
        fake.deliver(2)
        assert (results, len(runner._threads)) == ([0, 1], 1)
    finally:
        runner.stop()


def test_documentedDefaults(fake: FakeReactor) -> None:
    """
    As docs/operating.rst tells the operator: at most ten worker threads,
    and a stopping server waits at most 10 seconds for their work.
    """
    runner = ThreadRunner(fake.callFromThread)
    assert runner.maxThreads == 10
    assert inspect.signature(runner.stop).parameters["timeout"].default == 10.0


def _batchAllowed() -> bool:
    """
    Whether this system lets a thread make itself C{SCHED_BATCH}: asked in
    a thread of its own, which then ends.
    """
    allowed: list[bool] = []

    def ask() -> None:
        try:
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        except OSError:
            allowed.append(False)
        else:
            allowed.append(True)

    thread = threading.Thread(target=ask)
    thread.start()
    thread.join(WAIT)
    return allowed == [True]


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="no SCHED_BATCH on this platform")
def test_workersDisfavourWakeups(fake: FakeReactor, runner: ThreadRunner) -> None:
    """
    On Linux a worker thread runs as C{SCHED_BATCH}, so that waking it for
    a job does not preempt the reactor thread; the thread that gave the
    work keeps its own policy.
    """
    if not _batchAllowed():
        pytest.skip("this system refuses SCHED_BATCH (a seccomp filter?)")
    before = os.sched_getscheduler(0)
    d = runner(os.sched_getscheduler, 0)
    policies: list[int] = []
    d.addCallback(policies.append)
    fake.deliver()
    assert policies == [os.SCHED_BATCH]
    assert os.sched_getscheduler(0) == before


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="no SCHED_BATCH on this platform")
def test_disfavourWakeupsRefused(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Where the system refuses the policy (a sandbox's seccomp filter, say),
    the thread goes on as it is.
    """
    calls: list[tuple[Any, ...]] = []

    def refuse(*args: Any) -> None:
        calls.append(args)
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", refuse, raising=False)
    disfavourWakeups()
    assert len(calls) == 1


def test_noThreadToBeHad(
    fake: FakeReactor, runner: ThreadRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    When the system starts no more threads, work waits for a worker that
    runs; with none running, the call fails at once.  A thread that never
    started is not kept, so stop() does not wait for it.
    """
    results: list[Any] = []
    release = threading.Event()
    runner(release.wait, WAIT).addCallback(results.append)

    def refused(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refused)
    runner(lambda: "waited").addCallback(results.append)
    release.set()
    fake.deliver(2)
    assert results == [True, "waited"]
    assert len(runner._threads) == 1
    alone = ThreadRunner(fake.callFromThread)
    with pytest.raises(RuntimeError, match="can't start new thread"):
        alone(lambda: None)
    assert alone._threads == []
    alone.stop()


def _eventually(condition: Callable[[], bool]) -> bool:
    """
    Whether C{condition} holds within L{WAIT} seconds (asked every 10 ms).
    """
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_jobWaitingForARefusedThreadIsClaimed(
    fake: FakeReactor, runner: ThreadRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    A job whose thread the system refused is taken by the next thread that
    comes free, which is then busy, not idle: a job given while it runs
    starts a thread of its own rather than waiting behind it.  Once all is
    done, each thread counts as idle once.
    """
    release, started, gate = threading.Event(), threading.Event(), threading.Event()
    results: list[Any] = []
    runner(release.wait, WAIT).addCallback(results.append)

    def refused(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    def second() -> bool:
        started.set()
        return gate.wait(WAIT)

    with monkeypatch.context() as patched:
        patched.setattr(threading.Thread, "start", refused)
        runner(second).addCallback(results.append)
    release.set()
    assert started.wait(WAIT)  # the first thread took it: it is busy again
    runner(gate.set).addCallback(results.append)
    fake.deliver(3)
    assert sorted(results, key=repr) == [None, True, True]
    assert len(runner._threads) == 2
    assert _eventually(lambda: runner._idle == 2)
    assert runner._unclaimed == 0


def test_finishedJobNotKept(fake: FakeReactor, runner: ThreadRunner) -> None:
    """
    A worker waiting for its next job keeps nothing of the last one: its
    arguments and its result (here the same object; a message's octets,
    say) can be freed.
    """

    class Big:
        pass

    argument = Big()
    results: list[Any] = []
    runner(lambda a: a, argument).addCallback(results.append)
    fake.deliver()
    assert results == [argument]
    assert _eventually(lambda: runner._idle == 1)
    gone = weakref.ref(argument)
    del argument, results
    gc.collect()
    assert gone() is None


@implementer(IReactorCore, IReactorThreads)
class FakeGlobalReactor(FakeReactor):
    """
    The global reactor as L{defaultRunner} sees it: it takes system event
    triggers and calls from threads.
    """

    def __init__(self) -> None:
        super().__init__()
        self.triggers: list[tuple[str, str, Callable[..., Any]]] = []

    def addSystemEventTrigger(
        self, phase: str, eventType: str, callable: Callable[..., Any], *args: Any
    ) -> None:
        self.triggers.append((phase, eventType, callable))


def test_defaultRunner(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    deferToThread runs work in the process's one ThreadRunner, made on
    first use with the global reactor's callFromThread and stopped during
    that reactor's shutdown.
    """
    import twisted.internet

    from popserv import threads

    fake = FakeGlobalReactor()
    monkeypatch.setattr(twisted.internet, "reactor", fake, raising=False)
    monkeypatch.setattr(threads, "_default", None)
    runner = threads.defaultRunner()
    try:
        assert threads.defaultRunner() is runner
        assert isinstance(runner, ThreadRunner)
        assert fake.triggers == [("during", "shutdown", runner.stop)]
        results: list[Any] = []
        threads.deferToThread(lambda a, b: (a, b, threading.current_thread()), 1, 2).addCallback(
            results.append
        )
        fake.deliver()
        [(a, b, thread)] = results
        assert (a, b, thread in runner._threads) == (1, 2, True)
    finally:
        runner.stop()
