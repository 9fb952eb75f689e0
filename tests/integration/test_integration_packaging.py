"""
Packaging: twistd finds the plugin in the development install and in a
wheel installed on its own, and the wheel ships exactly the right files.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

#: The checkout: tests/integration/test_packaging.py -> the repository root.
CHECKOUT = Path(__file__).resolve().parents[2]

#: What a build must not take from the working tree: other builds, caches,
#: virtualenvs and the files twistd and the tests write.
_NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    ".venv",
    ".venv-oldest",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".*_cache",
    ".hypothesis",
    "dropin.cache",
    "_build",
    "demo-mail",
    "_trial_temp",
)

_LISTED = re.compile(r"^\s+popserv\s+A pluggable POP3 server", re.MULTILINE)


def _run(argv, cwd, timeout=120):
    """
    Run a command with a clean PYTHONPATH; fail with its output if it fails.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, timeout=timeout, check=False
    )
    output = (result.stdout + result.stderr).decode("utf-8", "replace")
    assert result.returncode == 0, f"{argv} failed:\n{output}"
    return result.stdout.decode("utf-8", "replace")


def test_twistd_lists_plugin_in_development_install(tmp_path, twistd):
    """
    twistd run outside the checkout lists the popserv command: the
    development install keeps the dropin visible.
    """
    assert _LISTED.search(_run([*twistd, "--help"], cwd=tmp_path))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """
    A wheel built from a copy of the working tree (so a stale build/ or
    egg-info in the checkout can neither leak into it nor be rewritten under
    other users of the checkout).
    """
    base = tmp_path_factory.mktemp("wheel")
    source = base / "src"
    shutil.copytree(CHECKOUT, source, ignore=_NOT_SOURCE)
    out = base / "dist"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "-q",
            "-w",
            str(out),
            str(source),
        ],
        cwd=base,
    )
    (path,) = out.glob("popserv-*.whl")
    return path


def test_wheel_contents(wheel):
    """
    The wheel ships every module of the popserv package and the dropin, but
    not twisted/__init__.py or twisted/plugins/__init__.py (they would
    shadow Twisted's own), not a dropin.cache, and no top-level tests.
    """
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    modules = {f"popserv/{p.name}" for p in (CHECKOUT / "popserv").glob("*.py")}
    assert modules <= names, sorted(modules - names)
    assert "twisted/plugins/popserv_plugin.py" in names
    assert "popserv/__init__.py" in names
    assert "popserv/py.typed" in names
    assert "twisted/__init__.py" not in names
    assert "twisted/plugins/__init__.py" not in names
    assert not any(n.endswith("dropin.cache") for n in names)
    assert not any(n.startswith("tests/") for n in names), sorted(names)


@pytest.fixture(scope="module")
def isolated(wheel, tmp_path_factory) -> Path:
    """
    The python of a fresh venv with the wheel unpacked into its
    site-packages and the test environment's site-packages added by a .pth
    file, for the dependencies.  A directory a .pth adds is not scanned for
    .pth files itself, so the development install's path entry for the
    checkout is not processed: popserv can only come from the wheel.
    """
    venv = tmp_path_factory.mktemp("isolated") / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=venv.parent)
    python = venv / "bin" / "python"
    purelib = Path(
        _run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            cwd=venv.parent,
        ).strip()
    )
    (purelib / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(purelib)
    return python


def test_wheel_imports_outside_checkout(isolated, tmp_path):
    """
    In the isolated install, popserv is imported from the unpacked wheel,
    not from the checkout.
    """
    location = _run(
        [str(isolated), "-c", "import popserv; print(popserv.__file__)"],
        cwd=tmp_path,
    ).strip()
    assert Path(location).is_relative_to(isolated.parent.parent)
    assert not Path(location).resolve().is_relative_to(CHECKOUT)


def test_wheel_twistd_lists_plugin(isolated, tmp_path):
    """
    twistd run from the isolated install lists the popserv command: the
    dropin from the wheel joins Twisted's plugin package.
    """
    output = _run(
        [
            str(isolated),
            "-c",
            "import sys; from twisted.scripts.twistd import run;"
            " sys.argv = ['twistd', '--help']; run()",
        ],
        cwd=tmp_path,
    )
    assert _LISTED.search(output)


def test_wheel_serves(isolated, start_server, maildir_root, maildir, raw_client):
    """
    The server started from the isolated install accepts a login and quits.
    """
    server = start_server(f"maildir:{maildir_root}/{{user}}", python=str(isolated))
    assert f"({isolated} " in server.output()
    client = raw_client(server.port)
    assert client.login() == b"+OK Logged in, 0 messages (0 octets)\r\n"
    assert client.command(b"QUIT").startswith(b"+OK")
