"""
Logging in to the real server: APOP and its greeting, the C{file:} checker,
the exclusive lock on a maildrop within and across server processes, and a
SIGHUP that finds nothing to reload.
"""

from __future__ import annotations

import hashlib
import poplib
import re
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from clients import require_program

pytestmark = pytest.mark.integration

_TIMESTAMP = re.compile(rb"<[^<>@\s]+@[^<>@\s]+>")


def greeting_timestamp(port: int) -> bytes:
    """
    The APOP timestamp in the greeting of a fresh connection.
    """
    client = poplib.POP3("127.0.0.1", port, timeout=10)
    try:
        match = _TIMESTAMP.search(client.getwelcome())
        assert match, client.getwelcome()
        client.quit()
        return match.group(0)
    finally:
        client.close()


def test_apop(server, maildir, deliver):
    """
    APOP with the MD5 digest of the greeting's timestamp and the password
    logs in; a wrong digest is refused with -ERR [AUTH].
    """
    deliver(maildir, b"Subject: apop\n\nbody\n")
    client = poplib.POP3("127.0.0.1", server.port, timeout=10)
    try:
        assert client.apop("alice", "secret").startswith(b"+OK")
        assert client.stat()[0] == 1
        client.quit()
    finally:
        client.close()

    client = poplib.POP3("127.0.0.1", server.port, timeout=10)
    try:
        with pytest.raises(poplib.error_proto) as refused:
            client.apop("alice", "wrong")
        assert refused.value.args[0].startswith(b"-ERR [AUTH]")
        # The digest is checked, not just its form: a well-formed digest of
        # another timestamp is refused too.
        stale = hashlib.md5(b"<1.2@x>secret").hexdigest()
        with pytest.raises(poplib.error_proto) as refused:
            client._shortcmd(f"APOP alice {stale}")
        assert refused.value.args[0].startswith(b"-ERR [AUTH]")
        client.quit()
    finally:
        client.close()


def test_greeting_timestamp(server):
    """
    The greeting carries a msg-id style timestamp that is new on every
    connection and names neither the host nor the server's process id.
    """
    first = greeting_timestamp(server.port)
    second = greeting_timestamp(server.port)
    assert first != second
    for stamp in (first, second):
        tokens = re.split(rb"[<>.@]", stamp)
        assert str(server.pid).encode() not in tokens
        host = socket.gethostname().encode()
        assert host not in tokens
        assert host.split(b".")[0] not in tokens
        if len(host) >= 4:
            assert host not in stamp


def test_file_checker(start_server, maildir_root, maildir, deliver, tmp_path):
    """
    With --auth file:PATH (Twisted FilePasswordDB, user:password lines),
    USER/PASS and APOP log in with the password from the file and a wrong
    password is refused.
    """
    deliver(maildir, b"Subject: file\n\nbody\n")
    passwords = tmp_path / "passwd"
    passwords.write_text("bob:hunter2\nalice:secret\n")
    server = start_server(f"maildir:{maildir_root}/{{user}}", auth=[f"file:{passwords}"])

    client = poplib.POP3("127.0.0.1", server.port, timeout=10)
    try:
        client.user("alice")
        assert client.pass_("secret").startswith(b"+OK")
        assert client.stat()[0] == 1
        client.quit()
    finally:
        client.close()

    client = poplib.POP3("127.0.0.1", server.port, timeout=10)
    try:
        assert client.apop("alice", "secret").startswith(b"+OK")
        client.quit()
    finally:
        client.close()

    client = poplib.POP3("127.0.0.1", server.port, timeout=10)
    try:
        client.user("alice")
        with pytest.raises(poplib.error_proto) as refused:
            client.pass_("hunter2")
        assert refused.value.args[0].startswith(b"-ERR [AUTH]")
        client.quit()
    finally:
        client.close()

    # While the file cannot be read, the right password is not a failed
    # login: no auth-failed line for fail2ban to count against alice.
    passwords.rename(tmp_path / "passwd.gone")
    client = poplib.POP3("127.0.0.1", server.port, timeout=10)
    try:
        client.user("alice")
        with pytest.raises(poplib.error_proto) as unchecked:
            client.pass_("secret")
        assert unchecked.value.args[0] == (
            b"-ERR [SYS/TEMP] Cannot check credentials now, try again later"
        )
        client.quit()
    finally:
        client.close()
    output = server.output()
    assert output.count("popserv auth-failed: user=alice") == 1  # hunter2's, above
    assert "Unable to load credentials db" in output


