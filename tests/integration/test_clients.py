"""
Real POP3 clients against the real server: fetchmail, mpop and getmail6
retrieve, keep or delete alice's mail, remember what they have seen by
UIDL, log in with USER/PASS, APOP and SASL, and talk TLS (implicit and
STLS); curl covers TLS and SASL with initial responses.

Every message a client delivers locally must equal the message in the
server's Maildir in the form an un-stuffing client sees (L{wire_form}),
with LF line endings, once the trace headers the client itself prepends
are stripped (L{clients.strip_added_headers}).
"""

from __future__ import annotations

import re
import subprocess

import pytest
from clients import require_program, without_fetchmail_times

pytestmark = pytest.mark.integration

# Dots at line starts, a line of just ".", an unterminated last line, CRLF
# input, 8-bit UTF-8, a folded header, and one message big enough to take
# many TCP segments (with dots throughout).
MESSAGES = [
    b"From: a@example.org\nTo: alice@example.org\nSubject: dots\n\n"
    b".dotted line\n..two dots\n.\nend\n",
    b"From: b@example.org\r\nSubject: CRLF\r\n\r\nthe last line has no newline",
    "From: c@example.org\nSubject: =?utf-8?q?caf=C3=A9?=\nMIME-Version: 1.0\n"
    "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
    "café, naïve — 8-bit\n".encode(),
    b"From: d@example.org\nSubject: a folded\n header field\n\n\n\nblank lines above\n",
    b"From: e@example.org\nSubject: big\n\n"
    + b"".join(b"%s%05d %s\n" % (b"." if n % 7 == 0 else b"", n, b"x" * 64) for n in range(4000)),
]
#: Mail that arrives between two runs.
LATE = b"From: f@example.org\nSubject: late\n\narrived between two runs\n"


@pytest.fixture
def local_form(wire_form):
    """
    What a client writes for a message: its wire form (RFC 1939 lines,
    un-stuffed) with LF line endings.
    """

    def convert(message: bytes) -> bytes:
        return wire_form(message).replace(b"\r\n", b"\n")

    return convert


@pytest.fixture
def expected(local_form):
    """
    L{MESSAGES} as a client writes them, sorted as runs report them.
    """
    return sorted(local_form(m) for m in MESSAGES)


@pytest.fixture
def drop(maildir, deliver, message_files):
    """
    Alice's Maildir with L{MESSAGES} delivered; the set of its files.
    """
    for message in MESSAGES:
        deliver(maildir, message)
    return message_files(maildir)


def kept(maildir, message_files, before):
    """
    Whether the Maildir holds exactly the files it held before, plus the
    server's lock file.
    """
    return message_files(maildir) == before | {"popserv.lock"}


def commands(log: str, prefix: str) -> list[str]:
    """
    The commands a client log shows it sent, as written after C{prefix}.
    """
    return [line[len(prefix) :] for line in log.splitlines() if line.startswith(prefix)]


# fetchmail: "POP3> COMMAND" lines in its --verbose log.


def test_fetchmail_log_without_times():
    """
    The time stamp fetchmail 6.5 and later put before each log line (6.6.9
    in Debian sid does on standard output too) is taken off, the day padded
    with a space or a zero; 6.4's lines, without one, stay as they are.
    """
    log = (
        "Nov 26 05:49:36 fetchmail: POP3> USER alice\n"
        "Dec  1 23:59:59 fetchmail: POP3< +OK\n"
        "Jan 02 00:00:00 fetchmail: POP3> QUIT\n"
        "fetchmail: POP3> STAT\n"
        "Subject: Nov 26 05:49:36 fetchmail: kept\n"
    )
    assert without_fetchmail_times(log) == (
        "fetchmail: POP3> USER alice\n"
        "fetchmail: POP3< +OK\n"
        "fetchmail: POP3> QUIT\n"
        "fetchmail: POP3> STAT\n"
        "Subject: Nov 26 05:49:36 fetchmail: kept\n"
    )


