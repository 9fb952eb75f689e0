"""
curl as a POP3 client of the real server.

curl prefers SASL when CAPA offers it and logs in with APOP when asked to
(--login-options AUTH=+APOP).
"""

from __future__ import annotations

import subprocess

import pytest
from clients import require_program

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _curl() -> None:
    require_program("curl")


MESSAGES = [
    b"From: a@example.org\nSubject: one\n\n.dotted line\n..two dots\n.\nend\n",
    b"Subject: two\r\n\r\nno final newline",
]


def curl(url: str, *options: str) -> subprocess.CompletedProcess[bytes]:
    """
    Run curl with a bounded time; fail with its stderr if it fails.
    """
    result = subprocess.run(
        ["curl", "-sS", "--max-time", "10", *options, url, "-u", "alice:secret"],
        capture_output=True,
        timeout=20,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode("utf-8", "replace")
    return result


@pytest.fixture
def url(server, maildir, deliver):
    """
    The pop3:// URL of a server whose drop holds L{MESSAGES}.
    """
    for message in MESSAGES:
        deliver(maildir, message)
    return f"pop3://127.0.0.1:{server.port}/"


def test_curl_list(url, wire_form):
    """
    curl with no message number prints the LIST lines: number and size.
    """
    expected = b"".join(b"%d %d\r\n" % (n, len(wire_form(m))) for n, m in enumerate(MESSAGES, 1))
    assert curl(url).stdout == expected


def test_curl_retrieve(url, wire_form):
    """
    curl retrieves each message byte for byte in its CRLF form: the server
    stuffed the dots and curl took them out again.
    """
    for n, message in enumerate(MESSAGES, 1):
        assert curl(f"{url}{n}").stdout == wire_form(message)


def test_curl_apop(url, wire_form):
    """
    curl told to use APOP only (--login-options AUTH=+APOP) logs in and
    retrieves; with a wrong password it fails with a login error.
    """
    result = curl(f"{url}1", "-v", "--login-options", "AUTH=+APOP")
    assert result.stdout == wire_form(MESSAGES[0])
    assert b"> APOP alice " in result.stderr
    assert b"> USER" not in result.stderr
    result = subprocess.run(
        [
            "curl",
            "-sS",
            "--max-time",
            "10",
            "--login-options",
            "AUTH=+APOP",
            url,
            "-u",
            "alice:wrong",
        ],
        capture_output=True,
        timeout=20,
        check=False,
    )
    # 67: CURLE_LOGIN_DENIED.
    assert result.returncode == 67, result.stderr
