"""
Tests for the POP3 extensions in popserv.protocol: CAPA (RFC 2449), SASL
AUTH (RFC 5034), STLS (RFC 2595), UTF8 (RFC 6856) and the cleartext policy,
as exact bytes over in-memory transports.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from typing import Any

import pytest
from protocol_helpers import Session, SlowChecker
from scram_client import ScramClient, authenticate
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.internet.address import HostnameAddress, IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ISSLTransport, ITLSTransport
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from zope.interface import alsoProvides, implementer

from popserv._version import __version__
from popserv.errors import POP3Error
from popserv.policy import SitePolicy, UserPolicy
from popserv.sasl import (
    Challenge,
    CramMD5Credentials,
    IMechanism,
    IMechanismFactory,
    MechanismFactory,
    Outcome,
)
from popserv.scram import scramSHA256Factory


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


@implementer(ITLSTransport)
class TLSCapableTransport(StringTransport):
    """
    A transport that can start TLS: records the call and from then on
    provides ISSLTransport, as Twisted's TCP transport does.
    """

    def __init__(self, peer: str = "192.0.2.7") -> None:
        super().__init__(peerAddress=IPv4Address("TCP", peer, 40000))
        self.tlsStartedWith: Any = None

    def startTLS(self, contextFactory: Any) -> None:
        self.tlsStartedWith = contextFactory
        alsoProvides(self, ISSLTransport)

    def getHandle(self) -> None:
        return None

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.noDelay = enabled


CERT = object()  # stands for the ReloadableTLS; only passed to startTLS


def capa(s: Session) -> list[bytes]:
    reply = s.command(b"CAPA")
    assert reply.startswith(b"+OK Capability list follows\r\n")
    assert reply.endswith(b"\r\n.\r\n")
    return reply.split(b"\r\n")[1:-2]


class TestCapa:
    def test_beforeLoginLocal(self) -> None:
        """
        Before login on a local connection CAPA lists USER and the SASL
        mechanisms the memory checker can verify, UTF8, and no STLS when no
        certificate is configured.
        """
        s = Session()
        assert s.command(b"CAPA") == (
            b"+OK Capability list follows\r\n"
            b"TOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\n"
            b"USER\r\nSASL SCRAM-SHA-256 CRAM-MD5 PLAIN LOGIN\r\nUTF8 USER\r\n.\r\n"
        )

    def test_afterLogin(self) -> None:
        """
        After login CAPA still announces the capabilities of the
        AUTHORIZATION state (RFC 2449 section 5: "MUST be announced in both
        states"), though their commands are now refused, and names the
        implementation.
        """
        s = Session()
        s.login()
        assert capa(s) == [
            b"TOP",
            b"UIDL",
            b"RESP-CODES",
            b"AUTH-RESP-CODE",
            b"PIPELINING",
            b"USER",
            b"SASL SCRAM-SHA-256 CRAM-MD5 PLAIN LOGIN",
            b"UTF8 USER",
            b"IMPLEMENTATION popserv " + __version__.encode(),
        ]
        assert s.command(b"USER alice").startswith(b"-ERR")
        assert s.command(b"UTF8").startswith(b"-ERR")

    def test_stlsAfterLogin(self) -> None:
        """
        STLS is announced after login on a connection without TLS too, as
        before it, and refused there.
        """
        s = Session(transport=TLSCapableTransport(peer="127.0.0.1"), tls=CERT)
        assert b"STLS" in capa(s)
        s.login()
        assert b"STLS" in capa(s)
        assert s.command(b"STLS").startswith(b"-ERR")

    def test_remoteCleartextHidesPlaintext(self) -> None:
        """
        On an unencrypted connection from another machine, USER, PLAIN and
        LOGIN are not advertised; STLS is, when a certificate is set.
        """
        s = Session(transport=TLSCapableTransport(), tls=CERT)
        lines = capa(s)
        assert b"USER" not in lines
        assert b"SASL SCRAM-SHA-256 CRAM-MD5" in lines
        assert b"STLS" in lines

    def test_allowCleartext(self) -> None:
        """
        With allowCleartext, plaintext logins are advertised everywhere.
        """
        s = Session(peer="192.0.2.1", allowCleartext=True)
        lines = capa(s)
        assert b"USER" in lines and b"SASL SCRAM-SHA-256 CRAM-MD5 PLAIN LOGIN" in lines

    @pytest.mark.parametrize(
        "peer",
        [IPv4Address("TCP", "127.0.0.1", 1), IPv6Address("TCP", "::1", 1), UNIXAddress(b"/s")],
    )
    def test_noLocalCleartext(self, peer: Any) -> None:
        """
        With localCleartext=False, a client on this machine is treated as
        one on any other (RFC 2595 section 2.3: "MUST be configurable to
        refuse all clear-text login commands"): plaintext logins are
        neither advertised nor accepted until TLS is on.
        """
        transport = TLSCapableTransport()
        transport.peerAddr = peer
        s = Session(transport=transport, tls=CERT, localCleartext=False)
        assert s.protocol.isLocal()
        lines = capa(s)
        assert b"USER" not in lines and b"SASL SCRAM-SHA-256 CRAM-MD5" in lines
        refused = b"-ERR [AUTH] Plaintext authentication disallowed on non-secure connections\r\n"
        assert s.command(b"USER alice") == refused
        assert s.command(b"AUTH PLAIN " + b64(b"\0alice\0secret")) == refused
        s.command(b"STLS")
        assert b"USER" in capa(s)
        assert s.login().startswith(b"+OK Logged in")

    @pytest.mark.parametrize(
        ("peer", "local"),
        [
            (IPv4Address("TCP", "127.0.0.1", 1), True),
            (IPv4Address("TCP", "127.1.2.3", 1), True),
            (IPv4Address("TCP", "10.127.0.1", 1), False),
            (IPv4Address("TCP", "192.0.2.1", 1), False),
            (IPv6Address("TCP", "::1", 1), True),
            (IPv6Address("TCP", "0:0:0:0:0:0:0:1", 1), True),
            # An IPv4 client of a dual-stack listener.
            (IPv6Address("TCP", "::ffff:127.0.0.1", 1), True),
            (IPv6Address("TCP", "::ffff:192.0.2.1", 1), False),
            (IPv6Address("TCP", "2001:db8::1", 1), False),
            (UNIXAddress(b"/s"), True),
            (HostnameAddress(b"localhost", 1), False),
        ],
    )
    def test_whoIsLocal(self, peer: Any, local: bool) -> None:
        """
        Passwords in clear are accepted by default from this machine only:
        loopback (127.0.0.0/8, ::1 however written, and IPv4 loopback
        mapped into IPv6) and UNIX sockets; from anywhere else, and from an
        address the server cannot place, they are refused (RFC 2595
        section 2.4).
        """
        s = Session(transport=StringTransport(peerAddress=peer))
        assert s.command(b"USER alice") == (
            b"+OK Send PASS\r\n"
            if local
            else b"-ERR [AUTH] Plaintext authentication disallowed on non-secure connections\r\n"
        )

    def test_localCleartextByDefault(self) -> None:
        """
        By default a client on this machine may log in in clear: the
        password crosses no network.
        """
        s = Session(peer="127.0.0.1")
        assert b"USER" in capa(s)
        assert s.login().startswith(b"+OK Logged in")

    def test_cleartextEverywhereAndNowhere(self) -> None:
        """
        Allowing passwords in clear everywhere and refusing them from this
        machine contradict each other: the factory refuses the pair.
        """
        with pytest.raises(ValueError, match="choose one"):
            Session(allowCleartext=True, localCleartext=False)

    def test_noSaslWithoutCheckers(self) -> None:
        """
        A mechanism is offered only when some checker can verify what it
        produces: with no hashed-password checker CRAM-MD5 disappears.
        """
        from twisted.internet.defer import fail

        @implementer(ICredentialsChecker)
        class PlainOnly:
            credentialInterfaces = (IUsernamePassword,)

            def requestAvatarId(self, credentials: Any) -> Any:
                return fail(Exception())

        s = Session(checkers=[PlainOnly()])
        assert b"SASL PLAIN LOGIN" in capa(s)


def test_noUserWithoutPasswordChecker() -> None:
    """
    USER is not advertised when no checker can verify a password (only
    client certificates, say).
    """
    from popserv.certauth import ClientCertificateChecker

    s = Session(checkers=[ClientCertificateChecker()])
    lines = capa(s)
    assert b"USER" not in lines
    assert not any(line.startswith(b"SASL") for line in lines)


class TestCleartextPolicy:
    def test_userRefusedRemotely(self) -> None:
        """
        USER on an unencrypted connection from another machine is refused
        with [AUTH]; APOP, which sends no password, still works.
        """
        s = Session(peer="192.0.2.1")
        s.memory.deliver("alice", b"x\r\n")
        reply = b"-ERR [AUTH] Plaintext authentication disallowed on non-secure connections\r\n"
        assert s.command(b"USER alice") == reply
        assert s.command(b"AUTH PLAIN " + b64(b"\0alice\0secret")) == reply
        # A mechanism popserv does not have is unsupported there too, not
        # refused as plaintext.
        assert s.command(b"AUTH GSSAPI") == b"-ERR Unsupported authentication mechanism\r\n"
        digest = hashlib.md5(s.challenge() + b"secret").hexdigest().encode()
        assert s.command(b"APOP alice " + digest).startswith(b"+OK Logged in")

    @pytest.mark.parametrize("peer", ["127.0.0.1", "127.5.5.5"])
    def test_loopbackAllowed(self, peer: str) -> None:
        """
        Loopback connections may log in with USER/PASS.
        """
        assert Session(peer=peer).login().startswith(b"+OK Logged in")


class TestAuth:
    def test_listsMechanisms(self) -> None:
        """
        AUTH without arguments lists the mechanisms (what Outlook sends).
        """
        s = Session()
        assert (
            s.command(b"AUTH")
            == b"+OK Methods supported\r\nSCRAM-SHA-256\r\nCRAM-MD5\r\nPLAIN\r\nLOGIN\r\n.\r\n"
        )

    def test_plainWithInitialResponse(self) -> None:
        """
        AUTH PLAIN with an initial response logs in at once.
        """
        s = Session()
        reply = s.command(b"AUTH PLAIN " + b64(b"\0alice\0secret"))
        assert reply == b"+OK Logged in, 0 messages (0 octets)\r\n"

    def test_plainWithAuthzidSameAsUser(self) -> None:
        """
        An authorization identity equal to the user is accepted, another
        one refused (no proxy rights).
        """
        s = Session()
        assert s.command(b"AUTH PLAIN " + b64(b"bob\0alice\0secret")) == (
            b"-ERR Proxy authorization is not supported\r\n"
        )
        assert s.command(b"AUTH PLAIN " + b64(b"alice\0alice\0secret")).startswith(b"+OK")

    def test_plainChallenge(self) -> None:
        """
        Without an initial response the server sends an empty challenge and
        takes the response on the next line.
        """
        s = Session()
        assert s.command(b"AUTH PLAIN") == b"+ \r\n"
        assert s.command(b64(b"\0alice\0secret")).startswith(b"+OK Logged in")

    def test_emptyInitialResponse(self) -> None:
        """
        "=" is an empty initial response (RFC 5034 section 4): malformed for
        PLAIN, and the session goes on.
        """
        s = Session()
        assert s.command(b"AUTH PLAIN =") == b"-ERR Malformed SASL response\r\n"
        assert s.command(b"NOOP") == b"-ERR Command not valid in this state\r\n"

    @pytest.mark.parametrize("response", [b"\0\0secret", b"\0alice\0", b"alice\0\0secret"])
    def test_plainEmptyUserOrPassword(self, response: bytes) -> None:
        """
        PLAIN with an empty user name or an empty password is malformed
        (RFC 4616 section 2: authcid and passwd are at least one octet), not
        a failed login.
        """
        s = Session()
        assert s.command(b"AUTH PLAIN " + b64(response)) == b"-ERR Malformed SASL response\r\n"

    def test_loginWithInitialResponse(self) -> None:
        """
        LOGIN with the user name as initial response asks for the password
        at once.
        """
        s = Session()
        assert s.command(b"AUTH LOGIN " + b64(b"alice")) == b"+ UGFzc3dvcmQ6\r\n"
        assert s.command(b64(b"secret")).startswith(b"+OK Logged in")

    def test_loginEmptyUser(self) -> None:
        """
        An empty user name in answer to LOGIN's prompt is malformed.
        """
        s = Session()
        assert s.command(b"AUTH LOGIN") == b"+ VXNlcm5hbWU6\r\n"
        assert s.command(b"") == b"-ERR Malformed SASL response\r\n"

    @pytest.mark.parametrize("initial", [b64(b"alice " + b"0" * 32), b"="])
    def test_cramMD5NoInitialResponse(self, initial: bytes) -> None:
        """
        CRAM-MD5 has the server speak first (RFC 2195): an initial response
        is refused, the empty one ("=") too (RFC 5034 section 4: "the server
        MUST reject the AUTH command"), and the session can go on.
        """
        s = Session()
        assert s.command(b"AUTH CRAM-MD5 " + initial) == (
            b"-ERR CRAM-MD5 takes no initial response\r\n"
        )
        assert s.command(b"AUTH CRAM-MD5").startswith(b"+ ")

    @pytest.mark.parametrize(
        "response",
        [b"alice " + b"0" * 31, b"alice " + b"0" * 33, b" " + b"0" * 32, b"alice " + b"g" * 32],
    )
    def test_cramMD5Malformed(self, response: bytes) -> None:
        """
        The CRAM-MD5 answer is a user name, a space and 32 hex digits;
        anything else is malformed, not a failed login.
        """
        s = Session()
        s.command(b"AUTH CRAM-MD5")
        assert s.command(b64(response)) == b"-ERR Malformed SASL response\r\n"

    def test_cramMD5CredentialsTextPassword(self) -> None:
        """
        A checker may give the plaintext as text: it is keyed as UTF-8.
        """
        challenge = b"<1.2@popserv>"
        digest = hmac.new("s\u00e9cret".encode(), challenge, hashlib.md5).hexdigest().encode()
        credentials = CramMD5Credentials(challenge, b"alice", digest)
        assert credentials.checkPassword("s\u00e9cret")
        assert not credentials.checkPassword("secret")

    def test_cancel(self) -> None:
        """
        "*" cancels the exchange with -ERR; the client may log in after.
        """
        s = Session()
        assert s.command(b"AUTH LOGIN") == b"+ " + b64(b"Username:") + b"\r\n"
        assert s.command(b"*") == b"-ERR Authentication cancelled\r\n"
        assert s.login().startswith(b"+OK Logged in")

    def test_badBase64(self) -> None:
        """
        A response that is not base64 ends the exchange with -ERR.
        """
        s = Session()
        s.command(b"AUTH PLAIN")
        assert s.command(b"!!!notbase64") == b"-ERR Invalid base64 data\r\n"
        assert s.command(b"AUTH PLAIN %%%") == b"-ERR Invalid base64 data\r\n"
        assert s.login().startswith(b"+OK")

    def test_wrongPassword(self) -> None:
        """
        Wrong credentials through SASL are -ERR [AUTH] (RFC 3206).
        """
        s = Session()
        assert s.command(b"AUTH PLAIN " + b64(b"\0alice\0nope")) == (
            b"-ERR [AUTH] Authentication failed\r\n"
        )

    def test_authForgetsUser(self) -> None:
        """
        AUTH starts a login of its own: a USER sent before it is forgotten,
        so a PASS after a failed AUTH does not log in as that user.
        """
        s = Session()
        assert s.command(b"USER alice") == b"+OK Send PASS\r\n"
        assert s.command(b"AUTH PLAIN " + b64(b"\0bob\0wrong")) == (
            b"-ERR [AUTH] Authentication failed\r\n"
        )
        assert s.command(b"PASS secret") == b"-ERR Send USER first\r\n"

    def test_unknownMechanism(self) -> None:
        """
        An unknown mechanism is refused and the session goes on.
        """
        s = Session()
        assert s.command(b"AUTH GSSAPI") == b"-ERR Unsupported authentication mechanism\r\n"
        assert s.login().startswith(b"+OK")

    def test_login(self) -> None:
        """
        LOGIN asks for the user name, then the password.
        """
        s = Session()
        assert s.command(b"AUTH LOGIN") == b"+ VXNlcm5hbWU6\r\n"
        assert s.command(b64(b"alice")) == b"+ UGFzc3dvcmQ6\r\n"
        assert s.command(b64(b"secret")).startswith(b"+OK Logged in")

    def test_cramMD5(self) -> None:
        """
        CRAM-MD5: the server sends a fresh msg-id, the client answers with
        the HMAC-MD5 keyed by the secret.
        """
        s = Session()
        reply = s.command(b"AUTH CRAM-MD5")
        challenge = base64.b64decode(reply[2:-2])
        assert re.fullmatch(rb"<[0-9a-f]{24}\.\d+@popserv>", challenge)
        digest = hmac.new(b"secret", challenge, hashlib.md5).hexdigest().encode()
        assert s.command(b64(b"alice " + digest)).startswith(b"+OK Logged in")

    def test_cramMD5Wrong(self) -> None:
        """
        A wrong CRAM-MD5 digest is -ERR [AUTH].
        """
        s = Session()
        s.command(b"AUTH CRAM-MD5")
        assert s.command(b64(b"alice " + b"0" * 32)) == b"-ERR [AUTH] Authentication failed\r\n"

    def test_scramSHA256(self) -> None:
        """
        SCRAM-SHA-256 end to end over POP3 framing: client-first as the
        initial response, server-first as a challenge, client-final, then
        the server's signature as a last challenge answered by an empty
        line, then +OK (RFC 5034 section 4).
        """
        s = Session()
        replies = authenticate(lambda line: s.command(line)[:-2], ScramClient("alice", "secret"))
        # server-first and the server's signature as challenges, then +OK
        assert [r[:2] for r in replies[:2]] == [b"+ ", b"+ "]
        assert len(replies) == 3 and replies[2].startswith(b"+OK Logged in")
        # The exchange is over: the next line is a command.
        assert s.command(b"STAT") == b"+OK 0 0\r\n"

    def test_scramWrongPassword(self) -> None:
        """
        A wrong SCRAM proof is -ERR [AUTH] and sends no server signature.
        """
        s = Session()
        reply = s.command(b"AUTH SCRAM-SHA-256 " + b64(b"n,,n=alice,r=abcdefgh"))
        nonce = dict(f.split(b"=", 1) for f in base64.b64decode(reply[2:-2]).split(b","))[b"r"]
        final = b"c=biws,r=" + nonce + b",p=" + b64(b"\0" * 32)
        assert s.command(b64(final)) == b"-ERR [AUTH] Authentication failed\r\n"

    def test_scramCancelledAtServerFinal(self) -> None:
        """
        A client that answers the server's signature with "*" (one that
        could not verify it) is not logged in, and the maildrop opened for
        it is given back: it can log in again, in this session or another.
        """
        s = Session()
        client = ScramClient("alice", "secret")
        first = s.command(b"AUTH SCRAM-SHA-256 " + b64(client.first()))
        signature = s.command(b64(client.final(base64.b64decode(first[2:-2]))))
        assert signature.startswith(b"+ ")
        assert s.command(b"*") == b"-ERR Authentication cancelled\r\n"
        assert s.command(b"STAT") == b"-ERR Command not valid in this state\r\n"
        other = Session(store=s.memory)
        assert other.login().startswith(b"+OK Logged in")
        other.command(b"QUIT")
        other.protocol.connectionLost(None)
        assert s.login().startswith(b"+OK Logged in")

    def test_dataAfterServerFinal(self) -> None:
        """
        Anything but an empty line after the server's signature is refused,
        and the maildrop is given back.
        """
        s = Session()
        client = ScramClient("alice", "secret")
        first = s.command(b"AUTH SCRAM-SHA-256 " + b64(client.first()))
        s.command(b64(client.final(base64.b64decode(first[2:-2]))))
        assert s.command(b"eA==") == b"-ERR Unexpected data after authentication\r\n"
        assert s.login().startswith(b"+OK Logged in")

    @pytest.mark.parametrize(
        ("answer", "reply"),
        [(b"*", b"Authentication cancelled"), (b"eA==", b"Unexpected data after authentication")],
    )
    def test_notLoggedInAfterServerFinal(self, answer: bytes, reply: bytes) -> None:
        """
        A client that answers the server's signature with anything but an
        empty line is not logged in, so CAPA gives the site's values, not
        that user's (RFC 2449 section 6.5: per-user values only once the
        user is known).
        """
        policy = SitePolicy(UserPolicy(loginDelay=900), {"alice": UserPolicy(loginDelay=0)})
        s = Session(policy=policy)
        client = ScramClient("alice", "secret")
        first = s.command(b"AUTH SCRAM-SHA-256 " + b64(client.first()))
        s.command(b64(client.final(base64.b64decode(first[2:-2]))))
        assert s.command(answer) == b"-ERR " + reply + b"\r\n"
        lines = s.command(b"CAPA")
        assert b"LOGIN-DELAY 900 USER\r\n" in lines, lines

    def test_longLineAfterServerFinal(self) -> None:
        """
        Once the server has sent its signature the client's SASL responses
        are over: the answer expected is empty, and a line over the
        255-octet command limit (RFC 2449 section 4) gets that limit's
        -ERR and close, not the longer limit of SASL responses.
        """
        s = Session()
        client = ScramClient("alice", "secret")
        first = s.command(b"AUTH SCRAM-SHA-256 " + b64(client.first()))
        assert s.command(b64(client.final(base64.b64decode(first[2:-2])))).startswith(b"+ ")
        assert s.command(b"A" * 300) == b"-ERR Line too long\r\n"
        assert s.transport.disconnecting

    def test_pipelinedAuth(self) -> None:
        """
        A response pipelined right behind AUTH is taken as the response.
        """
        s = Session()
        s.send(b"AUTH PLAIN\r\n" + b64(b"\0alice\0secret") + b"\r\nSTAT\r\n")
        assert s.take() == b"+ \r\n+OK Logged in, 0 messages (0 octets)\r\n+OK 0 0\r\n"

    def test_longSaslResponse(self) -> None:
        """
        SASL responses may exceed the 255-octet command limit.
        """
        s = Session()
        s.command(b"AUTH PLAIN")
        assert s.command(b64(b"\0alice\0" + b"x" * 400)) == b"-ERR [AUTH] Authentication failed\r\n"
        assert s.command(b"USER " + b"a" * 300) == b"-ERR Line too long\r\n"

    def test_longestSaslResponse(self) -> None:
        """
        A line answering an AUTH challenge may be 8192 octets including its
        CRLF, as docs/protocol.rst "Limits" says, counted as the command
        limit is.  A line of that length is an answer to the challenge
        (here, not base64); one octet more is too long, and closes the
        connection.
        """
        s = Session()
        assert s.command(b"AUTH PLAIN") == b"+ \r\n"
        assert s.command(b"A" * 8190) == b"-ERR Invalid base64 data\r\n"
        assert not s.transport.disconnecting
        assert s.command(b"AUTH PLAIN") == b"+ \r\n"
        assert s.command(b"A" * 8191) == b"-ERR Line too long\r\n"
        assert s.transport.disconnecting

    def test_commandLimitBackAfterCancel(self) -> None:
        """
        Once an AUTH exchange is cancelled the client's lines are commands
        again, bounded by the 255-octet limit (RFC 2449 section 4) as they
        arrive: 300 octets with no line end yet get the -ERR and close at
        once, not held until the longer limit of SASL responses.
        """
        s = Session()
        assert s.command(b"AUTH PLAIN") == b"+ \r\n"
        assert s.command(b"*") == b"-ERR Authentication cancelled\r\n"
        s.send(b"A" * 300)
        assert s.take() == b"-ERR Line too long\r\n"
        assert s.transport.disconnecting

    def test_longLineQueuedInSaslExchange(self) -> None:
        """
        A line read while the SASL exchange allowed long responses, but
        answered once it is over (queued behind a SCRAM step whose key
        lookup answers later, and behind the client's "*"), is a command:
        over 255 octets it gets the command limit's -ERR and close, and
        nothing else.
        """
        pending: Deferred[tuple[bytes, int] | None] = Deferred()
        s = Session(mechanisms=[scramSHA256Factory(keySource=lambda u: pending)])
        s.send(
            b"AUTH SCRAM-SHA-256 "
            + b64(b"n,,n=alice,r=abcdefgh")
            + b"\r\n*\r\nNOOP "
            + b"x" * 300
            + b"\r\n"
        )
        assert s.take() == b""
        pending.callback((b"salt", 4096))
        challenge, rest = s.take().split(b"\r\n", 1)
        assert challenge.startswith(b"+ ")
        assert rest == b"-ERR Authentication cancelled\r\n-ERR Line too long\r\n"
        assert s.transport.disconnecting and s.protocol.record.reason == "line-too-long"

    @pytest.mark.parametrize("error", [RuntimeError, POP3Error])
    @pytest.mark.parametrize("when", ["start", "respond"])
    def test_mechanismFaultEndsTheExchange(self, when: str, error: type[Exception]) -> None:
        """
        A mechanism that fails with a bug, in its first step or a later one,
        gets the client a generic -ERR [SYS/TEMP], which ends the exchange
        (RFC 5034 section 4: the -ERR is the server's last word on the
        AUTH): the client's next line is a command again, not a response.
        A POP3Error that is no SASLError is a bug there too (no message is
        being sent, so it is not one cut off): answered, not a dropped
        connection.
        """

        @implementer(IMechanism)
        class Buggy:
            name = "X-BUGGY"

            def __init__(self, context: Any) -> None:
                pass

            def start(self, initial: bytes | None) -> Any:
                if when == "start":
                    raise error("a bug")
                return Challenge(b"")

            def respond(self, data: bytes) -> Any:
                raise error("a bug")

            def serverFinal(self) -> None:
                return None

        s = Session(mechanisms=[MechanismFactory("X-BUGGY", Buggy, (IUsernamePassword,))])
        with capturedLogs() as events:
            if when == "respond":
                assert s.command(b"AUTH X-BUGGY") == b"+ \r\n"
                reply = s.command(b64(b"anything"))
            else:
                reply = s.command(b"AUTH X-BUGGY " + b64(b"anything"))
        assert reply == b"-ERR [SYS/TEMP] Internal server error\r\n"
        [logged] = [e["log_failure"] for e in events if "log_failure" in e]
        assert logged.getErrorMessage() == "a bug"
        assert s.login().startswith(b"+OK Logged in")


def test_textUserNameOfAnotherMechanism() -> None:
    """
    A mechanism of the embedder's own whose credentials carry the user
    name as text (not bytes): its failed login is logged with that name.
    """

    @implementer(IUsernamePassword)
    class TextCredentials:
        username = "b\u00f6b"

        def checkPassword(self, password: bytes) -> bool:
            return False

    @implementer(IMechanism)
    class TextName:
        name = "X-TEXT"

        def __init__(self, context: Any) -> None:
            pass

        def start(self, initial: bytes | None) -> Any:
            return Outcome(TextCredentials())

        def respond(self, data: bytes) -> Any:
            raise AssertionError("no challenge was sent")

        def serverFinal(self) -> None:
            return None

    factory = MechanismFactory("X-TEXT", TextName, (IUsernamePassword,))
    s = Session(mechanisms=[factory], peer="127.0.0.9")
    with capturedLogs() as events:
        assert s.command(b"AUTH X-TEXT =") == b"-ERR [AUTH] Authentication failed\r\n"
    lines = [formatEvent(e) for e in events if e.get("log_namespace") == "popserv.audit"]
    assert lines == ["popserv auth-failed: user=b%C3%B6b ip=127.0.0.9 mechanism=X-TEXT"]


def test_mechanismSeesWhetherTheConnectionIsEncrypted() -> None:
    """
    An embedder's mechanism that needs TLS (its C{available} reads
    L{SASLContext.secure}, as C{popserv.sasl.MechanismFactory}'s C{needs}
    may) is not in CAPA's SASL line before STLS, and is after it.
    """

    @implementer(IMechanismFactory)
    class EncryptedOnlyFactory:
        name = "X-ENCRYPTED"
        plaintext = False
        credentialInterfaces = (IUsernamePassword,)

        def available(self, context: Any) -> bool:
            return context.secure is True

        def __call__(self, context: Any) -> Any:
            raise AssertionError("not used")

    s = Session(transport=TLSCapableTransport(), tls=CERT, mechanisms=[EncryptedOnlyFactory()])
    assert [line for line in capa(s) if line.startswith(b"SASL")] == []
    assert s.command(b"STLS") == b"+OK Begin TLS negotiation\r\n"
    assert [line for line in capa(s) if line.startswith(b"SASL")] == [b"SASL X-ENCRYPTED"]


class TestSTLS:
    def test_notConfigured(self) -> None:
        """
        Without a certificate STLS is neither advertised nor accepted, on a
        transport that could start TLS (as TCP's can) as on one that
        cannot.
        """
        s = Session()
        assert s.command(b"STLS") == b"-ERR STLS is not available on this server\r\n"
        transport = TLSCapableTransport(peer="127.0.0.1")
        s = Session(transport=transport)
        assert b"STLS" not in capa(s)
        assert s.command(b"STLS") == b"-ERR STLS is not available on this server\r\n"
        assert transport.tlsStartedWith is None
        assert s.login().startswith(b"+OK Logged in")

    def test_notConfiguredOnTLSCapableTransport(self) -> None:
        """
        Without a certificate STLS is neither announced nor started, even
        on a transport that could start TLS (as every TCP connection can).
        """
        transport = TLSCapableTransport()
        s = Session(transport=transport)
        assert b"STLS\r\n" not in s.command(b"CAPA")
        assert s.command(b"STLS") == b"-ERR STLS is not available on this server\r\n"
        assert transport.tlsStartedWith is None

    def test_startsTLSAndDropsInjectedCommands(self) -> None:
        """
        STLS answers +OK, starts TLS, and discards what the client sent in
        clear behind it in the same packet (the STARTTLS injection attack).
        """
        transport = TLSCapableTransport()
        s = Session(transport=transport, tls=CERT)
        assert transport.noDelay
        s.send(b"STLS\r\nUSER evil\r\nPASS x\r\n")
        assert s.take() == b"+OK Begin TLS negotiation\r\n"
        assert transport.tlsStartedWith is CERT
        assert s.command(b"PASS secret") == b"-ERR Send USER first\r\n"
        # A partial line behind it in the same read goes too: it does not
        # begin the first line read under TLS.
        transport = TLSCapableTransport()
        s = Session(transport=transport, tls=CERT)
        s.send(b"STLS\r\nUSER evil\r\nPASS x")
        assert s.take() == b"+OK Begin TLS negotiation\r\n"
        assert s.command(b"NOOP") == b"-ERR Command not valid in this state\r\n"

    def test_afterTLS(self) -> None:
        """
        Once TLS is on, STLS is refused, not advertised, and plaintext
        logins from other machines are allowed.
        """
        transport = TLSCapableTransport()
        s = Session(transport=transport, tls=CERT)
        s.command(b"STLS")
        assert s.command(b"STLS") == b"-ERR Command not permitted when TLS active\r\n"
        lines = capa(s)
        assert b"STLS" not in lines and b"USER" in lines
        assert s.login().startswith(b"+OK Logged in")

    def test_forgetsUserGivenBeforeTLS(self) -> None:
        """
        A USER sent before STLS does not survive it (RFC 2595 section 4).
        """
        transport = TLSCapableTransport(peer="127.0.0.1")
        s = Session(transport=transport, tls=CERT)
        s.command(b"USER alice")
        s.command(b"STLS")
        assert s.command(b"PASS secret") == b"-ERR Send USER first\r\n"

    def test_queuedBehindSlowLogin(self) -> None:
        """
        STLS pipelined behind a login that answers later (RFC 2449 section
        6.6 allows it) runs from the queue: the client's first command in
        TLS is answered, not dropped as if it had come in clear behind
        STLS; a partial line sent in clear before is dropped.
        """
        checker = SlowChecker()
        transport = TLSCapableTransport(peer="127.0.0.1")
        s = Session(transport=transport, tls=CERT, checkers=[checker])
        s.send(b"USER alice\r\nPASS wrong\r\nSTLS\r\nUSER ev")
        assert s.take() == b"+OK Send PASS\r\n"
        checker.release()
        assert s.take() == (b"-ERR [AUTH] Authentication failed\r\n+OK Begin TLS negotiation\r\n")
        assert transport.tlsStartedWith is CERT
        assert s.command(b"NOOP") == b"-ERR Command not valid in this state\r\n"
        assert s.command(b"USER alice") == b"+OK Send PASS\r\n"

    def test_queuedBehindSlowLoginThenLongLine(self) -> None:
        """
        A line too long sent in clear behind a queued STLS is dropped with
        the rest, and the session reads again for TLS rather than waiting,
        deaf, for the login timeout.
        """
        checker = SlowChecker()
        transport = TLSCapableTransport(peer="127.0.0.1")
        s = Session(transport=transport, tls=CERT, checkers=[checker])
        s.send(b"USER alice\r\nPASS wrong\r\nSTLS\r\n" + b"x" * 300 + b"\r\n")
        assert s.take() == b"+OK Send PASS\r\n"
        assert transport.producerState == "paused"
        checker.release()
        assert s.take() == (b"-ERR [AUTH] Authentication failed\r\n+OK Begin TLS negotiation\r\n")
        assert transport.producerState == "producing"
        assert s.command(b"USER alice") == b"+OK Send PASS\r\n"
        # The same in one read, STLS run at once.
        transport = TLSCapableTransport(peer="127.0.0.1")
        s = Session(transport=transport, tls=CERT)
        s.send(b"STLS\r\n" + b"x" * 300 + b"\r\n")
        assert s.take() == b"+OK Begin TLS negotiation\r\n"
        assert transport.producerState == "producing"
        assert s.command(b"USER alice") == b"+OK Send PASS\r\n"

    def test_queuedAfterHalfClose(self) -> None:
        """
        STLS run from the queue after the client shut its sending side
        starts no TLS (the client can never send its handshake): every
        reply reaches the client in clear, and the connection is closed
        cleanly rather than reset.
        """
        checker = SlowChecker()
        transport = TLSCapableTransport(peer="127.0.0.1")
        s = Session(transport=transport, tls=CERT, checkers=[checker])
        s.send(b"USER alice\r\nPASS wrong\r\nSTLS\r\n")
        s.protocol.readConnectionLost()
        assert not transport.disconnecting
        checker.release()
        assert s.take() == (
            b"+OK Send PASS\r\n-ERR [AUTH] Authentication failed\r\n+OK Begin TLS negotiation\r\n"
        )
        assert transport.tlsStartedWith is None
        assert transport.disconnecting

    def test_forgetsUTF8GivenBeforeTLS(self) -> None:
        """
        UTF8 sent in clear (perhaps by a man in the middle) does not survive
        STLS: the client gets downgraded headers unless it asks again.
        """
        s = Session(transport=TLSCapableTransport(peer="127.0.0.1"), tls=CERT)
        s.command(b"UTF8")
        s.command(b"STLS")
        assert not s.protocol.utf8

    def test_onlyBeforeLogin(self) -> None:
        """
        STLS after login is not valid.
        """
        s = Session(transport=TLSCapableTransport(peer="127.0.0.1"), tls=CERT)
        s.login()
        assert s.command(b"STLS") == b"-ERR Command not valid in this state\r\n"


class CertificateTransport(TLSCapableTransport):
    """
    A L{TLSCapableTransport} whose client presents C{certificate} (a
    cryptography certificate, given as Twisted's TLS transport gives it:
    pyOpenSSL's X509).
    """

    def __init__(self, certificate: Any, peer: str = "192.0.2.7") -> None:
        super().__init__(peer)
        from OpenSSL import crypto

        self.certificate = (
            crypto.X509.from_cryptography(certificate) if certificate is not None else None
        )

    def getPeerCertificate(self) -> Any:
        return self.certificate


class TestExternal:
    """
    SASL EXTERNAL (RFC 4422 appendix A) with a client certificate.
    """

    def session(self, ca: Any, presented: bool = True) -> tuple[Session, CertificateTransport]:
        """
        A session from another machine whose client holds a certificate
        for alice@example.org (unless not C{presented}), who has one
        message, with --auth cert.
        """
        from cryptography import x509

        from popserv.certauth import ClientCertificateChecker

        issued = ca.issue("alice", ["alice@example.org"], filename="alice")
        certificate = x509.load_pem_x509_certificate(issued.certificate.read_bytes())
        transport = CertificateTransport(certificate if presented else None)
        s = Session(transport=transport, tls=CERT, checkers=[ClientCertificateChecker()])
        s.memory.deliver("alice@example.org", b"Subject: a\r\n\r\nbody\r\n")
        return s, transport

    def test_notBeforeTLS(self, ca: Any) -> None:
        """
        A certificate counts only once TLS protects the connection: before
        STLS, EXTERNAL is neither listed nor accepted, and the client is
        told why, as for any mechanism this connection cannot use yet.
        """
        s, _ = self.session(ca)
        assert not any(line.startswith(b"SASL") for line in capa(s))
        assert s.command(b"AUTH") == b"+OK Methods supported\r\n.\r\n"
        assert s.command(b"AUTH EXTERNAL =") == (
            b"-ERR [AUTH] Plaintext authentication disallowed on non-secure connections\r\n"
        )

    def test_afterSTLS(self, ca: Any) -> None:
        """
        After STLS, EXTERNAL is offered and logs in as the user the
        certificate names: with an empty response (here to the server's
        empty challenge), or that user's name, but not another's; the
        session records the mechanism as EXTERNAL.
        """
        s, _ = self.session(ca)
        assert s.command(b"STLS") == b"+OK Begin TLS negotiation\r\n"
        assert b"SASL EXTERNAL" in capa(s)
        assert s.command(b"AUTH") == b"+OK Methods supported\r\nEXTERNAL\r\n.\r\n"
        assert s.command(b"AUTH EXTERNAL " + b64(b"bob@example.org")) == (
            b"-ERR [AUTH] Authentication failed\r\n"
        )
        assert s.command(b"AUTH EXTERNAL") == b"+ \r\n"
        s.send(b"\r\n")
        s.clock.advance(2)  # the failure's penalty
        assert s.take() == b"+OK Logged in, 1 messages (20 octets)\r\n"
        assert (s.protocol.record.user, s.protocol.record.mechanism) == (
            "alice@example.org",
            "EXTERNAL",
        )

    def test_failureAuditLine(self, ca: Any) -> None:
        """
        A failed EXTERNAL login logs its auth-failed line with
        mechanism=EXTERNAL and, as user, the name it asked to log in as,
        written safely like any other (here with a space, then an octet
        that is not UTF-8).
        """
        s, _ = self.session(ca)
        s.command(b"STLS")
        with capturedLogs() as events:
            assert s.command(b"AUTH EXTERNAL " + b64(b"bob smith@example.org")) == (
                b"-ERR [AUTH] Authentication failed\r\n"
            )
            s.send(b"AUTH EXTERNAL " + b64(b"\xff") + b"\r\n")
            s.clock.advance(2)  # the first failure's penalty
            assert s.take() == b"-ERR [AUTH] Authentication failed\r\n"
        lines = [formatEvent(e) for e in events if e.get("log_namespace") == "popserv.audit"]
        assert lines == [
            "popserv auth-failed: user=bob%20smith@example.org ip=192.0.2.7 mechanism=EXTERNAL",
            "popserv auth-failed: user=%FF ip=192.0.2.7 mechanism=EXTERNAL",
        ]

    @pytest.mark.parametrize("response", [b"=", b64(b"alice@EXAMPLE.org")])
    def test_initialResponse(self, ca: Any, response: bytes) -> None:
        """
        An empty initial response ("=", RFC 5034 section 4: no name, the
        certificate's), or the user's name, logs in at once.
        """
        s, _ = self.session(ca)
        s.command(b"STLS")
        assert s.command(b"AUTH EXTERNAL " + response) == (
            b"+OK Logged in, 1 messages (20 octets)\r\n"
        )

    def test_noCertificate(self, ca: Any) -> None:
        """
        Over TLS without a client certificate EXTERNAL is not offered.
        """
        s, _ = self.session(ca, presented=False)
        s.command(b"STLS")
        assert not any(line.startswith(b"SASL") for line in capa(s))
        assert s.command(b"AUTH EXTERNAL =") == b"-ERR Unsupported authentication mechanism\r\n"

    def test_certificateUnreadable(self) -> None:
        """
        Over TLS whose client certificate cannot be read (the TLS layer
        raises, as Twisted's does once its connection is gone), EXTERNAL
        is not offered and not accepted: no certificate, not a server
        fault.
        """
        from popserv.certauth import ClientCertificateChecker

        class UnreadableCertificateTransport(TLSCapableTransport):
            def getPeerCertificate(self) -> Any:
                raise AttributeError("'NoneType' object has no attribute 'get_peer_certificate'")

        s = Session(
            transport=UnreadableCertificateTransport(),
            tls=CERT,
            checkers=[ClientCertificateChecker()],
        )
        assert s.command(b"STLS") == b"+OK Begin TLS negotiation\r\n"
        assert not any(line.startswith(b"SASL") for line in capa(s))
        assert s.command(b"AUTH EXTERNAL =") == b"-ERR Unsupported authentication mechanism\r\n"


def test_noDelayThroughLayers() -> None:
    """
    Nagle's algorithm is turned off on the TCP connection under layers
    that are no TCP transport themselves (as a TLS or PROXY layer need not
    be): the session's transport's C{transport}, and that one's, in turn.
    Left on, the short write that ends each message waits for the
    client's delayed ACK.
    """
    tcp = TLSCapableTransport()
    proxyLayer = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    proxyLayer.transport = tcp  # type: ignore[attr-defined]
    tlsLayer = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    tlsLayer.transport = proxyLayer  # type: ignore[attr-defined]
    s = Session(transport=tlsLayer)
    assert s.greeting.startswith(b"+OK POP3 server ready")
    assert tcp.noDelay is True


def test_utf8() -> None:
    """
    UTF8 is accepted before login and UTF-8 user names then log in.
    """
    s = Session(users={"j\u00fcrgen".encode(): "p\u00e4ss".encode()})
    assert s.command(b"UTF8") == b"+OK UTF8 enabled\r\n"
    assert s.protocol.utf8
    assert s.login("j\u00fcrgen".encode(), "p\u00e4ss".encode()).startswith(b"+OK Logged in")


def test_pipeliningBehindSlowChecker() -> None:
    """
    Commands pipelined behind a PASS or an AUTH whose checker answers later
    wait for it and are answered in order; a failed login lets the next
    attempt in the pipe proceed.
    """
    checker = SlowChecker()
    s = Session(checkers=[checker])
    s.memory.deliver("alice", b"x\r\n")
    s.send(
        b"USER alice\r\nPASS wrong\r\nAUTH PLAIN "
        + b64(b"\0alice\0secret")
        + b"\r\nSTAT\r\nLIST\r\nQUIT\r\n"
    )
    assert s.take() == b"+OK Send PASS\r\n"
    checker.release()
    assert s.take() == b"-ERR [AUTH] Authentication failed\r\n"
    # The next attempt is checked once the address's penalty has passed.
    assert checker.pending == []
    s.clock.advance(2)
    checker.release()
    assert s.take() == (
        b"+OK Logged in, 1 messages (3 octets)\r\n"
        b"+OK 1 3\r\n"
        b"+OK 1 messages (3 octets)\r\n1 3\r\n.\r\n"
        b"+OK Bye, 1 messages left\r\n"
    )