def test_fetchmail_keep(server, drop, maildir, fetchmail, expected, message_files):
    """
    fetchmail in keep mode logs in with USER/PASS, retrieves every message
    with RETR and deletes nothing.
    """
    run = fetchmail.run(server.port, keep=True)
    assert run.returncode == 0, run.log
    assert run.messages == expected
    sent = commands(run.log, "fetchmail: POP3> ")
    assert sent[:2] == ["USER alice", "PASS *"]
    assert [c for c in sent if c.startswith("RETR")] == [f"RETR {n}" for n in range(1, 6)]
    assert not [c for c in sent if c.startswith(("DELE", "TOP"))]
    assert sent[-1] == "QUIT"
    assert kept(maildir, message_files, drop)


def test_fetchmail_delete(server, drop, maildir, fetchmail, expected, message_files):
    """
    fetchmail without keep fetches each message with "TOP n 99999999" (to
    leave it unseen should the session fail), then DELE; after its QUIT
    the server's Maildir is empty.
    """
    run = fetchmail.run(server.port, keep=False)
    assert run.returncode == 0, run.log
    assert run.messages == expected
    sent = commands(run.log, "fetchmail: POP3> ")
    fetching = [c for c in sent if c.startswith(("TOP", "DELE", "RETR"))]
    assert fetching == [c for n in range(1, 6) for c in (f"TOP {n} 99999999", f"DELE {n}")]
    assert message_files(maildir) == {"popserv.lock"}


def test_fetchmail_uidl(
    server, drop, maildir, deliver, fetchmail, expected, local_form, message_files
):
    """
    fetchmail with keep and uidl remembers the UIDL of what it fetched, so
    it fetches with "TOP n 99999999" (leaving the message unseen): a second
    run fetches only the message delivered in between, a third finds
    nothing new (exit status 1), and nothing is deleted.
    """

    def fetching(run):
        sent = commands(run.log, "fetchmail: POP3> ")
        return [c for c in sent if c.startswith(("TOP", "RETR", "DELE"))]

    first = fetchmail.run(server.port, keep=True, uidl=True)
    assert first.returncode == 0, first.log
    assert first.messages == expected
    assert "UIDL" in commands(first.log, "fetchmail: POP3> ")
    assert fetching(first) == [f"TOP {n} 99999999" for n in range(1, 6)]

    late = deliver(maildir, LATE)
    second = fetchmail.run(server.port, keep=True, uidl=True)
    assert second.returncode == 0, second.log
    assert second.messages == [local_form(LATE)]
    assert fetching(second) == ["TOP 6 99999999"]

    third = fetchmail.run(server.port, keep=True, uidl=True)
    assert third.returncode == 1, third.log
    assert third.messages == []
    assert fetching(third) == []
    assert kept(maildir, message_files, drop | {f"new/{late.name}"})


def test_fetchmail_apop(server, drop, fetchmail, expected):
    """
    fetchmail with protocol APOP answers the greeting's timestamp with
    APOP and retrieves everything; with a wrong password it reports an
    authentication failure (exit status 3) and delivers nothing.
    """
    run = fetchmail.run(server.port, protocol="APOP")
    assert run.returncode == 0, run.log
    assert run.messages == expected
    sent = commands(run.log, "fetchmail: POP3> ")
    assert sent[0].startswith("APOP alice ")
    assert not [c for c in sent if c.startswith(("USER", "PASS"))]

    refused = fetchmail.run(server.port, protocol="APOP", password="wrong")
    assert refused.returncode == 3, refused.log
    assert refused.messages == []


# mpop: "--> COMMAND" and "<-- REPLY" lines in its --debug log.


def test_mpop_pipelined(server, drop, maildir, mpop, expected, message_files):
    """
    mpop told to pipeline sends all its RETR commands before it reads the
    first reply; every message arrives intact and, with keep on, nothing is
    deleted.
    """
    run = mpop.run(server.port, pipelining="on", keep=True)
    assert run.returncode == 0, run.log
    assert run.messages == expected
    lines = run.log.splitlines()
    first_retr = lines.index("--> RETR 1")
    assert lines[first_retr : first_retr + 5] == [f"--> RETR {n}" for n in range(1, 6)]
    assert not [c for c in commands(run.log, "--> ") if c.startswith("DELE")]
    assert kept(maildir, message_files, drop)


