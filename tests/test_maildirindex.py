"""
Tests for popserv.maildirindex: the file format, damaged and hostile files,
appending and rewriting, what a writer killed at any moment leaves, and
the cache of parsed files.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.logger import capturedLogs, formatEvent

from popserv import maildirindex
from popserv.maildirindex import (
    INDEX_NAME,
    MAGIC,
    NO_SIZE,
    TEMP_NAME,
    IndexCache,
    MaildirIndex,
    Records,
    encodeBlock,
    encodeStamp,
    lookup,
    numbers,
    parse,
    removeLeftover,
    sizeLimit,
)

LIMIT = 1 << 20


def records(*rows: tuple[str, int, int, int]) -> Records:
    """
    Records from (name, wire, downgraded, disk) rows.
    """
    out = Records.empty()
    for row in rows:
        out.add(*row)
    return out


def rows(found: Records) -> list[tuple[str, int, int, int]]:
    return list(zip(found.names, found.wire, found.downgraded, found.disk, strict=True))


SAMPLE = records(
    ("1700000000.M1P2.host", 931, 931, 900),
    ("1700000001.M2P2.host,S=10,W=12", 12, 40, 10),
    ("name with spaces and \u00e9", 0, 0, 0),
    ("not-utf8-\udcff\udcfe", 2**63, 2**64 - 2, 5),
)


def load(maildir: Path, limit: int = LIMIT) -> tuple[MaildirIndex, Records]:
    return MaildirIndex.load(str(maildir), limit)


def warnings(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e.get("log_level") is not None and e["log_level"].name == "warn"]


def test_blockRoundTrip() -> None:
    """
    Names (any characters but NUL, including undecodable octets) and 64-bit
    numbers come back from a block exactly as they went in.
    """
    parsed = parse(MAGIC + encodeBlock(SAMPLE) + encodeBlock(Records.empty()))
    assert parsed.problem is None
    assert parsed.blocks == 2
    assert rows(parsed.records) == rows(SAMPLE)


def test_nameWithNULRefused() -> None:
    """
    A name holding NUL (which no file name can) cannot be written: it would
    split into two names.
    """
    with pytest.raises(ValueError):
        encodeBlock(records(("a\0b", 1, 1, 1)))


def test_rewriteThenLoad(tmp_path: Path) -> None:
    """
    A rewritten index loads back whole, and can be appended to.
    """
    index, found = load(tmp_path)
    assert index.missing and not index.appendable and found.names == []
    assert (index.blocks, index.stamp) == (0, None)
    assert index.rewrite(SAMPLE)
    index, found = load(tmp_path)
    assert not index.missing and index.appendable
    assert (len(found.names), index.blocks) == (4, 1)
    assert rows(found) == rows(SAMPLE)
    assert (tmp_path / INDEX_NAME).stat().st_mode & 0o777 == 0o600


def test_appendedRecordsWin(tmp_path: Path) -> None:
    """
    Appended blocks add records; a later record of a name replaces the
    earlier one.
    """
    index, _ = load(tmp_path)
    index.rewrite(records(("1.a", 1, 1, 1), ("2.b", 2, 2, 2)))
    assert index.append(records(("3.c", 3, 3, 3), ("1.a", 10, 11, 12)))
    index, found = load(tmp_path)
    assert (len(found.names), index.blocks) == (4, 2)
    known, missing, _ = lookup(found, ["1.a", "2.b", "3.c", "4.d"])
    assert rows(known) == [
        ("1.a", 10, 11, 12),
        ("2.b", 2, 2, 2),
        ("3.c", 3, 3, 3),
        ("4.d", 0, 0, NO_SIZE),
    ]
    assert missing == [3]


def test_forget(tmp_path: Path) -> None:
    """
    A forgotten name has no record, until a later record gives it one.
    """
    index, _ = load(tmp_path)
    index.rewrite(records(("1.a", 1, 1, 1), ("2.b", 2, 2, 2)))
    index.forget(["1.a"])
    _, found = load(tmp_path)
    assert lookup(found, ["1.a", "2.b"])[1] == [0]
    index.append(records(("1.a", 5, 5, 5)))
    _, found = load(tmp_path)
    known, missing, _ = lookup(found, ["1.a", "2.b"])
    assert missing == [] and rows(known)[0] == ("1.a", 5, 5, 5)


def test_forgetWithoutAppendRemovesIndex(tmp_path: Path) -> None:
    """
    When the index cannot be appended to (here another program changed it),
    forgetting removes it: it must not go on vouching for those names.
    """
    index, _ = load(tmp_path)
    index.rewrite(SAMPLE, STAMP)
    with open(tmp_path / INDEX_NAME, "ab") as f:
        f.write(b"x")
    index.forget([SAMPLE.names[0]])
    assert not (tmp_path / INDEX_NAME).exists()
    assert index.missing and not index.appendable
    assert (index.blocks, index.stamp) == (0, None)


def test_forgetOnFullDiskRemovesIndex(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    When the records that forget names cannot be written (a full disk),
    the index is removed, and this one is then missing: not appendable, no
    blocks, no stamp.
    """
    index, _ = load(tmp_path)
    index.rewrite(SAMPLE, STAMP)

    def fullDisk(fd: int, data: Any) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", fullDisk)
    with capturedLogs():
        index.forget([SAMPLE.names[0]])
    assert not (tmp_path / INDEX_NAME).exists()
    assert index.missing and not index.appendable
    assert (index.blocks, index.stamp) == (0, None)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["1.a", "2.b", "3.c", "4.d", "5.e"]),
            st.integers(0, 99),
            st.booleans(),
        ),
        max_size=12,
    ),
    st.lists(st.sampled_from(["1.a", "2.b", "3.c", "4.d", "5.e", "6.f"]), unique=True),
)
def test_lookupAgreesWithDictionary(entries: list[tuple[str, int, bool]], names: list[str]) -> None:
    """
    lookup() gives, for each of distinct names, its last record unless that
    forgets it, by its fast path (the records' names are the first of the
    names) or its general one.
    """
    found = Records.empty()
    expected: dict[str, int] = {}
    for name, size, forget in entries:
        found.add(name, size, size + 1, NO_SIZE if forget else size + 2)
        if forget:
            expected.pop(name, None)
        else:
            expected[name] = size
    distinct = list(dict.fromkeys(found.names))
    for candidate in (names, distinct, [*distinct, "7.g", "8.h"]):
        known, missing, _ = lookup(found, candidate)
        assert missing == [i for i, name in enumerate(candidate) if name not in expected]
        for i, name in enumerate(candidate):
            if name in expected:
                assert (known.wire[i], known.downgraded[i], known.disk[i]) == (
                    expected[name],
                    expected[name] + 1,
                    expected[name] + 2,
                )
            else:
                assert known.disk[i] == NO_SIZE


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "nothing in it"),
        (b"garbage\n", "no popserv index header"),
        (b"popserv-maildir-index 7\nwhatever", "an unknown version b'7'"),
        (b"popserv-maildir-index 123\nwhatever", "an unknown version b'123'"),
        (b"popserv-maildir-index 1000000\n", "an unknown version b'1000000'"),
        (b"x", "no popserv index header"),
        (MAGIC + b"block 1 3\nabc", "damaged block header"),
        (MAGIC + b"block 1 3 0000000g\n", "damaged block header"),
        (MAGIC + b"block -1 3 00000000\n", "damaged block header"),
        (MAGIC + b"block 1 3 00000000\nabc", "truncated block"),
        (MAGIC + b"block 99999999999999 3 00000000\nabc", "truncated block"),
        (MAGIC + b"x" * 1000, "damaged block header"),
    ],
)
def test_damagedFileIgnored(tmp_path: Path, content: bytes, problem: str) -> None:
    """
    A file that is not a whole index of this version is used for none of
    its records, said so in a warning (which file, what is wrong with it,
    and that it is rebuilt), and rewritten rather than appended to.
    """
    (tmp_path / INDEX_NAME).write_bytes(content)
    with capturedLogs() as events:
        index, found = load(tmp_path)
    assert found.names == [] and not index.appendable and not index.missing
    [warning] = warnings(events)
    assert problem in warning["problem"]
    path = tmp_path / INDEX_NAME
    assert formatEvent(warning) == f"The index {path} has {warning['problem']}; rebuilding it"


