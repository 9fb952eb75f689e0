"""
The documentation builds, and its embedding example runs as documented.
"""

from __future__ import annotations

import importlib.util
import poplib
import re
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from processes import TIMEOUT, runningExample

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
EXAMPLES = DOCS / "examples"
EMBED = EXAMPLES / "embed.py"

PAGES = [
    "index",
    "quickstart",
    "operating",
    "maildir",
    "tls",
    "authentication",
    "capabilities",
    "security",
    "protocol",
    "embedding",
    "extending",
    "benchmarks",
    "performance",
]


def loadExample(path: Path) -> ModuleType:
    """
    Import an example file as a module, without running its C{__main__}.
    """
    spec = importlib.util.spec_from_file_location(f"example_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docsBuildWithoutWarnings(tmp_path: Path) -> None:
    """
    The Sphinx documentation builds with every warning treated as an error,
    and every page is produced.
    """
    out = tmp_path / "html"
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html", str(DOCS), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    for page in PAGES:
        assert (out / f"{page}.html").is_file(), page


def test_everyTitleStartsASection() -> None:
    """
    Every section title in the documentation follows a blank line.  A title
    written right after a paragraph's last line is read, without a warning,
    as more of that paragraph, underline and all.
    """
    underline = re.compile(r"([=\-~^\"*+#])\1{2,}")
    misplaced = []
    for page in [*DOCS.glob("*.rst"), REPO / "README.rst", REPO / "benchmarks" / "README.rst"]:
        lines = page.read_text().splitlines()
        for number in range(2, len(lines)):
            title, before = lines[number - 1].rstrip(), lines[number - 2]
            if (
                underline.fullmatch(lines[number])
                and title
                and len(lines[number]) >= len(title)
                and before.strip()
                and not underline.fullmatch(before)  # an overlined title
            ):
                misplaced.append(f"{page.name}:{number}: {title}")
    assert misplaced == []


def test_everyExampleIsShown() -> None:
    """
    Every Python file under docs/examples is shown in the documentation by a
    literalinclude, so no example exists that readers cannot see.
    """
    included = set()
    for page in DOCS.glob("*.rst"):
        for name in re.findall(r"literalinclude:: (\S+)", page.read_text()):
            included.add((DOCS / name).resolve())
    examples = {p.resolve() for p in EXAMPLES.rglob("*.py") if "__pycache__" not in p.parts}
    assert examples <= included, sorted(str(p) for p in examples - included)


def helpOptions() -> dict[str, str]:
    """
    The options C{twistd popserv --help} lists, each with its help text.
    """
    twistd = Path(sys.executable).parent / "twistd"
    result = subprocess.run(
        [str(twistd), "popserv", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    options: dict[str, str] = {}
    name = None
    for line in result.stdout.splitlines():
        match = re.match(r"\s+(?:-\w, )?--([\w-]+)=?\s*(.*)", line)
        if match:
            name = match.group(1)
            options[name] = match.group(2)
        elif name is not None and line.startswith(" " * 20):
            options[name] += " " + line.strip()
        else:
            name = None
    return options


def optionEntries(page: str) -> dict[str, str]:
    """
    The entries of the definition list in the "Options" section of C{page}
    whose term names options (C{``--name ...``}), by option name: the term
    and its indented body.
    """
    section = page.split("\nOptions\n-------\n", 1)[1]
    section = re.split(r"\n\S[^\n]*\n-{3,}\n", section, maxsplit=1)[0]
    entries: dict[str, str] = {}
    current: list[str] = []
    # A last unindented line ends the last entry.
    for line in [*section.splitlines(), "."]:
        if line.startswith("``--") or (line and not line.startswith(" ")):
            for name in re.findall(r"``--([\w-]+)", current[0] if current else ""):
                entries[name] = "\n".join(current)
            current = [line] if line.startswith("``--") else []
        elif current:
            current.append(line)
    return entries


def test_operatingDescribesEveryOption() -> None:
    """
    Every option C{twistd popserv --help} shows has an entry of its own in
    operating.rst, and every default --help states is the one that entry
    gives (600 for --timeout, tcp:110 for --listen).
    """
    options = helpOptions()
    assert {"listen", "auth", "mailstore", "timeout", "tls-cert", "expire"} <= set(options)
    entries = optionEntries((DOCS / "operating.rst").read_text())
    missing = sorted(set(options) - set(entries))
    assert not missing, missing
    defaults = 0
    for name, text in options.items():
        for default in re.findall(r"\[default: ([^\]]+)\]|Default: (\S+?)\.(?:\s|$)", text):
            value = next(v for v in default if v)
            value = re.escape(value.removesuffix(".0"))
            # A sentence of the entry gives it as the default.
            sentences = re.split(r"\.\s", " ".join(entries[name].split()))
            assert any(
                re.search(r"[Dd]efault|[Ww]ithout it", sentence)
                and re.search(rf"(?<![\w:]){value}(?![\w:])", sentence)
                for sentence in sentences
            ), (name, value)
            defaults += 1
    assert defaults >= 2


@pytest.mark.integration
def test_embedExampleServesMessage(tmp_path: Path) -> None:
    """
    The embedding example listens on the endpoint given on its command line,
    prints the address it bound, and serves alice's welcome message: poplib
    logs in with alice's password and retrieves it, and the raw RETR
    response is the message with CRLF line endings, dot-stuffed, with the
    exact size in the status line.
    """
    welcome = loadExample(EMBED).WELCOME
    wire = welcome.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    assert b"\n." in welcome  # the example must show dot-stuffing
    with runningExample(EMBED, tmp_path) as port:
        client = poplib.POP3("127.0.0.1", port, timeout=TIMEOUT)
        try:
            client.user("alice")
            client.pass_("secret")
            status, lines, octets = client.retr(1)
        finally:
            client.quit()
        assert status == b"+OK %d octets" % len(wire)
        assert b"".join(line + b"\r\n" for line in lines) == wire
        assert octets == len(wire)

        raw = rawSession(port, b"USER alice\r\nPASS secret\r\nRETR 1\r\nQUIT\r\n")
        stuffed = wire.replace(b"\r\n.", b"\r\n..")
        assert b"+OK %d octets\r\n" % len(wire) + stuffed + b".\r\n" in raw
    # Stopped with SIGTERM: its shutdown triggers ran without an error.
    log = (tmp_path / "stderr").read_text()
    assert "Main loop terminated" in log
    assert "Traceback" not in log and "Unhandled" not in log


def rawSession(port: int, commands: bytes) -> bytes:
    """
    Send C{commands} at once (pipelined) and return everything the server
    sends until it closes the connection.
    """
    deadline = time.monotonic() + TIMEOUT
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        s.sendall(commands)
        received = []
        for _ in range(10_000):
            chunk = s.recv(65536)
            if not chunk:
                return b"".join(received)
            received.append(chunk)
            if time.monotonic() > deadline:
                break
    pytest.fail("the server did not close the connection in time")


def test_embeddingLimits() -> None:
    """
    embedding.rst's entry for C{limits=} gives the defaults that
    L{Limits} has, and its example makes a factory with the limits it
    describes.
    """
    from twisted.cred.portal import Portal

    from popserv import POP3ServerFactory
    from popserv.limits import Exemptions, Limits
    from popserv.memorystore import MemoryStore
    from popserv.realm import MaildropRealm

    text = (DOCS / "embedding.rst").read_text()
    entry = text.split("``limits=Limits()``\n", 1)[1].split("\nPut together", 1)[0]
    stated = dict(re.findall(r"``(\w+)=([\d.]+)``", " ".join(entry.split())))
    assert set(stated) == {
        "penaltyInitial",
        "penaltyMaximum",
        "penaltyForget",
        "maxBadCommands",
        "trustFor",
    }
    defaults = Limits()
    assert {name: float(value) for name, value in stated.items()} == {
        name: float(getattr(defaults, name)) for name in stated
    }
    assert "``Exemptions(local=True, networks=())``" in entry
    assert defaults.perAddressExempt == Exemptions(local=True, networks=())
    code = entry.split(".. code-block:: python\n", 1)[1].split("\n   Default:", 1)[0]
    namespace = {
        "POP3ServerFactory": POP3ServerFactory,
        "portal": Portal(MaildropRealm(MemoryStore())),
    }
    exec(  # noqa: S102 (the documentation's own example)
        compile("\n".join(line[6:] for line in code.splitlines()), "embedding.rst", "exec"),
        namespace,
    )
    limits = namespace["factory"].limits
    assert limits.maxConnections == 5000
    assert "192.0.2.10" in limits.perAddressExempt and "127.0.0.1" in limits.perAddressExempt
    assert "192.0.2.11" not in limits.perAddressExempt


def test_realmExample() -> None:
    """
    embedding.rst's realm of one's own serves each domain's users from
    their domain's store, by local part, refuses an unknown domain with
    [SYS/PERM], and the session knows the user by the local part, as the
    page says: the audit line names it.  It takes the name from a checker
    that gives it as str (unix:) as from one that gives bytes.
    """
    from protocol_helpers import Session
    from twisted.cred.checkers import ICredentialsChecker, InMemoryUsernamePasswordDatabaseDontUse
    from twisted.cred.credentials import IUsernamePassword
    from twisted.cred.portal import Portal
    from twisted.internet.defer import Deferred, succeed
    from twisted.logger import capturedLogs, formatEvent
    from zope.interface import implementer

    from popserv import MemoryStore, POP3ServerFactory

    text = (DOCS / "embedding.rst").read_text()
    entry = text.split("\nYour own realm\n", 1)[1].split("\nOther ways to run it\n", 1)[0]
    code = entry.split(".. code-block:: python\n", 1)[1].split("\n``avatarName`` gives", 1)[0]
    namespace: dict[str, Any] = {}
    exec(compile(textwrap.dedent(code), "embedding.rst", "exec"), namespace)  # noqa: S102
    stores = {"example.org": MemoryStore(), "example.net": MemoryStore()}
    stores["example.org"].deliver("alice", b"Subject: org\r\n\r\nfor alice at .org\r\n")
    stores["example.net"].deliver("alice", b"Subject: net\r\n\r\n")
    checker = InMemoryUsernamePasswordDatabaseDontUse()
    for name in (b"alice@example.org", b"alice@example.com"):
        checker.addUser(name, b"secret")
    factory = POP3ServerFactory(Portal(namespace["DomainRealm"](stores), [checker]))
    with capturedLogs() as events:
        s = Session(factory=factory)
        assert s.login(b"alice@example.org") == b"+OK Logged in, 1 messages (35 octets)\r\n"
        assert s.command(b"TOP 1 0") == b"+OK Top of message follows\r\nSubject: org\r\n\r\n.\r\n"
        s.command(b"QUIT")
        s.protocol.connectionLost(None)
        other = Session(factory=factory)
        assert other.login(b"alice@example.com") == (
            b"-ERR [SYS/PERM] Maildrop not available for this user\r\n"
        )
    [audit] = [formatEvent(e) for e in events if "reason=quit" in formatEvent(e)]
    assert audit.startswith("popserv session: user=alice ip=")

    # A checker that gives the name as str, as unix: does.
    @implementer(ICredentialsChecker)
    class TextChecker:
        credentialInterfaces = (IUsernamePassword,)

        def requestAvatarId(self, credentials: IUsernamePassword) -> Deferred[str]:
            return succeed(credentials.username.decode())

    factory = POP3ServerFactory(Portal(namespace["DomainRealm"](stores), [TextChecker()]))
    s = Session(factory=factory)
    assert s.login(b"alice@example.net") == b"+OK Logged in, 1 messages (16 octets)\r\n"


def test_wholeNameRealmExample() -> None:
    """
    embedding.rst's WholeNameRealm keeps alice@example.org and
    alice@example.net apart, as the page says DomainRealm does not: a
    users entry keyed by the whole name gives the one its LOGIN-DELAY and
    leaves the other alone, and the audit line names the whole name.
    """
    from protocol_helpers import Session
    from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
    from twisted.cred.portal import Portal
    from twisted.internet.task import Clock
    from twisted.logger import capturedLogs, formatEvent

    from popserv import MemoryStore, POP3ServerFactory
    from popserv.policy import SitePolicy, UserPolicy

    text = (DOCS / "embedding.rst").read_text()
    entry = text.split("\nYour own realm\n", 1)[1].split("\nOther ways to run it\n", 1)[0]
    # Each python block ends where the prose after it begins.
    blocks = [b.split("\n\n``", 1)[0] for b in entry.split(".. code-block:: python\n")[1:]]
    code = "\n".join(textwrap.dedent(block) for block in blocks)
    namespace: dict[str, Any] = {}
    exec(compile(code, "embedding.rst", "exec"), namespace)  # noqa: S102
    stores = {"example.org": MemoryStore(), "example.net": MemoryStore()}
    checker = InMemoryUsernamePasswordDatabaseDontUse()
    for name in (b"alice@example.org", b"alice@example.net"):
        checker.addUser(name, b"secret")
    policy = SitePolicy(users={"alice@example.org": UserPolicy(loginDelay=900)})
    portal = Portal(namespace["WholeNameRealm"](stores), [checker])
    factory = POP3ServerFactory(portal, clock=Clock(), policy=policy)
    delayed = b"-ERR [LOGIN-DELAY] Minimum time between logins not yet passed\r\n"
    with capturedLogs() as events:
        for name, reply in [
            (b"alice@example.org", b"+OK Logged in, 0 messages (0 octets)\r\n"),
            (b"alice@example.net", b"+OK Logged in, 0 messages (0 octets)\r\n"),
            (b"alice@example.net", b"+OK Logged in, 0 messages (0 octets)\r\n"),
            (b"alice@example.org", delayed),
        ]:
            s = Session(factory=factory)
            assert s.login(name) == reply, name
            s.command(b"QUIT")
            s.protocol.connectionLost(None)
    audit = [formatEvent(e) for e in events if "popserv session:" in formatEvent(e)]
    assert [line.split()[2] for line in audit] == [
        "user=alice@example.org",
        "user=alice@example.net",
        "user=alice@example.net",
        "user=alice@example.org",
    ]


def test_checkerFactoryExample(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    authentication.rst's --auth plugin example works as the page says:
    twistd popserv takes its kind, its checker serves SCRAM and passwords,
    and a missing path is the one-line error the page shows.
    """
    from twisted.cred import strcred

    from popserv.tap import Options

    text = (DOCS / "authentication.rst").read_text()
    entry = text.split("To offer such a checker to", 1)[1]
    shown = re.search(r"``(popserv: error: [^`]+)``", " ".join(entry.split()))
    assert shown is not None
    block = []
    for line in entry.split(".. code-block:: python\n", 1)[1].splitlines():
        if line and not line.startswith("   "):
            break  # the block ends at the first line not indented
        block.append(line)
    source = textwrap.dedent("\n".join(block))
    monkeypatch.syspath_prepend(str(DOCS / "examples"))
    namespace: dict[str, object] = {}
    exec(compile(source, "authentication.rst", "exec"), namespace)  # noqa: S102
    factory = namespace["scramKeyCheckerFactory"]
    real = strcred.findCheckerFactories
    monkeypatch.setattr(strcred, "findCheckerFactories", lambda: [*real(), factory])
    options = Options()
    options.parseOptions(["--auth", "scram-keys:/etc/popserv/keys", "--mailstore", "memory"])
    (checker,) = options["credCheckers"]
    assert type(checker).__name__ == "ScramKeyChecker"
    with pytest.raises(SystemExit) as failed:
        Options().parseOptions(["--auth", "scram-keys", "--mailstore", "memory"])
    assert str(failed.value) == shown.group(1)


def test_tacExample(tmp_path: Path) -> None:
    """
    embedding.rst's .tac runs under twistd -ny and serves alice's Maildir;
    on an address already in use it ends at once with one line and exit
    status 1, rather than running without a listener.
    """
    import os

    from processes import stop, waitForOutput
    from test_stores_contract import deliverToMaildir

    deliverToMaildir(tmp_path / "mail" / "alice", b"Subject: tac\n\nhello\n", name="1.a")
    twistd = [str(Path(sys.executable).with_name("twistd")), "-ny", str(EXAMPLES / "popserv.tac")]
    environment = {**os.environ, "POPSERV_LISTEN": "tcp:0:interface=127.0.0.1"}
    log = tmp_path / "twistd.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*twistd, "--pidfile="], stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
            env=environment,
        )  # fmt: skip
    try:
        port = int(waitForOutput(log, rb"starting on (\d+)", process).group(1))
        client = poplib.POP3("127.0.0.1", port, timeout=TIMEOUT)
        try:
            client.user("alice")
            client.pass_("secret")
            assert client.retr(1)[1] == [b"Subject: tac", b"", b"hello"]
        finally:
            client.quit()
        busy = {**environment, "POPSERV_LISTEN": f"tcp:{port}:interface=127.0.0.1"}
        second = subprocess.run(
            [*twistd, f"--pidfile={tmp_path}/second.pid"], capture_output=True, cwd=tmp_path,
            env=busy, timeout=TIMEOUT, check=False,
        )  # fmt: skip
        output = (second.stdout + second.stderr).decode()
        assert second.returncode == 1, output
        assert f"popserv: error: cannot listen on tcp:{port}:interface=127.0.0.1" in output
        assert "Traceback" not in output
    finally:
        stop(process)