def test_mpop_uidl(server, drop, maildir, deliver, mpop, expected, local_form, message_files):
    """
    mpop keeps the UIDLs it has seen: a second run retrieves only the
    message delivered in between, a third retrieves nothing.
    """
    first = mpop.run(server.port, keep=True)
    assert first.returncode == 0, first.log
    assert first.messages == expected
    assert "--> UIDL" in first.log

    late = deliver(maildir, LATE)
    second = mpop.run(server.port, keep=True)
    assert second.returncode == 0, second.log
    assert second.messages == [local_form(LATE)]
    assert [c for c in commands(second.log, "--> ") if c.startswith("RETR")] == ["RETR 6"]

    third = mpop.run(server.port, keep=True)
    assert third.returncode == 0, third.log
    assert third.messages == []
    assert kept(maildir, message_files, drop | {f"new/{late.name}"})


def test_mpop_delete(server, drop, maildir, mpop, expected, message_files):
    """
    mpop with keep off deletes what it retrieved: the server's Maildir is
    empty afterwards.
    """
    run = mpop.run(server.port, keep=False)
    assert run.returncode == 0, run.log
    assert run.messages == expected
    assert [c for c in commands(run.log, "--> ") if c.startswith("DELE")] == [
        f"DELE {n}" for n in range(1, 6)
    ]
    assert message_files(maildir) == {"popserv.lock"}


def test_mpop_apop(server, drop, mpop, expected):
    """
    mpop with auth apop logs in with APOP; with a wrong password it fails
    (exit status 77, EX_NOPERM) and delivers nothing.
    """
    run = mpop.run(server.port, auth="apop")
    assert run.returncode == 0, run.log
    assert run.messages == expected
    assert commands(run.log, "--> APOP alice ")

    refused = mpop.run(server.port, auth="apop", password="wrong")
    assert refused.returncode == 77, refused.log
    assert refused.messages == []


# getmail6: its own log says little; the server-side Maildir and the UIDs
# it stores show what it did.


def test_getmail_uidl(server, drop, maildir, deliver, getmail, expected, local_form, message_files):
    """
    getmail6 with read_all off retrieves everything once, then on a second
    run only the message delivered in between, and deletes nothing.
    """
    first = getmail.run(server.port)
    assert first.returncode == 0, first.log
    assert first.messages == expected

    late = deliver(maildir, LATE)
    second = getmail.run(server.port)
    assert second.returncode == 0, second.log
    assert second.messages == [local_form(LATE)]
    assert "1 messages (" in second.log or "1 message (" in second.log, second.log

    assert kept(maildir, message_files, drop | {f"new/{late.name}"})


def test_getmail_delete(server, drop, maildir, getmail, expected, message_files):
    """
    getmail6 with delete on removes what it retrieved.
    """
    run = getmail.run(server.port, delete=True)
    assert run.returncode == 0, run.log
    assert run.messages == expected
    assert message_files(maildir) == {"popserv.lock"}


def test_getmail_apop(server, drop, getmail, expected):
    """
    getmail6 with use_apop logs in with APOP; with a wrong password it
    delivers nothing and exits non-zero.
    """
    run = getmail.run(server.port, apop=True)
    assert run.returncode == 0, run.log
    assert run.messages == expected

    refused = getmail.run(server.port, apop=True, password="wrong")
    assert refused.returncode != 0, refused.log
    assert refused.messages == []


# TLS from the first byte: an ssl: endpoint, which Twisted provides.


def test_fetchmail_implicit_tls(tls_server, drop, fetchmail, expected):
    """
    fetchmail with ssl, sslcertck and the test CA verifies the server
    certificate and retrieves everything over TLS.
    """
    run = fetchmail.run(tls_server.tls_port, tls="implicit")
    assert run.returncode == 0, run.log
    assert run.messages == expected
    assert "SSL/TLS: using protocol TLSv1." in run.log