def test_everyTruncationKeepsIntactBlocks(tmp_path: Path) -> None:
    """
    An index cut at any octet (a torn append, a disk that lost the end)
    gives exactly the records of its intact blocks, never a wrong one.
    """
    first = records(("1.a", 1, 1, 1), ("2.b", 2, 2, 2))
    second = records(("3.c", 3, 3, 3), ("1.a", 4, 4, 4))
    whole = MAGIC + encodeBlock(first) + encodeBlock(second)
    boundary = len(MAGIC) + len(encodeBlock(first))
    for end in range(len(whole) + 1):
        parsed = parse(whole[:end])
        if end == len(whole):
            assert parsed.problem is None and rows(parsed.records) == rows(first) + rows(second)
        elif end >= boundary:
            assert rows(parsed.records) == rows(first)
            assert (parsed.problem is None) == (end == boundary)
        else:
            assert parsed.records.names == []
            # The header alone is a whole (empty) index.
            assert (parsed.problem is None) == (end == len(MAGIC))


def test_everyFlippedBitDetected() -> None:
    """
    Any one flipped bit in a block's names or numbers fails its checksum
    (or its header), so the block is not used.
    """
    whole = MAGIC + encodeBlock(SAMPLE)
    rng = random.Random(7)
    for position in range(len(MAGIC), len(whole)):
        damaged = bytearray(whole)
        damaged[position] ^= 1 << rng.randrange(8)
        parsed = parse(bytes(damaged))
        assert parsed.problem is not None and parsed.records.names == [], position


def test_tooLargeIgnored(tmp_path: Path) -> None:
    """
    An index larger than the limit is not read at all: the warning says
    how large it is, and what was allowed.
    """
    index, _ = load(tmp_path)
    index.rewrite(SAMPLE)
    size = (tmp_path / INDEX_NAME).stat().st_size
    with capturedLogs() as events:
        index, found = load(tmp_path, limit=size - 1)
    assert found.names == [] and not index.appendable and not index.missing
    [warning] = warnings(events)
    path = tmp_path / INDEX_NAME
    assert formatEvent(warning) == (
        f"Ignoring the index {path}: {size} octets, more than the {size - 1} allowed; rebuilding it"
    )
    assert load(tmp_path, limit=size)[1].names == SAMPLE.names


@pytest.mark.parametrize("kind", ["symlink", "fifo", "directory"])
def test_notARegularFileIgnored(tmp_path: Path, kind: str) -> None:
    """
    An index that is a symbolic link (never followed), a FIFO (never
    waited on) or a directory is ignored; a symbolic link or FIFO is
    replaced by the next rewrite, its target untouched.
    """
    target = tmp_path / "target"
    target.write_bytes(b"precious")
    path = tmp_path / INDEX_NAME
    if kind == "symlink":
        path.symlink_to(target)
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()
    with capturedLogs() as events:
        index, found = load(tmp_path)
    assert found.names == [] and len(warnings(events)) == 1
    if kind != "symlink":  # (the open fails: ELOOP)
        assert str(warnings(events)[0]["e"]).startswith("not a regular file (mode ")
    with capturedLogs():
        written = index.rewrite(SAMPLE)
    assert written == (kind != "directory")
    assert target.read_bytes() == b"precious"
    if written:
        assert load(tmp_path)[1].names == SAMPLE.names


def test_leftoverTemporaryFileRemoved(tmp_path: Path) -> None:
    """
    A temporary file left by a writer that was killed is ignored when the
    index is loaded, and removed by L{removeLeftover} or the next rewrite.
    """
    index, _ = load(tmp_path)
    index.rewrite(SAMPLE)
    (tmp_path / TEMP_NAME).write_bytes(MAGIC + b"half a blo")
    index, found = load(tmp_path)
    assert found.names == SAMPLE.names
    assert (tmp_path / TEMP_NAME).exists()
    removeLeftover(str(tmp_path))
    assert not (tmp_path / TEMP_NAME).exists()
    removeLeftover(str(tmp_path))  # none left: nothing to do, no error
    (tmp_path / TEMP_NAME).write_bytes(MAGIC + b"half a blo")
    assert index.rewrite(SAMPLE)
    assert not (tmp_path / TEMP_NAME).exists()
    assert load(tmp_path)[1].names == SAMPLE.names


