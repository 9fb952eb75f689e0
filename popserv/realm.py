"""
The C{twisted.cred} realm that turns an authenticated user into a locked
maildrop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.cred.portal import IRealm
from twisted.internet.defer import Deferred, fail, maybeDeferred
from zope.interface import Interface, implementer

from popserv.interfaces import IMaildrop, IMailStore


def avatarName(avatarId: bytes | str) -> str:
    """
    The user name of a cred avatar ID as text.  Checkers disagree on the
    type (C{file:} gives L{bytes}, C{unix:} L{str}); names are UTF-8
    (RFC 6856 section 3).
    """
    if isinstance(avatarId, bytes):
        return avatarId.decode("utf-8", "surrogateescape")
    return avatarId


class LoginMind:
    """
    The cred "mind" a POP3 login passes to the realm, through which the
    realm tells the protocol the user name the checker established.

    @ivar credentialsChecked: the realm calls it as soon as it is asked for
        an avatar (the checker has accepted), before opening the maildrop:
        it ends the login's turn at L{popserv.limits.LoginGate}.  A realm
        that does not call it only holds the turn a little longer.
    """

    user: str | None = None

    def __init__(self, credentialsChecked: Callable[[], None] = lambda: None) -> None:
        self.credentialsChecked = credentialsChecked


@implementer(IRealm)
class MaildropRealm:
    """
    Opens the maildrop of each user who logs in, from one L{IMailStore}.

    The avatar is an L{IMaildrop}, exclusively locked; the logout callable
    releases the lock.
    """

    def __init__(self, store: IMailStore) -> None:
        self.store = store

    def requestAvatar(
        self,
        # bytes per IRealm, but the unix: checker gives str.
        avatarId: Any,
        mind: object,
        *interfaces: type[Interface],
    ) -> Deferred[tuple[type[Interface], object, Callable[[], None]]]:
        if IMaildrop not in interfaces:
            raise NotImplementedError("MaildropRealm only provides IMaildrop")
        if not isinstance(avatarId, bytes | str):
            # A checker's bug, most often a callback that falls off its end
            # (None) where it should fail with UnauthorizedLogin: handed to
            # the store as a user name, it logged in any password.
            return fail(
                TypeError(
                    f"the checker gave {avatarId!r} as the avatar ID, not a user name "
                    "(bytes or str); a checker refuses a login by failing with "
                    "UnauthorizedLogin"
                )
            )
        user = avatarName(avatarId)
        if isinstance(mind, LoginMind):
            # Tell the protocol who logged in: per-user policy needs it.
            mind.user = user
            mind.credentialsChecked()
        d: Deferred[IMaildrop] = maybeDeferred(self.store.openMaildrop, user)
        return d.addCallback(_avatar)


#: What a maildrop must have (IMaildrop).
_MAILDROP_METHODS = tuple(IMaildrop.names())


def _avatar(maildrop: IMaildrop) -> tuple[type[Interface], object, Callable[[], None]]:
    if not IMaildrop.providedBy(maildrop) and not all(
        hasattr(maildrop, name) for name in _MAILDROP_METHODS
    ):
        # A store's bug (often None): say so, rather than an AttributeError
        # further on.  By its methods when it does not declare IMaildrop: a
        # store that forgot its @implementer still works.
        raise TypeError(f"openMaildrop gave {maildrop!r}, not an IMaildrop")
    return (IMaildrop, maildrop, maildrop.close)
