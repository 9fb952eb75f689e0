"""
popserv deployed the way an operator deploys it: started as root and
dropping privileges with C{twistd --uid/--gid} after binding a privileged
port, started by systemd socket activation from the units shipped in
C{contrib/systemd}, and logging to a file that twistd rotates.
"""

from __future__ import annotations

import grp
import os
import poplib
import pwd
import re
import shlex
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from clients import TestPKI, require_program
from conftest import (
    CLIENT_TIMEOUT,
    HOST,
    PASSWORD,
    USER,
    RawClient,
    Server,
    ServerFactory,
    deliver,
    popserv_admin,
    wire_form,
)

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "contrib" / "systemd"
UNPRIVILEGED_USER, UNPRIVILEGED_GROUP = "nobody", "nogroup"


def _ids() -> tuple[int, int]:
    try:
        return pwd.getpwnam(UNPRIVILEGED_USER).pw_uid, grp.getgrnam(UNPRIVILEGED_GROUP).gr_gid
    except KeyError:
        pytest.skip(f"no {UNPRIVILEGED_USER}/{UNPRIVILEGED_GROUP} on this system")


def _free_port(candidates: Sequence[int]) -> int:
    """
    The first port of C{candidates} free on 127.0.0.1 (bound and released:
    the server binds it a moment later).
    """
    for port in candidates:
        with socket.socket() as probe:
            try:
                probe.bind((HOST, port))
            except OSError:
                continue
            return port
    pytest.skip(f"no free port among {candidates[0]}..{candidates[-1]}")


def _message(n: int) -> bytes:
    return b"Subject: message %d\n\nBody of message %d.\n.starts with a dot\n" % (n, n)


def _chown_tree(top: Path, uid: int, gid: int) -> None:
    os.chown(top, uid, gid)
    for path in top.rglob("*"):
        os.chown(path, uid, gid)


