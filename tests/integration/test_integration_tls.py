"""
TLS on the real server: STLS (RFC 2595) and implicit TLS (RFC 8314) with
Python's ssl module, the TLS 1.2 floor, certificate reload on SIGHUP while a
session runs, and SASL EXTERNAL with real client certificates.
"""

from __future__ import annotations

import base64
import poplib
import re
import signal
import socket
import ssl
import struct
import time

import pytest
from certificates import CertificateAuthority, Issued
from scram_client import ScramClient, authenticate

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"


def tlsPort(server, deadline: float = 15) -> int:
    """
    The port of the second listener (the ssl: one), read from the log.
    """
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        ports = re.findall(r"starting on (\d+)", server.output())
        if len(ports) >= 2:
            return int(ports[1])
        time.sleep(0.05)
    pytest.fail("no second listener:\n" + server.output())


def context(ca: CertificateAuthority, client: Issued | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca.files.certificate))
    if client is not None:
        ctx.load_cert_chain(str(client.certificate), str(client.key))
    return ctx


def startTLSServer(start_server, maildir_root, ca, auth=None, clientCA: bool = False, more=()):
    """
    A server for C{maildir:ROOT/{user}} with STLS on its tcp: listener and
    implicit TLS on a second, ssl: one, both with a certificate from C{ca}
    for 127.0.0.1 (C{server.cert}; the ssl: port is C{server.tlsPort});
    with C{clientCA}, accepting client certificates from C{ca}; with the
    options C{more}.
    """
    cert = ca.issue("localhost", ["localhost", HOST], filename="server")
    extra = ["--tls-cert", str(cert.certificate), "--tls-key", str(cert.key), *more]
    if clientCA:
        extra += ["--tls-client-ca", str(ca.files.certificate)]
    extra += ["--listen", f"ssl:0:interface={HOST}"]
    options = {} if auth is None else {"auth": auth}
    server = start_server(f"maildir:{maildir_root}/{{user}}", extra=extra, **options)
    server.tlsPort = tlsPort(server)
    server.cert = cert
    return server


def startExternalServer(start_server, maildir_root, ca, deliver, message: bytes):
    """
    A server accepting client certificates from C{ca} (C{--auth cert}),
    with C{message} for alice@example.org.
    """
    mailbox = maildir_root / "alice@example.org"
    for sub in ("tmp", "new", "cur"):
        (mailbox / sub).mkdir(parents=True)
    deliver(mailbox, message)
    return startTLSServer(start_server, maildir_root, ca, auth=["cert"], clientCA=True)


@pytest.fixture
def tls_server(start_server, maildir_root, maildir, deliver, ca):
    """
    A server with STLS and implicit TLS (L{startTLSServer}) and one message.
    """
    deliver(maildir, b"Subject: over TLS\r\n\r\nsecret body\r\n")
    return startTLSServer(start_server, maildir_root, ca)


def test_stls(tls_server, ca):
    """
    poplib's stls() upgrades the connection; CAPA no longer offers STLS and
    the message comes over TLS byte-exactly.
    """
    client = poplib.POP3(HOST, tls_server.port, timeout=10)
    try:
        assert "STLS" in client.capa()
        client.stls(context=context(ca))
        assert client.sock.version() in ("TLSv1.2", "TLSv1.3")
        assert "STLS" not in client.capa()
        retrieveOne(client)
    finally:
        client.close()


def retrieveOne(client: poplib.POP3) -> None:
    """
    Log in as alice, check that message 1 comes byte-exactly, and quit.
    """
    client.user("alice")
    client.pass_("secret")
    assert client.retr(1)[1] == [b"Subject: over TLS", b"", b"secret body"]
    client.quit()


def test_noLocalCleartext(start_server, maildir_root, maildir, deliver, ca):
    """
    With --no-local-cleartext, a client on this machine must start TLS
    before it may send its password, as one on any other must (RFC 2595
    section 2.3): USER is neither advertised nor accepted in clear.
    """
    deliver(maildir, b"Subject: over TLS\r\n\r\nsecret body\r\n")
    server = startTLSServer(start_server, maildir_root, ca, more=["--no-local-cleartext"])
    client = poplib.POP3(HOST, server.port, timeout=10)
    try:
        assert "USER" not in client.capa()
        with pytest.raises(poplib.error_proto) as refused:
            client.user("alice")
        assert refused.value.args == (
            b"-ERR [AUTH] Plaintext authentication disallowed on non-secure connections",
        )
        client.stls(context=context(ca))
        assert "USER" in client.capa()
        retrieveOne(client)
    finally:
        client.close()


