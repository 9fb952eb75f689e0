"""
C{make demo} and C{make demo-tls}, as README.rst tells a new user to run
them: each seeds the demo Maildir and serves it with twistd, on the ports
that C{DEMO_PORT} and C{DEMO_TLS_PORT} name (1110 and 1995 unless given);
and the examples of docs/quickstart.rst, run against it.
"""

from __future__ import annotations

import os
import poplib
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from clients import require_program
from docpages import runSession, shown
from processes import TIMEOUT, waitForOutput

from popserv.demo import MESSAGES

pytestmark = pytest.mark.integration

#: The checkout: tests/integration/this file -> the repository root.
CHECKOUT = Path(__file__).resolve().parents[2]


def freePort() -> int:
    """
    A port nothing listens on now, for a program that takes a port number
    rather than an endpoint.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def make(target: str, directory: Path, **variables: object) -> Iterator[Path]:
    """
    Run C{make TARGET} in the checkout, with this virtualenv and C{variables},
    until twistd listens on every C{*_PORT} among them; yield the file its
    output goes to, and stop make and everything it started afterwards.
    """
    require_program("make")
    if not (Path(sys.prefix) / ".installed").exists():
        pytest.skip("runs only in the virtualenv that make made (make test)")
    output = directory / "make.out"
    argv = ["make", "--no-print-directory", "-o", "install", target, f"VENV={sys.prefix}"]
    argv += [f"{name}={value}" for name, value in variables.items()]
    with output.open("wb") as out:
        # Its own process group, so that stopping it stops twistd too, as
        # Ctrl-C in a terminal does.
        process = subprocess.Popen(
            argv, cwd=CHECKOUT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        # Each port on its own: demo-tls's second one may start listening a
        # moment after the first says so.
        for name, value in variables.items():
            if name.endswith("_PORT"):
                waitForOutput(output, b"popserv listening on 127.0.0.1:%d " % value, process)
        waitForOutput(output, rb"POP3ServerFactory starting on", process)
        yield output
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=TIMEOUT)


def checkDemoMaildrop(client: poplib.POP3) -> None:
    """
    Log in as the demo user and find the demo's messages, the one with
    byte-stuffed lines among them, as they were seeded.
    """
    client.user("demo")
    client.pass_("demo")
    assert client.stat()[0] == len(MESSAGES)
    _, lines, _ = client.retr(2)
    assert lines == MESSAGES[1].rstrip(b"\n").split(b"\n")
    client.quit()


def test_demo(tmp_path: Path) -> None:
    """
    make demo serves the demo Maildir on DEMO_PORT, and tells the user how
    to reach it there.
    """
    port = freePort()
    with make("demo", tmp_path, DEMO_ROOT=tmp_path / "mail", DEMO_PORT=port) as output:
        text = output.read_text()
        assert f"popserv demo on 127.0.0.1:{port} -- user 'demo', password 'demo'" in text
        assert f"curl pop3://127.0.0.1:{port}/1 -u demo:demo" in text
        checkDemoMaildrop(poplib.POP3("127.0.0.1", port, timeout=TIMEOUT))
    assert (tmp_path / "mail" / "demo" / "new").is_dir()


def test_demoTLS(tmp_path: Path) -> None:
    """
    make demo-tls serves the same with STLS on DEMO_PORT and implicit TLS
    on DEMO_TLS_PORT, with a certificate for 127.0.0.1 that it made.
    """
    port, tlsPort = freePort(), freePort()
    mail = tmp_path / "mail"
    with make("demo-tls", tmp_path, DEMO_ROOT=mail, DEMO_PORT=port, DEMO_TLS_PORT=tlsPort) as out:
        assert f"pop3s://127.0.0.1:{tlsPort}/1" in out.read_text()
        context = ssl.create_default_context(cafile=str(mail / "tls" / "cert.pem"))
        checkDemoMaildrop(poplib.POP3_SSL("127.0.0.1", tlsPort, context=context, timeout=TIMEOUT))
        client = poplib.POP3("127.0.0.1", port, timeout=TIMEOUT)
        client.stls(context)
        checkDemoMaildrop(client)


def test_quickstartExamples(tmp_path: Path) -> None:
    """
    What quickstart.rst shows for curl and poplib is what they get from
    make demo: the listing line for line, message 2's first line, and the
    poplib session as a doctest (its port the demo's).
    """
    require_program("curl")
    port = freePort()
    with make("demo", tmp_path, DEMO_ROOT=tmp_path / "mail", DEMO_PORT=port):

        def curl(path: str) -> list[str]:
            url = f"pop3://127.0.0.1:{port}/{path}"
            argv = ["curl", "-sS", "--max-time", str(int(TIMEOUT)), url, "-u", "demo:demo"]
            result = subprocess.run(argv, capture_output=True, timeout=TIMEOUT, check=True)
            return result.stdout.decode().splitlines()

        assert curl("") == shown("quickstart", "curl pop3://127.0.0.1:1110/ -u demo:demo ")
        first, more = shown("quickstart", "curl pop3://127.0.0.1:1110/2 -u demo:demo ")
        assert (curl("2")[0], more) == (first, "...")
        runSession("quickstart", {'"127.0.0.1", 1110': f'"127.0.0.1", {port}'})