def _second_login(port: int, raw_client) -> bytes:
    client = raw_client(port)
    reply = client.login()
    if reply.startswith(b"-ERR [IN-USE]"):
        assert client.read_to_close() == b""  # closed after [IN-USE]
    else:
        client.command(b"QUIT")
    client.close()
    return reply


def test_in_use_one_server(server, maildir, deliver, raw_client, wait_until):
    """
    While a session holds alice's maildrop, a second login gets
    -ERR [IN-USE]; once the first session QUITs, or its connection drops,
    the maildrop can be opened again.
    """
    deliver(maildir, b"Subject: lock\n\nbody\n")
    for end in ("quit", "drop"):
        holder = raw_client(server.port)
        assert holder.login().startswith(b"+OK")
        assert _second_login(server.port, raw_client).startswith(b"-ERR [IN-USE]")
        assert holder.command(b"NOOP") == b"+OK\r\n"
        if end == "quit":
            assert holder.command(b"QUIT").startswith(b"+OK")
        else:
            holder.abort()
        wait_until(lambda: _second_login(server.port, raw_client).startswith(b"+OK"))


def test_in_use_two_servers(start_server, maildir_root, maildir, deliver, raw_client, wait_until):
    """
    Two server processes serving the same Maildirs share the lock: a
    session on one makes a login on the other get -ERR [IN-USE] until it
    QUITs or its connection drops.
    """
    deliver(maildir, b"Subject: lock\n\nbody\n")
    first = start_server(f"maildir:{maildir_root}/{{user}}")
    second = start_server(f"maildir:{maildir_root}/{{user}}")
    for end in ("quit", "drop"):
        holder = raw_client(first.port)
        assert holder.login().startswith(b"+OK")
        assert _second_login(second.port, raw_client).startswith(b"-ERR [IN-USE]")
        if end == "quit":
            assert holder.command(b"QUIT").startswith(b"+OK")
        else:
            holder.abort()
        wait_until(lambda: _second_login(second.port, raw_client).startswith(b"+OK"))
    # And the other way round.
    holder = raw_client(second.port)
    assert holder.login().startswith(b"+OK")
    assert _second_login(first.port, raw_client).startswith(b"-ERR [IN-USE]")
    holder.command(b"QUIT")


def test_auth_repeated_tries_each_checker(tmp_path, start_server, maildir_root, maildir):
    """
    With --auth memory:... --auth file:..., users of either checker log in,
    each with their own password, and APOP works for both.
    """
    passwords = tmp_path / "passwd"
    passwords.write_text("bob:hunter2\n")
    server = start_server(
        f"maildir:{maildir_root}/{{user}}",
        auth=["memory:alice:secret", f"file:{passwords}"],
    )
    for user, password in (("alice", "secret"), ("bob", "hunter2")):
        for method in ("userpass", "apop"):
            client = poplib.POP3("127.0.0.1", server.port, timeout=10)
            try:
                if method == "apop":
                    assert client.apop(user, password).startswith(b"+OK")
                else:
                    client.user(user)
                    assert client.pass_(password).startswith(b"+OK")
                client.quit()
            finally:
                client.close()
    client = poplib.POP3("127.0.0.1", server.port, timeout=10)
    try:
        client.user("bob")
        with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
            client.pass_("secret")
    finally:
        client.close()