@pytest.fixture
def world_dir() -> Iterator[Path]:
    """
    A directory an unprivileged user can reach (pytest's tmp_path is under
    a 0700 directory of root's).
    """
    path = Path(tempfile.mkdtemp(prefix="popserv-system-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _blocked_ancestors(paths: Sequence[Path]) -> dict[Path, set[str]]:
    """
    The directories on the way to C{paths} that other users may not enter,
    each with the names below it that the paths need.
    """
    blocked: dict[Path, set[str]] = {}
    for path in paths:
        parts = path.resolve().parts
        for depth in range(1, len(parts) - 1):
            directory = Path(*parts[:depth])
            if not os.stat(directory).st_mode & stat.S_IXOTH:
                blocked.setdefault(directory, set()).add(parts[depth])
    return blocked


def reachable_prefix(scratch: Path) -> list[str]:
    """
    A command prefix under which an unprivileged user can run this Python
    and this checkout.

    A Python installed under C{/root} (pyenv does that) cannot be read once
    twistd has dropped privileges, so its later imports would fail: that is
    a fact of this machine, not of popserv (an operator installs popserv
    where its user can read it; see docs/operating.rst).  When that is so,
    the server runs in a private mount namespace where each blocked
    directory is replaced by an empty world-readable one holding bind
    mounts of just what is needed.  Nothing outside the namespace changes.
    """
    needed = [Path(sys.executable), Path(sys.base_prefix), Path(sys.prefix), ROOT]
    blocked = _blocked_ancestors(needed)
    if not blocked:
        return []
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip(f"{sorted(blocked)} cannot be entered by other users")
    for directory in blocked:
        if any(other != directory and other.is_relative_to(directory) for other in blocked):
            pytest.skip(f"nested blocked directories under {directory}")
    script = ["set -e"]
    for i, (directory, names) in enumerate(sorted(blocked.items())):
        for j, name in enumerate(sorted(names)):
            stash = scratch / f"stash-{i}-{j}"
            stash.mkdir()
            script.append(f"mount --bind {shlex.quote(str(directory / name))} {stash}")
        script.append(f"mount -t tmpfs -o mode=0755 popserv-test {shlex.quote(str(directory))}")
        for j, name in enumerate(sorted(names)):
            target = shlex.quote(str(directory / name))
            script.append(f"mkdir {target} && mount --bind {scratch}/stash-{i}-{j} {target}")
    script.append('exec "$@"')
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", "\n".join(script), "sh"]


def _status(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text()
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def _retrieve_all(port: int, user: str, password: str) -> list[bytes]:
    client = poplib.POP3(HOST, port, timeout=CLIENT_TIMEOUT)
    try:
        client.user(user)
        client.pass_(password)
        count, _ = client.stat()
        return [b"\r\n".join(client.retr(n)[1]) + b"\r\n" for n in range(1, count + 1)]
    finally:
        client.quit()


def test_privilegeDrop(
    start_server: ServerFactory, world_dir: Path, wait_until: Callable[..., object]
) -> None:
    """
    Started as root with C{twistd --uid=nobody --gid=nogroup}, popserv binds
    a privileged port, then runs with no privilege left; after that it
    still reads, deletes from and creates Maildirs (owned by that user), and
    re-reads its passwd-file (readable by the group) when it changes.
    """
    if os.geteuid() != 0:
        pytest.skip("needs root to bind a port below 1024 and to drop privileges")
    uid, gid = _ids()
    mail = world_dir / "mail"
    messages = [_message(n) for n in (1, 2)]
    paths = [deliver(mail / USER, m) for m in messages]
    _chown_tree(mail, uid, gid)
    mail.chmod(0o700)
    passwd = world_dir / "passwd"
    popserv_admin("passwd", "add", str(passwd), USER, password=PASSWORD)
    os.chown(passwd, 0, gid)
    passwd.chmod(0o640)
    port = _free_port(range(1023, 899, -1))

    server = start_server(
        f"maildir:{mail}/{{user}}",
        auth=[f"passwd-file:{passwd}"],
        listen=f"tcp:{port}:interface={HOST}",
        twistd_options=[f"--uid={UNPRIVILEGED_USER}", f"--gid={UNPRIVILEGED_GROUP}"],
        prefix=reachable_prefix(world_dir),
        cwd=world_dir,
    )
    assert server.port == port

    # twistd says it listens before it drops privileges (the port is bound
    # as root); the drop follows at once.
    wait_until(lambda: _status(server.pid)["Uid"].split()[0] != "0")
    status = _status(server.pid)
    assert status["Uid"].split() == [str(uid)] * 4, status
    assert status["Gid"].split() == [str(gid)] * 4, status
    # initgroups(): the user's own groups only, none of root's.
    assert status["Groups"].split() in ([], [str(gid)]), status
    assert int(status["CapEff"], 16) == 0, status
    assert int(status["CapPrm"], 16) == 0, status

    # Reading and deleting in a Maildir the dropped user owns.
    client = poplib.POP3(HOST, port, timeout=CLIENT_TIMEOUT)
    client.user(USER)
    client.pass_(PASSWORD)
    assert client.stat() == (2, sum(len(wire_form(m)) for m in messages))
    assert b"\r\n".join(client.retr(1)[1]) + b"\r\n" == wire_form(messages[0])
    client.dele(1)
    assert client.quit().startswith(b"+OK")
    assert [p.name for p in (mail / USER / "new").iterdir()] == [paths[1].name]

    # A user added to the passwd-file now: re-read as the dropped user, and
    # their Maildir is created by it.
    popserv_admin("passwd", "add", str(passwd), "bob", password="bobs-password")
    assert (passwd.stat().st_uid, passwd.stat().st_gid) == (0, gid)

    def bob_logs_in() -> bool:
        try:
            return _retrieve_all(port, "bob", "bobs-password") == []
        except poplib.error_proto:
            return False

    wait_until(bob_logs_in)
    bob = mail / "bob"
    assert (bob.stat().st_uid, bob.stat().st_gid) == (uid, gid)
    assert stat.S_IMODE(bob.stat().st_mode) == 0o700
    assert sorted(p.name for p in bob.iterdir()) == ["cur", "new", "popserv.lock", "tmp"]
    assert "Traceback" not in server.output()


def test_privilegeDropChecksAccess(start_server: ServerFactory, world_dir: Path) -> None:
    """
    Files the server would read or write only later, while serving, are
    checked as the user it runs as once twistd dropped privileges: a
    passwd-file only root can read, a --state-dir only root can write, or
    a Maildir root it cannot enter, stops start-up with one line, rather
    than failing every login; a root it may enter but not list serves.
    """
    if os.geteuid() != 0:
        pytest.skip("needs root to drop privileges")
    uid, gid = _ids()
    mail = world_dir / "mail"
    mail.mkdir()
    _chown_tree(mail, uid, gid)
    passwd = world_dir / "passwd"
    popserv_admin("passwd", "add", str(passwd), USER, password=PASSWORD)  # root's, 0600
    state = world_dir / "state"
    state.mkdir(mode=0o700)
    prefix = reachable_prefix(world_dir)

    def start(*extra: str, store: str = f"maildir:{mail}/{{user}}") -> str:
        server = start_server(
            store,
            auth=[f"passwd-file:{passwd}"],
            extra=extra,
            twistd_options=[f"--uid={UNPRIVILEGED_USER}", f"--gid={UNPRIVILEGED_GROUP}"],
            prefix=prefix,
            cwd=world_dir,
        )
        assert server.process.wait(timeout=CLIENT_TIMEOUT) == 1, server.output()
        assert "Traceback" not in server.output()
        return server.output()

    user = f"the server's user ({UNPRIVILEGED_USER})"
    assert f"popserv: error: --auth passwd-file:{passwd}: {user} cannot read it" in start()
    os.chown(passwd, 0, gid)
    passwd.chmod(0o640)
    output = start("--state-dir", str(state), "--expire", "0")
    assert f"popserv: error: --state-dir: {user} cannot write it" in output
    # A root the server may enter but not list (0711) is enough.
    hidden = world_dir / "hidden"
    hidden.mkdir(mode=0o711)
    (hidden / USER).mkdir()
    os.chown(hidden / USER, uid, gid)
    server = start_server(
        f"maildir:{hidden}/{{user}}",
        auth=[f"passwd-file:{passwd}"],
        twistd_options=[f"--uid={UNPRIVILEGED_USER}", f"--gid={UNPRIVILEGED_GROUP}"],
        prefix=prefix,
        cwd=world_dir,
    )
    client = poplib.POP3(HOST, server.port, timeout=CLIENT_TIMEOUT)
    client.user(USER)
    client.pass_(PASSWORD)
    assert client.stat() == (0, 0)
    assert client.quit().startswith(b"+OK")
    locked = world_dir / "locked"
    locked.mkdir(mode=0o700)  # root's
    store = f"maildir:{locked}/{{user}}"
    assert (
        f"popserv: error: --mailstore {store}: its directory {locked}: {user} cannot enter it"
        in start(store=store)
    )


def _exec_start(unit: str) -> list[str]:
    """
    The ExecStart= command of a unit file, continuation lines joined.
    """
    joined = re.sub(r"\\\n\s*", " ", unit)
    match = re.search(r"^ExecStart=(.*)$", joined, re.MULTILINE)
    assert match, unit
    return shlex.split(match.group(1))


def _substitute(argv: list[str], replacements: dict[str, str]) -> list[str]:
    """
    C{argv} with each key replaced; every key must occur, so that the test
    notices when the unit changes shape.
    """
    text = "\0".join(argv)
    for old, new in replacements.items():
        assert old in text, (old, argv)
        text = text.replace(old, new)
    return text.split("\0")


def _verify_units(directory: Path, twistd: str) -> None:
    """
    Run C{systemd-analyze verify} on copies of the units whose ExecStart
    names this checkout's twistd (verify insists that it exists).
    """
    for name in ("popserv.socket", "popserv.service", "popserv@.service"):
        text = (UNITS / name).read_text()
        (directory / name).write_text(text.replace("/opt/popserv/bin/twistd", twistd))
    result = subprocess.run(
        ["systemd-analyze", "verify", "popserv.socket", "popserv.service", "popserv@0.service"],
        cwd=directory,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result
    # Anything it says about our units is a mistake in them.
    assert b"popserv." not in result.stdout + result.stderr, result


def test_systemdUnits(
    tmp_path: Path, world_dir: Path, test_pki: TestPKI, twistd: list[str]
) -> None:
    """
    The shipped units pass C{systemd-analyze verify}, and the service's own
    ExecStart command, given the two sockets of the socket unit the way
    systemd passes them (C{systemd-socket-activate}), serves POP3 on the
    first and POP3 over implicit TLS on the second, from the passwd-file
    and Maildirs it names.
    """
    require_program("systemd-socket-activate")
    require_program("systemd-analyze")
    assert len(twistd) == 1, "the checkout's twistd script is needed"
    units = tmp_path / "units"
    units.mkdir()
    _verify_units(units, twistd[0])

    socket_unit = (UNITS / "popserv.socket").read_text()
    assert re.findall(r"^ListenStream=(\d+)$", socket_unit, re.MULTILINE) == ["110", "995"]
    mail = world_dir / "mail"
    messages = [_message(n) for n in (1, 2, 3)]
    for message in messages:
        deliver(mail / USER, message)
    passwd = world_dir / "passwd"
    popserv_admin("passwd", "add", str(passwd), USER, password=PASSWORD)
    command = _service_command("popserv.service", twistd[0], test_pki, passwd, mail)
    plain, implicit = _free_port(range(20110, 20210)), _free_port(range(20995, 21095))
    log = tmp_path / "activated.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                "systemd-socket-activate",
                f"--listen={HOST}:{plain}",
                f"--listen={HOST}:{implicit}",
                # systemd names each socket after its unit when the unit
                # sets no FileDescriptorName=, and Twisted insists on names.
                "--fdname=popserv.socket:popserv.socket",
                "--",
                *command,
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    try:
        deadline = time.monotonic() + CLIENT_TIMEOUT
        while log.read_bytes().count(b"Listening on") < 2:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        # The first connection starts the service, which then accepts it.
        expected = [wire_form(m) for m in messages]
        assert _retrieve_all(plain, USER, PASSWORD) == expected
        context = test_pki.client_context()
        client = poplib.POP3_SSL(HOST, implicit, context=context, timeout=CLIENT_TIMEOUT)
        try:
            assert isinstance(client.sock, ssl.SSLSocket)
            client.user(USER)
            client.pass_(PASSWORD)
            assert client.stat() == (3, sum(len(m) for m in expected))
        finally:
            client.quit()
        output = log.read_text()
        assert "Traceback" not in output, output
        assert output.count("POP3ServerFactory") >= 2, output
    finally:
        Server(process, log).stop()


def _service_command(unit: str, twistd: str, pki: TestPKI, passwd: Path, mail: Path) -> list[str]:
    """
    A unit's ExecStart command with this test's files in place of the
    operator's.
    """
    return _substitute(
        _exec_start((UNITS / unit).read_text()),
        {
            "/opt/popserv/bin/twistd": twistd,
            "/etc/popserv/tls/fullchain.pem": str(pki.server_certificate),
            "/etc/popserv/tls/privkey.pem": str(pki.server_key),
            "/etc/popserv/passwd": str(passwd),
            "/srv/mail": str(mail),
            # The test listens on 127.0.0.1 only, an AF_INET socket; the
            # unit's bare ports give systemd an AF_INET6 one.
            "domain=INET6": "domain=INET",
        },
    )


#: Runs argv[3:] with the sockets at fds argv[1] and argv[2] passed the way
#: systemd passes them: as fds 3 and 4, named in the environment, for this
#: very process (LISTEN_PID; exec keeps the pid).
_AS_SYSTEMD = """
import os, sys
first, second = os.dup(int(sys.argv[1])), os.dup(int(sys.argv[2]))
os.dup2(first, 3)
os.dup2(second, 4)
os.set_inheritable(3, True)  # dup2 onto itself keeps dup's close-on-exec
os.set_inheritable(4, True)
os.environ.update(
    LISTEN_PID=str(os.getpid()), LISTEN_FDS="2",
    LISTEN_FDNAMES="popserv.socket:popserv.socket",
)
os.execv(sys.argv[3], sys.argv[3:])
"""


def test_workersShareSockets(
    tmp_path: Path, world_dir: Path, test_pki: TestPKI, twistd: list[str], raw_client
) -> None:
    """
    Two processes run from the popserv@.service template share the
    listening sockets: both serve connections, and the maildrop lock holds
    across them (a login served by either process while alice is logged in
    through the other gets [IN-USE]).
    """
    assert len(twistd) == 1, "the checkout's twistd script is needed"
    mail = world_dir / "mail"
    deliver(mail / USER, _message(1))
    passwd = world_dir / "passwd"
    popserv_admin("passwd", "add", str(passwd), USER, password=PASSWORD)
    command = _service_command("popserv@.service", twistd[0], test_pki, passwd, mail)
    sockets = [socket.create_server((HOST, 0), backlog=64) for _ in range(2)]
    port = sockets[0].getsockname()[1]
    logs = [tmp_path / f"worker-{n}.log" for n in (1, 2)]
    workers = []
    try:
        for log in logs:
            with open(log, "wb") as out:
                fds = [str(s.fileno()) for s in sockets]
                workers.append(
                    subprocess.Popen(
                        [sys.executable, "-c", _AS_SYSTEMD, *fds, *command],
                        pass_fds=[s.fileno() for s in sockets],
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        cwd=tmp_path,
                    )
                )
        deadline = time.monotonic() + CLIENT_TIMEOUT
        while not all(b"POP3ServerFactory (TLS) starting" in log.read_bytes() for log in logs):
            assert all(w.poll() is None for w in workers), [log.read_text() for log in logs]
            assert time.monotonic() < deadline, [log.read_text() for log in logs]
            time.sleep(0.05)
        for s in sockets:
            s.close()  # only the workers listen now

        holder = raw_client(port)
        assert holder.login().startswith(b"+OK Logged in")

        def sessions(log: Path) -> int:
            return log.read_text().count("popserv session:")

        # Which process accepts a connection is the kernel's choice, and it
        # can pick the same one forty times running.  So stop the other
        # one: the connection then waits for this one alone, and one of the
        # two logins goes through the process that does not hold the lock.
        for n in (0, 1):
            other = workers[1 - n]
            before = sessions(logs[n])
            other.send_signal(signal.SIGSTOP)
            try:
                client = raw_client(port)
                assert client.login() == b"-ERR [IN-USE] Maildrop is in use by another session\r\n"
                assert client.read_to_close() == b""
                deadline = time.monotonic() + CLIENT_TIMEOUT
                while sessions(logs[n]) == before:
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
            finally:
                other.send_signal(signal.SIGCONT)
        assert holder.command(b"QUIT").startswith(b"+OK")
        for log in logs:
            assert "Traceback" not in log.read_text()
    finally:
        for s in sockets:
            s.close()
        for worker, log in zip(workers, logs, strict=False):
            Server(worker, log).stop()


def test_logFile(
    start_server: ServerFactory,
    maildir_root: Path,
    maildir: Path,
    raw_client: Callable[..., RawClient],
    wait_until: Callable[..., object],
    tmp_path: Path,
) -> None:
    """
    What docs/operating.rst ("Log files") tells operators of C{twistd
    --logfile}: C{kill -USR1} moves the file to C{PATH.1} and starts a new
    one; a file moved away (logrotate's default) goes on receiving the
    lines under its new name, even after C{USR1}, and no new file appears;
    a file truncated in place (logrotate's C{copytruncate}) is written at
    the old offset, after NUL octets.
    """
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "popserv.log"
    server = start_server(f"maildir:{maildir_root}/{{user}}", logfile=log)

    def session() -> None:
        client = raw_client(server.port)
        assert client.login().startswith(b"+OK ")
        assert client.command(b"QUIT").startswith(b"+OK ")

    def sessions(path: Path) -> int:
        return path.read_bytes().count(b" popserv session: user=alice ") if path.exists() else 0

    session()
    wait_until(lambda: sessions(log) == 1)

    server.process.send_signal(signal.SIGUSR1)
    wait_until((logs / "popserv.log.1").exists)
    session()
    wait_until(lambda: sessions(log) == 1)
    assert sessions(logs / "popserv.log.1") == 1

    moved = logs / "popserv.log.moved"
    log.rename(moved)
    server.process.send_signal(signal.SIGUSR1)
    session()
    wait_until(lambda: sessions(moved) == 2)
    assert not log.exists()
    assert sorted(p.name for p in logs.iterdir()) == ["popserv.log.1", "popserv.log.moved"]

    size = moved.stat().st_size
    os.truncate(moved, 0)
    session()
    wait_until(lambda: sessions(moved) == 1)
    data = moved.read_bytes()
    assert data[:size] == b"\0" * size
    assert data[size:].count(b"\n") >= 1 and b"\0" not in data[size:]
