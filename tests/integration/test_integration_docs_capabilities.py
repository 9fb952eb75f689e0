"""
The sessions docs/capabilities.rst shows, replayed against a real server set
up as the page says: each line the client sends is sent, and each line the
server sends must come back exactly, CRLF-terminated (the greeting's
timestamp aside, which differs every time).
"""

from __future__ import annotations

import socket

import pytest
from docpages import literal, replay, transcripts
from processes import TIMEOUT

pytestmark = pytest.mark.integration

#: The message behind "1 messages (114 octets)", as tls.rst's example shows
#: it, stored with LF line ends.
ONE_MESSAGE = (
    b"From: Bob <bob@example.org>\nTo: Alice <alice@example.org>\n"
    b"Subject: Hello over TLS\n\nHi Alice,\n.see you soon.\n"
)
#: The two messages behind "2 messages (47 octets)".
TWO_MESSAGES = (b"Subject: one\n\nfirst\n", b"Subject: two\n\nsecond\n")


def policyFile() -> str:
    """
    The policy file the page shows under "Per-user values".
    """
    return "\n".join(literal("capabilities", "Per-user values")) + "\n"


@pytest.fixture
def exchanges() -> list[list[str]]:
    shown = transcripts("capabilities")
    assert len(shown) == 6, shown
    return shown


def test_capaBeforeAndAfterLogin(
    exchanges, ca, start_server, maildir_root, maildir, deliver
) -> None:
    """
    The first session: a server with a certificate, asked over loopback
    without TLS, then after login.
    """
    deliver(maildir, ONE_MESSAGE)
    cert = ca.issue("localhost", ["localhost", "127.0.0.1"])
    server = start_server(
        f"maildir:{maildir_root}/{{user}}",
        extra=["--tls-cert", str(cert.certificate), "--tls-key", str(cert.key)],
    )
    replay(server.port, exchanges[0])


def test_expireZero(exchanges, start_server, maildir_root, maildir, deliver) -> None:
    """
    The session with --expire 0: RETR 1 is deleted at QUIT, TOP 2 0 is not.
    """
    for message in TWO_MESSAGES:
        deliver(maildir, message)
    server = start_server(f"maildir:{maildir_root}/{{user}}", extra=["--expire", "0"])
    replay(server.port, exchanges[1])
    assert len(list((maildir / "cur").iterdir()) + list((maildir / "new").iterdir())) == 1


def test_perUserValues(exchanges, tmp_path, start_server, maildir_root, deliver) -> None:
    """
    With --login-delay 900 --expire 30 and the page's policy file: CAPA
    before login, then dave (whom the file does not name) after login, and
    his second login within 900 seconds refused.
    """
    for message in TWO_MESSAGES:
        deliver(maildir_root / "dave", message)
    policy = tmp_path / "policy"
    policy.write_text(policyFile())
    server = start_server(
        f"maildir:{maildir_root}/{{user}}",
        auth=["memory:alice:secret:dave:pw"],
        extra=["--login-delay", "900", "--expire", "30", "--policy-file", str(policy)],
    )
    for exchange in exchanges[2:5]:
        replay(server.port, exchange)


def test_utf8(exchanges, start_server, maildir_root, deliver) -> None:
    """
    UTF8 before login, a UTF-8 user name and password, UTF8 refused after.
    """
    for message in TWO_MESSAGES:
        deliver(maildir_root / "jörg", message)
    server = start_server(f"maildir:{maildir_root}/{{user}}", auth=["memory:jörg:pässwörd"])
    replay(server.port, exchanges[5])


def test_downgradedHeader(start_server, maildir_root, maildir, deliver) -> None:
    """
    The page's stored UTF-8 header reaches a client that did not send UTF8
    as the page shows it, and LIST gives the size of what RETR sends.
    """
    stored = literal("capabilities", "For example, this stored")
    shown = literal("capabilities", "reaches a client that did not send")
    deliver(maildir, ("\n".join(stored) + "\n\nHallo!\n").encode())
    server = start_server(f"maildir:{maildir_root}/{{user}}")
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock,
        sock.makefile("rb") as received,
    ):
        sock.sendall(b"USER alice\r\nPASS secret\r\nLIST 1\r\nRETR 1\r\nQUIT\r\n")
        # The greeting, USER, PASS, LIST 1 and RETR 1's status line.
        replies = [received.readline() for _ in range(5)]
        assert [r[:3] for r in replies] == [b"+OK"] * 5, replies
        message = b"".join(iter(received.readline, b".\r\n"))
    assert message.decode().split("\r\n")[: len(shown)] == shown
    assert replies[3] == b"+OK 1 %d\r\n" % len(message)
    assert replies[4] == b"+OK %d octets\r\n" % len(message)
