"""
Tests for L{popserv.tls.ReloadableTLS}'s reloads (the files themselves are
tested through the server in the integration tests).
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from twisted.internet.defer import Deferred, fail
from twisted.python.failure import Failure

from popserv.tls import ReloadableTLS, TLSConfigError


class _Options:
    """
    Stands for the C{CertificateOptions} one reading of the files gives.
    """

    def __init__(self) -> None:
        self.context = SSL.Context(SSL.TLS_METHOD)

    def getContext(self) -> SSL.Context:
        return self.context


class _Files:
    """
    Stands for L{popserv.tls.TLSFiles}: the constructor's reading.
    """

    certificate = "cert.pem"

    def __init__(self) -> None:
        self.first = _Options()

    def load(self) -> _Options:
        return self.first


class _Runner:
    """
    A runner whose jobs finish when the test says, in the order it says.
    """

    def __init__(self) -> None:
        self.jobs: list[Deferred[Any]] = []

    def __call__(self, f: Any, *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.jobs.append(d)
        return d


def _inUse(tls: ReloadableTLS) -> SSL.Context:
    return tls.serverConnectionForTLS(None).get_context()


def _outcome(d: Deferred[bool]) -> list[object]:
    results: list[object] = []
    d.addBoth(results.append)
    return results


def test_reloadsInOrder() -> None:
    """
    Each reload that finishes puts its certificate in use.
    """
    files = _Files()
    tls = ReloadableTLS(files)  # type: ignore[arg-type]
    assert _inUse(tls) is files.first.context
    runner = _Runner()
    first, second = _Options(), _Options()
    results = [_outcome(tls.reload(runner)), _outcome(tls.reload(runner))]
    runner.jobs[0].callback(first)
    assert _inUse(tls) is first.context
    runner.jobs[1].callback(second)
    assert _inUse(tls) is second.context
    assert results == [[True], [True]]


def test_laterReloadWins() -> None:
    """
    Two reloads close together (two SIGHUPs) that finish in the other
    order: the earlier one read the files first, so the later one's
    certificate stays in use and the earlier one says it was not used.
    """
    tls = ReloadableTLS(_Files())  # type: ignore[arg-type]
    runner = _Runner()
    old, new = _Options(), _Options()
    results = [_outcome(tls.reload(runner)), _outcome(tls.reload(runner))]
    runner.jobs[1].callback(new)
    runner.jobs[0].callback(old)
    assert _inUse(tls) is new.context
    assert results == [[False], [True]]


def test_earlierReloadAfterLaterFailed() -> None:
    """
    A later reload that failed does not hold back an earlier one that
    finishes after it: that one read the files after the certificate in
    use was read.
    """
    files = _Files()
    tls = ReloadableTLS(files)  # type: ignore[arg-type]
    runner = _Runner()
    earlier = _Options()
    results = [_outcome(tls.reload(runner)), _outcome(tls.reload(runner))]
    runner.jobs[1].errback(Failure(TLSConfigError("no such file")))
    assert _inUse(tls) is files.first.context
    runner.jobs[0].callback(earlier)
    assert _inUse(tls) is earlier.context
    assert results == [[True], [False]]


def test_failedReloadKeepsCertificate() -> None:
    """
    A reload whose files cannot be used keeps the certificate in use.
    """
    files = _Files()
    tls = ReloadableTLS(files)  # type: ignore[arg-type]
    d = tls.reload(lambda f: fail(TLSConfigError("the key does not match")))
    assert _outcome(d) == [False]
    assert _inUse(tls) is files.first.context


def test_threeReloadsLaterFailed() -> None:
    """
    Three reloads; the first finishes, the third fails, the second finishes
    last: the second read the files after the first, so its certificate
    is the one to serve.
    """
    tls = ReloadableTLS(_Files())  # type: ignore[arg-type]
    runner = _Runner()
    first, second = _Options(), _Options()
    results = [_outcome(tls.reload(runner)) for _ in range(3)]
    runner.jobs[0].callback(first)
    runner.jobs[2].errback(Failure(TLSConfigError("no such file")))
    runner.jobs[1].callback(second)
    assert _inUse(tls) is second.context
    assert results == [[True], [True], [False]]