def test_implicitTLS(tls_server, ca, wait_until):
    """
    The ssl: listener speaks TLS from the first octet (port 995 style); the
    session's audit line gives the TLS version.
    """
    client = poplib.POP3_SSL(HOST, tls_server.tlsPort, context=context(ca), timeout=10)
    try:
        assert client.getwelcome().startswith(b"+OK")
        assert "STLS" not in client.capa()
        client.user("alice")
        client.pass_("secret")
        assert client.stat() == (1, 34)
        version = client.sock.version()
        client.quit()
    finally:
        client.close()
    assert wait_until(lambda: f"user=alice ip=127.0.0.1 tls={version} " in tls_server.output())


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
# Offering the old versions is the point; the ssl module warns that they
# are deprecated (DeprecationWarning, Python 3.10 on).
@pytest.mark.filterwarnings(r"ignore:ssl\.TLSVersion\.TLSv1(_1)? is deprecated:DeprecationWarning")
def test_oldTLSRefused(tls_server, ca, version):
    """
    TLS 1.0 and 1.1 handshakes fail: the floor is TLS 1.2.
    """
    ctx = context(ca)
    ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    ctx.maximum_version = version
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    with (
        socket.create_connection((HOST, tls_server.tlsPort), timeout=10) as raw,
        pytest.raises(ssl.SSLError),
        ctx.wrap_socket(raw, server_hostname=HOST) as tls,
    ):
        tls.recv(100)


def test_reloadOnSIGHUP(tls_server, ca):
    """
    After SIGHUP new connections get the new certificate, while a session
    that was open before goes on undisturbed.
    """
    old = poplib.POP3_SSL(HOST, tls_server.tlsPort, context=context(ca), timeout=10)
    try:
        old.user("alice")
        old.pass_("secret")
        renewed = ca.issue("renewed", ["localhost", HOST], filename="renewed")
        tls_server.cert.certificate.write_bytes(renewed.certificate.read_bytes())
        tls_server.cert.key.write_bytes(renewed.key.read_bytes())
        tls_server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "reloaded" not in tls_server.output() and time.monotonic() < deadline:
            time.sleep(0.05)
        new = poplib.POP3_SSL(HOST, tls_server.tlsPort, context=context(ca), timeout=10)
        try:
            subject = dict(x[0] for x in new.sock.getpeercert()["subject"])
            assert subject["commonName"] == "renewed"
        finally:
            new.close()
        assert old.stat() == (1, 34)
        old.quit()
    finally:
        old.close()


@pytest.fixture
def external_server(start_server, maildir_root, ca, deliver):
    """
    A server accepting client certificates from the test CA (--auth cert).
    """
    message = b"Subject: for the certificate\r\n\r\nhi\r\n"
    return startExternalServer(start_server, maildir_root, ca, deliver, message)


def external(server, ctx, authzid: bytes) -> bytes:
    client = poplib.POP3_SSL(HOST, server.tlsPort, context=ctx, timeout=10)
    try:
        sasl = client.capa().get("SASL", [])
        response = base64.b64encode(authzid).decode() if authzid else "="
        try:
            reply = client._shortcmd(f"AUTH EXTERNAL {response}")
        except poplib.error_proto as e:
            reply = e.args[0]
        return reply, sasl
    finally:
        client.close()


def test_external(external_server, ca):
    """
    A client certificate naming alice@example.org logs in as that user with
    SASL EXTERNAL, with the identity given or derived; EXTERNAL is offered
    only to a client that presented a certificate.
    """
    alice = ca.issue("alice", ["alice@example.org"], filename="alice")
    reply, sasl = external(external_server, context(ca, alice), b"")
    assert reply.startswith(b"+OK Logged in, 1 messages")
    assert sasl == ["EXTERNAL"]
    reply, _ = external(external_server, context(ca, alice), b"alice@EXAMPLE.org")
    assert reply.startswith(b"+OK Logged in")
    _, sasl = external(external_server, context(ca), b"")
    assert sasl == []


def test_externalWrongIdentity(external_server, ca):
    """
    A certificate cannot log in as a user it does not name.
    """
    bob = ca.issue("bob", ["bob@example.org"], filename="bob")
    reply, _ = external(external_server, context(ca, bob), b"alice@example.org")
    assert reply == b"-ERR [AUTH] Authentication failed"


