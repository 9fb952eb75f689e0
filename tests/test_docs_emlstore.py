"""
The emlstore example of docs/extending.rst works as documented: it passes
the store contract test-suite, and real twistd finds its dropin and serves
mail from it.
"""

from __future__ import annotations

import os
import poplib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from processes import TIMEOUT, stop, waitForOutput

from popserv.testing import StoreContract

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "docs" / "examples" / "emlstore"
TWISTD = Path(sys.executable).parent / "twistd"

#: Seconds any one wait in these tests may take.

#: Two messages as a user would store them: LF endings, a line starting
#: with ".", and a last line without a line ending.
MESSAGES = {
    "0001.eml": b"Subject: first\n\n.dot line\nlast line without newline",
    "0002.eml": b"Subject: second\r\n\r\nkept\r\n",
}


def exampleEnvironment(project: Path) -> dict[str, str]:
    """
    The environment with C{project} first on PYTHONPATH, as a user who
    installed the example project would have it on C{sys.path}.
    """
    paths = [str(project), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def copyProject(tmp_path: Path) -> Path:
    """
    A copy of the example project, so that twistd writes its dropin.cache
    there and not into the repository.
    """
    return Path(
        shutil.copytree(
            EXAMPLE,
            tmp_path / "project",
            ignore=shutil.ignore_patterns("__pycache__", "dropin.cache"),
        )
    )


def wireForm(message: bytes) -> bytes:
    """
    C{message} as RETR sends it before dot-stuffing: CRLF line endings, and
    a CRLF after an unterminated last line.
    """
    message = message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return message if message.endswith(b"\r\n") else message + b"\r\n"


def test_exampleRunsStoreContract() -> None:
    """
    The example's own test module passes, and every test of popserv's
    StoreContract ran and passed against EmlStore.
    """
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-v",
            "-p",
            "no:cacheprovider",
            str(EXAMPLE / "test_emlstore.py"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=exampleEnvironment(EXAMPLE),
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    contract = [name for name in dir(StoreContract) if name.startswith("test_")]
    assert contract
    for name in contract:
        assert f"TestEmlStore::{name} PASSED" in result.stdout, name


def test_helpListsEmlKind(tmp_path: Path) -> None:
    """
    With the example project on PYTHONPATH, C{twistd popserv
    --help-mailstores} lists the C{eml:ROOT} kind next to the built-in ones.
    """
    project = copyProject(tmp_path)
    result = subprocess.run(
        [str(TWISTD), "popserv", "--help-mailstores"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=exampleEnvironment(project),
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^eml:ROOT$", result.stdout, re.MULTILINE), result.stdout
    assert re.search(r"^maildir:TEMPLATE$", result.stdout, re.MULTILINE)


def test_popservCheckMakesEmlStore(tmp_path: Path) -> None:
    """
    C{popserv check}, as extending.rst shows it, makes the example's store
    from its plugin and prints the lines the page shows; a ROOT that does
    not exist is the store's one-line error, exit status 1.
    """
    text = (REPO / "docs" / "extending.rst").read_text()
    block = text.split("   $ popserv check -- ", 1)[1].split("   ...\n", 1)[0]
    command, *shown = [line.removeprefix("   ") for line in block.splitlines()]
    root = tmp_path / "eml"
    root.mkdir()
    arguments = command.replace("/tmp/eml", str(root)).split()
    project = copyProject(tmp_path)
    popserv = str(Path(sys.executable).parent / "popserv")

    def check(*arguments: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [popserv, "check", "--", *arguments],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
            env=exampleEnvironment(project),
            check=False,
        )

    result = check(*arguments)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[: len(shown)] == [
        line.replace("/tmp/eml", str(root)) for line in shown
    ]
    missing = tmp_path / "missing"
    result = check("--auth", "memory:alice:secret", "--mailstore", f"eml:{missing}")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        f"popserv: error: --mailstore: eml: directory {missing} does not exist\n"
    )


@pytest.mark.integration
def test_twistdServesEmlStore(tmp_path: Path) -> None:
    """
    Real twistd with C{--mailstore eml:ROOT} serves the *.eml files of
    ROOT/alice: RETR sends a file's content with CRLF line endings, and
    DELE then QUIT unlinks exactly that file.
    """
    assert TWISTD.is_file(), TWISTD
    project = copyProject(tmp_path)
    root = tmp_path / "mail"
    (root / "alice").mkdir(parents=True)
    for name, content in MESSAGES.items():
        (root / "alice" / name).write_bytes(content)

    log = tmp_path / "twistd.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                str(TWISTD),
                "-n",
                "--pidfile=",
                "popserv",
                "--listen",
                "tcp:0:interface=127.0.0.1",
                "--auth",
                "memory:alice:secret",
                "--mailstore",
                f"eml:{root}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env=exampleEnvironment(project),
        )
    try:
        match = waitForOutput(log, rb"POP3ServerFactory starting on (\d+)", process)
        port = int(match.group(1))

        client = poplib.POP3("127.0.0.1", port, timeout=TIMEOUT)
        try:
            client.user("alice")
            client.pass_("secret")
            assert client.stat() == (
                2,
                sum(len(wireForm(m)) for m in MESSAGES.values()),
            )
            status, lines, octets = client.retr(1)
            first = wireForm(MESSAGES["0001.eml"])
            assert status == b"+OK %d octets" % len(first)
            assert b"".join(line + b"\r\n" for line in lines) == first
            assert octets == len(first)
            assert client.uidl(1) == b"+OK 1 0001"
            client.dele(1)
            assert sorted(os.listdir(root / "alice")) == sorted(MESSAGES)
        finally:
            bye = client.quit()
        assert bye == b"+OK Bye, 1 deleted, 1 left"
        assert os.listdir(root / "alice") == ["0002.eml"]
        assert (root / "alice" / "0002.eml").read_bytes() == MESSAGES["0002.eml"]
    finally:
        stop(process)
