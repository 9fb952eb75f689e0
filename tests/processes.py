"""
Running a program under test (an example, a server) as a subprocess: wait
for what it prints, and stop it, each bounded in time.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: Seconds any one wait in these tests may take.
TIMEOUT = 30.0


def waitForOutput(path: Path, pattern: bytes, process: subprocess.Popen[bytes]) -> re.Match[bytes]:
    """
    Wait, at most L{TIMEOUT} seconds, until the file C{path} (a process's
    output) matches C{pattern}; fail early if the process exits.
    """
    deadline = time.monotonic() + TIMEOUT
    for _ in range(int(TIMEOUT / 0.05) + 1):
        match = re.search(pattern, path.read_bytes())
        if match:
            return match
        if process.poll() is not None or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    raise AssertionError(
        f"{pattern!r} not in output (exit status {process.poll()}):\n"
        + path.read_text(errors="replace")
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    """
    Terminate C{process} and reap it, killing it if it does not exit.
    """
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=TIMEOUT)


@contextmanager
def runningExample(example: Path, directory: Path) -> Iterator[int]:
    """
    Run a docs example that listens on the endpoint given on its command
    line (here C{tcp:0} on 127.0.0.1) and prints "listening on HOST:PORT";
    yield the port, and stop the example afterwards.
    """
    stdout = directory / "stdout"
    with stdout.open("wb") as out, (directory / "stderr").open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-u", str(example), "tcp:0:interface=127.0.0.1"],
            stdout=out,
            stderr=err,
            cwd=directory,
        )
    try:
        match = waitForOutput(stdout, rb"listening on 127\.0\.0\.1:(\d+)\n", process)
        yield int(match.group(1))
    finally:
        stop(process)
