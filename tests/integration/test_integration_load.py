"""
Load on the real server, bounded in time, all on the loopback interface:
a password-guessing flood from hundreds of connections while a user logs
in, and a slow reader of a 100 MiB message.
"""

from __future__ import annotations

import json
import os
import poplib
import select
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from bigmessage import block, expected_retr, read_retr
from conftest import HOST, PASSWORD, USER, RawClient, popserv_admin

pytestmark = pytest.mark.integration

BOT = Path(__file__).with_name("badlogins.py")
#: The flood: connections from each of ADDRESSES source addresses.
ADDRESSES, CONNECTIONS = 200, 2
#: The good user's logins measured during the flood.
GOOD_LOGINS = 8
#: The longest a good login may take during the flood.  Alone one takes
#: about 0.2 s here (an Argon2id check); before the LoginGate it took more
#: than 30 s, queued behind every guess.  On a machine busy with other
#: work, where a login alone takes longer, the limit is that many times
#: longer (ALONE_FACTOR): the test is about a login queued behind the
#: guesses, not about the machine's speed.
GOOD_LOGIN_LIMIT = 2.0
ALONE_FACTOR = 10


def _login_seconds(port: int) -> float:
    start = time.monotonic()
    client = poplib.POP3(HOST, port, timeout=30)
    try:
        client.user(USER)
        assert client.pass_(PASSWORD).startswith(b"+OK Logged in")
    finally:
        client.quit()
    return time.monotonic() - start


def _loopback_sources_work() -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((f"127.0.0.{1 + ADDRESSES}", 0))
        except OSError:
            return False
    return True


