"""
The oldest versions of the dependencies that C{make test-oldest} tests
(C{.ci/oldest.txt}) are the lower bounds that C{setup.cfg} declares; the
Makefile makes its virtualenv again after a failed attempt; .ci/run chroots
into a Python 3.14 root only where root alone can change it.
"""

from __future__ import annotations

import configparser
import fcntl
import os
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


def _py314Chroot(
    tmp_path: Path, root: Path, lockWait: int = 60
) -> subprocess.CompletedProcess[str]:
    """
    Run .ci/run's C{py314_chroot}, which decides whether root may chroot
    into C{root} (its status 0: it would), and nothing else of .ci/run.
    """
    script = (CHECKOUT / ".ci" / "run").read_text()
    start = script.index("py314_root=")
    functions = script[start : script.index("if py314_chroot; then", start)]
    # unshare and debootstrap as stubs that succeed: the checks of the root
    # come after theirs, and must be reached where a mount namespace cannot
    # be made (in a container, or in CI's own chroot, which runs this test).
    stubs = tmp_path / "stubs"
    stubs.mkdir(exist_ok=True)
    for name in ("unshare", "debootstrap"):
        (stubs / name).write_text("#!/bin/sh\nexit 0\n")
        (stubs / name).chmod(0o755)
    return subprocess.run(
        ["bash", "-c", functions + "py314_chroot"],
        env={
            "PATH": f"{stubs}:/usr/sbin:/usr/bin:/sbin:/bin",
            "PY314_ROOT": str(root),
            "PY314_LOCK_WAIT": str(lockWait),
        },
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason=".ci/run's Python 3.14 step needs root"
)
def test_py314ChrootOnlyRoots(tmp_path: Path) -> None:
    """
    .ci/run does not chroot, as root, into a Python 3.14 root that another
    user made or can change, nor one in a directory others can write to
    (it was kept in /var/tmp, where any user could make it first, with a
    python3.14 and a sh of their own, which CI then ran as root).
    """
    nobody = 65534
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o755)
    planted = mine / "py314"
    for path in ["usr/bin", "etc/ssl/certs"]:
        (planted / path).mkdir(parents=True)
    (planted / "usr/bin/python3.14").write_text("#!/bin/sh\n")
    (planted / "usr/bin/python3.14").chmod(0o755)
    for path in [planted, *planted.rglob("*")]:
        os.chown(path, nobody, nobody, follow_symlinks=False)
    result = _py314Chroot(tmp_path, planted)
    assert result.returncode == 1, result
    assert result.stdout == (
        f".ci/run: Python 3.14 skipped: {planted} is not root's alone"
        " (another user could change what root runs there)\n"
    )
    # The same tree, root's, in a directory everyone may write to.
    for path in [planted, *planted.rglob("*")]:
        os.chown(path, 0, 0, follow_symlinks=False)
    mine.chmod(0o1777)
    result = _py314Chroot(tmp_path, planted)
    assert result.returncode == 1, result
    assert result.stdout == (
        f".ci/run: Python 3.14 skipped: {mine} is not root's alone"
        " (another user could change what root runs there)\n"
    )
    # Root's, in root's directory: taken.
    mine.chmod(0o755)
    result = _py314Chroot(tmp_path, planted)
    assert (result.returncode, result.stdout) == (0, ""), result


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason=".ci/run's Python 3.14 step needs root"
)
def test_py314ChrootOneRunAtATime(tmp_path: Path) -> None:
    """
    A second CI run on the machine waits for the first one's Python 3.14
    step, and skips its own if the first keeps the chroot too long: two at
    once built into one half-made root, and each removed the virtual
    environments the other was testing in.
    """
    root = tmp_path / "py314"
    for path in ["usr/bin", "etc/ssl/certs"]:
        (root / path).mkdir(parents=True)
    (root / "usr/bin/python3.14").write_text("#!/bin/sh\n")
    (root / "usr/bin/python3.14").chmod(0o755)
    with open(tmp_path / "py314.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        result = _py314Chroot(tmp_path, root, lockWait=1)
        assert result.returncode == 1, result
        assert result.stdout == (
            f".ci/run: Python 3.14 skipped: another CI run kept {root}.lock for 1 s\n"
        )
    # Released: taken.
    result = _py314Chroot(tmp_path, root, lockWait=1)
    assert (result.returncode, result.stdout) == (0, ""), result
