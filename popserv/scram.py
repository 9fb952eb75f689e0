"""
SCRAM-SHA-256 and SCRAM-SHA-256-PLUS (RFC 5802, RFC 7677) as I/O-free
server-side SASL mechanisms, with channel binding by C{tls-exporter}
(RFC 9266), C{tls-unique} or C{tls-server-end-point} (RFC 5929).

A checker author sees C{twisted.cred} credentials, never SCRAM messages.
There are two kinds, depending on what the checker knows:

 - A checker that knows the plaintext password (Twisted's C{memory:} and
   C{file:}) gets L{ScramCredentials}, an L{IUsernameHashedPassword}: it
   calls C{checkPassword(plaintext)} as for APOP.  The server then picks the
   salt itself (an HMAC of the user name under a per-process secret, so the
   salt says nothing about whether the user exists) and the iteration
   count.
 - A checker that stores SCRAM keys and never the password provides
   L{IScramKeySource} (it tells the salt and iteration count of a user) and
   handles L{IScramSHA256Credentials}: it calls
   C{verify(storedKey, serverKey)}.

The mechanism asks the key source, if there is one, for the user's salt and
iteration count; if the source knows the user it produces
L{ScramKeyCredentials}, otherwise it falls back to L{ScramCredentials}.
Either way, once a checker has verified the proof the mechanism's
C{serverFinal} gives the server signature the client checks
(RFC 5802 section 3).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import stringprep
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from twisted.cred.credentials import ICredentials, IUsernameHashedPassword
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

from popserv.credentials import CheckerChain
from popserv.sasl import (
    Challenge,
    IMechanism,
    IMechanismFactory,
    MechanismFactory,
    Outcome,
    SASLContext,
    SASLError,
    Step,
)

SCRAM_SHA_256 = "SCRAM-SHA-256"
SCRAM_SHA_256_PLUS = "SCRAM-SHA-256-PLUS"

#: RFC 7677 section 4: the iteration count SHOULD be at least 4096.
DEFAULT_ITERATIONS = 4096

#: The channel-binding types -PLUS accepts, preferred first: RFC 9266
#: makes tls-exporter the default for TLS 1.3; tls-unique is the type RFC
#: 5802 section 6 says servers MUST implement, and the default on TLS 1.2;
#: tls-server-end-point (RFC 5929 section 4) works with any TLS version.
CHANNEL_BINDING_TYPES = ("tls-exporter", "tls-unique", "tls-server-end-point")

#: The longest attribute (name, "=" and value) a client may send, in octets.
MAX_FIELD = 1024
#: The longest client message, in octets.
MAX_MESSAGE = 4096

#: The length of the salt the server derives in plaintext mode, in octets.
SALT_LENGTH = 16

#: The salt and iteration count of a user.
ScramParameters = tuple[bytes, int]
#: A user name (SASLprepped, UTF-8) to a L{Deferred} of the user's
#: L{ScramParameters}, or of L{None} if the source does not know the user.
#: (A plain value instead of a L{Deferred} is accepted too.)
KeySource = Callable[[bytes], Deferred[ScramParameters | None]]

_HASH = "sha256"
_KEY_LENGTH = hashlib.sha256().digest_size

# Attribute names RFC 5802 section 5.1 defines.  One of them where a client
# may only put an optional extension is a malformed (or hostile) message,
# e.g. a client sending the server's "s=", "i=", "v=" or "e=".
_DEFINED_ATTRIBUTES = frozenset(b"aceimnprsv")

# RFC 5802 section 7: printable = %x21-2B / %x2D-7E (ASCII except ",").
_PRINTABLE = frozenset(range(0x21, 0x7F)) - {ord(",")}
# cb-name = 1*(ALPHA / DIGIT / "." / "-") (RFC 5056 section 7).
_CB_NAME = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-")

# One per process: the same user always gets the same derived salt, so
# asking twice does not tell a made-up user from a real one.
_PROCESS_SECRET = secrets.token_bytes(32)


class IScramSHA256Credentials(ICredentials):
    """
    A SCRAM-SHA-256 proof, for checkers that store the SCRAM keys of a user
    (RFC 5802 section 3) rather than the password.

    The exchange used the salt and iteration count a key source gave for
    the user (the first that knew them, see L{keySourceFromCheckers}); they
    are here so that a checker whose keys were made with other ones can
    tell it cannot verify.
    """

    username = Attribute("The user name: SASLprepped (RFC 4013), UTF-8, L{bytes}.")
    salt = Attribute("The salt the server sent, L{bytes}.")
    iterations = Attribute("The iteration count the server sent, an L{int}.")

    def verify(storedKey: bytes, serverKey: bytes) -> bool:
        """
        Whether the client's proof matches C{storedKey}, compared in
        constant time.  On success the credentials remember the server
        signature made with C{serverKey}, which the server sends last.

        @param storedKey: H(ClientKey), 32 octets.
        @param serverKey: HMAC(SaltedPassword, "Server Key"), 32 octets.
        @raise ValueError: a key is not 32 octets long.
        """


class IScramKeySource(Interface):
    """
    A checker that stores SCRAM-SHA-256 keys: it tells the mechanism which
    salt and iteration count to send before the client proves anything.
    """

    def scramParameters(username: bytes) -> Deferred[ScramParameters | None]:
        """
        The salt and iteration count stored for C{username} (SASLprepped,
        UTF-8), or L{None} if the checker does not know the user or has no
        SCRAM keys for them.  Never fails for an unknown user.
        """


def _inTables(char: str, tables: Iterable[Callable[[str], bool]]) -> bool:
    return any(table(char) for table in tables)


# RFC 4013 section 2.3 (with section 2.5's A.1 for stored strings).
_PROHIBITED = (
    stringprep.in_table_c12,
    stringprep.in_table_c21_c22,
    stringprep.in_table_c3,
    stringprep.in_table_c4,
    stringprep.in_table_c5,
    stringprep.in_table_c6,
    stringprep.in_table_c7,
    stringprep.in_table_c8,
    stringprep.in_table_c9,
)


def saslprep(text: str, *, allowUnassigned: bool = False) -> str:
    """
    The SASLprep profile (RFC 4013) of stringprep (RFC 3454), with Python's
    Unicode 3.2 tables.

    @param allowUnassigned: treat C{text} as a query (user names, RFC 5802
        section 5.1) rather than a stored string (passwords, RFC 5802
        section 2.2): unassigned code points are then allowed.
    @raise ValueError: C{text} contains a prohibited character or breaks
        the bidirectional rules (RFC 3454 section 6).
    """
    # Section 2.1: non-ASCII spaces become SPACE, B.1 maps to nothing.
    mapped = "".join(
        " " if stringprep.in_table_c12(c) else c for c in text if not stringprep.in_table_b1(c)
    )
    # Section 2.2: normalisation form KC, as of Unicode 3.2.
    prepared = unicodedata.ucd_3_2_0.normalize("NFKC", mapped)
    for c in prepared:
        if _inTables(c, _PROHIBITED):
            raise ValueError("SASLprep: prohibited character")
        if not allowUnassigned and stringprep.in_table_a1(c):
            raise ValueError("SASLprep: unassigned code point")
    # RFC 3454 section 6: a string with right-to-left characters has no
    # left-to-right ones, and begins and ends with right-to-left ones.
    if any(stringprep.in_table_d1(c) for c in prepared):
        if any(stringprep.in_table_d2(c) for c in prepared):
            raise ValueError("SASLprep: mixed bidirectional text")
        if not (stringprep.in_table_d1(prepared[0]) and stringprep.in_table_d1(prepared[-1])):
            raise ValueError("SASLprep: bidirectional text not enclosed")
    return prepared


def _normalizePassword(password: str | bytes) -> bytes:
    """
    Normalize(password) of RFC 5802 section 2.2.

    A stored password that is not UTF-8 or that SASLprep refuses is used as
    it is, as PostgreSQL and libpq do: a client that cannot prepare it
    either sends a proof made from the same octets, and no prepared string
    can equal it (prepared strings never hold prohibited characters).
    """
    raw = password.encode("utf-8") if isinstance(password, str) else password
    try:
        return saslprep(raw.decode("utf-8")).encode("utf-8")
    except ValueError:
        return raw


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, _HASH).digest()


def scramKeys(password: str | bytes, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    """
    The C{(StoredKey, ServerKey)} of a password, as a checker stores them
    (RFC 5802 section 3): the password is normalised as in an exchange.
    """
    salted = hashlib.pbkdf2_hmac(_HASH, _normalizePassword(password), salt, iterations)
    storedKey = hashlib.sha256(_hmac(salted, b"Client Key")).digest()
    return storedKey, _hmac(salted, b"Server Key")


@dataclass(frozen=True)
class DerivedParameters:
    """
    The salt and iteration count sent in plaintext mode, where no checker
    stores any: the salt is C{HMAC-SHA256(secret, username)[:16]}, the same
    for a user every time, and made up the same way for users who do not
    exist.
    """

    secret: bytes = field(default=_PROCESS_SECRET, repr=False)
    iterations: int = DEFAULT_ITERATIONS

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError("SCRAM iteration count must be positive")

    def __call__(self, username: bytes) -> ScramParameters:
        """
        The salt and iteration count for C{username}.
        """
        return hmac.new(self.secret, username, _HASH).digest()[:SALT_LENGTH], self.iterations


def makeNonce() -> bytes:
    """
    A fresh server nonce: 24 random octets as 32 printable characters
    without "," (RFC 5802 section 5.1, "r").
    """
    return base64.urlsafe_b64encode(secrets.token_bytes(24))


class _Exchange:
    """
    What a proof is checked against, shared by the mechanism and its
    credentials: the AuthMessage, the proof, and (once a checker verified
    the proof) the server signature.
    """

    def __init__(self, authMessage: bytes, proof: bytes) -> None:
        self.authMessage = authMessage
        self.proof = proof
        self.serverSignature: bytes | None = None

    def verify(self, storedKey: bytes, serverKey: bytes) -> bool:
        if len(storedKey) != _KEY_LENGTH or len(serverKey) != _KEY_LENGTH:
            raise ValueError("SCRAM-SHA-256 keys are 32 octets long")
        clientSignature = _hmac(storedKey, self.authMessage)
        clientKey = bytes(a ^ b for a, b in zip(self.proof, clientSignature, strict=True))
        if not hmac.compare_digest(hashlib.sha256(clientKey).digest(), storedKey):
            return False
        if self.serverSignature is None:
            self.serverSignature = _hmac(serverKey, self.authMessage)
        return True


class _ScramProof:
    def __init__(self, username: bytes, salt: bytes, iterations: int, exchange: _Exchange) -> None:
        self.username = username
        self.salt = salt
        self.iterations = iterations
        self._exchange = exchange

    def __repr__(self) -> str:
        return f"<{type(self).__name__} username={self.username!r}>"


@implementer(IUsernameHashedPassword)
class ScramCredentials(_ScramProof):
    """
    A SCRAM-SHA-256 proof for a checker that knows the plaintext password.

    @ivar username: SASLprepped, UTF-8.
    @ivar salt: the salt the server derived and sent.
    @ivar iterations: the iteration count the server sent.
    """

    #: Checking costs a PBKDF2 run (milliseconds of CPU): checkers that run
    #: on the reactor thread hand such credentials to a thread
    #: (L{popserv.credentials.ThreadedChecker}).
    expensive = True

    #: Whether L{checkPassword} has run.
    checked = False

    def checkPassword(self, password: str | bytes) -> bool:
        """
        Whether the proof was made from C{password}, the stored plaintext
        (normalised as RFC 5802 section 2.2 says), compared in constant
        time.  Costs one PBKDF2 run of C{iterations} rounds.
        """
        self.checked = True
        return self._exchange.verify(*scramKeys(password, self.salt, self.iterations))

    def spendCheck(self, keys: tuple[bytes, bytes] | None = None) -> None:
        """
        Cost what a check costs, for a user that could not be checked: a
        checker that refuses a user it does not know at once (Twisted's
        C{memory:} and C{file:}) would otherwise answer an unknown name
        sooner than a known one, and so tell which names exist.

        @param keys: spend what checking the proof against stored keys
            costs, with these dummy keys (which no proof matches).  Without
            them, what L{checkPassword} costs (a PBKDF2 run), if nothing
            has called it.
        """
        if keys is not None:
            self._exchange.verify(*keys)
        elif not self.checked:
            scramKeys(secrets.token_bytes(16), self.salt, self.iterations)


@implementer(IScramSHA256Credentials)
class ScramKeyCredentials(_ScramProof):
    """
    A SCRAM-SHA-256 proof for a checker that stores the user's keys, made
    with the salt and iteration count its L{IScramKeySource} gave.
    """

    def verify(self, storedKey: bytes, serverKey: bytes) -> bool:
        """
        Whether the proof matches C{storedKey} (constant time); on success
        the server signature is made with C{serverKey}.  See
        L{IScramSHA256Credentials.verify}.
        """
        return self._exchange.verify(storedKey, serverKey)


def _malformed() -> SASLError:
    return SASLError("Malformed SCRAM message")


def _fields(data: bytes) -> list[bytes]:
    """
    The comma-separated fields of a client message, checked for size and
    encoding.  Splitting the octets is safe: "," never occurs inside a
    UTF-8 sequence.
    """
    if len(data) > MAX_MESSAGE:
        raise SASLError("SCRAM message too long")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        raise SASLError("SCRAM message is not UTF-8") from None
    if b"\0" in data:
        raise _malformed()
    fields = data.split(b",")
    if any(len(f) > MAX_FIELD for f in fields):
        raise SASLError("SCRAM message too long")
    return fields


def _value(attribute: bytes, name: bytes) -> bytes:
    """
    The value of C{attribute}, which must be named C{name}, non-empty.
    """
    if attribute[:2] != name + b"=" or len(attribute) < 3:
        if attribute[:2] == b"m=":
            raise SASLError("Mandatory SCRAM extension not supported")
        raise _malformed()
    return attribute[2:]


def _checkExtensions(fields: Iterable[bytes]) -> None:
    """
    Optional extensions (RFC 5802 section 5.1) are ignored, but must be
    well-formed and must not be attributes the RFC defines.
    """
    for attribute in fields:
        if len(attribute) < 3 or attribute[1:2] != b"=" or not attribute[:1].isalpha():
            raise _malformed()
        if attribute[0] == ord("m"):
            raise SASLError("Mandatory SCRAM extension not supported")
        if attribute[0] in _DEFINED_ATTRIBUTES:
            raise _malformed()


def _saslname(value: bytes) -> bytes:
    """
    A user name as sent (RFC 5802 section 5.1): "=2C" and "=3D" decoded,
    then SASLprepped as a query, UTF-8.
    """
    pieces = value.split(b"=")
    decoded = [pieces[0]]
    for piece in pieces[1:]:
        if piece[:2] == b"2C":
            decoded.append(b"," + piece[2:])
        elif piece[:2] == b"3D":
            decoded.append(b"=" + piece[2:])
        else:
            raise SASLError("Invalid user name")
    try:
        name = saslprep(b"".join(decoded).decode("utf-8"), allowUnassigned=True)
    except ValueError:
        raise SASLError("Invalid user name") from None
    if not name:
        raise SASLError("Invalid user name")
    return name.encode("utf-8")


def _b64decode(value: bytes) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error:
        raise _malformed() from None


def _hasChannelBinding(context: SASLContext) -> bool:
    return any(context.channelBinding(kind) for kind in CHANNEL_BINDING_TYPES)


@dataclass(frozen=True)
class _ClientFirst:
    gs2Header: bytes
    bare: bytes
    username: bytes
    clientNonce: bytes
    cbindData: bytes


# The exchange's states; each method says which it accepts.
_FIRST = "first"  # waiting for client-first-message
_LOOKUP = "lookup"  # asking the key source
_FINAL = "final"  # server-first sent, waiting for client-final-message
_DONE = "done"  # credentials produced
_FAILED = "failed"  # a message was refused; the exchange is over


@implementer(IMechanism)
class ScramSHA256Mechanism:
    """
    One SCRAM-SHA-256 or SCRAM-SHA-256-PLUS exchange, server side.

    @param plus: run SCRAM-SHA-256-PLUS: the client must bind to the TLS
        channel.
    @param keySource: asked for the salt and iteration count of a user; if
        it has none (or there is no source), the server derives them and
        produces L{ScramCredentials}.
    @param plaintextParameters: gives the salt and iteration count of a
        user in plaintext mode.
    @param nonce: makes the server's part of the nonce.
    @param refuseDowngrade: the server offers SCRAM-SHA-256-PLUS whenever
        the connection has channel-binding data; a client of the plain
        mechanism saying "y" (I could bind, but you cannot) on such a
        connection was then tricked into not binding (RFC 5802 section 6).
    """

    def __init__(
        self,
        context: SASLContext,
        *,
        plus: bool = False,
        keySource: KeySource | None = None,
        plaintextParameters: Callable[[bytes], ScramParameters] | None = None,
        nonce: Callable[[], bytes] = makeNonce,
        refuseDowngrade: bool = True,
    ) -> None:
        self.name = SCRAM_SHA_256_PLUS if plus else SCRAM_SHA_256
        self._context = context
        self._plus = plus
        self._keySource = keySource
        self._plaintextParameters = plaintextParameters or DerivedParameters()
        self._makeNonce = nonce
        self._refuseDowngrade = refuseDowngrade
        self._state = _FIRST
        self._first: _ClientFirst | None = None
        self._nonce = b""
        self._serverFirst = b""
        self._credentials: Callable[[_Exchange], _ScramProof] | None = None
        self._exchange: _Exchange | None = None

    def start(self, initial: bytes | None) -> Step | Deferred[Step]:
        """
        Take the client-first-message, or ask for it with an empty
        challenge.  The server-first-message is a L{Deferred} when there is
        a key source.

        @raise SASLError: the message is malformed or refused.
        """
        if initial is None:
            # RFC 5802 section 5: the client speaks first; an empty
            # challenge asks for its first message (RFC 4422 section 3.3).
            return Challenge(b"")
        return self.respond(initial)

    def respond(self, data: bytes) -> Step | Deferred[Step]:
        """
        Take the client-first-message (after an empty challenge) or the
        client-final-message, which ends the exchange with an L{Outcome}.

        @raise SASLError: the message is malformed or refused, or the
            exchange is over.
        """
        state = self._state
        if state == _DONE:
            # Refused, but a proof already verified stays verified.
            raise SASLError("Unexpected SCRAM message")
        # Until a handler finishes, a refusal ends the exchange for good.
        self._state = _FAILED
        if state == _FIRST:
            return self._clientFirst(data)
        if state == _FINAL:
            return self._clientFinal(data)
        raise SASLError("Unexpected SCRAM message")

    def serverFinal(self) -> bytes | None:
        """
        The server-final-message C{v=ServerSignature} once a checker has
        verified the proof; L{None} before (asking then is a bug).
        """
        if self._state != _DONE or self._exchange is None:
            return None
        signature = self._exchange.serverSignature
        if signature is None:
            return None
        return b"v=" + base64.b64encode(signature)

    def _gs2Header(self, flag: bytes) -> bytes:
        """
        The channel-binding data the client must have bound to, given its
        gs2-cbind-flag (RFC 5802 sections 5.1 and 6).
        """
        if flag == b"n" or flag == b"y":
            if self._plus:
                raise SASLError("Channel binding required")
            if flag == b"y" and self._refuseDowngrade and _hasChannelBinding(self._context):
                raise SASLError("Channel binding downgrade refused")
            return b""
        if not flag.startswith(b"p=") or not flag[2:] or not set(flag[2:]) <= _CB_NAME:
            raise _malformed()
        if not self._plus:
            raise SASLError("Channel binding not supported by this mechanism")
        kind = flag[2:].decode("ascii")
        data = self._context.channelBinding(kind) if kind in CHANNEL_BINDING_TYPES else None
        if not data:
            raise SASLError("Unsupported channel binding type")
        return data

    def _clientFirst(self, data: bytes) -> Step | Deferred[Step]:
        # client-first-message = gs2-header client-first-message-bare
        # gs2-header = gs2-cbind-flag "," [ authzid ] ","
        # client-first-message-bare = [reserved-mext ","] username ","
        #     nonce ["," extensions]
        fields = _fields(data)
        if len(fields) < 4:
            raise _malformed()
        flag, authzid, username, nonce, *extensions = fields
        cbindData = self._gs2Header(flag)
        user = _saslname(_value(username, b"n"))
        if authzid and _saslname(_value(authzid, b"a")) != user:
            raise SASLError("Proxy authorization is not supported")
        clientNonce = _value(nonce, b"r")
        if not set(clientNonce) <= _PRINTABLE:
            raise SASLError("Invalid nonce")
        _checkExtensions(extensions)
        gs2Header = flag + b"," + authzid + b","
        self._first = _ClientFirst(
            gs2Header, data[len(gs2Header) :], user, clientNonce, gs2Header + cbindData
        )
        self._state = _LOOKUP
        if self._keySource is None:
            return self._serverFirstMessage(None)
        d: Deferred[ScramParameters | None] = maybeDeferred(self._keySource, user)
        return d.addCallback(self._serverFirstMessage)

    def _serverFirstMessage(self, stored: ScramParameters | None) -> Step:
        if self._state != _LOOKUP or self._first is None:
            # The client spoke again before the key source answered.
            raise SASLError("Unexpected SCRAM message")
        self._state = _FAILED
        username = self._first.username
        salt, iterations = self._plaintextParameters(username) if stored is None else stored
        # A bad answer is the key source's fault: a server error, not a reply.
        if not isinstance(salt, bytes) or not salt or not isinstance(iterations, int):
            raise TypeError("SCRAM parameters are (salt: bytes, iterations: int)")
        if iterations < 1:
            raise ValueError("SCRAM iteration count must be positive")
        kind = ScramCredentials if stored is None else ScramKeyCredentials
        self._credentials = lambda exchange: kind(username, salt, iterations, exchange)
        serverNonce = self._makeNonce()
        if not serverNonce or not set(serverNonce) <= _PRINTABLE:
            raise ValueError("SCRAM server nonce must be printable, without ','")
        self._nonce = self._first.clientNonce + serverNonce
        # server-first-message = [reserved-mext ","] nonce "," salt ","
        #     iteration-count ["," extensions]
        self._serverFirst = b"r=%s,s=%s,i=%d" % (
            self._nonce,
            base64.b64encode(salt),
            iterations,
        )
        self._state = _FINAL
        return Challenge(self._serverFirst)

    def _clientFinal(self, data: bytes) -> Step:
        # client-final-message-without-proof = channel-binding "," nonce
        #     ["," extensions]
        # client-final-message = client-final-message-without-proof ","
        #     proof
        assert self._first is not None and self._credentials is not None
        fields = _fields(data)
        if len(fields) < 3:
            raise _malformed()
        binding, nonce, *extensions, proofField = fields
        cbind = _b64decode(_value(binding, b"c"))
        if not hmac.compare_digest(cbind, self._first.cbindData):
            raise SASLError("Channel binding mismatch")
        if _value(nonce, b"r") != self._nonce:
            raise SASLError("Nonce mismatch")
        _checkExtensions(extensions)
        proof = _b64decode(_value(proofField, b"p"))
        if len(proof) != _KEY_LENGTH:
            raise _malformed()
        withoutProof = data[: -len(proofField) - 1]
        # RFC 5802 section 3: AuthMessage := client-first-message-bare + ","
        #     + server-first-message + "," + client-final-message-without-proof
        authMessage = b",".join([self._first.bare, self._serverFirst, withoutProof])
        self._exchange = _Exchange(authMessage, proof)
        self._state = _DONE
        return Outcome(self._credentials(self._exchange))


def _mechanismFactory(
    plus: bool,
    keySource: KeySource | None,
    iterations: int,
    plaintextParameters: Callable[[bytes], ScramParameters] | None,
    nonce: Callable[[], bytes],
    refuseDowngrade: bool,
) -> IMechanismFactory:
    parameters = plaintextParameters or DerivedParameters(iterations=iterations)

    def mechanism(context: SASLContext) -> IMechanism:
        return ScramSHA256Mechanism(
            context,
            plus=plus,
            keySource=keySource,
            plaintextParameters=parameters,
            nonce=nonce,
            refuseDowngrade=refuseDowngrade,
        )

    factory: IMechanismFactory = MechanismFactory(
        name=SCRAM_SHA_256_PLUS if plus else SCRAM_SHA_256,
        mechanism=mechanism,
        credentialInterfaces=(IUsernameHashedPassword, IScramSHA256Credentials),
        plaintext=False,
        needs=_hasChannelBinding if plus else (lambda context: True),
    )
    return factory


def scramSHA256Factory(
    keySource: KeySource | None = None,
    *,
    iterations: int = DEFAULT_ITERATIONS,
    plaintextParameters: Callable[[bytes], ScramParameters] | None = None,
    nonce: Callable[[], bytes] = makeNonce,
    plusOffered: bool = True,
) -> IMechanismFactory:
    """
    SCRAM-SHA-256 (RFC 7677), available on every connection.

    @param keySource: gives the salt and iteration count of users whose
        checker stores SCRAM keys (see L{keySourceFromCheckers}).
    @param iterations: the iteration count in plaintext mode.
    @param plaintextParameters: replaces the derived salt and C{iterations}
        in plaintext mode (tests use it to replay known exchanges).
    @param nonce: makes server nonces (tests inject fixed ones).
    @param plusOffered: the server also offers SCRAM-SHA-256-PLUS where the
        connection has channel-binding data, so a client saying "y" there
        is refused as downgraded (RFC 5802 section 6).  Pass L{False} when
        -PLUS is not offered, or such clients could never log in.
    """
    return _mechanismFactory(False, keySource, iterations, plaintextParameters, nonce, plusOffered)


def scramSHA256PlusFactory(
    keySource: KeySource | None = None,
    *,
    iterations: int = DEFAULT_ITERATIONS,
    plaintextParameters: Callable[[bytes], ScramParameters] | None = None,
    nonce: Callable[[], bytes] = makeNonce,
) -> IMechanismFactory:
    """
    SCRAM-SHA-256-PLUS (RFC 7677, RFC 5802 section 6), available where the
    connection has binding data of a type in L{CHANNEL_BINDING_TYPES}.
    The parameters are those of L{scramSHA256Factory}.
    """
    return _mechanismFactory(True, keySource, iterations, plaintextParameters, nonce, True)


def _keySources(checkers: Iterable[object]) -> Iterator[IScramKeySource]:
    for checker in checkers:
        if isinstance(checker, CheckerChain):
            yield from _keySources(checker.checkers)
        elif IScramKeySource.providedBy(checker):
            yield IScramKeySource(checker)


_log = Logger()


def keySourceFromCheckers(checkers: Iterable[object]) -> KeySource | None:
    """
    A L{KeySource} asking, in order, each of C{checkers} (looking inside
    L{CheckerChain}s) that provides L{IScramKeySource}: the first that
    knows the user wins.  A source that fails is logged and skipped, as
    L{CheckerChain} skips a failing checker.  L{None} if no checker is a
    key source.
    """
    sources = list(_keySources(checkers))
    if not sources:
        return None

    def keySource(username: bytes) -> Deferred[ScramParameters | None]:
        return _ask(iter(sources), username)

    return keySource


def _ask(sources: Iterator[IScramKeySource], username: bytes) -> Deferred[ScramParameters | None]:
    source = next(sources, None)
    if source is None:
        return succeed(None)
    d: Deferred[ScramParameters | None] = maybeDeferred(source.scramParameters, username)

    def answered(parameters: ScramParameters | None) -> Any:
        return parameters if parameters is not None else _ask(sources, username)

    def failed(failure: Failure) -> Deferred[ScramParameters | None]:
        _log.failure("SCRAM key source {source!r} failed", failure, source=source)
        return _ask(sources, username)

    return d.addCallbacks(answered, failed)
