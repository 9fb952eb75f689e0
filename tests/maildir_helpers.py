"""
Helpers for the Maildir store's tests: a store whose file work runs at
once, and what one login sees.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from synchronous import result, syncRun

from popserv.maildir import MaildirStore

#: Whether this system can read without waiting (what L{popserv.prefetch}
#: needs for it), and open files without changing their access time: from
#: the system, not from what the module found, so that a test of a feature
#: the module failed to find fails rather than skips.
SYSTEM_HAS_NOWAIT = all(hasattr(os, name) for name in ("RWF_NOWAIT", "preadv", "posix_fadvise"))
SYSTEM_HAS_NOATIME = hasattr(os, "O_NOATIME")


def store(tmp_path: Path, template: str = "{user}") -> MaildirStore:
    """
    A store of the Maildirs under C{tmp_path}, its file work run in the
    calling thread.
    """
    return MaildirStore(str(tmp_path / template), runInThread=syncRun)


def login(s: MaildirStore, user: str = "alice") -> tuple[Any, list[Any]]:
    """
    Open C{user}'s maildrop: the maildrop and its listing.
    """
    maildrop = result(s.openMaildrop(user))
    return maildrop, list(result(maildrop.listMessages()))


def snapshot(s: MaildirStore, user: str = "alice") -> list[tuple[str, int, int | None]]:
    """
    (uid, size, downgraded size) of every message, as one login sees them.
    """
    maildrop, infos = login(s, user)
    maildrop.close()
    return [(i.uid, i.size, i.downgradedSize) for i in infos]
