"""
Tests for popserv.maildir beyond the store contract: templates, unsafe
names, file-name sizes, files moved by other programs, failures at UPDATE,
the lock across processes, and the index that spares later logins reading
every message.
"""

from __future__ import annotations

import errno
import fcntl
import gc
import hashlib
import io
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from maildir_helpers import SYSTEM_HAS_NOWAIT, login, snapshot, store
from protocol_helpers import Session
from synchronous import ManualRunner, result, syncRun
from test_stores_contract import deliverToMaildir
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure

from popserv import maildir, maildirindex
from popserv.encoder import MessageEncoder, encodeMessage, wireSize
from popserv.errors import (
    DeletionFailed,
    MaildropInUse,
    MaildropRefused,
    MaildropUnavailable,
    MessageUnavailable,
    StoreConfigError,
)
from popserv.filereader import FileReader
from popserv.maildir import LOCK_NAME, MaildirStore, MaildirTemplate, uidFor
from popserv.maildirindex import INDEX_NAME, TEMP_NAME, MaildirIndex, lookup
from popserv.transfer import CHUNK_SIZE, MessageTransfer, ShorterThanListed


class TestTemplate:
    @pytest.mark.parametrize(
        ("template", "message"),
        [
            ("", "needs a path template"),
            ("{tmp}/mail", "must contain {user} or {localpart}"),
            ("{tmp}/{domain}", "must contain {user} or {localpart}"),
            ("{tmp}/{uid}", "unknown field {uid}"),
            ("{tmp}/{user}/{uid}", "unknown field {uid}"),
            # A positional field: format(**values) failed every login.
            ("{tmp}/{}/{user}", "unknown field {}"),
            ("{tmp}/{user}{0}", "unknown field {0}"),
            ("{tmp}/{user", "bad template"),
            ("/nonexistent/popserv/{user}", "directory /nonexistent/popserv does not exist"),
            ("{tmp}/{user}/../shared", "must not use . or .. after a field"),
            ("{tmp}/{domain}/./{user}", "must not use . or .. after a field"),
            ("{tmp}/{{a}}/{user}/..", "must not use . or .. after a field"),
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

    @pytest.mark.parametrize(
        ("field", "written"),
        [
            ("user", "{user!r}"),
            ("user", "{user!s}"),
            ("user", "{user:>10}"),
            ("localpart", "{localpart:.2}"),
            ("user", "{user!r:>10}"),
            ("user", "{user:{domain}}"),
            ("user", "{user:d}"),
        ],
    )
    def test_conversionsAndFormatSpecsRefused(
        self, tmp_path: Path, field: str, written: str
    ) -> None:
        """
        A field with a conversion or a format spec is refused at start-up,
        naming it: filled in, it would be another name than the login's
        ("{localpart:.2}/{user}" would put "..x" in the directory above the
        template's), or fail at every login ("{user:d}").
        """
        # After another field: each is checked, not only the first.
        template = f"{tmp_path}/{{domain}}/{written}"
        with pytest.raises(StoreConfigError) as caught:
            MaildirTemplate(template)
        assert str(caught.value) == (
            f"maildir: {written} in {template!r}: a field takes no conversion or"
            f" format spec; write {{{field}}}"
        )
        # "{user:}" has an empty spec: it is "{user}".
        assert MaildirTemplate(f"{tmp_path}/{{user:}}").pathFor("bob") == f"{tmp_path}/bob"

    def test_firstUnknownFieldNamed(self, tmp_path: Path) -> None:
        """
        Of several unknown fields, the error names the first in the
        template.
        """
        template = f"{tmp_path}/{{uid}}/{{gid}}/{{user}}"
        with pytest.raises(StoreConfigError) as caught:
            MaildirTemplate(template)
        assert str(caught.value) == (
            f"maildir: unknown field {{uid}} in {template!r};"
            " use {user}, {localpart} or {domain}"
        )

    @pytest.mark.parametrize(
        "template", ["{tmp}/u\0-{user}", "{tmp}/{user}/Mail\0dir", "\0{tmp}/{user}"]
    )
    def test_nulRefused(self, tmp_path: Path, template: str) -> None:
        """
        A template with a NUL (which only an embedding program can pass) is
        refused when the store is made, not at every login, where the path
        it makes fails every system call.
        """
        template = template.replace("{tmp}", str(tmp_path))
        with pytest.raises(StoreConfigError) as caught:
            MaildirTemplate(template)
        assert str(caught.value) == f"maildir: template {template!r} holds a NUL character"

    def test_fixedDirectoryThatIsAFile(self, tmp_path: Path) -> None:
        """
        A fixed directory that is a file is refused as one, not as missing.
        """
        (tmp_path / "mail").write_bytes(b"")
        with pytest.raises(StoreConfigError) as caught:
            MaildirTemplate(f"{tmp_path}/mail/{{user}}")
        assert str(caught.value) == f"maildir: {tmp_path}/mail is not a directory"

    def test_fixedDirectoryALinkToNothing(self, tmp_path: Path) -> None:
        """
        A fixed directory that is a link to nothing (a file system not
        mounted) is refused as missing, which the directory it names is.
        """
        (tmp_path / "mail").symlink_to(tmp_path / "unmounted")
        with pytest.raises(StoreConfigError) as caught:
            MaildirTemplate(f"{tmp_path}/mail/{{user}}")
        assert str(caught.value) == f"maildir: directory {tmp_path}/mail does not exist"

    @pytest.mark.parametrize("above", ["missing", "file"])
    def test_fixedPartResolvedAsWritten(self, tmp_path: Path, above: str) -> None:
        """
        The fixed directory must exist as written: "{tmp}/missing/../{user}"
        is refused as the system resolves it, although "{tmp}" exists (it
        was taken, and the first login made "missing"), and so is
        "{tmp}/file/../{user}" (taken, and every login failed).
        """
        (tmp_path / "file").write_bytes(b"")
        with pytest.raises(StoreConfigError) as caught:
            MaildirTemplate(f"{tmp_path}/{above}/../{{user}}")
        assert str(caught.value) == f"maildir: directory {tmp_path}/{above}/.. does not exist"
        assert [p.name for p in tmp_path.iterdir()] == ["file"]

    def test_fixedPartNormalised(self, tmp_path: Path) -> None:
        """
        "." and ".." before the first field are fine: they only name the
        fixed directory.
        """
        (tmp_path / "a").mkdir()
        t = MaildirTemplate(f"{tmp_path}/a/../{{user}}")
        assert t.root == str(tmp_path)
        # Also after a brace, written twice ("{{"): they were taken for
        # the variable part, and the template refused.
        (tmp_path / "{a}").mkdir()
        t = MaildirTemplate(f"{tmp_path}/{{{{a}}}}/./{{user}}")
        assert (t.root, t.pathFor("bob")) == (str(tmp_path / "{a}"), f"{tmp_path}/{{a}}/./bob")
        t = MaildirTemplate(f"{tmp_path}/{{{{a}}}}/../{{user}}")
        assert (t.root, t.pathFor("bob")) == (str(tmp_path), f"{tmp_path}/{{a}}/../bob")
        # Each brace of the fixed part counts twice where the variable part
        # starts: with one counted, "/../" would be cut to "./" before the
        # field.
        (tmp_path / "{{a}}").mkdir()
        t = MaildirTemplate(str(tmp_path) + "/{{{{a}}}}/../{user}")
        assert (t.root, t.pathFor("bob")) == (str(tmp_path), f"{tmp_path}/{{{{a}}}}/../bob")

    def test_fields(self, tmp_path: Path) -> None:
        """
        {user}, {localpart} and {domain} are filled from the login name.
        """
        t = MaildirTemplate(f"{tmp_path}/{{domain}}/{{localpart}}/Maildir")
        assert t.pathFor("bob@example.org") == f"{tmp_path}/example.org/bob/Maildir"
        assert MaildirTemplate(f"{tmp_path}/{{user}}").pathFor("bob@x") == f"{tmp_path}/bob@x"
        # Split at the last "@": the domain has none.
        assert t.pathFor("a@b@example.org") == f"{tmp_path}/example.org/a@b/Maildir"

    def test_fieldWithinAName(self, tmp_path: Path) -> None:
        """
        A field may follow fixed text in the same name: the fixed directory
        is the one that name is in.
        """
        t = MaildirTemplate(f"{tmp_path}/u-{{user}}")
        assert (t.root, t.pathFor("bob")) == (str(tmp_path), f"{tmp_path}/u-bob")

    def test_relativeTemplateMadeAbsolute(self, tmp_path: Path, monkeypatch: Any) -> None:
        """
        A relative template is resolved against the directory popserv
        started in, not wherever the process is later.
        """
        monkeypatch.chdir(tmp_path)
        t = MaildirTemplate("{user}")
        assert t.pathFor("alice") == str(tmp_path / "alice")

    def test_relativeTemplateUnderBraces(self, tmp_path: Path, monkeypatch: Any) -> None:
        """
        Braces in the name of the directory popserv started in are that
        directory's name, not fields, when a relative template is resolved
        against it.
        """
        started = tmp_path / "{x}}"
        started.mkdir()
        monkeypatch.chdir(started)
        t = MaildirTemplate("mail-{user}")
        assert (t.root, t.pathFor("alice")) == (str(started), str(started / "mail-alice"))

    @pytest.mark.parametrize("user", ["", ".", "..", "../etc", "a/b", "a\0b", "@example.org"])
    def test_unsafeNamesRefused(self, tmp_path: Path, user: str) -> None:
        """
        Names that would leave the template's directory are refused.
        """
        t = MaildirTemplate(f"{tmp_path}/{{domain}}/{{localpart}}")
        with pytest.raises(MaildropRefused):
            t.pathFor(user)

    @pytest.mark.parametrize(
        ("template", "user"),
        [
            ("{user}", "."),
            ("{user}", ".."),
            ("{user}", ""),
            ("{user}", "a/b"),
            ("{user}", "a\0b"),
            ("{localpart}", ".."),
            ("{localpart}", "..@example.org"),
            ("{localpart}", ".@example.org"),
            ("{domain}/{localpart}", "bob@.."),
            ("{domain}/{localpart}", "bob@."),
            ("{domain}/{localpart}", "bob@a/b"),
        ],
    )
    def test_unsafeFieldValuesRefused(self, tmp_path: Path, template: str, user: str) -> None:
        """
        Each field a template uses is checked on its own, whatever the
        others: "." and ".." would name the template's directory or its
        parent, "/" and NUL another path.
        """
        t = MaildirTemplate(f"{tmp_path}/{template}")
        with pytest.raises(MaildropRefused):
            t.pathFor(user)

    def test_localpartOfABareName(self, tmp_path: Path) -> None:
        """
        A login name without "@" is all local part, with no domain.
        """
        t = MaildirTemplate(f"{tmp_path}/{{localpart}}/Maildir")
        assert t.pathFor("bob") == f"{tmp_path}/bob/Maildir"
        assert t.pathFor("bob@example.org") == f"{tmp_path}/bob/Maildir"

    def test_domainRequired(self, tmp_path: Path) -> None:
        """
        A template with {domain} refuses a login without a domain.
        """
        t = MaildirTemplate(f"{tmp_path}/{{domain}}/{{localpart}}")
        with pytest.raises(MaildropRefused) as caught:
            t.pathFor("bob")
        # The text of the -ERR line says why.
        assert caught.value.text == "Maildrop not available: user name has no domain"

    @settings(max_examples=500, deadline=None)
    @given(
        st.sampled_from(
            [
                "{user}",
                "{localpart}",
                "{domain}/{localpart}/Maildir",
                "{localpart}.{domain}",
                ".{user}.",
                "{domain}{localpart}/{user}",
            ]
        ),
        st.text(alphabet="./@a\0", max_size=8),
    )
    def test_acceptedNamesStayInside(self, template: str, user: str) -> None:
        """
        Whatever the login name, a path it is given is below the template's
        directory, as many names down as the template has, with no "." or
        ".." name, no empty one and no NUL: the names most likely to get out
        (dots, slashes, "@", NUL) either stay in or are refused.
        """
        # pathFor touches no file: any existing directory will do.
        root = os.path.dirname(os.path.abspath(__file__))
        t = MaildirTemplate(f"{root}/{template}")
        try:
            path = t.pathFor(user)
        except MaildropRefused:
            return
        # (A NUL would fail every system call with ValueError, not OSError.)
        assert os.path.normpath(path) == path and "\0" not in path
        names = path.removeprefix(root + os.sep).split(os.sep)
        assert path.startswith(root + os.sep) and len(names) == template.count("/") + 1


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


def test_allUIDsAgreesWithUidFor() -> None:
    """
    The check of all of a listing's names at once (each "/"-joined
    directory and the names) says they are their own UIDLs exactly when
    uidFor leaves each as it is: a name of the digest form is caught first
    in a directory or after another name, and names of 70 octets pass
    where one of 71 or an empty one does not.
    """
    digest = uidFor("1700000000." + "n" * 70)
    cases = [
        [],
        ["1.a"],
        ["1.a", "2.b"],
        [digest],
        ["1.a", digest],
        [digest, "1.a"],
        ["1.a", "x" + digest[1:-1]],
        ["1." + "a" * 68],
        ["1." + "a" * 69],
        ["9.b", "1." + "a" * 69],
        ["1." + "a" * 69, "9.b"],
        [""],
        ["9.b", ""],
        ["1.a", "2 b"],
        ["1.\u00e9"],
    ]
    for names in cases:
        valid = all(uidFor(name) == name for name in names)
        assert maildir._allUIDs(["/".join(names)], names) is valid, names
        split = [names[:1], names[1:]]
        assert maildir._allUIDs(["/".join(part) for part in split], names) is valid, names


def test_digestNamesHaveTheirOwnUIDs(tmp_path: Path) -> None:
    """
    A file named like the digest UIDL of another file's name gets a digest
    of its own, so the two never share a UIDL (RFC 1939 section 7), at the
    first login and when the index vouches for the listing.
    """
    long = "1700000000." + "n" * 70
    deliverToMaildir(tmp_path / "alice", b"a\n", name=long)
    deliverToMaildir(tmp_path / "alice", b"b\n", name=uidFor(long))
    deliverToMaildir(tmp_path / "alice", b"c\n", name="1800000000.plain")
    for _ in range(2):
        maildrop = result(store(tmp_path).openMaildrop("alice"))
        uids = [m.uid for m in result(maildrop.listMessages())]
        maildrop.close()
        assert len(set(uids)) == 3 and uidFor(long) in uids and "1800000000.plain" in uids
    # Once the other file is gone, the one named like its digest keeps the
    # UIDL it had: it does not take over the UIDL of the message removed.
    os.unlink(tmp_path / "alice" / "new" / long)
    for _ in range(2):
        assert [uid for uid, _, _ in snapshot(store(tmp_path))] == [
            uidFor(uidFor(long)),
            "1800000000.plain",
        ]


def test_createsMaildirOnFirstLogin(tmp_path: Path) -> None:
    """
    A user without a Maildir gets an empty one, private to the server.
    """
    maildrop = result(store(tmp_path).openMaildrop("newbie"))
    assert result(maildrop.listMessages()) == []
    for subdir in ("cur", "new", "tmp"):
        assert (tmp_path / "newbie" / subdir).is_dir()
        assert (tmp_path / "newbie" / subdir).stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "newbie").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "newbie" / LOCK_NAME).stat().st_mode & 0o777 == 0o600
    maildrop.close()


def test_completesMaildirAtFirstLogin(tmp_path: Path) -> None:
    """
    A Maildir that a delivery agent made with new/ only gets cur/ and tmp/
    at its first login (the one that creates popserv.lock); its mail is
    served.
    """
    (tmp_path / "alice" / "new").mkdir(parents=True)
    (tmp_path / "alice" / "new" / "1.M1.host").write_bytes(b"hello\n")
    maildrop = result(store(tmp_path).openMaildrop("alice"))
    assert [m.size for m in result(maildrop.listMessages())] == [7]
    for subdir in ("cur", "new", "tmp"):
        assert (tmp_path / "alice" / subdir).is_dir()
    assert (tmp_path / "alice" / LOCK_NAME).is_file()
    maildrop.close()


@pytest.mark.parametrize(("removed", "kept"), [("cur", "new"), ("new", "cur")])
def test_subdirectoryRemovedLater(tmp_path: Path, removed: str, kept: str) -> None:
    """
    At later logins a missing new/ or cur/ is an empty one: the messages
    in the other are served, and nothing is re-created behind the back of
    whoever removed it.
    """
    result(store(tmp_path).openMaildrop("alice")).close()
    os.rmdir(tmp_path / "alice" / removed)
    (tmp_path / "alice" / kept / "1.M1.host").write_bytes(b"hello\n")
    maildrop = result(store(tmp_path).openMaildrop("alice"))
    assert [m.size for m in result(maildrop.listMessages())] == [7]
    assert not (tmp_path / "alice" / removed).exists()
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


