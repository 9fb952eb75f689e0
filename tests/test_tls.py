"""
Tests for L{popserv.tls.ReloadableTLS}'s reloads and, through in-memory
handshakes, the TLS policy of L{popserv.tls.TLSFiles} (the files themselves
are tested through the server in the integration tests).
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from certificates import CertificateAuthority, selfSigned
from OpenSSL import SSL
from twisted.internet.defer import Deferred, fail
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure

from popserv.tls import EXPORTER_LABEL, ReloadableTLS, TLSConfigError, TLSFiles, channelBinding


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


def test_reloadsLogged() -> None:
    """
    Each reload logs what became of it, as docs/tls.rst shows: put in use,
    overtaken by a later one, or failed with the reason.
    """
    tls = ReloadableTLS(_Files())  # type: ignore[arg-type]
    runner = _Runner()
    with capturedLogs() as events:
        tls.reload(runner)
        tls.reload(runner)
        tls.reload(runner)
        runner.jobs[1].callback(_Options())
        runner.jobs[0].callback(_Options())
        runner.jobs[2].errback(Failure(TLSConfigError("--tls-cert cert.pem: no certificate in it")))
    assert [(e["log_level"].name, formatEvent(e)) for e in events] == [
        ("info", "TLS certificate reloaded from cert.pem"),
        ("info", "TLS reload from cert.pem overtaken by a later one; keeping that one's"),
        (
            "error",
            "TLS reload failed, keeping the old certificate: "
            "--tls-cert cert.pem: no certificate in it",
        ),
    ]


def test_reloadBugNotTakenForBadFiles() -> None:
    """
    Only L{TLSConfigError}, bad files, is a reload that failed and keeps
    the old certificate; anything else (a bug) is not disguised as one.
    """
    files = _Files()
    tls = ReloadableTLS(files)  # type: ignore[arg-type]
    with capturedLogs() as events:
        result = _outcome(tls.reload(lambda f: fail(ZeroDivisionError())))
    assert len(result) == 1
    assert isinstance(result[0], Failure)
    assert result[0].check(ZeroDivisionError)
    assert events == []
    assert _inUse(tls) is files.first.context


def _handshake(server: SSL.Connection, client: SSL.Connection) -> bool:
    """
    Run a TLS handshake between two connections in memory; whether it
    succeeded.  Bounded: a handshake takes a few round trips.
    """
    server.set_accept_state()
    client.set_connect_state()
    done = {id(server): False, id(client): False}
    for _ in range(20):
        for this, other in ((client, server), (server, client)):
            if not done[id(this)]:
                try:
                    this.do_handshake()
                    done[id(this)] = True
                except SSL.WantReadError:
                    pass
                except SSL.Error:
                    return False
            with contextlib.suppress(SSL.WantReadError):
                other.bio_write(this.bio_read(65536))
        if all(done.values()):
            return True
    raise AssertionError("the handshake neither finished nor failed")


@pytest.mark.parametrize(
    ("cipher", "accepted"),
    [
        ("AES128-GCM-SHA256", False),  # RSA key exchange: no forward secrecy
        ("AES256-GCM-SHA384", False),
        ("DHE-RSA-AES128-GCM-SHA256", False),  # finite-field DHE
        ("ECDHE-RSA-AES128-SHA", False),  # CBC
        ("ECDHE-RSA-AES128-GCM-SHA256", True),
        ("ECDHE-RSA-AES256-GCM-SHA384", True),
        ("ECDHE-RSA-CHACHA20-POLY1305", True),
    ],
)
def test_tls12CiphersWithRSAKey(ca: CertificateAuthority, cipher: str, accepted: bool) -> None:
    """
    With an RSA key, which could do RSA key exchange (no forward secrecy)
    and finite-field DHE, TLS 1.2 still takes only ECDHE with an AEAD
    cipher (the policy in L{popserv.tls}'s docstring).  The integration
    tests' certificates are ECDSA, which cannot do those at all.
    """
    issued = ca.issue("localhost", ["localhost"], rsaKey=True)
    options = TLSFiles(str(issued.certificate), str(issued.key)).load()
    clientContext = SSL.Context(SSL.TLS_METHOD)
    clientContext.set_max_proto_version(SSL.TLS1_2_VERSION)
    clientContext.set_cipher_list(cipher.encode("ascii"))
    server = SSL.Connection(options.getContext(), None)
    client = SSL.Connection(clientContext, None)
    assert _handshake(server, client) == accepted
    if accepted:
        assert client.get_cipher_name() == cipher
        assert client.get_protocol_version_name() == "TLSv1.2"


def test_chainSent(ca: CertificateAuthority) -> None:
    """
    The certificates of the chain file (--tls-chain), and those after the
    server's own in the certificate file, are sent after it in the
    handshake, in order: a client that knows only the root needs them.
    """
    issued = ca.issue("localhost", ["localhost"])
    other = ca.issue("other", ["other"])
    withChain = TLSFiles(str(issued.certificate), str(issued.key), chain=str(ca.files.certificate))
    bundle = issued.certificate.with_name("bundle.pem")
    bundle.write_bytes(issued.certificate.read_bytes() + other.certificate.read_bytes())
    both = TLSFiles(str(bundle), str(issued.key), chain=str(ca.files.certificate))
    for files, expected in [
        (withChain, ["localhost", "popserv test CA"]),
        (both, ["localhost", "other", "popserv test CA"]),
    ]:
        server = SSL.Connection(files.load().getContext(), None)
        client = SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)
        assert _handshake(server, client)
        # As cryptography's certificates: pyOpenSSL deprecates its X509 API.
        chain = client.get_peer_cert_chain(as_cryptography=True)
        assert chain is not None
        assert [c.subject.rfc4514_string() for c in chain] == [f"CN={n}" for n in expected]


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    # (SHA-1, which RFC 5929 maps to SHA-256, cannot be tested: cryptography
    # no longer signs with it.)
    [("SHA256", "sha256"), ("SHA384", "sha384"), ("SHA512", "sha512"), (None, "sha256")],
)
def test_tlsServerEndPoint(tmp_path: Any, algorithm: str | None, expected: str) -> None:
    """
    tls-server-end-point is the hash of the server's certificate with the
    hash of its signature (RFC 5929 section 4.1); SHA-256 for a signature
    without one (Ed25519).  A connection without a certificate of its own
    (the client's side here) has none.
    """
    import hashlib

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.serialization import Encoding

    issued = selfSigned(tmp_path / "cert", getattr(hashes, algorithm)() if algorithm else None)
    files = TLSFiles(str(issued.certificate), str(issued.key))
    server = SSL.Connection(files.load().getContext(), None)
    client = SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)
    assert _handshake(server, client)
    peer = client.get_peer_certificate()
    assert peer is not None
    der = peer.to_cryptography().public_bytes(Encoding.DER)
    assert channelBinding(server, "tls-server-end-point") == hashlib.new(expected, der).digest()
    assert channelBinding(client, "tls-server-end-point") is None


@pytest.mark.parametrize("version", [SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION])
def test_channelBindingByVersion(ca: CertificateAuthority, version: int) -> None:
    """
    tls-unique is the client's Finished message, on TLS 1.2 only;
    tls-exporter the keying material exported with RFC 9266's label, on
    TLS 1.3 only; without a connection, or of a kind not known, none.
    """
    issued = ca.issue("localhost", ["localhost"])
    server = SSL.Connection(TLSFiles(str(issued.certificate), str(issued.key)).load().getContext())
    clientContext = SSL.Context(SSL.TLS_METHOD)
    clientContext.set_min_proto_version(version)
    clientContext.set_max_proto_version(version)
    client = SSL.Connection(clientContext, None)
    assert _handshake(server, client)
    unique = channelBinding(server, "tls-unique")
    exporter = channelBinding(server, "tls-exporter")
    if version == SSL.TLS1_2_VERSION:
        assert unique is not None
        assert unique == client.get_finished()
        assert exporter is None
    else:
        assert unique is None
        assert exporter == client.export_keying_material(EXPORTER_LABEL, 32)
        assert exporter is not None
        assert len(exporter) == 32
    assert channelBinding(server, "tls-other") is None
    assert channelBinding(None, "tls-unique") is None
