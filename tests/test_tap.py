"""
Tests for popserv.tap: the twistd popserv options and service.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.application.internet import StreamServerEndpointService
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse

from popserv.credentials import CheckerChain
from popserv.maildir import MaildirStore
from popserv.tap import Options, makeService


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


def error(*args: str) -> str:
    with pytest.raises(SystemExit) as caught:
        parse(*args)
    message = str(caught.value.code)
    assert message.startswith("popserv: error: ")
    assert "\n" not in message
    return message


def test_defaults(tmp_path: Path) -> None:
    """
    Without --listen, popserv listens on tcp:110; the timeout is 600 s.
    """
    options = parse("--auth", "memory:alice:secret", "--mailstore", f"maildir:{tmp_path}/{{user}}")
    assert options["listen"] == ["tcp:110"]
    assert options["timeout"] == 600
    assert isinstance(options["store"], MaildirStore)


def test_serviceHasOneListenerPerEndpoint(tmp_path: Path) -> None:
    """
    Each --listen becomes a listening service failing start-up if it cannot
    bind; they share one factory, whose portal knows the users as bytes.
    """
    options = parse(
        "--listen",
        "tcp:0:interface=127.0.0.1",
        "--listen",
        f"unix:{tmp_path}/pop.sock",
        "--auth",
        "memory:alice:secret",
        "--mailstore",
        "memory",
        "--timeout",
        "900",
    )
    service = makeService(options)
    children = list(service)
    assert len(children) == 2
    assert all(isinstance(c, StreamServerEndpointService) for c in children)
    assert all(c._raiseSynchronously for c in children)
    factory = children[0].factory
    assert factory is children[1].factory
    assert factory.timeout == 900
    (checker,) = options["credCheckers"]
    assert isinstance(checker, InMemoryUsernamePasswordDatabaseDontUse)
    assert checker.users == {b"alice": b"secret"}
    (chain,) = set(factory.portal.checkers.values())
    assert isinstance(chain, CheckerChain)
    assert chain.checkers == [checker]


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (("--mailstore", "memory"), "--auth is required"),
        (("--auth", "memory:a:b"), "--mailstore is required"),
        (("--auth", "memory:a:b", "--mailstore", "nosuch:x"), "unknown mail store kind 'nosuch'"),
        (("--auth", "memory:a:b", "--mailstore", "maildir:/tmp"), "must contain {user}"),
        (
            ("--auth", "memory:a:b", "--mailstore", "maildir:/nonexistent/x/{user}"),
            "does not exist",
        ),
        (("--auth", "memory:a:b", "--mailstore", "memory:x"), "takes no arguments"),
        (
            ("--auth", "memory:a:b", "--mailstore", "memory", "--listen", "bogus:1"),
            "--listen 'bogus:1'",
        ),
        (("--auth", "memory:a:b", "--mailstore", "memory", "--timeout", "5"), "at least 600"),
        (("--auth", "memory:a:b", "--mailstore", "memory", "--timeout", "x"), "timeout"),
        (("--auth", "nosuch:x", "--mailstore", "memory"), "nosuch"),
        (("--auth", "file:/nonexistent/passwd", "--mailstore", "memory"), "no such file"),
        (("--bogus",), "bogus"),
    ],
)
def test_configurationErrorsAreOneLine(args: tuple[str, ...], text: str) -> None:
    """
    Every configuration mistake ends option parsing with one line that
    names the problem.
    """
    assert text in error(*args)


def test_helpMailstores(capsys: pytest.CaptureFixture[str]) -> None:
    """
    --help-mailstores lists the installed store kinds.
    """
    with pytest.raises(SystemExit) as caught:
        parse("--help-mailstores")
    assert caught.value.code == 0
    out = capsys.readouterr().out
    assert "maildir:TEMPLATE" in out
    assert "memory:" in out