def test_unwritableMaildir(tmp_path: Path, monkeypatch: Any) -> None:
    """
    When the index cannot be written (a read-only file system, a full
    disk), rewrite and append say so in the log and return False; the old
    index stays and no temporary file is left behind.
    """
    index, _ = load(tmp_path)
    index.rewrite(SAMPLE)
    before = (tmp_path / INDEX_NAME).read_bytes()
    realOpen = os.open

    def readOnly(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise OSError(30, "Read-only file system")
        return realOpen(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", readOnly)
    with capturedLogs() as events:
        assert index.rewrite(SAMPLE) is False
        assert index.append(SAMPLE) is False
    assert len(warnings(events)) == 2
    assert not index.appendable
    monkeypatch.undo()
    assert (tmp_path / INDEX_NAME).read_bytes() == before
    assert not (tmp_path / TEMP_NAME).exists()


def test_failedRewriteLeavesNoTemporaryFile(tmp_path: Path, monkeypatch: Any) -> None:
    """
    A rewrite that fails after it made its temporary file (a full disk in
    the middle of the write) says why in the log, removes that file, and
    the old index stays.
    """
    index, _ = load(tmp_path)
    index.rewrite(SAMPLE)
    before = (tmp_path / INDEX_NAME).read_bytes()

    def fullDisk(fd: int, data: Any) -> int:
        assert (tmp_path / TEMP_NAME).exists()  # made, and now being written
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", fullDisk)
    with capturedLogs() as events:
        assert not index.rewrite(SAMPLE)
    [warning] = warnings(events)
    path = tmp_path / INDEX_NAME
    assert (
        formatEvent(warning) == f"Cannot write the index {path}: [Errno 28] No space left on device"
    )
    monkeypatch.undo()
    assert not (tmp_path / TEMP_NAME).exists()
    assert (tmp_path / INDEX_NAME).read_bytes() == before


def test_partialAppendTakenBack(tmp_path: Path, monkeypatch: Any) -> None:
    """
    An append that fails half-way (ENOSPC) is cut off again, so the index
    stays whole and can be appended to later.
    """
    index, _ = load(tmp_path)
    index.rewrite(SAMPLE)
    before = (tmp_path / INDEX_NAME).read_bytes()
    realWrite = os.write
    calls = []

    def fullDisk(fd: int, data: Any) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            return realWrite(fd, bytes(data)[:10])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", fullDisk)
    with capturedLogs() as events:
        assert index.append(records(("9.z", 9, 9, 9))) is False
    [warning] = warnings(events)
    path = tmp_path / INDEX_NAME
    assert (
        formatEvent(warning) == f"Cannot write the index {path}: [Errno 28] No space left on device"
    )
    monkeypatch.undo()
    assert (tmp_path / INDEX_NAME).read_bytes() == before
    assert index.append(records(("9.z", 9, 9, 9)))
    assert load(tmp_path)[1].names == [*SAMPLE.names, "9.z"]


def test_appendRefusedWhenFileChanged(tmp_path: Path) -> None:
    """
    If the file is not as this index left it (another program wrote it),
    nothing is appended: the caller rewrites it instead.
    """
    index, _ = load(tmp_path)
    index.rewrite(SAMPLE)
    (tmp_path / INDEX_NAME).write_bytes(MAGIC)
    assert index.append(SAMPLE) is False
    assert not index.appendable
    assert (tmp_path / INDEX_NAME).read_bytes() == MAGIC


def test_fragmented(tmp_path: Path) -> None:
    """
    An index with many blocks is worth rewriting: 32 blocks and stamps, and
    not 31.
    """
    index, _ = load(tmp_path)
    index.rewrite(SAMPLE)
    for _ in range(30):
        index.append(records(("9.z", 1, 1, 1)))
    assert index.blocks == 31 and not index.fragmented
    index.append(records(("9.z", 1, 1, 1)))
    assert index.blocks == 32 and index.fragmented


def test_fragmentedByStamps(tmp_path: Path) -> None:
    """
    Stamps count as blocks towards a rewrite, in the index that appended
    them as in one loaded from the file: an append of records and a stamp
    adds two, of a stamp alone one.
    """
    index, _ = load(tmp_path)
    index.rewrite(SAMPLE)
    for i in range(15):
        assert index.append(records(("9.z", i, i, i)), STAMP)
    assert index.blocks == load(tmp_path)[0].blocks == 31 and not index.fragmented
    assert index.append(Records.empty(), STAMP)
    assert index.blocks == load(tmp_path)[0].blocks == 32 and index.fragmented


def test_lookupInOrder() -> None:
    """
    lookup() says whether the records are those of the first names, in
    order and none forgotten: then new records can be appended.
    """
    found = records(("1.a", 1, 1, 1), ("2.b", 2, 2, 2))
    known, missing, inOrder = lookup(found, ["1.a", "2.b", "3.c"])
    assert inOrder and missing == [2]
    assert rows(known) == [("1.a", 1, 1, 1), ("2.b", 2, 2, 2), ("3.c", 0, 0, NO_SIZE)]
    assert lookup(found, ["1.a", "2.b"])[2]
    assert not lookup(found, ["2.b", "3.c"])[2]
    assert not lookup(found, ["1.a", "1.b", "2.b"])[2]
    found.add("1.a", 0, 0, NO_SIZE)
    assert not lookup(found, ["2.b"])[2]


STAMP = (2049, 131, -5, 1_700_000_000_123_456_789, 2**64, 0)


def test_stampRoundTrip(tmp_path: Path) -> None:
    """
    A stamp written after the records (by a rewrite, or appended with or
    without records) comes back from the file as it went in.
    """
    index, _ = load(tmp_path)
    assert index.rewrite(SAMPLE, STAMP)
    assert (index.stamp, index.blocks) == (STAMP, 2)
    index, found = load(tmp_path)
    assert index.stamp == STAMP and rows(found) == rows(SAMPLE)
    assert (len(found.names), index.blocks) == (4, 2) and index.appendable
    assert index.append(records(("9.z", 1, 1, 1)), (1, 2))
    assert index.stamp == (1, 2)
    assert index.append(Records.empty(), (3,))
    index, found = load(tmp_path)
    assert index.stamp == (3,) and found.names == [*SAMPLE.names, "9.z"]
    assert (len(found.names), index.blocks) == (5, 5)


@pytest.mark.parametrize(
    "void",
    ["records appended", "nothing appended", "name forgotten", "rewritten"],
)
def test_stampVoided(tmp_path: Path, void: str) -> None:
    """
    A stamp counts only while nothing follows it: any later write without
    one leaves the file with no stamp.
    """
    index, _ = load(tmp_path)
    index.rewrite(SAMPLE, STAMP)
    if void == "records appended":
        assert index.append(records(("9.z", 1, 1, 1)))
    elif void == "nothing appended":
        assert index.append(Records.empty())
    elif void == "name forgotten":
        index.forget([SAMPLE.names[0]])
    else:
        assert index.rewrite(SAMPLE)
    assert index.stamp is None
    index, found = load(tmp_path)
    assert index.stamp is None and index.appendable
    added = {"9.z"} if void == "records appended" else set()
    assert set(found.names) == set(SAMPLE.names) | added


def test_stampValuesBounded() -> None:
    """
    A stamp holds 1 to 16 values.
    """
    assert parse(MAGIC + encodeStamp((0,) * 16)).stamp == (0,) * 16
    # The widest values a stamp can hold: 64-bit, signed or not.
    extremes = (2**64 - 1, -(2**63), 0, -1)
    assert parse(MAGIC + encodeStamp(extremes)).stamp == extremes
    for bad in [(), (0,) * 17]:
        with pytest.raises(ValueError):
            encodeStamp(bad)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (b"stamp 1 2\n", "damaged stamp"),
        (b"stamp 00000000\n", "damaged stamp"),
        (b"stamp 1 x 00000000\n", "damaged stamp"),
        (b"stamp 1  2 00000000\n", "damaged stamp"),
        (b"stamp " + b"1 " * 17 + b"00000000\n", "damaged stamp"),
        (b"stamp " + b"9" * 22 + b" 00000000\n", "damaged stamp"),
        (b"stamp 1 2 00000000\n", "fails its checksum"),
        (b"stamp 1 2", "damaged stamp"),
        (b"stamp -1- 00000000\n", "damaged stamp"),
        (b"stamp --1 00000000\n", "damaged stamp"),
        (b"stamp 1 2 0000000G\n", "damaged stamp"),
        (b"stamp 1 2 0000000\n", "damaged stamp"),
        (b"stamp " + b"9" * 21 + b" " + b"1" * 4000 + b"\n", "damaged stamp"),
    ],
)
def test_damagedStamp(line: bytes, problem: str) -> None:
    """
    A stamp line that is not one this module wrote ends the parse like a
    damaged block: the records before it are kept, the stamp is not.
    """
    parsed = parse(MAGIC + encodeBlock(SAMPLE) + line)
    assert parsed.problem is not None and problem in parsed.problem
    assert parsed.stamp is None and rows(parsed.records) == rows(SAMPLE)


