"""
Fixtures for the integration tests: a real C{twistd popserv} process on
127.0.0.1, Maildirs filled the way an MDA fills them, and small clients whose
every wait is bounded.

Nothing here imports popserv: the tests see the server only through its
command line, its sockets and the files it leaves on disk, and they compute
the expected wire form of a message on their own.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# tests/ and this directory are on sys.path while this conftest loads
# (neither has an __init__.py).
from clients import Fetchmail, Getmail, Mpop, TestPKI, make_test_pki, require_program

HOST = "127.0.0.1"
USER = "alice"
PASSWORD = "secret"
MEMORY_AUTH = f"memory:{USER}:{PASSWORD}"

#: How long a server may take to say it is listening.
START_DEADLINE = 15.0
#: The socket timeout of every client, and the bound of every polling loop.
CLIENT_TIMEOUT = 10.0

_STARTED = re.compile(rb"POP3ServerFactory starting on (\d+)")
_delivery = itertools.count()


# The expected wire form, computed independently of popserv.encoder.


def split_lines(message: bytes) -> list[bytes]:
    """
    The lines of C{message} without their endings.  Only LF and CRLF end a
    line; a CR not followed by LF is data, including a CR at the very end.
    """
    if not message:
        return []
    pieces = message.split(b"\n")
    if pieces[-1] == b"":
        # The message ends with a line ending: no unterminated last line.
        pieces.pop()
        return [p.removesuffix(b"\r") for p in pieces]
    *terminated, last = pieces
    return [p.removesuffix(b"\r") for p in terminated] + [last]


def wire_form(message: bytes) -> bytes:
    """
    C{message} with every line ended by CRLF, before stuffing: what LIST
    counts (RFC 1939 section 5) and what an un-stuffing client shows.
    """
    return b"".join(line + b"\r\n" for line in split_lines(message))


def retr_body(message: bytes) -> bytes:
    """
    The multi-line body RETR sends for C{message}: CRLF lines, each line that
    starts with "." given one more (RFC 1939 section 3), then ".CRLF".
    """
    out = [
        (b"." + line if line.startswith(b".") else line) + b"\r\n" for line in split_lines(message)
    ]
    return b"".join(out) + b".\r\n"


# Maildir delivery, as an MDA does it.


def deliver(
    maildir: Path,
    message: bytes | Iterable[bytes],
    *,
    size_field: bool = False,
    wire_size: int | None = None,
    when: int | None = None,
) -> Path:
    """
    Deliver C{message} (bytes, or chunks of it for a big message) into
    C{maildir} the Maildir way: write it under C{tmp/}, then rename it into
    C{new/}.  The name is C{TIME.MnPpid.host},
    with C{,S=size} and C{,W=wire_size} fields when asked for.  Each
    delivery gets a later TIME than the one before, so message numbers
    follow delivery order.

    @return: the path of the delivered file in C{new/}.
    """
    for sub in ("tmp", "new", "cur"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    n = next(_delivery)
    stamp = when if when is not None else 1_700_000_000 + n
    name = f"{stamp}.M{n}P{os.getpid()}.testhost"
    temporary = maildir / "tmp" / name
    with open(temporary, "wb") as f:
        for chunk in [message] if isinstance(message, bytes) else message:
            f.write(chunk)
        size = f.tell()
    # The size fields are known only once the file is written; the name in
    # tmp/ need not carry them.
    if size_field:
        name += f",S={size}"
    if wire_size is not None:
        name += f",W={wire_size}"
    final = maildir / "new" / name
    os.rename(temporary, final)
    return final


#: popserv's index of message sizes (popserv.maildirindex): a cache that
#: logins write and rebuild, not part of the state a session must keep.
INDEX = "popserv.index"


def popserv_admin(*args: str, password: str) -> None:
    """
    Run the C{popserv} admin command of the environment under test, giving
    it C{password} on standard input (C{--password-stdin}).
    """
    admin = Path(sys.executable).with_name("popserv")
    subprocess.run(
        [str(admin), *args, "--password-stdin"],
        input=f"{password}\n".encode(),
        check=True,
        timeout=CLIENT_TIMEOUT,
    )


def message_files(maildir: Path) -> set[str]:
    """
    Every file under C{maildir} as C{subdir/name}, the index aside: the
    whole state a test compares before and after a session.
    """
    return {
        str(p.relative_to(maildir)) for p in maildir.rglob("*") if p.is_file() and p.name != INDEX
    }


# The server.


def twistd_command(python: str | None = None) -> list[str]:
    """
    How to run twistd: the script next to this interpreter, or through
    C{python} when given.
    """
    if python is None:
        script = Path(sys.executable).with_name("twistd")
        if script.exists():
            return [str(script)]
        python = sys.executable
    return [
        python,
        "-c",
        "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()",
    ]


@dataclass
class Server:
    """
    A running C{twistd popserv}.
    """

    process: subprocess.Popen[bytes]
    log: Path
    port: int = 0

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        """
        Everything the server wrote to stdout and stderr so far.
        """
        return self.log.read_bytes().decode("utf-8", "replace")

    def rss_kib(self) -> int:
        """
        The server's resident set size in KiB (Linux C{/proc}).
        """
        status = Path(f"/proc/{self.pid}/status").read_text()
        match = re.search(r"^VmRSS:\s+(\d+)\s+kB", status, re.MULTILINE)
        assert match, status
        return int(match.group(1))

    def stop(self) -> None:
        """
        Stop the server (SIGTERM, then SIGKILL) and reap it.
        """
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def kill(self) -> None:
        """
        SIGKILL the server and reap it: no shutdown code runs.
        """
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)


@dataclass
class ServerFactory:
    """
    Starts servers for one test and stops them all when it ends.
    """

    tmp_path: Path
    servers: list[Server] = field(default_factory=list)

    def __call__(
        self,
        mailstore: str,
        auth: Sequence[str] = (MEMORY_AUTH,),
        extra: Sequence[str] = (),
        python: str | None = None,
        cwd: Path | None = None,
        listen: str = f"tcp:0:interface={HOST}",
        twistd_options: Sequence[str] = (),
        prefix: Sequence[str] = (),
        logfile: Path | None = None,
    ) -> Server:
        """
        Start C{twistd -n popserv} (by default on an ephemeral port of
        127.0.0.1) and wait until it says which port it listens on.
        C{twistd_options} go to twistd itself, before C{popserv};
        C{prefix} is a command that runs twistd (it must exec it, keeping
        the process id); with C{logfile}, twistd logs there
        (C{--logfile}) rather than to standard output.
        """
        output = self.tmp_path / f"twistd-{len(self.servers)}.log"
        log = output if logfile is None else logfile
        argv = [
            *prefix,
            *twistd_command(python),
            "-n",
            "--pidfile=",
            *([] if logfile is None else [f"--logfile={logfile}"]),
            *twistd_options,
            "popserv",
            "--listen",
            listen,
            *(f"--auth={a}" for a in auth),
            "--mailstore",
            mailstore,
            *extra,
        ]
        with open(output, "wb") as out:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd or self.tmp_path,
                env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
            )
        server = Server(process, log)
        self.servers.append(server)
        deadline = time.monotonic() + START_DEADLINE
        while True:
            text = log.read_bytes() if log.exists() else b""
            match = _STARTED.search(text)
            if match:
                server.port = int(match.group(1))
                return server
            shown = text.decode("utf-8", "replace")
            if log != output:
                shown += output.read_bytes().decode("utf-8", "replace")
            if process.poll() is not None:
                pytest.fail(f"twistd exited with {process.returncode} before listening:\n" + shown)
            if time.monotonic() > deadline:
                server.stop()
                pytest.fail(f"twistd did not listen within {START_DEADLINE} s:\n" + shown)
            time.sleep(0.05)

    def stopAll(self) -> None:
        for server in self.servers:
            server.stop()


@pytest.fixture
def maildir_root(tmp_path: Path) -> Path:
    """
    The directory the Maildirs live under: C{ROOT/{user}}.
    """
    root = tmp_path / "mail"
    root.mkdir()
    return root


@pytest.fixture
def maildir(maildir_root: Path) -> Path:
    """
    Alice's Maildir, with its three subdirectories.
    """
    path = maildir_root / USER
    for sub in ("tmp", "new", "cur"):
        (path / sub).mkdir(parents=True)
    return path


@pytest.fixture
def big_files(maildir: Path) -> Iterator[Path]:
    """
    Alice's Maildir, emptied after the test: pytest keeps the last few
    runs' temporary directories, and hundreds of MiB each is too much to
    keep.
    """
    yield maildir
    for sub in ("new", "cur"):
        for path in (maildir / sub).iterdir():
            path.unlink()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[ServerFactory]:
    """
    A callable that starts a C{twistd popserv}; every server it started is
    stopped when the test ends.
    """
    factory = ServerFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.stopAll()


@pytest.fixture
def server(start_server: ServerFactory, maildir_root: Path, maildir: Path) -> Server:
    """
    A server for C{maildir:ROOT/{user}} with user alice, password secret.
    """
    return start_server(f"maildir:{maildir_root}/{{user}}")


# Clients.


class RawClient:
    """
    A POP3 client on a bare socket, for checking octets exactly.  Every read
    is bounded by the socket timeout and an overall deadline.
    """

    def __init__(
        self,
        port: int,
        timeout: float = CLIENT_TIMEOUT,
        rcvbuf: int | None = None,
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            # Before connect(), so the window is advertised small from the
            # handshake on.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((HOST, port))
        self.timeout = timeout
        self.buffer = b""
        self.greeting = self.read_line()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        """
        Read more into the buffer; False at end of stream.
        """
        if time.monotonic() > deadline:
            raise TimeoutError(f"no complete reply; have {self.buffer[-200:]!r}")
        data = self.sock.recv(1 << 20)
        if not data:
            return False
        self.buffer += data
        return True

    def read_until(self, marker: bytes, start: int = 0) -> bytes:
        """
        Read until C{marker} occurs at or after C{start} in the buffer;
        return everything up to and including it.
        """
        deadline = time.monotonic() + self.timeout
        while (end := self.buffer.find(marker, start)) < 0:
            if not self._fill(deadline):
                raise EOFError(f"connection closed; have {self.buffer[-200:]!r}")
        end += len(marker)
        data, self.buffer = self.buffer[:end], self.buffer[end:]
        return data

    def read_line(self) -> bytes:
        """
        One reply line, CRLF included.
        """
        return self.read_until(b"\r\n")

    def command(self, line: bytes) -> bytes:
        """
        Send one command and return its one-line reply.
        """
        self.send(line + b"\r\n")
        return self.read_line()

    def multiline(self, line: bytes) -> bytes:
        """
        Send a command with a multi-line reply; return the whole reply,
        status line and terminator included, or just the status line if it
        is C{-ERR}.
        """
        self.send(line + b"\r\n")
        status = self.read_line()
        if not status.startswith(b"+OK"):
            return status
        # The terminator is CRLF "." CRLF, whose first CRLF may be the end
        # of the status line itself (an empty message).
        self.buffer = status + self.buffer
        return self.read_until(b"\r\n.\r\n", start=len(status) - 2)

    def login(self, user: str = USER, password: str = PASSWORD) -> bytes:
        """
        USER/PASS; returns the PASS reply.
        """
        assert self.command(f"USER {user}".encode()).startswith(b"+OK")
        return self.command(f"PASS {password}".encode())

    def read_to_close(self) -> bytes:
        """
        Everything until the server closes the connection.
        """
        deadline = time.monotonic() + self.timeout
        while self._fill(deadline):
            pass
        data, self.buffer = self.buffer, b""
        return data

    def abort(self) -> None:
        """
        Drop the connection with a RST: no QUIT, no orderly close.
        """
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw_client() -> Iterator[Callable[..., RawClient]]:
    """
    A callable that connects a L{RawClient}; all are closed at the end.
    """
    clients: list[RawClient] = []

    def connect(port: int, **kwargs: object) -> RawClient:
        client = RawClient(port, **kwargs)  # type: ignore[arg-type]
        clients.append(client)
        return client

    try:
        yield connect
    finally:
        for client in clients:
            client.close()


def wait_until(predicate: Callable[[], object], timeout: float = CLIENT_TIMEOUT) -> object:
    """
    Poll C{predicate} until it returns something true; fail after
    C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(0.05)