def test_externalUntrustedCertificate(external_server, ca, tmp_path):
    """
    A client certificate from another CA fails the TLS handshake.
    """
    (tmp_path / "other").mkdir()
    other = CertificateAuthority(tmp_path / "other", name="another CA")
    mallory = other.issue("mallory", ["alice@example.org"], filename="mallory")
    # Not poplib: when the greeting cannot be read, POP3_SSL raises from its
    # constructor and leaves its socket open.  Under TLS 1.3 the client's
    # side of the handshake ends before the server has checked the
    # certificate, so the refusal comes as an alert (or a reset, or the end
    # of the stream) where the greeting would be.
    with socket.create_connection((HOST, external_server.tlsPort), timeout=10) as raw:
        try:
            with context(ca, mallory).wrap_socket(raw, server_hostname=HOST) as tls:
                greeting = tls.recv(100)
        except (ssl.SSLError, ConnectionError):
            greeting = b""
    assert greeting == b""


@pytest.mark.parametrize(
    ("cipher", "accepted"),
    [
        ("AES128-SHA", False),  # RSA key exchange, CBC
        ("AES256-GCM-SHA384", False),  # RSA key exchange: no forward secrecy
        ("ECDHE-ECDSA-AES128-SHA", False),  # CBC
        ("ECDHE-ECDSA-AES128-GCM-SHA256", True),
        ("ECDHE-ECDSA-CHACHA20-POLY1305", True),
    ],
)
def test_tls12Ciphers(tls_server, ca, cipher, accepted):
    """
    On TLS 1.2 only ECDHE key exchange with AEAD ciphers is accepted.
    """
    ctx = context(ca)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(cipher)
    with socket.create_connection((HOST, tls_server.tlsPort), timeout=10) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname=HOST) as tls:
                greeting = tls.recv(100)
        except ssl.SSLError:
            greeting = None
    assert (greeting is not None and greeting.startswith(b"+OK")) == accepted


class Line:
    """
    Line reading over a pyOpenSSL connection.
    """

    def __init__(self, connection):
        self.connection = connection
        self.buffer = b""

    def read(self) -> bytes:
        deadline = time.monotonic() + 10
        while b"\r\n" not in self.buffer and time.monotonic() < deadline:
            self.buffer += self.connection.recv(4096)
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def command(self, line: bytes) -> bytes:
        self.connection.sendall(line + b"\r\n")
        return self.read()


def pyopensslClient(port: int, ca: CertificateAuthority, maxVersion=None, resume=None):
    """
    A TLS client through pyOpenSSL, which (unlike the ssl module) can
    export keying material for tls-exporter; with C{resume}, an earlier
    such client, one that offers to resume its session.
    """
    from OpenSSL import SSL

    if resume is not None:
        ctx = resume.get_context()
    else:
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.load_verify_locations(str(ca.files.certificate))
        ctx.set_verify(SSL.VERIFY_PEER, lambda conn, cert, errno, depth, ok: bool(ok))
        if maxVersion is not None:
            ctx.set_max_proto_version(maxVersion)
    sock = socket.create_connection((HOST, port), timeout=10)
    # pyOpenSSL wants a blocking socket; the kernel's receive and send
    # timeouts keep every wait bounded.
    sock.settimeout(None)
    limit = struct.pack("ll", 10, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)
    connection = SSL.Connection(ctx, sock)
    connection.set_tlsext_host_name(b"localhost")
    if resume is not None:
        connection.set_session(resume.get_session())
    connection.set_connect_state()
    connection.do_handshake()
    return connection


