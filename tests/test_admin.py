"""
Tests for popserv.admin: the popserv administration command.
"""

from __future__ import annotations

import errno
import io
import os
import re
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest

from popserv import admin
from popserv.admin import main
from popserv.passwdfile import (
    DEFAULT_SCHEME,
    GENERATED_SCHEMES,
    parsePasswdFile,
    splitScheme,
    verifyPassword,
)


def run(monkeypatch: Any, capsys: Any, *argv: str, stdin: str = "") -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def check(monkeypatch: Any, capsys: Any, *options: str) -> tuple[int, str, str]:
    """
    C{popserv check} of a configuration with C{options}, a memory checker
    and the memory store.
    """
    return run(
        monkeypatch, capsys, "check", "--", *options,
        "--auth", "memory:a:b", "--mailstore", "memory",
    )  # fmt: skip


def verifies(path: Path, user: bytes, password: str) -> bool:
    entry = parsePasswdFile(path.read_bytes())[0][user]
    return verifyPassword(entry.scheme, entry.stored, password)


def _failedRemoval(
    tmp_path: Path, monkeypatch: Any, capsys: Any, call: str, failing: Any, error: str
) -> None:
    """
    A passwd remove whose C{os} function C{call} is replaced by C{failing}
    ends with one line naming the file and C{error}, and leaves the file as
    it was, with no temporary file beside it.
    """
    path = tmp_path / "users"
    path.write_bytes(b"bob:{PLAIN}x\n")
    monkeypatch.setattr(os, call, failing)
    assert run(monkeypatch, capsys, "passwd", "remove", str(path), "bob") == (
        1, "", f"popserv: error: {path}: {error}\n"
    )  # fmt: skip
    assert [p.name for p in tmp_path.iterdir()] == ["users"]
    assert path.read_bytes() == b"bob:{PLAIN}x\n"