@pytest.mark.skipif(os.geteuid() != 0, reason="only root may give a directory away")
def test_madeDirectoriesTakeTheirPlacesOwner(tmp_path: Path) -> None:
    """
    A server running as root gives each directory it makes at a first
    login the owner and group of the directory it is made in: a Maildir in
    a user's home is the user's, and one under a spool owned by the
    delivery agent's user is that user's, as Postfix's local(8) and
    virtual(8) need to deliver to it (they bounced or deferred every
    message to a root-owned one: "create maildir file ...: Permission
    denied").  popserv.lock stays the server's; a directory that exists
    keeps its owner.
    """
    home = tmp_path / "home" / "carol"
    home.mkdir(parents=True)
    os.chown(home, 4242, 4343)
    s = MaildirStore(str(tmp_path / "home" / "{user}" / "Maildir"), runInThread=syncRun)
    result(s.openMaildrop("carol")).close()
    maildir = home / "Maildir"
    for path in [maildir, *(maildir / d for d in ["cur", "new", "tmp"])]:
        assert (path.stat().st_uid, path.stat().st_gid) == (4242, 4343)
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
    lock = (maildir / LOCK_NAME).stat()
    assert (lock.st_uid, lock.st_gid) == (os.geteuid(), os.getegid())
    assert (home.stat().st_uid, home.stat().st_gid) == (4242, 4343)

    spool = tmp_path / "vmail"
    spool.mkdir()
    os.chown(spool, 5000, 5001)
    s = MaildirStore(str(spool / "{domain}" / "{localpart}"), runInThread=syncRun)
    result(s.openMaildrop("bob@example.org")).close()
    bob = spool / "example.org" / "bob"
    for path in [bob.parent, bob, *(bob / d for d in ["cur", "new", "tmp"])]:
        assert (path.stat().st_uid, path.stat().st_gid) == (5000, 5001)


def test_madeInSharedDirectoryWarns(tmp_path: Path) -> None:
    """
    A Maildir made at a first login in a directory every user may write
    (Postfix's mail_spool_directory, mode 1777) is not given to that
    directory's owner, which says nothing of whose it is; it stays the
    server's, and the log says that a delivery agent writing as the user
    cannot deliver to it (Postfix bounced such mail without a word from
    popserv).  The directories made inside it say nothing.
    """
    spool = tmp_path / "maildirs"
    spool.mkdir()
    spool.chmod(0o1777)
    s = MaildirStore(str(spool / "{user}"), runInThread=syncRun)
    with capturedLogs() as events:
        result(s.openMaildrop("alice")).close()
    assert [formatEvent(e) for e in events] == [
        f"Made {str(spool / 'alice')!r} in a directory every user may write; it is the"
        f" server's (uid {os.geteuid()}), so a delivery agent that writes as the user"
        " cannot deliver to it: make users' Maildirs there beforehand"
    ]
    assert (spool / "alice").stat().st_uid == os.geteuid()
    with capturedLogs() as events:
        result(s.openMaildrop("alice")).close()  # made already: no word
    assert events == []