# The helpers above, as fixtures: test modules reach them without importing
# this module (tests/ is not a package, and "import conftest" would depend on
# which conftest pytest loaded last).


@pytest.fixture(name="deliver")
def deliver_fixture() -> Callable[..., Path]:
    """
    L{deliver}: put a message into a Maildir as an MDA does.
    """
    return deliver


@pytest.fixture(name="wire_form")
def wire_form_fixture() -> Callable[[bytes], bytes]:
    """
    L{wire_form}: a message with CRLF line endings, before stuffing.
    """
    return wire_form


@pytest.fixture(name="retr_body")
def retr_body_fixture() -> Callable[[bytes], bytes]:
    """
    L{retr_body}: the stuffed, terminated body of a RETR response.
    """
    return retr_body


@pytest.fixture(name="message_files")
def message_files_fixture() -> Callable[[Path], set[str]]:
    """
    L{message_files}: every file under a Maildir.
    """
    return message_files


@pytest.fixture
def twistd() -> list[str]:
    """
    The command that runs twistd from the environment under test.
    """
    return twistd_command()


@pytest.fixture(name="wait_until")
def wait_until_fixture() -> Callable[..., object]:
    """
    L{wait_until}: poll a condition with a deadline.
    """
    return wait_until


# Real mail clients (fetchmail, mpop, getmail6) and TLS: the runners live in
# clients.py, next to this file.