def test_guessing_flood(start_server, maildir_root, maildir, tmp_path):
    """
    While 400 connections from 200 addresses guess alice's password (stored
    as Argon2id, the default), alice logs in from her usual address within
    GOOD_LOGIN_LIMIT seconds each time (or ALONE_FACTOR times a login
    before the flood, if that is longer): the flood is held back by the
    per-address penalty and queued behind her (LoginGate), and every guess
    gets -ERR [AUTH].
    """
    if not _loopback_sources_work():
        pytest.skip("127.0.0.0/8 source addresses are not usable here")
    passwd = tmp_path / "passwd"
    popserv_admin("passwd", "add", str(passwd), USER, password=PASSWORD)
    assert "{ARGON2ID}" in passwd.read_text()
    server = start_server(f"maildir:{maildir_root}/{{user}}", auth=[f"passwd-file:{passwd}"])

    alone = [_login_seconds(server.port) for _ in range(3)]
    flood_seconds = 1 + GOOD_LOGINS * 0.5
    bot = subprocess.Popen(
        [
            sys.executable,
            str(BOT),
            *(str(n) for n in (server.port, ADDRESSES, CONNECTIONS, flood_seconds)),
            USER,
        ],
        stdout=subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    try:
        assert bot.stdout is not None
        # The bot says when its connections are guessing (at most
        # READY_LIMIT s); only then are alice's logins measured.
        readable, _, _ = select.select([bot.stdout], [], [], 30)
        assert readable, "the bot never said it was guessing"
        ready = json.loads(bot.stdout.readline())
        during = []
        for _ in range(GOOD_LOGINS):
            during.append(_login_seconds(server.port))
            time.sleep(0.2)
        out, _ = bot.communicate(timeout=flood_seconds + 30)
    finally:
        bot.kill()
        bot.wait()
    stats = json.loads(out)
    limit = max(GOOD_LOGIN_LIMIT, ALONE_FACTOR * statistics.median(alone))
    report = (
        f"alone {alone}, during the flood {during} (limit {limit:.2f} s), bots {ready} then {stats}"
    )
    # Nearly every connection was guessing before alice's first login.
    assert ready["guessing"] >= 0.9 * ADDRESSES * CONNECTIONS, report
    assert max(during) < limit, report
    assert statistics.median(during) < limit / 2, report
    assert stats["connections"] >= ADDRESSES * CONNECTIONS, report
    failed = "+OK Send PASS / -ERR [AUTH] Authentication failed"
    assert stats.get(failed, 0) > 0, report
    assert not [kind for kind in stats if "+OK Logged in" in kind], report
    print(report)


#: The slow reader: 100 MiB read 64 KiB at a time, 2 ms apart (about
#: 25 MB/s, several times slower than the server sends).
SLOW_BLOCKS = 100
SLOW_CHUNK = 64 * 1024
SLOW_PAUSE = 0.002
#: The server's growth in resident memory that counts as flat.
FLAT_KIB = 8 * 1024


def test_slow_reader_of_100_mib(server, big_files, deliver, raw_client, retr_body):
    """
    A client reading a 100 MiB message slowly gets it octet for octet
    while the server's resident memory stays within FLAT_KIB of where it
    was before RETR, sampled every 20 ms through the transfer.
    """
    data = block()
    deliver(big_files, (data for _ in range(SLOW_BLOCKS)))
    expected = expected_retr(data, SLOW_BLOCKS, retr_body)
    client = raw_client(server.port, rcvbuf=SLOW_CHUNK)
    assert client.login() == b"+OK Logged in, 1 messages (%d octets)\r\n" % expected.size
    baseline = server.rss_kib()
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            samples.append(server.rss_kib())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    try:
        client.send(b"RETR 1\r\n")
        read_retr(
            client.sock,
            expected,
            time.monotonic() + 120,
            chunk=SLOW_CHUNK,
            pause=SLOW_PAUSE,
        )
    finally:
        done.set()
        sampler.join(5)
    seconds = time.monotonic() - started
    growth = max(samples) - baseline
    report = (
        f"{expected.total / seconds / 1e6:.1f} MB/s over {seconds:.1f} s, "
        f"RSS {baseline} KiB before, growth {growth} KiB at most, {len(samples)} samples"
    )
    assert len(samples) > 50, report
    assert growth < FLAT_KIB, report
    assert client.command(b"QUIT").startswith(b"+OK")
    print(report)


#: Connections made at once while the server cannot accept: many more than
#: Twisted's default backlog of 50.
BURST = 300


def test_burst_of_connects(start_server, maildir_root, maildir):
    """
    With the server stopped (SIGSTOP: it accepts nothing), BURST clients
    connect at once.  The kernel completes every handshake into the listen
    queue, because popserv asks for a backlog of 1024 rather than Twisted's
    50, beyond which SYNs are dropped and retried only after 1, 3, 7 s.
    Once the server runs again, every one of them is greeted.
    """
    # No --max-connections-per-address: connections from this machine are
    # not limited per address by default.
    server = start_server(f"maildir:{maildir_root}/{{user}}")
    clients: list[socket.socket] = []
    os.kill(server.pid, signal.SIGSTOP)
    try:
        for n in range(BURST):
            client = socket.socket()
            clients.append(client)
            client.settimeout(0.5)
            try:
                client.connect((HOST, server.port))
            except TimeoutError:
                pytest.fail(f"connect number {n + 1} was not completed: the listen queue is full")
    finally:
        os.kill(server.pid, signal.SIGCONT)
    try:
        for client in clients:
            client.settimeout(30)
            assert client.recv(100).startswith(b"+OK ")
    finally:
        for client in clients:
            client.close()


def test_per_address_limit_and_local_clients(start_server, maildir_root, maildir):
    """
    The real server with --max-connections-per-address 2: five clients on
    127.0.0.1 are all served, as from a proxy on this machine, while with
    --per-address-exempt none the third gets -ERR [SYS/TEMP] and is closed.
    """
    store = f"maildir:{maildir_root}/{{user}}"
    for exempt, served in (([], 5), (["--per-address-exempt", "none"], 2)):
        server = start_server(store, extra=["--max-connections-per-address", "2", *exempt])
        clients = [RawClient(server.port) for _ in range(5)]
        try:
            greetings = [client.greeting for client in clients]
            assert all(g.startswith(b"+OK ") for g in greetings[:served]), greetings
            assert greetings[served:] == [
                b"-ERR [SYS/TEMP] Too many connections from your address\r\n"
            ] * (5 - served)
            for client in clients[served:]:
                assert client.sock.recv(100) == b""  # closed by the server
            assert clients[0].command(b"USER alice") == b"+OK Send PASS\r\n"
        finally:
            for client in clients:
                client.sock.close()