@pytest.mark.skipif(os.geteuid() != 0, reason="only root may give a directory away")
def test_directoriesKeptWhereTheyCannotBeGivenAway(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    A server that may not give the directories it makes to the owner of
    the place they are made in (without root: faked) keeps them, and the
    first login gets in, as before.
    """
    given: list[tuple[int, int]] = []

    def fchown(fd: int, uid: int, gid: int) -> None:
        given.append((uid, gid))
        raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(os, "fchown", fchown)
    os.chown(tmp_path, 4242, 4343)
    maildrop, infos = login(store(tmp_path))
    maildrop.close()
    assert infos == []
    assert given == [(4242, 4343)]  # alice, made in tmp_path; not her three
    for path in [tmp_path / "alice", *(tmp_path / "alice" / d for d in ["cur", "new", "tmp"])]:
        assert (path.stat().st_uid, path.stat().st_gid) == (os.geteuid(), os.getegid())


@pytest.mark.skipif(os.geteuid() != 0, reason="only root may give a directory away")
def test_directoryReplacedByALinkNotGivenAway(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    A directory the first login made, replaced by a symbolic link before
    it is given to the owner of the place it is in (that user may rename
    what is in their home), is not followed: the login is unavailable,
    and the link's target keeps its owner.
    """
    home = tmp_path / "home"
    home.mkdir()
    os.chown(home, 4242, 4343)
    # (In a place of another owner's, whose a link followed would give it.)
    target = tmp_path / "other" / "servers"
    target.mkdir(parents=True)
    os.chown(target.parent, 6161, 6262)
    realMkdir = os.mkdir

    def mkdir(path: str, mode: int = 0o777) -> None:
        realMkdir(path, mode)
        if path == str(home / "Maildir"):
            os.rename(path, tmp_path / "moved")
            os.symlink(target, path)

    monkeypatch.setattr(os, "mkdir", mkdir)
    s = MaildirStore(str(tmp_path / "{user}" / "Maildir"), runInThread=syncRun)
    with capturedLogs(), pytest.raises(MaildropUnavailable):
        result(s.openMaildrop("home"))
    assert (target.stat().st_uid, target.stat().st_gid) == (os.geteuid(), os.getegid())


@pytest.mark.skipif(os.geteuid() != 0, reason="only root may give a directory away")
def test_directoryReplacedByAnothersNotGivenAway(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    A directory the first login made, replaced before it is given away by
    a directory that is not the server's (another user's), keeps its
    owner: the server gives away only its own.
    """
    home = tmp_path / "home"
    home.mkdir()
    os.chown(home, 4242, 4343)
    realMkdir = os.mkdir

    def mkdir(path: str, mode: int = 0o777) -> None:
        realMkdir(path, mode)
        if path == str(home / "Maildir"):
            os.chown(path, 5151, 5252)  # as if swapped for another's

    monkeypatch.setattr(os, "mkdir", mkdir)
    s = MaildirStore(str(tmp_path / "{user}" / "Maildir"), runInThread=syncRun)
    result(s.openMaildrop("home")).close()
    maildir = (home / "Maildir").stat()
    assert (maildir.st_uid, maildir.st_gid) == (5151, 5252)
    cur = (home / "Maildir" / "cur").stat()
    assert (cur.st_uid, cur.st_gid) == (5151, 5252)


def test_firstLoginMakesWhatIsMissing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A first login makes the directories missing between the template's
    fixed part and the Maildir, however many, each mode 0700, and the
    Maildir's three; it leaves alone one that exists (the domain's, at a
    second user's first login).  A later login makes none.
    """
    made: list[tuple[str, int]] = []
    realMkdir = os.mkdir

    def mkdir(path: str, mode: int = 0o777) -> None:
        made.append((os.path.relpath(path, tmp_path), mode))
        realMkdir(path, mode)

    monkeypatch.setattr(os, "mkdir", mkdir)
    s = MaildirStore(str(tmp_path / "{domain}" / "{localpart}" / "Maildir"), runInThread=syncRun)
    result(s.openMaildrop("bob@example.org")).close()
    subdirs = ["cur", "new", "tmp"]
    bobs = ["example.org/bob", "example.org/bob/Maildir"]
    assert made == [
        (path, 0o700) for path in ["example.org", *bobs, *(f"{bobs[1]}/{d}" for d in subdirs)]
    ]
    made.clear()
    result(s.openMaildrop("carol@example.org")).close()
    carols = ["example.org/carol", "example.org/carol/Maildir"]
    assert made == [(path, 0o700) for path in [*carols, *(f"{carols[1]}/{d}" for d in subdirs)]]
    made.clear()
    result(s.openMaildrop("bob@example.org")).close()
    assert made == []


def test_firstLoginMakesADeepPath(tmp_path: Path) -> None:
    """
    However many names the template puts between its fixed directory and
    the Maildir, a first login makes each one missing (a bound on the
    climb of three or five failed this login).
    """
    s = MaildirStore(
        str(tmp_path / "{domain}" / "a" / "b" / "c" / "{localpart}" / "Maildir"),
        runInThread=syncRun,
    )
    result(s.openMaildrop("bob@example.org")).close()
    maildir = tmp_path / "example.org" / "a" / "b" / "c" / "bob" / "Maildir"
    assert all((maildir / d).is_dir() for d in ["cur", "new", "tmp"])
    made = [maildir.parents[n] for n in range(5)]
    assert [stat.S_IMODE(p.stat().st_mode) for p in [*made, maildir]] == [0o700] * 6


def test_directoryMadeMeanwhileIsUsed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A directory that another program makes between the first login's look
    and its own mkdir (another user's first login, making the same
    domain's directory) is used: the login gets in.
    """
    realMkdir = os.mkdir
    domain = str(tmp_path / "example.org")

    def mkdir(path: str, mode: int = 0o777) -> None:
        if path == domain:
            realMkdir(path, 0o755)  # the other program's
        realMkdir(path, mode)

    monkeypatch.setattr(os, "mkdir", mkdir)
    s = MaildirStore(str(tmp_path / "{domain}" / "{localpart}"), runInThread=syncRun)
    maildrop, infos = login(s, "bob@example.org")
    maildrop.close()
    assert infos == []
    assert (tmp_path / "example.org" / "bob" / "new").is_dir()


@pytest.mark.parametrize(
    "template", ["mail/{user}", "mail//{user}", "/mail/{user}", "up/../mail/{user}"]
)
def test_missingFixedDirectoryNotMade(tmp_path: Path, template: str) -> None:
    """
    A template's fixed directory that is gone at a login (removed, or its
    file system not mounted) is not made again below whatever is there,
    however the template spells it: the login is unavailable, logged, and
    nothing is created.
    """
    (tmp_path / "up").mkdir()
    (tmp_path / "mail").mkdir()
    s = MaildirStore(f"{tmp_path}/{template}", runInThread=syncRun)
    assert s.template.root == str(tmp_path / "mail")
    (tmp_path / "mail").rmdir()
    with capturedLogs() as events, pytest.raises(MaildropUnavailable):
        result(s.openMaildrop("alice"))
    assert [formatEvent(e) for e in events] == [
        f"Maildrop of 'alice' unavailable: [Errno {errno.ENOENT}] {os.strerror(errno.ENOENT)}:"
        f" '{s.template.pathFor('alice')}'"
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["up"]


@pytest.mark.parametrize("file", ["example.org", "example.org/bob"])
def test_maildirUnderAFileUnavailable(tmp_path: Path, file: str) -> None:
    """
    A login whose Maildir, or a directory above it, is a regular file is
    unavailable, logged with the path that failed; the file is left as it
    was.
    """
    (tmp_path / file).parent.mkdir(exist_ok=True)
    (tmp_path / file).write_bytes(b"not a directory\n")
    s = MaildirStore(str(tmp_path / "{domain}" / "{localpart}"), runInThread=syncRun)
    with capturedLogs() as events, pytest.raises(MaildropUnavailable):
        result(s.openMaildrop("bob@example.org"))
    assert [formatEvent(e) for e in events] == [
        f"Maildrop of 'bob@example.org' unavailable: [Errno {errno.ENOTDIR}]"
        f" {os.strerror(errno.ENOTDIR)}: '{tmp_path / 'example.org' / 'bob' / LOCK_NAME}'"
    ]
    assert (tmp_path / file).read_bytes() == b"not a directory\n"


@pytest.mark.parametrize("delivered", [False, True])
def test_maildirThatCannotBeMadeUnavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, delivered: bool
) -> None:
    """
    A first login that cannot make a new user's Maildir, or the cur/ and
    tmp/ missing from one a delivery agent made (the directory is not
    writable by the server's user: faked, as root may write anywhere), is
    unavailable, logged with the directory it could not make.  It leaves
    no popserv.lock, so a later login makes them, once it can, and gets in.
    """
    if delivered:
        deliverToMaildir(tmp_path / "alice", b"a\n", name="1.a")
        (tmp_path / "alice" / "cur").rmdir()
        (tmp_path / "alice" / "tmp").rmdir()
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))

    def mkdir(path: str, mode: int = 0o777) -> None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)

    s = store(tmp_path)
    with monkeypatch.context() as patched:
        patched.setattr(os, "mkdir", mkdir)
        with capturedLogs() as events, pytest.raises(MaildropUnavailable):
            result(s.openMaildrop("alice"))
    failed = tmp_path / "alice" / "cur" if delivered else tmp_path / "alice"
    assert [formatEvent(e) for e in events] == [
        f"Maildrop of 'alice' unavailable: [Errno {errno.EACCES}] {os.strerror(errno.EACCES)}:"
        f" '{failed}'"
    ]
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before
    maildrop, infos = login(s)
    maildrop.close()
    assert [i.uid for i in infos] == (["1.a"] if delivered else [])
    assert sorted(p.name for p in (tmp_path / "alice").iterdir()) == sorted(
        ["cur", "new", "tmp", LOCK_NAME] + ([INDEX_NAME] if delivered else [])
    )


def test_sizeFromFileName(tmp_path: Path) -> None:
    """
    A ,W= field in the file name (Dovecot's) gives the wire size of a
    message too large to read whole at login, plus the CRLF that ends an
    unterminated last line; a message read whole is counted, whatever its
    name says, and so is one whose ,W= no file of its size can have.  ,S=
    (the size on disk) is never used as the wire size.
    """
    large = b"line\n" * 20_000
    wire = len(large) + 20_000
    deliverToMaildir(tmp_path / "alice", large, name=f"1.M1.host,S=100000,W={wire}")
    deliverToMaildir(tmp_path / "alice", large + b"end", name=f"2.M2.host,W={wire + 3}")
    deliverToMaildir(tmp_path / "alice", large, name="3.M3.host,W=99")
    deliverToMaildir(tmp_path / "alice", b"a\nb", name="4.M4.host,S=3,W=99")
    deliverToMaildir(tmp_path / "alice", b"a\nb\n", name="5.M5.host,S=4")
    maildrop = result(store(tmp_path).openMaildrop("alice"))
    assert [m.size for m in result(maildrop.listMessages())] == [
        wire,
        wire + 5,
        wire,
        6,
        6,
    ]
    maildrop.close()


def test_sizeFromFileNameSparesReading(tmp_path: Path, monkeypatch: Any) -> None:
    """
    A large message whose name gives its wire size (,W=) is not read
    through at login: only its start, for its header, and nothing after the
    read that ended the header (there was one 256 KB read more).  So is one
    stored with CRLF line endings, whose wire size is its size on disk, and
    one of blank lines only, whose wire size is twice that; in new/ as in
    cur/, with flags.
    """
    large = b"Subject: x\n\n" + b"line\n" * 200_000
    crlf = large.replace(b"\n", b"\r\n")
    deliverToMaildir(tmp_path / "alice", large, name=f"1.M1.host,W={wireSize(large)}")
    path = deliverToMaildir(tmp_path / "alice", crlf, name=f"2.M2.host,W={len(crlf)}")
    os.rename(path, tmp_path / "alice" / "cur" / f"{path.name}:2,S")
    # Blank lines only: twice its size on disk, the most a name may give.
    deliverToMaildir(tmp_path / "alice", b"\n" * 100_000, name="3.M3.host,W=200000")
    octets: list[int] = []
    realRead = os.read

    def read(fd: int, n: int) -> bytes:
        data = realRead(fd, n)
        octets.append(len(data))
        return data

    # (The first read of each file is a readv or a preadv, not counted: it
    # holds the header of both.)
    monkeypatch.setattr(os, "read", read)
    s = store(tmp_path)
    assert snapshot(s) == [
        ("1.M1.host,W=" + str(wireSize(large)), wireSize(large), wireSize(large)),
        ("2.M2.host,W=" + str(len(crlf)), len(crlf), len(crlf)),
        ("3.M3.host,W=200000", 200_000, 200_000),
    ]
    assert octets == []
    # The index keeps each one's size on disk, not the octets read: opening
    # them finds nothing changed.
    monkeypatch.undo()
    maildrop, _ = login(s)
    with capturedLogs() as events:
        for index in range(3):
            result(maildrop.openMessage(index)).close()
    maildrop.close()
    assert [formatEvent(e) for e in events] == []


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


def test_sameSecondOrderedByMicroseconds(tmp_path: Path) -> None:
    """
    Messages delivered in one second are numbered by the microseconds
    their names carry after "M" (as dovecot-lda and Postfix write them),
    compared as numbers, as Dovecot numbers them; a name without them
    counts as 0, and equal times fall back to the names.
    """
    names = [
        "1700000000.M6303P1.host",
        "1700000000.M36694P2.host",
        "1700000000.V803I1bM114294.host",
        "1700000000.M999999P1.host",
        "1700000001.2_1.M9host",  # an "M" after the middle part is not one
        "1700000001.M5P4.host",
        "1700000001.M5P5.host",
        "1700000002.M.host",
        "1700000002.M1P1.host",
    ]
    for name in reversed(names):
        deliverToMaildir(tmp_path / "alice", b"m\n", name=name)
    assert [uid for uid, _, _ in snapshot(store(tmp_path))] == names


@pytest.mark.parametrize("order", [sorted, lambda names: sorted(names, reverse=True)])
def test_dotFilesIgnoredWhereverListed(tmp_path: Path, monkeypatch: Any, order: Any) -> None:
    """
    Dot files in new/ and cur/ are no messages, whether the directory lists
    them first, last or between messages; one in cur/ may carry flags.
    """
    alice = tmp_path / "alice"
    for name in ("1.a", "2.b"):
        deliverToMaildir(alice, b"x", name=name)
    os.rename(alice / "new" / "2.b", alice / "cur" / "2.b:2,S")
    for subdir in ("new", "cur"):
        (alice / subdir / ".hidden").write_bytes(b"x")
        (alice / subdir / ".flagged:2,S").write_bytes(b"x")
    real = os.listdir
    monkeypatch.setattr(os, "listdir", lambda path=".": order(real(path)))
    maildrop = result(store(tmp_path).openMaildrop("alice"))
    assert [m.uid for m in result(maildrop.listMessages())] == ["1.a", "2.b"]
    maildrop.close()


def test_headTooLongForATimeCountsAsNone(tmp_path: Path) -> None:
    """
    Digits at the start of a name that are too many for a delivery time
    (20 or more) count as no time, time 0: such a name comes first, with
    the names that start with no digits and those of time 0, ordered by
    name; 19 digits are a time.
    """
    names = ["1700000000.c", "5.b", "9" * 20 + ".a", "1" * 19 + ".e", "x.d", "0.f", "1.g"]
    for name in names:
        deliverToMaildir(tmp_path / "alice", b"m\n", name=name)
    assert [uid for uid, _, _ in snapshot(store(tmp_path))] == [
        "0.f",
        "9" * 20 + ".a",
        "x.d",
        "1.g",
        "5.b",
        "1700000000.c",
        "1" * 19 + ".e",
    ]


def test_strayEntriesSkipped(tmp_path: Path) -> None:
    """
    A directory where a message should be is left out of the listing, even
    under a name with a ,W= size (it was listed with that size, and every
    QUIT that deleted it failed); a message whose file went after the login
    gives MessageUnavailable; the user's other mail is served either way.
    """
    deliverToMaildir(tmp_path / "alice", b"good\n", name="2.good")
    deliverToMaildir(tmp_path / "alice", b"gone\n", name="4.gone")
    new = tmp_path / "alice" / "new"
    (new / "1.stray").mkdir()
    (new / "3.stray,W=10").mkdir()
    with capturedLogs() as events:
        maildrop = result(store(tmp_path).openMaildrop("alice"))
    assert [m.uid for m in result(maildrop.listMessages())] == ["2.good", "4.gone"]
    assert sorted(formatEvent(e) for e in events) == [
        f"Skipping '{new / name}': [Errno 21] Is a directory"
        for name in ("1.stray", "3.stray,W=10")
    ]
    (new / "4.gone").unlink()
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


def test_filesFoundWhenFirstNeeded(tmp_path: Path, listings: list[str]) -> None:
    """
    A session lists new/ and cur/ again when it first opens a message, and
    not after: an idle session keeps no list of file names, and finds a
    message moved since it logged in without looking for it.
    """
    path = deliverToMaildir(tmp_path / "alice", b"one\n", name="1.M1.host")
    deliverToMaildir(tmp_path / "alice", b"two\n", name="2.M2.host")
    maildrop = result(store(tmp_path).openMaildrop("alice"))
    listings.clear()
    assert maildrop._where is None
    os.rename(path, tmp_path / "alice" / "cur" / "1.M1.host:2,S")
    for index, data in [(0, b"one\n"), (1, b"two\n"), (0, b"one\n")]:
        reader = result(maildrop.openMessage(index))
        assert result(reader.read(100)) == data
        reader.close()
    assert listings == ["new", "cur"]
    maildrop.close()


def test_movedMessagesFoundWithOneListing(tmp_path: Path, listings: list[str]) -> None:
    """
    A mail reader that moves every message to cur/ during a session costs
    the session one more listing, not one per message: retrieving and
    deleting 4,000 moved messages took 6.7 and 3.4 s (a listing of all the
    names for each).
    """
    for n in range(50):
        deliverToMaildir(tmp_path / "alice", b"m%d\n" % n, name=f"{n}.M{n}.host")
    maildrop, _ = login(store(tmp_path))
    cur = tmp_path / "alice" / "cur"
    result(maildrop.openMessage(0)).close()
    for n in range(50):
        os.rename(tmp_path / "alice" / "new" / f"{n}.M{n}.host", cur / f"{n}.M{n}.host:2,S")
    listings.clear()
    for index in range(50):
        reader = result(maildrop.openMessage(index))
        assert result(reader.read(100)) == b"m%d\n" % index
        reader.close()
    assert listings == ["new", "cur"]
    for n in range(50):
        os.rename(cur / f"{n}.M{n}.host:2,S", cur / f"{n}.M{n}.host:2,RS")
    result(maildrop.deleteMessages(range(50)))
    assert listings == ["new", "cur"] * 2
    assert os.listdir(cur) == []
    maildrop.close()


def test_missesFromAnOlderListingListNoMore(tmp_path: Path, listings: list[str]) -> None:
    """
    Threads that open messages at paths from one listing and find them
    moved: the first miss has new/ and cur/ listed again at the next
    lookup; a miss reported while that listing is due, or after it was
    made (the path came from the one before), lists nothing more.
    """
    alice = tmp_path / "alice"
    bases = ["0.M0.host", "1.M1.host"]
    for base in bases:
        deliverToMaildir(alice, b"m\n", name=base)
    maildrop, _ = login(store(tmp_path))
    before = maildrop._whereMap()
    old = [maildrop._pathIn(before, base) for base in bases]
    for base in bases:
        os.rename(alice / "new" / base, alice / "cur" / f"{base}:2,S")
    listings.clear()
    maildrop._locate(bases[0], old[0])
    maildrop._locate(bases[1], old[1])  # a listing is due already
    assert listings == []
    moved = str(alice / "cur" / f"{bases[1]}:2,S")
    assert maildrop._pathIn(maildrop._whereMap(), bases[1]) == moved
    assert listings == ["new", "cur"]
    maildrop._locate(bases[1], old[1])  # from the listing before
    maildrop._locate(bases[0], old[0])
    reader = result(maildrop.openMessage(1))
    assert result(reader.read(100)) == b"m\n"
    reader.close()
    assert listings == ["new", "cur"]
    maildrop.close()


def test_messageMissingFromAnOlderListingIsNotGone(tmp_path: Path) -> None:
    """
    A message missing from a listing that has been made again since (by
    another thread) is not taken for gone: it is looked for in the newer
    listing, and RETR finds it.
    """
    alice = tmp_path / "alice"
    deliverToMaildir(alice, b"m\n", name="0.M0.host")
    maildrop, _ = login(store(tmp_path))
    full = maildrop._whereMap()
    # A listing that missed it (moved back and forth while it was read).
    maildrop._where = missed = {k: v for k, v in full.items() if k != "0.M0.host"}
    assert maildrop._gone("0.M0.host", missed) is False  # once proves nothing
    assert "0.M0.host" in maildrop._whereMap()  # listed again, by one thread
    assert maildrop._gone("0.M0.host", missed) is False  # another, from the older one
    reader = result(maildrop.openMessage(0))
    assert result(reader.read(100)) == b"m\n"
    reader.close()
    maildrop.close()


def test_removedMessagesCostOneListing(tmp_path: Path, listings: list[str]) -> None:
    """
    Messages another program removed during a session cost it two more
    listings (one that lacks a name does not prove it gone), however many
    there are; QUIT counts them removed and removes the rest.
    """
    for n in range(40):
        deliverToMaildir(tmp_path / "alice", b"m%d\n" % n, name=f"{n}.M{n}.host")
    maildrop, _ = login(store(tmp_path))
    result(maildrop.openMessage(0)).close()
    for n in range(0, 40, 2):
        os.unlink(tmp_path / "alice" / "new" / f"{n}.M{n}.host")
    listings.clear()
    for index in range(40):
        if index % 2:
            result(maildrop.openMessage(index)).close()
        else:
            with pytest.raises(MessageUnavailable):
                result(maildrop.openMessage(index))
    result(maildrop.deleteMessages(range(40)))
    assert listings == ["new", "cur"] * 2
    assert os.listdir(tmp_path / "alice" / "new") == []
    maildrop.close()


@pytest.mark.parametrize("moves, deleted", [(2, True), (3, False)])
def test_deleteFollowsARenamingReader(
    tmp_path: Path, monkeypatch: Any, moves: int, deleted: bool
) -> None:
    """
    A message that a mail reader renames again while QUIT deletes it is
    looked for again, a bounded number of times: deleted, or reported as
    not deleted.  (It was counted as deleted after two misses, and +OK
    said so, while it stayed to be downloaded again.)
    """
    deliverToMaildir(tmp_path / "alice", b"hello\n", name="1.M1.host")
    maildrop, _ = login(store(tmp_path))
    cur = tmp_path / "alice" / "cur"
    flags = iter(["S", "RS", "FS", "RFS"])
    real = os.unlink
    renamed = []

    def renameFirst(path: Any) -> None:
        if len(renamed) < moves:
            # The reader renames the file just before the unlink.
            (old,) = [p for d in ("new", "cur") for p in (tmp_path / "alice" / d).iterdir()]
            os.rename(old, cur / f"1.M1.host:2,{next(flags)}")
            renamed.append(path)
        real(path)

    monkeypatch.setattr(os, "unlink", renameFirst)
    if deleted:
        result(maildrop.deleteMessages([0]))
    else:
        with pytest.raises(DeletionFailed), capturedLogs():
            result(maildrop.deleteMessages([0]))
    monkeypatch.undo()
    assert len(renamed) == moves
    assert (os.listdir(cur) == []) == deleted
    maildrop.close()


def test_messagesMovedWhileSizedAreListed(tmp_path: Path, monkeypatch: Any) -> None:
    """
    Messages that a mail reader moves to cur/ while a login reads them to
    size them are looked for again and listed, with the UIDLs and sizes
    they had; they were left out of that session.
    """
    for n in range(20):
        deliverToMaildir(tmp_path / "alice", b"Subject: %d\n\nbody\n" % n, name=f"{n}.M{n}.host")
    real = maildir.measureEach
    calls = []

    def movingFirst(files: Any, knownSize: Any, *args: Any) -> Any:
        files = list(files)
        if not calls:
            for n in range(20):
                os.rename(
                    tmp_path / "alice" / "new" / f"{n}.M{n}.host",
                    tmp_path / "alice" / "cur" / f"{n}.M{n}.host:2,S",
                )
        calls.append(len(files))
        return real(iter(files), knownSize, *args)

    monkeypatch.setattr(maildir, "measureEach", movingFirst)
    maildrop, infos = login(store(tmp_path))
    assert calls == [20, 20]
    assert [(i.uid, i.size) for i in infos] == [
        (f"{n}.M{n}.host", len(b"Subject: %d\r\n\r\nbody\r\n" % n)) for n in range(20)
    ]
    maildrop.close()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="no /proc/self/fd")
def test_messagesMovedAgainWhileSizedAreFollowed(tmp_path: Path, monkeypatch: Any) -> None:
    """
    While a login sizes the messages, a mail reader moves one to cur/ and
    then renames it there, and removes another: each new listing looks
    only for the messages that vanished and are still there, the moved one
    is listed with its size, the removed one is left out (not listed with
    no size), and no listing is left open.
    """
    alice = tmp_path / "alice"
    for n in range(6):
        deliverToMaildir(alice, b"message %d\n" % n, name=f"{n}.M{n}.host")
    real = maildir.measureEach
    calls = []

    def moving(files: Any, knownSize: Any, *args: Any) -> Any:
        files = list(files)
        if not calls:
            os.rename(alice / "new" / "1.M1.host", alice / "cur" / "1.M1.host:2,")
            os.unlink(alice / "new" / "3.M3.host")
        elif len(calls) == 1:
            os.rename(alice / "cur" / "1.M1.host:2,", alice / "cur" / "1.M1.host:2,S")
        calls.append(sorted(name for _, _, name in files))
        return real(iter(files), knownSize, *args)

    monkeypatch.setattr(maildir, "measureEach", moving)
    before = len(os.listdir("/proc/self/fd"))
    maildrop, infos = login(store(tmp_path))
    assert len(os.listdir("/proc/self/fd")) == before + 1  # the lock alone
    assert calls == [
        [f"{n}.M{n}.host" for n in range(6)],
        ["1.M1.host:2,"],
        ["1.M1.host:2,S"],
    ]
    assert [(i.uid, i.size) for i in infos] == [
        (f"{n}.M{n}.host", len(b"message %d\r\n" % n)) for n in (0, 1, 2, 4, 5)
    ]
    maildrop.close()


def test_messageMovedAtEveryAttemptLeftOut(tmp_path: Path, monkeypatch: Any) -> None:
    """
    A message that another program renames at each of the three attempts
    to size it is left out of the session (not listed unsized); the next
    login, when it stays put, lists it.
    """
    alice = tmp_path / "alice"
    deliverToMaildir(alice, b"stays\n", name="0.M0.host")
    deliverToMaildir(alice, b"moves\n", name="1.M1.host")
    os.rename(alice / "new" / "1.M1.host", alice / "cur" / "1.M1.host:2,0")
    real = maildir.measureEach
    calls = []

    def renaming(files: Any, knownSize: Any, *args: Any) -> Any:
        files = list(files)
        calls.append(len(files))
        n = len(calls)
        os.rename(alice / "cur" / f"1.M1.host:2,{n - 1}", alice / "cur" / f"1.M1.host:2,{n}")
        return real(iter(files), knownSize, *args)

    monkeypatch.setattr(maildir, "measureEach", renaming)
    maildrop, infos = login(store(tmp_path))
    assert calls == [2, 1, 1]
    assert [(i.uid, i.size) for i in infos] == [("0.M0.host", 7)]
    maildrop.close()
    monkeypatch.setattr(maildir, "measureEach", real)
    assert [(uid, size) for uid, size, _ in snapshot(store(tmp_path))] == [
        ("0.M0.host", 7),
        ("1.M1.host", 7),
    ]


def test_messageMovedBackDuringAListingIsFound(tmp_path: Path, monkeypatch: Any) -> None:
    """
    A message a mail reader moves back from cur/ to new/ ("mark as new")
    between a listing's reads of new/ and cur/ is in neither: it is looked
    for again, and RETR and DELE find it.  (Taken for removed, it answered
    RETR with -ERR, and QUIT said +OK and left it.)
    """
    cur = tmp_path / "alice" / "cur"
    path = deliverToMaildir(tmp_path / "alice", b"hello\n", name="0.M0.host")
    os.rename(path, cur / "0.M0.host:2,S")
    maildrop, _ = login(store(tmp_path))
    real = maildir._listDirectory
    moved = []

    def movingBack(maildirPath: str, subdir: str) -> Any:
        if subdir == "cur" and not moved:
            moved.append(subdir)
            os.rename(cur / "0.M0.host:2,S", tmp_path / "alice" / "new" / "0.M0.host")
        return real(maildirPath, subdir)

    monkeypatch.setattr(maildir, "_listDirectory", movingBack)
    reader = result(maildrop.openMessage(0))
    assert result(reader.read(100)) == b"hello\n"
    reader.close()
    assert moved
    result(maildrop.deleteMessages([0]))
    assert os.listdir(tmp_path / "alice" / "new") == []
    maildrop.close()


def test_fileNamesQuotedInTheLog(tmp_path: Path) -> None:
    """
    A file name is quoted in the log: whoever delivers names the file, and
    a line break in it would otherwise start a log line of its own, such as
    an auth-failed line that the fail2ban filter takes for a real one.
    """
    deliverToMaildir(tmp_path / "alice", b"good\n", name="2.good")
    forged = "1.x\n2026-11-25T15:00:00+0000 [popserv.audit#warn] popserv auth-failed: ip=1.2.3.4"
    new = tmp_path / "alice" / "new"
    (new / forged).mkdir()
    with capturedLogs() as events:
        maildrop = result(store(tmp_path).openMaildrop("alice"))
    assert [formatEvent(e) for e in events] == [
        f"Skipping {str(new / forged)!r}: [Errno 21] Is a directory"
    ]
    assert "\n" not in formatEvent(events[0])
    maildrop.close()


def test_unlistableMaildirGivesUnavailable(tmp_path: Path, monkeypatch: Any) -> None:
    """
    If new/ and cur/ cannot be listed when a message is first opened, RETR
    says the message is unavailable (logged); it was a server fault.
    """
    deliverToMaildir(tmp_path / "alice", b"hello\n", name="0.M0.host")
    maildrop, _ = login(store(tmp_path))

    def refused(maildirPath: str, subdir: str) -> Any:
        raise PermissionError(errno.EACCES, "Permission denied", subdir)

    monkeypatch.setattr(maildir, "_listDirectory", refused)
    with capturedLogs() as events, pytest.raises(MessageUnavailable):
        result(maildrop.openMessage(0))
    assert [formatEvent(e) for e in events] == [
        f"Cannot read message '0.M0.host' in {tmp_path / 'alice'}:"
        " [Errno 13] Permission denied: 'new'"
    ]
    maildrop.close()


def test_failedScanReleasesTheLock(tmp_path: Path, monkeypatch: Any) -> None:
    """
    A login whose scan fails (new/ cannot be listed) is unavailable, and
    releases the lock it took: once the Maildir can be listed, the next
    login gets in rather than finding the maildrop in use until a restart.
    """
    deliverToMaildir(tmp_path / "alice", b"a\n", name="1.a")
    s = store(tmp_path)

    def refused(maildirPath: str, subdir: str) -> Any:
        raise PermissionError(errno.EACCES, "Permission denied", subdir)

    with monkeypatch.context() as patched:
        patched.setattr(maildir, "_listDirectory", refused)
        with capturedLogs(), pytest.raises(MaildropUnavailable):
            result(s.openMaildrop("alice"))
    maildrop, infos = login(s)
    assert [i.uid for i in infos] == ["1.a"]
    maildrop.close()


def test_interruptedScanReleasesTheLock(tmp_path: Path, monkeypatch: Any) -> None:
    """
    A scan ended by an exception that is not an Exception (KeyboardInterrupt,
    where the runner works in the main thread) releases the lock too.
    """

    def interrupted(self: Any, indexes: Any) -> None:
        raise KeyboardInterrupt

    def runNow(f: Any, *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        d.callback(f(*args))
        return d

    s = MaildirStore(str(tmp_path / "{user}"), runInThread=runNow)
    with monkeypatch.context() as patched:
        patched.setattr(maildir.MaildirMaildrop, "scan", interrupted)
        with pytest.raises(KeyboardInterrupt):
            s.openMaildrop("alice")
    maildrop, infos = login(s)
    maildrop.close()
    assert infos == []


def test_relistingThatFailsLeavesMessagesOut(tmp_path: Path, monkeypatch: Any) -> None:
    """
    If new/ and cur/ cannot be listed again to find messages that moved
    while a login sized them, those are left out of the session (logged),
    as before: the login itself does not fail.
    """
    for n in range(3):
        deliverToMaildir(tmp_path / "alice", b"m%d\n" % n, name=f"{n}.M{n}.host")
    real = maildir._Listing
    made = []

    def failingAgain(path: str) -> Any:
        made.append(path)
        if len(made) > 1:
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real(path)

    realMeasure = maildir.measureEach

    def movingFirst(files: Any, knownSize: Any, *args: Any) -> Any:
        os.rename(
            tmp_path / "alice" / "new" / "1.M1.host", tmp_path / "alice" / "cur" / "1.M1.host:2,S"
        )
        return realMeasure(files, knownSize, *args)

    monkeypatch.setattr(maildir, "_Listing", failingAgain)
    monkeypatch.setattr(maildir, "measureEach", movingFirst)
    with capturedLogs() as events:
        maildrop, infos = login(store(tmp_path))
    assert [i.uid for i in infos] == ["0.M0.host", "2.M2.host"]
    alice = tmp_path / "alice"
    assert [formatEvent(e) for e in events] == [
        f"Cannot list {alice} again: [Errno 13] Permission denied: '{alice}'"
    ]
    maildrop.close()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="no /proc/self/fd")
def test_relistingWhoseDirectoryCannotBeOpenedIsClosed(tmp_path: Path, monkeypatch: Any) -> None:
    """
    A listing made again to find a moved message, one of whose
    directories then cannot be opened, is closed (the other directory's
    descriptor is not left open) and the moved message is left out.
    """
    alice = tmp_path / "alice"
    for n in range(3):
        deliverToMaildir(alice, b"m%d\n" % n, name=f"{n}.M{n}.host")
    os.rename(alice / "new" / "2.M2.host", alice / "cur" / "2.M2.host:2,")
    real = maildir._Listing
    made = []

    def failingCur(path: str) -> Any:
        listing = real(path)
        made.append(listing)
        if len(made) > 1:
            opener = listing._directory

            def directory(subdir: str) -> int:
                if subdir == "cur":
                    raise PermissionError(errno.EACCES, "Permission denied", subdir)
                return opener(subdir)

            listing._directory = directory  # type: ignore[method-assign]
        return listing

    realMeasure = maildir.measureEach

    def movingFirst(files: Any, knownSize: Any, *args: Any) -> Any:
        os.rename(alice / "new" / "1.M1.host", alice / "cur" / "1.M1.host:2,S")
        return realMeasure(files, knownSize, *args)

    monkeypatch.setattr(maildir, "_Listing", failingCur)
    monkeypatch.setattr(maildir, "measureEach", movingFirst)
    before = len(os.listdir("/proc/self/fd"))
    with capturedLogs() as events:
        maildrop, infos = login(store(tmp_path))
    assert len(made) == 2 and made[1]._directories == {}
    assert len(os.listdir("/proc/self/fd")) == before + 1  # the lock alone
    assert [i.uid for i in infos] == ["0.M0.host", "2.M2.host"]
    assert [formatEvent(e) for e in events] == [
        f"Cannot list {alice} again: [Errno 13] Permission denied: 'cur'"
    ]
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


def test_deletionFailureFromUnlink(tmp_path: Path, monkeypatch: Any, measured: list[str]) -> None:
    """
    An unlink error other than "already gone" (here EROFS) fails the
    deletion of that message only, and is logged with its name; the others
    are removed and nothing else is touched.  The index still vouches for
    the message kept: the next login does not read it again.
    """
    a = deliverToMaildir(tmp_path / "alice", b"a\n", name="1.a")
    b = deliverToMaildir(tmp_path / "alice", b"b\n", name="2.b")
    c = deliverToMaildir(tmp_path / "alice", b"c\n", name="3.c")
    s = store(tmp_path)
    maildrop = result(s.openMaildrop("alice"))
    realUnlink = os.unlink

    def unlink(path: Any) -> None:
        if str(path).endswith("1.a"):
            raise OSError(30, "Read-only file system")
        realUnlink(path)

    monkeypatch.setattr(os, "unlink", unlink)
    with capturedLogs() as events, pytest.raises(DeletionFailed) as caught:
        result(maildrop.deleteMessages([0, 1]))
    assert caught.value.notDeleted == (0,)
    assert a.exists() and not b.exists() and c.exists()
    maildrop.close()
    errors = [formatEvent(e) for e in events if e["log_level"].name == "error"]
    assert len(errors) == 1
    assert errors[0].startswith("Cannot delete '1.a' in ") and "Read-only file system" in errors[0]
    measured.clear()
    assert snapshot(s) == [("1.a", 3, 3), ("3.c", 3, 3)]
    assert measured == []


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
    # The with block closes the pipes too: a test must not leave them to
    # the garbage collector.
    with subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(tmp_path / "alice" / "popserv.lock")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    ) as child:
        try:
            assert child.stdout is not None
            assert child.stdout.readline() == b"locked\n"
            with pytest.raises(MaildropInUse):
                result(store(tmp_path).openMaildrop("alice"))
        finally:
            child.kill()
            child.wait(timeout=10)
    result(store(tmp_path).openMaildrop("alice")).close()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="no /proc/self/fd")
def test_lockRefusedLeavesNoDescriptorOpen(tmp_path: Path) -> None:
    """
    A login refused because the maildrop is in use leaves no descriptor of
    its own open: a client retrying against a busy maildrop must not use
    up the server's descriptors.
    """
    first = result(store(tmp_path).openMaildrop("alice"))
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        with pytest.raises(MaildropInUse):
            result(store(tmp_path).openMaildrop("alice"))
    assert len(os.listdir("/proc/self/fd")) == before
    first.close()


def test_lockFailureIsNotInUse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A lock that fails for another reason than being held (ENOLCK: the NFS
    lock service is down) makes the maildrop unavailable (logged), not "in
    use": the client is not told that another session holds it.
    """
    (tmp_path / "alice").mkdir()

    def flock(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", flock)
    with capturedLogs() as events, pytest.raises(MaildropUnavailable):
        result(store(tmp_path).openMaildrop("alice"))
    assert [formatEvent(e) for e in events] == [
        f"Maildrop of 'alice' unavailable: [Errno {errno.ENOLCK}] No locks available"
    ]


def test_lockFileOpenForWritingAndNotInherited(tmp_path: Path) -> None:
    """
    The lock file is open for reading and writing (flock over NFS needs
    it: docs/maildir.rst), at the first login that creates it and at the
    next, and close-on-exec: a program the server starts must not inherit
    it, or the maildrop would stay locked after the session ended.
    """
    for _ in range(2):
        maildrop = result(store(tmp_path).openMaildrop("alice"))
        fd = maildrop._lockFD
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDWR
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        maildrop.close()


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


#: Stored messages whose wire size is not their size on disk, or whose
#: first line is stuffed: small ones, read whole at login, and ones larger
#: than its first read and than a transfer's chunk, counted in chunks.
SIZED_MESSAGES = [
    b"",
    b"no end",
    b"bare CR\r",
    b".first\n\n.dot\n",
    "Subject: Gr\u00fc\u00dfe\n\nbody \u00e4\n".encode(),
    b"Subject: large\n\n" + b"y\n" * CHUNK_SIZE + b".end\r",
    "Subject: Gr\u00fc\u00dfe\r\n\r\n".encode() + b"y" * CHUNK_SIZE + b"\r\n\r",
]


@pytest.mark.parametrize("named", [False, True], ids=["counted", "named"])
def test_listedSizesAreWhatRetrSends(tmp_path: Path, named: bool) -> None:
    """
    The sizes the Maildir store lists for a message, with UTF8 and
    without, are what a transfer of its reader's octets counts
    (L{MessageTransfer} holds RETR to them, and drops the connection if a
    message comes out shorter): each message is sent whole, as
    L{encodeMessage} makes it.  Also for a file whose ,W= name gives its
    size (the store takes that for a large file, plus the CRLF popserv
    ends an unterminated last line with), an empty one, one that ends in a
    bare CR, and one whose first line starts with ".".
    """
    for number, message in enumerate(SIZED_MESSAGES):
        name = f"{1700000000 + number}.M{number}.host"
        if named:
            # Dovecot's ,W=: every LF counted as CRLF, nothing added.
            lines = message.count(b"\n") - message.count(b"\r\n")
            name += f",W={len(message) + lines}"
        deliverToMaildir(tmp_path / "alice", message, name=name)
    maildrop, infos = login(store(tmp_path))
    assert [(i.size, i.downgradedSize) for i in infos] == [
        (wireSize(m), wireSize(m, downgrade=True)) for m in SIZED_MESSAGES
    ]
    for index, message in enumerate(SIZED_MESSAGES):
        for downgrade in (False, True):
            info = infos[index]
            transport = StringTransport()
            transfer = MessageTransfer(
                transport,
                result(maildrop.openMessage(index)),
                MessageEncoder(downgrade=downgrade),
                expected=info.downgradedSize if downgrade else info.size,
            )
            assert result(transfer.start()) is None
            assert transport.value() == encodeMessage(message, downgrade=downgrade)
    maildrop.close()


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"a", b"."]), max_size=40).map(b"".join),
    st.integers(1, 8),
)
def test_namedSizeCounted(message: bytes, size: int) -> None:
    """
    The reader of a message whose name gives its size counts its wire size
    as L{wireSize} does, read whole or in chunks of any size (a CR at the
    end of one and its LF at the start of the next, a bare CR at the end),
    and reports it if it is not the size listed.
    """
    counted: list[int] = []
    whole = maildir._NamedSizeReader(FileReader(None, syncRun, message), -1, counted.append)
    assert whole.whole(len(message)) == message
    chunked = maildir._NamedSizeReader(
        FileReader(io.BytesIO(message), syncRun, b"", len(message)), -1, counted.append
    )
    read = b""
    while data := result(chunked.read(size)):
        read += data
    assert read == message
    assert counted == [wireSize(message)] * 2