_TLS_STARTED = re.compile(rb"POP3ServerFactory \(TLS\) starting on (\d+)")


@pytest.fixture(scope="session")
def test_pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    """
    A test CA and a server certificate for 127.0.0.1 and localhost that it
    signed, generated once per session.
    """
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@dataclass
class TLSServer:
    """
    A running server with a plain port (which offers STLS when
    C{starttls}) and an implicit TLS port, both on 127.0.0.1.
    """

    server: Server
    port: int
    tls_port: int
    starttls: bool


@pytest.fixture
def tls_server(
    start_server: ServerFactory, maildir_root: Path, maildir: Path, test_pki: TestPKI
) -> TLSServer:
    """
    A server for alice's Maildir listening on C{tcp:0} and on an C{ssl:0}
    endpoint with the test certificate, with STLS on the plain port.
    """
    starttls = True
    extra = [
        "--listen",
        test_pki.ssl_endpoint(),
        "--tls-cert",
        str(test_pki.server_certificate),
        "--tls-key",
        str(test_pki.server_key),
    ]
    server = start_server(f"maildir:{maildir_root}/{{user}}", extra=extra)
    match = wait_until(lambda: _TLS_STARTED.search(server.log.read_bytes()))
    assert isinstance(match, re.Match)
    return TLSServer(server, server.port, int(match.group(1)), starttls)


