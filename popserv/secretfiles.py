"""
Files that hold secrets (a TLS private key, a password file): a warning when
any user of the machine can read one.

popserv still uses such a file (refusing it, as OpenSSH refuses a key,
would take a server down over a mode bit), but says so at each load, so that
an operator who copied a key with the wrong mode hears of it.
"""

from __future__ import annotations

import os
import stat

from twisted.logger import Logger

_log = Logger()


def warnIfReadableByOthers(fd: int, path: str, what: str) -> bool:
    """
    Log a warning if the open file C{fd} (at C{path}, holding C{what}) may
    be read by users other than its owner and group.

    @return: whether it may.
    """
    mode = os.fstat(fd).st_mode
    if not mode & stat.S_IROTH:
        return False
    _log.warn(
        "{what} {path} can be read by any user (mode {mode:04o}): chmod o-r it",
        what=what,
        path=path,
        mode=stat.S_IMODE(mode),
    )
    return True
