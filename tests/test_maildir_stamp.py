"""
Tests for the stamp that lets a login to an unchanged Maildir take its
messages from the index without listing new/ and cur/: when one is
written, that every kind of change to the directories voids it, and that
an index changed by someone else cannot make a login serve wrong names.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from maildir_helpers import snapshot, store
from synchronous import result
from test_stores_contract import deliverToMaildir
from twisted.logger import capturedLogs

from popserv import maildir, maildirindex
from popserv.encoder import wireSize
from popserv.errors import MessageUnavailable
from popserv.maildir import uidFor
from popserv.maildirindex import INDEX_NAME, MaildirIndex, Records, encodeBlock, encodeStamp

#: os.listdir, for the tests' own use, before the listings fixture
#: (conftest.py) spies on it.
_listdir = os.listdir
FLAGGED = "1700000002.M2.host"
MESSAGES = {
    "1700000000.M0.host": b"a\nb\n",
    "1700000001.M1.host": "Subject: Gr\u00fc\u00dfe\n\nbody\n".encode(),
    FLAGGED: b"flagged\n",
}


def expected(path: Path) -> list[tuple[str, int, int | None]]:
    """
    What a login must see: every file now in new/ and cur/, by base name.
    """
    found = {}
    for subdir in ("new", "cur"):
        for name in _listdir(path / subdir):
            found[name.partition(":")[0]] = (path / subdir / name).read_bytes()
    return [
        (uid, wireSize(data), wireSize(data, downgrade=True)) for uid, data in sorted(found.items())
    ]


def stampOf(path: Path) -> Any:
    index, _ = MaildirIndex.load(str(path), 1 << 20)
    return index.stamp


@pytest.fixture
def alice(tmp_path: Path) -> Path:
    path = tmp_path / "alice"
    for name, data in MESSAGES.items():
        deliverToMaildir(path, data, name=name)
    os.rename(path / "new" / FLAGGED, path / "cur" / f"{FLAGGED}:2,S")
    return path


@pytest.fixture
def settled(monkeypatch: Any) -> None:
    """
    Logins happen a minute after the last change, as a client's next poll
    does, rather than within the second that leaves a change unstamped.
    """
    real = time.time_ns
    monkeypatch.setattr(time, "time_ns", lambda: real() + 60 * 10**9)


def changeLater(path: Path) -> None:
    """
    Wait until a change made now gets a later time than new/ and cur/ have,
    as every change a settled stamp must catch does.  (File systems stamp
    times from a clock that moves in ticks of a few milliseconds.)
    """
    directories = maildir._directories(str(path))
    assert directories is not None
    newest = directories.newest
    probe = path / "tmp" / "clock-probe"
    for _ in range(400):
        probe.touch()
        now = probe.stat().st_ctime_ns
        probe.unlink()
        if now > newest:
            return
        time.sleep(0.005)
    raise AssertionError("the file-system clock did not move in 2 s")


@pytest.mark.usefixtures("settled")
def test_unchangedMaildirNotListed(alice: Path, listings: list[str]) -> None:
    """
    A login that listed a settled Maildir stamps the index; the next one
    takes the same messages from it without listing, and lists only when
    it first opens a file, which it then reads and deletes as usual.
    """
    s = store(alice.parent)
    first = snapshot(s)
    assert first == expected(alice)
    assert listings == ["new", "cur"]
    assert stampOf(alice) is not None
    index = (alice / INDEX_NAME).stat()
    listings.clear()
    maildrop = result(s.openMaildrop("alice"))
    assert [(i.uid, i.size, i.downgradedSize) for i in result(maildrop.listMessages())] == first
    assert listings == []
    # An idle session does not keep the stamp's large integers.
    assert maildrop._index is not None and maildrop._index.stamp is None
    reader = result(maildrop.openMessage(2))
    assert result(reader.read(100)) == b"flagged\n"
    reader.close()
    assert listings == ["new", "cur"]
    result(maildrop.deleteMessages([2, 0]))
    maildrop.close()
    assert _listdir(alice / "cur") == [] and _listdir(alice / "new") == ["1700000001.M1.host"]
    # The login wrote nothing; the deletions voided the stamp.
    assert stampOf(alice) is None
    assert (alice / INDEX_NAME).stat().st_ino == index.st_ino
    listings.clear()
    assert snapshot(s) == expected(alice)
    assert listings == ["new", "cur"]


@pytest.mark.usefixtures("settled")
def test_leftoverTemporaryIndexRemovedByListingLogin(
    alice: Path, listings: list[str], monkeypatch: Any
) -> None:
    """
    A login that takes its messages from an up-to-date index makes no
    attempt to remove a leftover temporary index (a failed C{unlink} per
    login); the next login that lists the Maildir removes it.
    """
    s = store(alice.parent)
    snapshot(s)
    leftover = alice / maildirindex.TEMP_NAME
    leftover.write_bytes(b"popserv-maildir-index 2\nblock 1 3 00")
    unlinked: list[str] = []
    realUnlink = os.unlink

    def spy(path: Any, *args: Any, **kwargs: Any) -> None:
        unlinked.append(os.path.basename(path))
        realUnlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", spy)
    listings.clear()
    assert snapshot(s) == expected(alice)
    assert (listings, unlinked) == ([], [])
    assert leftover.exists()
    _deliver(alice)
    assert snapshot(s) == expected(alice)
    assert listings == ["new", "cur"]
    assert unlinked == [maildirindex.TEMP_NAME]
    assert not leftover.exists()


def _deliver(path: Path) -> None:
    deliverToMaildir(path, b"new mail\n", name="1700000009.M9.host")


def _move(path: Path) -> None:
    os.rename(path / "new" / "1700000000.M0.host", path / "cur" / "1700000000.M0.host:2,")


def _flag(path: Path) -> None:
    os.rename(path / "cur" / f"{FLAGGED}:2,S", path / "cur" / f"{FLAGGED}:2,RS")


def _remove(path: Path) -> None:
    os.unlink(path / "new" / "1700000001.M1.host")


def _replace(path: Path) -> None:
    # The same names in a new directory: another inode.
    os.rename(path / "cur", path / "old")
    os.mkdir(path / "cur")
    os.rename(path / "old" / f"{FLAGGED}:2,S", path / "cur" / f"{FLAGGED}:2,S")
    os.rmdir(path / "old")


@pytest.mark.usefixtures("settled")
@pytest.mark.parametrize(
    "change", [_deliver, _move, _flag, _remove, _replace], ids=lambda f: f.__name__
)
def test_everyChangeSeen(alice: Path, listings: list[str], change: Any) -> None:
    """
    Any change to the files of new/ or cur/ after a stamp makes the next
    login list them, and it sees the change; that login stamps the index
    anew (also when it learnt no message, for a move or a flag), so the
    login after it lists nothing.
    """
    s = store(alice.parent)
    snapshot(s)
    snapshot(s)
    listings.clear()
    changeLater(alice)
    change(alice)
    listings.clear()
    assert snapshot(s) == expected(alice)
    assert listings[:2] == ["new", "cur"]
    listings.clear()
    assert snapshot(s) == expected(alice)
    assert listings == []


def test_recentChangeEarnsNoStamp(alice: Path, listings: list[str]) -> None:
    """
    Directories changed within the last second get no stamp: a change made
    within the same tick of the file system's clock would go unseen.  The
    next login lists them again.
    """
    s = store(alice.parent)
    assert snapshot(s) == expected(alice)
    assert stampOf(alice) is None
    listings.clear()
    assert snapshot(s) == expected(alice)
    assert listings == ["new", "cur"]


def test_timeSetBackEarnsNoStamp(alice: Path) -> None:
    """
    Directories changed within the last second earn no stamp even if their
    modification times were then set back (as a restore that keeps the
    times does): their change times, which no program can set, say when.
    """
    hourAgo = time.time() - 3600
    for subdir in ("new", "cur"):
        os.utime(alice / subdir, (hourAgo, hourAgo))
    assert snapshot(store(alice.parent)) == expected(alice)
    assert stampOf(alice) is None


@pytest.mark.usefixtures("settled")
@pytest.mark.parametrize("subdir", ["new", "cur"])
def test_timeAheadEarnsNoStamp(alice: Path, subdir: str) -> None:
    """
    A directory whose modification time is ahead of the clock (a file
    server's clock ahead of this one's) earns no stamp: a change in the
    same tick of that clock could go unseen.
    """
    ahead = time.time() + 3600
    os.utime(alice / subdir, (ahead, ahead))
    assert snapshot(store(alice.parent)) == expected(alice)
    assert stampOf(alice) is None


def test_directoriesMeasured(alice: Path) -> None:
    """
    The stamp holds the device, inode and modification and change times of
    new/ then cur/, then the rule the records are ordered by; the octets
    are their two sizes together, which bound the index read before
    listing them.
    """
    directories = maildir._directories(str(alice))
    assert directories is not None
    new, cur = (os.stat(alice / subdir) for subdir in ("new", "cur"))
    assert directories.stamp == (
        *(
            value
            for info in (new, cur)
            for value in (info.st_dev, info.st_ino, info.st_mtime_ns, info.st_ctime_ns)
        ),
        1,
    )
    assert directories.octets == new.st_size + cur.st_size


@pytest.mark.parametrize("subdir", ["new", "cur"])
@pytest.mark.parametrize("field", ["st_mtime_ns", "st_ctime_ns"])
def test_newestOfTheFourTimes(alice: Path, monkeypatch: Any, subdir: str, field: str) -> None:
    """
    The newest time, which decides whether the listing earns a stamp, is
    the latest of both times of both directories, whichever it is.
    """
    real = os.stat

    def stat(path: Any) -> Any:
        info = real(path)
        times = {"st_mtime_ns": 10**18, "st_ctime_ns": 10**18}
        if os.path.basename(path) == subdir:
            times[field] += 1
        return SimpleNamespace(
            **{name: getattr(info, name) for name in ("st_mode", "st_dev", "st_ino", "st_size")},
            **times,
        )

    monkeypatch.setattr(os, "stat", stat)
    directories = maildir._directories(str(alice))
    assert directories is not None and directories.newest == 10**18 + 1


@pytest.mark.usefixtures("settled")
def test_stampOfTheOlderOrderListed(tmp_path: Path, listings: list[str]) -> None:
    """
    An index stamped before messages of one second were ordered by their
    microseconds (a stamp without the order value), its records in the
    old order, is not taken: the next login lists the Maildir, numbers
    the messages in the new order and stamps the index again.
    """
    path = tmp_path / "alice"
    names = ["1700000000.M6303P1.host", "1700000000.M114294P2.host"]
    for name in names:
        deliverToMaildir(path, b"m\n", name=name)
    s = store(tmp_path)
    assert [uid for uid, _, _ in snapshot(s)] == names
    index, records = MaildirIndex.load(str(path), 1 << 20)
    assert index.stamp is not None and records.names == names
    old = Records.empty()
    for i in (1, 0):
        old.add(records.names[i], records.wire[i], records.downgraded[i], records.disk[i])
    oldStamp = tuple(
        value
        for info in (os.stat(path / subdir) for subdir in ("new", "cur"))
        for value in (info.st_dev, info.st_ino, info.st_mtime_ns, info.st_ctime_ns)
    )
    index.rewrite(old, oldStamp)
    listings.clear()
    assert [uid for uid, _, _ in snapshot(s)] == names
    assert listings == ["new", "cur"]
    index, records = MaildirIndex.load(str(path), 1 << 20)
    assert index.stamp is not None and records.names == names
    listings.clear()
    assert [uid for uid, _, _ in snapshot(s)] == names
    assert listings == []


@pytest.mark.usefixtures("settled")
def test_skippedEntryEarnsNoStamp(alice: Path, listings: list[str]) -> None:
    """
    A Maildir with an entry the login left out (a directory where a
    message should be) gets no stamp: it may be a message later.
    """
    (alice / "new" / "1700000005.stray").mkdir()
    s = store(alice.parent)
    snapshot(s)
    assert stampOf(alice) is None
    listings.clear()
    snapshot(s)
    assert listings == ["new", "cur"]


def _restamp(path: Path, names: list[str]) -> None:
    """
    Rewrite the index with records for C{names} (taking the sizes recorded
    for them, or made up) and the stamp it has.
    """
    index, records = MaildirIndex.load(str(path), 1 << 20)
    assert index.stamp is not None
    sizes = zip(records.wire, records.downgraded, records.disk, strict=True)
    known = dict(zip(records.names, sizes, strict=True))
    out = Records.empty()
    for name in names:
        out.add(name, *known.get(name, (5, 5, 3)))
    stamp = index.stamp
    index.rewrite(out, stamp)


@pytest.mark.usefixtures("settled")
@pytest.mark.parametrize(
    "names",
    [
        ["1700000000.M0.host", "1700000000.M0.host", FLAGGED],
        ["1700000000.M0.host", "../../etc/passwd", FLAGGED],
    ],
    ids=["doubled", "slash"],
)
def test_impossibleIndexListed(alice: Path, listings: list[str], names: list[str]) -> None:
    """
    A stamped index that names a message twice, or names a file no
    directory can hold, is not taken as the messages: the login lists.
    """
    s = store(alice.parent)
    truth = snapshot(s)
    _restamp(alice, names)
    listings.clear()
    assert snapshot(s) == truth
    assert listings[:2] == ["new", "cur"]


@pytest.mark.usefixtures("settled")
def test_unsizedIndexRecordListed(alice: Path, listings: list[str]) -> None:
    """
    A stamped index whose record for a message has no size (a record that
    forgets the name, NO_SIZE) is not taken as the messages: the login
    lists and measures that file rather than give it the record's sizes.
    """
    s = store(alice.parent)
    truth = snapshot(s)
    index, records = MaildirIndex.load(str(alice), 1 << 20)
    assert index.stamp is not None and len(records.names) == 3
    records.disk[1] = maildirindex.NO_SIZE
    index.rewrite(records, index.stamp)
    listings.clear()
    assert snapshot(s) == truth
    assert listings[:2] == ["new", "cur"]


@pytest.mark.usefixtures("settled")
def test_editedIndexCannotServeOtherFiles(alice: Path) -> None:
    """
    An index edited to name a message that is not there, with its stamp
    kept, can make the login list it (only a Maildir's owner can write its
    index, and it misleads only that Maildir's client).  Opening it finds
    no file and says so; deleting it counts as done.  Names that are not
    unique-ids are given digests, as when listed.
    """
    s = store(alice.parent)
    snapshot(s)
    _restamp(alice, ["1700000000.M0.host", "1700000001.M1.host", "ghost file", FLAGGED])
    maildrop = result(s.openMaildrop("alice"))
    infos = result(maildrop.listMessages())
    assert [i.uid for i in infos] == [
        "1700000000.M0.host",
        "1700000001.M1.host",
        uidFor("ghost file"),
        FLAGGED,
    ]
    with pytest.raises(MessageUnavailable):
        result(maildrop.openMessage(2))
    result(maildrop.deleteMessages([2]))
    maildrop.close()
    assert snapshot(s) == expected(alice)


@pytest.mark.usefixtures("settled")
@pytest.mark.parametrize("version", [1, 2, 3, 4, 5])
def test_olderIndexUpgraded(alice: Path, measured: list[str], version: int) -> None:
    """
    An index of version 1 to 5 (from an earlier popserv) is rebuilt:
    every file is measured again once (older rules worked out its sizes),
    without a warning, and the index is rewritten in the current version,
    with a stamp.
    """
    s = store(alice.parent)
    truth = snapshot(s)
    _, records = MaildirIndex.load(str(alice), 1 << 20)
    magic = {
        1: b"popserv-maildir-index 1\n",
        2: b"popserv-maildir-index 2\n",
        3: b"popserv-maildir-index 3\n",
        4: b"popserv-maildir-index 4\n",
        5: b"popserv-maildir-index 5\n",
    }
    stamp = encodeStamp(stampOf(alice)) if version > 1 else b""
    (alice / INDEX_NAME).write_bytes(magic[version] + encodeBlock(records) + stamp)
    measured.clear()
    with capturedLogs() as events:
        assert snapshot(s) == truth
    assert sorted(name.split(":")[0] for name in measured) == sorted(uid for uid, _, _ in truth)
    assert [e for e in events if e.get("log_level")] == []
    assert (alice / INDEX_NAME).read_bytes().startswith(maildirindex.MAGIC)
    assert stampOf(alice) is not None


@pytest.mark.usefixtures("settled")
def test_largeIndexReadAfterListing(
    alice: Path, listings: list[str], measured: list[str], monkeypatch: Any
) -> None:
    """
    An index larger than the size of new/ and cur/ allows is not read
    before listing them, nor ignored: it is read after the listing, within
    the bound for the names listed, and no file is read again.
    """
    s = store(alice.parent)
    truth = snapshot(s)
    monkeypatch.setattr(maildirindex, "_BASE_LIMIT", 16)
    monkeypatch.setattr(maildir, "_INDEX_PER_DIRECTORY_OCTET", 0)
    listings.clear()
    measured.clear()
    with capturedLogs() as events:
        assert snapshot(s) == truth
    assert listings == ["new", "cur"]
    assert measured == [] and [e for e in events if e.get("log_level")] == []
