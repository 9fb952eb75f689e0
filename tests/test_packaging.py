"""
The oldest versions of the dependencies that C{make test-oldest} tests
(C{.ci/oldest.txt}) are the lower bounds that C{setup.cfg} declares; the
Makefile makes its virtualenv again after a failed attempt.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest

#: The checkout: tests/test_packaging.py -> the repository root.
CHECKOUT = Path(__file__).resolve().parents[1]

#: "name[extra] >= version", as setup.cfg writes a requirement.
_LOWER_BOUND = re.compile(r"^([A-Za-z0-9._-]+)(?:\[[^]]*\])?\s*>=\s*([0-9][0-9.]*)$")


def _name(name: str) -> str:
    """
    A distribution name in its normal form (PEP 503).
    """
    return re.sub(r"[-_.]+", "-", name).lower()


def _declaredLowerBounds() -> dict[str, str]:
    """
    The ">=" bound of each requirement of setup.cfg's install_requires and
    its test extra.
    """
    config = configparser.ConfigParser()
    config.read(CHECKOUT / "setup.cfg")
    lines = config["options"]["install_requires"].splitlines()
    lines += config["options.extras_require"]["test"].splitlines()
    bounds = {}
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _LOWER_BOUND.match(line)
        assert match, f"setup.cfg: {line!r} has no lower bound for make test-oldest"
        bounds[_name(match.group(1))] = match.group(2)
    return bounds


def _pinnedOldest() -> dict[str, str]:
    """
    The versions .ci/oldest.txt pins.
    """
    pins = {}
    for line in (CHECKOUT / ".ci" / "oldest.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, equals, version = line.partition("==")
            assert equals, f".ci/oldest.txt: {line!r} is not name==version"
            pins[_name(name.strip())] = version.strip()
    return pins


def test_oldestAreTheLowerBounds() -> None:
    """
    Every lower bound in setup.cfg is pinned in .ci/oldest.txt, and
    nothing else is: a bound raised or added in one place and not the
    other fails here.
    """
    assert _pinnedOldest() == _declaredLowerBounds()


def test_failedVirtualenvIsMadeAgain(tmp_path: Path) -> None:
    """
    When the pip upgrade in a new virtualenv fails, make leaves no
    C{bin/python} behind, so the next make makes the virtualenv again.
    (It stayed, and the virtualenv without setuptools, which Python 3.12
    and later leave out, failed the packaging tests' wheel build.)
    """
    if shutil.which("make") is None:
        pytest.skip("needs make")
    python = tmp_path / "python"
    # Stands for "PYTHON -m venv DIR": makes only DIR/bin/python.
    python.write_text('#!/bin/sh\nmkdir -p "$3/bin" && touch "$3/bin/python"\n')
    python.chmod(0o755)
    venv = tmp_path / "venv"
    made = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-C",
            str(CHECKOUT),
            f"PYTHON={python}",
            f"VENV={venv}",
            "PIP_INSTALL=false",
            f"{venv}/bin/python",
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert made.returncode != 0, made
    assert (venv / "bin").is_dir()
    assert not (venv / "bin" / "python").exists(), made.stderr
