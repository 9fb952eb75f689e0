"""
Tests for popserv.scram: SCRAM-SHA-256 and SCRAM-SHA-256-PLUS, server side,
driven by a small client written here from RFC 5802 (it shares no code with
the server).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scram_client import ScramClient
from synchronous import result
from twisted.cred.checkers import ICredentialsChecker, InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import IUsernameHashedPassword
from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from zope.interface import Interface, implementer
from zope.interface.verify import verifyObject

from popserv.credentials import CheckerChain
from popserv.sasl import (
    Challenge,
    IMechanism,
    IMechanismFactory,
    Outcome,
    SASLContext,
    SASLError,
    defaultMechanisms,
)
from popserv.scram import (
    DEFAULT_ITERATIONS,
    DerivedParameters,
    IScramKeySource,
    IScramSHA256Credentials,
    ScramCredentials,
    ScramKeyCredentials,
    ScramSHA256Mechanism,
    keySourceFromCheckers,
    saslprep,
    scramKeys,
    scramSHA256Factory,
    scramSHA256PlusFactory,
)

# RFC 7677 section 3.
RFC_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
RFC_SERVER_NONCE = b"%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC_CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_FIRST = (
    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)
RFC_CLIENT_FINAL = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
RFC_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="

EXPORTER = b"\x01" * 32
END_POINT = b"\x02" * 32
UNIQUE = b"\x04" * 12  # a TLS 1.2 Finished message's verify_data

# Every text the mechanism may refuse a message with: none carries client data.
ERROR_TEXTS = {
    "Malformed SCRAM message",
    "SCRAM message too long",
    "SCRAM message is not UTF-8",
    "Invalid user name",
    "Invalid nonce",
    "Proxy authorization is not supported",
    "Mandatory SCRAM extension not supported",
    "Channel binding required",
    "Channel binding not supported by this mechanism",
    "Channel binding downgrade refused",
    "Unsupported channel binding type",
    "Channel binding mismatch",
    "Nonce mismatch",
    "Unexpected SCRAM message",
}


def tlsContext(**bindings: bytes) -> SASLContext:
    """
    A context whose TLS channel has the given binding data, keyed by type
    with "_" for "-".
    """
    data = {kind.replace("_", "-"): value for kind, value in bindings.items()}
    return SASLContext(secure=True, channelBinding=data.get)


def fixed(salt: bytes = RFC_SALT, iterations: int = 4096) -> Callable[[bytes], tuple[bytes, int]]:
    return lambda username: (salt, iterations)


def run(mechanism: IMechanism, client: ScramClient) -> Any:
    """
    Drive an exchange up to its outcome; return the credentials.
    """
    challenge = result(mechanism.start(client.first()))
    assert isinstance(challenge, Challenge)
    outcome = result(mechanism.respond(client.final(challenge.data)))
    assert isinstance(outcome, Outcome)
    return outcome.credentials


def refusal(call: Callable[[], object]) -> str:
    """
    The text of the L{SASLError} C{call} raises (or fails with); it is one
    of the fixed texts.
    """
    with pytest.raises(SASLError) as info:
        result(call())
    assert info.value.text in ERROR_TEXTS
    return info.value.text


def keys(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    """
    StoredKey and ServerKey computed here, independently of L{scramKeys}.
    """
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    stored = hashlib.sha256(hmac.new(salted, b"Client Key", "sha256").digest()).digest()
    return stored, hmac.new(salted, b"Server Key", "sha256").digest()


class TestRFC7677Vector:
    def test_plaintextMode(self) -> None:
        """
        With the RFC 7677 section 3 salt and server nonce, the server's
        messages are byte for byte those of the RFC, the credentials accept
        "pencil", and the server signature is the RFC's.
        """
        factory = scramSHA256Factory(plaintextParameters=fixed(), nonce=lambda: RFC_SERVER_NONCE)
        mechanism = factory(SASLContext())
        assert mechanism.start(RFC_CLIENT_FIRST) == Challenge(RFC_SERVER_FIRST)
        outcome = mechanism.respond(RFC_CLIENT_FINAL)
        assert isinstance(outcome, Outcome)
        credentials = outcome.credentials
        assert isinstance(credentials, ScramCredentials)
        assert IUsernameHashedPassword.providedBy(credentials)
        assert not IScramSHA256Credentials.providedBy(credentials)
        assert credentials.username == b"user"
        assert mechanism.serverFinal() is None
        assert credentials.checkPassword("pencil")
        assert mechanism.serverFinal() == RFC_SERVER_FINAL

    def test_storedMode(self) -> None:
        """
        When the key source gives the RFC's salt and count, the server's
        messages are the RFC's, and the credentials verify with the keys
        of "pencil" and give the RFC's server signature.
        """
        factory = scramSHA256Factory(
            keySource=lambda username: succeed((RFC_SALT, 4096)),
            nonce=lambda: RFC_SERVER_NONCE,
        )
        mechanism = factory(SASLContext())
        assert result(mechanism.start(RFC_CLIENT_FIRST)) == Challenge(RFC_SERVER_FIRST)
        outcome = result(mechanism.respond(RFC_CLIENT_FINAL))
        credentials = outcome.credentials
        assert isinstance(credentials, ScramKeyCredentials)
        assert verifyObject(IScramSHA256Credentials, credentials)
        assert not IUsernameHashedPassword.providedBy(credentials)
        assert (credentials.username, credentials.salt, credentials.iterations) == (
            b"user",
            RFC_SALT,
            4096,
        )
        assert credentials.verify(*scramKeys(b"pencil", RFC_SALT, 4096))
        assert mechanism.serverFinal() == RFC_SERVER_FINAL

    def test_scramKeys(self) -> None:
        """
        scramKeys gives H(ClientKey) and HMAC(SaltedPassword, "Server Key")
        of RFC 5802 section 3, for text and bytes passwords alike.
        """
        expected = keys("pencil", RFC_SALT, 4096)
        assert scramKeys(b"pencil", RFC_SALT, 4096) == expected
        assert scramKeys("pencil", RFC_SALT, 4096) == expected


class TestProof:
    def exchange(self) -> tuple[IMechanism, ScramCredentials]:
        factory = scramSHA256Factory(plaintextParameters=fixed(), nonce=lambda: RFC_SERVER_NONCE)
        mechanism = factory(SASLContext())
        mechanism.start(RFC_CLIENT_FIRST)
        outcome = mechanism.respond(RFC_CLIENT_FINAL)
        assert isinstance(outcome, Outcome)
        return mechanism, outcome.credentials

    def test_wrongPasswordRejected(self) -> None:
        """
        A wrong password does not verify, and no server signature is
        given.
        """
        mechanism, credentials = self.exchange()
        assert not credentials.checkPassword("pencil ")
        assert not credentials.checkPassword("Pencil")
        assert not credentials.checkPassword(b"")
        assert mechanism.serverFinal() is None

    def test_wrongKeysRejected(self) -> None:
        """
        Stored keys of another password, or another salt, do not verify;
        the right ones do afterwards.
        """
        mechanism, _ = self.exchange()
        credentials = ScramKeyCredentials(
            b"user",
            RFC_SALT,
            4096,
            mechanism._exchange,  # type: ignore[attr-defined]
        )
        assert credentials.verify(*keys("pencils", RFC_SALT, 4096)) is False
        assert not credentials.verify(*keys("pencil", RFC_SALT[::-1], 4096))
        assert not credentials.verify(*keys("pencil", RFC_SALT, 4095))
        assert mechanism.serverFinal() is None
        assert credentials.verify(*keys("pencil", RFC_SALT, 4096)) is True
        assert mechanism.serverFinal() == RFC_SERVER_FINAL

    def test_flippedProofBitRejected(self) -> None:
        """
        A proof that differs from the right one in a single bit does not
        verify.
        """
        proof = bytearray(base64.b64decode(RFC_CLIENT_FINAL.rsplit(b"p=", 1)[1]))
        proof[-1] ^= 1
        final = RFC_CLIENT_FINAL.rsplit(b"p=", 1)[0] + b"p=" + base64.b64encode(proof)
        factory = scramSHA256Factory(plaintextParameters=fixed(), nonce=lambda: RFC_SERVER_NONCE)
        mechanism = factory(SASLContext())
        mechanism.start(RFC_CLIENT_FIRST)
        outcome = mechanism.respond(final)
        assert isinstance(outcome, Outcome)
        assert not outcome.credentials.checkPassword("pencil")
        assert mechanism.serverFinal() is None

    def test_constantTimeComparison(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """
        The stored key is compared with hmac.compare_digest, for right and
        wrong proofs alike.
        """
        compared: list[tuple[bytes, bytes]] = []
        real = hmac.compare_digest

        def spy(a: Any, b: Any) -> bool:
            compared.append((a, b))
            return real(a, b)

        _, credentials = self.exchange()
        stored, _ = keys("pencil", RFC_SALT, 4096)
        monkeypatch.setattr(hmac, "compare_digest", spy)
        assert not credentials.checkPassword("wrong")
        assert credentials.checkPassword("pencil")
        assert [b for a, b in compared].count(stored) == 1
        assert len(compared) == 2

    def test_keyLengthChecked(self) -> None:
        """
        Keys that are not 32 octets are a checker's bug: ValueError, not a
        rejected login.
        """
        _, credentials = self.exchange()
        with pytest.raises(ValueError) as info:
            credentials._exchange.verify(b"short", b"\0" * 32)
        assert str(info.value) == "SCRAM-SHA-256 keys are 32 octets long"
        stored, server = keys("pencil", RFC_SALT, 4096)
        for wrong in (server[:31], server + b"\0", b""):
            with pytest.raises(ValueError):
                credentials._exchange.verify(stored, wrong)

    def test_repr(self) -> None:
        """
        Credentials show their user name in logs, and nothing of the proof.
        """
        mechanism, credentials = self.exchange()
        assert repr(credentials) == "<ScramCredentials username=b'user'>"
        keyCredentials = ScramKeyCredentials(
            b"user",
            RFC_SALT,
            4096,
            mechanism._exchange,  # type: ignore[attr-defined]
        )
        assert repr(keyCredentials) == "<ScramKeyCredentials username=b'user'>"

    def test_firstSignatureKept(self) -> None:
        """
        Once a checker has verified the proof, later failed checks leave the
        server signature as it was.
        """
        mechanism, credentials = self.exchange()
        assert credentials.checkPassword("pencil")
        assert not credentials.checkPassword("other")
        assert mechanism.serverFinal() == RFC_SERVER_FINAL


class TestExchange:
    def test_plain(self) -> None:
        """
        A client and the server agree on SCRAM-SHA-256 with a random server
        nonce and the derived salt; the client accepts the server's
        signature.
        """
        mechanism = scramSHA256Factory()(SASLContext())
        client = ScramClient("alice", "s3cret")
        credentials = run(mechanism, client)
        assert credentials.username == b"alice"
        assert credentials.iterations == DEFAULT_ITERATIONS
        assert len(credentials.salt) == 16
        assert credentials.checkPassword(b"s3cret")
        assert client.checkServerFinal(mechanism.serverFinal())

    def test_emptyChallengeFirst(self) -> None:
        """
        Without an initial response the server sends an empty challenge and
        takes the client's first message as the next response.
        """
        mechanism = scramSHA256Factory()(SASLContext())
        client = ScramClient("alice", "s3cret")
        assert mechanism.start(None) == Challenge(b"")
        challenge = mechanism.respond(client.first())
        assert isinstance(challenge, Challenge)
        outcome = mechanism.respond(client.final(challenge.data))
        assert isinstance(outcome, Outcome)
        assert outcome.credentials.checkPassword("s3cret")
        assert client.checkServerFinal(mechanism.serverFinal())

    def test_nonceIsFreshAndExtendsClientNonce(self) -> None:
        """
        The server's nonce starts with the client's, adds at least 32
        printable characters, and differs every exchange.
        """
        nonces = set()
        for _ in range(20):
            challenge = scramSHA256Factory()(SASLContext()).start(b"n,,n=u,r=abc")
            assert isinstance(challenge, Challenge)
            nonce = challenge.data.split(b",")[0][2:]
            assert nonce.startswith(b"abc") and len(nonce) >= 35
            assert all(0x21 <= c <= 0x7E and c != ord(",") for c in nonce)
            nonces.add(nonce)
        assert len(nonces) == 20

    @pytest.mark.parametrize("kind", ["tls-exporter", "tls-unique", "tls-server-end-point"])
    def test_plus(self, kind: str) -> None:
        """
        SCRAM-SHA-256-PLUS binds to the TLS channel with any supported type
        the channel has; the c= attribute carries the gs2 header and the
        binding data.
        """
        bindings = {
            "tls-exporter": EXPORTER,
            "tls-unique": UNIQUE,
            "tls-server-end-point": END_POINT,
        }
        context = tlsContext(**{kind.replace("-", "_"): bindings[kind]})
        data = bindings[kind]
        mechanism = scramSHA256PlusFactory()(context)
        assert mechanism.name == "SCRAM-SHA-256-PLUS"
        client = ScramClient("alice", "s3cret", flag="p=" + kind, channelBinding=data)
        credentials = run(mechanism, client)
        assert credentials.checkPassword("s3cret")
        assert client.checkServerFinal(mechanism.serverFinal())

    @pytest.mark.parametrize("kind", ["tls-exporter", "tls-server-end-point"])
    def test_plusWrongBindingData(self, kind: str) -> None:
        """
        A -PLUS client bound to other data (another TLS connection: a man in
        the middle) is refused before any checker runs.
        """
        context = tlsContext(tls_exporter=EXPORTER, tls_server_end_point=END_POINT)
        mechanism = scramSHA256PlusFactory()(context)
        client = ScramClient("alice", "s3cret", flag="p=" + kind, channelBinding=b"\x03" * 32)
        challenge = mechanism.start(client.first())
        assert isinstance(challenge, Challenge)
        final = client.final(challenge.data)
        assert refusal(lambda: mechanism.respond(final)) == "Channel binding mismatch"

    def test_plusStoredMode(self) -> None:
        """
        -PLUS works in stored mode too: the key source's salt and count are
        sent and the stored keys verify.
        """
        salt = b"0123456789abcdef"
        mechanism = scramSHA256PlusFactory(keySource=lambda u: succeed((salt, 5000)))(
            tlsContext(tls_exporter=EXPORTER)
        )
        client = ScramClient("bob", "hunter2", flag="p=tls-exporter", channelBinding=EXPORTER)
        credentials = run(mechanism, client)
        assert isinstance(credentials, ScramKeyCredentials)
        assert (credentials.salt, credentials.iterations) == (salt, 5000)
        assert credentials.verify(*keys("hunter2", salt, 5000))
        assert client.checkServerFinal(mechanism.serverFinal())

    def test_yWithoutChannelBinding(self) -> None:
        """
        A client that could bind but sees no -PLUS says "y"; on a connection
        without binding data that is no downgrade and it logs in, with "y,,"
        as its c= data.
        """
        mechanism = scramSHA256Factory()(SASLContext())
        client = ScramClient("alice", "s3cret", flag="y")
        assert run(mechanism, client).checkPassword("s3cret")
        assert client.checkServerFinal(mechanism.serverFinal())

    def test_yWhenPlusNotOffered(self) -> None:
        """
        When the server does not offer -PLUS at all, "y" is accepted even on
        a connection with binding data.
        """
        mechanism = scramSHA256Factory(plusOffered=False)(tlsContext(tls_exporter=EXPORTER))
        client = ScramClient("alice", "s3cret", flag="y")
        assert run(mechanism, client).checkPassword("s3cret")

    def test_matchingAuthzid(self) -> None:
        """
        An authorization identity equal to the user name is accepted, and
        is part of the c= data.
        """
        mechanism = scramSHA256Factory()(SASLContext())
        client = ScramClient("alice", "s3cret", authzid="alice")
        assert run(mechanism, client).checkPassword("s3cret")
        assert client.checkServerFinal(mechanism.serverFinal())

    def test_escapedUserName(self) -> None:
        """
        "=2C" and "=3D" in the user name are "," and "=" (RFC 5802 section
        5.1), also in an authzid.
        """
        mechanism = scramSHA256Factory()(SASLContext())
        client = ScramClient("a,b=c", "pw", authzid="a=2Cb=3Dc")
        credentials = run(mechanism, client)
        assert credentials.username == b"a,b=c"
        assert credentials.checkPassword("pw")

    def test_userNameSASLprepped(self) -> None:
        """
        The user name is SASLprepped: a soft hyphen vanishes, a ligature
        decomposes, and the name reaches the checker as UTF-8.
        """
        mechanism = scramSHA256Factory()(SASLContext())
        credentials = run(mechanism, ScramClient("I\u00adX\ufb01", "pw"))
        assert credentials.username == b"IXfi"
        mechanism = scramSHA256Factory()(SASLContext())
        credentials = run(mechanism, ScramClient("J\u00f6rg", "pw"))
        assert credentials.username == "J\u00f6rg".encode()

    def test_mechanismDefaults(self) -> None:
        """
        A mechanism made directly is plain SCRAM-SHA-256 with derived
        parameters, and refuses a "y" client where the channel could be
        bound (the server may offer -PLUS there).
        """
        mechanism = ScramSHA256Mechanism(SASLContext())
        assert mechanism.name == "SCRAM-SHA-256"
        assert run(mechanism, ScramClient("alice", "pw")).checkPassword("pw")
        mechanism = ScramSHA256Mechanism(tlsContext(tls_exporter=EXPORTER))
        assert first(mechanism, b"y,,n=user,r=abc") == "Channel binding downgrade refused"

    def test_userNameWithUnassignedCodePoint(self) -> None:
        """
        A user name is a query (RFC 5802 section 5.1): a code point Unicode
        3.2 leaves unassigned is allowed in it.
        """
        mechanism = scramSHA256Factory()(SASLContext())
        credentials = run(mechanism, ScramClient("a\u0221", "pw"))
        assert credentials.username == "a\u0221".encode()

    def test_passwordSASLprepped(self) -> None:
        """
        The stored password is SASLprepped before hashing, so "I<soft
        hyphen>X" matches a client that prepared its password to "IX".
        """
        mechanism = scramSHA256Factory()(SASLContext())
        credentials = run(mechanism, ScramClient("alice", "IX"))
        assert credentials.checkPassword("I\u00adX")
        assert scramKeys("I\u00adX", b"salt", 1) == keys("IX", b"salt", 1)

    def test_unpreparablePasswordUsedAsIs(self) -> None:
        """
        A stored password that SASLprep refuses (or that is not UTF-8) is
        hashed as it is, matching clients that do the same.
        """
        mechanism = scramSHA256Factory()(SASLContext())
        credentials = run(mechanism, ScramClient("alice", "a\u0007b"))
        assert credentials.checkPassword("a\u0007b")
        salted = hashlib.pbkdf2_hmac("sha256", b"\xff", b"salt", 1)
        stored = hashlib.sha256(hmac.new(salted, b"Client Key", "sha256").digest()).digest()
        assert scramKeys(b"\xff", b"salt", 1)[0] == stored

    @settings(max_examples=40, deadline=None)
    @given(
        username=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1),
        password=st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E)),
    )
    def test_anyASCIINameAndPassword(self, username: str, password: str) -> None:
        """
        Any printable ASCII user name (with "," and "=" escaped) and
        password log in.
        """
        mechanism = scramSHA256Factory(iterations=2)(SASLContext())
        client = ScramClient(username, password)
        credentials = run(mechanism, client)
        assert credentials.username == username.encode()
        assert credentials.checkPassword(password)
        assert client.checkServerFinal(mechanism.serverFinal())


def first(mechanism: IMechanism, message: bytes) -> str:
    return refusal(lambda: mechanism.start(message))


class TestClientFirstRefused:
    @pytest.mark.parametrize(
        ("message", "text"),
        [
            (b"", "Malformed SCRAM message"),
            (b"n", "Malformed SCRAM message"),
            (b"n,,", "Malformed SCRAM message"),
            (b"n,,n=user", "Malformed SCRAM message"),
            (b"x,,n=user,r=abc", "Malformed SCRAM message"),
            (b"N,,n=user,r=abc", "Malformed SCRAM message"),
            (b"n,,r=abc,n=user", "Malformed SCRAM message"),
            (b"n,,n=user,x=1,r=abc", "Malformed SCRAM message"),
            (b"n,,n=,r=abc", "Malformed SCRAM message"),
            (b"n,,user,r=abc", "Malformed SCRAM message"),
            (b"n,,n=user,r=", "Malformed SCRAM message"),
            (b"n,,n=user,r=abc,", "Malformed SCRAM message"),
            (b"n,,n=user,r=abc,x", "Malformed SCRAM message"),
            (b"n,,n=user,r=abc,x=", "Malformed SCRAM message"),
            (b"n,,n=user,r=abc,1=x", "Malformed SCRAM message"),
            (b"n,,n=user,r=abc,xy=z", "Malformed SCRAM message"),
            (b"n,,n=user,r=abc,s=c2FsdA==", "Malformed SCRAM message"),
            (b"n,,n=user,r=abc,i=4096", "Malformed SCRAM message"),
            (b"n,,n=user,r=abc,v=c2ln", "Malformed SCRAM message"),
            (b"n,,n=user,r=abc,e=other-error", "Malformed SCRAM message"),
            (b"n,,n=user,r=abc,p=cHJvb2Y=", "Malformed SCRAM message"),
            (b"n,,n=user,r=abc,c=biws", "Malformed SCRAM message"),
            (b"n,,n=user,r=ab,c", "Malformed SCRAM message"),
            (b"n,,n=user,r=a\0b", "Malformed SCRAM message"),
            (b"n,b=user,n=user,r=abc", "Malformed SCRAM message"),
            (b"n,a=,n=user,r=abc", "Malformed SCRAM message"),
            (b"n,,m=ext,n=user,r=abc", "Mandatory SCRAM extension not supported"),
            (b"n,,n=user,r=abc,m=ext", "Mandatory SCRAM extension not supported"),
            (b"n,,n=user,r=a b", "Invalid nonce"),
            (b"n,,n=user,r=a\x7fb", "Invalid nonce"),
            (b"n,,n=user,r=\xc3\xa9", "Invalid nonce"),
            (b"n,,n=us=2Xer,r=abc", "Invalid user name"),
            (b"n,,n=us=2cer,r=abc", "Invalid user name"),
            (b"n,,n=user=,r=abc", "Invalid user name"),
            (b"n,,n=a\x07b,r=abc", "Invalid user name"),
            (b"n,,n=\xc2\xad,r=abc", "Invalid user name"),
            ("n,,n=\u0627a\u0627,r=abc".encode(), "Invalid user name"),
            (b"n,,n=\xff,r=abc", "SCRAM message is not UTF-8"),
            (b"n,,n=\xed\xa0\x80,r=abc", "SCRAM message is not UTF-8"),
            (b"n,,n=\xc0\xaf,r=abc", "SCRAM message is not UTF-8"),
            (b"n,,n=" + b"u" * 1100 + b",r=abc", "SCRAM message too long"),
            (b"n,,n=user,r=" + b"a" * 1100, "SCRAM message too long"),
            (b"n,,n=user,r=abc" + b",x=" + b"y" * 1000 * 5, "SCRAM message too long"),
            (b"n,,n=user,r=abc" + b",x=yyyyyyy" * 500, "SCRAM message too long"),
            (b"n,a=bob,n=alice,r=abc", "Proxy authorization is not supported"),
            (b"p=tls-exporter,,n=user,r=abc", "Channel binding not supported by this mechanism"),
            (b"p=,,n=user,r=abc", "Malformed SCRAM message"),
            (b"p=tls exporter,,n=user,r=abc", "Malformed SCRAM message"),
            (b"p=tls_exporter,,n=user,r=abc", "Malformed SCRAM message"),
        ],
    )
    def test_refused(self, message: bytes, text: str) -> None:
        """
        A malformed or refused client-first-message is answered with a
        fixed text that says what was wrong without quoting the client.
        """
        mechanism = scramSHA256Factory()(SASLContext())
        assert first(mechanism, message) == text

    def test_longestFieldAccepted(self) -> None:
        """
        A field of exactly 1,024 octets is accepted.
        """
        mechanism = scramSHA256Factory()(SASLContext())
        challenge = mechanism.start(b"n,,n=user,r=" + b"a" * 1022)
        assert isinstance(challenge, Challenge)

    def test_longerFieldRefused(self) -> None:
        """
        A field of 1,025 octets is one too many.
        """
        mechanism = scramSHA256Factory()(SASLContext())
        assert first(mechanism, b"n,,n=user,r=" + b"a" * 1023) == "SCRAM message too long"

    def test_longestMessageAccepted(self) -> None:
        """
        A client-first-message of exactly 4,096 octets is accepted; one of
        4,097 is refused.
        """
        message = b"n,,n=user,r=abc" + (b",x=" + b"y" * 1000) * 4
        message += b",x=" + b"y" * (4096 - len(message) - 3)
        assert len(message) == 4096
        challenge = scramSHA256Factory()(SASLContext()).start(message)
        assert isinstance(challenge, Challenge)
        mechanism = scramSHA256Factory()(SASLContext())
        assert first(mechanism, message + b"y") == "SCRAM message too long"

    def test_nonceOfEveryPrintableCharacter(self) -> None:
        """
        A client nonce may hold any printable ASCII but "," (RFC 5802
        section 7), from "!" to "~"; the server's nonce extends it.
        """
        nonce = bytes(c for c in range(0x21, 0x7F) if c != ord(","))
        mechanism = scramSHA256Factory()(SASLContext())
        challenge = mechanism.start(b"n,,n=user,r=" + nonce)
        assert isinstance(challenge, Challenge)
        assert challenge.data.startswith(b"r=" + nonce)

    @pytest.mark.parametrize("extension", ["x=ext", "X=ext", "x=y"])
    def test_unknownExtensionIgnored(self, extension: str) -> None:
        """
        An optional extension the RFC does not define (its name a letter of
        either case, its value one octet or more) is ignored, and is part
        of the AuthMessage like the rest of the message.
        """
        mechanism = scramSHA256Factory()(SASLContext())
        client = ScramClient("alice", "pw", nonce="abc," + extension)
        client.nonce = "abc"
        assert run(mechanism, client).checkPassword("pw")
        assert client.checkServerFinal(mechanism.serverFinal())

    def test_downgrade(self) -> None:
        """
        A client saying "y" (I can bind, you cannot) on a connection where
        -PLUS is offered has been stripped of -PLUS by a man in the middle:
        refused (RFC 5802 section 6).
        """
        for context in (
            tlsContext(tls_exporter=EXPORTER),
            tlsContext(tls_server_end_point=END_POINT),
        ):
            mechanism = scramSHA256Factory()(context)
            assert first(mechanism, b"y,,n=user,r=abc") == "Channel binding downgrade refused"

    def test_downgradeRefusedByTheServersMechanisms(self) -> None:
        """
        The server's own SCRAM-SHA-256 (L{defaultMechanisms}, which offers
        -PLUS beside it) refuses the downgrade too.
        """
        (factory,) = [f for f in defaultMechanisms() if f.name == "SCRAM-SHA-256"]
        mechanism = factory(tlsContext(tls_exporter=EXPORTER))
        assert first(mechanism, b"y,,n=user,r=abc") == "Channel binding downgrade refused"

    def test_nWithChannelBinding(self) -> None:
        """
        A client that does not bind ("n") may use SCRAM-SHA-256 on a TLS
        connection that offers -PLUS.
        """
        mechanism = scramSHA256Factory()(tlsContext(tls_exporter=EXPORTER))
        client = ScramClient("alice", "pw")
        assert run(mechanism, client).checkPassword("pw")

    @pytest.mark.parametrize(
        ("message", "text"),
        [
            (b"n,,n=user,r=abc", "Channel binding required"),
            (b"y,,n=user,r=abc", "Channel binding required"),
            (b"p=tls-unique,,n=user,r=abc", "Unsupported channel binding type"),
            (b"p=tls-server-end-point,,n=user,r=abc", "Unsupported channel binding type"),
            (b"p=TLS-EXPORTER,,n=user,r=abc", "Unsupported channel binding type"),
            (b"p=x,,n=user,r=abc", "Unsupported channel binding type"),
            (b"p=_tls-exporter,,n=user,r=abc", "Malformed SCRAM message"),
            (b"p=tls-exporter,a=other,n=user,r=abc", "Proxy authorization is not supported"),
        ],
    )
    def test_plusRefused(self, message: bytes, text: str) -> None:
        """
        SCRAM-SHA-256-PLUS requires the client to bind, with a type this
        connection has data for.
        """
        mechanism = scramSHA256PlusFactory()(tlsContext(tls_exporter=EXPORTER))
        assert first(mechanism, message) == text


class TestClientFinalRefused:
    NONCE = RFC_SERVER_FIRST.split(b",")[0]
    PROOF = RFC_CLIENT_FINAL.split(b",")[2]

    def mechanism(self) -> IMechanism:
        factory = scramSHA256Factory(plaintextParameters=fixed(), nonce=lambda: RFC_SERVER_NONCE)
        mechanism = factory(SASLContext())
        mechanism.start(RFC_CLIENT_FIRST)
        return mechanism

    @pytest.mark.parametrize(
        ("message", "text"),
        [
            (b"", "Malformed SCRAM message"),
            (b"c=biws", "Malformed SCRAM message"),
            (b"c=biws,r=X", "Malformed SCRAM message"),
            (b"r=X,c=biws,P", "Malformed SCRAM message"),
            (b"c=biws,P,r=X", "Malformed SCRAM message"),
            (b"c=biws,r=X,P,x=y", "Malformed SCRAM message"),
            (b"c=biws,r=X,x=y", "Malformed SCRAM message"),
            (b"c=biws,r=X,p=", "Malformed SCRAM message"),
            (b"c=biws,r=X,p=!!!!", "Malformed SCRAM message"),
            (b"c=biws,r=X,p=AAAA", "Malformed SCRAM message"),
            (b"c=biws,r=X,p=" + b"A" * 44, "Malformed SCRAM message"),
            (b"c=biws,r=X,p=" + base64.b64encode(b"\0" * 33), "Malformed SCRAM message"),
            (b"c=biws,r=X,v=c2ln,P", "Malformed SCRAM message"),
            (b"c=biws,r=X,e=invalid-proof,P", "Malformed SCRAM message"),
            (b"c=biws,r=X,s=c2FsdA==,P", "Malformed SCRAM message"),
            (b"c=biws,r=X,i=1,P", "Malformed SCRAM message"),
            (b"c=biws,r=X,p=cHJvb2Y=,P", "Malformed SCRAM message"),
            (b"c=biws,r=X,x,P", "Malformed SCRAM message"),
            (b"c=biws,r=X,m=ext,P", "Mandatory SCRAM extension not supported"),
            (b"c=,r=X,P", "Malformed SCRAM message"),
            (b"c=biw,r=X,P", "Malformed SCRAM message"),
            (b"c=bi*s,r=X,P", "Malformed SCRAM message"),
            (b"c=biws\n,r=X,P", "Malformed SCRAM message"),
            (b"c=eSws,r=X,P", "Channel binding mismatch"),
            (b"c=biwsAA==,r=X,P", "Channel binding mismatch"),
            (b"c=" + base64.b64encode(b"n,,\x01") + b",r=X,P", "Channel binding mismatch"),
            (b"c=biws,r=rOprNGfwEbeRWgbNEkqO,P", "Nonce mismatch"),
            (b"c=biws,r=X0,P", "Nonce mismatch"),
            (b"c=biws,r=,P", "Malformed SCRAM message"),
            (b"c=biws,r=X,P\xff", "SCRAM message is not UTF-8"),
            (b"c=biws,r=X,x=\0,P", "Malformed SCRAM message"),
            (b"c=biws,r=X,x=" + b"y" * 1100 + b",P", "SCRAM message too long"),
        ],
    )
    def test_refused(self, message: bytes, text: str) -> None:
        """
        A malformed or refused client-final-message is answered with a
        fixed text, and no credentials are produced.
        """
        message = message.replace(b"r=X", self.NONCE).replace(b"P", self.PROOF)
        mechanism = self.mechanism()
        assert refusal(lambda: mechanism.respond(message)) == text
        assert mechanism.serverFinal() is None

    def test_unknownExtensionIgnored(self) -> None:
        """
        An optional extension before the proof is ignored (and belongs to
        the AuthMessage, so the RFC's proof no longer verifies).
        """
        mechanism = self.mechanism()
        message = RFC_CLIENT_FINAL.replace(b",p=", b",x=ext,p=")
        outcome = mechanism.respond(message)
        assert isinstance(outcome, Outcome)
        assert not outcome.credentials.checkPassword("pencil")

    def test_noResponseAfterCompletion(self) -> None:
        """
        A response after the credentials were produced is refused, whether
        or not they were verified.
        """
        mechanism = self.mechanism()
        outcome = mechanism.respond(RFC_CLIENT_FINAL)
        assert isinstance(outcome, Outcome)
        assert refusal(lambda: mechanism.respond(RFC_CLIENT_FINAL)) == "Unexpected SCRAM message"
        assert refusal(lambda: mechanism.respond(b"")) == "Unexpected SCRAM message"
        assert outcome.credentials.checkPassword("pencil")
        assert refusal(lambda: mechanism.respond(b"")) == "Unexpected SCRAM message"
        assert mechanism.serverFinal() == RFC_SERVER_FINAL

    def test_noResponseAfterRefusal(self) -> None:
        """
        After a refused message the exchange is over: even a correct
        message is refused.
        """
        mechanism = self.mechanism()
        refusal(lambda: mechanism.respond(b"c=biws"))
        assert refusal(lambda: mechanism.respond(RFC_CLIENT_FINAL)) == "Unexpected SCRAM message"
        mechanism = scramSHA256Factory()(SASLContext())
        refusal(lambda: mechanism.start(b"n,,n=user"))
        assert refusal(lambda: mechanism.respond(RFC_CLIENT_FIRST)) == "Unexpected SCRAM message"

    def test_serverFinalOnlyAfterVerification(self) -> None:
        """
        serverFinal gives nothing before the exchange ends, nor after it
        until a checker verified the proof.
        """
        factory = scramSHA256Factory(plaintextParameters=fixed(), nonce=lambda: RFC_SERVER_NONCE)
        mechanism = factory(SASLContext())
        assert mechanism.serverFinal() is None
        mechanism.start(RFC_CLIENT_FIRST)
        assert mechanism.serverFinal() is None
        outcome = mechanism.respond(RFC_CLIENT_FINAL)
        assert mechanism.serverFinal() is None
        assert isinstance(outcome, Outcome)
        outcome.credentials.checkPassword("pencil")
        assert mechanism.serverFinal() == RFC_SERVER_FINAL

    def test_plusBindingOfOtherType(self) -> None:
        """
        A -PLUS client that announced tls-exporter but bound to the
        tls-server-end-point data is refused.
        """
        context = tlsContext(tls_exporter=EXPORTER, tls_server_end_point=END_POINT)
        mechanism = scramSHA256PlusFactory()(context)
        client = ScramClient("alice", "pw", flag="p=tls-exporter", channelBinding=END_POINT)
        challenge = mechanism.start(client.first())
        assert isinstance(challenge, Challenge)
        final = client.final(challenge.data)
        assert refusal(lambda: mechanism.respond(final)) == "Channel binding mismatch"

    def test_plusClientOmitsBindingData(self) -> None:
        """
        A -PLUS client whose c= holds only the gs2 header is refused.
        """
        mechanism = scramSHA256PlusFactory()(tlsContext(tls_exporter=EXPORTER))
        client = ScramClient("alice", "pw", flag="p=tls-exporter")
        challenge = mechanism.start(client.first())
        assert isinstance(challenge, Challenge)
        final = client.final(challenge.data)
        assert refusal(lambda: mechanism.respond(final)) == "Channel binding mismatch"

    def test_headerMustMatchFirstMessage(self) -> None:
        """
        c= must repeat the gs2 header of the first message: "y,," after
        "n,," is refused.
        """
        mechanism = scramSHA256Factory()(SASLContext())
        client = ScramClient("alice", "pw")
        challenge = mechanism.start(client.first())
        assert isinstance(challenge, Challenge)
        client.cbind = b"y,,"
        final = client.final(challenge.data)
        assert refusal(lambda: mechanism.respond(final)) == "Channel binding mismatch"


class TestKeySource:
    @pytest.mark.parametrize("answer", ["value", "fired", "pending"])
    def test_answerKinds(self, answer: str) -> None:
        """
        A key source may answer with a plain value, an already-fired
        Deferred or one that fires later; the mechanism answers likewise.
        """
        pending: Deferred[tuple[bytes, int] | None] = Deferred()

        def keySource(username: bytes) -> Any:
            assert username == b"user"
            if answer == "value":
                return (RFC_SALT, 4096)
            if answer == "fired":
                return succeed((RFC_SALT, 4096))
            return pending

        factory = scramSHA256Factory(keySource=keySource, nonce=lambda: RFC_SERVER_NONCE)
        mechanism = factory(SASLContext())
        step = mechanism.start(RFC_CLIENT_FIRST)
        assert isinstance(step, Deferred)
        if answer == "pending":
            seen: list[Any] = []
            step.addBoth(seen.append)
            assert not seen
            pending.callback((RFC_SALT, 4096))
            step = seen[0]
        assert result(step) == Challenge(RFC_SERVER_FIRST)
        outcome = mechanism.respond(RFC_CLIENT_FINAL)
        assert isinstance(outcome, Outcome)
        assert outcome.credentials.verify(*keys("pencil", RFC_SALT, 4096))
        assert mechanism.serverFinal() == RFC_SERVER_FINAL

    def test_respondWhileLookingUp(self) -> None:
        """
        A response while the key source has not answered is refused, and the
        late answer then ends the exchange with the same refusal.
        """
        pending: Deferred[tuple[bytes, int] | None] = Deferred()
        mechanism = scramSHA256Factory(keySource=lambda u: pending)(SASLContext())
        step = mechanism.start(RFC_CLIENT_FIRST)
        assert isinstance(step, Deferred)
        assert refusal(lambda: mechanism.respond(RFC_CLIENT_FINAL)) == "Unexpected SCRAM message"
        pending.callback((RFC_SALT, 4096))
        assert refusal(lambda: step) == "Unexpected SCRAM message"

    def test_unknownUserFallsBackToPlaintext(self) -> None:
        """
        When the key source does not know the user, the server derives the
        salt and produces credentials for plaintext checkers.
        """
        mechanism = scramSHA256Factory(keySource=lambda u: succeed(None))(SASLContext())
        client = ScramClient("carol", "pw")
        credentials = run(mechanism, client)
        assert isinstance(credentials, ScramCredentials)
        assert credentials.salt == DerivedParameters()(b"carol")[0]
        assert credentials.checkPassword("pw")

    @pytest.mark.parametrize("bad", [("salt", 4096), (b"", 4096), (b"salt", 0), (b"salt", "1")])
    def test_badParametersAreServerFaults(self, bad: Any) -> None:
        """
        Parameters that are not (non-empty bytes, positive int) are the key
        source's bug: the Deferred fails with a TypeError or ValueError, not
        a SASL refusal.
        """
        mechanism = scramSHA256Factory(keySource=lambda u: succeed(bad))(SASLContext())
        with pytest.raises((TypeError, ValueError)) as info:
            result(mechanism.start(RFC_CLIENT_FIRST))
        assert not isinstance(info.value, SASLError)

    def test_oneStoredIteration(self) -> None:
        """
        A key source may give an iteration count of 1, the least.
        """
        mechanism = scramSHA256Factory(keySource=lambda u: succeed((b"salt", 1)))(SASLContext())
        challenge = result(mechanism.start(RFC_CLIENT_FIRST))
        assert isinstance(challenge, Challenge)
        assert challenge.data.endswith(b",s=" + base64.b64encode(b"salt") + b",i=1")

    @pytest.mark.parametrize("nonce", [b"", b"a,b", b"a b", b"\xc3\xa9"])
    def test_badServerNonce(self, nonce: bytes) -> None:
        """
        A server nonce that is empty or not printable ASCII without "," is
        the nonce maker's bug: ValueError, not a SASL refusal.
        """
        mechanism = scramSHA256Factory(nonce=lambda: nonce)(SASLContext())
        with pytest.raises(ValueError) as info:
            mechanism.start(RFC_CLIENT_FIRST)
        assert not isinstance(info.value, SASLError)
        assert str(info.value) == "SCRAM server nonce must be printable, without ','"

    def test_serverNonceOfEveryPrintableCharacter(self) -> None:
        """
        A server nonce may hold any printable ASCII but ",".
        """
        nonce = bytes(c for c in range(0x21, 0x7F) if c != ord(","))
        mechanism = scramSHA256Factory(nonce=lambda: nonce)(SASLContext())
        challenge = mechanism.start(RFC_CLIENT_FIRST)
        assert isinstance(challenge, Challenge)
        assert challenge.data.startswith(b"r=rOprNGfwEbeRWgbNEkqO" + nonce + b",")

    def test_failingKeySource(self) -> None:
        """
        A key source that fails makes the exchange's Deferred fail with its
        error: a server fault for the protocol to log.
        """
        mechanism = scramSHA256Factory(keySource=lambda u: fail(OSError("disk")))(SASLContext())
        with pytest.raises(OSError):
            result(mechanism.start(RFC_CLIENT_FIRST))

    def test_keySourceSeesPreparedName(self) -> None:
        """
        The key source is asked with the decoded, SASLprepped name.
        """
        asked: list[bytes] = []

        def keySource(username: bytes) -> Deferred[tuple[bytes, int] | None]:
            asked.append(username)
            return succeed(None)

        mechanism = scramSHA256Factory(keySource=keySource)(SASLContext())
        result(mechanism.start(b"n,,n=a=2Cb\xc2\xad,r=abc"))
        assert asked == [b"a,b"]


class TestDerivedParameters:
    def test_deterministicPerUser(self) -> None:
        """
        The derived salt is 16 octets of HMAC-SHA256(secret, username): the
        same for a user every time, different between users and secrets.
        """
        derived = DerivedParameters(secret=b"k" * 32)
        assert derived(b"alice") == derived(b"alice")
        salt, iterations = derived(b"alice")
        assert salt == hmac.new(b"k" * 32, b"alice", "sha256").digest()[:16]
        assert iterations == 4096
        assert derived(b"bob")[0] != salt
        assert DerivedParameters(secret=b"j" * 32)(b"alice")[0] != salt

    def test_processSecret(self) -> None:
        """
        By default every mechanism of the process derives the same salt for
        a user, known or not, so repeated asking reveals nothing.
        """
        salts = set()
        for factory in (scramSHA256Factory(), scramSHA256PlusFactory(), scramSHA256Factory()):
            context = tlsContext(tls_exporter=EXPORTER)
            flag = b"p=tls-exporter" if factory.name.endswith("PLUS") else b"n"
            challenge = factory(context).start(flag + b",,n=nobody,r=abc")
            assert isinstance(challenge, Challenge)
            salts.add(challenge.data.split(b",")[1])
        assert len(salts) == 1

    def test_processSecretLength(self) -> None:
        """
        The default secret is 32 random octets: no one outside the process
        can work out the salt of a user.
        """
        secret = DerivedParameters().secret
        assert len(secret) == 32
        assert secret != DerivedParameters(secret=b"\0" * 32).secret

    def test_secretNotInRepr(self) -> None:
        """
        The secret does not appear in the parameters' repr (logs).
        """
        assert "k" * 8 not in repr(DerivedParameters(secret=b"k" * 32))

    def test_iterationsPositive(self) -> None:
        """
        An iteration count below 1 is refused when the factory is made.
        """
        with pytest.raises(ValueError) as info:
            scramSHA256Factory(iterations=0)
        assert str(info.value) == "SCRAM iteration count must be positive"

    def test_oneIteration(self) -> None:
        """
        One iteration, the least, is a valid count (if a weak one).
        """
        challenge = scramSHA256Factory(iterations=1)(SASLContext()).start(b"n,,n=u,r=abc")
        assert isinstance(challenge, Challenge)
        assert challenge.data.endswith(b",i=1")

    def test_frozen(self) -> None:
        """
        The parameters cannot be changed once made.
        """
        derived = DerivedParameters(secret=b"k" * 32)
        with pytest.raises(AttributeError):
            derived.iterations = 1  # type: ignore[misc]
        with pytest.raises(AttributeError):
            derived.secret = b""  # type: ignore[misc]

    def test_iterationsConfigurable(self) -> None:
        """
        The iteration count of plaintext mode is a factory parameter.
        """
        challenge = scramSHA256Factory(iterations=10000)(SASLContext()).start(b"n,,n=u,r=abc")
        assert isinstance(challenge, Challenge)
        assert challenge.data.endswith(b",i=10000")


class TestFactories:
    def test_interfaces(self) -> None:
        """
        Both factories are IMechanismFactory objects for non-plaintext
        mechanisms producing either credentials interface, and make
        IMechanism objects.
        """
        for factory, name in [
            (scramSHA256Factory(), "SCRAM-SHA-256"),
            (scramSHA256PlusFactory(), "SCRAM-SHA-256-PLUS"),
        ]:
            assert verifyObject(IMechanismFactory, factory)
            assert factory.name == name
            assert factory.plaintext is False
            assert factory.credentialInterfaces == (
                IUsernameHashedPassword,
                IScramSHA256Credentials,
            )
            mechanism = factory(tlsContext(tls_exporter=EXPORTER))
            assert verifyObject(IMechanism, mechanism)
            assert isinstance(mechanism, ScramSHA256Mechanism)
            assert mechanism.name == name

    def test_availability(self) -> None:
        """
        SCRAM-SHA-256 is available everywhere; -PLUS only where the
        connection has tls-exporter, tls-unique or tls-server-end-point
        data.
        """
        plain, plus = scramSHA256Factory(), scramSHA256PlusFactory()
        for context in (SASLContext(), SASLContext(secure=True), tlsContext(tls_other=b"x")):
            assert plain.available(context)
            assert not plus.available(context)
        for context in (
            tlsContext(tls_exporter=EXPORTER),
            tlsContext(tls_unique=UNIQUE),
            tlsContext(tls_server_end_point=END_POINT),
        ):
            assert plain.available(context)
            assert plus.available(context)

    def test_emptyBindingDataIsNone(self) -> None:
        """
        Empty binding data counts as none: -PLUS is not available and a
        client asking for that type is refused.
        """
        context = tlsContext(tls_exporter=b"")
        assert not scramSHA256PlusFactory().available(context)
        mechanism = scramSHA256PlusFactory()(context)
        assert first(mechanism, b"p=tls-exporter,,n=u,r=abc") == "Unsupported channel binding type"


class TestSASLprep:
    @pytest.mark.parametrize(
        ("text", "prepared"),
        [
            # RFC 4013 section 3.
            ("I\u00adX", "IX"),
            ("user", "user"),
            ("USER", "USER"),
            ("\u00aa", "a"),
            ("\u2168", "IX"),
            # Non-ASCII space is SPACE; zero-width joiner maps to nothing.
            ("a\u00a0b", "a b"),
            ("a\u200db", "ab"),
            ("", ""),
            # Right-to-left text wholly right-to-left is fine.
            ("\u0627\u0628", "\u0627\u0628"),
            ("\u0627\u0031\u0628", "\u0627\u0031\u0628"),
        ],
    )
    def test_prepared(self, text: str, prepared: str) -> None:
        """
        SASLprep maps, normalises (NFKC) and returns the prepared string.
        """
        assert saslprep(text) == prepared

    @pytest.mark.parametrize(
        "text",
        [
            "\u0007",  # RFC 4013 section 3: prohibited control character
            "\u0627\u0031",  # RFC 4013 section 3: bidi, RandALCat not last
            "a\u0627",  # bidi, not first
            "1\u0627",  # bidi, RandALCat not first (and no LCat)
            "\u0627a\u0628",  # bidi, LCat inside RandALCat text
            "a\ue000",  # private use
            "a\ufffe",  # non-character
            "a\u2ff0",  # ideographic description
            "a\u200e",  # left-to-right mark
            "a\U000e0001",  # tagging character
            "a\u202a",  # left-to-right embedding (change display property)
            "a\x7f",  # ASCII control
            "a\u0080",  # non-ASCII control
        ],
    )
    def test_prohibited(self, text: str) -> None:
        """
        Prohibited characters and broken bidirectional text are refused.
        """
        with pytest.raises(ValueError):
            saslprep(text)
        with pytest.raises(ValueError):
            saslprep(text, allowUnassigned=True)

    def test_unassigned(self) -> None:
        """
        Unassigned code points (Unicode 3.2) are refused in stored strings
        (passwords) but allowed in queries (user names).
        """
        with pytest.raises(ValueError):
            saslprep("a\u0221")
        assert saslprep("a\u0221", allowUnassigned=True) == "a\u0221"


@implementer(IRealm)
class Realm:
    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> Any:
        return interfaces[0], avatarId, lambda: None


class IAvatar(Interface):
    """
    What the test realm hands out.
    """


@implementer(ICredentialsChecker, IScramKeySource)
class ScramKeyChecker:
    """
    A checker that stores SCRAM keys only, as issue 4's passwd-file
    checker will.
    """

    credentialInterfaces = (IScramSHA256Credentials,)

    def __init__(self, users: dict[bytes, tuple[str, bytes, int]]) -> None:
        self.users = {
            name: (salt, iterations, *keys(password, salt, iterations))
            for name, (password, salt, iterations) in users.items()
        }

    def scramParameters(self, username: bytes) -> Deferred[tuple[bytes, int] | None]:
        entry = self.users.get(username)
        return succeed(None if entry is None else entry[:2])

    def requestAvatarId(self, credentials: Any) -> Deferred[Any]:
        entry = self.users.get(credentials.username)
        if entry is not None and credentials.verify(entry[2], entry[3]):
            return succeed(credentials.username)
        return fail(UnauthorizedLogin())


class TestPortal:
    def login(self, portal: Portal, factory: Any, client: ScramClient) -> tuple[Any, IMechanism]:
        mechanism = factory(SASLContext())
        credentials = run(mechanism, client)
        d = portal.login(credentials, None, IAvatar)
        out: list[Any] = []
        d.addBoth(out.append)
        return out[0], mechanism

    def test_plaintextMode(self) -> None:
        """
        Through a real Portal, Twisted's in-memory checker verifies the
        proof with the plaintext password; the server signature follows.
        A wrong password is an UnauthorizedLogin and gives no signature.
        """
        checker = InMemoryUsernamePasswordDatabaseDontUse()
        checker.addUser(b"user", b"pencil")
        portal = Portal(Realm(), [checker])
        factory = scramSHA256Factory()
        client = ScramClient("user", "pencil")
        (_, avatar, _), mechanism = self.login(portal, factory, client)
        assert avatar == b"user"
        assert client.checkServerFinal(mechanism.serverFinal())
        failure, mechanism = self.login(portal, factory, ScramClient("user", "pencils"))
        assert isinstance(failure, Failure) and failure.check(UnauthorizedLogin)
        assert mechanism.serverFinal() is None

    def test_storedMode(self) -> None:
        """
        Through a real Portal, a checker that stores only SCRAM keys and
        is the key source verifies the proof; a wrong password fails.
        """
        checker = ScramKeyChecker({b"user": ("pencil", RFC_SALT, 4096)})
        assert verifyObject(IScramKeySource, checker)
        portal = Portal(Realm(), [checker])
        factory = scramSHA256Factory(keySource=keySourceFromCheckers([checker]))
        client = ScramClient("user", "pencil")
        (_, avatar, _), mechanism = self.login(portal, factory, client)
        assert avatar == b"user"
        assert client.checkServerFinal(mechanism.serverFinal())
        failure, mechanism = self.login(portal, factory, ScramClient("user", "pencils"))
        assert failure.check(UnauthorizedLogin)
        assert mechanism.serverFinal() is None

    def test_unknownUserInStoredMode(self) -> None:
        """
        A user the key source does not know gets plaintext-mode credentials,
        which a portal with only a key checker cannot handle.
        """
        checker = ScramKeyChecker({b"user": ("pencil", RFC_SALT, 4096)})
        portal = Portal(Realm(), [checker])
        factory = scramSHA256Factory(keySource=keySourceFromCheckers([checker]))
        failure, mechanism = self.login(portal, factory, ScramClient("nobody", "pencil"))
        assert failure.check(UnhandledCredentials)
        assert mechanism.serverFinal() is None

    def test_bothModesInAChain(self) -> None:
        """
        With a CheckerChain of a key checker and a plaintext checker, users
        of either log in with SCRAM.
        """
        keyChecker = ScramKeyChecker({b"alice": ("one", b"alice-salt", 4096)})
        memory = InMemoryUsernamePasswordDatabaseDontUse()
        memory.addUser(b"bob", b"two")
        chain = CheckerChain([keyChecker, memory])
        portal = Portal(Realm(), [chain])
        factory = scramSHA256PlusFactory(keySource=keySourceFromCheckers([chain]))
        for user, password in (("alice", "one"), ("bob", "two")):
            mechanism = factory(tlsContext(tls_exporter=EXPORTER))
            client = ScramClient(user, password, flag="p=tls-exporter", channelBinding=EXPORTER)
            d = portal.login(run(mechanism, client), None, IAvatar)
            assert result(d)[1] == user.encode()
            assert client.checkServerFinal(mechanism.serverFinal())


@implementer(ICredentialsChecker, IScramKeySource)
class Source:
    """
    A key source with a fixed answer (or failure), recording what it was
    asked.
    """

    credentialInterfaces = (IScramSHA256Credentials,)

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.asked: list[bytes] = []

    def scramParameters(self, username: bytes) -> Deferred[tuple[bytes, int] | None]:
        self.asked.append(username)
        if isinstance(self.answer, Exception):
            return fail(self.answer)
        return succeed(self.answer)

    def requestAvatarId(self, credentials: Any) -> Deferred[Any]:
        return fail(UnauthorizedLogin())


class TestKeySourceFromCheckers:
    def test_none(self) -> None:
        """
        Without checkers that are key sources there is no key source.
        """
        assert keySourceFromCheckers([]) is None
        assert keySourceFromCheckers([InMemoryUsernamePasswordDatabaseDontUse()]) is None

    def test_firstKnownWins(self) -> None:
        """
        Sources are asked in order until one knows the user; later ones are
        not asked.
        """
        a, b, c = Source(None), Source((b"salt-b", 5000)), Source((b"salt-c", 6000))
        keySource = keySourceFromCheckers([a, object(), b, c])
        assert keySource is not None
        assert result(keySource(b"user")) == (b"salt-b", 5000)
        assert (a.asked, b.asked, c.asked) == ([b"user"], [b"user"], [])

    def test_nobodyKnows(self) -> None:
        """
        When no source knows the user the answer is None.
        """
        keySource = keySourceFromCheckers([Source(None), Source(None)])
        assert keySource is not None
        assert result(keySource(b"user")) is None

    def test_insideCheckerChain(self) -> None:
        """
        Key sources inside a CheckerChain are found.
        """
        inner = Source((b"salt", 4096))
        keySource = keySourceFromCheckers([CheckerChain([inner])])
        assert keySource is not None
        assert result(keySource(b"user")) == (b"salt", 4096)

    def test_failingSourceSkipped(self) -> None:
        """
        A source that fails is logged and skipped, as CheckerChain skips a
        failing checker.
        """
        with capturedLogs() as events:
            keySource = keySourceFromCheckers([Source(OSError("disk")), Source((b"s", 1))])
            assert keySource is not None
            assert result(keySource(b"user")) == (b"s", 1)
        assert any(e.get("log_failure") and e["log_failure"].check(OSError) for e in events)