def test_proxy_protocol(start_server, maildir_root, maildir, deliver):
    """
    Behind a PROXY listener the server waits for the header, then treats the
    client as coming from the address in it: a remote address given by a
    trusted proxy on 127.0.0.1 gets the cleartext refusal, a loopback one
    logs in with USER/PASS.
    """
    deliver(maildir, b"Subject: x\r\n\r\ny\r\n")
    server = start_server(
        f"maildir:{maildir_root}/{{user}}",
        extra=["--listen", "proxy:tcp:0:interface=127.0.0.1", "--proxy-trusted", "127.0.0.0/8"],
    )
    import re
    import time

    deadline = time.monotonic() + 10
    while len(re.findall(r"starting on (\d+)", server.output())) < 2:
        assert time.monotonic() < deadline, server.output()
        time.sleep(0.05)
    port = int(re.findall(r"starting on (\d+)", server.output())[1])

    def session(source: str) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(f"PROXY TCP4 {source} 127.0.0.1 50000 110\r\n".encode())
            reader = s.makefile("rb")
            assert reader.readline().startswith(b"+OK")
            s.sendall(b"USER alice\r\nPASS secret\r\nQUIT\r\n")
            return b"".join(reader.readline() for _ in range(2))

    assert session("203.0.113.5").startswith(b"-ERR [AUTH] Plaintext")
    assert session("127.0.0.1") == b"+OK Send PASS\r\n+OK Logged in, 1 messages (17 octets)\r\n"


def test_sighup_without_tls(server, maildir, deliver, wait_until):
    """
    SIGHUP to a server without a TLS certificate (an operator's habit, or
    systemd's ExecReload) logs that there is nothing to reload, and the
    server goes on serving: the signal's default action would end it.
    """
    deliver(maildir, b"Subject: hi\r\n\r\nhello\r\n")
    server.process.send_signal(signal.SIGHUP)
    assert wait_until(lambda: "SIGHUP: no TLS certificate to reload" in server.output())
    assert server.process.poll() is None
    client = poplib.POP3("127.0.0.1", server.port, timeout=10)
    try:
        client.user("alice")
        client.pass_("secret")
        assert client.stat() == (1, 22)
        client.quit()
    finally:
        client.close()


def test_log_names_listening_address(server, wait_until):
    """
    The log says where the server listens, address and --listen alike
    (Twisted's own line gives only the port number).
    """
    line = f"popserv listening on 127.0.0.1:{server.port} (tcp:0:interface=127.0.0.1)"
    assert wait_until(lambda: line in server.output())


FILTER = Path(__file__).parents[2] / "contrib" / "fail2ban" / "filter.d" / "popserv.conf"


def test_fail2ban_filter(server, maildir, deliver, wait_until, tmp_path):
    """
    The shipped fail2ban filter, run by fail2ban's own fail2ban-regex over
    a real server's log, finds each failed login with the client's
    address, and nothing in a line that a message file's name wrote: a
    name with a line break and a forged auth-failed line in it is quoted,
    so it starts no line of its own.
    """
    require_program("fail2ban-regex")
    deliver(maildir, b"Subject: hi\n\nbody\n")
    forged = "1.x\n2026-11-25T15:00:00+0000 [popserv.audit#warn] popserv auth-failed:"
    forged += " user=x ip=203.0.113.5 mechanism=PLAIN\n"
    (maildir / "new" / forged).mkdir()
    client = poplib.POP3("127.0.0.1", server.port, timeout=10)
    try:
        client.user("alice")
        with pytest.raises(poplib.error_proto):
            client.pass_("wrong")
    finally:
        client.close()
    client = poplib.POP3("127.0.0.1", server.port, timeout=10)
    try:
        client.user("alice")
        assert client.pass_("secret").startswith(b"+OK Logged in, 1 messages")
        client.quit()
    finally:
        client.close()
    wait_until(lambda: "auth-failed" in server.output() and "Skipping" in server.output())
    log = tmp_path / "popserv.log"
    log.write_text(server.output())
    result = subprocess.run(
        ["fail2ban-regex", "--print-all-matched", str(log), str(FILTER)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert re.search(r"^Failregex: 1 total$", result.stdout, re.MULTILINE), result.stdout
    matched = result.stdout.split("|- Matched line(s):", 1)[1].split("\n`-", 1)[0]
    assert matched.count("\n|  ") == 1, result.stdout
    assert "popserv auth-failed: user=alice ip=127.0.0.1 mechanism=USER" in matched
    assert "203.0.113.5" not in matched
