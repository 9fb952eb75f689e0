"""
docs/tls.rst's "Trying it out", followed as a reader would: its openssl
command makes the certificate, twistd runs with its options (on ports the
system picks), Alice's one message is the one its curl example shows, and
what the page shows curl, poplib, openssl s_client and the CAPA exchange
getting is what they get.
"""

from __future__ import annotations

import poplib
import shlex
import ssl
import subprocess

import pytest
from clients import require_program
from docpages import block, command, replay, runSession, shown
from processes import TIMEOUT
from test_integration_tls import tlsPort

pytestmark = pytest.mark.integration


def test_tryingItOut(tmp_path, start_server, maildir_root, maildir, deliver) -> None:
    """
    Every exchange tls.rst's "Trying it out" shows is what a reader gets
    who follows it: curl's listing and message, CAPA before and after
    STLS and a second STLS refused, the session typed into openssl
    s_client, and the poplib session.
    """
    require_program("openssl")
    require_program("curl")
    argv = shlex.split(command("tls", "openssl req"))
    subprocess.run(argv, cwd=tmp_path, capture_output=True, timeout=TIMEOUT, check=True)
    # The message the page's curl example retrieves, stored with LF line
    # ends as a delivery agent writes it.
    retrieved = shown("tls", "curl --cacert cert.pem --ssl-reqd pop3://localhost:1110/1")
    deliver(maildir, "\n".join(retrieved).encode() + b"\n")
    twistd = command("tls", "twistd -n --pidfile= popserv --listen tcp:1110")
    options = twistd.split(" popserv ", 1)[1].split()
    assert options[:4] == ["--listen", "tcp:1110", "--listen", "ssl:1995"], twistd
    assert options[-2:] == ["--mailstore", "'maildir:/tmp/mail/{user}'"], twistd
    server = start_server(
        f"maildir:{maildir_root}/{{user}}",
        auth=[options[-3]],
        extra=[*options[4:-4], "--listen", "ssl:0:interface=127.0.0.1"],
        cwd=tmp_path,
    )
    port, secure = server.port, tlsPort(server)

    def curl(*argv: str) -> list[str]:
        # "localhost", as on the page, for the certificate's name; always
        # 127.0.0.1, wherever else a host's localhost may point.
        resolve = ["--resolve", f"localhost:{port}:127.0.0.1"]
        resolve += ["--resolve", f"localhost:{secure}:127.0.0.1"]
        full = ["curl", "-sS", "-m", str(int(TIMEOUT)), *resolve, *argv, "-u", "alice:secret"]
        done = subprocess.run(full, cwd=tmp_path, capture_output=True, timeout=TIMEOUT, check=True)
        return done.stdout.decode().splitlines()

    assert curl("--cacert", "cert.pem", f"pop3s://localhost:{secure}/") == shown(
        "tls", "curl --cacert cert.pem pop3s://localhost:1995/"
    )
    assert curl("--cacert", "cert.pem", "--ssl-reqd", f"pop3://localhost:{port}/1") == retrieved

    # CAPA before and after STLS, as the page's exchange shows them.
    exchange = block("tls", ".. code-block:: text", after="What went over the wire")
    shownCapas = [
        [line[3:] for line in exchange[i + 2 : exchange.index("S: .", i)]]
        for i, line in enumerate(exchange)
        if line == "C: CAPA"
    ]
    assert len(shownCapas) == 2, exchange
    secondSTLS = exchange[[i for i, line in enumerate(exchange) if line == "C: STLS"][1] + 1]
    context = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
    client = poplib.POP3("127.0.0.1", port, timeout=TIMEOUT)
    plain = client._longcmd("CAPA")[1]
    client.stls(context=context)
    secured = client._longcmd("CAPA")[1]
    with pytest.raises(poplib.error_proto) as refused:
        client._shortcmd("STLS")
    assert f"S: {refused.value.args[0].decode()}" == secondSTLS
    client.quit()
    assert shownCapas == [[c.decode() for c in plain], [c.decode() for c in secured]]

    # The implicit-TLS session typed into openssl s_client.
    session = shown("tls", "openssl s_client -quiet -crlf -connect 127.0.0.1:1995")
    greeting = session.index(next(s for s in session if s.startswith("+OK POP3")))
    typed = session[greeting + 1 :]
    assert len(typed) == 6, session
    # The greeting (with its APOP timestamp), then what was typed and what
    # came back, as a session to replay over TLS.
    transcript = [f"S: {session[greeting]}"]
    transcript += [f"{'CS'[i % 2]}: {line}" for i, line in enumerate(typed)]
    replay(secure, transcript, context)

    # The poplib session, as a doctest, on this server's port.
    runSession(
        "tls",
        {
            'cafile="cert.pem"': f'cafile="{tmp_path / "cert.pem"}"',
            # The certificate names 127.0.0.1 too.
            '"localhost", 1110': f'"127.0.0.1", {port}',
        },
    )


def test_startUpErrors(tmp_path, ca, twistd) -> None:
    """
    The start-up errors tls.rst shows are what those commands print, with
    a certificate and key that go together and a key of another.
    """
    issued = ca.issue("localhost", ["localhost"])
    (tmp_path / "cert.pem").write_bytes(issued.certificate.read_bytes())
    (tmp_path / "key.pem").write_bytes(issued.key.read_bytes())
    (tmp_path / "other-key.pem").write_bytes(ca.issue("other", ["other"]).key.read_bytes())
    shown = block("tls", ".. code-block:: console", after="All the files are read")
    # Continuation lines ("\\" at the end) joined: commands, each followed
    # by its one line of error.
    joined: list[str] = []
    for line in shown:
        if joined and joined[-1].endswith("\\"):
            joined[-1] = joined[-1][:-1] + line.strip()
        else:
            joined.append(line)
    pairs = list(zip(joined[::2], joined[1::2], strict=True))
    assert len(pairs) == 3, joined
    for typed, error in pairs:
        argv = shlex.split(typed.removeprefix("$ "))
        assert argv[:3] == ["twistd", "-n", "popserv"], typed
        done = subprocess.run(
            [*twistd, *argv[1:]], capture_output=True, cwd=tmp_path, timeout=TIMEOUT, check=False
        )
        assert done.returncode == 1, typed
        assert done.stderr.decode().strip() == error, typed
