"""
Tests for popserv.states: the table of which command is legal where.
"""

from __future__ import annotations

import itertools

from popserv.commands import SYNTAX
from popserv.states import LEGAL, State, isLegal

#: RFC 1939 sections 4-7, written out independently of the table.
EXPECTED = {
    # RFC 2449 section 5 (CAPA in both), RFC 2595 section 4 (STLS), RFC 5034
    # section 4 (AUTH) and RFC 6856 section 3 (UTF8) before login only.
    State.AUTHORIZATION: {"USER", "PASS", "APOP", "QUIT", "CAPA", "STLS", "AUTH", "UTF8"},
    State.TRANSACTION: {
        "STAT",
        "LIST",
        "RETR",
        "DELE",
        "NOOP",
        "RSET",
        "TOP",
        "UIDL",
        "QUIT",
        "CAPA",
    },
    State.UPDATE: set(),
}


def test_everyStateAndKeyword() -> None:
    """
    Each (state, keyword) pair is legal exactly when RFC 1939 says so.
    """
    for state, keyword in itertools.product(State, SYNTAX):
        assert isLegal(state, keyword) == (keyword in EXPECTED[state]), (state, keyword)


def test_tableOnlyNamesKnownKeywords() -> None:
    """
    The table names no keyword that the parser does not know.
    """
    for keywords in LEGAL.values():
        assert keywords <= set(SYNTAX)
