"""
Configuration errors stop C{twistd popserv} before it starts: one line on
stderr, a non-zero exit status, no traceback.
"""

from __future__ import annotations

import shlex
import socket
import subprocess
import time
from pathlib import Path

import pytest
from docpages import block, lines, literal

pytestmark = pytest.mark.integration

LISTEN = ["--listen", "tcp:0:interface=127.0.0.1"]
AUTH = ["--auth", "memory:alice:secret"]


def _cases(tmp: str) -> dict[str, list[str]]:
    store = ["--mailstore", f"maildir:{tmp}/{{user}}"]
    return {
        "unknown store kind": [*LISTEN, *AUTH, "--mailstore", "nosuch:x"],
        "template without {user}": [*LISTEN, *AUTH, "--mailstore", f"maildir:{tmp}"],
        "missing directory": [
            *LISTEN,
            *AUTH,
            "--mailstore",
            "maildir:/nonexistent/dir/{user}",
        ],
        "no --auth": [*LISTEN, *store],
        "no --mailstore": [*LISTEN, *AUTH],
        "bad endpoint": ["--listen", "bogus:1", *AUTH, *store],
        "timeout below 600": [*LISTEN, *AUTH, *store, "--timeout", "5"],
        "timeout not a number": [*LISTEN, *AUTH, *store, "--timeout", "soon"],
        "unknown auth kind": [*LISTEN, "--auth", "nosuch:x", *store],
    }


CASES = list(_cases("TMP"))


@pytest.mark.parametrize("case", CASES)
def test_configuration_error(case, tmp_path, twistd):
    """
    A bad or missing option makes twistd exit with a non-zero status and
    one "popserv: error:" line on stderr, without a traceback and without
    listening.
    """
    args = _cases(str(tmp_path))[case]
    result = subprocess.run(
        [*twistd, "-n", "--pidfile=", "popserv", *args],
        capture_output=True,
        cwd=tmp_path,
        timeout=30,
        check=False,
    )
    output = (result.stdout + result.stderr).decode("utf-8", "replace")
    assert result.returncode != 0, output
    assert "Traceback" not in output
    assert "starting on" not in output
    lines = [line for line in result.stderr.decode().splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[-1].startswith("popserv: error:"), output


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (
            "--pidfile=run/popserv/popserv.pid",
            "--pidfile 'run/popserv/popserv.pid': {tmp}/run/popserv is not a directory",
        ),
        ("--logfile=log/popserv.log", "--logfile 'log/popserv.log': {tmp}/log is not a directory"),
        ("--rundir=nowhere", "--rundir 'nowhere': not a directory"),
        ("--rundir=", "--rundir '': not a directory"),
    ],
)
def test_twistd_path_in_missing_directory(option, message, tmp_path, twistd):
    """
    twistd's own --pidfile, --logfile and --rundir naming a directory that
    does not exist are configuration errors like popserv's: one line, and
    nothing listening (twistd itself would write the pid file only once the
    server listened, and end with a traceback).
    """
    store = ["--mailstore", f"maildir:{tmp_path}/{{user}}"]
    result = subprocess.run(
        [*twistd, "-n", option, "popserv", *LISTEN, *AUTH, *store],
        capture_output=True,
        cwd=tmp_path,
        timeout=30,
        check=False,
    )
    output = (result.stdout + result.stderr).decode("utf-8", "replace")
    assert result.returncode == 1, output
    assert "starting on" not in output
    assert result.stderr.decode().splitlines() == [
        "popserv: error: " + message.format(tmp=tmp_path)
    ], output
    assert list(tmp_path.iterdir()) == []


def _start_on_busy_port(tmp_path, twistd, mode=("-n", "--pidfile=")):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        return subprocess.run(
            [
                *twistd,
                *mode,
                "popserv",
                "--listen",
                f"tcp:{port}:interface=127.0.0.1",
                *AUTH,
                "--mailstore",
                f"maildir:{tmp_path}/{{user}}",
            ],
            capture_output=True,
            cwd=tmp_path,
            timeout=30,
            check=False,
        )


def test_address_in_use_fails_start(tmp_path, twistd):
    """
    An address that cannot be bound stops twistd at start with a non-zero
    status, instead of running without a listener.
    """
    result = _start_on_busy_port(tmp_path, twistd)
    output = (result.stdout + result.stderr).decode("utf-8", "replace")
    assert result.returncode != 0, output
    assert "Address already in use" in output


def test_address_in_use_one_line(tmp_path, twistd):
    """
    An address that cannot be bound is reported like every other
    configuration error: one "popserv: error:" line and no traceback.
    """
    result = _start_on_busy_port(tmp_path, twistd)
    output = (result.stdout + result.stderr).decode("utf-8", "replace")
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines[-1].startswith("popserv: error:"), output


def test_address_in_use_daemon(tmp_path, twistd):
    """
    Started as a daemon (no -n), twistd's first process reports the
    failure and exits with status 1 rather than waiting for ever; the log
    has the line.
    """
    log = tmp_path / "twistd.log"
    mode = (f"--pidfile={tmp_path}/twistd.pid", f"--logfile={log}")
    result = _start_on_busy_port(tmp_path, twistd, mode)
    output = (result.stdout + result.stderr).decode("utf-8", "replace")
    assert result.returncode == 1, output
    assert "popserv: error: cannot listen on tcp:" in output
    assert "popserv: error: cannot listen on tcp:" in log.read_text()
    # The daemon removes its pid file as it exits, which may be just after
    # the first process has read the failure from it and exited.
    pidfile = tmp_path / "twistd.pid"
    deadline = time.monotonic() + 10
    while pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pidfile.exists()


def _runDocumented(command: str, directory: Path, twistd: list[str]) -> str:
    """
    Run a twistd command as a page shows it ("$ twistd -n popserv ...")
    with the twistd under test; it must fail with status 1, and its standard
    error is returned.
    """
    argv = shlex.split(command.removeprefix("$ "))
    assert argv[:3] == ["twistd", "-n", "popserv"], command
    result = subprocess.run(
        [*twistd, *argv[1:]], capture_output=True, cwd=directory, timeout=30, check=False
    )
    assert result.returncode == 1
    return result.stderr.decode().strip()


def _documentedErrors() -> list[tuple[str, str]]:
    """
    The commands and the error lines operating.rst shows under
    "Configuration errors".
    """
    shown = block("operating", ".. code-block:: console", after="Configuration errors")
    assert len(shown) >= 2 and len(shown) % 2 == 0, shown
    return list(zip(shown[::2], shown[1::2], strict=True))


@pytest.mark.parametrize("command, error", _documentedErrors())
def test_documented_errors(command, error, tmp_path, twistd):
    """
    Each example of operating.rst's "Configuration errors" gives exactly
    the line and the exit status the page says.
    """
    assert _runDocumented(command, tmp_path, twistd) == error


def test_documented_policy_file_error(tmp_path, twistd):
    """
    capabilities.rst's example of a mistake in the policy file: its first
    lines, then "bob expire=soon" as the second line the page names, give
    the error line the page shows.
    """
    example = literal("capabilities", "Per-user values")
    assert example[0].startswith("#"), example
    assert "a second line ``bob expire=soon``" in " ".join(lines("capabilities"))
    (tmp_path / "policy").write_text(f"{example[1]}\nbob expire=soon\n")
    command, error = block("capabilities", ".. code-block:: console", after="Per-user values")
    assert _runDocumented(command, tmp_path, twistd) == error
