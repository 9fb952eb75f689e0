"""
Tests for L{popserv.prefetch}: reading the start of many files, those the
page cache holds first.

Whether a file is in the page cache is the kernel's business, so most tests
give L{readEach} a C{preadv} that behaves as the kernel does for a file that
is not (C{EAGAIN}, or a read cut short at a page boundary); one test asks
the real kernel, where the file system lets a file be dropped from the
cache.
"""

from __future__ import annotations

import errno
import mmap
import os
import runpy
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from maildir_helpers import SYSTEM_HAS_NOATIME, SYSTEM_HAS_NOWAIT

from popserv import prefetch
from popserv.prefetch import readEach

PAGE = mmap.PAGESIZE
BUFFER = 4 * PAGE

#: Contents that test each way a first read can end: nothing, inside a
#: page, on a page boundary, exactly the buffer, and beyond it.
CONTENTS = {
    "empty": b"",
    "small": b"Subject: hi\n\nhello\n",
    "page": b"p" * PAGE,
    "pages": b"q" * (2 * PAGE),
    "pages+": b"r" * (2 * PAGE + 10),
    "buffer": b"s" * BUFFER,
    "large": bytes(range(256)) * (BUFFER // 64),
}

NOWAIT = os.RWF_NOWAIT if hasattr(os, "RWF_NOWAIT") else 8


@pytest.fixture
def files(tmp_path: Path) -> Iterator[tuple[int, list[str]]]:
    """
    A directory of the files in L{CONTENTS}: its descriptor and their names.
    """
    for name, data in CONTENTS.items():
        (tmp_path / name).write_bytes(data)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield fd, list(CONTENTS)
    finally:
        os.close(fd)


def whole(buffer: bytearray) -> Any:
    """
    A C{then} that returns the whole file: what is in the buffer and, when
    the buffer is full, the rest read from where the descriptor is.
    """

    def then(key: str, fd: int, length: int) -> bytes:
        data = bytes(buffer[:length])
        if length == len(buffer):
            while chunk := os.read(fd, 1 << 16):
                data += chunk
        return data

    return then


def run(directory: int, names: list[str], **kwargs: Any) -> list[tuple[str, Any]]:
    buffer = bytearray(BUFFER)
    return list(readEach(((n, directory, n) for n in names), buffer, whole(buffer), **kwargs))


def inode(fd: int) -> int:
    return os.fstat(fd).st_ino


class FakeKernel:
    """
    A C{preadv} for files some of which are not in the page cache: their
    reads fail with C{EAGAIN}, or stop at the end of the first C{cutAt}
    pages, as Linux's do with C{RWF_NOWAIT}.  Every call is recorded.
    """

    def __init__(self, directory: int, uncached: Iterable[str] = (), cutAt: int = 0) -> None:
        self.uncached = {os.stat(n, dir_fd=directory).st_ino for n in uncached}
        self.cutAt = cutAt
        self.calls: list[int] = []

    def __call__(self, fd: int, buffers: list[bytearray], offset: int, flags: int) -> int:
        assert flags == NOWAIT and offset == 0
        self.calls.append(inode(fd))
        if inode(fd) in self.uncached:
            raise BlockingIOError(errno.EAGAIN, "would block")
        length = os.preadv(fd, buffers, offset)
        if self.cutAt:
            length = min(length, self.cutAt * PAGE)
        return length


@pytest.mark.parametrize("nowait", [NOWAIT, None])
def test_wholeFiles(files: tuple[int, list[str]], nowait: int | None) -> None:
    """
    Each file's key comes with what C{then} made of it, read from the start
    of the buffer and, past it, from where the descriptor is: the file, for
    every way a first read can end, and when reads cannot wait or can.
    """
    directory, names = files
    fake = FakeKernel(directory)
    assert run(directory, names, nowait=nowait, preadv=fake) == list(CONTENTS.items())
    assert len(fake.calls) == (len(names) if nowait else 0)


@pytest.mark.parametrize("pages", [1, 2])
def test_cutShort(files: tuple[int, list[str]], pages: int) -> None:
    """
    A read that did not wait may stop at a page boundary, when the next page
    is not cached: the rest is then read, waiting.  (One that stops inside
    a page reached the end of the file.)
    """
    directory, names = files
    fake = FakeKernel(directory, cutAt=pages)
    assert run(directory, names, nowait=NOWAIT, preadv=fake) == list(CONTENTS.items())


def test_nothingRead(files: tuple[int, list[str]]) -> None:
    """
    A read that did not wait and gave nothing is not taken for the end of
    the file: the file is read, waiting.
    """
    directory, names = files

    def nothing(fd: int, buffers: list[bytearray], offset: int, flags: int) -> int:
        return 0

    assert run(directory, names, nowait=NOWAIT, preadv=nothing) == list(CONTENTS.items())


def test_uncachedComeLater(files: tuple[int, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A file whose read would wait is asked of the disk and read after the
    files that are cached, in order among themselves, at most C{window}
    files late: when that many are waiting, the older half is read.
    """
    directory, _ = files
    names = [f"f{i}" for i in range(10)]
    for i, name in enumerate(names):
        os.write(fd := os.open(name, os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=directory), b"%d" % i)
        os.close(fd)
    advised: list[int] = []

    def fadvise(fd: int, offset: int, length: int, advice: int) -> None:
        assert (offset, length, advice) == (0, BUFFER, os.POSIX_FADV_WILLNEED)
        advised.append(inode(fd))

    monkeypatch.setattr(os, "posix_fadvise", fadvise)
    fake = FakeKernel(directory, uncached=set(names[::2]))
    got = run(directory, names, nowait=NOWAIT, preadv=fake, window=4)
    order = [1, 3, 5, 0, 2, 7, 9, 4, 6, 8]
    assert got == [(f"f{i}", b"%d" % i) for i in order]
    assert advised == [os.stat(n, dir_fd=directory).st_ino for n in names[::2]]


def test_noNowaitOnThisFileSystem(files: tuple[int, list[str]]) -> None:
    """
    A file system that refuses C{RWF_NOWAIT} (C{EOPNOTSUPP}) is asked once;
    every file is then read in turn.
    """
    directory, names = files
    calls = []

    def refuse(fd: int, buffers: list[bytearray], offset: int, flags: int) -> int:
        calls.append(fd)
        raise OSError(errno.EOPNOTSUPP, "not supported")

    assert run(directory, names, nowait=NOWAIT, preadv=refuse) == list(CONTENTS.items())
    assert len(calls) == 1


@pytest.mark.parametrize("nowait", [NOWAIT, None])
def test_errors(files: tuple[int, list[str]], nowait: int | None) -> None:
    """
    A file that cannot be opened or read, or that C{then} refuses, comes
    with its L{OSError}, and the others are read.  A FIFO cannot be read at
    an offset: it is read in turn, and its answer is what C{then} makes of
    that (here: nothing, as nothing writes to it).
    """
    directory, _ = files
    os.mkfifo("fifo", dir_fd=directory)
    os.mkdir("dir", dir_fd=directory)
    buffer = bytearray(BUFFER)

    def then(key: str, fd: int, length: int) -> bytes:
        if key == "small":
            raise OSError(errno.EINVAL, "refused")
        return bytes(buffer[:length])

    names = ["missing", "small", "fifo", "dir", "page"]
    got = dict(
        readEach(
            ((n, directory, n) for n in names),
            buffer,
            then,
            os.O_RDONLY | os.O_NONBLOCK,
            nowait,
            FakeKernel(directory) if nowait else None,
        )
    )
    assert list(got) == names
    assert isinstance(got["missing"], FileNotFoundError)
    assert isinstance(got["small"], OSError) and got["small"].errno == errno.EINVAL
    assert got["fifo"] == b""
    assert isinstance(got["dir"], OSError) and got["dir"].errno == errno.EISDIR
    assert got["page"] == CONTENTS["page"]


def openDescriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


#: L{prefetch.NOATIME} where the system has it; where it has not, a flag
#: the tests that fake the system's refusal can stand it in for.
NOATIME_FLAG = prefetch.NOATIME or 0o1000000


def accessTimeKept(path: Path, read: Any) -> bool:
    """
    Whether C{read()} leaves the access time of C{path} as it was, when it
    is older than the file's modification time, as for mail never read
    since it was delivered (a read on a C{relatime} file system updates
    it then).
    """
    os.utime(path, ns=(1_000_000_000, 2_000_000_000))
    read()
    return os.stat(path).st_atime_ns == 1_000_000_000


@pytest.mark.skipif(not SYSTEM_HAS_NOATIME, reason="no O_NOATIME on this system")
@pytest.mark.parametrize("nowait", [NOWAIT, None])
def test_accessTimeKept(files: tuple[int, list[str]], tmp_path: Path, nowait: int | None) -> None:
    """
    Files opened with L{prefetch.NOATIME} keep their access time; without
    it, the same read changes it (unless this file system keeps no access
    times at all: then there is nothing to test).
    """
    directory, _ = files
    path = tmp_path / "small"

    def readWith(flags: int) -> Any:
        return lambda: run(directory, ["small"], nowait=nowait, flags=flags)

    assert accessTimeKept(path, readWith(os.O_RDONLY | prefetch.NOATIME))
    if accessTimeKept(path, readWith(os.O_RDONLY)):
        pytest.skip("this file system does not update access times on reads")


@pytest.mark.parametrize("nowait", [NOWAIT, None])
@pytest.mark.parametrize("code", [errno.EPERM, errno.EACCES])
def test_noAccessTimeRefused(
    files: tuple[int, list[str]], monkeypatch: pytest.MonkeyPatch, nowait: int | None, code: int
) -> None:
    """
    Where the system refuses L{prefetch.NOATIME} (C{EPERM}: the process
    does not own the file), the file is opened without it, and so is every
    file after it: one refusal per run, not one per file.  A file that
    cannot be read at all (C{EACCES}) is an error, not a reason to ask
    again.
    """
    directory, names = files
    realOpen = os.open
    opened: list[tuple[str, bool]] = []

    def fakeOpen(name: str, flags: int, *args: Any, **kwargs: Any) -> int:
        opened.append((name, bool(flags & NOATIME_FLAG)))
        if flags & NOATIME_FLAG or code == errno.EACCES:
            raise PermissionError(code, os.strerror(code), name)
        return realOpen(name, flags, *args, **kwargs)

    monkeypatch.setattr(prefetch, "NOATIME", NOATIME_FLAG)
    monkeypatch.setattr(os, "open", fakeOpen)
    got = run(directory, names, nowait=nowait, flags=os.O_RDONLY | NOATIME_FLAG)
    if code == errno.EPERM:
        assert got == list(CONTENTS.items())
        assert opened == [(names[0], True)] + [(name, False) for name in names]
    else:
        assert [key for key, _ in got] == names
        assert all(isinstance(e, PermissionError) for _, e in got)
        assert opened == [(name, True) for name in names]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="no /proc/self/fd")
def test_noDescriptorLeft(files: tuple[int, list[str]]) -> None:
    """
    No descriptor stays open: not for files waiting to be read, not when
    the caller stops early, not when C{then} raises something else.
    """
    directory, names = files
    before = openDescriptors()
    buffer = bytearray(BUFFER)
    fake = FakeKernel(directory, uncached=set(names[::2]))
    reads = readEach(
        ((n, directory, n) for n in names), buffer, whole(buffer), nowait=NOWAIT, preadv=fake
    )
    next(reads)
    assert openDescriptors() == before
    reads.close()

    def broken(key: str, fd: int, length: int) -> None:
        raise ZeroDivisionError()

    with pytest.raises(ZeroDivisionError):
        list(readEach(((n, directory, n) for n in names), buffer, broken, nowait=NOWAIT))
    with pytest.raises(ZeroDivisionError):
        list(readEach(((n, directory, n) for n in names), buffer, broken, nowait=None))

    def interrupted(fd: int, buffers: list[bytearray], offset: int, flags: int) -> int:
        raise KeyboardInterrupt()

    with pytest.raises(KeyboardInterrupt):
        list(readEach(((n, directory, n) for n in names), buffer, broken, preadv=interrupted))
    assert openDescriptors() == before


def uncache(path: Path) -> None:
    """
    Drop C{path} from the page cache.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def readWouldWait(path: Path) -> bool:
    """
    Whether the kernel says that a read of C{path} would wait for the disk.
    (Saying so starts the read: C{path} is then on its way to the cache.)
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.preadv(fd, [bytearray(1)], 0, prefetch.NOWAIT)
    except BlockingIOError:
        return True
    except OSError:
        return False
    else:
        return False
    finally:
        os.close(fd)


def droppedFromCache(path: Path) -> bool:
    """
    Drop C{path} from the page cache, and whether a read of it would then
    wait.  The kernel may keep a page it was just asked to drop (one still
    held by write-back), and on a busy machine a single try sometimes
    found the page kept and skipped the test below: try a few times.
    """
    for _ in range(10):
        uncache(path)
        if readWouldWait(path):
            return True
    return False


@pytest.mark.skipif(not SYSTEM_HAS_NOWAIT, reason="no RWF_NOWAIT on this system")
def test_realPageCache(
    files: tuple[int, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    With the real kernel: a file dropped from the page cache is asked of
    the disk and read after the others, whole.
    """
    directory, names = files
    probe = tmp_path / "probe"
    probe.write_bytes(b"x" * 100)
    if not droppedFromCache(probe):
        pytest.skip("this file system keeps files cached (tmpfs) or refuses RWF_NOWAIT")
    advised: list[int] = []
    real = os.posix_fadvise

    def fadvise(fd: int, offset: int, length: int, advice: int) -> None:
        advised.append(inode(fd))
        real(fd, offset, length, advice)

    # The kernel may keep a page it was just asked to drop (one still held
    # by the write-back of the file): try a few times.
    for _ in range(10):
        uncache(tmp_path / "pages+")
        with monkeypatch.context() as patched:
            patched.setattr(os, "posix_fadvise", fadvise)
            got = run(directory, names)
        assert sorted(got) == sorted(CONTENTS.items())
        if advised:
            break
    else:
        pytest.skip("the kernel kept the file in the page cache")
    assert advised == [os.stat(tmp_path / "pages+").st_ino]
    assert got == [(n, d) for n, d in CONTENTS.items() if n != "pages+"] + [
        ("pages+", CONTENTS["pages+"])
    ]


@pytest.mark.skipif(not SYSTEM_HAS_NOWAIT, reason="no RWF_NOWAIT on this system")
def test_cachedWithRealKernel(tmp_path: Path) -> None:
    """
    With the real kernel: C{cached} says no for a file dropped from the page
    cache and yes once it was read; it reads nothing into the caller's way
    (the descriptor's offset stays at the start).
    """
    path = tmp_path / "message"
    path.write_bytes(b"Subject: hi\n\n" + b"x" * 3 * PAGE)
    # The kernel may keep a page it was just asked to drop: try a few times.
    for _ in range(10):
        uncache(path)
        fd = os.open(path, os.O_RDONLY)
        try:
            if not prefetch.cached(fd):
                assert os.lseek(fd, 0, os.SEEK_CUR) == 0
                assert os.read(fd, 13) == b"Subject: hi\n\n"
                assert prefetch.cached(fd)
                return
        finally:
            os.close(fd)
    pytest.skip("this file system keeps files cached (tmpfs), or the kernel kept the page")


def test_defaultWindow(files: tuple[int, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    """
    By default 256 files are asked of the disk before the first of them is
    read.
    """
    directory, _ = files
    names = [f"f{i}" for i in range(257)]
    for name in names:
        os.close(os.open(name, os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=directory))
    advised = 0

    def fadvise(fd: int, offset: int, length: int, advice: int) -> None:
        nonlocal advised
        advised += 1

    monkeypatch.setattr(os, "posix_fadvise", fadvise)
    buffer = bytearray(BUFFER)
    reads = readEach(
        ((n, directory, n) for n in names),
        buffer,
        lambda key, fd, length: advised,
        nowait=NOWAIT,
        preadv=FakeKernel(directory, uncached=names),
    )
    assert next(reads) == ("f0", 256)
    reads.close()


def test_withoutNowait(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Where a read cannot be asked not to wait, every file counts as cached
    and nothing is asked of the disk: neither call touches the file.
    """
    path = tmp_path / "message"
    path.write_bytes(b"Subject: hi\n\nhello\n")
    fd = os.open(path, os.O_RDONLY)
    try:
        with monkeypatch.context() as patched:
            patched.setattr(prefetch, "NOWAIT", None)
            for name in ("preadv", "open", "posix_fadvise"):
                patched.setattr(os, name, lambda *args, **kwargs: pytest.fail("called"))
            assert prefetch.cached(fd) is True
            assert prefetch.advise(str(path), BUFFER, os.O_RDONLY) is None
    finally:
        os.close(fd)


def loadedWithout(monkeypatch: pytest.MonkeyPatch, names: Iterable[str]) -> dict[str, Any]:
    """
    What L{popserv.prefetch} finds when it is loaded on a system whose
    C{os} module lacks C{names}: its globals, from a fresh run of its file
    (the module itself is left alone).
    """
    with monkeypatch.context() as patched:
        for name in names:
            patched.delattr(os, name)
        return runpy.run_path(prefetch.__file__)


@pytest.mark.skipif(
    not all(hasattr(os, n) for n in ("RWF_NOWAIT", "preadv", "posix_fadvise", "O_NOATIME")),
    reason="this system lacks some of what the module looks for",
)
@pytest.mark.parametrize(
    "missing", [(), ("RWF_NOWAIT",), ("preadv",), ("posix_fadvise",), ("O_NOATIME",)]
)
def test_whatTheSystemHas(monkeypatch: pytest.MonkeyPatch, missing: tuple[str, ...]) -> None:
    """
    Reads are asked not to wait (L{prefetch.NOWAIT}) only where the system
    has C{RWF_NOWAIT}, C{preadv} to pass it to and C{posix_fadvise} to ask
    the disk for what would wait; elsewhere every file is read in turn.
    Files are opened without changing their access time where the system
    has C{O_NOATIME}; elsewhere L{prefetch.NOATIME} adds nothing to the
    flags.
    """
    found = loadedWithout(monkeypatch, missing)
    nowait = set(missing).isdisjoint({"RWF_NOWAIT", "preadv", "posix_fadvise"})
    assert found["NOWAIT"] == (os.RWF_NOWAIT if nowait else None)
    assert found["NOATIME"] == (0 if "O_NOATIME" in missing else os.O_NOATIME)


def test_windowOfOne(files: tuple[int, list[str]]) -> None:
    """
    With a window of one file, a file whose read would wait is read at
    once, waiting: every file comes in the order given.
    """
    directory, names = files
    fake = FakeKernel(directory, uncached=names[::2])
    assert run(directory, names, nowait=NOWAIT, preadv=fake, window=1) == list(CONTENTS.items())
    assert len(fake.calls) == len(names)


@pytest.mark.parametrize("nowait", [NOWAIT, None])
def test_bufferOfPartPages(files: tuple[int, list[str]], nowait: int | None) -> None:
    """
    A buffer that is not a whole number of pages, filled by the first read:
    C{then} finds the descriptor after it all the same, and reads the rest
    of the file from there.
    """
    directory, names = files
    buffer = bytearray(PAGE + 100)
    got = readEach(
        ((n, directory, n) for n in names),
        buffer,
        whole(buffer),
        nowait=nowait,
        preadv=FakeKernel(directory),
    )
    assert list(got) == list(CONTENTS.items())


@pytest.mark.parametrize("nowait", [NOWAIT, None])
def test_otherErrorsRaised(files: tuple[int, list[str]], nowait: int | None) -> None:
    """
    Only an L{OSError} is a file's answer: anything else that opening or
    reading raises (a name with a NUL, which no directory lists; a
    C{preadv} that fails otherwise) is a bug, and is raised.
    """
    directory, _ = files
    with pytest.raises(ValueError, match="null"):
        run(directory, ["small", "nul\0"], nowait=nowait, preadv=FakeKernel(directory))

    def broken(fd: int, buffers: list[bytearray], offset: int, flags: int) -> int:
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        run(directory, ["small"], nowait=NOWAIT, preadv=broken)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="no /proc/self/fd")
def test_readThatCannotWaitRefused(files: tuple[int, list[str]]) -> None:
    """
    A file that cannot be read at an offset (here a directory) is read in
    turn, and no descriptor is left open; the files after it are still
    read without waiting, those whose read would wait coming later.
    """
    directory, _ = files
    os.mkdir("dir", dir_fd=directory)
    before = openDescriptors()
    fake = FakeKernel(directory, uncached=["small"])
    got = run(directory, ["dir", "small", "page"], nowait=NOWAIT, preadv=fake)
    assert [key for key, _ in got] == ["dir", "page", "small"]
    assert isinstance(got[0][1], OSError) and got[0][1].errno == errno.EISDIR
    assert got[1:] == [("page", CONTENTS["page"]), ("small", CONTENTS["small"])]
    assert openDescriptors() == before


def test_withoutPreadv(files: tuple[int, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    """
    On a system without C{preadv}, a caller that asks for reads that do
    not wait gets every file read in turn, as where the file system
    refuses them: after the first file, each is opened once.
    """
    directory, names = files
    realOpen = os.open
    opened: list[str] = []

    def countingOpen(name: str, *args: Any, **kwargs: Any) -> int:
        opened.append(name)
        return realOpen(name, *args, **kwargs)

    monkeypatch.delattr(os, "preadv", raising=False)
    monkeypatch.setattr(os, "open", countingOpen)
    assert run(directory, names, nowait=NOWAIT) == list(CONTENTS.items())
    assert opened == [names[0], *names]


@pytest.mark.parametrize("nowait", [NOWAIT, None])
def test_refusedWithoutNoAccessTime(
    files: tuple[int, list[str]], monkeypatch: pytest.MonkeyPatch, nowait: int | None
) -> None:
    """
    A file the system refuses with C{EPERM} when it is opened without
    L{prefetch.NOATIME} comes with that error, asked once: there is nothing
    to take away and ask again without.
    """
    directory, names = files
    opened: list[str] = []

    def fakeOpen(name: str, flags: int, *args: Any, **kwargs: Any) -> int:
        opened.append(name)
        raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), name)

    monkeypatch.setattr(prefetch, "NOATIME", NOATIME_FLAG)
    monkeypatch.setattr(os, "open", fakeOpen)
    got = run(directory, names, nowait=nowait, flags=os.O_RDONLY)
    assert [key for key, _ in got] == names
    assert all(isinstance(e, PermissionError) for _, e in got)
    assert opened == names


class FakeProbe:
    """
    An C{os.preadv} for L{prefetch.cached}: C{EAGAIN} for a file not in the
    page cache, but as Linux does, only when asked for at least one octet;
    or another error, for a file system that refuses C{RWF_NOWAIT}.
    """

    def __init__(self, error: int | None = None) -> None:
        self.error = error

    def __call__(self, fd: int, buffers: list[bytearray], offset: int, flags: int = 0) -> int:
        assert flags == prefetch.NOWAIT
        if self.error is not None:
            raise OSError(self.error, os.strerror(self.error))
        if sum(len(b) for b in buffers) == 0:
            return 0
        raise BlockingIOError(errno.EAGAIN, "would block")


def test_cachedAsksForAnOctet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    C{cached} says no for a file whose first octet would wait for the disk;
    yes where the file system refuses to say (C{EOPNOTSUPP}): then the read
    just waits, as it always did.
    """
    path = tmp_path / "message"
    path.write_bytes(b"Subject: hi\n\nhello\n")
    fd = os.open(path, os.O_RDONLY)
    try:
        monkeypatch.setattr(prefetch, "NOWAIT", NOWAIT)
        monkeypatch.setattr(os, "preadv", FakeProbe(), raising=False)
        assert prefetch.cached(fd) is False
        monkeypatch.setattr(os, "preadv", FakeProbe(errno.EOPNOTSUPP))
        assert prefetch.cached(fd) is True
    finally:
        os.close(fd)


def test_adviseGoneFile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Asking the disk for a file that cannot be opened (a message another
    session has deleted) does nothing, and does not raise.
    """
    monkeypatch.setattr(prefetch, "NOWAIT", NOWAIT)
    monkeypatch.setattr(os, "posix_fadvise", lambda *args: pytest.fail("advised"), raising=False)
    assert prefetch.advise(str(tmp_path / "gone"), BUFFER, os.O_RDONLY) is None


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="no posix_fadvise on this system")
@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="no /proc/self/fd")
def test_adviseLeavesNoDescriptor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Asking the disk for a file opens it, and closes it again, whether the
    advice could be given or not.
    """
    path = tmp_path / "message"
    path.write_bytes(b"Subject: hi\n\nhello\n")
    monkeypatch.setattr(prefetch, "NOWAIT", NOWAIT)
    before = openDescriptors()
    prefetch.advise(str(path), BUFFER, os.O_RDONLY)

    def refuse(*args: Any) -> None:
        raise OSError(errno.ESPIPE, "Illegal seek")

    monkeypatch.setattr(os, "posix_fadvise", refuse)
    prefetch.advise(str(path), BUFFER, os.O_RDONLY)
    assert openDescriptors() == before
