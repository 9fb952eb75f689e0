"""
The store contract test-suite, run for both built-in stores.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from popserv.maildir import MaildirStore
from popserv.memorystore import MemoryStore
from popserv.testing import StoreContract


class TestMemoryStore(StoreContract):
    """
    MemoryStore honours the store contract.
    """

    def makeStore(self, tmp_path: Path) -> MemoryStore:
        return MemoryStore()

    def deliver(self, store, user: str, message: bytes) -> None:
        store.deliver(user, message)


_counter = iter(range(10**9))


def deliverToMaildir(path: Path, message: bytes, name: str | None = None) -> Path:
    """
    Deliver C{message} into the Maildir at C{path} the way an MDA does:
    write into tmp/, then rename into new/.
    """
    for subdir in ("tmp", "new", "cur"):
        (path / subdir).mkdir(parents=True, exist_ok=True)
    if name is None:
        name = f"{int(time.time())}.M{next(_counter):06d}P{os.getpid()}.test"
    tmp = path / "tmp" / name
    tmp.write_bytes(message)
    final = path / "new" / name
    os.rename(tmp, final)
    return final


class TestMaildirStore(StoreContract):
    """
    MaildirStore honours the store contract, its file work in threads.
    """

    def makeStore(self, tmp_path: Path) -> MaildirStore:
        return MaildirStore(str(tmp_path / "{user}"))

    def deliver(self, store, user: str, message: bytes) -> None:
        deliverToMaildir(Path(store.template.pathFor(user)), message)