def test_mpop_implicit_tls(tls_server, drop, mpop, expected):
    """
    mpop with tls on, tls_starttls off and the test CA as trust file
    verifies the certificate for 127.0.0.1 and retrieves everything,
    pipelined.
    """
    run = mpop.run(tls_server.tls_port, tls="implicit", pipelining="on")
    assert run.returncode == 0, run.log
    assert run.messages == expected
    assert "STLS" not in commands(run.log, "--> ")


def test_getmail_implicit_tls(tls_server, drop, getmail, expected):
    """
    getmail6's SimplePOP3SSLRetriever with the test CA as ca_certs
    retrieves everything over TLS.
    """
    run = getmail.run(tls_server.tls_port, tls="implicit")
    assert run.returncode == 0, run.log
    assert run.messages == expected
    assert "SimplePOP3SSLRetriever" in run.log


def curl(*arguments: str) -> subprocess.CompletedProcess[bytes]:
    """
    Run curl verbosely with a bounded time; the caller checks the outcome.
    """
    return subprocess.run(
        ["curl", "-sS", "-v", "--max-time", "20", *arguments],
        capture_output=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def curl_installed():
    """
    Skip when curl is not installed.
    """
    require_program("curl")


def test_curl_pop3s(tls_server, drop, test_pki, wire_form, curl_installed):
    """
    curl retrieves a message from a pop3s:// URL when it trusts the test
    CA, and refuses the certificate (exit status 60) when it does not.
    """
    url = f"pop3s://127.0.0.1:{tls_server.tls_port}/1"
    result = curl(url, "--cacert", str(test_pki.ca_certificate), "-u", "alice:secret")
    assert result.returncode == 0, result.stderr
    assert result.stdout == wire_form(MESSAGES[0])

    untrusted = curl(url, "-u", "alice:secret")
    # 60: CURLE_PEER_FAILED_VERIFICATION.
    assert untrusted.returncode == 60, untrusted.stderr


# STLS (RFC 2595): live once popserv takes --tls-cert and --tls-key.


def test_fetchmail_stls(tls_server, drop, fetchmail, expected, twistd):
    """
    fetchmail with sslproto and sslcertck but no ssl upgrades the plain
    connection with STLS before it logs in, and retrieves everything.
    """
    run = fetchmail.run(tls_server.port, tls="starttls")
    assert run.returncode == 0, run.log
    assert run.messages == expected
    sent = commands(run.log, "fetchmail: POP3> ")
    assert "STLS" in sent
    assert sent.index("STLS") < sent.index("USER alice")


def test_mpop_stls(tls_server, drop, mpop, expected, twistd):
    """
    mpop with tls on and tls_starttls on sends STLS, verifies the test
    certificate and retrieves everything, pipelined.
    """
    run = mpop.run(tls_server.port, tls="starttls", pipelining="on")
    assert run.returncode == 0, run.log
    assert run.messages == expected
    sent = commands(run.log, "--> ")
    assert sent.index("STLS") < sent.index("USER alice")


def test_curl_stls(tls_server, drop, test_pki, wire_form, twistd, curl_installed):
    """
    curl with --ssl-reqd upgrades a pop3:// connection with STLS before it
    logs in and retrieves the message.
    """
    result = curl(
        f"pop3://127.0.0.1:{tls_server.port}/1",
        "--ssl-reqd",
        "--cacert",
        str(test_pki.ca_certificate),
        "-u",
        "alice:secret",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == wire_form(MESSAGES[0])
    assert re.search(rb"^> STLS\r?$", result.stderr, re.MULTILINE), result.stderr


# SASL (RFC 5034), over implicit TLS: live once CAPA lists the mechanism.

SASL_MECHANISMS = ["PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"]


def mpop_scram_failed_before_auth(run) -> bool:
    """
    Whether an mpop run failed as mpop 1.4.21 and 1.4.22 (GNU SASL 2.2.2 and
    2.2.4, Debian 13 and sid) fail every SCRAM-SHA-256 without -PLUS over
    TLS: in GNU SASL, before anything of SASL reached the server.  (The same
    mpop does SCRAM-SHA-256 without TLS, and -PLUS with it; 1.4.18 does
    SCRAM-SHA-256 over TLS.)
    """
    return (
        run.returncode != 0
        and "mpop: GNU SASL: Error authenticating user" in run.log
        and not [c for c in commands(run.log, "--> ") if c.startswith("AUTH")]
    )


@pytest.mark.parametrize("mechanism", SASL_MECHANISMS)
def test_mpop_sasl(tls_server, drop, mpop, expected, test_pki, mechanism):
    """
    mpop authenticates with each SASL mechanism the server offers (through
    GNU SASL) and retrieves everything; a wrong password is refused.
    SCRAM-SHA-256-PLUS binds to TLS 1.3's tls-exporter here.
    """
    auth = mechanism.lower()
    if auth not in mpop.methods():
        pytest.skip(f"this mpop has no {mechanism} (mpop 1.4.19 added -PLUS)")
    run = mpop.run(tls_server.tls_port, tls="implicit", auth=auth)
    if mechanism == "SCRAM-SHA-256" and mpop_scram_failed_before_auth(run):
        pytest.xfail("this mpop fails SCRAM-SHA-256 over TLS before it sends AUTH")
    assert run.returncode == 0, run.log
    assert run.messages == expected
    assert f"AUTH {mechanism}" in "\n".join(commands(run.log, "--> "))

    refused = mpop.run(tls_server.tls_port, tls="implicit", auth=auth, password="wrong")
    assert refused.returncode == 77, refused.log
    assert refused.messages == []


def test_mpop_stls_scram_pipelined(tls_server, drop, mpop, expected, test_pki, twistd):
    """
    mpop with STLS, SCRAM-SHA-256 (-PLUS where this mpop has it) and
    pipelining on retrieves everything: the combination a careful mpop user
    configures.
    """
    auth = "scram-sha-256-plus" if "scram-sha-256-plus" in mpop.methods() else "scram-sha-256"
    run = mpop.run(tls_server.port, tls="starttls", auth=auth, pipelining="on")
    assert run.returncode == 0, run.log
    assert run.messages == expected
    sent = commands(run.log, "--> ")
    assert sent.index("STLS") < sent.index(f"AUTH {auth.upper()}")


def test_fetchmail_cram_md5(tls_server, drop, fetchmail, expected, test_pki):
    """
    fetchmail with auth cram-md5 logs in with AUTH CRAM-MD5 and retrieves
    everything.
    """
    run = fetchmail.run(tls_server.tls_port, tls="implicit", auth="cram-md5")
    assert run.returncode == 0, run.log
    assert run.messages == expected
    assert "AUTH CRAM-MD5" in commands(run.log, "fetchmail: POP3> ")


@pytest.mark.parametrize(
    ("mechanism", "initial_response"),
    [("PLAIN", True), ("PLAIN", False), ("LOGIN", False), ("CRAM-MD5", False)],
)
def test_curl_sasl(
    tls_server, drop, test_pki, wire_form, curl_installed, mechanism, initial_response
):
    """
    curl logs in with AUTH and the one mechanism it is told to use (PLAIN
    with the credentials in the AUTH command itself when --sasl-ir is
    given, RFC 4954 style) and retrieves the message.
    """
    result = curl(
        f"pop3s://127.0.0.1:{tls_server.tls_port}/1",
        "--cacert",
        str(test_pki.ca_certificate),
        "-u",
        "alice:secret",
        "--login-options",
        f"AUTH={mechanism}",
        *(["--sasl-ir"] if initial_response else []),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == wire_form(MESSAGES[0])
    auth = re.search(rb"^> AUTH (\S+)( \S+)?\r?$", result.stderr, re.MULTILINE)
    assert auth, result.stderr
    assert auth.group(1) == mechanism.encode()
    assert bool(auth.group(2)) == initial_response