def test_everyDamageToStampDetected() -> None:
    """
    Any one flipped bit in a stamp line, and any cut through it, leaves the
    file without a stamp.
    """
    whole = MAGIC + encodeBlock(SAMPLE) + encodeStamp(STAMP)
    start = len(whole) - len(encodeStamp(STAMP))
    for position in range(start, len(whole)):
        for bit in range(8):
            damaged = bytearray(whole)
            damaged[position] ^= 1 << bit
            assert parse(bytes(damaged)).stamp is None, (position, bit)
        assert parse(whole[:position]).stamp is None
    assert parse(whole).stamp == STAMP


@pytest.mark.parametrize(
    "magic",
    [
        b"popserv-maildir-index 1\n",
        b"popserv-maildir-index 2\n",
        b"popserv-maildir-index 3\n",
        b"popserv-maildir-index 4\n",
        b"popserv-maildir-index 5\n",
    ],
)
def test_olderVersionsRead(tmp_path: Path, magic: bytes) -> None:
    """
    An index of version 1 (the same blocks, no stamps), or 2 to 5 (with
    stamps) is recognised, without a warning, and rebuilt: its records and
    its stamp are left out (older rules worked out its sizes, and no
    record shows which ones differ), and it is not appended to, so the
    next write rewrites it in the current version.
    """
    stamp = encodeStamp(STAMP) if magic != b"popserv-maildir-index 1\n" else b""
    sample = records(*rows(SAMPLE), ("1700000002.M3P2.host,W=50", 50, 50, 48))
    # Whole, or with a damaged tail (a torn append): none of it is kept.
    for tail in (b"", b"block 1 3 0000000g\n"):
        (tmp_path / INDEX_NAME).write_bytes(magic + encodeBlock(sample) + stamp + tail)
        with capturedLogs() as events:
            index, found = load(tmp_path)
        assert warnings(events) == []
        assert rows(found) == [] and index.stamp is None and not index.missing
    assert not index.appendable and not index.append(SAMPLE)
    stamped = parse(b"popserv-maildir-index 1\n" + encodeBlock(SAMPLE) + encodeStamp(STAMP))
    assert stamped.stamp is None and stamped.problem is not None


def test_loadWithinQuietlyRefusesLargeIndex(tmp_path: Path) -> None:
    """
    loadWithin() gives nothing, and logs nothing, for an index over its
    limit; within it, it loads like load().
    """
    index, _ = load(tmp_path)
    index.rewrite(SAMPLE, STAMP)
    size = (tmp_path / INDEX_NAME).stat().st_size
    with capturedLogs() as events:
        assert MaildirIndex.loadWithin(str(tmp_path), size - 1) is None
    assert events == []
    loaded = MaildirIndex.loadWithin(str(tmp_path), size)
    assert loaded is not None and loaded[0].stamp == STAMP


WRITER = """
import sys
from popserv.maildirindex import MaildirIndex, Records

def record(name):
    # Every record's numbers follow from its name, so a reader can tell a
    # record that was written from one made up of two writes.
    n = int(name.split(".")[0])
    return name, n * 3, n * 3 + 1, n * 7

maildir = sys.argv[1]
index, found = MaildirIndex.load(maildir, 1 << 26)
held = len(found.names)  # records in the file
for round in range(10**6):
    batch = Records.empty()
    for n in range(round * 50, round * 50 + (5000 if round % 3 == 0 else 50)):
        batch.add(*record(f"{n}.M{n}P1.host"))
    # Every other write ends with a stamp: the round, and how many records
    # the file then holds.
    appended = round % 3 != 0 and index.append(
        batch, (round, held + len(batch.names)) if round % 2 else None
    )
    if appended:
        held += len(batch.names)
    elif index.rewrite(batch, (round, len(batch.names)) if round % 2 else None):
        held = len(batch.names)
    if round == 0:
        print("ready", flush=True)
"""


def test_killedWriterLeavesOldOrNewIndex(tmp_path: Path) -> None:
    """
    A writer killed with SIGKILL at any moment leaves an index whose every
    record is one that was written whole: the old index or the new one (a
    torn appended block is ignored), and any temporary file is ignored (and
    removed by L{removeLeftover}).  A
    stamp read back always ends the records written with it.
    """
    rng = random.Random(1)
    stampedRounds: set[int] = set()
    # Twelve kills, and more (about half the writes have a stamp) until one
    # left a stamp to check.
    for attempt in range(36):
        if attempt >= 12 and stampedRounds:
            break
        with subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path)],
            stdout=subprocess.PIPE,
            cwd=Path(__file__).resolve().parent.parent,
        ) as child:
            try:
                assert child.stdout is not None
                assert child.stdout.readline() == b"ready\n"
                time.sleep(rng.uniform(0, 0.05))
            finally:
                child.send_signal(signal.SIGKILL)
                child.wait(timeout=30)
        with capturedLogs():
            index, found = load(tmp_path, limit=1 << 26)
        assert found.names
        for name, wire, downgraded, disk in rows(found):
            n = int(name.split(".")[0])
            assert (wire, downgraded, disk) == (n * 3, n * 3 + 1, n * 7)
        removeLeftover(str(tmp_path))  # as the next login that lists does
        assert not (tmp_path / TEMP_NAME).exists()
        if index.stamp is not None:
            # A stamp read back ends the very records written with it.
            stamped, count = index.stamp
            stampedRounds.add(stamped)
            assert count == len(found.names)
            last = int(found.names[-1].split(".")[0])
            assert stamped * 50 <= last < stamped * 50 + 5000
    assert stampedRounds