@pytest.mark.parametrize("lines", [20_000, 60_000], ids=["whole", "read"])
@pytest.mark.parametrize("error", [10, -10], ids=["over", "under"])
def test_wrongNamedSizeListedRightNextTime(tmp_path: Path, error: int, lines: int) -> None:
    """
    A large file whose ,W= name gives a wrong size (changed after
    delivery, under its name) is listed with it, unread; RETR finds out:
    a message shorter than listed is not ended (nothing of it is sent if
    the store read it whole, and the session is dropped), one longer is
    sent, and either way the count is logged and kept in the index, so the
    next login lists the message right, its downgraded size too.  Over by
    10, it used to drop the session at every RETR, at every login: no
    client could download it.
    """
    message = "Subject: Gr\u00fc\u00dfe\n\n".encode() + b"line\n" * lines
    name = f"1700000000.M1.host,W={wireSize(message) + error}"
    deliverToMaildir(tmp_path / "alice", message, name=name)
    s = store(tmp_path)
    maildrop, infos = login(s)
    assert [i.size for i in infos] == [wireSize(message) + error]
    transport = StringTransport()
    failures: list[Failure] = []
    with capturedLogs() as events:
        transfer = MessageTransfer(
            transport, result(maildrop.openMessage(0)), MessageEncoder(), expected=infos[0].size
        )
        transfer.start().addErrback(failures.append)
    maildrop.close()
    if error > 0:
        assert [f.type for f in failures] == [ShorterThanListed]
        unended = encodeMessage(message)[: -len(b".\r\n")]
        assert transport.value() == (b"" if lines == 20_000 else unended)
    else:
        assert failures == []
        assert transport.value() == encodeMessage(message)
    assert f"Message {name!r} in {tmp_path / 'alice'} has {wireSize(message)} octets on the" in (
        formatEvent(events[0])
    )
    assert snapshot(s) == [(name, wireSize(message), wireSize(message, downgrade=True))]


def test_wrongNamedSizeNotKeptForAChangedFile(tmp_path: Path) -> None:
    """
    A count is not kept for a file that changed since the login sized it
    (it is forgotten, and the next login sizes it again from the file and
    its name: its header, and so its downgraded size, may have changed
    too), nor after the maildrop was closed, when the lock that lets a
    session write the index is no longer held.  (Each name here says one
    octet more than its file has.)
    """
    names = ["1700000000.M1.host,W=300000", "1700000001.M2.host,W=300000"]
    message = b"Subject: x\n\n" + b"y" * 299_985
    paths = [deliverToMaildir(tmp_path / "alice", message, name=name) for name in names]
    s = store(tmp_path)
    maildrop, infos = login(s)
    assert [(i.size, i.downgradedSize) for i in infos] == [(300_002, 300_002)] * 2
    changed = "Subject: \u00e4\n\n".encode() + b"y" * 200_000
    paths[0].write_bytes(changed)
    growth = wireSize(changed, downgrade=True) - wireSize(changed)
    with capturedLogs():
        reader = result(maildrop.openMessage(0))
        while result(reader.read(CHUNK_SIZE)):
            pass
        reader.close()
        reader = result(maildrop.openMessage(1))
        assert result(reader.read(CHUNK_SIZE))
        maildrop.close()
        while result(reader.read(CHUNK_SIZE)):
            pass
        reader.close()
    assert snapshot(s) == [(names[0], 300_002, 300_002 + growth), (names[1], 300_002, 300_002)]


def test_wrongNamedSizeOverTheWire(tmp_path: Path) -> None:
    """
    Over the wire: a message whose ,W= name says 10 octets more than it
    has is listed so and cut off at its first RETR, before the terminator,
    the connection dropped before the DELE and QUIT behind it, and nothing
    deleted; the next session lists its true size, and its RETR sends it
    whole.  Every RETR of it used to be cut off, at every login.
    """
    body = b"line\n" * 60_000  # read in chunks: the reply is under way when it ends
    wire = b"Subject: x\r\n\r\n" + body.replace(b"\n", b"\r\n")
    deliverToMaildir(
        tmp_path / "alice", b"Subject: x\n\n" + body, name=f"1.M1.host,W={len(wire) + 10}"
    )
    s = store(tmp_path)
    first = Session(store=s)
    assert first.login() == b"+OK Logged in, 1 messages (%d octets)\r\n" % (len(wire) + 10)
    with capturedLogs():
        first.send(b"RETR 1\r\nDELE 1\r\nQUIT\r\n")
    assert first.take() == b"+OK %d octets\r\n" % (len(wire) + 10) + wire
    assert first.transport.disconnecting
    first.protocol.connectionLost(Failure(ConnectionError()))
    second = Session(store=s)
    assert second.login() == b"+OK Logged in, 1 messages (%d octets)\r\n" % len(wire)
    assert second.command(b"RETR 1") == b"+OK %d octets\r\n" % len(wire) + wire + b".\r\n"


# The index: what reading the files told, kept for the next login.


UTF8 = "Subject: Gr\u00fc\u00dfe\n\nbody\n".encode()


def expected(messages: dict[str, bytes]) -> list[tuple[str, int, int]]:
    return [
        (uid, wireSize(message), wireSize(message, downgrade=True))
        for uid, message in sorted(messages.items())
    ]