class TestPasswd:
    def test_addCreatesPrivateFile(self, tmp_path: Path, monkeypatch: Any, capsys: Any) -> None:
        """
        add makes a missing file with mode 0600 and an ARGON2ID entry.
        """
        path = tmp_path / "users"
        code, _, _ = run(
            monkeypatch, capsys, "passwd", "add", str(path), "a@example.org", "--password-stdin",
            stdin="s3cret\n",
        )  # fmt: skip
        assert code == 0
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.read_bytes().startswith(b"a@example.org:{ARGON2ID}$argon2id$")
        assert verifies(path, b"a@example.org", "s3cret")

    def test_editsKeepOtherLines(self, tmp_path: Path, monkeypatch: Any, capsys: Any) -> None:
        """
        add, change and remove leave comments, other users and a changed
        user's extra fields byte for byte, and keep the file's mode.
        """
        path = tmp_path / "users"
        original = (
            b"# users\r\nbob:{PLAIN}x:1000:1000::/home/bob::userdb_quota=1G\n\ncarol:{PLAIN}y"
        )
        path.write_bytes(original)
        path.chmod(0o640)
        assert run(monkeypatch, capsys, "passwd", "add", str(path), "dave", "--scheme", "plain",
                   "--password-stdin", stdin="d\n")[0] == 0  # fmt: skip
        assert path.read_bytes() == original + b"\ndave:{PLAIN}d\n"
        assert run(monkeypatch, capsys, "passwd", "change", str(path), "bob", "--scheme",
                   "SCRAM-SHA-256", "--password-stdin", stdin="new\n")[0] == 0  # fmt: skip
        lines = path.read_bytes().split(b"\n")
        assert re.fullmatch(
            rb"bob:\{SCRAM-SHA-256\}4096,[^:\r\n]+:1000:1000::/home/bob::userdb_quota=1G", lines[1]
        )
        assert [lines[0], *lines[2:]] == [
            b"# users\r",
            b"",
            b"carol:{PLAIN}y",
            b"dave:{PLAIN}d",
            b"",
        ]
        assert verifies(path, b"bob", "new")
        assert run(monkeypatch, capsys, "passwd", "remove", str(path), "bob")[0] == 0
        assert path.read_bytes() == b"# users\r\n\ncarol:{PLAIN}y\ndave:{PLAIN}d\n"
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
        assert [p.name for p in tmp_path.iterdir()] == ["users"]

    def test_refusals(self, tmp_path: Path, monkeypatch: Any, capsys: Any) -> None:
        """
        A duplicate user, an unknown user, a missing file and a bad name
        are one-line errors with exit code 1; the file is unchanged.
        """
        path = tmp_path / "users"
        path.write_bytes(b"bob:{PLAIN}x\n")
        cases = [
            (["passwd", "add", str(path), "bob", "--password-stdin"], "already exists"),
            (["passwd", "change", str(path), "eve", "--password-stdin"], "no user eve"),
            (["passwd", "remove", str(path), "eve"], "no user eve"),
            (["passwd", "list", str(tmp_path / "nope")], "no such file"),
            (["passwd", "remove", str(tmp_path / "nope"), "bob"], f"{tmp_path}/nope: no such file"),
            (
                ["passwd", "change", str(tmp_path / "nope"), "bob", "--password-stdin"],
                f"{tmp_path}/nope: no such file",
            ),
            (["passwd", "add", str(path), "a:b", "--password-stdin"], "invalid user name"),
            (["passwd", "add", str(path), "", "--password-stdin"], "invalid user name ''"),
            (["passwd", "add", str(path), "#bob", "--password-stdin"], "invalid user name '#bob'"),
            (
                ["passwd", "add", str(path), " #bob", "--password-stdin"],
                "invalid user name ' #bob'",
            ),
            (["passwd", "add", str(path), "   ", "--password-stdin"], "cannot start or end"),
            (["passwd", "add", str(path), " bob", "--password-stdin"], "invalid user name ' bob'"),
            (["passwd", "add", str(path), "eve\u00a0", "--password-stdin"], "with white space"),
            (["passwd", "add", str(path), "e\tve", "--password-stdin"], "control character"),
            (["passwd", "add", str(path), "e\x00ve", "--password-stdin"], "control character"),
            (["passwd", "add", str(path), "b\udcffd", "--password-stdin"], "is not UTF-8"),
            (["passwd", "remove", str(path), "b\udcffd"], "is not UTF-8"),
            (["passwd", "add", str(path), "new", "--password-stdin"], "empty password"),
        ]
        for argv, text in cases:
            code, _, err = run(monkeypatch, capsys, *argv, stdin="\n" if "new" in argv else "x\n")
            assert code == 1, argv
            assert err.startswith("popserv: error: ") and text in err, err
            assert err.count("\n") == 1
        assert path.read_bytes() == b"bob:{PLAIN}x\n"

    def test_oddNamesAlreadyThere(self, tmp_path: Path, monkeypatch: Any, capsys: Any) -> None:
        """
        A name that add refuses (here with a leading space), written into the
        file by other means, can still be changed and removed.
        """
        path = tmp_path / "users"
        path.write_bytes(b" bob:{PLAIN}x\nalice:{PLAIN}y\n")
        argv = ["passwd", "change", str(path), " bob", "--password-stdin", "--scheme", "PLAIN"]
        assert run(monkeypatch, capsys, *argv, stdin="z\n")[0] == 0
        assert path.read_bytes() == b" bob:{PLAIN}z\nalice:{PLAIN}y\n"
        assert run(monkeypatch, capsys, "passwd", "remove", str(path), " bob")[0] == 0
        assert path.read_bytes() == b"alice:{PLAIN}y\n"

    @pytest.mark.parametrize("action", ["add", "change", "remove", "list"])
    def test_emptyFileName(self, action: str, monkeypatch: Any, capsys: Any) -> None:
        """
        An empty file name is a usage error that says so, not an error about
        a temporary file in the working directory.
        """
        argv = ["passwd", action, ""] + ([] if action == "list" else ["bob"])
        with pytest.raises(SystemExit) as raised:
            main(argv)
        assert raised.value.code == 2
        err = capsys.readouterr().err
        assert err.endswith("argument file: a file name cannot be empty\n"), err
        assert ".popserv-passwd." not in err

    def test_editsFollowSymbolicLink(self, tmp_path: Path, monkeypatch: Any, capsys: Any) -> None:
        """
        A password file that is a symbolic link (to a file another server
        shares) is edited where it leads: the link stays a link.
        """
        (tmp_path / "real").mkdir()
        target = tmp_path / "real" / "users"
        target.write_bytes(b"alice:{PLAIN}a\n")
        target.chmod(0o640)
        link = tmp_path / "users"
        link.symlink_to(target)
        assert run(monkeypatch, capsys, "passwd", "add", str(link), "bob", "--scheme", "PLAIN",
                   "--password-stdin", stdin="b\n")[0] == 0  # fmt: skip
        assert run(monkeypatch, capsys, "passwd", "remove", str(link), "alice")[0] == 0
        assert link.is_symlink()
        assert target.read_bytes() == b"bob:{PLAIN}b\n"
        assert stat.S_IMODE(target.stat().st_mode) == 0o640
        assert sorted(p.name for p in tmp_path.rglob("*")) == ["real", "users", "users"]

    def test_concurrentEditsAllKept(self, tmp_path: Path, monkeypatch: Any) -> None:
        """
        An edit made while another is between reading and writing the file
        waits for it, rather than being overwritten by it: every user two
        'passwd add' at once added is in the file.
        """
        path = tmp_path / "users"
        path.write_bytes(b"alice:{PLAIN}a\n")
        read = admin._read
        other: list[threading.Thread] = []

        def readThenRace(name: str) -> bytes | None:
            data = read(name)
            if not other:
                # The second edit starts once the first has read the file.
                other.append(
                    threading.Thread(target=admin.passwdAdd, args=(name, "carol", "{PLAIN}c"))
                )
                other[0].start()
                other[0].join(0.5)
            return data

        monkeypatch.setattr(admin, "_read", readThenRace)
        admin.passwdAdd(str(path), "bob", "{PLAIN}b")
        other[0].join(10)
        assert sorted(path.read_bytes().splitlines()) == [
            b"alice:{PLAIN}a",
            b"bob:{PLAIN}b",
            b"carol:{PLAIN}c",
        ]

    def test_promptsTwice(self, tmp_path: Path, monkeypatch: Any, capsys: Any) -> None:
        """
        Without --password-stdin the password is asked twice on the
        terminal; two different answers change nothing.
        """
        path = tmp_path / "users"
        answers = iter(["one", "two", "same", "same"])
        prompts = []

        def getpass(prompt: str) -> str:
            prompts.append(prompt)
            return next(answers)

        monkeypatch.setattr(admin.getpass, "getpass", getpass)
        tty = io.StringIO()
        tty.isatty = lambda: True  # type: ignore[method-assign]
        monkeypatch.setattr(sys, "stdin", tty)
        assert main(["passwd", "add", str(path), "bob"]) == 1
        assert capsys.readouterr().err == "popserv: error: the passwords differ\n"
        assert not path.exists()
        assert main(["passwd", "add", str(path), "bob", "--scheme", "PLAIN"]) == 0
        assert path.read_bytes() == b"bob:{PLAIN}same\n"
        assert prompts == ["New password: ", "Retype new password: "] * 2

    def test_noTerminal(self, monkeypatch: Any, capsys: Any) -> None:
        """
        With no terminal and no --password-stdin, nothing is read.
        """
        code, _, err = run(monkeypatch, capsys, "hash")
        assert code == 1
        assert err == (
            "popserv: error: no terminal to ask for the password on; use --password-stdin\n"
        )

    def test_passwordLineEnd(self, tmp_path: Path, monkeypatch: Any, capsys: Any) -> None:
        """
        --password-stdin takes one line without its end, CRLF as well as LF;
        a line with nothing else is an empty password, refused.
        """
        path = tmp_path / "users"
        for stdin in ["s3cret\r\n", "s3cret\n", "s3cret"]:
            path.unlink(missing_ok=True)
            assert run(monkeypatch, capsys, "passwd", "add", str(path), "bob", "--scheme",
                       "PLAIN", "--password-stdin", stdin=stdin)[0] == 0  # fmt: skip
            assert path.read_bytes() == b"bob:{PLAIN}s3cret\n", stdin
        for stdin in ["\r\n", "\n", ""]:
            assert run(monkeypatch, capsys, "hash", "--password-stdin", stdin=stdin) == (
                1,
                "",
                "popserv: error: empty password\n",
            )

    def test_editIsDurable(self, tmp_path: Path, monkeypatch: Any, capsys: Any) -> None:
        """
        The new file is written out and synced to disk, in the file's own
        directory (a rename across file systems fails), before it replaces
        the old one; the old file's mode is kept exactly.
        """
        path = tmp_path / "users"
        path.write_bytes(b"bob:{PLAIN}x\n")
        path.chmod(0o641)
        synced = []
        fsync = os.fsync

        def recordingFsync(fd: int) -> None:
            # The temporary file's size as it is synced, then the directory.
            info = os.fstat(fd)
            synced.append(info.st_size if stat.S_ISREG(info.st_mode) else "directory")
            fsync(fd)

        monkeypatch.setattr(os, "fsync", recordingFsync)
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "nonexistent"))
        descriptors = len(os.listdir("/proc/self/fd"))
        assert run(monkeypatch, capsys, "passwd", "add", str(path), "dave", "--scheme",
                   "PLAIN", "--password-stdin", stdin="d\n") == (0, "", "")  # fmt: skip
        assert len(os.listdir("/proc/self/fd")) == descriptors
        assert path.read_bytes() == b"bob:{PLAIN}x\ndave:{PLAIN}d\n"
        assert synced == [len(path.read_bytes()), "directory"]
        assert stat.S_IMODE(path.stat().st_mode) == 0o641
        assert [p.name for p in tmp_path.iterdir()] == ["users"]

    def test_failedEditLeavesNothing(self, tmp_path: Path, monkeypatch: Any, capsys: Any) -> None:
        """
        An edit that fails as the file is replaced leaves the old file and
        no temporary file, and is one line; a directory that does not exist
        is named as the file given.
        """

        def replace(source: str, target: str) -> None:
            raise OSError(errno.EIO, "Input/output error", target)

        _failedRemoval(tmp_path, monkeypatch, capsys, "replace", replace, "Input/output error")
        missing = tmp_path / "nonexistent" / "users"
        assert run(monkeypatch, capsys, "passwd", "add", str(missing), "bob", "--scheme",
                   "PLAIN", "--password-stdin", stdin="x\n") == (
            1, "", f"popserv: error: {missing}: No such file or directory\n"
        )  # fmt: skip

    def test_fullDisk(self, tmp_path: Path, monkeypatch: Any, capsys: Any) -> None:
        """
        An error of a call on a descriptor, which names no file (a full
        disk's ENOSPC at fsync), is told with the file's name, and the file
        is left as it was, with no temporary file beside it.
        """

        def fsync(fd: int) -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        _failedRemoval(tmp_path, monkeypatch, capsys, "fsync", fsync, os.strerror(errno.ENOSPC))

    def test_withoutLocks(self, tmp_path: Path, monkeypatch: Any, capsys: Any) -> None:
        """
        On a file system without locks an edit goes ahead unlocked; another
        failure of the lock is an error.
        """
        path = tmp_path / "users"

        def failing(number: int) -> Any:
            def flock(fd: int, operation: int) -> None:
                raise OSError(number, os.strerror(number))

            return flock

        for number in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            monkeypatch.setattr(admin.fcntl, "flock", failing(number))
            path.unlink(missing_ok=True)
            assert run(monkeypatch, capsys, "passwd", "add", str(path), "bob", "--scheme",
                       "PLAIN", "--password-stdin", stdin="x\n") == (0, "", "")  # fmt: skip
            assert path.read_bytes() == b"bob:{PLAIN}x\n"
        monkeypatch.setattr(admin.fcntl, "flock", failing(errno.EBADF))
        assert run(monkeypatch, capsys, "passwd", "remove", str(path), "bob") == (
            1, "", f"popserv: error: {path}: cannot lock its directory for the edit:"
            f" {os.strerror(errno.EBADF)}\n"
        )  # fmt: skip
        assert path.read_bytes() == b"bob:{PLAIN}x\n"

    @pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")
    def test_editKeepsOwner(self, tmp_path: Path, monkeypatch: Any, capsys: Any) -> None:
        """
        Run as root, an edit keeps the file's owner and group (the server's
        user must still be able to read it).
        """
        path = tmp_path / "users"
        path.write_bytes(b"bob:{PLAIN}x\n")
        os.chown(path, 65534, 65533)
        assert run(monkeypatch, capsys, "passwd", "remove", str(path), "bob") == (0, "", "")
        assert path.read_bytes() == b""
        assert (path.stat().st_uid, path.stat().st_gid) == (65534, 65533)

    def test_list(self, tmp_path: Path, monkeypatch: Any, capsys: Any) -> None:
        """
        list prints names and schemes only; broken lines go to stderr.
        """
        path = tmp_path / "users"
        path.write_bytes(b"# c\nbob:{PLAIN}hunter2\nbad:{MD5}zzz\nann@x:{CRAM-MD5}" + b"0" * 64)
        code, out, err = run(monkeypatch, capsys, "passwd", "list", str(path))
        assert code == 0
        assert out == "bob PLAIN\nann@x CRAM-MD5\n"
        assert "line 3" in err
        assert "hunter2" not in out + err
        # CRLF line ends (a file edited on Windows), a name not in UTF-8.
        path.write_bytes(b"ann:{CRAM-MD5}" + b"0" * 64 + b"\r\nb\xf6b:{PLAIN}x\r\n")
        assert run(monkeypatch, capsys, "passwd", "list", str(path)) == (
            0, "ann CRAM-MD5\nb\ufffdb PLAIN\n", ""
        )  # fmt: skip


