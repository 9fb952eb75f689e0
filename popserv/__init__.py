"""
popserv: a pluggable POP3 server built on Twisted.

The public API for embedding and extending:

 - L{POP3ServerFactory}: the protocol factory, for any endpoint.
 - L{MaildropRealm}: the cred realm that opens maildrops from a store.
 - L{MaildirStore}, L{MemoryStore}: the built-in stores.
 - L{FileReader}: an L{IMessageReader} over a file, reading in a thread,
   for file-based stores.
 - L{IMailStore}, L{IMaildrop}, L{IMessageReader}, L{IMailStoreFactory},
   L{MessageInfo}: what a custom store implements (and, optionally,
   L{IWholeMessageReader}; L{MessageList} lists many messages at once).
 - The errors a store raises: L{MaildropInUse}, L{MaildropUnavailable},
   L{MaildropRefused}, L{MessageUnavailable}, L{DeletionFailed},
   L{StoreConfigError}.

The names are imported on first use, so that twistd's plugin scan, which
imports popserv's dropin, does not load the protocol and stores.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from popserv._version import __version__

_EXPORTS = {
    "DeletionFailed": "popserv.errors",
    "MaildropInUse": "popserv.errors",
    "MaildropRefused": "popserv.errors",
    "MaildropUnavailable": "popserv.errors",
    "MessageUnavailable": "popserv.errors",
    "POP3Error": "popserv.errors",
    "StoreConfigError": "popserv.errors",
    "IMaildrop": "popserv.interfaces",
    "IMailStore": "popserv.interfaces",
    "IMailStoreFactory": "popserv.interfaces",
    "IMessageReader": "popserv.interfaces",
    "IWholeMessageReader": "popserv.interfaces",
    "MessageInfo": "popserv.interfaces",
    "MessageList": "popserv.interfaces",
    "FileReader": "popserv.filereader",
    "MaildirStore": "popserv.maildir",
    "MemoryStore": "popserv.memorystore",
    "POP3ServerFactory": "popserv.protocol",
    "MaildropRealm": "popserv.realm",
}

__all__ = [
    "DeletionFailed",
    "FileReader",
    "IMailStore",
    "IMailStoreFactory",
    "IMaildrop",
    "IMessageReader",
    "IWholeMessageReader",
    "MaildirStore",
    "MaildropInUse",
    "MaildropRealm",
    "MaildropRefused",
    "MaildropUnavailable",
    "MemoryStore",
    "MessageInfo",
    "MessageList",
    "MessageUnavailable",
    "POP3Error",
    "POP3ServerFactory",
    "StoreConfigError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'popserv' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:
    from popserv.errors import (
        DeletionFailed,
        MaildropInUse,
        MaildropRefused,
        MaildropUnavailable,
        MessageUnavailable,
        POP3Error,
        StoreConfigError,
    )
    from popserv.filereader import FileReader
    from popserv.interfaces import (
        IMaildrop,
        IMailStore,
        IMailStoreFactory,
        IMessageReader,
        IWholeMessageReader,
        MessageInfo,
        MessageList,
    )
    from popserv.maildir import MaildirStore
    from popserv.memorystore import MemoryStore
    from popserv.protocol import POP3ServerFactory
    from popserv.realm import MaildropRealm
