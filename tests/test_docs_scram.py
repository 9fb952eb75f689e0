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

import secrets
import socket
from collections.abc import Iterator

import pytest
from processes import TIMEOUT, runningExample
from scram_client import ScramClient, authenticate
from test_docs import EXAMPLES, loadExample

SCRAM_STORE = EXAMPLES / "scram_store.py"


def test_clientMatchesRFC7677() -> None:
    """
    The test's SCRAM client reproduces the example exchange of RFC 7677
    section 3 octet for octet, server signature included.
    """
    client = ScramClient("user", b"pencil", nonce="rOprNGfwEbeRWgbNEkqO")
    assert client.first() == b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
    final = client.final(
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    )
    assert final == (
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    )
    assert client.checkServerFinal(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")


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


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """
    The example running on a port the system picks; yields the port.
    """
    with runningExample(SCRAM_STORE, tmp_path_factory.mktemp("scram_store")) as port:
        yield port


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

    client = ScramClient("alice", b"secret", nonce=secrets.token_urlsafe(18))
    # authenticate() checks the server signature in the last challenge.
    replies = authenticate(lambda line: connection.send(line)[:-2], client)
    size, retrieved = welcomeOnTheWire()
    assert len(replies) == 3
    assert replies[2] == b"+OK Logged in, 1 messages (%d octets)" % size
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
    client = ScramClient(user.decode(), password, nonce=secrets.token_urlsafe(18))
    replies = authenticate(lambda line: connection.send(line)[:-2], client)
    assert replies[1:] == [b"-ERR [AUTH] Authentication failed"]
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