def test_indexSparesReadingFiles(tmp_path: Path, measured: list[str]) -> None:
    """
    The first login reads every message and writes the index; the next
    reads none, gives the same listing and leaves the index as it was.
    """
    messages = {f"{1700000000 + i}.M{i}.host": b"a\nb\n" * i for i in range(5)}
    messages["1700000009.M9.host"] = UTF8
    for name, data in messages.items():
        deliverToMaildir(tmp_path / "alice", data, name=name)
    s = store(tmp_path)
    first = snapshot(s)
    assert first == expected(messages)
    assert sorted(measured) == sorted(messages)
    index = tmp_path / "alice" / INDEX_NAME
    before = index.stat()
    measured.clear()
    assert snapshot(s) == first
    assert measured == []
    after = index.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (
        before.st_ino,
        before.st_mtime_ns,
        before.st_size,
    )


def test_unchangedIndexNotReadAgain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A store keeps the index files it read parsed: a later login to the
    same unchanged Maildir does not read the file again, one after a
    delivery does, and another store (another process) reads it anyway.
    """
    deliverToMaildir(tmp_path / "alice", b"one\n", name="1700000000.M0.host")
    reads: list[str] = []
    readBounded = maildirindex._readBounded

    def spy(path: str, limit: int) -> Any:
        reads.append(os.path.basename(path))
        return readBounded(path, limit)

    monkeypatch.setattr(maildirindex, "_readBounded", spy)
    s = store(tmp_path)
    first = snapshot(s)  # no index yet: it reads the message and writes one
    assert reads == [INDEX_NAME]
    assert snapshot(s) == first  # reads the index, and keeps it parsed
    assert snapshot(s) == first
    assert snapshot(s) == first
    assert reads == [INDEX_NAME] * 2
    assert snapshot(store(tmp_path)) == first
    assert reads == [INDEX_NAME] * 3
    deliverToMaildir(tmp_path / "alice", b"two\n", name="1700000001.M1.host")
    assert [uid for uid, _, _ in snapshot(s)] == ["1700000000.M0.host", "1700000001.M1.host"]
    assert snapshot(s) == snapshot(store(tmp_path))


def test_emptyMaildirHasNoIndex(tmp_path: Path) -> None:
    """
    A Maildir with no messages gets no index file.
    """
    snapshot(store(tmp_path))
    assert not (tmp_path / "alice" / INDEX_NAME).exists()


@pytest.mark.skipif(not SYSTEM_HAS_NOWAIT, reason="no RWF_NOWAIT on this system")
def test_uncachedFilesReadLast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A first login reads the files the page cache holds first and the others
    after them (L{popserv.prefetch}); the listing and the index it writes
    are in message order all the same, with every size right.
    """
    uncached: set[int] = set()
    real = os.preadv
    waited = []

    def preadv(fd: int, buffers: list[bytearray], offset: int, flags: int = 0) -> int:
        if flags and os.fstat(fd).st_ino in uncached:
            waited.append(os.fstat(fd).st_ino)
            raise BlockingIOError(errno.EAGAIN, "would block")
        return real(fd, buffers, offset, flags)

    monkeypatch.setattr(os, "preadv", preadv)
    s = store(tmp_path)
    messages: dict[str, bytes] = {}
    # The first login writes the index whole; the second appends to it.
    for first in (0, 9):
        delivered = {
            f"{1700000000 + i}.M{i}.host": b"a\nb\n" * i + UTF8 * (i % 2)
            for i in range(first, first + 9)
        }
        for name, data in delivered.items():
            deliverToMaildir(tmp_path / "alice", data, name=name)
        messages.update(delivered)
        uncached = {
            (tmp_path / "alice" / "new" / name).stat().st_ino for name in list(delivered)[::3]
        }
        waited.clear()
        assert snapshot(s) == expected(messages)
        assert sorted(waited) == sorted(uncached)
        index, records = MaildirIndex.load(str(tmp_path / "alice"), 1 << 20)
        assert records.names == sorted(messages)
        assert list(records.wire) == [wireSize(messages[n]) for n in sorted(messages)]
    assert index.blocks == 2


def test_indexUpdatedIncrementally(tmp_path: Path, measured: list[str]) -> None:
    """
    Messages delivered since the last login are read, and appended to the
    index.
    """
    messages = {f"{1700000000 + i}.M{i}.host": b"x\r\n" * (i + 1) for i in range(4)}
    for name, data in messages.items():
        deliverToMaildir(tmp_path / "alice", data, name=name)
    s = store(tmp_path)
    snapshot(s)
    messages["1700000100.M100.host"] = UTF8
    deliverToMaildir(tmp_path / "alice", UTF8, name="1700000100.M100.host")
    measured.clear()
    assert snapshot(s) == expected(messages)
    assert measured == ["1700000100.M100.host"]
    index, records = MaildirIndex.load(str(tmp_path / "alice"), 1 << 20)
    assert index.blocks == 2
    assert records.names == sorted(messages)
    measured.clear()
    assert snapshot(s) == expected(messages)
    assert measured == []


@pytest.mark.parametrize("change", ["removed", "all removed", "delivered out of order"])
def test_indexRewrittenInOrder(tmp_path: Path, measured: list[str], change: str) -> None:
    """
    When the index no longer matches the listing in order (a message was
    removed by another program, or new mail sorts before old), the login
    rewrites it, so that the next login finds it in order; when every
    message was removed, it keeps no record of them.
    """
    messages = {f"{1700000000 + i}.M{i}.host": b"x\n" * (i + 1) for i in range(4)}
    for name, data in messages.items():
        deliverToMaildir(tmp_path / "alice", data, name=name)
    s = store(tmp_path)
    snapshot(s)
    if change == "removed":
        os.unlink(tmp_path / "alice" / "new" / "1700000001.M1.host")
        del messages["1700000001.M1.host"]
    elif change == "all removed":
        for name in messages:
            os.unlink(tmp_path / "alice" / "new" / name)
        messages.clear()
    else:
        messages["1699999999.M9.host"] = UTF8
        deliverToMaildir(tmp_path / "alice", UTF8, name="1699999999.M9.host")
    measured.clear()
    assert snapshot(s) == expected(messages)
    assert measured == ([] if "removed" in change else ["1699999999.M9.host"])
    index, records = MaildirIndex.load(str(tmp_path / "alice"), 1 << 20)
    assert index.blocks == 1
    assert records.names == sorted(messages)
    assert lookup(records, sorted(messages))[2]


def test_sparseIndexRewritten(tmp_path: Path, monkeypatch: Any) -> None:
    """
    An index with too many blocks is rewritten whole, with just the
    records of the messages there are.
    """
    monkeypatch.setattr(maildirindex, "_MAX_BLOCKS", 3)
    s = store(tmp_path)
    for i in range(5):
        deliverToMaildir(tmp_path / "alice", b"m\n", name=f"{1700000000 + i}.M{i}.host")
        snapshot(s)
    index, records = MaildirIndex.load(str(tmp_path / "alice"), 1 << 20)
    assert index.blocks < 3
    assert sorted(records.names) == sorted(os.listdir(tmp_path / "alice" / "new"))


def test_deletedMessagesForgotten(tmp_path: Path, measured: list[str]) -> None:
    """
    Messages a session deletes are forgotten by the index: a later message
    given the same name is read, not taken for the old one.
    """
    deliverToMaildir(tmp_path / "alice", b"old\n", name="1.same")
    s = store(tmp_path)
    maildrop, _ = login(s)
    result(maildrop.deleteMessages([0]))
    maildrop.close()
    deliverToMaildir(tmp_path / "alice", b"a new message\n", name="1.same")
    measured.clear()
    assert snapshot(s) == [("1.same", 15, 15)]
    assert measured == ["1.same"]


def test_indexThatCannotForgetFailsNoDeletion(tmp_path: Path, monkeypatch: Any) -> None:
    """
    An index that fails to forget the deleted messages (a bug: its forget
    raises) is logged, and fails nothing: the messages are removed and the
    deletion succeeds, so that QUIT still answers +OK.
    """
    deliverToMaildir(tmp_path / "alice", b"a\n", name="1.a")
    deliverToMaildir(tmp_path / "alice", b"b\n", name="2.b")
    maildrop, _ = login(store(tmp_path))

    def forget(self: MaildirIndex, names: Any) -> None:
        raise RuntimeError("index bug")

    monkeypatch.setattr(MaildirIndex, "forget", forget)
    with capturedLogs() as events:
        assert result(maildrop.deleteMessages([0])) is None
    maildrop.close()
    [failure] = [e for e in events if "log_failure" in e]
    assert failure["log_failure"].check(RuntimeError)
    assert formatEvent(failure).startswith("Cannot update the index of ")
    assert sorted(p.name for p in (tmp_path / "alice" / "new").iterdir()) == ["2.b"]


def test_changedFileNotTrusted(tmp_path: Path) -> None:
    """
    A message file rewritten in place after it was indexed (which Maildir
    programs never do) is listed with its old sizes until it is opened;
    then its size on disk gives it away, a warning is logged (once) and the
    next login reads it again.
    """
    path = deliverToMaildir(tmp_path / "alice", b"short\n", name="1.a")
    s = store(tmp_path)
    assert snapshot(s) == [("1.a", 7, 7)]
    path.write_bytes(b"much longer now\n")
    maildrop, infos = login(s)
    assert infos[0].size == 7
    with capturedLogs() as events:
        # Opened again, it is not warned of again: its size is now unknown.
        for _ in range(2):
            assert readAll(result(maildrop.openMessage(0))) == b"much longer now\n"
    maildrop.close()
    [warning] = [e for e in events if e["log_level"].name == "warn"]
    assert (warning["size"], warning["recorded"]) == (16, 6)
    assert formatEvent(warning) == (
        f"'{path}' is 16 octets, not the 6 it was sized at;"
        " it will be sized again at the next login"
    )
    assert snapshot(s) == [("1.a", 17, 17)]


def test_sizingKeepsAccessTime(tmp_path: Path) -> None:
    """
    Reading a message to size it at login leaves its access time alone
    (where the system can: O_NOATIME); RETR reads it as a client reading
    mail does, and a file system that keeps access times records that.
    """
    path = deliverToMaildir(tmp_path / "alice", b"Subject: hi\n\nhello\n", name="1.a")
    never = (1_000_000_000, 2_000_000_000)  # older than the file: never read
    os.utime(path, ns=never)
    maildrop, infos = login(store(tmp_path))
    assert infos[0].size == 22
    if maildir.NOATIME:
        assert os.stat(path).st_atime_ns == never[0]
    os.utime(path, ns=never)
    assert readAll(result(maildrop.openMessage(0))) == b"Subject: hi\n\nhello\n"
    maildrop.close()
    if os.stat(path).st_atime_ns == never[0]:
        pytest.skip("this file system does not update access times on reads")


@pytest.mark.parametrize(
    "content",
    [b"", b"garbage", b"popserv-maildir-index 0\n", b"popserv-maildir-index 6\nblock 9 9 ff"],
)
def test_damagedIndexRebuilt(tmp_path: Path, content: bytes, measured: list[str]) -> None:
    """
    A damaged, truncated or unknown-version index is logged, not used, and
    rebuilt from the files.
    """
    messages = {"1.a": b"a\n", "2.b": UTF8}
    for name, data in messages.items():
        deliverToMaildir(tmp_path / "alice", data, name=name)
    (tmp_path / "alice" / INDEX_NAME).write_bytes(content)
    s = store(tmp_path)
    with capturedLogs() as events:
        assert snapshot(s) == expected(messages)
    assert any(e["log_level"].name == "warn" for e in events)
    assert sorted(measured) == sorted(messages)
    measured.clear()
    assert snapshot(s) == expected(messages)
    assert measured == []


def test_tornAppendIgnored(tmp_path: Path, measured: list[str]) -> None:
    """
    An appended block cut short (its writer was killed) is ignored: the
    messages it held are read again and the index is rewritten whole.
    """
    deliverToMaildir(tmp_path / "alice", b"a\n", name="1.a")
    s = store(tmp_path)
    snapshot(s)
    deliverToMaildir(tmp_path / "alice", b"bb\n", name="2.b")
    snapshot(s)
    index = tmp_path / "alice" / INDEX_NAME
    index.write_bytes(index.read_bytes()[:-5])
    measured.clear()
    with capturedLogs():
        assert snapshot(s) == [("1.a", 3, 3), ("2.b", 4, 4)]
    assert measured == ["2.b"]
    assert MaildirIndex.load(str(tmp_path / "alice"), 1 << 20)[0].appendable


def test_leftoverTemporaryIndexIgnored(tmp_path: Path) -> None:
    """
    A temporary index file left by a server killed while rewriting the
    index is not read, and is removed at the next login.
    """
    deliverToMaildir(tmp_path / "alice", b"a\n", name="1.a")
    (tmp_path / "alice" / TEMP_NAME).write_bytes(b"popserv-maildir-index 1\nblock 1 3 00")
    assert snapshot(store(tmp_path)) == [("1.a", 3, 3)]
    assert not (tmp_path / "alice" / TEMP_NAME).exists()


