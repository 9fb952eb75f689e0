"""
C{--auth passwd-file:PATH}: users and password hashes in Dovecot's
passwd-file format, one per line::

    user:{SCHEME}hash[:uid:gid:gecos:home:shell:extra]

Blank lines and lines starting with C{#} are ignored; a user name may
contain C{@}; fields after the password are kept (by L{popserv.admin}) but
not used.  A password without C{{SCHEME}} is Dovecot's default, C{CRYPT}:
a crypt string recognised by its C{$id$} prefix.

Supported schemes, and which logins each can verify:

 - C{ARGON2ID}, C{BLF-CRYPT} (alias C{BCRYPT}), C{SHA512-CRYPT},
   C{SHA256-CRYPT}, C{SSHA512}: passwords sent in clear (C{USER}/C{PASS},
   C{PLAIN}, C{LOGIN}).
 - C{SCRAM-SHA-256}: those, and C{SCRAM-SHA-256(-PLUS)} from the stored
   keys (the checker is an L{IScramKeySource}).
 - C{CRAM-MD5}: those, and C{CRAM-MD5} from the stored HMAC-MD5 context.
 - C{PLAIN} (aliases C{CLEAR}, C{CLEARTEXT}): every mechanism, APOP
   included, since the server knows the password.

Checking a hash blocks for milliseconds, so every check runs in a thread
(L{popserv.threads.deferToThread}, or the runner given).  The file is
re-read when it changes, at most once a second, in that thread too.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import os
import re
import secrets
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from popserv.credentials import IOfferedCredentials, handles
from popserv.sasl import ICramMD5Credentials
from popserv.scram import IScramKeySource, IScramSHA256Credentials, ScramParameters, scramKeys
from popserv.secretfiles import warnIfReadableByOthers
from popserv.threads import Runner, deferToThread

#: The scheme of new passwords and of the dummy hash unknown users are
#: checked against.
DEFAULT_SCHEME = "ARGON2ID"

#: Schemes L{hashPassword} can make, strongest first.
GENERATED_SCHEMES = (
    "ARGON2ID",
    "BLF-CRYPT",
    "SHA512-CRYPT",
    "SHA256-CRYPT",
    "SSHA512",
    "SCRAM-SHA-256",
    "CRAM-MD5",
    "PLAIN",
)

#: Other names Dovecot accepts for a scheme.
ALIASES = {"BCRYPT": "BLF-CRYPT", "CLEAR": "PLAIN", "CLEARTEXT": "PLAIN"}

#: Dovecot refuses SCRAM entries with fewer iterations (RFC 7677 section 4:
#: at least 4096); so does popserv.
SCRAM_MIN_ITERATIONS = 4096
#: The iteration count and salt length Dovecot and popserv give new SCRAM
#: entries, and so what an unknown user's made-up parameters look like.
SCRAM_ITERATIONS = 4096
SCRAM_SALT_LENGTH = 16

# Argon2id as Dovecot makes it (libsodium's "moderate" limits, one lane:
# libsodium verifies only p=1).
_ARGON2_TIME_COST, _ARGON2_MEMORY_KIB, _ARGON2_LANES = 3, 65536, 1
# crypt_blowfish, which Dovecot uses, reads at most 72 octets; bcrypt>=5
# refuses longer passwords instead of truncating.
_BCRYPT_MAX = 72
_BCRYPT = re.compile(r"\$2[abxy]\$\d\d\$[./A-Za-z0-9]{53}\Z")
_CRYPT_IDS = {"$6$": "SHA512-CRYPT", "$5$": "SHA256-CRYPT", "$argon2id$": "ARGON2ID"}


class PasswdFileError(Exception):
    """
    The password file cannot be used (it cannot be read at start-up).
    """


class BadEntry(ValueError):
    """
    A line of a password file that is not a usable entry; the message says
    why without quoting the hash.
    """


@dataclass(frozen=True)
class PasswdEntry:
    """
    One user of a password file.

    @ivar username: as in the file, UTF-8.
    @ivar scheme: the canonical scheme name (aliases resolved); C{CRYPT}
        entries get the scheme their prefix names.
    @ivar stored: what follows C{{SCHEME}}: the hash, or the password for
        C{PLAIN}.
    @ivar lineNumber: where it is, counting from 1.
    """

    username: bytes
    scheme: str
    stored: str
    lineNumber: int

    def __repr__(self) -> str:
        # Never show the hash, e.g. in a traceback in the log.
        return f"<PasswdEntry {self.username!r} {self.scheme} line {self.lineNumber}>"


def _cryptScheme(stored: str) -> str:
    for prefix, scheme in _CRYPT_IDS.items():
        if stored.startswith(prefix):
            return scheme
    if _BCRYPT.match(stored):
        return "BLF-CRYPT"
    raise BadEntry("unsupported CRYPT hash (SHA512-CRYPT, SHA256-CRYPT, BLF-CRYPT work)")


def splitScheme(password: str) -> tuple[str, str]:
    """
    The canonical scheme and the stored value of a password field:
    C{{SCHEME}value}, or a bare crypt string.

    @raise BadEntry: the scheme is unknown or the value is malformed.
    """
    if password.startswith("{"):
        name, brace, stored = password[1:].partition("}")
        if not brace:
            raise BadEntry("unterminated {SCHEME}")
        scheme = ALIASES.get(name.upper(), name.upper())
    else:
        scheme, stored = "CRYPT", password
    if scheme == "CRYPT":
        scheme = _cryptScheme(stored)
    if scheme not in GENERATED_SCHEMES:
        raise BadEntry(f"unsupported scheme {scheme}")
    _VALIDATORS[scheme](stored)
    return scheme, stored


def parseLine(line: bytes, lineNumber: int) -> PasswdEntry | None:
    """
    The entry of one line (without its line end), or L{None} for a blank
    line or a comment.

    @raise BadEntry: the line is not a usable entry.
    """
    if not line.strip() or line.lstrip().startswith(b"#"):
        return None
    username, colon, rest = line.partition(b":")
    if not username:
        raise BadEntry("no user name")
    if not colon:
        raise BadEntry("no password field")
    try:
        password = rest.partition(b":")[0].decode("utf-8")
    except UnicodeDecodeError:
        raise BadEntry("password field is not UTF-8") from None
    if not password:
        raise BadEntry("empty password field")
    scheme, stored = splitScheme(password)
    return PasswdEntry(username, scheme, stored, lineNumber)


def parsePasswdFile(data: bytes) -> tuple[dict[bytes, PasswdEntry], list[tuple[int, str]]]:
    """
    The users of a password file, and the problems of the lines that were
    skipped as C{(lineNumber, reason)}.  A user listed twice keeps the
    first entry, as in Dovecot.
    """
    entries: dict[bytes, PasswdEntry] = {}
    problems: list[tuple[int, str]] = []
    for number, line in enumerate(data.split(b"\n"), 1):
        try:
            entry = parseLine(line.removesuffix(b"\r"), number)
        except BadEntry as e:
            problems.append((number, str(e)))
            continue
        if entry is None:
            continue
        if entry.username in entries:
            first = entries[entry.username].lineNumber
            problems.append((number, f"user already on line {first}, this one ignored"))
            continue
        entries[entry.username] = entry
    return entries, problems


# Validation: cheap checks of a stored value at load time, so a broken
# hash is reported with its line number rather than failing every login.


def _validateArgon2(stored: str) -> None:
    from argon2 import extract_parameters
    from argon2.exceptions import InvalidHashError

    try:
        extract_parameters(stored)
    except (InvalidHashError, ValueError):
        raise BadEntry("malformed ARGON2ID hash") from None


def _validateBcrypt(stored: str) -> None:
    if not _BCRYPT.match(stored):
        raise BadEntry("malformed BLF-CRYPT hash")


def _shaCrypt(scheme: str) -> Any:
    from passlib.hash import sha256_crypt, sha512_crypt  # type: ignore[import-untyped]

    return sha512_crypt if scheme == "SHA512-CRYPT" else sha256_crypt


def _validateShaCrypt(scheme: str) -> Callable[[str], None]:
    def validate(stored: str) -> None:
        try:
            parsed = _shaCrypt(scheme).from_string(stored)
        except ValueError:
            parsed = None
        if parsed is None or not parsed.checksum:
            raise BadEntry(f"malformed {scheme} hash")

    return validate


def _b64(value: str) -> bytes:
    return base64.b64decode(value, validate=True)


def _validateSSHA512(stored: str) -> None:
    try:
        if len(_b64(stored)) <= hashlib.sha512().digest_size:
            raise BadEntry("SSHA512 hash without salt")
    except binascii.Error:
        raise BadEntry("malformed SSHA512 hash") from None


def parseScram(stored: str) -> tuple[int, bytes, bytes, bytes]:
    """
    C{(iterations, salt, storedKey, serverKey)} of a Dovecot C{SCRAM-SHA-256}
    value, C{ITERATIONS,SALT,STOREDKEY,SERVERKEY} with the last three in
    base64 (Dovecot's C{scram_scheme_parse}).

    @raise BadEntry: it is malformed.
    """
    fields = stored.split(",")
    if len(fields) != 4:
        raise BadEntry("malformed SCRAM-SHA-256 entry: needs four fields")
    try:
        iterations = int(fields[0])
        salt, storedKey, serverKey = (_b64(f) for f in fields[1:])
    except (ValueError, binascii.Error):
        raise BadEntry("malformed SCRAM-SHA-256 entry") from None
    if iterations < SCRAM_MIN_ITERATIONS:
        raise BadEntry(f"SCRAM-SHA-256 iteration count below {SCRAM_MIN_ITERATIONS}")
    if not salt or len(storedKey) != 32 or len(serverKey) != 32:
        raise BadEntry("malformed SCRAM-SHA-256 entry: wrong key or salt length")
    return iterations, salt, storedKey, serverKey


def _validateScram(stored: str) -> None:
    parseScram(stored)


def _validateCramMD5(stored: str) -> None:
    if not re.fullmatch(r"[0-9a-fA-F]{64}", stored):
        raise BadEntry("malformed CRAM-MD5 context: needs 64 hex digits")


def _validatePlain(stored: str) -> None:
    pass


_VALIDATORS: dict[str, Callable[[str], None]] = {
    "ARGON2ID": _validateArgon2,
    "BLF-CRYPT": _validateBcrypt,
    "SHA512-CRYPT": _validateShaCrypt("SHA512-CRYPT"),
    "SHA256-CRYPT": _validateShaCrypt("SHA256-CRYPT"),
    "SSHA512": _validateSSHA512,
    "SCRAM-SHA-256": _validateScram,
    "CRAM-MD5": _validateCramMD5,
    "PLAIN": _validatePlain,
}


# CRAM-MD5: Dovecot stores the HMAC-MD5 key schedule, the MD5 states after
# the outer (key XOR opad) and inner (key XOR ipad) blocks, as 32-bit
# little-endian words in hex (hmac_md5_get_cram_context; RFC 2104 section 4
# suggests precomputing them).  hashlib cannot resume from a state, hence
# MD5's compression function (RFC 1321 section 3.4) here.

_MD5_SHIFTS = [7, 12, 17, 22] * 4 + [5, 9, 14, 20] * 4 + [4, 11, 16, 23] * 4 + [6, 10, 15, 21] * 4
_MD5_SINES = [int(abs(math.sin(i + 1)) * 2**32) & 0xFFFFFFFF for i in range(64)]
_MD5_IV = (0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476)
_MASK = 0xFFFFFFFF


def _md5Compress(state: tuple[int, ...], block: bytes) -> tuple[int, ...]:
    words = struct.unpack("<16I", block)
    a, b, c, d = state
    for i in range(64):
        if i < 16:
            f, g = (b & c) | (~b & d), i
        elif i < 32:
            f, g = (d & b) | (~d & c), (5 * i + 1) % 16
        elif i < 48:
            f, g = b ^ c ^ d, (3 * i + 5) % 16
        else:
            f, g = c ^ (b | ~d), (7 * i) % 16
        f = (f + a + _MD5_SINES[i] + words[g]) & _MASK
        a, d, c = d, c, b
        b = (b + ((f << _MD5_SHIFTS[i]) | (f >> (32 - _MD5_SHIFTS[i])))) & _MASK
    return tuple((x + y) & _MASK for x, y in zip(state, (a, b, c, d), strict=True))


def _md5Resume(state: tuple[int, ...], data: bytes) -> bytes:
    """
    MD5 of one 64-octet block whose state is C{state}, followed by C{data}.
    """
    length = 64 + len(data)
    padded = data + b"\x80" + b"\0" * ((55 - len(data)) % 64) + struct.pack("<Q", length * 8)
    for i in range(0, len(padded), 64):
        state = _md5Compress(state, padded[i : i + 64])
    return struct.pack("<4I", *state)


def cramMD5Context(password: bytes) -> str:
    """
    The Dovecot C{CRAM-MD5} value of C{password}: 64 hex digits.
    """
    key = hashlib.md5(password).digest() if len(password) > 64 else password
    key = key.ljust(64, b"\0")
    outer = _md5Compress(_MD5_IV, bytes(k ^ 0x5C for k in key))
    inner = _md5Compress(_MD5_IV, bytes(k ^ 0x36 for k in key))
    return struct.pack("<8I", *outer, *inner).hex()


def cramMD5Digest(context: str, challenge: bytes) -> bytes:
    """
    HMAC-MD5 of C{challenge} keyed by the password whose Dovecot
    C{CRAM-MD5} value is C{context}, as lower-case hex.
    """
    words = struct.unpack("<8I", bytes.fromhex(context))
    inner = _md5Resume(words[4:], challenge)
    return _md5Resume(words[:4], inner).hex().encode("ascii")


# Verification of a password sent in clear.


def _verifyArgon2(stored: str, password: bytes) -> bool:
    from argon2 import PasswordHasher
    from argon2.exceptions import VerificationError

    try:
        return PasswordHasher().verify(stored, password)
    except VerificationError:
        return False


def _verifyBcrypt(stored: str, password: bytes) -> bool:
    import bcrypt

    return bcrypt.checkpw(password[:_BCRYPT_MAX], stored.encode("ascii"))


def _verifyShaCrypt(scheme: str) -> Callable[[str, bytes], bool]:
    def verify(stored: str, password: bytes) -> bool:
        return bool(_shaCrypt(scheme).verify(password, stored))

    return verify


def _verifySSHA512(stored: str, password: bytes) -> bool:
    raw = _b64(stored)
    digest, salt = raw[:64], raw[64:]
    return hmac.compare_digest(hashlib.sha512(password + salt).digest(), digest)


def _verifyScram(stored: str, password: bytes) -> bool:
    iterations, salt, storedKey, _ = parseScram(stored)
    # popserv makes keys from the SASLprepped password (RFC 5802 section
    # 2.2); Dovecot from the password as it is.  Either matches.
    raw = hashlib.pbkdf2_hmac("sha256", password, salt, iterations)
    rawKey = hashlib.sha256(hmac.new(raw, b"Client Key", "sha256").digest()).digest()
    if hmac.compare_digest(rawKey, storedKey):
        return True
    prepared = scramKeys(password, salt, iterations)[0]
    return prepared != rawKey and hmac.compare_digest(prepared, storedKey)


def _verifyCramMD5(stored: str, password: bytes) -> bool:
    return hmac.compare_digest(cramMD5Context(password), stored.lower())


def _verifyPlain(stored: str, password: bytes) -> bool:
    return hmac.compare_digest(stored.encode("utf-8"), password)


_VERIFIERS: dict[str, Callable[[str, bytes], bool]] = {
    "ARGON2ID": _verifyArgon2,
    "BLF-CRYPT": _verifyBcrypt,
    "SHA512-CRYPT": _verifyShaCrypt("SHA512-CRYPT"),
    "SHA256-CRYPT": _verifyShaCrypt("SHA256-CRYPT"),
    "SSHA512": _verifySSHA512,
    "SCRAM-SHA-256": _verifyScram,
    "CRAM-MD5": _verifyCramMD5,
    "PLAIN": _verifyPlain,
}


def verifyPassword(scheme: str, stored: str, password: str | bytes) -> bool:
    """
    Whether C{password}, sent in clear, matches C{stored} of C{scheme} (a
    canonical name).  Blocks: run it in a thread.
    """
    if isinstance(password, str):
        password = password.encode("utf-8")
    return _VERIFIERS[scheme](stored, password)


def hashPassword(password: str | bytes, scheme: str = DEFAULT_SCHEME) -> str:
    """
    The password field for C{password}: C{{SCHEME}value}, as
    C{doveadm pw -s SCHEME} makes it (with the libraries' default costs).

    @raise ValueError: the scheme is unknown, or a C{PLAIN} password holds
        a character the file format cannot (":", a line end).
    """
    scheme = ALIASES.get(scheme.upper(), scheme.upper())
    raw = password.encode("utf-8") if isinstance(password, str) else password
    if scheme == "ARGON2ID":
        value = _argon2Hasher().hash(raw)
    elif scheme == "BLF-CRYPT":
        import bcrypt

        # $2y$ as doveadm writes it: the same algorithm as $2b$, and
        # understood by older crypt_blowfish versions.
        value = "$2y$" + bcrypt.hashpw(raw[:_BCRYPT_MAX], bcrypt.gensalt()).decode("ascii")[4:]
    elif scheme in ("SHA512-CRYPT", "SHA256-CRYPT"):
        value = _shaCrypt(scheme).hash(raw)
    elif scheme == "SSHA512":
        salt = secrets.token_bytes(16)
        value = base64.b64encode(hashlib.sha512(raw + salt).digest() + salt).decode("ascii")
    elif scheme == "SCRAM-SHA-256":
        salt = secrets.token_bytes(SCRAM_SALT_LENGTH)
        storedKey, serverKey = scramKeys(raw, salt, SCRAM_ITERATIONS)
        value = ",".join(
            [str(SCRAM_ITERATIONS)]
            + [base64.b64encode(v).decode("ascii") for v in (salt, storedKey, serverKey)]
        )
    elif scheme == "CRAM-MD5":
        value = cramMD5Context(raw)
    elif scheme == "PLAIN":
        value = raw.decode("utf-8")
        if set(value) & {":", "\n", "\r"}:
            raise ValueError("a PLAIN password cannot contain ':' or a line end")
    else:
        raise ValueError(f"unknown scheme {scheme}; known: {', '.join(GENERATED_SCHEMES)}")
    return f"{{{scheme}}}{value}"


def _argon2Hasher() -> Any:
    from argon2 import PasswordHasher

    return PasswordHasher(
        time_cost=_ARGON2_TIME_COST, memory_cost=_ARGON2_MEMORY_KIB, parallelism=_ARGON2_LANES
    )


@cache
def _dummyArgon2() -> str:
    return str(_argon2Hasher().hash(secrets.token_bytes(16)))


def _fileSignature(stat: os.stat_result) -> tuple[int, int, int]:
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


@implementer(IScramKeySource, IOfferedCredentials)
class PasswdFileChecker:
    """
    Checks logins against a Dovecot passwd-file.

    A user the file does not list is checked as much as one it lists: a
    password in clear against a dummy C{ARGON2ID} hash (L{dummy}), a
    hashed password (APOP, CRAM-MD5, SCRAM without stored keys) with a
    dummy plaintext, a SCRAM proof with dummy keys; then the login fails.
    So the time a login takes does not say whether the user exists, unless
    the user's scheme costs more or less than C{ARGON2ID}.

    @ivar credentialInterfaces: passwords in clear, hashed passwords
        (APOP, CRAM-MD5, SCRAM in plaintext mode: users stored in C{PLAIN},
        and C{CRAM-MD5} for CRAM-MD5), and SCRAM proofs (users stored in
        C{SCRAM-SHA-256}).
    @ivar dummy: what unknown users' clear passwords are checked against.
    """

    credentialInterfaces = (IUsernamePassword, IUsernameHashedPassword, IScramSHA256Credentials)

    _log = Logger()

    def __init__(
        self,
        path: str,
        *,
        runInThread: Runner = deferToThread,
        clock: Callable[[], float] = time.monotonic,
        reloadInterval: float = 1.0,
    ) -> None:
        """
        Read the file.

        @param runInThread: runs the checks and reloads.
        @param clock: seconds, for L{reloadInterval}.
        @param reloadInterval: least seconds between two looks at whether
            the file changed.
        @raise PasswdFileError: the file cannot be read.
        """
        self.path = path
        self._run = runInThread
        self._clock = clock
        self.reloadInterval = reloadInterval
        self._lock = threading.Lock()
        self._entries: dict[bytes, PasswdEntry] = {}
        self._signature: tuple[int, int, int] | None = None
        self._checkedAt = clock()
        self.dummy = PasswdEntry(b"", DEFAULT_SCHEME, _dummyArgon2(), 0)
        self._dummyPlaintext = secrets.token_hex(16)
        salt = secrets.token_bytes(16)
        self._dummyKeys = scramKeys(secrets.token_bytes(16), salt, 1)
        # What a SCRAM-SHA-256 user's entry holds, parsed as theirs is.
        self._dummyScram = ",".join(
            [str(SCRAM_MIN_ITERATIONS)]
            + [base64.b64encode(v).decode() for v in (salt, *self._dummyKeys)]
        )
        try:
            self._load()
        except OSError as e:
            raise PasswdFileError(f"passwd-file {path}: cannot read it: {e.strerror}") from None

    def __repr__(self) -> str:
        return f"<PasswdFileChecker {self.path!r}>"

    @property
    def users(self) -> dict[bytes, PasswdEntry]:
        """
        The entries read last, by user name.
        """
        return self._entries

    def _load(self) -> None:
        with open(self.path, "rb") as f:
            signature = _fileSignature(os.fstat(f.fileno()))
            data = f.read()
            warnIfReadableByOthers(f.fileno(), self.path, "passwd-file")
        entries, problems = parsePasswdFile(data)
        for number, reason in problems:
            # The reason never quotes the line: it may hold a password.
            self._log.warn(
                "passwd-file {path}, line {line}: {reason}; skipped",
                path=self.path,
                line=number,
                reason=reason,
            )
        self._entries = entries
        schemes = [entry.scheme for entry in entries.values()]
        self._schemes = frozenset(schemes)
        # What a SCRAM login of a user the file cannot check costs: what a
        # SCRAM login of most of its SCRAM users costs.  Stored keys take
        # two HMACs, a PLAIN user a PBKDF2 run; spending a PBKDF2 run where
        # most users take two HMACs made an unknown name the slow one.
        self._scramByPBKDF2 = schemes.count("PLAIN") >= schemes.count("SCRAM-SHA-256")
        self._signature = signature

    def refresh(self) -> None:
        """
        Re-read the file if it changed (inode, size or modification time)
        and L{reloadInterval} has passed since the last look.  A file that
        cannot be read is logged and the users read before stay.  Blocks.
        """
        with self._lock:
            now = self._clock()
            if now - self._checkedAt < self.reloadInterval:
                return
            self._checkedAt = now
            try:
                if _fileSignature(os.stat(self.path)) == self._signature:
                    return
                self._load()
            except OSError as e:
                self._log.error(
                    "passwd-file {path}: cannot read it ({error}); keeping the users read before",
                    path=self.path,
                    error=e.strerror,
                )
                return
            self._log.info(
                "passwd-file {path}: read {count} users", path=self.path, count=len(self._entries)
            )

    def canVerify(self, credentialInterface: Any) -> bool:
        """
        Whether some user of the file as read last could log in with
        credentials of C{credentialInterface}: any, with a password in
        clear; CRAM-MD5 (L{ICramMD5Credentials}) only if some user is
        stored in C{PLAIN} or C{CRAM-MD5}; APOP and SCRAM without stored
        keys (plain L{IUsernameHashedPassword}) only if one is stored in
        C{PLAIN}; SCRAM proofs only if one is stored in C{SCRAM-SHA-256}.  A file of hashed
        passwords (C{popserv passwd}'s default) so offers neither APOP nor
        CRAM-MD5.
        """
        if credentialInterface is ICramMD5Credentials:
            return not self._schemes.isdisjoint({"PLAIN", "CRAM-MD5"})
        if credentialInterface is IUsernameHashedPassword:
            return "PLAIN" in self._schemes
        if credentialInterface is IScramSHA256Credentials:
            return "SCRAM-SHA-256" in self._schemes
        return handles(self.credentialInterfaces, credentialInterface)

    def requestAvatarId(self, credentials: Any) -> Deferred[bytes]:
        """
        The user name, once the credentials check out, in a thread.
        Fails with L{UnauthorizedLogin} otherwise.
        """
        return self._run(self._check, credentials)

    def scramParameters(self, username: bytes) -> Deferred[ScramParameters | None]:
        """
        The salt and iteration count of a user stored in C{SCRAM-SHA-256};
        L{None} for any other name, so that the SCRAM mechanism makes up
        parameters of the same shape as popserv's and Dovecot's (16 octets
        of salt, 4096 iterations) and other checkers of a chain get a
        chance.
        """
        return self._run(self._scramParameters, username)

    def _scramParameters(self, username: bytes) -> ScramParameters | None:
        self.refresh()
        entry = self._entries.get(username)
        if entry is None or entry.scheme != "SCRAM-SHA-256":
            return None
        iterations, salt, _, _ = parseScram(entry.stored)
        return salt, iterations

    def _check(self, credentials: Any) -> bytes:
        self.refresh()
        entry = self._entries.get(credentials.username)
        if IScramSHA256Credentials.providedBy(credentials):
            ok = self._checkScram(entry, credentials)
        elif IUsernamePassword.providedBy(credentials):
            if entry is None:
                verifyPassword(self.dummy.scheme, self.dummy.stored, credentials.password)
                ok = False
            else:
                ok = verifyPassword(entry.scheme, entry.stored, credentials.password)
        elif IUsernameHashedPassword.providedBy(credentials):
            ok = self._checkHashed(entry, credentials)
        else:
            ok = False
        if not ok or entry is None:
            raise UnauthorizedLogin()
        return entry.username

    def _checkScram(self, entry: PasswdEntry | None, credentials: Any) -> bool:
        if entry is None or entry.scheme != "SCRAM-SHA-256":
            self._spendStoredKeyCheck(credentials)
            return False
        iterations, salt, storedKey, serverKey = parseScram(entry.stored)
        if (salt, iterations) != (credentials.salt, credentials.iterations):
            # The file changed between the key lookup and the proof.
            return False
        return bool(credentials.verify(storedKey, serverKey))

    def _checkHashed(self, entry: PasswdEntry | None, credentials: Any) -> bool:
        if entry is not None and entry.scheme == "PLAIN":
            return bool(credentials.checkPassword(entry.stored))
        if (
            entry is not None
            and entry.scheme == "CRAM-MD5"
            and ICramMD5Credentials.providedBy(credentials)
        ):
            expected = cramMD5Digest(entry.stored, credentials.challenge)
            return hmac.compare_digest(expected, credentials.digest)
        # Neither the plaintext nor a matching context: do the work a real
        # check of most of the file's users would, then refuse.
        if getattr(credentials, "expensive", False) and not self._scramByPBKDF2:
            # SCRAM in plaintext mode, in a file mostly of stored keys.
            self._spendStoredKeyCheck(credentials)
        else:
            credentials.checkPassword(self._dummyPlaintext)
        return False

    def _spendStoredKeyCheck(self, credentials: Any) -> None:
        """
        Do what checking a SCRAM proof against a stored user's keys does (a
        dummy entry parsed, the proof checked against dummy keys that no
        proof matches), for a user the file cannot check: C{credentials}
        are a proof made with stored keys' parameters, or one in plaintext
        mode (L{popserv.scram.ScramCredentials.spendCheck}).
        """
        parseScram(self._dummyScram)
        if IScramSHA256Credentials.providedBy(credentials):
            credentials.verify(*self._dummyKeys)
        else:
            credentials.spendCheck(self._dummyKeys)
