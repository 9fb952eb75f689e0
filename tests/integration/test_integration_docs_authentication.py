"""
The sessions docs/authentication.rst shows: every "# " note says what the
base64 above it decodes to; the APOP and CRAM-MD5 examples are the digests
their own timestamp and challenge give with alice's password; and the
sessions that do not depend on a fresh challenge (PLAIN, LOGIN) replay
exactly against a real server with alice's one message.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools

import pytest
from docpages import replay, transcripts
from test_integration_docs_capabilities import ONE_MESSAGE

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
