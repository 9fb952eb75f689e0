"""
Shared pytest configuration: make the helper modules in tests/ importable;
the fixtures that watch the Maildir store's file work, and a throw-away
certificate authority.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from certificates import CertificateAuthority  # found through the path above


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    """
    A throw-away certificate authority in the test's directory.
    """
    return CertificateAuthority(tmp_path)


@pytest.fixture
def measured(monkeypatch: Any) -> list[str]:
    """
    The names of the message files that logins read to size them.
    """
    from popserv import maildir

    names: list[str] = []
    real = maildir.measureEach

    def spy(files: Iterable[tuple[Any, int, str]], *args: Any) -> Iterator[Any]:
        def watched() -> Iterator[tuple[Any, int, str]]:
            for key, directory, name in files:
                names.append(name)
                yield key, directory, name

        return real(watched(), *args)

    monkeypatch.setattr(maildir, "measureEach", spy)
    return names


@pytest.fixture
def listings(monkeypatch: Any) -> list[str]:
    """
    The directories that os.listdir lists, by their last component.
    """
    listed: list[str] = []
    real = os.listdir

    def spy(path: Any = ".") -> list[Any]:
        listed.append(os.path.basename(path))
        return real(path)

    monkeypatch.setattr(os, "listdir", spy)
    return listed


@pytest.fixture
def scramKeyRuns(monkeypatch: Any) -> list[bytes]:
    """
    The salts of the PBKDF2 runs that popserv.scram makes (scramKeys), one
    per run.
    """
    from popserv import scram

    runs: list[bytes] = []
    real = scram.scramKeys

    def counted(password: Any, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
        runs.append(salt)
        return real(password, salt, iterations)

    monkeypatch.setattr(scram, "scramKeys", counted)
    return runs