def test_unwritableIndexStillLogsIn(tmp_path: Path, monkeypatch: Any, measured: list[str]) -> None:
    """
    When the index cannot be written (read-only file system, full disk),
    the login still succeeds with exact sizes; the failure is logged and
    the next login reads the files again.
    """
    deliverToMaildir(tmp_path / "alice", UTF8, name="1.a")
    realOpen = os.open

    def readOnly(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if str(path).endswith((INDEX_NAME, TEMP_NAME)) and flags & os.O_WRONLY:
            raise OSError(30, "Read-only file system")
        return realOpen(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", readOnly)
    s = store(tmp_path)
    with capturedLogs() as events:
        assert snapshot(s) == expected({"1.a": UTF8})
        assert snapshot(s) == expected({"1.a": UTF8})
    assert measured == ["1.a", "1.a"]
    assert any("Read-only" in str(e.get("e")) for e in events)


@pytest.mark.parametrize("method", ["rewrite", "append"])
def test_indexUpdateThatRaisesStillLogsIn(tmp_path: Path, monkeypatch: Any, method: str) -> None:
    """
    Whatever goes wrong while the index is updated (here an unexpected
    exception from the index code, at a rewrite or at an append), the login
    succeeds with exact sizes and the failure is logged with the Maildir's
    path.
    """
    deliverToMaildir(tmp_path / "alice", UTF8, name="1.a")
    s = store(tmp_path)
    if method == "append":
        snapshot(s)  # an index the next login can append to
        deliverToMaildir(tmp_path / "alice", b"b\n", name="2.b")

    def broken(*args: Any) -> None:
        raise RuntimeError("index code broken")

    monkeypatch.setattr(MaildirIndex, method, broken)
    with capturedLogs() as events:
        maildrop, infos = login(s)
    maildrop.close()
    wanted = {"1.a": UTF8, **({"2.b": b"b\n"} if method == "append" else {})}
    assert [(i.uid, i.size, i.downgradedSize) for i in infos] == expected(wanted)
    [event] = [e for e in events if "log_failure" in e]
    assert formatEvent(event) == f"Cannot update the index of {tmp_path / 'alice'}"
    assert event["log_failure"].check(RuntimeError)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_readOnlyMaildirStillLogsIn(tmp_path: Path) -> None:
    """
    A Maildir the server may not write to (only its lock file) still logs
    in, with exact sizes.  (As root this cannot be provoked with
    permissions.)
    """
    deliverToMaildir(tmp_path / "alice", UTF8, name="1.a")
    s = store(tmp_path)
    snapshot(s)
    os.unlink(tmp_path / "alice" / INDEX_NAME)
    os.chmod(tmp_path / "alice", 0o500)
    try:
        with capturedLogs():
            assert snapshot(s) == expected({"1.a": UTF8})
    finally:
        os.chmod(tmp_path / "alice", 0o700)


def test_deliveryDuringLogin(tmp_path: Path, monkeypatch: Any, measured: list[str]) -> None:
    """
    A message delivered while a login lists the Maildir and writes the
    index is not in that session, nor in the index; the next login reads
    and lists it.
    """
    deliverToMaildir(tmp_path / "alice", b"a\n", name="1.a")
    realRewrite = MaildirIndex.rewrite

    def deliverFirst(self: MaildirIndex, records: Any, stamp: Any = None) -> bool:
        deliverToMaildir(tmp_path / "alice", b"late\n", name="2.late")
        return realRewrite(self, records, stamp)

    monkeypatch.setattr(MaildirIndex, "rewrite", deliverFirst)
    s = store(tmp_path)
    assert snapshot(s) == [("1.a", 3, 3)]
    monkeypatch.setattr(MaildirIndex, "rewrite", realRewrite)
    _, records = MaildirIndex.load(str(tmp_path / "alice"), 1 << 20)
    assert records.names == ["1.a"]
    measured.clear()
    assert snapshot(s) == [("1.a", 3, 3), ("2.late", 6, 6)]
    assert measured == ["2.late"]


def test_lockHeldWhileIndexWorkRuns(tmp_path: Path) -> None:
    """
    A maildrop closed while it opens a message (which may write the index)
    keeps the lock until that work has ended.
    """
    deliverToMaildir(tmp_path / "alice", b"a\n", name="1.a")
    later = ManualRunner()
    s = MaildirStore(str(tmp_path / "{user}"), runInThread=later)
    opened = s.openMaildrop("alice")
    later.runAll()
    maildrop = result(opened)
    reading = maildrop.openMessage(0)
    maildrop.close()
    with pytest.raises(MaildropInUse):
        result(store(tmp_path).openMaildrop("alice"))
    later.runAll()
    result(reading).close()
    later.runAll()
    result(store(tmp_path).openMaildrop("alice")).close()


def test_lockHeldUntilClosedAndTheLastWorkEnds(tmp_path: Path) -> None:
    """
    File work that ends while the maildrop is open leaves the lock held;
    closed with two pieces of work running, it keeps the lock until the
    second has ended.
    """
    deliverToMaildir(tmp_path / "alice", b"a\n", name="1.a")
    deliverToMaildir(tmp_path / "alice", b"b\n", name="2.b")
    later = ManualRunner()
    runOne = later.runOne

    def inUse() -> bool:
        try:
            result(store(tmp_path).openMaildrop("alice")).close()
        except MaildropInUse:
            return True
        return False

    opened = MaildirStore(str(tmp_path / "{user}"), runInThread=later).openMaildrop("alice")
    runOne()
    maildrop = result(opened)
    reading = maildrop.openMessage(0)
    runOne()
    result(reading).close()
    assert inUse()
    reading = maildrop.openMessage(1)
    deleting = maildrop.deleteMessages([0])
    maildrop.close()
    runOne()
    result(reading).close()
    assert inUse()
    runOne()
    assert result(deleting) is None
    assert not later.calls
    assert not inUse()


def test_lockReleasedWhenTheRunnerRefuses(tmp_path: Path) -> None:
    """
    Work the thread runner refuses at once (stopped, or no thread to be
    had) fails its Deferred, and the maildrop's close() still gives the
    lock back.
    """
    deliverToMaildir(tmp_path / "alice", b"a\n", name="1.a")
    refusing = False

    def runner(f: Any, *args: Any) -> Deferred[Any]:
        if refusing:
            raise RuntimeError("can't start new thread")
        return syncRun(f, *args)

    s = MaildirStore(str(tmp_path / "{user}"), runInThread=runner)
    maildrop = result(s.openMaildrop("alice"))
    refusing = True
    # Message 1 is not held in memory by the read-ahead after a login
    # through openMaildrop alone: opening it is thread work.
    opening = maildrop.openMessage(0)
    failures: list[Failure] = []
    opening.addErrback(failures.append)
    assert len(failures) == 1 and failures[0].check(RuntimeError)
    maildrop.close()
    refusing = False
    result(store(tmp_path).openMaildrop("alice")).close()


def test_messageInNewAndCurListedOnce(tmp_path: Path) -> None:
    """
    A message seen in both new/ and cur/ (moved between the two listings)
    is listed once, and read from cur/.
    """
    path = deliverToMaildir(tmp_path / "alice", b"a\n", name="1.a")
    os.link(path, tmp_path / "alice" / "cur" / "1.a:2,S")
    maildrop, infos = login(store(tmp_path))
    assert [i.uid for i in infos] == ["1.a"]
    os.unlink(path)
    reader = result(maildrop.openMessage(0))
    assert result(reader.read(10)) == b"a\n"
    reader.close()
    maildrop.close()


def test_specialFilesNeverRead(tmp_path: Path) -> None:
    """
    A FIFO or a device where a message should be is left out with a
    warning (the login neither waits on the FIFO nor reads /dev/zero
    forever), under a ,W= name too.
    """
    deliverToMaildir(tmp_path / "alice", b"good\n", name="1.good")
    new = tmp_path / "alice" / "new"
    os.mkfifo(new / "2.fifo")
    (new / "3.zero").symlink_to("/dev/zero")
    os.mkfifo(new / "4.fifo,W=10")
    with capturedLogs() as events:
        maildrop, infos = login(store(tmp_path))
    assert [(i.uid, i.size) for i in infos] == [("1.good", 6)]
    assert len([e for e in events if e["log_level"].name == "warn"]) == 3
    maildrop.close()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="no /proc/self/fd")
def test_fileReplacedBySpecialFileNotRead(tmp_path: Path) -> None:
    """
    A message whose file another program replaced after the login with a
    FIFO is unavailable (logged), not sent as an empty message: a FIFO is
    opened without blocking, and reads as empty when no one writes to it.
    It is closed again.
    """
    deliverToMaildir(tmp_path / "alice", b"good\n", name="1.good")
    maildrop, infos = login(store(tmp_path))
    assert [(i.uid, i.size) for i in infos] == [("1.good", 6)]
    path = tmp_path / "alice" / "new" / "1.good"
    path.unlink()
    os.mkfifo(path)
    before = len(os.listdir("/proc/self/fd"))
    with capturedLogs() as events, pytest.raises(MessageUnavailable):
        result(maildrop.openMessage(0))
    assert len(os.listdir("/proc/self/fd")) == before  # the FIFO was closed
    maildrop.close()
    assert [formatEvent(e) for e in events] == [
        f"Cannot read message '1.good' in {tmp_path / 'alice'}:"
        f" [Errno {errno.EISDIR}] not a regular file"
    ]


def test_specialFileInCurLoggedWithItsPath(tmp_path: Path) -> None:
    """
    The warning for a file left out names the directory it is in: cur/
    for one there, although new/ was opened first.
    """
    deliverToMaildir(tmp_path / "alice", b"good\n", name="1.good")
    os.mkfifo(tmp_path / "alice" / "cur" / "2.fifo:2,S")
    with capturedLogs() as events:
        maildrop, infos = login(store(tmp_path))
    maildrop.close()
    assert [i.uid for i in infos] == ["1.good"]
    assert [formatEvent(e) for e in events] == [
        f"Skipping '{tmp_path / 'alice' / 'cur' / '2.fifo:2,S'}':"
        f" [Errno {errno.EINVAL}] not a regular file"
    ]


def test_symbolicLinksNotFollowed(tmp_path: Path) -> None:
    """
    A symbolic link where a message should be is not followed, even to a
    file the server could read: left out with a warning, under a ,W= name
    too.  A popserv.lock that is a link (even a dangling one) fails the
    login and creates nothing.
    """
    secret = tmp_path / "secret"
    secret.write_bytes(b"Subject: not yours\n\nroot's file\n")
    deliverToMaildir(tmp_path / "alice", b"good\n", name="1.good")
    new = tmp_path / "alice" / "new"
    (new / "2.link").symlink_to(secret)
    (new / "3.link,W=33").symlink_to(secret)
    with capturedLogs() as events:
        maildrop, infos = login(store(tmp_path))
    assert [i.uid for i in infos] == ["1.good"]
    assert len([e for e in events if e["log_level"].name == "warn"]) == 2
    # A message replaced by a link after the login listed it is not
    # followed either when retrieved: unavailable, not the link's target.
    good = new / "1.good"
    good.unlink()
    good.symlink_to(secret)
    with capturedLogs() as events, pytest.raises(MessageUnavailable):
        result(maildrop.openMessage(0))
    assert "Cannot read message '1.good'" in formatEvent(events[-1])
    maildrop.close()
    deliverToMaildir(tmp_path / "bob", b"b\n", name="1.b")
    (tmp_path / "bob" / "popserv.lock").symlink_to(tmp_path / "created-by-the-server")
    with pytest.raises(MaildropUnavailable), capturedLogs() as events:
        result(store(tmp_path).openMaildrop("bob"))
    assert not (tmp_path / "created-by-the-server").exists()
    # The operator is told whose maildrop failed, and why.
    assert [formatEvent(e) for e in events if e["log_level"].name == "error"] == [
        f"Maildrop of 'bob' unavailable: [Errno {errno.ELOOP}] {os.strerror(errno.ELOOP)}:"
        f" '{tmp_path / 'bob' / LOCK_NAME}'"
    ]
    # A link to a file that exists is not followed either: the server
    # neither opens nor locks a file elsewhere.
    deliverToMaildir(tmp_path / "carol", b"c\n", name="1.c")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"")
    (tmp_path / "carol" / LOCK_NAME).symlink_to(elsewhere)
    with pytest.raises(MaildropUnavailable), capturedLogs():
        result(store(tmp_path).openMaildrop("carol"))
    with open(elsewhere, "rb") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # not held by the store


def test_lockReplacedByALinkWhileMade(tmp_path: Path, monkeypatch: Any) -> None:
    """
    A symbolic link put where popserv.lock is to be made, after the first
    login found none and made the directories, is not followed either: the
    login fails, logged, and creates nothing where the link points.
    """
    target = tmp_path / "created-by-the-server"
    makeDirectories = maildir._makePrivateDirectories

    def planting(root: str, path: str) -> None:
        makeDirectories(root, path)
        os.symlink(target, os.path.join(path, LOCK_NAME))

    monkeypatch.setattr(maildir, "_makePrivateDirectories", planting)
    with capturedLogs() as events, pytest.raises(MaildropUnavailable):
        result(store(tmp_path).openMaildrop("alice"))
    assert not target.exists()
    assert [formatEvent(e) for e in events] == [
        f"Maildrop of 'alice' unavailable: [Errno {errno.ELOOP}] {os.strerror(errno.ELOOP)}:"
        f" '{tmp_path / 'alice' / LOCK_NAME}'"
    ]


def test_oddNamesSortedAndNamed(tmp_path: Path) -> None:
    """
    Names outside the common form (times of other lengths, digits that
    are not ASCII, names that are no valid UIDL) are ordered by _sortKey
    and given digest UIDLs, and do not stop the login.
    """
    names = ["99.a", "100.b", "\u00b2.c", "\u0663.d", "x y", "1" * 80, "2.\u00e9"]
    for name in names:
        deliverToMaildir(tmp_path / "alice", b"m\n", name=name)
    uids = [uid for uid, _, _ in snapshot(store(tmp_path))]
    assert uids == [uidFor(n) for n in sorted(names, key=maildir._sortKey)]


def test_nameNotUTF8GetsADigest(tmp_path: Path) -> None:
    """
    A file whose name is not UTF-8 (listed with surrogate escapes) is
    listed with a digest UIDL, the same at every login, and retrieved and
    deleted like any other message.
    """
    deliverToMaildir(tmp_path / "alice", b"plain\n", name="1700000000.M0.host")
    new = os.fsencode(tmp_path / "alice" / "new")
    with open(os.path.join(new, b"1700000001.M1.h\xffst"), "wb") as f:
        f.write(b"latin-1 name\n")
    digest = "x" + hashlib.sha256(b"1700000001.M1.h\xffst").hexdigest()[:40]
    s = store(tmp_path)
    assert [uid for uid, _, _ in snapshot(s)] == ["1700000000.M0.host", digest]
    maildrop, infos = login(s)
    assert [(i.uid, i.size) for i in infos] == [("1700000000.M0.host", 7), (digest, 14)]
    reader = result(maildrop.openMessage(1))
    assert result(reader.read(100)) == b"latin-1 name\n"
    reader.close()
    result(maildrop.deleteMessages([1]))
    maildrop.close()
    assert os.listdir(new) == [b"1700000000.M0.host"]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.text(st.sampled_from("0123456789.:aMb \u00e9\n"), min_size=1, max_size=14).filter(
            lambda n: not n.startswith(".")
        ),
        max_size=12,
    ),
    st.lists(st.text(st.sampled_from("0123.aMb"), max_size=8), max_size=6),
    st.sampled_from(["drawn", "same names", "some of the names", "one doubled, one missing"]),
    st.randoms(use_true_random=False),
)
def test_orderedAgreesWithSortKey(bases: list[str], hint: list[str], kind: str, rng: Any) -> None:
    """
    Whatever the names and the index's order, the listing is the distinct
    names sorted by _sortKey, each with the UIDL uidFor gives it: also when
    the index names exactly the listed messages, in any order, or some of
    them (the others new since), and when it has as many names but one
    twice and another not at all.
    """
    distinct = sorted(set(bases))
    if kind == "same names":
        hint = rng.sample(distinct, len(distinct))
    elif kind == "some of the names":
        hint = rng.sample(distinct, rng.randint(0, len(distinct)))
    elif kind == "one doubled, one missing" and len(distinct) > 1:
        hint = distinct[:-1] + distinct[:1]
    joined = ["/".join(bases)]
    listing = SimpleNamespace(bases=bases)
    listing.nameOrder, listing.uidsValid = maildir._checkNames(joined, bases)
    order, uids = maildir._ordered(listing, hint)  # type: ignore[arg-type]
    assert order == sorted(set(bases), key=maildir._sortKey)
    assert uids == [uidFor(b) for b in order]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.builds(
            "{}.{}{}".format,
            st.sampled_from(["1700000000", "1700000001", "1800000000"]),
            st.sampled_from(["M", "P1M", "V8I1bM", "P2_", ""]),
            st.text(st.sampled_from("0123456789MP.h"), max_size=8),
        ),
        max_size=12,
    ),
    st.randoms(use_true_random=False),
)
def test_deliveryNamesOrderedBySortKey(bases: list[str], rng: Any) -> None:
    """
    Names as delivery agents write them, all with times of one length
    (the listing's quick sort), are ordered as _sortKey orders them,
    microseconds included, from the index's order or from none.
    """
    distinct = sorted(set(bases))
    listing = SimpleNamespace(bases=bases)
    listing.nameOrder, listing.uidsValid = maildir._checkNames(["/".join(bases)], bases)
    assert listing.nameOrder.byTime
    for hint in ([], rng.sample(distinct, len(distinct))):
        order, _ = maildir._ordered(listing, hint)  # type: ignore[arg-type]
        assert order == sorted(distinct, key=maildir._sortKey)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["M", ""]),
    st.integers(min_value=1, max_value=7),
    st.lists(
        st.tuples(
            st.sampled_from(["1700000000", "1700000001", "1800000000"]),
            st.integers(min_value=0, max_value=9_999_999),
            st.text(st.sampled_from("0123456789MPQ.h,S=:"), max_size=8),
        ),
        max_size=12,
    ),
    st.sampled_from(["as written", "one other width", "one without M", "one with M"]),
    st.integers(min_value=0, max_value=2),
    st.randoms(use_true_random=False),
)
def test_namesOfOneWriterNeedNoKey(
    marker: str,
    width: int,
    fields: list[tuple[str, int, str]],
    spoiler: str,
    cut: int,
    rng: Any,
) -> None:
    """
    Names as one program writes them, the microseconds right after the "."
    with one number of digits ("1700000000.M004242P1..."), or none in any
    name (qmail's "1700000000.P1Q2..."), are in order compared as strings:
    the listing says so (nameOrder.exact), and its order is _sortKey's
    with no more sorting.  One name of another width, or one with
    microseconds among names without, or the reverse, is not taken for
    that, and is ordered by the key all the same.  The listing's names
    come in one "/"-joined string per directory.
    """
    if marker:
        bases = [
            f"{t}.M{u % 10**width:0{width}d}{'P' + r if r[:1].isdigit() else r}"
            for t, u, r in fields
        ]
    else:
        bases = [f"{t}.P{u}{r.replace('M', 'Q')}" for t, u, r in fields]
    if bases and spoiler != "as written":
        other = {
            "one other width": f"1700000000.M{'1' * (width + 1)}P9.h",
            "one without M": "1700000000.P77.h",
            "one with M": "1700000000.M5P1.h",
        }[spoiler]
        bases.insert(rng.randrange(len(bases) + 1), other)
    bases = [b for b in bases if "/" not in b]
    joined = ["/".join(bases[:cut]), "/".join(bases[cut:])]
    listing = SimpleNamespace(bases=bases)
    listing.nameOrder, listing.uidsValid = maildir._checkNames(joined, bases)
    expected = sorted(set(bases), key=maildir._sortKey)
    if spoiler == "as written" or not bases:
        assert listing.nameOrder.exact
    elif (marker, spoiler) in [
        ("M", "one other width"),
        ("M", "one without M"),
        ("", "one with M"),
    ]:
        assert not listing.nameOrder.exact
    if listing.nameOrder.exact:
        assert sorted(set(bases)) == expected
    order, _ = maildir._ordered(listing, [])  # type: ignore[arg-type]
    assert order == expected


