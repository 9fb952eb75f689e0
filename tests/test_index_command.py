"""
Tests for building Maildir indexes ahead of the first login:
L{popserv.maildir.indexMaildir} and the C{popserv index} command.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from maildir_helpers import login, snapshot, store
from test_stores_contract import deliverToMaildir

from popserv import maildir
from popserv.admin import main
from popserv.encoder import wireSize
from popserv.errors import MaildropInUse
from popserv.maildir import LOCK_NAME, NotAMaildir, indexMaildir
from popserv.maildirindex import INDEX_NAME

MESSAGES = {
    "1700000000.M0.host": b"Subject: one\n\nfirst\n",
    "1700000001.M1.host": "Subject: Gr\u00fc\u00dfe\n\n.dot line\n".encode(),
    "1700000002.M2.host": b"no final newline",
}


@pytest.fixture
def alice(tmp_path: Path) -> Path:
    path = tmp_path / "alice"
    for name, data in MESSAGES.items():
        deliverToMaildir(path, data, name=name)
    return path


def run(monkeypatch: Any, capsys: Any, *argv: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def measured(monkeypatch: Any) -> list[str]:
    """
    The names of the message files logins read from now on.
    """
    names: list[str] = []
    real = maildir.measureEach

    def spying(files: Any, *args: Any, **kwargs: Any) -> Any:
        files = list(files)
        names.extend(name for _, _, name in files)
        return real(iter(files), *args, **kwargs)

    monkeypatch.setattr(maildir, "measureEach", spying)
    return names


def test_indexThenLoginReadsNoFile(alice: Path, monkeypatch: Any) -> None:
    """
    indexMaildir gives what STAT would, and leaves an index from which
    the next login takes every message without reading its file.
    """
    read = measured(monkeypatch)
    assert indexMaildir(str(alice)) == (3, sum(wireSize(m) for m in MESSAGES.values()))
    assert sorted(read) == sorted(MESSAGES)
    assert (alice / INDEX_NAME).is_file()
    del read[:]
    assert snapshot(store(alice.parent)) == [
        (name, wireSize(data), wireSize(data, downgrade=True)) for name, data in MESSAGES.items()
    ]
    assert read == []


def test_indexReadsOnlyNewMail(alice: Path, monkeypatch: Any) -> None:
    """
    Run again, it reads only the messages that came since: the index is
    brought up to date, not rebuilt.
    """
    indexMaildir(str(alice))
    deliverToMaildir(alice, b"later\n", name="1700000003.M3.host")
    read = measured(monkeypatch)
    total = sum(wireSize(m) for m in MESSAGES.values()) + wireSize(b"later\n")
    assert indexMaildir(str(alice)) == (4, total)
    assert read == ["1700000003.M3.host"]


def test_indexInUse(alice: Path) -> None:
    """
    A Maildir a session holds is not indexed: its lock is taken as a
    login takes it, at once or not at all.
    """
    session, _ = login(store(alice.parent))
    try:
        with pytest.raises(MaildropInUse):
            indexMaildir(str(alice))
    finally:
        session.close()
    assert indexMaildir(str(alice))[0] == 3


@pytest.mark.parametrize(
    "make, error",
    [
        (lambda p: p.mkdir(), "not a Maildir (no new/ or cur/ directory)"),
        (lambda p: (p / "new").mkdir(parents=True), "not a Maildir (no new/ or cur/ directory)"),
        (lambda p: p.write_bytes(b""), "not a directory"),
    ],
)
def test_notAMaildir(tmp_path: Path, make: Any, error: str) -> None:
    """
    What is not a Maildir is refused, and nothing is made in it: unlike a
    first login, indexing never makes a Maildir.
    """
    path = tmp_path / "x"
    make(path)
    before = sorted(os.listdir(path)) if path.is_dir() else None
    with pytest.raises(NotAMaildir) as caught:
        indexMaildir(str(path))
    assert str(caught.value) == error
    assert (sorted(os.listdir(path)) if path.is_dir() else None) == before


def test_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as caught:
        indexMaildir(str(tmp_path / "nobody"))
    assert caught.value.filename == str(tmp_path / "nobody")
    assert not (tmp_path / "nobody").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give files away")
def test_rootGivesFilesToTheOwner(alice: Path) -> None:
    """
    Run as root on another user's Maildir, the lock file and the index it
    made are that user's: a server running as them can open both.
    """
    os.chown(alice, 4321, 8765)
    indexMaildir(str(alice))
    for name in (LOCK_NAME, INDEX_NAME):
        info = os.stat(alice / name)
        assert (info.st_uid, info.st_gid) == (4321, 8765), name


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give files away")
def test_rootGivesFilesAwayBeforeUnlocking(alice: Path, monkeypatch: Any) -> None:
    """
    The files are the owner's before the lock is let go: a login that
    comes right after never finds them root's.
    """
    os.chown(alice, 4321, 8765)
    owners = []
    close = maildir.MaildirMaildrop.close

    def closing(self: Any) -> None:
        owners.append([os.stat(alice / name).st_uid for name in (LOCK_NAME, INDEX_NAME)])
        close(self)

    monkeypatch.setattr(maildir.MaildirMaildrop, "close", closing)
    indexMaildir(str(alice))
    assert owners == [[4321, 4321]]


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give files away")
def test_rootKeepsRootsOwn(alice: Path) -> None:
    indexMaildir(str(alice))
    assert os.stat(alice / INDEX_NAME).st_uid == 0


TOOK = r"indexed in \d+\.\d\d s"


#: Indexed in this process, and by a pool of processes (the lines the
#: same, in the same order).
JOBS = pytest.mark.parametrize("jobs", [[], ["--jobs", "3"]], ids=["one", "pool"])


@JOBS
def test_commandSaysWhatEachHolds(
    alice: Path, tmp_path: Path, monkeypatch: Any, capsys: Any, jobs: list[str]
) -> None:
    """
    popserv index: one line a Maildir, in the order given; the ones it
    could not index on standard error, the others still done, and exit
    code 1 with a count.
    """
    deliverToMaildir(tmp_path / "bob", b"x\n", name="1.M1.host")
    (tmp_path / "notmail").mkdir()
    code, out, err = run(
        monkeypatch,
        capsys,
        "index",
        *jobs,
        str(alice),
        str(tmp_path / "notmail"),
        str(tmp_path / "nobody"),
        str(tmp_path / "bob"),
    )
    assert code == 1
    total = sum(wireSize(m) for m in MESSAGES.values())
    assert re.fullmatch(
        f"{re.escape(str(alice))}: 3 messages, {total} octets, {TOOK}\n"
        f"{re.escape(str(tmp_path / 'bob'))}: 1 message, 3 octets, {TOOK}\n",
        out,
    ), out
    assert err == (
        f"popserv: error: {tmp_path / 'notmail'}: not a Maildir (no new/ or cur/ directory);"
        " not indexed\n"
        f"popserv: error: {tmp_path / 'nobody'}: No such file or directory; not indexed\n"
        "popserv: error: 2 of 4 Maildirs not indexed\n"
    )


def test_commandInUse(alice: Path, monkeypatch: Any, capsys: Any) -> None:
    session, _ = login(store(alice.parent))
    try:
        assert run(monkeypatch, capsys, "index", str(alice)) == (
            1,
            "",
            f"popserv: error: {alice}: in use by a session (try again when it ends); not indexed\n"
            "popserv: error: the Maildir was not indexed\n",
        )
    finally:
        session.close()


def test_poolInUse(alice: Path, tmp_path: Path, monkeypatch: Any, capsys: Any) -> None:
    """
    A worker process finds a Maildir that a session in another process
    holds in use, as the command does in its own.
    """
    deliverToMaildir(tmp_path / "bob", b"x\n", name="1.M1.host")
    session, _ = login(store(alice.parent))
    try:
        code, out, err = run(
            monkeypatch, capsys, "index", "-j", "2", str(alice), str(tmp_path / "bob")
        )
    finally:
        session.close()
    assert code == 1
    assert re.fullmatch(f"{re.escape(str(tmp_path / 'bob'))}: 1 message, 3 octets, {TOOK}\n", out)
    assert err == (
        f"popserv: error: {alice}: in use by a session (try again when it ends); not indexed\n"
        "popserv: error: 1 of 2 Maildirs not indexed\n"
    )


def test_poolOneDirectoryOnce(alice: Path, tmp_path: Path, monkeypatch: Any, capsys: Any) -> None:
    """
    Names of one Maildir (a symbolic link to it, the same path twice) are
    indexed in turn, by one worker: at once, one would find the other's
    lock and be reported in use.
    """
    with open(alice / "new" / "1700000003.M3.host", "wb") as f:
        f.truncate(1 << 30)  # seconds to size, no room on the disk
    (tmp_path / "alias").symlink_to(alice)
    deliverToMaildir(tmp_path / "bob", b"x\n", name="1.M1.host")
    given = [str(alice), str(tmp_path / "alias"), str(tmp_path / "bob"), str(alice)]
    code, out, err = run(monkeypatch, capsys, "index", "--jobs", "4", *given)
    assert (code, err) == (0, "")
    held = ["4 messages, \\d+ octets"] * 2 + ["1 message, 3 octets", "4 messages, \\d+ octets"]
    expected = "".join(
        f"{re.escape(path)}: {what}, {TOOK}\n" for path, what in zip(given, held, strict=True)
    )
    assert re.fullmatch(expected, out), out


@JOBS
def test_commandWarnsOfSkippedFiles(
    alice: Path, tmp_path: Path, monkeypatch: Any, capsys: Any, jobs: list[str]
) -> None:
    """
    What a login would log of a Maildir (here, a directory where a message
    should be) the command says on standard error, before the Maildir's
    line; the Maildir is indexed.
    """
    (alice / "new" / "1700000009.M9.host").mkdir()
    deliverToMaildir(tmp_path / "bob", b"x\n", name="1.M1.host")
    (tmp_path / "bob" / "cur" / "2.M2.host:2,S").mkdir()
    code, out, err = run(monkeypatch, capsys, "index", *jobs, str(alice), str(tmp_path / "bob"))
    assert code == 0
    assert re.fullmatch(
        f"{re.escape(str(alice))}: 3 messages, \\d+ octets, {TOOK}\n"
        f"{re.escape(str(tmp_path / 'bob'))}: 1 message, 3 octets, {TOOK}\n",
        out,
    )
    assert err == (
        f"popserv: warning: Skipping '{alice / 'new' / '1700000009.M9.host'}':"
        " [Errno 21] Is a directory\n"
        f"popserv: warning: Skipping '{tmp_path / 'bob' / 'cur' / '2.M2.host:2,S'}':"
        " [Errno 21] Is a directory\n"
    )


@pytest.mark.parametrize("jobs", ["0", "65", "two", "\u0663", "-1", ""])
def test_jobsBounded(jobs: str, capsys: Any) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["index", "--jobs", jobs, "x"])
    assert caught.value.code == 2
    assert capsys.readouterr().err.endswith(
        "popserv index: error: argument -j/--jobs: JOBS must be a whole number from 1 to 64\n"
    )


def test_jobsUpToTheCPUs(monkeypatch: Any, capsys: Any) -> None:
    """
    On a machine with more than 64 CPUs, --jobs "$(nproc)" is allowed,
    and one more is not.
    """
    monkeypatch.setattr(os, "cpu_count", lambda: 96)
    with pytest.raises(SystemExit) as caught:
        main(["index", "--jobs", "97", "x"])
    assert caught.value.code == 2
    assert capsys.readouterr().err.endswith("JOBS must be a whole number from 1 to 96\n")
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert main(["index", "--jobs", "96", "x"]) == 1  # not a Maildir, but a valid count
    assert capsys.readouterr().err.endswith("popserv: error: the Maildir was not indexed\n")


def test_commandNeedsAMaildir(capsys: Any) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["index"])
    assert caught.value.code == 2
    assert capsys.readouterr().err == (
        "usage: popserv index [-h] [-j JOBS] MAILDIR [MAILDIR ...]\n"
        "popserv index: error: the following arguments are required: MAILDIR\n"
    )


def test_installedCommand(alice: Path) -> None:
    """
    The popserv script installed beside twistd runs it.
    """
    script = os.path.join(os.path.dirname(sys.executable), "popserv")
    done = subprocess.run(
        [script, "index", str(alice)], capture_output=True, text=True, timeout=60, check=False
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert re.fullmatch(f"{re.escape(str(alice))}: 3 messages, \\d+ octets, {TOOK}\n", done.stdout)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give files away")
def test_rootLeavesOtherUsersFiles(alice: Path) -> None:
    """
    A lock file another user made (the user a server runs as, beside the
    Maildir's owner) stays theirs: only what root made is given away.
    """
    os.chown(alice, 4321, 8765)
    (alice / LOCK_NAME).touch()
    os.chown(alice / LOCK_NAME, 5555, 5555)
    indexMaildir(str(alice))
    assert os.stat(alice / LOCK_NAME).st_uid == 5555
    assert os.stat(alice / INDEX_NAME).st_uid == 4321


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give files away")
def test_rootGivesTheLockAwayWhenTheScanFails(alice: Path, monkeypatch: Any) -> None:
    os.chown(alice, 4321, 8765)

    def failing(*args: Any, **kwargs: Any) -> Any:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(maildir.MaildirMaildrop, "scan", failing)
    with pytest.raises(OSError):
        indexMaildir(str(alice))
    assert os.stat(alice / LOCK_NAME).st_uid == 4321


def test_commandSaysWhyTheIndexWasNotWritten(alice: Path, monkeypatch: Any, capsys: Any) -> None:
    """
    An index that cannot be written (a full disk) fails the Maildir, with
    the error that stopped it; a login would have served it without one.
    """

    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(maildir.MaildirIndex, "rewrite", full)
    assert run(monkeypatch, capsys, "index", str(alice)) == (
        1,
        "",
        f"popserv: warning: Cannot update the index of {alice}:"
        " [Errno 28] No space left on device\n"
        f"popserv: error: {alice}: the index could not be written; not indexed\n"
        "popserv: error: the Maildir was not indexed\n",
    )
    assert not (alice / INDEX_NAME).exists()


def slowMaildir(path: Path, size: int = 2 << 30) -> Path:
    """
    A Maildir at C{path} with a small message and a sparse one of C{size}
    octets, which takes seconds to size but no room on the disk; run as
    root, it belongs to another user (4321:8765).
    """
    deliverToMaildir(path, b"x\n", name="1.M1.host")
    with open(path / "new" / "2.M2.host", "wb") as f:
        f.truncate(size)
    if os.geteuid() == 0:
        os.chown(path, 4321, 8765)
    return path


@contextlib.contextmanager
def indexing(
    jobs: str, maildirs: list[Path], begun: list[Path]
) -> Iterator[subprocess.Popen[bytes]]:
    """
    The installed C{popserv index --jobs JOBS MAILDIRS} in a process group of
    its own, once the lock files of C{begun} are there (their indexing has
    begun); the group killed at the end, whatever is left of it.
    """
    script = os.path.join(os.path.dirname(sys.executable), "popserv")
    process = subprocess.Popen(
        [script, "index", "--jobs", jobs, *map(str, maildirs)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not all((path / LOCK_NAME).exists() for path in begun):
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.mark.parametrize("jobs", ["1", "3"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted(tmp_path: Path, jobs: str, signum: int) -> None:
    """
    Ctrl-C (SIGINT to the process group), or SIGTERM to it (a service
    manager's stop), stops the command while it reads: exit code 1, no
    traceback of any process (of a worker that waits for work either),
    every lock let go, and, run as root, the files it made given to the
    Maildir's owner as when it ends well.
    """
    # carol's is done at once, and its worker waits for more.
    maildirs = [slowMaildir(tmp_path / "alice"), slowMaildir(tmp_path / "bob")]
    maildirs.append(slowMaildir(tmp_path / "carol", size=0))
    # alice's and bob's begun with --jobs 3; alice's alone with --jobs 1.
    begun = maildirs[:2] if jobs == "3" else maildirs[:1]
    with indexing(jobs, maildirs, begun) as process:
        os.killpg(process.pid, signum)
        out, err = process.communicate(timeout=60)
    assert (process.returncode, out, err) == (1, b"", b"")
    for path in maildirs[:2]:
        assert not (path / INDEX_NAME).exists()
        if (path / LOCK_NAME).exists():
            with open(path / LOCK_NAME, "rb") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.geteuid() == 0:
                assert os.stat(path / LOCK_NAME).st_uid == 4321
    # No worker outlives the command (the multiprocessing resource
    # tracker ends once the command has: at once, not always before).
    deadline = time.monotonic() + 10
    while living(process.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert living(process.pid) == []


def living(group: int) -> list[int]:
    """
    The processes of a process group that have not ended (not zombies,
    which this container's init may leave unreaped), from /proc.
    """
    found = []
    for pid in filter(str.isdecimal, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces and ")".
        state, _, pgrp = stat[stat.rindex(")") + 2 :].split()[:3]
        if int(pgrp) == group and state != "Z":
            found.append(int(pid))
    return found


def test_workerKilled(tmp_path: Path) -> None:
    """
    A worker killed while it indexes (the OOM killer, kill -9) breaks the
    pool: each Maildir not reported on gets an error line, the command
    exits with 1, and no traceback is printed.  The pool stops the other
    workers with SIGTERM, which each takes as the end of its Maildir:
    its lock let go and, run as root, the files given to the owner first
    (or, if the pool notices the death late, they end their Maildirs).
    """
    maildirs = [slowMaildir(tmp_path / "alice"), slowMaildir(tmp_path / "bob")]
    with indexing("2", maildirs, maildirs) as process:
        # The workers: the processes of the group other than the command
        # and the resource tracker, which has no lock file open.
        victims = [
            pid
            for pid in living(process.pid)
            if any(str(maildirs[0] / LOCK_NAME) == link for link in openFiles(pid))
        ]
        assert len(victims) == 1
        os.kill(victims[0], signal.SIGKILL)
        out, err = process.communicate(timeout=60)
    problem = "a process of the command ended unexpectedly (killed?); not indexed"
    assert process.returncode == 1
    if out:
        # The pool noticed the death only at bob's result (it may not
        # watch a worker started after its last wake-up: CPython's
        # submit() wakes it before starting one, in 3.11 to 3.13), so bob
        # was indexed.
        assert re.fullmatch(
            f"{re.escape(str(maildirs[1]))}: 2 messages, \\d+ octets, {TOOK}\n", out.decode()
        )
        assert err.decode() == (
            f"popserv: error: {maildirs[0]}: {problem}\n"
            "popserv: error: 1 of 2 Maildirs not indexed\n"
        )
    else:
        assert err.decode() == (
            f"popserv: error: {maildirs[0]}: {problem}\n"
            f"popserv: error: {maildirs[1]}: {problem}\n"
            "popserv: error: 2 of 2 Maildirs not indexed\n"
        )
    with open(maildirs[1] / LOCK_NAME, "rb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    if os.geteuid() == 0:
        assert os.stat(maildirs[1] / LOCK_NAME).st_uid == 4321
        # The killed one's cleanup never ran; the next run gives it away.
        assert os.stat(maildirs[0] / LOCK_NAME).st_uid == 0


def openFiles(pid: int) -> list[str]:
    links = []
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return links
