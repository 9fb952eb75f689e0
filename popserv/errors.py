"""
Exceptions that carry their own POP3 reply.

A L{POP3Error} knows the fixed text of the C{-ERR} line the client sees and,
where RFC 2449 section 8 / RFC 3206 define one, its extended response code.
Stores and realms raise these; the protocol turns them into replies.  Any
other exception is a server fault: the protocol logs it and answers with a
generic text, so no exception detail ever reaches the wire.
"""

from __future__ import annotations

from collections.abc import Sequence


class POP3Error(Exception):
    """
    An error with a fixed reply for the client.

    @cvar code: the RFC 2449 extended response code, without brackets, or
        L{None}.
    @cvar text: the human-readable text of the C{-ERR} line.
    """

    code: str | None = None
    text: str = "Error"

    def __init__(self, text: str | None = None) -> None:
        if text is not None:
            self.text = text
        super().__init__(self.text)


class MaildropInUse(POP3Error):
    """
    The maildrop is locked by another session (RFC 2449 section 8.1.1).

    Stores raise it at once rather than waiting for the lock.
    """

    code = "IN-USE"
    text = "Maildrop is in use by another session"


class MaildropUnavailable(POP3Error):
    """
    The maildrop cannot be opened right now; trying later may work
    (RFC 3206 section 4, SYS/TEMP).
    """

    code = "SYS/TEMP"
    text = "Maildrop temporarily unavailable"


class CredentialsUnchecked(POP3Error):
    """
    No checker accepted a login's credentials, and one could not check them
    (its password file could not be read, its database did not answer): the
    credentials may well be right, so the login is not counted as a failed
    guess (RFC 3206 section 4, SYS/TEMP).
    """

    code = "SYS/TEMP"
    text = "Cannot check credentials now, try again later"


class MaildropRefused(POP3Error):
    """
    The maildrop cannot be opened and retrying will not help: for example
    the user name cannot be mapped to a safe path (RFC 3206 section 4,
    SYS/PERM).
    """

    code = "SYS/PERM"
    text = "Maildrop not available for this user"


class MessageUnavailable(POP3Error):
    """
    A message listed in this session can no longer be read: another program
    removed it from the store.
    """

    code = "SYS/TEMP"
    text = "Message no longer available"


class DeletionFailed(POP3Error):
    """
    Some messages marked for deletion could not be removed at UPDATE
    (RFC 1939 section 6: "some deleted messages not removed").

    The messages that were not removed are still in the store, untouched.

    @ivar notDeleted: the 0-based indexes that remain.
    """

    code = "SYS/TEMP"
    text = "Some deleted messages not removed"

    def __init__(self, notDeleted: Sequence[int], text: str | None = None) -> None:
        super().__init__(text)
        self.notDeleted = tuple(notDeleted)


class StoreConfigError(ValueError):
    """
    A C{--mailstore} argument string (or a store's constructor arguments) is
    wrong.  The message is a single line fit to show an operator.
    """