class TestHash:
    @pytest.mark.parametrize("scheme", ["ARGON2ID", "BLF-CRYPT", "SHA512-CRYPT", "SCRAM-SHA-256"])
    def test_hash(self, monkeypatch: Any, capsys: Any, scheme: str) -> None:
        """
        hash prints a {SCHEME} field that verifies the password read.
        """
        code, out, _ = run(
            monkeypatch, capsys, "hash", "--scheme", scheme, "--password-stdin", stdin="pw\n"
        )
        assert code == 0
        found, stored = splitScheme(out.strip())
        assert found == scheme
        assert verifyPassword(found, stored, "pw")

    def test_subprocess(self) -> None:
        """
        python -m popserv.admin hash reads the password from stdin and
        prints one line.
        """
        done = subprocess.run(
            [sys.executable, "-m", "popserv.admin", "hash", "--scheme", "SSHA512",
             "--password-stdin"],
            input=b"pw\n", capture_output=True, check=False,
            env={**os.environ, "PYTHONWARNINGS": "error"},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        found, stored = splitScheme(done.stdout.decode().strip())
        assert verifyPassword(found, stored, "pw")


class TestCheck:
    def test_describes(self, tmp_path: Path, monkeypatch: Any, capsys: Any) -> None:
        """
        check parses twistd popserv's options and lists listeners, checkers,
        store and policy.
        """
        users = tmp_path / "users"
        users.write_bytes(b"bob:{PLAIN}x\n")
        code, out, _ = run(
            monkeypatch, capsys, "check", "--", "--listen", "tcp:0:interface=127.0.0.1",
            "--auth", f"passwd-file:{users}", "--mailstore", "memory", "--login-delay", "60",
        )  # fmt: skip
        assert code == 0
        assert "listen: tcp:0:interface=127.0.0.1 (no TLS)" in out
        assert "auth: passwd-file: passwords in clear" in out
        assert "mailstore: memory" in out
        assert "login-delay 60 s" in out

    @pytest.mark.parametrize(
        ("scheme", "kinds"),
        [
            ("ARGON2ID", "passwords in clear (USER/PASS, PLAIN, LOGIN)"),
            (
                "CRAM-MD5",
                "passwords in clear (USER/PASS, PLAIN, LOGIN), CRAM-MD5 digests (CRAM-MD5)",
            ),
        ],
    )
    def test_describesWhatTheFileAllows(
        self, tmp_path: Path, monkeypatch: Any, capsys: Any, scheme: str, kinds: str
    ) -> None:
        """
        check says which logins the users in a passwd-file can use now.
        """
        users = tmp_path / "users"
        run(monkeypatch, capsys, "passwd", "add", str(users), "bob", "--scheme", scheme,
            "--password-stdin", stdin="pw\n")  # fmt: skip
        code, out, _ = run(
            monkeypatch, capsys, "check", "--", "--auth", f"passwd-file:{users}",
            "--mailstore", "memory",
        )  # fmt: skip
        assert code == 0
        assert f"auth: passwd-file: {kinds}\n" in out

    @pytest.mark.parametrize(
        ("flag", "said"),
        [
            ((), "refused"),
            (("--no-local-cleartext",), "refused, from this machine too"),
            (("--allow-cleartext",), "allowed"),
        ],
    )
    def test_describesCleartextPolicy(
        self, monkeypatch: Any, capsys: Any, flag: tuple[str, ...], said: str
    ) -> None:
        """
        check says where passwords in clear are refused.
        """
        code, out, _ = check(monkeypatch, capsys, *flag)
        assert code == 0
        assert f"\ncleartext on insecure connections: {said}\n" in out

    def test_describesEverything(
        self, tmp_path: Path, monkeypatch: Any, capsys: Any, ca: Any
    ) -> None:
        """
        check's whole report, line by line, for listeners of each kind
        (STLS, implicit TLS, behind a PROXY), client certificates, SCRAM
        keys, a policy file, a state directory and a timeout with a
        fraction: what an operator reads before starting the server.
        """
        server = ca.issue("localhost", ["localhost"])
        users = tmp_path / "users"
        run(monkeypatch, capsys, "passwd", "add", str(users), "bob", "--scheme",
            "SCRAM-SHA-256", "--password-stdin", stdin="pw\n")  # fmt: skip
        policy = tmp_path / "policy"
        policy.write_text("bob login-delay=5 expire=3\nann expire=NEVER\n")
        state = tmp_path / "state"
        state.mkdir()
        code, out, err = run(
            monkeypatch, capsys, "check", "--",
            "--listen", "tcp:0:interface=127.0.0.1",
            "--listen", "ssl:0:interface=127.0.0.1",
            "--listen", "proxy:tls:tcp:0:interface=127.0.0.1",
            "--listen", "proxy:tcp:0:interface=127.0.0.2",
            "--proxy-trusted", "127.0.0.1",
            "--tls-cert", str(server.certificate), "--tls-key", str(server.key),
            "--tls-client-ca", str(ca.files.certificate),
            "--auth", "cert", "--auth", f"passwd-file:{users}", "--auth", "memory:a:b",
            "--mailstore", "memory", "--expire", "7", "--policy-file", str(policy),
            "--state-dir", str(state), "--timeout", "900.5",
        )  # fmt: skip
        assert (code, err) == (0, "")
        assert out.splitlines() == [
            "listen: tcp:0:interface=127.0.0.1 (STLS available)",
            "listen: ssl:0:interface=127.0.0.1 (implicit TLS)",
            "listen: proxy:tls:tcp:0:interface=127.0.0.1 (implicit TLS, PROXY protocol)",
            "listen: proxy:tcp:0:interface=127.0.0.2 (STLS available, PROXY protocol)",
            "auth: cert: client certificates (EXTERNAL)",
            "auth: passwd-file: passwords in clear (USER/PASS, PLAIN, LOGIN),"
            " SCRAM keys (SCRAM-SHA-256)",
            "auth: memory: passwords in clear (USER/PASS, PLAIN, LOGIN),"
            " plaintext-knowing (APOP, CRAM-MD5, SCRAM)",
            "mailstore: memory",
            f"policy: login-delay none, expire 7, 2 per-user entries, state in {state}",
            "timeout: 900.5 s",
            "cleartext on insecure connections: refused",
        ]

    @pytest.mark.parametrize(
        ("flags", "said"),
        [
            ((), "login-delay none, expire not announced, 0 per-user entries"),
            (
                ("--login-delay", "0", "--expire", "0"),
                "login-delay 0 s, expire 0, 0 per-user entries",
            ),
            (("--expire", "NEVER"), "login-delay none, expire NEVER, 0 per-user entries"),
        ],
    )
    def test_describesPolicy(
        self, monkeypatch: Any, capsys: Any, flags: tuple[str, ...], said: str
    ) -> None:
        """
        check tells a login delay or expiry of 0 (announced, and enforced)
        from none, and says where logins are remembered only in memory by
        saying nothing of a state directory.
        """
        code, out, _ = check(monkeypatch, capsys, *flags)
        assert code == 0
        assert f"\npolicy: {said}\ntimeout: 600 s\n" in out

    def test_systemdSockets(self, monkeypatch: Any, capsys: Any) -> None:
        """
        The command line of the shipped systemd unit can be checked from a
        shell, as contrib/systemd/popserv.service says: the sockets systemd
        would pass are not there, and are not an error; a malformed systemd:
        description still is.
        """
        monkeypatch.delenv("LISTEN_FDS", raising=False)
        monkeypatch.delenv("LISTEN_FDNAMES", raising=False)
        code, out, err = check(monkeypatch, capsys, "--listen", "systemd:domain=INET6:index=0")
        assert (code, err) == (0, "")
        assert (
            "listen: systemd:domain=INET6:index=0 (no TLS; the socket systemd passes,"
            " not checked here)\n"
        ) in out
        code, out, err = check(monkeypatch, capsys, "--listen", "systemd:domain=INET6:index=x")
        assert code == 1
        assert "a port or number that is not a number" in err

    def test_systemdSocketMissingInTheService(self, monkeypatch: Any, capsys: Any) -> None:
        """
        Where systemd did pass sockets (LISTEN_FDS is set: check run by the
        service itself), one the command line names but that was not
        passed is an error, as it is to twistd popserv.
        """
        monkeypatch.setenv("LISTEN_FDS", "1")
        monkeypatch.delenv("LISTEN_FDNAMES", raising=False)
        code, out, err = check(monkeypatch, capsys, "--listen", "systemd:domain=INET6:index=3")
        assert (code, out) == (1, "")
        assert err == (
            "popserv: error: --listen 'systemd:domain=INET6:index=3': no such socket was"
            " passed (LISTEN_FDS and LISTEN_FDNAMES, as systemd sets them)\n"
        )

    def test_help(self, monkeypatch: Any, capsys: Any) -> None:
        """
        check -- --help shows twistd popserv's options and exits 0, as
        twistd popserv --help does: it is no configuration error.
        """
        with pytest.raises(SystemExit) as caught:
            run(monkeypatch, capsys, "check", "--", "--help")
        assert caught.value.code in (0, None)
        out, err = capsys.readouterr()
        assert "--allow-cleartext" in out
        assert err == ""

    def test_error(self, monkeypatch: Any, capsys: Any) -> None:
        """
        A configuration error is one line and exit code 1.
        """
        code, out, err = run(monkeypatch, capsys, "check", "--", "--mailstore", "memory")
        assert code == 1
        assert out == ""
        assert err.startswith("popserv: error: --auth is required")
        assert err.count("\n") == 1


def test_version(capsys: Any) -> None:
    """
    popserv --version prints popserv's version (twistd's --version prints
    Twisted's).
    """
    from popserv import __version__

    with pytest.raises(SystemExit) as caught:
        main(["--version"])
    assert caught.value.code == 0
    assert capsys.readouterr().out == f"popserv {__version__}\n"


@pytest.mark.parametrize(
    ("argv", "usage", "error"),
    [
        ([], "popserv", "the following arguments are required: command"),
        (["passwd"], "popserv passwd", "the following arguments are required: action"),
        (
            ["hash", "--scheme", "md5"],
            "popserv hash",
            "argument --scheme: invalid choice: 'MD5' (choose from "
            + ", ".join(f"'{scheme}'" for scheme in GENERATED_SCHEMES)
            + ")",
        ),
    ],
)
def test_usageErrors(argv: list[str], usage: str, error: str, capsys: Any) -> None:
    """
    A command line that names no command, or a scheme popserv cannot make,
    is a usage error (exit code 2): the usage of the command given, then
    one line saying what is wrong; never a traceback.
    """
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: {usage} [-h]")
    assert err.endswith(f"\n{usage}: error: {error}\n")


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        ([], ["Administer popserv.", "passwd edit a Dovecot passwd-file"]),
        (
            ["passwd"],
            [
                "add add a user",
                "change change a user's password",
                "remove remove a user",
                "list list users and their schemes",
            ],
        ),
        (
            ["passwd", "add"],
            [
                "--scheme {" + ",".join(GENERATED_SCHEMES) + "}",
                f"password scheme (default {DEFAULT_SCHEME})",
                "--password-stdin read the password as one line from standard input",
            ],
        ),
    ],
)
def test_helpSaysWhatEachDoes(argv: list[str], said: list[str], capsys: Any) -> None:
    """
    --help says what popserv, each command and each option does, and which
    schemes --scheme takes.
    """
    with pytest.raises(SystemExit) as caught:
        main([*argv, "--help"])
    assert caught.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert out.startswith(f"usage: {' '.join(['popserv', *argv])} [-h]")
    for text in said:
        assert text in out
