"""
Finding stores by C{--mailstore KIND:ARGS}, and the built-in store plugins.

Stores are found like C{twisted.cred} checkers: every object providing
L{IMailStoreFactory} in the C{twisted.plugins} package is a store kind.  The
built-in kinds below are exposed by popserv's own dropin; a third party adds
a kind by shipping a dropin of its own (see docs/extending.rst).

This module stays light (no store is imported until it is made) because
twistd imports every dropin whenever it looks for plugins.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from twisted.plugin import IPlugin
from zope.interface import implementer

from popserv.errors import StoreConfigError
from popserv.interfaces import IMailStore, IMailStoreFactory


@implementer(IMailStoreFactory, IPlugin)
class MaildirStoreFactory:
    """
    C{maildir:TEMPLATE}: Maildir directories, one per user.
    """

    storeKind = "maildir"
    argStringFormat = "TEMPLATE"
    storeHelp = (
        "Maildir directories. TEMPLATE is the path of a user's Maildir with "
        "{user} standing for the login name, or {localpart} and {domain} for "
        "the parts of a user@domain login, e.g. maildir:/srv/mail/{user}. "
        "The directory before the first field must exist; a user's Maildir "
        "is created on first login."
    )

    def makeStore(self, argstring: str) -> IMailStore:
        from popserv.maildir import MaildirStore

        return MaildirStore(argstring)


@implementer(IMailStoreFactory, IPlugin)
class MemoryStoreFactory:
    """
    C{memory}: empty maildrops in memory, lost at exit.
    """

    storeKind = "memory"
    argStringFormat = "(no arguments)"
    storeHelp = (
        "Empty maildrops held in memory and lost at exit: for trying out "
        "authentication. Embedding applications deliver into a "
        "popserv.MemoryStore themselves."
    )

    def makeStore(self, argstring: str) -> IMailStore:
        from popserv.memorystore import MemoryStore

        if argstring:
            raise StoreConfigError("memory: takes no arguments")
        return MemoryStore()


maildirStoreFactory = MaildirStoreFactory()
memoryStoreFactory = MemoryStoreFactory()


def findStoreFactories() -> dict[str, IMailStoreFactory]:
    """
    Every installed store kind, by name (the first plugin found, where
    two claim one: L{makeStore} refuses such a kind).
    """
    return {kind: claimants[0] for kind, claimants in storeClaimants().items()}


def storeClaimants() -> dict[str, list[IMailStoreFactory]]:
    """
    The installed plugins of each store kind, by kind: more than one where
    plugins clash (L{makeStore} refuses such a kind).  A plugin that lacks
    one of L{IMailStoreFactory}'s attributes is left out
    (L{brokenStorePlugins}).
    """
    return _scan()[0]


def brokenStorePlugins() -> list[str]:
    """
    What is wrong with each installed store plugin that lacks one of
    L{IMailStoreFactory}'s attributes, one line each, e.g.
    C{"mystore.Factory has no storeKind"}.
    """
    return _scan()[1]


#: What each store plugin must have, as text (IMailStoreFactory).
_ATTRIBUTES = ("storeKind", "argStringFormat", "storeHelp")


def _scan() -> tuple[dict[str, list[IMailStoreFactory]], list[str]]:
    from twisted.plugin import getPlugins

    claimants: dict[str, list[IMailStoreFactory]] = {}
    broken: list[str] = []
    for factory in getPlugins(IMailStoreFactory):
        wrong = lacking(factory, _ATTRIBUTES)
        if wrong is not None:
            broken.append(wrong)
            continue
        claimants.setdefault(factory.storeKind, []).append(factory)
    return claimants, broken


def namedFactory(factory: object) -> str:
    return f"{type(factory).__module__}.{type(factory).__qualname__}"


def namedFactories(factories: Iterable[object]) -> str:
    """
    The plugins that claim one kind, named for an error: C{"a.F and b.G"}.
    """
    return " and ".join(sorted(map(namedFactory, factories)))


def lacking(factory: object, texts: Sequence[str], others: Sequence[str] = ()) -> str | None:
    """
    What a plugin lacks of what its interface asks, as one line
    (C{"mystore.Factory has no storeKind"}), or L{None}: a plugin's bug (a
    misspelt attribute) must not stop every start of popserv, whatever kind
    is chosen, with an AttributeError that does not say which plugin it was.

    @param texts: the attributes that must be L{str}.
    @param others: the attributes that must be there, of any type.
    """
    missing = [name for name in texts if not isinstance(getattr(factory, name, None), str)]
    missing += [name for name in others if not hasattr(factory, name)]
    return f"{namedFactory(factory)} has no {' or '.join(missing)}" if missing else None


def makeStore(description: str) -> IMailStore:
    """
    Make the store that C{description} (C{KIND:ARGS}) names.

    @raise StoreConfigError: unknown kind, a kind two plugins claim, bad
        arguments, or a plugin that made no store; one line.
    """
    kind, _, argstring = description.partition(":")
    claimants, broken = _scan()
    found = claimants.get(kind, [])
    if not found:
        known = ", ".join(sorted(claimants)) or "none"
        # The kind may be that of a plugin left out as broken: say so.
        left = "".join(f"; {line}" for line in broken)
        raise StoreConfigError(f"unknown mail store kind {kind!r} (installed: {known}{left})")
    if len(found) > 1:
        # Which one getPlugins finds first depends on the order of files
        # on disk: never pick one silently.
        raise StoreConfigError(
            f"mail store kind {kind!r} is claimed by both {namedFactories(found)}"
        )
    try:
        store = found[0].makeStore(argstring)
    except StoreConfigError:
        raise
    except ValueError as e:
        # As twisted.cred.strcred takes a checker factory's ValueError: the
        # operator's mistake in the arguments, said in one line.
        raise StoreConfigError(f"{kind}: {e}") from None
    if not IMailStore.providedBy(store):
        raise StoreConfigError(
            f"{kind}: {namedFactory(found[0])}.makeStore gave {store!r}, not an IMailStore provider"
        )
    return store
