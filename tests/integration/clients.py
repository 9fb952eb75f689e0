"""
Real POP3 clients — fetchmail, mpop and getmail6 — run as subprocesses
against the server, and the certificates their TLS runs trust.

Each client gets a private directory: its configuration (mode 0600, as
fetchmail and mpop demand of a file holding a password), its state (the
UIDs it has seen) and a local Maildir it delivers into.  C{HOME} points at
that directory, so nothing of the user running the tests is read or
written.  Every run is bounded by L{CLIENT_DEADLINE}.

A client adds trace headers at the top of what it delivers; each runner
names them in L{MailClient.ADDED_HEADERS} and strips exactly those, in that
order, failing if they are not there: what is left must equal the message
the server holds, with LF line endings (all three clients write LF).

The last section detects the server features still being added (STLS and
SASL).
knows they may be missing.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import ssl
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar, Literal

import pytest

# tests/, on sys.path through tests/conftest.py.
from certificates import CertificateAuthority

HOST = "127.0.0.1"
#: The name the test server certificate is issued for, besides 127.0.0.1.
CERTIFICATE_NAME = "localhost"
#: The bound of one client run.
CLIENT_DEADLINE = 60.0
#: What a client waits for one server reply (each client's own timeout).
SERVER_REPLY_TIMEOUT = 20

#: No TLS, TLS from the first byte (an C{ssl:} endpoint), or STLS.
TLSMode = Literal["none", "implicit", "starttls"]


# Certificates.


@dataclass(frozen=True)
class TestPKI:
    """
    A throw-away certificate authority and a server certificate it signed
    for 127.0.0.1 and C{localhost}, as PEM files.
    """

    __test__ = False  # Not a test class, despite its name.

    ca_certificate: Path
    server_certificate: Path
    server_key: Path

    def ssl_endpoint(self) -> str:
        """
        A Twisted server endpoint string for implicit TLS on an ephemeral
        port of 127.0.0.1 with the server certificate.
        """
        return (
            f"ssl:0:interface={HOST}:privateKey={self.server_key}:certKey={self.server_certificate}"
        )

    def client_context(self) -> ssl.SSLContext:
        """
        A client context that trusts only the test CA.
        """
        return ssl.create_default_context(cafile=str(self.ca_certificate))


def make_test_pki(directory: Path) -> TestPKI:
    """
    Generate a CA and a server certificate for 127.0.0.1 and
    L{CERTIFICATE_NAME} into C{directory}, with the generator the unit
    tests use (tests/certificates.py).
    """
    authority = CertificateAuthority(directory)
    server = authority.issue(CERTIFICATE_NAME, [CERTIFICATE_NAME, HOST], filename="server")
    return TestPKI(
        ca_certificate=authority.files.certificate,
        server_certificate=server.certificate,
        server_key=server.key,
    )


# Delivered messages.


def write_private(path: Path, text: str) -> Path:
    """
    Write C{text} to C{path}, readable and writable by its owner only from
    the moment it exists.
    """
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(descriptor, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, 0o600)
    return path


_HEADER_FIELD = re.compile(rb"([^:\s]+):")


def strip_added_headers(message: bytes, names: Sequence[str]) -> bytes:
    """
    C{message} without the header fields C{names} at its top, exactly those
    and in that order, each with its folded continuation lines; an
    C{AssertionError} if they are not there.
    """
    rest = message
    for name in names:
        match = _HEADER_FIELD.match(rest)
        assert match and match.group(1).decode("ascii", "replace").lower() == name.lower(), (
            f"expected a {name}: field at the top of {message[:300]!r}"
        )
        end = rest.index(b"\n") + 1
        while rest[end : end + 1] in (b" ", b"\t"):
            end = rest.index(b"\n", end) + 1
        rest = rest[end:]
    return rest


def read_new_messages(maildir: Path, seen: set[str]) -> list[bytes]:
    """
    The messages in C{maildir}'s C{new/} and C{cur/} that are not in
    C{seen} (which is updated), sorted by their bytes: clients name their
    files in ways that do not sort by delivery time.
    """
    found = []
    for sub in ("new", "cur"):
        for path in (maildir / sub).iterdir():
            if path.name not in seen:
                seen.add(path.name)
                found.append(path.read_bytes())
    return sorted(found)


#: A minimal MDA: write standard input as one new message into the Maildir
#: named by the first argument (tmp/, then rename into new/).
_MDA = """\
import os, sys, time
maildir = sys.argv[1]
name = "%d.P%d.mda" % (time.time_ns(), os.getpid())
with open(os.path.join(maildir, "tmp", name), "wb") as f:
    f.write(sys.stdin.buffer.read())
