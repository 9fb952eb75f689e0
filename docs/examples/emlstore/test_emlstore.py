"""
The emlstore example runs popserv's store contract test-suite, plus tests of
what is particular to it.

Run with C{python -m pytest test_emlstore.py} from this directory (pytest and
pytest-twisted are popserv's C{test} extra).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted
from emlstore import emlStoreFactory
from emlstore.store import EmlStore, deliver

from popserv.errors import MaildropRefused, StoreConfigError
from popserv.mailstores import findStoreFactories
from popserv.testing import StoreContract


class TestEmlStore(StoreContract):
    """
    EmlStore honours the store contract, its file work in threads.
    """

    def makeStore(self, tmp_path: Path) -> EmlStore:
        return EmlStore(str(tmp_path))

    def deliver(self, store: EmlStore, user: str, message: bytes) -> None:
        deliver(store.root, user, message)


@pytest.mark.parametrize("user", ["../alice", "a/b", ".hidden", ""])
@pytest_twisted.ensureDeferred
async def test_refusesUnsafeNames(tmp_path: Path, user: str) -> None:
    """
    A user name that would leave ROOT or name a hidden file is refused with
    MaildropRefused.
    """
    store = EmlStore(str(tmp_path))
    with pytest.raises(MaildropRefused):
        await store.openMaildrop(user)


@pytest_twisted.ensureDeferred
async def test_ignoresOtherFiles(tmp_path: Path) -> None:
    """
    Only C{*.eml} files not starting with "." are messages.
    """
    store = EmlStore(str(tmp_path))
    deliver(store.root, "alice", b"Subject: one\r\n\r\n")
    (tmp_path / "alice" / ".half-written.tmp").write_bytes(b"x")
    (tmp_path / "alice" / "notes.txt").write_bytes(b"x")
    maildrop = await store.openMaildrop("alice")
    try:
        assert len(await maildrop.listMessages()) == 1
    finally:
        maildrop.close()


def test_factoryChecksRoot(tmp_path: Path) -> None:
    """
    The plugin refuses a missing ROOT with a one-line StoreConfigError.
    """
    with pytest.raises(StoreConfigError, match="does not exist"):
        emlStoreFactory.makeStore(str(tmp_path / "missing"))
    with pytest.raises(StoreConfigError, match="needs a directory"):
        emlStoreFactory.makeStore("")
    assert isinstance(emlStoreFactory.makeStore(str(tmp_path)), EmlStore)


def test_pluginIsFound() -> None:
    """
    With this directory on sys.path, popserv finds the C{eml} store kind.
    """
    assert findStoreFactories()["eml"] is emlStoreFactory


@pytest_twisted.ensureDeferred
async def test_downgradedSizes(tmp_path: Path) -> None:
    """
    Both sizes are listed, so that a login from a client that did not
    enable UTF8 reads no message: a UTF-8 header field grows when it is
    downgraded, an ASCII one does not.
    """
    store = EmlStore(str(tmp_path))
    deliver(store.root, "alice", "Subject: Grüße\r\n\r\nhi\r\n".encode())
    deliver(store.root, "alice", b"Subject: plain\r\n\r\nhi\r\n")
    maildrop = await store.openMaildrop("alice")
    try:
        utf8, ascii = await maildrop.listMessages()
    finally:
        maildrop.close()
    assert utf8.downgradedSize is not None and utf8.downgradedSize > utf8.size
    assert ascii.downgradedSize == ascii.size