def scramPlus(connection, kind: str, password: bytes = b"secret", tamper=False) -> list[bytes]:
    """
    A SCRAM-SHA-256-PLUS login with channel-binding data the client derives
    itself (RFC 9266 tls-exporter, RFC 5929 tls-unique and
    tls-server-end-point); returns the server's replies, greeting first.
    """
    import hashlib

    from cryptography.hazmat.primitives.serialization import Encoding

    if kind == "tls-exporter":
        cbdata = bytes(connection.export_keying_material(b"EXPORTER-Channel-Binding", 32))
    elif kind == "tls-unique":
        # RFC 5929 section 3.1: the first Finished message of the handshake:
        # the client's own in a full one, the server's in one that resumed
        # a session.  (pyOpenSSL does not say which this was but through
        # its bindings of OpenSSL's own functions.)
        from OpenSSL.SSL import _lib

        resumed = _lib.SSL_session_reused(connection._ssl)
        cbdata = (connection.get_peer_finished() if resumed else connection.get_finished()) or b""
    else:
        cert = connection.get_peer_certificate().to_cryptography()
        cbdata = hashlib.sha256(cert.public_bytes(Encoding.DER)).digest()
    if tamper:
        cbdata = bytes(32)
    lines = Line(connection)
    greeting = lines.read()
    client = ScramClient(
        "alice", password, nonce="plusclientnonce123", flag="p=" + kind, channelBinding=cbdata
    )
    return [greeting, *authenticate(lines.command, client, b"SCRAM-SHA-256-PLUS")]


@pytest.mark.parametrize(
    ("kind", "maxVersion"),
    [
        ("tls-exporter", None),
        ("tls-server-end-point", None),
        ("tls-server-end-point", "1.2"),
        ("tls-unique", "1.2"),
    ],
)
def test_scramPlus(tls_server, ca, kind, maxVersion):
    """
    SCRAM-SHA-256-PLUS logs in over real TLS with each channel-binding
    type the connection has (tls-exporter on TLS 1.3, tls-unique on TLS
    1.2, tls-server-end-point on either), and the server proves it knows
    the password.
    """
    from OpenSSL import SSL

    version = SSL.TLS1_2_VERSION if maxVersion else None
    connection = pyopensslClient(tls_server.tlsPort, ca, version)
    try:
        replies = scramPlus(connection, kind)
        assert replies[0].startswith(b"+OK")
        assert replies[-1].startswith(b"+OK Logged in, 1 messages")
    finally:
        connection.close()


def test_tlsUniqueWhenResumptionOffered(tls_server, ca):
    """
    A client that offers to resume its last TLS 1.2 session gets a full
    handshake, so that its -PLUS login with tls-unique works: the
    server's tls-unique, its peer's Finished message, counts on never
    resuming (where the first Finished message is the server's).
    """
    from OpenSSL import SSL

    first = pyopensslClient(tls_server.tlsPort, ca, SSL.TLS1_2_VERSION)
    try:
        assert scramPlus(first, "tls-unique")[-1].startswith(b"+OK Logged in")
        Line(first).command(b"QUIT")
        first.shutdown()  # a session cut without close_notify is not resumed
    finally:
        first.close()
    second = pyopensslClient(tls_server.tlsPort, ca, SSL.TLS1_2_VERSION, first)
    try:
        assert scramPlus(second, "tls-unique")[-1].startswith(b"+OK Logged in")
    finally:
        second.close()


def test_tlsUniqueOnlyOnTLS12(tls_server, ca):
    """
    TLS 1.3 has no tls-unique (RFC 9266): a client that binds to its
    Finished message there is told the type is not supported.
    """
    connection = pyopensslClient(tls_server.tlsPort, ca)
    try:
        assert connection.get_protocol_version_name() == "TLSv1.3"
        replies = scramPlus(connection, "tls-unique")
        assert replies[-1] == b"-ERR Unsupported channel binding type"
    finally:
        connection.close()


def test_scramPlusWrongBinding(tls_server, ca):
    """
    A -PLUS login with channel-binding data from another connection (a
    man in the middle) is refused.
    """
    connection = pyopensslClient(tls_server.tlsPort, ca)
    try:
        replies = scramPlus(connection, "tls-exporter", tamper=True)
        assert replies[-1].startswith(b"-ERR")
    finally:
        connection.close()


def test_tlsExporterOnlyOnTLS13(tls_server, ca):
    """
    On TLS 1.2 the server has no tls-exporter binding to offer (RFC 9266
    needs TLS 1.3 here); a client asking for it is refused.
    """
    from OpenSSL import SSL

    connection = pyopensslClient(tls_server.tlsPort, ca, SSL.TLS1_2_VERSION)
    try:
        lines = Line(connection)
        lines.read()
        gs2 = b"p=tls-exporter,,"
        reply = lines.command(
            b"AUTH SCRAM-SHA-256-PLUS " + base64.b64encode(gs2 + b"n=alice,r=abc")
        )
        assert reply.startswith(b"-ERR")
    finally:
        connection.close()
