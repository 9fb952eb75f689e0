"""
The sessions docs/authentication.rst shows: every "# " note says what the
base64 above it decodes to; the APOP, CRAM-MD5 and SCRAM examples are what
their own timestamp, challenge or nonces give with alice's password; and
the sessions that do not depend on a fresh challenge (PLAIN, LOGIN, the
refused SCRAM attempts over TLS, EXTERNAL with a client certificate)
replay exactly against a real server with alice's one message.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools

import pytest
from docpages import replay, transcripts
from test_integration_docs_capabilities import ONE_MESSAGE
from test_integration_tls import context, startExternalServer, startTLSServer

pytestmark = pytest.mark.integration

PASSWORD = b"secret"


def sessions() -> dict[str, list[str]]:
    """
    The page's sessions by the first line each sends.
    """
    found: dict[str, list[str]] = {}
    for session in transcripts("authentication"):
        first = next(line[3:] for line in session if line.startswith("C: "))
        found.setdefault(first, session)
    return found


def test_notesDecodeTheLineAbove() -> None:
    """
    Each "# " note under a client or server line is that line's base64
    (after "C: ", or after "S: + "), decoded, with NUL shown as \\0.
    """
    checked = 0
    for session in transcripts("authentication"):
        for above, line in itertools.pairwise(session):
            if not line.lstrip().startswith("# "):
                continue
            data = above[3:].removeprefix("+ ").split()[-1]
            decoded = base64.b64decode(data, validate=True).decode().replace("\0", "\\0")
            assert decoded == line.lstrip()[2:], above
            checked += 1
    assert checked >= 20


def test_apopAndCramDigests() -> None:
    """
    The APOP digest is the MD5 of the greeting's timestamp and the password
    (RFC 1939 section 7); the CRAM-MD5 answer is the HMAC-MD5 of the
    challenge keyed with it (RFC 2195).
    """
    found = sessions()
    apop = next(session for first, session in found.items() if first.startswith("APOP "))
    timestamp = apop[0].rsplit(" ", 1)[1].encode()
    digest = apop[1].split()[-1]
    assert hashlib.md5(timestamp + PASSWORD).hexdigest() == digest

    cram = found["AUTH CRAM-MD5"]
    challenge = base64.b64decode(cram[1].removeprefix("S: + "))
    user, answer = base64.b64decode(cram[3][3:]).decode().split()
    assert user == "alice"
    assert hmac.new(PASSWORD, challenge, "md5").hexdigest() == answer


@pytest.mark.parametrize(
    "first", ["AUTH PLAIN", "AUTH PLAIN Ym9iAGFsaWNlAHNlY3JldA==", "AUTH LOGIN"]
)
def test_replay(first, start_server, maildir_root, maildir, deliver) -> None:
    """
    PLAIN with an empty challenge, PLAIN with an authorization identity
    refused and then the user's own accepted, and LOGIN's prompts.
    """
    deliver(maildir, ONE_MESSAGE)
    server = start_server(f"maildir:{maildir_root}/{{user}}")
    replay(server.port, sessions()[first])


def _scram(session: list[str]) -> dict[str, bytes]:
    """
    The messages of a SCRAM exchange, from the notes under its lines.
    """
    notes = [line.lstrip()[2:] for line in session if line.lstrip().startswith("# ")]
    clientFirst, serverFirst, clientFinal, serverFinal = notes
    return {
        "clientFirst": clientFirst.encode(),
        "serverFirst": serverFirst.encode(),
        "clientFinal": clientFinal.encode(),
        "serverFinal": serverFinal.encode(),
    }


def _attributes(message: bytes) -> dict[bytes, bytes]:
    return dict(item.split(b"=", 1) for item in message.split(b","))


@pytest.mark.parametrize("first", ["AUTH SCRAM-SHA-256 ", "AUTH SCRAM-SHA-256-PLUS cD10bHMtc2Vy"])
def test_scramProofs(first: str) -> None:
    """
    Each SCRAM example is an exchange that alice's password gives (RFC
    5802 section 3, SHA-256 per RFC 7677): the client's proof and the
    server's signature over the messages shown, the server's nonce
    extending the client's, and the channel-binding attribute starting
    with the client's GS2 header.
    """
    session = next(v for k, v in sessions().items() if k.startswith(first))
    messages = _scram(session)
    flag, authorization, bare = messages["clientFirst"].split(b",", 2)
    header = flag + b"," + authorization + b","
    server = _attributes(messages["serverFirst"])
    final = _attributes(messages["clientFinal"])
    assert server[b"r"].startswith(_attributes(bare)[b"r"]) and final[b"r"] == server[b"r"]
    assert base64.b64decode(final[b"c"]).startswith(header)
    withoutProof = messages["clientFinal"].rsplit(b",p=", 1)[0]
    authMessage = bare + b"," + messages["serverFirst"] + b"," + withoutProof
    salted = hashlib.pbkdf2_hmac(
        "sha256", PASSWORD, base64.b64decode(server[b"s"]), int(server[b"i"])
    )
    clientKey = hmac.new(salted, b"Client Key", "sha256").digest()
    storedKey = hashlib.sha256(clientKey).digest()
    signature = hmac.new(storedKey, authMessage, "sha256").digest()
    proof = bytes(a ^ b for a, b in zip(clientKey, signature, strict=True))
    assert base64.b64encode(proof) == final[b"p"]
    serverKey = hmac.new(salted, b"Server Key", "sha256").digest()
    verifier = hmac.new(serverKey, authMessage, "sha256").digest()
    assert messages["serverFinal"] == b"v=" + base64.b64encode(verifier)


def test_scramRefusalsOverTLS(ca, start_server, maildir_root, maildir, deliver) -> None:
    """
    The refused SCRAM attempts (an unknown binding type, binding required,
    a downgrade) replay over implicit TLS, as the page says they happen.
    """
    deliver(maildir, ONE_MESSAGE)
    server = startTLSServer(start_server, maildir_root, ca)
    refusals = sessions()["AUTH SCRAM-SHA-256-PLUS cD10bHMtdW5pcXVlLCxuPWFsaWNlLHI9YWJj"]
    replay(server.tlsPort, refusals, context(ca))


@pytest.mark.parametrize(
    "first", ["AUTH EXTERNAL =", "AUTH EXTERNAL", "AUTH EXTERNAL Ym9iQGV4YW1wbGUub3Jn"]
)
def test_externalReplay(first, ca, start_server, maildir_root, deliver) -> None:
    """
    The EXTERNAL sessions replay over implicit TLS with a client
    certificate for email:alice@example.org from the client CA, and
    --auth cert, as the page sets them up.
    """
    server = startExternalServer(start_server, maildir_root, ca, deliver, ONE_MESSAGE)
    alice = ca.issue("alice", ["alice@example.org"], filename="alice")
    replay(server.tlsPort, sessions()[first], context(ca, alice))
