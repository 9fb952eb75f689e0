"""
Tests for popserv.demo: what make demo and make demo-tls set up.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from popserv.demo import MESSAGES, main, makeCertificate, seed
from popserv.tls import TLSFiles


def test_seedOnce(tmp_path: Path) -> None:
    """
    seed() makes a Maildir with the sample messages in new/, and leaves an
    existing one alone.
    """
    path = Path(seed(str(tmp_path)))
    files = sorted((path / "new").iterdir())
    assert sorted(f.read_bytes() for f in files) == sorted(MESSAGES)
    files[0].unlink()
    seed(str(tmp_path))
    assert len(list((path / "new").iterdir())) == len(MESSAGES) - 1


def test_certificate(tmp_path: Path) -> None:
    """
    The demo certificate is usable by popserv's TLS, its key private, and
    it is made only once.
    """
    certificate, key = makeCertificate(str(tmp_path / "tls"))
    TLSFiles(certificate, key).load()
    assert os.stat(key).st_mode & 0o777 == 0o600
    before = Path(certificate).read_bytes()
    assert makeCertificate(str(tmp_path / "tls")) == (certificate, key)
    assert Path(certificate).read_bytes() == before


def test_main(tmp_path: Path, capsys: object) -> None:
    """
    python -m popserv.demo --tls ROOT seeds and makes the certificate; bad
    arguments are a usage error.
    """
    assert main(["demo", "--tls", str(tmp_path)]) == 0
    assert (tmp_path / "tls" / "cert.pem").exists()
    assert main(["demo"]) == 2


def test_mainHelpAndTyposMakeNothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """
    --help prints the usage and a mistyped option is a usage error; neither
    is taken for ROOT, and neither makes a directory.
    """
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--help"]) == 0
    assert "usage: python -m popserv.demo [-h] [--tls] ROOT" in capsys.readouterr().out
    assert main(["demo", "--tsl", "mail"]) == 2
    assert "unrecognized arguments: --tsl" in capsys.readouterr().err
    assert main(["demo", "mail", "more"]) == 2
    assert list(tmp_path.iterdir()) == []
