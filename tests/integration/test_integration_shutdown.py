"""
Stopping a real C{twistd popserv}: what its clients see and what it leaves
on disk.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

#: Messages a client deletes before QUIT: enough that removing them takes
#: long enough for a signal to arrive meanwhile.
COUNT = 3000


def _maildirOf(maildir: Path, count: int) -> Path:
    cur = maildir / "cur"
    for n in range(count):
        (cur / f"{1700000000 + n}.M{n}P1.host:2,S").write_bytes(b"Subject: %d\n\nbody\n" % n)
    return cur


def _quitWithDeletions(start_server, maildir_root, maildir, raw_client, count):
    """
    A server; a client of it that marked all C{count} messages with DELE
    and sent QUIT; another, bob, logged in and idle; and the Maildir's cur/.
    """
    cur = _maildirOf(maildir, count)
    server = start_server(
        f"maildir:{maildir_root}/{{user}}", auth=("memory:alice:secret:bob:secret",)
    )
    client = raw_client(server.port)
    assert client.login().startswith(b"+OK Logged in, %d messages" % count)
    for start in range(1, count + 1, 500):
        numbers = range(start, min(start + 500, count + 1))
        client.send(b"".join(b"DELE %d\r\n" % n for n in numbers))
        for n in numbers:
            assert client.read_line() == b"+OK Message %d deleted\r\n" % n
    idle = raw_client(server.port)
    assert idle.login("bob", "secret") == b"+OK Logged in, 0 messages (0 octets)\r\n"
    client.send(b"QUIT\r\n")
    return server, client, idle, cur


def _whenStarted(cur: Path, count: int) -> int:
    """
    Wait until the first of C{count} files in C{cur} is gone (at most 10 s).

    @return: the files left then.
    """
    left = count
    deadline = time.monotonic() + 10
    while left == count and time.monotonic() < deadline:
        left = len(os.listdir(cur))
    assert left < count, "the deletions never started"
    return left


def test_sigtermDuringUpdate(start_server, maildir_root, maildir, raw_client) -> None:
    """
    SIGTERM while a session applies its deletions (after QUIT): the server
    lets it finish, so the client gets its reply and the audit line is
    written, then exits at once (by the signal, as twistd does: systemd
    counts that a clean stop); nothing is left locked.  A session that had
    not sent QUIT is cut, and logged so.
    """
    server, client, idle, cur = _quitWithDeletions(
        start_server, maildir_root, maildir, raw_client, COUNT
    )
    left = _whenStarted(cur, COUNT)
    server.process.send_signal(signal.SIGTERM)
    assert client.read_line() == b"+OK Bye, %d deleted, 0 left\r\n" % COUNT
    assert client.read_to_close() == b""
    assert server.process.wait(timeout=30) == -signal.SIGTERM
    log = server.output()
    assert "popserv session: user=alice ip=127.0.0.1 tls=- mechanism=USER" in log
    assert f" dele={COUNT} left=0/0 duration=" in log
    assert idle.read_to_close() == b""
    assert re.search(r"popserv session: user=bob .* reason=shutdown\n", log), log
    assert "Traceback" not in log and "Unhandled" not in log
    assert os.listdir(cur) == []
    # The next server logs in at once: the lock went with the session.
    after = start_server(f"maildir:{maildir_root}/{{user}}")
    assert raw_client(after.port).login() == b"+OK Logged in, 0 messages (0 octets)\r\n"
    print(f"\nSIGTERM with {left} of {COUNT} files left")


def test_sighupWhileStopping(start_server, maildir_root, maildir, raw_client) -> None:
    """
    A SIGHUP (a reload by logrotate or systemd) that comes while the
    server stops, waiting for a session's deletions, does not kill it: it
    goes on stopping as it would have.
    """
    count = 4 * COUNT
    server, client, _, cur = _quitWithDeletions(
        start_server, maildir_root, maildir, raw_client, count
    )
    _whenStarted(cur, count)
    server.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    while "Waiting for 1 sessions" not in server.output() and time.monotonic() < deadline:
        time.sleep(0.001)
    server.process.send_signal(signal.SIGHUP)
    assert client.read_line() == b"+OK Bye, %d deleted, 0 left\r\n" % count
    assert server.process.wait(timeout=30) == -signal.SIGTERM
    assert "Main loop terminated" in server.output()


def _tlsSession(tls_server, test_pki, implicit: bool) -> tuple[socket.socket, Any]:
    """
    A client logged in as alice over implicit TLS, or over STLS on the
    plain port; its socket, and a reader of its lines.
    """
    context = test_pki.client_context()
    if implicit:
        sock = context.wrap_socket(
            socket.create_connection(("127.0.0.1", tls_server.tls_port), timeout=10),
            server_hostname="127.0.0.1",
        )
        lines = sock.makefile("rb")
    else:
        plain = socket.create_connection(("127.0.0.1", tls_server.port), timeout=10)
        reader = plain.makefile("rb")
        assert reader.readline().startswith(b"+OK")
        plain.sendall(b"STLS\r\n")
        assert reader.readline().startswith(b"+OK")
        sock = context.wrap_socket(plain, server_hostname="127.0.0.1")
        lines = sock.makefile("rb")
    if implicit:
        assert lines.readline().startswith(b"+OK")
    sock.sendall(b"USER alice\r\nPASS secret\r\n")
    assert lines.readline().startswith(b"+OK")
    assert lines.readline().startswith(b"+OK Logged in, 1 messages")
    return sock, lines


@pytest.mark.parametrize("implicit", [True, False], ids=["ssl", "stls"])
def test_tlsClientKeepsItsSocketAfterQuit(tls_server, test_pki, maildir, implicit) -> None:
    """
    A TLS client that reads its reply to QUIT and keeps its socket open
    (TLS waits for its close_notify to close) does not hold the server's
    stop: the session is out of UPDATE once its reply has left.
    """
    _maildirOf(maildir, 1)
    sock, lines = _tlsSession(tls_server, test_pki, implicit)
    sock.sendall(b"DELE 1\r\nQUIT\r\n")
    assert lines.readline() == b"+OK Message 1 deleted\r\n"
    assert lines.readline() == b"+OK Bye, 1 deleted, 0 left\r\n"
    server = tls_server.server
    before = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=30) == -signal.SIGTERM
    took = time.monotonic() - before
    sock.close()
    log = server.output()
    assert took < 5, f"the stop took {took:.1f} s"
    assert "Stopping with" not in log and "Waiting for" not in log
    assert re.search(r"popserv session: user=alice .* dele=1 .* reason=quit\n", log), log
    assert os.listdir(maildir / "cur") == []