MESSAGE_PARTS = [
    b"a",
    b"\r",
    b"\n",
    b"\r\n",
    b".",
    b" ",
    b"\xc3\xa4",
    b"Subject: \xc3\xa4\n",
    b"\n\n",
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(MESSAGE_PARTS), max_size=40), st.integers(0, 3))
def test_measureAgreesWithEncoder(tmp_path_factory: Any, parts: list[bytes], repeat: int) -> None:
    """
    The sizes measureEach() reads from a file are the encoder's, octet for
    octet, for small files (read at once) and large ones (read in chunks)
    alike; with a wire size known from the name, the downgraded size is
    that plus what the header adds.
    """
    data = b"".join(parts) * (1 + repeat * 40_000 // max(len(b"".join(parts)), 1))
    assertMeasured(tmp_path_factory.mktemp("m"), data)


def measure(directory: int, known: int | None, nowait: int | None) -> tuple[int, int, int]:
    """
    What maildir.measureEach tells of the file "m" in C{directory}.
    """
    # A Maildir none of whose names give a size passes no function at all.
    knownSize = None if known is None else lambda known: known
    [(_, sizes)] = maildir.measureEach([(known, directory, "m")], knownSize, nowait)
    assert not isinstance(sizes, OSError)
    return sizes


def assertMeasured(directory: Path, data: bytes) -> None:
    (directory / "m").write_bytes(data)
    fd = os.open(directory, os.O_RDONLY)
    try:
        wire, downgraded = wireSize(data), wireSize(data, downgrade=True)
        # Read as a login reads (without waiting, where the system can) and
        # in turn.
        # Dovecot's ,W= for the file: no CRLF for an unterminated last line.
        named = wire - (2 if data and not data.endswith(b"\n") else 0)
        # A wrong one: taken for a file too large to read whole, if a file
        # of its size can have it (CRLF at most doubles it).
        large = len(data) >= maildir._FIRST_READ and named + 1 <= 2 * len(data)
        wrong = named + 1 if large else named
        for nowait in {maildir.NOWAIT, None}:
            assert measure(fd, None, nowait) == (wire, downgraded, len(data))
            assert measure(fd, named, nowait) == (wire, downgraded, len(data))
            assert measure(fd, named + 1, nowait) == (
                wrong + wire - named,
                wrong + downgraded - named,
                len(data),
            )
    finally:
        os.close(fd)


@pytest.mark.parametrize("size", [maildir._FIRST_READ + d for d in (-1, 0, 1)])
@pytest.mark.parametrize("end", [b"\n", b"\r", b"\r\n", b"x"])
def test_measureAtReadBoundary(tmp_path: Path, size: int, end: bytes) -> None:
    """
    Files just below, at and above the size of the first read, ending in
    each way a line can (a CR held back across reads, too), are sized
    exactly.
    """
    header = "Subject: \u00e4\n\n".encode()
    body = (b"line\r\n" * size)[: size - len(header) - len(end)]
    assertMeasured(tmp_path, header + body + end)


def test_measureAsksNameOnlyOfLargeFiles(tmp_path: Path) -> None:
    """
    measureEach() asks for the size a file's name gives only of a file too
    large for its first read: one read whole is counted anyway, and a
    Maildir whose every name has ,W= (Dovecot's) would otherwise parse
    every name at a first login.
    """
    small = b"Subject: x\n\nbody\n"
    large = b"line\n" * (maildir._FIRST_READ // 5 + 1)
    (tmp_path / "small").write_bytes(small)
    (tmp_path / "large").write_bytes(large)
    asked: list[str] = []

    def knownSize(key: str) -> int | None:
        asked.append(key)
        return None

    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        files = [("small", fd, "small"), ("large", fd, "large")]
        measured = dict(maildir.measureEach(files, knownSize))
    finally:
        os.close(fd)
    assert asked == ["large"]
    assert measured == {
        "small": (wireSize(small),) * 2 + (len(small),),
        "large": (wireSize(large),) * 2 + (len(large),),
    }


# Reading ahead of a client that fetches in order.


def readAll(reader: Any) -> bytes:
    chunks = []
    for _ in range(1000):
        chunk = result(reader.read(64 * 1024))
        if not chunk:
            break
        chunks.append(chunk)
    reader.close()
    return b"".join(chunks)


@pytest.fixture
def trips(monkeypatch: Any) -> list[str]:
    """
    The names of the functions the Maildir store ran "in a thread", with
    read-ahead cut to 10,000 octets.
    """
    names: list[str] = []
    monkeypatch.setattr(maildir, "_READ_AHEAD", 10_000)

    def run(f: Any, *args: Any) -> Deferred[Any]:
        names.append(f.__name__)
        return syncRun(f, *args)

    monkeypatch.setattr(maildir, "deferToThread", run)
    return names


def fetchInOrder(tmp_path: Path, sizes: list[int]) -> tuple[Any, list[bytes]]:
    messages = [b"%d\n" % i + b"x" * (size - 3) + b"\n" for i, size in enumerate(sizes)]
    for i, message in enumerate(messages):
        deliverToMaildir(tmp_path / "alice", message, name=f"{1000 + i}.M{i}.host")
    maildrop = result(MaildirStore(str(tmp_path / "{user}")).openMaildrop("alice"))
    return maildrop, messages


def test_readAheadInOrder(tmp_path: Path, trips: list[str]) -> None:
    """
    Once a client opened two consecutive messages, opening the next one
    also reads the whole of those after it that fit in the read-ahead
    budget, and they are served without another trip to a thread; serving
    the last of them reads the next run.  A message over the budget ends
    the run; every message reads exact.
    """
    maildrop, messages = fetchInOrder(tmp_path, [4000] * 5 + [30_000, 4000, 4000])
    del trips[:]  # the login's
    for i, message in enumerate(messages):
        assert readAll(result(maildrop.openMessage(i))) == message
    maildrop.close()
    assert trips == [
        "_open",  # 0: not in order yet
        "_openReadingAhead",  # 1, and 2 and 3 (8,000 of 10,000 octets)
        "_readRun",  # 3 served: 4; 5 is over the budget (nothing read after 4)
        "_openReadingAhead",  # 5, and 6 and 7 (nothing after them)
    ]


def test_readAheadFillsTheBudget(tmp_path: Path, trips: list[str]) -> None:
    """
    Messages that add up to exactly the read-ahead budget are all read
    ahead: the budget is a bound the run may reach.
    """
    maildrop, messages = fetchInOrder(tmp_path, [5000] * 4)
    del trips[:]
    for i, message in enumerate(messages):
        assert readAll(result(maildrop.openMessage(i))) == message
    maildrop.close()
    assert trips == ["_open", "_openReadingAhead"]  # 1 read 2 and 3 ahead


def test_readAheadDroppedOutOfOrder(tmp_path: Path, trips: list[str]) -> None:
    """
    A client that leaves the order gets its messages read as they are
    asked for, and what was read ahead for the old order is dropped.
    """
    maildrop, messages = fetchInOrder(tmp_path, [3000] * 6)
    del trips[:]
    for i in (0, 1, 5, 2, 3):
        assert readAll(result(maildrop.openMessage(i))) == messages[i]
    maildrop.close()
    assert trips == ["_open", "_openReadingAhead", "_open", "_open", "_openReadingAhead"]


@pytest.fixture
def later(monkeypatch: pytest.MonkeyPatch) -> ManualRunner:
    """
    The Maildir store's thread work run when the test says, with read-ahead
    cut to 10,000 octets.
    """
    runner = ManualRunner()
    monkeypatch.setattr(maildir, "_READ_AHEAD", 10_000)
    monkeypatch.setattr(maildir, "deferToThread", runner)
    return runner


def fetchLater(tmp_path: Path, later: ManualRunner, count: int) -> tuple[Any, list[bytes]]:
    """
    C{count} messages of 3,000 octets, logged in to, with 0 to 3 fetched in
    order: 1 read 2 to 4 ahead, and 2 and 3 were served from them.
    """
    messages = [b"%d\n" % i + b"x" * 2997 + b"\n" for i in range(count)]
    for i, message in enumerate(messages):
        deliverToMaildir(tmp_path / "alice", message, name=f"{1000 + i}.M{i}.host")
    opened = MaildirStore(str(tmp_path / "{user}")).openMaildrop("alice")
    later.runAll()
    maildrop = result(opened)
    for i in range(4):
        reading = maildrop.openMessage(i)
        later.runAll()
        assert readAll(result(reading)) == messages[i]
    return maildrop, messages


def test_readAheadNextRunWhileLastSent(tmp_path: Path, later: ManualRunner) -> None:
    """
    Serving the last message read ahead starts reading the next run in a
    thread, without waiting for it; the next RETR, if it comes before the
    run is read, waits for it and is served from it, not read again.
    """
    maildrop, messages = fetchLater(tmp_path, later, 7)
    reading = maildrop.openMessage(4)  # the last of 2 to 4
    assert reading.called  # from memory
    assert later.names() == ["_readRun"]  # 5 and 6, meanwhile
    assert readAll(result(reading)) == messages[4]
    waiting = maildrop.openMessage(5)
    assert not waiting.called
    assert later.names() == ["_readRun"]  # not read a second time
    later.runOne()
    assert readAll(result(waiting)) == messages[5]
    assert readAll(result(maildrop.openMessage(6))) == messages[6]
    assert later.calls == []  # nothing after 6
    maildrop.close()


def test_readAheadNextRunDroppedOutOfOrder(tmp_path: Path, later: ManualRunner) -> None:
    """
    A client that leaves the order while the next run is read gets the
    message it asked for, read for it; the run is dropped when it arrives,
    and a message of it asked for later is read again.
    """
    maildrop, messages = fetchLater(tmp_path, later, 7)
    assert readAll(result(maildrop.openMessage(4))) == messages[4]
    assert later.names() == ["_readRun"]
    reading = maildrop.openMessage(1)
    assert later.names() == ["_readRun", "_open"]
    later.runAll()
    assert readAll(result(reading)) == messages[1]
    reading = maildrop.openMessage(5)
    assert later.names() == ["_open"]  # not served from the dropped run
    later.runAll()
    assert readAll(result(reading)) == messages[5]
    maildrop.close()


def test_readAheadNextRunKeepsLock(tmp_path: Path, later: ManualRunner) -> None:
    """
    A maildrop closed while the next run is read keeps its lock until the
    reading has ended, as for any of its file work; what was read is
    dropped.
    """
    maildrop, messages = fetchLater(tmp_path, later, 7)
    assert readAll(result(maildrop.openMessage(4))) == messages[4]
    maildrop.close()
    with pytest.raises(MaildropInUse):
        result(store(tmp_path).openMaildrop("alice"))
    later.runAll()
    assert maildrop._ahead is None
    result(store(tmp_path).openMaildrop("alice")).close()


def test_readAheadNextRunWaiterClosed(tmp_path: Path, later: ManualRunner) -> None:
    """
    A RETR waiting for the next run when the maildrop is closed (the
    connection went) reads nothing once the run is in: the lock is
    released by then, and the message is unavailable.
    """
    maildrop, messages = fetchLater(tmp_path, later, 7)
    assert readAll(result(maildrop.openMessage(4))) == messages[4]
    waiting = maildrop.openMessage(5)
    maildrop.close()
    later.runAll()
    assert later.calls == []  # no trip of its own
    with pytest.raises(MessageUnavailable):
        result(waiting)
    result(store(tmp_path).openMaildrop("alice")).close()  # unlocked


def test_readAheadNextRunRefused(tmp_path: Path, later: ManualRunner) -> None:
    """
    A runner that refuses the reading of the next run (stopping) fails
    nothing: the next RETR reads its message itself.
    """
    maildrop, messages = fetchLater(tmp_path, later, 7)
    assert readAll(result(maildrop.openMessage(4))) == messages[4]
    d, _, _ = later.calls.pop(0)
    d.errback(Failure(RuntimeError("the thread pool is stopping")))
    reading = maildrop.openMessage(5)
    assert later.names() == ["_openReadingAhead"]
    later.runAll()
    assert readAll(result(reading)) == messages[5]
    maildrop.close()


def test_readAheadStopsAfterChangedMessage(tmp_path: Path, trips: list[str]) -> None:
    """
    A message read ahead whose file changed since it was sized is served as
    it is now, and ends the run: the budget was planned with its old size,
    and the session must not hold more than the budget.
    """
    maildrop, messages = fetchInOrder(tmp_path, [3000] * 5)
    messages[2] = b"2\n" + b"y" * 5997 + b"\n"
    (tmp_path / "alice" / "new" / "1002.M2.host").write_bytes(messages[2])
    del trips[:]
    with capturedLogs():
        for i, message in enumerate(messages):
            assert readAll(result(maildrop.openMessage(i))) == message
    maildrop.close()
    # 1 read 2 ahead (its size had changed) and stopped; 2 served, 3 and 4
    # were read.
    assert trips == ["_open", "_openReadingAhead", "_readRun"]


def _pageCache(
    monkeypatch: pytest.MonkeyPatch, root: Path, count: int, uncached: set[int]
) -> list[tuple[int, int]]:
    """
    Make the files of messages C{uncached} (indexes into the C{count} that
    C{fetchInOrder} delivered) seem absent from the page cache to reads that
    must not wait (C{RWF_NOWAIT}); the list returned gets (index, length)
    for each C{POSIX_FADV_WILLNEED} asked of the disk.
    """
    new = root / "alice" / "new"
    inodes = {(new / f"{1000 + i}.M{i}.host").stat().st_ino: i for i in range(count)}
    realPreadv = os.preadv
    advised: list[tuple[int, int]] = []

    def preadv(fd: int, buffers: list[bytearray], offset: int, flags: int = 0) -> int:
        if flags and inodes.get(os.fstat(fd).st_ino) in uncached:
            raise BlockingIOError(errno.EAGAIN, "would block")
        return realPreadv(fd, buffers, offset, flags)

    def posix_fadvise(fd: int, offset: int, length: int, advice: int) -> None:
        assert (offset, advice) == (0, os.POSIX_FADV_WILLNEED)
        advised.append((inodes[os.fstat(fd).st_ino], length))

    monkeypatch.setattr(os, "preadv", preadv)
    monkeypatch.setattr(os, "posix_fadvise", posix_fadvise)
    return advised


@pytest.mark.skipif(not SYSTEM_HAS_NOWAIT, reason="no RWF_NOWAIT on this system")
def test_readAheadStopsAtUncachedMessage(
    tmp_path: Path, trips: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    A message read ahead that is not in the page cache ends the run: it and
    the rest of the run are asked of the disk, not read, and the next trip
    reads them.  The message asked for is read all the same.
    """
    maildrop, messages = fetchInOrder(tmp_path, [3000] * 6)
    uncached = {3}
    advised = _pageCache(monkeypatch, tmp_path, 6, uncached)
    del trips[:]
    for i in range(3):
        assert readAll(result(maildrop.openMessage(i))) == messages[i]
    # 1 read 2 ahead; 3 was not cached: it and 4 (10,000 octets less 2's
    # 3,000) were asked of the disk.  Serving 2 read the run after it, and
    # found 3 still not cached: it, 4 and 5 were asked again.
    assert trips == ["_open", "_openReadingAhead", "_readRun"]
    assert advised == [(3, 3000), (4, 3000), (3, 3000), (4, 3000), (5, 3000)]
    uncached.clear()  # the disk fetched them
    for i in range(3, 6):
        assert readAll(result(maildrop.openMessage(i))) == messages[i]
    maildrop.close()
    assert trips == ["_open", "_openReadingAhead", "_readRun", "_openReadingAhead"]
    assert len(advised) == 5


def test_readAheadStopsAtGrownMessage(tmp_path: Path, trips: list[str]) -> None:
    """
    A message read ahead whose file grew past one read since it was sized
    is left to its own RETR, which sends the whole of it: what one read
    ahead got is only its start, never served as the message.
    """
    maildrop, messages = fetchInOrder(tmp_path, [3000] * 4)
    messages[2] = b"2\n" + b"y" * (maildir._READ_SIZE + 1000) + b"\n"
    (tmp_path / "alice" / "new" / "1002.M2.host").write_bytes(messages[2])
    del trips[:]
    with capturedLogs():
        for i, message in enumerate(messages):
            assert readAll(result(maildrop.openMessage(i))) == message
    maildrop.close()
    # 1 opened 2 ahead, found it too large and left it; 2 read 3 ahead,
    # and the rest of 2 took a trip of its own.
    assert trips == ["_open", "_openReadingAhead", "_openReadingAhead", "read"]


@pytest.mark.skipif(not SYSTEM_HAS_NOWAIT, reason="no RWF_NOWAIT on this system")
@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="no /proc/self/fd")
def test_uncachedMessageReadAndMissingOneNotAdvised(
    tmp_path: Path, trips: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    A message the client asks for is read even if it is not in the page
    cache (only reading ahead waits for the disk).  A message missing from
    new/ and cur/ in the run after an uncached one ends the request to the
    disk quietly: the RETR that read ahead still succeeds.
    """
    maildrop, messages = fetchInOrder(tmp_path, [3000] * 6)
    advised = _pageCache(monkeypatch, tmp_path, 6, {0, 3})
    (tmp_path / "alice" / "new" / "1004.M4.host").unlink()
    del trips[:]
    descriptors = len(os.listdir("/proc/self/fd"))
    with capturedLogs() as events:
        for i in range(4):
            assert readAll(result(maildrop.openMessage(i))) == messages[i]
        with pytest.raises(MessageUnavailable):
            result(maildrop.openMessage(4))
        assert readAll(result(maildrop.openMessage(5))) == messages[5]
    maildrop.close()
    assert events == []
    # The uncached file found while reading ahead was closed again, and
    # so was the lock.
    assert len(os.listdir("/proc/self/fd")) == descriptors - 1
    # 1 read 2 ahead; 3 was not cached and asked of the disk; 4 is gone.
    # Serving 2 read the run after it: 3 was asked again.
    assert advised == [(3, 3000), (3, 3000)]
    assert trips[:3] == ["_open", "_openReadingAhead", "_readRun"]


def test_readAheadStopsQuietlyAtMissingMessage(tmp_path: Path, trips: list[str]) -> None:
    """
    A message another program removed ends the read-ahead without a word;
    asking for it then fails as it would have, and the rest still read.
    """
    maildrop, messages = fetchInOrder(tmp_path, [3000] * 4)
    (tmp_path / "alice" / "new" / "1002.M2.host").unlink()
    with capturedLogs() as events:
        assert readAll(result(maildrop.openMessage(0))) == messages[0]
        assert readAll(result(maildrop.openMessage(1))) == messages[1]
        assert events == []
        with pytest.raises(MessageUnavailable):
            result(maildrop.openMessage(2))
        assert readAll(result(maildrop.openMessage(3))) == messages[3]
    maildrop.close()
    # 2 and 3 were asked for in order: each trip would read ahead.
    assert trips[-4:] == ["_open", "_openReadingAhead", "_openReadingAhead", "_openReadingAhead"]


def test_deletionSyncFailureLogged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A directory sync that fails after the deletions (EIO) is logged: the
    messages are removed all the same, and QUIT is not refused for it.
    A file system that cannot sync directories (EINVAL) is not warned of.
    """
    deliverToMaildir(tmp_path / "alice", b"a\n", name="1.a")
    deliverToMaildir(tmp_path / "alice", b"b\n", name="2.b")
    maildrop, _ = login(store(tmp_path))
    real = os.fsync
    failures = iter([OSError(errno.EIO, "Input/output error"), OSError(errno.EINVAL, "nope")])

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise next(failures)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with capturedLogs() as events:
        result(maildrop.deleteMessages([0]))
    maildrop.close()
    warnings = [formatEvent(e) for e in events if e["log_level"].name == "warn"]
    assert warnings == [
        f"Cannot sync the deletions in {tmp_path / 'alice' / 'new'}: [Errno 5] Input/output error"
    ]
    assert sorted(p.name for p in (tmp_path / "alice" / "new").iterdir()) == ["2.b"]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="no /proc/self/fd")
def test_deletionLeavesNoDescriptorOpen(tmp_path: Path) -> None:
    """
    Deleting messages and closing the maildrop leaves open no descriptor
    it made: not the directories synced after the unlinks, whether the
    sync succeeds or fails, nor the lock.
    """
    for i in range(3):
        deliverToMaildir(tmp_path / "alice", b"%d\n" % i, name=f"{i}.m")
    before = len(os.listdir("/proc/self/fd"))
    maildrop, _ = login(store(tmp_path))
    result(maildrop.deleteMessages([0, 2]))
    maildrop.close()
    assert len(os.listdir("/proc/self/fd")) == before
    assert sorted(p.name for p in (tmp_path / "alice" / "new").iterdir()) == ["1.m"]


def test_deletionSyncOfMissingDirectoryLogged(tmp_path: Path) -> None:
    """
    A subdirectory that cannot be opened to sync the deletions (cur/,
    removed by another program during the session) is logged, and fails
    nothing: the message in new/ is removed all the same.
    """
    deliverToMaildir(tmp_path / "alice", b"a\n", name="1.a")
    deliverToMaildir(tmp_path / "alice", b"b\n", name="2.b")
    maildrop, _ = login(store(tmp_path))
    (tmp_path / "alice" / "cur").rmdir()
    with capturedLogs() as events:
        assert result(maildrop.deleteMessages([0])) is None
    maildrop.close()
    warnings = [formatEvent(e) for e in events if e["log_level"].name == "warn"]
    assert len(warnings) == 1
    assert warnings[0].startswith("Cannot open ") and "/cur to sync its deletions" in warnings[0]
    assert sorted(p.name for p in (tmp_path / "alice" / "new").iterdir()) == ["2.b"]


#: A Maildir++ quota file as dovecot-lda leaves it after two deliveries.
MAILDIRSIZE = b"204800S\n0 0\n60013 1\n113 1\n"


def test_deletionsSubtractedFromMaildirSize(tmp_path: Path) -> None:
    """
    The messages a session removes are taken off the Maildir++ quota
    file, maildirsize, in one appended line of a negative size and count
    (the Maildir++ rules, README.maildirquota: every program that removes
    mail records it; Dovecot's quota = maildir reads it).  The size is the
    name's S= where it has one, as the quota counts it, else the size on
    disk.  A message another program removed first was not this
    session's to count.
    """
    path = tmp_path / "alice"
    deliverToMaildir(path, b"x" * 90 + b"\n", name="1700000000.M1P1.h,S=60013,W=60014")
    deliverToMaildir(path, b"kept\n", name="1700000000.M2P1.h,S=5,W=6")
    plain = deliverToMaildir(path, b"no size in the name\n", name="1700000000.M3P1.h")
    gone = deliverToMaildir(path, b"gone\n", name="1700000000.M4P1.h,S=5,W=6")
    (path / "maildirsize").write_bytes(MAILDIRSIZE)
    maildrop, _ = login(store(tmp_path))
    os.rename(plain, path / "cur" / (plain.name + ":2,S"))
    gone.unlink()
    result(maildrop.deleteMessages([0, 2, 3]))
    maildrop.close()
    assert (path / "maildirsize").read_bytes() == MAILDIRSIZE + b"-60033 -2\n"
    assert sorted(os.listdir(path / "new")) == ["1700000000.M2P1.h,S=5,W=6"]


def test_noMaildirSizeMadeOrChangedForNothing(tmp_path: Path) -> None:
    """
    A Maildir without maildirsize gets none (it has no quota, or the next
    program that needs one counts it afresh), and a session that removed
    nothing itself appends nothing.
    """
    deliverToMaildir(tmp_path / "alice", b"a\n", name="1.a")
    deliverToMaildir(tmp_path / "alice", b"b\n", name="2.b")
    maildrop, _ = login(store(tmp_path))
    result(maildrop.deleteMessages([0]))
    maildrop.close()
    assert not (tmp_path / "alice" / "maildirsize").exists()
    (tmp_path / "alice" / "maildirsize").write_bytes(MAILDIRSIZE)
    maildrop, _ = login(store(tmp_path))
    (tmp_path / "alice" / "new" / "2.b").unlink()
    result(maildrop.deleteMessages([0]))
    maildrop.close()
    assert (tmp_path / "alice" / "maildirsize").read_bytes() == MAILDIRSIZE


def test_maildirSizeNotFollowedOrFatal(tmp_path: Path) -> None:
    """
    A maildirsize that is a symbolic link is not written through, and one
    that cannot be written is only logged: the messages are removed, and
    the deletion succeeds, as the quota is counted afresh when it is next
    found over its limit.
    """
    path = tmp_path / "alice"
    deliverToMaildir(path, b"a\n", name="1.a")
    target = tmp_path / "elsewhere"
    target.write_bytes(MAILDIRSIZE)
    (path / "maildirsize").symlink_to(target)
    maildrop, _ = login(store(tmp_path))
    with capturedLogs() as events:
        assert result(maildrop.deleteMessages([0])) is None
    maildrop.close()
    assert target.read_bytes() == MAILDIRSIZE
    assert os.listdir(path / "new") == []
    warnings = [formatEvent(e) for e in events if e["log_level"].name == "warn"]
    assert warnings == [
        f"Cannot record the deletions in {path / 'maildirsize'}:"
        f" [Errno {errno.ELOOP}] {os.strerror(errno.ELOOP)}: '{path / 'maildirsize'}'"
    ]


@pytest.mark.parametrize("read", [False, True])
def test_maildirSizeNotARegularFile(tmp_path: Path, read: bool) -> None:
    """
    A maildirsize that is a FIFO (which the Maildir's owner can make) is
    not written to, nor waited on for a reader, whether or not something
    reads it: the deletion succeeds at once and it is logged.
    """
    path = tmp_path / "alice"
    deliverToMaildir(path, b"a\n", name="1.a")
    os.mkfifo(path / "maildirsize")
    held = os.open(path / "maildirsize", os.O_RDONLY | os.O_NONBLOCK) if read else None
    maildrop, _ = login(store(tmp_path))
    outcome: list[object] = []

    def delete() -> None:
        with capturedLogs() as events:
            outcome.append(result(maildrop.deleteMessages([0])))
        outcome.extend(formatEvent(e) for e in events if e["log_level"].name == "warn")

    worker = threading.Thread(target=delete)
    worker.start()
    worker.join(10)
    if worker.is_alive():
        # Open the other end, so that the blocked writer returns.
        reader = os.open(path / "maildirsize", os.O_RDONLY | os.O_NONBLOCK)
        worker.join(10)
        os.close(reader)
        pytest.fail("the deletion waited for a reader of the FIFO")
    maildrop.close()
    if held is not None:
        assert os.read(held, 100) == b""
        os.close(held)
    assert os.listdir(path / "new") == []
    assert len(outcome) == 2 and outcome[0] is None
    assert str(outcome[1]).startswith(f"Cannot record the deletions in {path / 'maildirsize'}: ")


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="no /proc/self/fd")
def test_maildirSizeWriteFailureLogged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A full disk when the line is appended to maildirsize is logged; the
    deletion succeeds and the file is closed all the same.
    """
    path = tmp_path / "alice"
    deliverToMaildir(path, b"a\n", name="1.a")
    (path / "maildirsize").write_bytes(MAILDIRSIZE)
    before = len(os.listdir("/proc/self/fd"))
    maildrop, _ = login(store(tmp_path))

    realWrite = os.write

    def write(fd: int, data: bytes) -> int:
        if os.readlink(f"/proc/self/fd/{fd}").endswith("/maildirsize"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return realWrite(fd, data)

    monkeypatch.setattr(os, "write", write)
    with capturedLogs() as events:
        assert result(maildrop.deleteMessages([0])) is None
    monkeypatch.undo()
    maildrop.close()
    assert len(os.listdir("/proc/self/fd")) == before
    assert os.listdir(path / "new") == []
    assert (path / "maildirsize").read_bytes() == MAILDIRSIZE
    warnings = [formatEvent(e) for e in events if e["log_level"].name == "warn"]
    assert warnings == [
        f"Cannot record the deletions in {path / 'maildirsize'}: [Errno 28] No space left on device"
    ]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="no /proc/self/fd")
def test_maildirSizeClosedOnAnyError(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    maildirsize is closed however the deletion ends, even by an error that
    is not an OSError (a store's bug), which used to leave it open: a
    descriptor lost at every such QUIT.
    """
    path = tmp_path / "alice"
    deliverToMaildir(path, b"a\n", name="1.a")
    (path / "maildirsize").write_bytes(MAILDIRSIZE)
    before = len(os.listdir("/proc/self/fd"))
    maildrop, _ = login(store(tmp_path))

    def unlink(path: str) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(os, "unlink", unlink)
    failure = maildrop.deleteMessages([0])
    failed: list[Failure] = []
    failure.addErrback(failed.append)
    monkeypatch.undo()
    maildrop.close()
    assert failed[0].check(RuntimeError)
    assert len(os.listdir("/proc/self/fd")) == before
    assert (path / "maildirsize").read_bytes() == MAILDIRSIZE


@pytest.fixture
def collectorRestored() -> Iterator[None]:
    """
    The cycle collector left on or off as the test found it.
    """
    wasOn = gc.isenabled()
    try:
        yield
    finally:
        (gc.enable if wasOn else gc.disable)()


@pytest.mark.usefixtures("collectorRestored")
@pytest.mark.parametrize("on", [True, False])
def test_collectorPausedForTheScan(tmp_path: Path, monkeypatch: Any, on: bool) -> None:
    """
    A login's scan runs with the cycle collector off, and leaves it as it
    found it: on again, or off where the program keeps it off.
    """
    during: list[bool] = []
    scan = maildir.MaildirMaildrop._scan

    def recording(self: Any, indexes: Any) -> None:
        during.append(gc.isenabled())
        scan(self, indexes)

    monkeypatch.setattr(maildir.MaildirMaildrop, "_scan", recording)
    (gc.enable if on else gc.disable)()
    deliverToMaildir(tmp_path / "alice", b"Subject: x\n\nbody\n")
    maildrop, infos = login(store(tmp_path))
    maildrop.close()
    assert (during, len(infos), gc.isenabled()) == ([False], 1, on)


@pytest.mark.usefixtures("collectorRestored")
def test_collectorPausedUntilTheLastScanEnds() -> None:
    """
    Scans in two threads that overlap: the collector stays off until the
    later of them ends (the first to end does not turn it on under the
    other), and then is on again, as the first found it.
    """
    gc.enable()
    first, second = maildir._CollectorPaused(), maildir._CollectorPaused()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    offAfterFirst = not gc.isenabled()
    second.__exit__(None, None, None)
    assert (offAfterFirst, gc.isenabled()) == (True, True)


def test_timesOfOtherLengthsNotTakenForOneSecond() -> None:
    """
    A name whose time has more digits than the first listed one's is not
    taken for one of the same length: "10.b" is no time of one digit
    followed by a "." and compared as a string it would come before "9.a".
    """
    bases = ["9.a", "10.b", "9x.c"]
    listing = SimpleNamespace(bases=bases)
    listing.nameOrder, listing.uidsValid = maildir._checkNames(["/".join(bases)], bases)
    assert not listing.nameOrder.byTime
    order, _ = maildir._ordered(listing, [])  # type: ignore[arg-type]
    assert order == ["9x.c", "9.a", "10.b"]


@pytest.mark.parametrize(
    "name",
    [
        "1700000000.M1P1.h,S=5x,W=6",  # digits not ending the field
        "1700000000.M1P1.h,S=5\n",  # \Z, not $: a newline ends no field
        "1700000000.M1P1.hS=5",  # no "," before it
        "1700000000.M1P1.h,S=,W=6",  # no digits
    ],
)
def test_maildirSizeCountsOnlyAWholeSizeField(tmp_path: Path, name: str) -> None:
    """
    Only a whole ",S=" field, digits ending the name or followed by ",",
    gives the size the quota counts (as Dovecot reads it); a name with
    anything else is counted by its size on disk.
    """
    path = tmp_path / "alice"
    deliverToMaildir(path, b"seventeen octets\n", name=name)
    (path / "maildirsize").write_bytes(MAILDIRSIZE)
    maildrop, _ = login(store(tmp_path))
    result(maildrop.deleteMessages([0]))
    maildrop.close()
    assert (path / "maildirsize").read_bytes() == MAILDIRSIZE + b"-17 -1\n"


def test_maildirSizeSparesLstat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Deleting reads a message's size from the disk only for a name without
    S= (an lstat for each of thousands of Dovecot-named messages cost a
    fifth of an UPDATE), and only where there is a maildirsize to record
    it in.
    """
    path = tmp_path / "alice"
    deliverToMaildir(path, b"x" * 90 + b"\n", name="1700000000.M1P1.h,S=60013,W=60014")
    deliverToMaildir(path, b"plain\n", name="1700000000.M2P1.h")
    deliverToMaildir(path, b"plain\n", name="1700000000.M3P1.h")
    (path / "maildirsize").write_bytes(MAILDIRSIZE)
    maildrop, _ = login(store(tmp_path))
    counted: list[str] = []
    realUnlinkCounted = maildir._unlinkCounted

    def unlinkCounted(path: str) -> int:
        counted.append(os.path.basename(path))
        return realUnlinkCounted(path)

    monkeypatch.setattr(maildir, "_unlinkCounted", unlinkCounted)
    result(maildrop.deleteMessages([0, 1]))
    maildrop.close()
    assert counted == ["1700000000.M2P1.h"]
    assert (path / "maildirsize").read_bytes() == MAILDIRSIZE + b"-60019 -2\n"
    (path / "maildirsize").unlink()
    maildrop, _ = login(store(tmp_path))
    result(maildrop.deleteMessages([0]))
    maildrop.close()
    assert counted == ["1700000000.M2P1.h"]
    assert os.listdir(path / "new") == []


def test_maildirSizeCountsALinkNotItsTarget(tmp_path: Path) -> None:
    """
    A message the Maildir's owner replaced by a symbolic link after the
    listing is counted by the link's own size (lstat), which is what is
    removed: not by the size of whatever it points at, a file the server
    may read and the owner not (maildirsize would tell its size), and a
    link to nothing is removed as the message, not taken for one gone.
    """
    path = tmp_path / "alice"
    big = deliverToMaildir(path, b"a\n", name="1700000000.M1P1.h")
    dangling = deliverToMaildir(path, b"b\n", name="1700000000.M2P1.h")
    secret = tmp_path / "secret"
    secret.write_bytes(b"s" * 1000)
    (path / "maildirsize").write_bytes(MAILDIRSIZE)
    maildrop, _ = login(store(tmp_path))
    big.unlink()
    big.symlink_to(secret)
    dangling.unlink()
    dangling.symlink_to(tmp_path / "nowhere")
    assert result(maildrop.deleteMessages([0, 1])) is None
    maildrop.close()
    assert os.listdir(path / "new") == []
    assert secret.read_bytes() == b"s" * 1000
    octets = len(str(secret)) + len(str(tmp_path / "nowhere"))
    assert (path / "maildirsize").read_bytes() == MAILDIRSIZE + b"-%d -2\n" % octets
