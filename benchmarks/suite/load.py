"""
The load generator: C{popload.c} next to this package, compiled with gcc
into the run's directory, and thin wrappers that run it and read its JSON.

It is C because it must not be the bottleneck: one Python process driving
sessions over epoll needs about 20 % of a core for 1,000 sessions a second,
while popload does more than 10,000 on one core (the C{loadgen}
calibration scenario measures that on each run).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import time
from collections.abc import Sequence
from typing import Any

from .servers import BENCHMARKS

SOURCE = os.path.join(BENCHMARKS, "popload.c")
#: Beyond a churn run's warm-up and window: popload's 10 s to drain the
#: sessions in flight, and its start-up.
DRAIN_SLACK = 30.0


class LoadError(RuntimeError):
    """
    popload failed or ran past its time limit.
    """


def build(directory: str) -> str:
    """
    Compile popload into C{directory}; return the executable's path.
    """
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise LoadError("no C compiler: apt-get install gcc")
    binary = os.path.join(directory, "popload")
    result = subprocess.run(
        [compiler, "-O2", "-Wall", "-o", binary, SOURCE],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise LoadError(f"cannot compile {SOURCE}:\n{result.stderr}")
    return binary


def _options(options: dict[str, Any]) -> list[str]:
    return [f"{key}={value}" for key, value in options.items()]


class Popload:
    """
    Runs popload in its modes.  Every run is bounded in time.
    """

    def __init__(self, binary: str, workdir: str) -> None:
        self.binary = binary
        self.workdir = workdir
        self._runs = 0

    def _output(self, name: str) -> str:
        self._runs += 1
        return os.path.join(self.workdir, f"popload-{self._runs}-{name}")

    def start(self, mode: str, **options: Any) -> tuple[subprocess.Popen[bytes], str]:
        """
        Start popload; its JSON goes to a file (a pipe could fill up while
        the caller is busy sampling the server).
        """
        path = self._output(mode + ".json")
        with open(path, "wb") as out:
            process = subprocess.Popen(
                [self.binary, mode, *_options(options)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.PIPE,
            )
        return process, path

    @staticmethod
    def finish(process: subprocess.Popen[bytes], path: str, timeout: float) -> dict[str, Any]:
        """
        Wait (at most C{timeout} s) for a run started with L{start}; its result.
        """
        try:
            _, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate(timeout=10)
            raise LoadError(f"popload ran longer than {timeout:.0f} s") from None
        if process.returncode != 0:
            raise LoadError(f"popload exited with {process.returncode}: {stderr.decode()[-500:]}")
        with open(path) as f:
            result: dict[str, Any] = json.load(f)
        return result

    def churn(
        self,
        port: int,
        usersFile: str,
        clients: int,
        start: float,
        warmup: float,
        duration: float,
        expect: int,
    ) -> tuple[subprocess.Popen[bytes], str]:
        """
        Start a churn run whose window begins at monotonic time
        C{start + warmup}; L{finish} it after the window.
        """
        return self.start(
            "churn",
            port=port,
            users=usersFile,
            clients=clients,
            start=f"{start:.6f}",
            warmup=warmup,
            duration=duration,
            expect=expect,
            limit=int(warmup + duration + 60),
        )

    def fetch(
        self, port: int, usersFile: str, **options: Any
    ) -> tuple[subprocess.Popen[bytes], str, str]:
        """
        Start a fetch run; returns the process, the JSON path and the prefix
        of the files with what each session received.
        """
        prefix = self._output("received")
        process, path = self.start("fetch", port=port, users=usersFile, out=prefix, **options)
        return process, path, prefix


class IdleSessions:
    """
    popload idle: opens the sessions, then holds them until L{release}.
    """

    def __init__(self, binary: str, port: int, usersFile: str, sessions: int) -> None:
        self.process = subprocess.Popen(
            [
                binary,
                "idle",
                f"port={port}",
                f"users={usersFile}",
                f"sessions={sessions}",
                "hold=600",
                "limit=1200",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def _line(self, timeout: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.process.stdout], [], [], 0.5)
            if ready:
                line = self.process.stdout.readline()
                if not line:
                    break
                result: dict[str, Any] = json.loads(line)
                return result
            if self.process.poll() is not None:
                break
        self.kill()
        raise LoadError(f"popload idle: no result within {timeout:.0f} s")

    def ready(self, timeout: float) -> dict[str, Any]:
        """
        Wait until every session is logged in (or failed).
        """
        return self._line(timeout)

    def release(self, timeout: float = 60) -> dict[str, Any]:
        """
        QUIT every session; the final result.
        """
        assert self.process.stdin is not None
        self.process.stdin.write(b"\n")
        self.process.stdin.flush()
        result = self._line(timeout)
        self.process.wait(10)
        return result

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


class Responder:
    """
    popload serve: a trivial POP3 responder to calibrate the load generator.
    """

    def __init__(self, binary: str, count: int, size: int) -> None:
        self.process = subprocess.Popen(
            [binary, "serve", f"count={count}", f"size={size}", "limit=600"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
        )
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], 10)
        if not ready:
            self.stop()
            raise LoadError("popload serve did not start")
        self.port: int = json.loads(self.process.stdout.readline())["port"]
        self.pid = self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def writeUsers(path: str, users: Sequence[tuple[str, str]]) -> str:
    """
    A "user password" file for popload.
    """
    with open(path, "w") as f:
        for user, password in users:
            f.write(f"{user} {password}\n")
    return path
