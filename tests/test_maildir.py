"""
Tests for popserv.maildir beyond the store contract: templates, unsafe
names, file-name sizes, files moved by other programs, failures at UPDATE
and the lock across processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from synchronous import result, syncRun
from test_stores_contract import deliverToMaildir

from popserv.errors import (
    DeletionFailed,
    MaildropInUse,
    MaildropRefused,
    MessageUnavailable,
    StoreConfigError,
)
from popserv.maildir import MaildirStore, MaildirTemplate, uidFor


def store(tmp_path: Path, template: str = "{user}") -> MaildirStore:
    return MaildirStore(str(tmp_path / template), runInThread=syncRun)


class TestTemplate:
    @pytest.mark.parametrize(
        ("template", "message"),
        [
            ("", "needs a path template"),
            ("{tmp}/mail", "must contain {user} or {localpart}"),
            ("{tmp}/{domain}", "must contain {user} or {localpart}"),
            ("{tmp}/{uid}", "unknown field {uid}"),
            ("{tmp}/{user", "bad template"),
            ("/nonexistent/popserv/{user}", "directory /nonexistent/popserv does not exist"),
            ("{tmp}/{user}/../shared", "must not use . or .. after a field"),
            ("{tmp}/{domain}/./{user}", "must not use . or .. after a field"),
        ],
    )
    def test_badTemplates(self, tmp_path: Path, template: str, message: str) -> None:
        """
        Unusable templates are refused at configuration time with one line
        saying what is wrong.
        """
        with pytest.raises(StoreConfigError) as caught:
            MaildirTemplate(template.replace("{tmp}", str(tmp_path)))
        assert message in str(caught.value)
        assert "\n" not in str(caught.value)

    def test_fixedPartNormalised(self, tmp_path: Path) -> None:
        """
        "." and ".." before the first field are fine: they only name the
        fixed directory.
        """
        (tmp_path / "a").mkdir()
        t = MaildirTemplate(f"{tmp_path}/a/../{{user}}")
        assert t.root == str(tmp_path)

    def test_fields(self, tmp_path: Path) -> None:
        """
        {user}, {localpart} and {domain} are filled from the login name.
        """
        t = MaildirTemplate(f"{tmp_path}/{{domain}}/{{localpart}}/Maildir")
        assert t.pathFor("bob@example.org") == f"{tmp_path}/example.org/bob/Maildir"
        assert MaildirTemplate(f"{tmp_path}/{{user}}").pathFor("bob@x") == f"{tmp_path}/bob@x"

    def test_relativeTemplateMadeAbsolute(self, tmp_path: Path, monkeypatch: Any) -> None:
        """
        A relative template is resolved against the directory popserv
        started in, not wherever the process is later.
        """
        monkeypatch.chdir(tmp_path)
        t = MaildirTemplate("{user}")
        assert t.pathFor("alice") == str(tmp_path / "alice")

    @pytest.mark.parametrize("user", ["", ".", "..", "../etc", "a/b", "a\0b", "@example.org"])
    def test_unsafeNamesRefused(self, tmp_path: Path, user: str) -> None:
        """
        Names that would leave the template's directory are refused.
        """
        t = MaildirTemplate(f"{tmp_path}/{{domain}}/{{localpart}}")
        with pytest.raises(MaildropRefused):
            t.pathFor(user)

    def test_domainRequired(self, tmp_path: Path) -> None:
        """
        A template with {domain} refuses a login without a domain.
        """
        t = MaildirTemplate(f"{tmp_path}/{{domain}}/{{localpart}}")
        with pytest.raises(MaildropRefused):
            t.pathFor("bob")


def test_uidFor() -> None:
    """
    File names that are valid unique-ids are used as they are; others get a
    stable digest of 1 to 70 printable characters.
    """
    assert uidFor("1700000000.M1P2.host,S=10") == "1700000000.M1P2.host,S=10"
    odd = uidFor("name with spaces \u00e9")
    assert odd == uidFor("name with spaces \u00e9")
    assert 1 <= len(odd) <= 70 and " " not in odd
    assert uidFor("x" * 71) != uidFor("x" * 72)


def test_createsMaildirOnFirstLogin(tmp_path: Path) -> None:
    """
    A user without a Maildir gets an empty one, private to the server.
    """
    maildrop = result(store(tmp_path).openMaildrop("newbie"))
    assert result(maildrop.listMessages()) == []
    for subdir in ("cur", "new", "tmp"):
        assert (tmp_path / "newbie" / subdir).is_dir()
    assert (tmp_path / "newbie").stat().st_mode & 0o777 == 0o700
    maildrop.close()


def test_intermediateDirectoriesPrivate(tmp_path: Path) -> None:
    """
    Directories created between the template's fixed part and a Maildir
    (here the domain's) are private to the server too.
    """
    s = MaildirStore(str(tmp_path / "{domain}" / "{localpart}"), runInThread=syncRun)
    result(s.openMaildrop("bob@example.org")).close()
    for path in (tmp_path / "example.org", tmp_path / "example.org" / "bob"):
        assert path.stat().st_mode & 0o777 == 0o700


def test_sizeFromFileName(tmp_path: Path) -> None:
    """
    A ,W= field in the file name is the message's wire size; without it
    the file is read.  ,S= (the size on disk) is not used as the wire size.
    """
    deliverToMaildir(tmp_path / "alice", b"a\nb\n", name="1.M1.host,S=4,W=99")
    deliverToMaildir(tmp_path / "alice", b"a\nb\n", name="2.M2.host,S=4")
    maildrop = result(store(tmp_path).openMaildrop("alice"))
    assert [m.size for m in result(maildrop.listMessages())] == [99, 6]
    maildrop.close()


def test_orderByDeliveryTime(tmp_path: Path) -> None:
    """
    Messages are numbered by the delivery time at the start of their name,
    compared as numbers, cur/ and new/ together; dot files are ignored.
    """
    deliverToMaildir(tmp_path / "alice", b"3", name="1000000000.c")
    deliverToMaildir(tmp_path / "alice", b"2", name="999999999.b")
    path = deliverToMaildir(tmp_path / "alice", b"1", name="5.a")
    os.rename(path, tmp_path / "alice" / "cur" / "5.a:2,S")
    (tmp_path / "alice" / "new" / ".hidden").write_bytes(b"x")
    maildrop = result(store(tmp_path).openMaildrop("alice"))
    assert [m.uid for m in result(maildrop.listMessages())] == [
        "5.a",
        "999999999.b",
        "1000000000.c",
    ]
    maildrop.close()


def test_strayEntriesSkipped(tmp_path: Path) -> None:
    """
    A directory where a message should be is left out of the listing, and
    a message that cannot be read gives MessageUnavailable; the user's
    other mail is served either way.
    """
    deliverToMaildir(tmp_path / "alice", b"good\n", name="2.good")
    (tmp_path / "alice" / "new" / "1.stray").mkdir()
    (tmp_path / "alice" / "new" / "3.stray,W=10").mkdir()
    maildrop = result(store(tmp_path).openMaildrop("alice"))
    assert [m.uid for m in result(maildrop.listMessages())] == ["2.good", "3.stray,W=10"]
    with pytest.raises(MessageUnavailable):
        result(maildrop.openMessage(1))
    assert result(result(maildrop.openMessage(0)).read(100)) == b"good\n"
    maildrop.close()


def test_followsMovedMessage(tmp_path: Path) -> None:
    """
    A message another program moved from new/ to cur/ and flagged during
    the session can still be read and deleted.
    """
    path = deliverToMaildir(tmp_path / "alice", b"hello\n", name="1.M1.host")
    maildrop = result(store(tmp_path).openMaildrop("alice"))
    os.rename(path, tmp_path / "alice" / "cur" / "1.M1.host:2,S")
    reader = result(maildrop.openMessage(0))
    assert result(reader.read(100)) == b"hello\n"
    reader.close()
    os.rename(
        tmp_path / "alice" / "cur" / "1.M1.host:2,S", tmp_path / "alice" / "cur" / "1.M1.host:2,RS"
    )
    result(maildrop.deleteMessages([0]))
    assert os.listdir(tmp_path / "alice" / "cur") == []
    maildrop.close()


def test_vanishedMessage(tmp_path: Path) -> None:
    """
    A message removed by another program cannot be opened (a clear error),
    and deleting it counts as done.
    """
    path = deliverToMaildir(tmp_path / "alice", b"hello\n")
    maildrop = result(store(tmp_path).openMaildrop("alice"))
    path.unlink()
    with pytest.raises(MessageUnavailable):
        result(maildrop.openMessage(0))
    result(maildrop.deleteMessages([0]))
    maildrop.close()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_deletionFailureKeepsMail(tmp_path: Path) -> None:
    """
    When unlinking fails, deleteMessages fails with DeletionFailed and the
    messages stay.  (As root this cannot be provoked with permissions.)
    """
    deliverToMaildir(tmp_path / "alice", b"one\n")
    maildrop = result(store(tmp_path).openMaildrop("alice"))
    os.chmod(tmp_path / "alice" / "new", 0o500)
    try:
        with pytest.raises(DeletionFailed):
            result(maildrop.deleteMessages([0]))
    finally:
        os.chmod(tmp_path / "alice" / "new", 0o700)
    assert len(os.listdir(tmp_path / "alice" / "new")) == 1
    maildrop.close()


def test_deletionFailureFromUnlink(tmp_path: Path, monkeypatch: Any) -> None:
    """
    An unlink error other than "already gone" (here EROFS) fails the
    deletion of that message only; the others are removed and nothing else
    is touched.
    """
    a = deliverToMaildir(tmp_path / "alice", b"a\n", name="1.a")
    b = deliverToMaildir(tmp_path / "alice", b"b\n", name="2.b")
    c = deliverToMaildir(tmp_path / "alice", b"c\n", name="3.c")
    maildrop = result(store(tmp_path).openMaildrop("alice"))
    realUnlink = os.unlink

    def unlink(path: Any) -> None:
        if str(path).endswith("1.a"):
            raise OSError(30, "Read-only file system")
        realUnlink(path)

    monkeypatch.setattr(os, "unlink", unlink)
    with pytest.raises(DeletionFailed) as caught:
        result(maildrop.deleteMessages([0, 1]))
    assert caught.value.notDeleted == (0,)
    assert a.exists() and not b.exists() and c.exists()
    maildrop.close()


LOCKER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()
"""


def test_lockAcrossProcesses(tmp_path: Path) -> None:
    """
    A maildrop locked by another process is MaildropInUse; when that
    process dies its lock goes with it (no stale locks).
    """
    (tmp_path / "alice").mkdir()
    child = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(tmp_path / "alice" / "popserv.lock")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"locked\n"
        with pytest.raises(MaildropInUse):
            result(store(tmp_path).openMaildrop("alice"))
    finally:
        child.kill()
        child.wait(timeout=10)
    result(store(tmp_path).openMaildrop("alice")).close()


def test_lockWithinProcess(tmp_path: Path) -> None:
    """
    Two stores in one process over the same Maildir exclude each other too.
    """
    first = result(store(tmp_path).openMaildrop("alice"))
    with pytest.raises(MaildropInUse):
        result(store(tmp_path).openMaildrop("alice"))
    first.close()
    result(store(tmp_path).openMaildrop("alice")).close()


def test_downgradedSizes(tmp_path: Path) -> None:
    """
    Downgraded sizes are exact for files read whole and for files whose
    ,W= name gives the size (only their header is read); ASCII headers
    change nothing.
    """
    from popserv.encoder import wireSize

    utf8 = "Subject: Gr\u00fc\u00dfe\n\nbody \u00e4\n".encode()
    ascii_ = b"Subject: hi\n\nbody \xc3\xa4\n"
    deliverToMaildir(tmp_path / "alice", utf8, name="1.a")
    deliverToMaildir(tmp_path / "alice", utf8, name=f"2.b,W={wireSize(utf8)}")
    deliverToMaildir(tmp_path / "alice", ascii_, name="3.c")
    maildrop = result(store(tmp_path).openMaildrop("alice"))
    infos = result(maildrop.listMessages())
    assert [i.downgradedSize for i in infos] == [
        wireSize(utf8, downgrade=True),
        wireSize(utf8, downgrade=True),
        wireSize(ascii_),
    ]
    maildrop.close()