os.rename(os.path.join(maildir, "tmp", name), os.path.join(maildir, "new", name))
"""


# The clients.


@dataclass
class ClientRun:
    """
    What one run of a client did.
    """

    returncode: int
    #: stdout and stderr, interleaved as written.
    log: str
    #: The messages this run delivered, the client's trace headers
    #: stripped, sorted by their bytes.
    messages: list[bytes]


class MailClient:
    """
    One client with its private home directory and local Maildir; state
    (the UIDs seen) persists from one L{run} to the next.
    """

    #: The program run.
    PROGRAM: ClassVar[str]
    #: The header fields the client prepends to each message it delivers.
    ADDED_HEADERS: ClassVar[tuple[str, ...]]

    def __init__(self, home: Path, pki: TestPKI | None = None) -> None:
        self.home = home
        self.pki = pki
        home.mkdir(mode=0o700)
        self.maildir = home / "Maildir"
        for sub in ("tmp", "new", "cur"):
            (self.maildir / sub).mkdir(parents=True, mode=0o700)
        self._seen: set[str] = set()
        self.mda = home / "mda.py"
        self.mda.write_text(_MDA)

    def mda_command(self) -> list[str]:
        """
        The command line of the MDA that delivers into L{maildir}.
        """
        return [sys.executable, str(self.mda), str(self.maildir)]

    def trust_file(self) -> Path:
        """
        The CA file a TLS run trusts.
        """
        assert self.pki is not None, "a TLS run needs the test PKI"
        return self.pki.ca_certificate

    def execute(self, argv: Sequence[str]) -> ClientRun:
        """
        Run C{argv} with C{HOME} set to the private directory, bounded by
        L{CLIENT_DEADLINE}, and collect what it delivered.
        """
        environment = {
            "HOME": str(self.home),
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            # Untranslated messages: the tests read the logs.
            "LC_ALL": "C",
        }
        try:
            result = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=self.home,
                env=environment,
                timeout=CLIENT_DEADLINE,
                check=False,
            )
        except subprocess.TimeoutExpired as expired:
            output = (expired.output or b"").decode("utf-8", "replace")
            pytest.fail(f"{self.PROGRAM} did not finish within {CLIENT_DEADLINE} s:\n{output}")
        delivered = read_new_messages(self.maildir, self._seen)
        return ClientRun(
            returncode=result.returncode,
            log=result.stdout.decode("utf-8", "replace"),
            messages=sorted(strip_added_headers(m, self.ADDED_HEADERS) for m in delivered),
        )


#: The local time fetchmail 6.5 and later put before each line of its log
#: ("Jun 20 23:45:01 fetchmail: "; English under LC_ALL=C, the day padded
#: with a space or a zero).  6.4 wrote none.
_FETCHMAIL_TIME = re.compile(r"^[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d (?=fetchmail: )", re.MULTILINE)


def without_fetchmail_times(log: str) -> str:
    """
    A fetchmail log with the time stamps of fetchmail 6.5 and later taken
    off, so that every version's lines begin with "fetchmail: ".
    """
    return _FETCHMAIL_TIME.sub("", log)


class Fetchmail(MailClient):
    """
    fetchmail, one poll in the foreground, delivering through an MDA.  Its
    C{-v} log shows every command ("POP3> RETR 1") and reply, each line
    beginning with "fetchmail: " (time stamps taken off).  Exit status 0
    means mail was delivered, 1 that there was none.
    """

    PROGRAM = "fetchmail"
    ADDED_HEADERS = ("Received",)

    def run(
        self,
        port: int,
        *,
        protocol: Literal["POP3", "APOP"] = "POP3",
        auth: str = "password",
        password: str = "secret",
        keep: bool = True,
        uidl: bool = False,
        tls: TLSMode = "none",
    ) -> ClientRun:
        """
        Poll alice's drop on C{port} once.
        """
        server = [f"protocol {protocol}", f"port {port}", f"auth {auth}"]
        server.append(f"timeout {SERVER_REPLY_TIMEOUT}")
        if uidl:
            server.append("uidl")
        user = ['user "alice"', f'password "{password}"', "keep" if keep else "no keep"]
        if tls == "none":
            # Since 6.4 fetchmail insists on STLS unless told not to use it.
            user.append("sslproto ''")
        else:
            # "ssl" is TLS from the first byte; without it, a sslproto
            # makes STLS mandatory.  fetchmail matches the certificate
            # against names only, not the IP address it connected to.
            if tls == "implicit":
                user.append("ssl")
            user += [
                "sslproto 'TLS1.2+'",
                "sslcertck",
                f'sslcertfile "{self.trust_file()}"',
                f'sslcommonname "{CERTIFICATE_NAME}"',
            ]
        # Rewriting would add the server's name to unqualified addresses.
        user += ["no rewrite", f'mda "{shlex.join(self.mda_command())}"']
        rc = write_private(
            self.home / "fetchmailrc",
            f"poll {HOST} " + " ".join(server) + "\n    " + "\n    ".join(user) + "\n",
        )
        run = self.execute(
            [
                "fetchmail",
                "--fetchmailrc",
                str(rc),
                "--idfile",
                str(self.home / "fetchids"),
                "--pidfile",
                str(self.home / "fetchmail.pid"),
                "--nosyslog",
                "--verbose",
            ]
        )
        return replace(run, log=without_fetchmail_times(run.log))


class Mpop(MailClient):
    """
    mpop with its own Maildir delivery.  Its C{--debug} log shows every
    command ("--> RETR 1") and reply line ("<-- +OK"), passwords included.
    """

    PROGRAM = "mpop"
    ADDED_HEADERS = ("Received",)

    def run(
        self,
        port: int,
        *,
        auth: str = "user",
        password: str = "secret",
        keep: bool = True,
        tls: TLSMode = "none",
        pipelining: Literal["auto", "on", "off"] = "auto",
    ) -> ClientRun:
        """
        Retrieve alice's new mail from C{port} once.
        """
        lines = [
            "account test",
            f"host {HOST}",
            f"port {port}",
            f"timeout {SERVER_REPLY_TIMEOUT}",
            "user alice",
            f"password {password}",
            f"auth {auth}",
            f"pipelining {pipelining}",
            f"keep {'on' if keep else 'off'}",
            f"delivery maildir {self.maildir}",
            f"uidls_file {self.home / 'uidls'}",
        ]
        if tls == "none":
            lines.append("tls off")
        else:
            # GnuTLS checks the certificate against the IP address itself.
            lines += [
                "tls on",
                f"tls_starttls {'on' if tls == 'starttls' else 'off'}",
                f"tls_trust_file {self.trust_file()}",
            ]
        rc = write_private(self.home / "mpoprc", "\n".join(lines) + "\n")
        return self.execute(["mpop", "--file", str(rc), "--debug", "test"])

    @staticmethod
    def methods() -> set[str]:
        """
        The authentication methods this mpop supports, as its C{--version}
        lists them ("scram-sha-256-plus" from mpop 1.4.19 on).
        """
        out = subprocess.run(
            ["mpop", "--version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"},
            timeout=CLIENT_DEADLINE,
            check=True,
        ).stdout.decode("utf-8", "replace")
        lines = out.splitlines()
        heading = lines.index("Supported authentication methods:")
        return set(lines[heading + 1].split())


class Getmail(MailClient):
    """
    getmail6 with its SimplePOP3Retriever (or, for implicit TLS, the
    SimplePOP3SSLRetriever), which remembers the UIDL of every message it
    delivered in C{oldmail-*} files of its getmail directory.

    getmail's Maildir destination refuses to deliver as root, and CI runs
    as root: then the same message goes through the MDA_external
    destination into the same Maildir.  Both destinations write what
    getmail's C{Message.flatten} gives them.
    """

    PROGRAM = "getmail"
    ADDED_HEADERS = ("Return-Path", "Delivered-To", "Received")

    def run(
        self,
        port: int,
        *,
        password: str = "secret",
        apop: bool = False,
        delete: bool = False,
        read_all: bool = False,
        tls: Literal["none", "implicit"] = "none",
    ) -> ClientRun:
        """
        Retrieve alice's mail from C{port} once.
        """
        retriever = [
            "[retriever]",
            f"type = {'SimplePOP3SSLRetriever' if tls == 'implicit' else 'SimplePOP3Retriever'}",
            f"server = {HOST}",
            f"port = {port}",
            f"timeout = {SERVER_REPLY_TIMEOUT}",
            "username = alice",
            f"password = {password}",
            f"use_apop = {apop}",
        ]
        if tls == "implicit":
            retriever += [
                f"ca_certs = {self.trust_file()}",
                f"ssl_cert_hostname = {CERTIFICATE_NAME}",
            ]
        if os.geteuid() == 0:
            python, mda, maildir = self.mda_command()
            destination = [
                "type = MDA_external",
                f"path = {python}",
                f"arguments = ({mda!r}, {maildir!r})",
                "allow_root_commands = true",
            ]
        else:
            destination = ["type = Maildir", f"path = {self.maildir}/"]
        options = [
            "[options]",
            "verbose = 2",
            f"read_all = {read_all}",
            f"delete = {delete}",
        ]
        rc = write_private(
            self.home / "getmailrc",
            "\n".join([*retriever, "", "[destination]", *destination, "", *options]) + "\n",
        )
        return self.execute(
            ["getmail", "--getmaildir", str(self.home), "--rcfile", str(rc)],
        )


def require_program(program: str) -> None:
    """
    Skip a test whose client program is missing on a developer's machine;
    fail it in CI, where .ci/run must have installed it.
    """
    if shutil.which(program) is None:
        message = f"{program} is not installed (.ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