@pytest.fixture
def fetchmail(tmp_path: Path, test_pki: TestPKI) -> Fetchmail:
    """
    A L{Fetchmail} runner with a private home under tmp_path.
    """
    require_program("fetchmail")
    return Fetchmail(tmp_path / "fetchmail", test_pki)


@pytest.fixture
def mpop(tmp_path: Path, test_pki: TestPKI) -> Mpop:
    """
    An L{Mpop} runner with a private home under tmp_path.
    """
    require_program("mpop")
    return Mpop(tmp_path / "mpop", test_pki)


@pytest.fixture
def getmail(tmp_path: Path, test_pki: TestPKI) -> Getmail:
    """
    A L{Getmail} runner (getmail6) with a private home under tmp_path.
    """
    require_program("getmail")
    return Getmail(tmp_path / "getmail", test_pki)


@pytest.fixture
def stat_when_free(raw_client: Callable[..., RawClient]) -> Callable[[int], bytes | None]:
    """
    A callable giving the STAT reply of a fresh session that QUITs without
    deleting, or None while the maildrop is still locked ([IN-USE]).
    """

    def stat(port: int) -> bytes | None:
        client = raw_client(port)
        reply = client.login()
        if reply.startswith(b"-ERR [IN-USE]"):
            client.close()
            return None
        assert reply.startswith(b"+OK"), reply
        result = client.command(b"STAT")
        assert client.command(b"QUIT").startswith(b"+OK")
        client.close()
        return result

    return stat
