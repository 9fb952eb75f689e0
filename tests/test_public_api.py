"""
The names popserv exports for embedding and extending resolve, lazily, to
the objects of the modules that define them.
"""

from __future__ import annotations

import importlib

import popserv


def test_everyExportResolves() -> None:
    """
    Each name in popserv.__all__ is the object its module defines, and
    the table of where each lives names exactly those.
    """
    names = set(popserv.__all__) - {"__version__"}
    assert names == set(popserv._EXPORTS)
    for name in sorted(names):
        module = importlib.import_module(popserv._EXPORTS[name])
        assert getattr(popserv, name) is getattr(module, name), name
    assert {"MessageList", "MessageInfo", "FileReader"} <= names
