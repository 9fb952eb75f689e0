"""
The POP3 session states (RFC 1939 section 3) and which command is legal in
which of them, as one table.
"""

from __future__ import annotations

import enum


class State(enum.Enum):
    """
    The states of a POP3 session.
    """

    #: Before a successful login (RFC 1939 section 4).
    AUTHORIZATION = "AUTHORIZATION"
    #: Logged in, maildrop locked (RFC 1939 section 5).
    TRANSACTION = "TRANSACTION"
    #: After QUIT in TRANSACTION: deletions are applied and the session ends
    #: (RFC 1939 section 6).  No command is accepted any more.
    UPDATE = "UPDATE"


#: state -> the keywords a client may send in it.  A keyword the parser knows
#: but that is missing here for the current state is answered "-ERR ... not
#: valid in this state"; the session goes on.
LEGAL: dict[State, frozenset[str]] = {
    State.AUTHORIZATION: frozenset(
        {"USER", "PASS", "APOP", "QUIT", "CAPA", "STLS", "AUTH", "UTF8"}
    ),
    State.TRANSACTION: frozenset(
        {"STAT", "LIST", "RETR", "DELE", "NOOP", "RSET", "TOP", "UIDL", "QUIT", "CAPA"}
    ),
    State.UPDATE: frozenset(),
}


def isLegal(state: State, keyword: str) -> bool:
    """
    Whether C{keyword} may be sent in C{state}.
    """
    return keyword in LEGAL[state]
