"""
emlstore: an example popserv mail store plugin, C{--mailstore eml:ROOT}.

This module holds only the plugin object, so that twistd's plugin scan,
which imports every dropin, stays cheap: the store itself
(L{emlstore.store}) is imported when a store is made.
"""

from __future__ import annotations

from typing import Any

from twisted.plugin import IPlugin
from zope.interface import implementer

from popserv.errors import StoreConfigError
from popserv.interfaces import IMailStoreFactory


@implementer(IMailStoreFactory, IPlugin)
class EmlStoreFactory:
    """
    Makes an L{emlstore.store.EmlStore} from C{eml:ROOT}.
    """

    storeKind = "eml"
    argStringFormat = "ROOT"
    storeHelp = (
        "One directory per user under ROOT, one message per ROOT/USER/*.eml "
        "file, listed in file-name order, e.g. eml:/srv/eml. ROOT must exist."
    )

    def makeStore(self, argstring: str) -> Any:
        if not argstring:
            raise StoreConfigError("eml: needs a directory, e.g. eml:/srv/eml")
        from emlstore.store import EmlStore

        return EmlStore(argstring)


emlStoreFactory = EmlStoreFactory()
