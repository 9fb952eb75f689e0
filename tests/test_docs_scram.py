"""
The SCRAM key store example of docs/authentication.rst works as documented:
a client that knows only the password logs in with SCRAM-SHA-256 against a
server that knows only the keys, checks the server's signature, and
retrieves the message byte for byte.

The SCRAM client here is written from RFC 5802 and RFC 7677 with hashlib
and hmac alone, and is itself checked against RFC 7677's example exchange,
so that the test does not trust popserv's own SCRAM code.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from test_docs import EXAMPLES, TIMEOUT, loadExample, stop, waitForOutput

SCRAM_STORE = EXAMPLES / "scram_store.py"


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


@dataclass
class ScramClient:
    """
    The client side of SCRAM-SHA-256 without channel binding (RFC 5802
    section 3, RFC 7677), for ASCII names and passwords (which SASLprep
    leaves unchanged) without "," or "=".
    """

    user: bytes
    password: bytes
    nonce: bytes = field(default_factory=lambda: secrets.token_urlsafe(18).encode("ascii"))
    serverSignature: bytes | None = None
    salt: bytes | None = None
    iterations: int | None = None

    def first(self) -> bytes:
        """
        The client-first-message: no channel binding ("n"), no authzid.
        """
        return b"n,," + self._bare()

    def _bare(self) -> bytes:
        return b"n=" + self.user + b",r=" + self.nonce

    def final(self, serverFirst: bytes) -> bytes:
        """
        The client-final-message answering C{serverFirst}; remembers the
        server signature the server must send next.
        """
        attributes = dict(a.split(b"=", 1) for a in serverFirst.split(b","))
        nonce = attributes[b"r"]
        assert nonce.startswith(self.nonce) and len(nonce) > len(self.nonce)
        self.salt = base64.b64decode(attributes[b"s"])
        self.iterations = int(attributes[b"i"])
        salted = hashlib.pbkdf2_hmac("sha256", self.password, self.salt, self.iterations)
        clientKey = _hmac(salted, b"Client Key")
        storedKey = hashlib.sha256(clientKey).digest()
        withoutProof = b"c=" + base64.b64encode(b"n,,") + b",r=" + nonce
        authMessage = b",".join([self._bare(), serverFirst, withoutProof])
        proof = bytes(a ^ b for a, b in zip(clientKey, _hmac(storedKey, authMessage), strict=True))
        self.serverSignature = _hmac(_hmac(salted, b"Server Key"), authMessage)
        return withoutProof + b",p=" + base64.b64encode(proof)

    def serverFinalValid(self, serverFinal: bytes) -> bool:
        """
        Whether C{serverFinal} is C{v=} and the signature this client expects.
        """
        assert self.serverSignature is not None
        return serverFinal == b"v=" + base64.b64encode(self.serverSignature)


def test_clientMatchesRFC7677() -> None:
    """
    The test's SCRAM client reproduces the example exchange of RFC 7677
    section 3 octet for octet, server signature included.
    """
    client = ScramClient(b"user", b"pencil", nonce=b"rOprNGfwEbeRWgbNEkqO")
    assert client.first() == b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
    final = client.final(
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    )
    assert final == (
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    )
    assert client.serverFinalValid(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")


class Connection:
    """
    A POP3 connection that reads one line, or one multi-line response, at a
    time, every wait bounded by L{TIMEOUT}.
    """

    def __init__(self, port: int) -> None:
        self.socket = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.file = self.socket.makefile("rb")

    def line(self) -> bytes:
        """
        The next line, with its CRLF.
        """
        line = self.file.readline()
        assert line.endswith(b"\r\n"), line
        return line

    def send(self, line: bytes) -> bytes:
        """
        Send C{line} with CRLF and return the first line of the reply.
        """
        self.socket.sendall(line + b"\r\n")
        return self.line()

    def multiline(self, line: bytes) -> bytes:
        """
        Send C{line} and return the whole multi-line reply, status line and
        terminating "." included.
        """
        reply = [self.send(line)]
        assert reply[0].startswith(b"+OK"), reply[0]
        while reply[-1] != b".\r\n":
            reply.append(self.line())
        return b"".join(reply)

    def close(self) -> None:
        self.file.close()
        self.socket.close()


def scramLogin(connection: Connection, client: ScramClient) -> tuple[bytes, bytes | None]:
    """
    Run AUTH SCRAM-SHA-256 with an initial response.  Returns the reply
    that ended the exchange and the server-final-message (L{None} if the
    server sent none).
    """
    reply = connection.send(b"AUTH SCRAM-SHA-256 " + base64.b64encode(client.first()))
    assert reply.startswith(b"+ "), reply
    serverFirst = base64.b64decode(reply[2:-2], validate=True)
    reply = connection.send(base64.b64encode(client.final(serverFirst)))
    if not reply.startswith(b"+ "):
        return reply, None
    serverFinal = base64.b64decode(reply[2:-2], validate=True)
    # RFC 5034 section 4: the client answers the last challenge with an
    # empty line, and only then does the server say +OK.
    return connection.send(b""), serverFinal


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """
    The example running on a port the system picks; yields the port.
    """
    directory = tmp_path_factory.mktemp("scram_store")
    stdout = directory / "stdout"
    with stdout.open("wb") as out, (directory / "stderr").open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-u", str(SCRAM_STORE), "tcp:0:interface=127.0.0.1"],
            stdout=out,
            stderr=err,
            cwd=directory,
        )
    try:
        match = waitForOutput(stdout, rb"listening on 127\.0\.0\.1:(\d+)\n", process)
        yield int(match.group(1))
    finally:
        stop(process)


@pytest.fixture
def connection(server: int) -> Iterator[Connection]:
    """
    A new connection to the example, greeting read.
    """
    connection = Connection(server)
    try:
        # No APOP timestamp: the checker cannot verify APOP digests.
        assert connection.line() == b"+OK POP3 server ready\r\n"
        yield connection
    finally:
        connection.close()


def welcomeOnTheWire() -> tuple[int, bytes]:
    """
    The size of the example's message and the response RETR sends for it:
    the status line with that size, the message with CRLF line endings and
    byte-stuffed, and the terminating ".".
    """
    welcome = loadExample(SCRAM_STORE).WELCOME
    assert welcome.endswith(b"\n") and b"\n." in welcome  # shows stuffing
    wire = welcome.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    stuffed = wire.replace(b"\r\n.", b"\r\n..")
    return len(wire), b"+OK %d octets\r\n" % len(wire) + stuffed + b".\r\n"


@pytest.mark.integration
def test_scramLoginAndRetrieve(connection: Connection) -> None:
    """
    CAPA offers SCRAM-SHA-256, PLAIN and LOGIN but not CRAM-MD5 (which
    needs the password); a SCRAM-SHA-256 login with the right password
    succeeds with a server signature the client verifies, using the stored
    16-octet salt and 4096 iterations; RETR then sends alice's message
    byte-exactly, and QUIT deletes nothing.
    """
    capabilities = connection.multiline(b"CAPA")
    assert b"\r\nSASL SCRAM-SHA-256 PLAIN LOGIN\r\n" in capabilities

    client = ScramClient(b"alice", b"secret")
    reply, serverFinal = scramLogin(connection, client)
    assert serverFinal is not None and client.serverFinalValid(serverFinal)
    size, retrieved = welcomeOnTheWire()
    assert reply == b"+OK Logged in, 1 messages (%d octets)\r\n" % size
    assert client.salt is not None and len(client.salt) == 16
    assert client.iterations == 4096

    assert connection.multiline(b"RETR 1") == retrieved
    assert connection.send(b"QUIT") == b"+OK Bye, 1 messages left\r\n"


@pytest.mark.integration
@pytest.mark.parametrize(("user", "password"), [(b"alice", b"wrong"), (b"mallory", b"secret")])
def test_scramRefused(connection: Connection, user: bytes, password: bytes) -> None:
    """
    A wrong password, or a user the store does not know, ends the exchange
    with the same [AUTH] reply and no server signature; the unknown user
    was sent a salt and iteration count of the same shape as a real one.
    The session stays usable.
    """
    client = ScramClient(user, password)
    reply, serverFinal = scramLogin(connection, client)
    assert (reply, serverFinal) == (b"-ERR [AUTH] Authentication failed\r\n", None)
    assert client.salt is not None and len(client.salt) == 16
    assert client.iterations == 4096
    assert connection.send(b"QUIT") == b"+OK Bye\r\n"


@pytest.mark.integration
def test_passwordLoginRecomputesKeys(connection: Connection) -> None:
    """
    USER/PASS works too (on loopback): the checker recomputes the keys from
    the password; a wrong one is refused.
    """
    assert connection.send(b"USER alice") == b"+OK Send PASS\r\n"
    assert connection.send(b"PASS wrong") == b"-ERR [AUTH] Authentication failed\r\n"
    assert connection.send(b"USER alice") == b"+OK Send PASS\r\n"
    assert connection.send(b"PASS secret").startswith(b"+OK Logged in, 1 messages")
    assert connection.send(b"QUIT") == b"+OK Bye, 1 messages left\r\n"