@settings(max_examples=50)
@given(st.binary(max_size=2000))
def test_parseNeverFails(data: bytes) -> None:
    """
    Whatever the file holds, parsing it returns (it never raises), and
    yields names and unsigned numbers only.
    """
    for content in (
        data,
        MAGIC + data,
        MAGIC + encodeBlock(SAMPLE) + data,
        MAGIC + encodeStamp(STAMP) + data,
        MAGIC + b"stamp " + data,
    ):
        parsed = parse(content)
        assert parsed.stamp is None or all(isinstance(v, int) for v in parsed.stamp)
        assert all(isinstance(name, str) for name in parsed.records.names)
        for column in parsed.records[1:]:
            assert column.typecode == numbers().typecode


def cachedLoad(
    maildir: Path, cache: IndexCache, limit: int = LIMIT
) -> tuple[MaildirIndex, Records]:
    return MaildirIndex.load(str(maildir), limit, cache)


def notRead(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Make reading an index file fail the test.
    """

    def read(path: str, limit: int) -> Any:
        raise AssertionError(f"{path} was read")

    monkeypatch.setattr(maildirindex, "_readBounded", read)


def test_cacheTakesUnchangedFile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A second load of an index file that has not changed takes what the
    first parsed, without reading the file: the same records, stamp and
    blocks, and appending still works.
    """
    MaildirIndex(str(tmp_path)).rewrite(SAMPLE, STAMP)
    cache = IndexCache()
    _, found = cachedLoad(tmp_path, cache)
    assert len(cache) == 1 and cache.octets == (tmp_path / INDEX_NAME).stat().st_size
    with monkeypatch.context() as patched:
        notRead(patched)
        again, foundAgain = cachedLoad(tmp_path, cache)
    assert rows(foundAgain) == rows(found) == rows(SAMPLE)
    assert (again.stamp, again.blocks, again.missing) == (STAMP, 2, False)
    assert again.appendable
    assert again.append(records(("9.z", 1, 1, 1)))
    assert load(tmp_path)[1].names == [*SAMPLE.names, "9.z"]


def test_cacheRecordsAreCopies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    What a load gives is its caller's to change: the next load from the
    cache gives the records as the file has them.
    """
    MaildirIndex(str(tmp_path)).rewrite(SAMPLE)
    cache = IndexCache()
    for _ in range(2):  # the records the file was parsed to, then a copy
        _, found = cachedLoad(tmp_path, cache)
        found.disk[0] = NO_SIZE
        found.wire[1] = 7
        found.names.append("extra")
    notRead(monkeypatch)
    assert rows(cachedLoad(tmp_path, cache)[1]) == rows(SAMPLE)


@pytest.mark.parametrize("change", ["appended", "rewritten", "same size", "removed"])
def test_cacheSeesOtherWriters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    """
    A file written by someone else after it was cached (another popserv
    process, a program) is read again: appended to, rewritten, rewritten
    to the same size, or removed.
    """
    MaildirIndex(str(tmp_path)).rewrite(SAMPLE, STAMP)
    cache = IndexCache()
    cachedLoad(tmp_path, cache)
    other, _ = load(tmp_path)  # a writer that knows nothing of the cache
    if change == "appended":
        other.append(records(("9.z", 1, 1, 1)))
        expected = [*SAMPLE.names, "9.z"]
    elif change == "rewritten":
        other.rewrite(records(("9.z", 1, 1, 1)))
        expected = ["9.z"]
    elif change == "same size":
        renamed = Records([n.replace("1", "2") for n in SAMPLE.names], *SAMPLE[1:])
        assert len(encodeBlock(renamed)) == len(encodeBlock(SAMPLE))
        other.rewrite(renamed, STAMP)
        expected = renamed.names
    else:
        (tmp_path / INDEX_NAME).unlink()
        expected = []
    index, found = cachedLoad(tmp_path, cache)
    assert found.names == expected
    assert index.missing == (change == "removed")
    assert index.stamp == (STAMP if change == "same size" else None)


@pytest.mark.parametrize("write", ["append", "rewrite", "forget", "forget by removing"])
def test_cacheDroppedOnOwnWrite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write: str
) -> None:
    """
    An index loaded through the cache drops its entry before it writes the
    file, whatever the write; the next load reads the file.
    """
    MaildirIndex(str(tmp_path)).rewrite(SAMPLE)
    cache = IndexCache()
    index, _ = cachedLoad(tmp_path, cache)
    assert len(cache) == 1
    if write == "append":
        assert index.append(records(("9.z", 1, 1, 1)))
    elif write == "rewrite":
        assert index.rewrite(records(("9.z", 1, 1, 1)))
    elif write == "forget":
        index.forget([SAMPLE.names[0]])
    else:
        (tmp_path / INDEX_NAME).write_bytes(MAGIC)  # so that appending is refused
        index.forget([SAMPLE.names[0]])
        assert not (tmp_path / INDEX_NAME).exists()
    assert len(cache) == 0 and cache.octets == 0
    index, found = cachedLoad(tmp_path, cache)
    assert found.names == load(tmp_path)[1].names


@pytest.mark.parametrize("kind", ["damaged", "version 1", "large"])
def test_cacheKeepsOnlyWholeSmallFiles(tmp_path: Path, kind: str) -> None:
    """
    A file that did not parse to its end, of an older version, or larger
    than the cache keeps, is read at every load, and a damaged one is
    reported every time.
    """
    cache = IndexCache(maxFileOctets=4096)
    path = tmp_path / INDEX_NAME
    if kind == "damaged":
        path.write_bytes(MAGIC + encodeBlock(SAMPLE) + b"garbage")
    elif kind == "version 1":
        path.write_bytes(b"popserv-maildir-index 1\n" + encodeBlock(SAMPLE))
    else:
        many = records(*((f"{i:040d}", i, i, i) for i in range(100)))
        MaildirIndex(str(tmp_path)).rewrite(many)
        assert path.stat().st_size > 4096
    for _ in range(2):
        with capturedLogs() as events:
            _, found = cachedLoad(tmp_path, cache)
        assert len(cache) == 0
        assert len(warnings(events)) == (kind == "damaged")
        assert bool(found.names) == (kind != "version 1")  # an older one is rebuilt


def test_cacheHonoursLimit(tmp_path: Path) -> None:
    """
    A cached file larger than the limit of a later load is not taken from
    the cache: loadWithin() gives nothing for it, as for a file read.
    """
    MaildirIndex(str(tmp_path)).rewrite(SAMPLE)
    cache = IndexCache()
    cachedLoad(tmp_path, cache)
    size = (tmp_path / INDEX_NAME).stat().st_size
    assert MaildirIndex.loadWithin(str(tmp_path), size - 1, cache) is None
    assert len(cache) == 0


def test_cacheBounded(tmp_path: Path) -> None:
    """
    The cache keeps files up to a total size, dropping the one used least
    recently first.
    """
    maildirs = [tmp_path / name for name in "abcd"]
    for maildir in maildirs:
        maildir.mkdir()
        MaildirIndex(str(maildir)).rewrite(SAMPLE)
    size = (maildirs[0] / INDEX_NAME).stat().st_size
    cache = IndexCache(maxOctets=3 * size)
    for maildir in maildirs[:3]:
        cachedLoad(maildir, cache)
    cachedLoad(maildirs[0], cache)  # now the most recently used
    cachedLoad(maildirs[3], cache)  # evicts b, the least recently used
    assert cache.octets == 3 * size
    assert list(cache._entries) == [
        str(m / INDEX_NAME) for m in (maildirs[2], maildirs[0], maildirs[3])
    ]


def test_fileFormat(tmp_path: Path) -> None:
    """
    The index is the file popserv.index in the Maildir, octet for octet as
    the module docstring describes it: the header line, a block (its
    count, the length of its names and the CRC-32 of names and numbers;
    the names NUL-separated; the three columns of little-endian 64-bit
    numbers) and a stamp line.  Any change would make every index written
    before an upgrade unreadable, and every message be read again.
    """
    index = MaildirIndex(str(tmp_path))
    assert index.rewrite(records(("1.a", 1, 2, 3), ("2.bc", 2**64 - 2, 0, 7)), (5, -1))
    names = b"1.a\x002.bc"
    columns = struct.pack("<6Q", 1, 2**64 - 2, 2, 0, 3, 7)
    crc = zlib.crc32(names + columns)
    stamp = b"stamp 5 -1"
    assert os.listdir(tmp_path) == ["popserv.index"]
    assert (tmp_path / "popserv.index").read_bytes() == (
        b"popserv-maildir-index 6\n"
        + b"block 2 8 %08x\n" % crc
        + names
        + columns
        + stamp
        + b" %08x\n" % zlib.crc32(stamp)
    )


def test_temporaryFileName(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A rewrite writes popserv.index.tmp in the Maildir and renames it: a
    file of that name is what L{removeLeftover} removes, and nothing else.
    """
    renamed: list[tuple[str, str]] = []
    realRename = os.rename

    def rename(source: str, destination: str) -> None:
        renamed.append((source, destination))
        realRename(source, destination)

    with monkeypatch.context() as patched:
        patched.setattr(os, "rename", rename)
        assert MaildirIndex(str(tmp_path)).rewrite(SAMPLE)
    assert renamed == [
        (str(tmp_path / "popserv.index.tmp"), str(tmp_path / "popserv.index")),
    ]
    (tmp_path / "popserv.index.tmp").write_bytes(b"leftover")
    (tmp_path / "popserv.index.tm").write_bytes(b"someone else's")
    removeLeftover(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["popserv.index", "popserv.index.tm"]


def test_sizeLimit() -> None:
    """
    An index is read when it is at most 4 MiB, plus 1 KiB for each message
    listed.
    """
    assert sizeLimit(0) == 4 * 1024 * 1024
    assert sizeLimit(3) == 4 * 1024 * 1024 + 3 * 1024


def test_headerLineWithoutEnd() -> None:
    """
    A block header that does not end within 64 octets is damaged, even
    when what follows it would read as a header: the parse ends where that
    block starts, with the blocks before it.
    """
    start = len(MAGIC) + len(encodeBlock(SAMPLE))
    parsed = parse(MAGIC + encodeBlock(SAMPLE) + b"block 0 0 00000000 ")
    assert parsed.problem == f"a damaged block header at offset {start}"
    assert (parsed.end, parsed.blocks) == (start, 1)
    assert rows(parsed.records) == rows(SAMPLE)


@pytest.mark.parametrize(("count", "names"), [(1, b"1.a\0" + b"2.b"), (2, b"1.a"), (0, b"1.a")])
def test_wrongNumberOfNames(count: int, names: bytes) -> None:
    """
    A block whose names are not as many as its header says (a file someone
    else wrote, with a good checksum) is not used: its names would be
    paired with other names' numbers.
    """
    columns = struct.pack(f"<{3 * count}Q", *range(1, 3 * count + 1))
    crc = zlib.crc32(names + columns)
    block = b"block %d %d %08x\n" % (count, len(names), crc) + names + columns
    start = len(MAGIC) + len(encodeBlock(SAMPLE))
    parsed = parse(MAGIC + encodeBlock(SAMPLE) + block)
    assert parsed.problem == f"a block with the wrong number of names at offset {start}"
    assert rows(parsed.records) == rows(SAMPLE)


def test_indexHasNoDictionary(tmp_path: Path) -> None:
    """
    An index keeps its few attributes in slots, not in a dictionary of its
    own: every logged-in session holds one.
    """
    index, _ = load(tmp_path)
    assert not hasattr(index, "__dict__")


def test_forgettingRecordFormat(tmp_path: Path) -> None:
    """
    A record that forgets a name has a disk size of all ones (2**64 - 1),
    as indexes written before an upgrade have it; one less is a size.
    """
    index, _ = load(tmp_path)
    assert index.rewrite(records(("1.a", 1, 1, 1), ("2.b", 2, 2, 2**64 - 2)))
    before = (tmp_path / INDEX_NAME).read_bytes()
    index.forget(["1.a"])
    names = b"1.a"
    columns = struct.pack("<3Q", 0, 0, 2**64 - 1)
    forgetting = b"block 1 3 %08x\n" % zlib.crc32(names + columns) + names + columns
    assert (tmp_path / INDEX_NAME).read_bytes() == before + forgetting
    known, missing, _ = lookup(load(tmp_path)[1], ["1.a", "2.b"])
    assert missing == [0]
    assert rows(known) == [("1.a", 0, 0, 2**64 - 1), ("2.b", 2, 2, 2**64 - 2)]


def test_appendToFIFODoesNotWait(tmp_path: Path) -> None:
    """
    An index replaced by a FIFO since it was loaded is not appended to,
    and appending does not wait for a reader of the FIFO (the Maildir's
    lock is held meanwhile).
    """
    index, _ = load(tmp_path)
    assert index.rewrite(SAMPLE)
    path = tmp_path / INDEX_NAME
    path.unlink()
    os.mkfifo(path)
    appended: list[bool] = []
    writer = threading.Thread(target=lambda: appended.append(index.append(SAMPLE)))
    with capturedLogs():
        writer.start()
        writer.join(10)
        waited = writer.is_alive()
        if waited:  # let it go
            os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
            writer.join()
    assert not waited and appended == [False]
    assert not index.appendable


@pytest.mark.parametrize(
    "header",
    [
        b"block 0 -1 00000000\n",
        b"block 0 +0 00000000\n",
        b"block +0 0 00000000\n",
        b"block 0 0 000000000\n",
        b"block 0 0 0000000\n",
        b"block 0 0 \n",
        b"blocks 0 0 00000000\n",
        b"block 0 0 00000000 0\n",
    ],
)
def test_blockHeaderChecked(header: bytes) -> None:
    """
    A block header of other than "block", two unsigned decimals and eight
    hex digits is damaged, even when the numbers in it would make a good
    empty block (a sign, a CRC of nine digits or seven): the parse ends
    there, and does not raise.
    """
    parsed = parse(MAGIC + header + encodeBlock(SAMPLE))
    assert parsed.problem == f"a damaged block header at offset {len(MAGIC)}"
    assert (parsed.end, parsed.blocks, parsed.records.names) == (len(MAGIC), 0, [])


def test_nothingToForget(tmp_path: Path) -> None:
    """
    Forgetting no names writes nothing: a stamp at the end of the file
    still counts.
    """
    index, _ = load(tmp_path)
    assert index.rewrite(SAMPLE, STAMP)
    before = (tmp_path / INDEX_NAME).read_bytes()
    index.forget([])
    assert (tmp_path / INDEX_NAME).read_bytes() == before
    assert index.stamp == STAMP and load(tmp_path)[0].stamp == STAMP


def test_appendToMissingIndex(tmp_path: Path) -> None:
    """
    An index that was missing when loaded is not appended to: the append
    fails quietly (the caller rewrites), and makes no file.
    """
    index, _ = load(tmp_path)
    with capturedLogs() as events:
        assert index.append(SAMPLE) is False
    assert events == []
    assert os.listdir(tmp_path) == []


def test_writeThatWritesNothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A write that writes nothing (and does not say why) fails the rewrite,
    logged as an I/O error, rather than being tried again for ever.
    """
    index, _ = load(tmp_path)
    writes: list[int] = []

    def nothing(fd: int, data: Any) -> int:
        assert not writes, "written again"
        writes.append(len(data))
        return 0

    monkeypatch.setattr(os, "write", nothing)
    with capturedLogs() as events:
        assert not index.rewrite(SAMPLE)
    [warning] = warnings(events)
    path = tmp_path / INDEX_NAME
    assert formatEvent(warning) == (
        f"Cannot write the index {path}: [Errno {errno.EIO}] write wrote nothing"
    )
    assert len(writes) == 1 and os.listdir(tmp_path) == []


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="no /proc/self/fd")
def test_noDescriptorLeft(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    No descriptor stays open after loading, appending, rewriting or
    forgetting, whether they succeed or fail.
    """
    before = len(os.listdir("/proc/self/fd"))
    index, _ = load(tmp_path)
    assert index.rewrite(SAMPLE)
    index, _ = load(tmp_path)
    assert index.append(records(("9.z", 1, 1, 1)))
    assert MaildirIndex.loadWithin(str(tmp_path), 10) is None
    with capturedLogs():
        load(tmp_path, limit=10)
        with monkeypatch.context() as patched:
            patched.setattr(os, "write", lambda fd, data: 0)
            assert not index.append(records(("9.y", 1, 1, 1)))
            assert not index.rewrite(SAMPLE)
        (tmp_path / INDEX_NAME).write_bytes(MAGIC + b"x")
        assert not index.append(SAMPLE)
        index.forget(["9.z"])
        os.mkfifo(tmp_path / INDEX_NAME)
        load(tmp_path)
    assert len(os.listdir("/proc/self/fd")) == before


def test_appendDoesNotFollowSymbolicLink(tmp_path: Path) -> None:
    """
    An index replaced by a symbolic link since it was loaded is not
    appended to, even when the link's target is a file of the size the
    index had: the target is left as it was.
    """
    index, _ = load(tmp_path)
    assert index.rewrite(SAMPLE)
    path = tmp_path / INDEX_NAME
    target = tmp_path / "target"
    target.write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(target)
    with capturedLogs():
        assert not index.append(records(("9.z", 1, 1, 1)))
    assert target.read_bytes() == MAGIC + encodeBlock(SAMPLE)
    assert path.is_symlink() and not index.appendable


def test_forgetWhenIndexRemoved(tmp_path: Path) -> None:
    """
    Forgetting names when someone else has removed the index since it was
    loaded logs the failed append but not the removal that finds no file:
    the index is then missing.
    """
    index, _ = load(tmp_path)
    assert index.rewrite(SAMPLE)
    (tmp_path / INDEX_NAME).unlink()
    with capturedLogs() as events:
        index.forget([SAMPLE.names[0]])
    path = tmp_path / INDEX_NAME
    gone = FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
    assert [formatEvent(e) for e in warnings(events)] == [f"Cannot write the index {path}: {gone}"]
    assert index.missing and os.listdir(tmp_path) == []


def test_forgetWhenIndexCannotBeRemoved(tmp_path: Path) -> None:
    """
    When the index can neither be appended to nor removed (a directory took
    its place), forgetting says so in the log, which index and why, and
    does not raise.
    """
    index, _ = load(tmp_path)
    assert index.rewrite(SAMPLE)
    (tmp_path / INDEX_NAME).unlink()
    (tmp_path / INDEX_NAME).mkdir()
    with capturedLogs() as events:
        index.forget([SAMPLE.names[0]])
    # (Which error a directory gives each depends on the system.)
    path = tmp_path / INDEX_NAME
    assert [formatEvent(e).partition(": [Errno ")[0] for e in warnings(events)] == [
        f"Cannot write the index {path}",
        f"Cannot remove the index {path}",
    ]
    assert (tmp_path / INDEX_NAME).is_dir() and not index.missing


@pytest.mark.parametrize(
    ("tail", "problem"),
    [
        (b"block 1 3 00000000\nabc", "a truncated block"),
        (b"block 0 0 00000001\n", "a block that fails its checksum"),
        (b"stamp 1 2\n", "a damaged stamp"),
        (b"stamp 1 2 00000000\n", "a stamp that fails its checksum"),
    ],
)
def test_problemTexts(tail: bytes, problem: str) -> None:
    """
    What is wrong with a file, as the warning about it says, and where:
    the offset of the damaged block or stamp.
    """
    start = len(MAGIC) + len(encodeBlock(SAMPLE))
    parsed = parse(MAGIC + encodeBlock(SAMPLE) + tail)
    assert parsed.problem == f"{problem} at offset {start}"
    assert (parsed.end, parsed.blocks, rows(parsed.records)) == (start, 1, rows(SAMPLE))


def test_indexShrinksWhileRead(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    An index cut short between its C{fstat} and its reading (by a program
    that does not take the lock) is read up to where it now ends, once:
    its intact blocks are used.
    """
    index, _ = load(tmp_path)
    assert index.rewrite(SAMPLE)
    assert index.append(records(("9.z", 9, 9, 9)))
    path = tmp_path / INDEX_NAME
    whole = MAGIC + encodeBlock(SAMPLE)
    realFstat, realRead = os.fstat, os.read
    reads: list[int] = []

    def fstat(fd: int) -> os.stat_result:
        info = realFstat(fd)
        os.truncate(path, len(whole))
        return info

    def read(fd: int, length: int) -> bytes:
        reads.append(length)
        assert len(reads) < 10, "read again and again"
        return realRead(fd, length)

    monkeypatch.setattr(os, "fstat", fstat)
    monkeypatch.setattr(os, "read", read)
    index, found = load(tmp_path)
    monkeypatch.undo()
    assert rows(found) == rows(SAMPLE) and index.appendable
    assert len(reads) == 2


def test_cacheDefaults() -> None:
    """
    By default the cache keeps files of up to 8 KiB, up to 2 MiB of them.
    """
    cache = IndexCache()
    assert (cache.maxFileOctets, cache.maxOctets) == (8 * 1024, 2 * 1024 * 1024)


def test_cachePutReplaces(tmp_path: Path) -> None:
    """
    Keeping a file the cache already keeps replaces its entry: it is
    counted once.
    """
    MaildirIndex(str(tmp_path)).rewrite(SAMPLE)
    path = str(tmp_path / INDEX_NAME)
    info = os.stat(path)
    parsed = parse((tmp_path / INDEX_NAME).read_bytes())
    cache = IndexCache()
    cache.put(path, info, parsed)
    cache.put(path, info, parsed)
    assert (len(cache), cache.octets) == (1, info.st_size)
    cache.drop(path)
    assert (len(cache), cache.octets) == (0, 0)


def test_indexGrowsWhileRead(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Of an index that grows between its C{fstat} and its reading (a writer
    that does not take the lock), only the size C{fstat} gave is read, in
    one read: what was appended is not used, and not appended after.
    """
    index, _ = load(tmp_path)
    assert index.rewrite(SAMPLE)
    path = tmp_path / INDEX_NAME
    realFstat, realRead = os.fstat, os.read
    reads: list[int] = []

    def fstat(fd: int) -> os.stat_result:
        info = realFstat(fd)
        with open(path, "ab") as f:
            f.write(encodeBlock(records(("9.z", 9, 9, 9))))
        return info

    def read(fd: int, length: int) -> bytes:
        reads.append(length)
        return realRead(fd, length)

    monkeypatch.setattr(os, "fstat", fstat)
    monkeypatch.setattr(os, "read", read)
    index, found = load(tmp_path)
    monkeypatch.undo()
    assert rows(found) == rows(SAMPLE)
    assert reads == [len(MAGIC + encodeBlock(SAMPLE))]
    assert not index.append(records(("9.y", 1, 1, 1)))


def test_writesCutShort(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Writes that each take only part of what they are given, down to one
    octet, are continued: the rewrite and the append write everything.
    """
    realWrite = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: realWrite(fd, bytes(data[:1])))
    index, _ = load(tmp_path)
    assert index.rewrite(SAMPLE)
    assert index.append(records(("9.z", 9, 9, 9)))
    monkeypatch.undo()
    assert rows(load(tmp_path)[1]) == [*rows(SAMPLE), ("9.z", 9, 9, 9)]


def test_readsCutShort(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Reads that each give only part of what they are asked for, down to one
    octet (as some file systems do), are continued: the index loads whole,
    its stamp included.
    """
    index, _ = load(tmp_path)
    assert index.rewrite(SAMPLE, STAMP)
    realRead = os.read
    monkeypatch.setattr(os, "read", lambda fd, length: realRead(fd, min(length, 1)))
    index, found = load(tmp_path)
    monkeypatch.undo()
    assert rows(found) == rows(SAMPLE)
    assert index.stamp == STAMP and index.appendable


@pytest.mark.parametrize(
    ("content", "version", "problem"),
    [
        (b"popserv-maildir-index 7\n" + encodeBlock(SAMPLE), 0, "an unknown version b'7'"),
        (b"popserv-maildir-index 5\n" + encodeBlock(SAMPLE), 5, "an older version (5)"),
        (b"popserv-maildir-index\n" + encodeBlock(SAMPLE), 0, "no popserv index header"),
        (b"", 0, "nothing in it"),
    ],
)
def test_headerProblems(content: bytes, version: int, problem: str) -> None:
    """
    A file without the header of this version parses to nothing at all:
    no records, no blocks, nothing parsed, no stamp; its version if it is
    an older one, else 0.
    """
    assert parse(content) == (Records.empty(), 0, 0, problem, None, version)


def test_symbolicLinkNotFollowed(tmp_path: Path) -> None:
    """
    An index that is a symbolic link to a whole index (another Maildir's)
    is not read through the link: none of the target's records are used.
    """
    other = tmp_path / "other"
    other.mkdir()
    assert MaildirIndex(str(other)).rewrite(SAMPLE, STAMP)
    (tmp_path / INDEX_NAME).symlink_to(other / INDEX_NAME)
    with capturedLogs() as events:
        index, found = load(tmp_path)
    assert found.names == [] and index.stamp is None and not index.appendable
    [warning] = warnings(events)
    assert isinstance(warning["e"], OSError) and warning["e"].errno == errno.ELOOP


def test_loadWithinReportsUnreadableIndex(tmp_path: Path) -> None:
    """
    loadWithin() is quiet only about an index over its limit: one that
    cannot be read (here a FIFO) is reported and given as an empty index
    that is there, as load() gives it.
    """
    os.mkfifo(tmp_path / INDEX_NAME)
    with capturedLogs() as events:
        loaded = MaildirIndex.loadWithin(str(tmp_path), LIMIT)
    assert loaded is not None
    index, found = loaded
    assert found.names == [] and not index.missing and not index.appendable
    assert len(warnings(events)) == 1


def test_appendNotTakenBack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    When a partial append cannot be cut off again either, the append fails
    without raising and the index is no longer appended to: the next
    write rewrites it.
    """
    index, _ = load(tmp_path)
    index.rewrite(SAMPLE)

    def fails(*args: Any) -> Any:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", fails)
    monkeypatch.setattr(os, "ftruncate", fails)
    with capturedLogs():
        assert index.append(records(("9.z", 9, 9, 9))) is False
    assert not index.appendable
