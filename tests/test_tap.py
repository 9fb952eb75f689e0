"""
Tests for popserv.tap: the twistd popserv options and service.
"""

from __future__ import annotations

import gc
import io
import ipaddress
import os
import platform
import signal
import sys
import weakref
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from certificates import CertificateAuthority
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IServiceCollection
from twisted.cred import strcred
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import IUsernamePassword
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import fail, succeed
from twisted.protocols.tls import TLSMemoryBIOFactory

from popserv.credentials import CheckerChain
from popserv.endpoints import DEFAULT_BACKLOG
from popserv.errors import StoreConfigError
from popserv.maildir import MaildirStore
from popserv.policy import MemoryHistory
from popserv.realm import MaildropRealm
from popserv.tap import (
    AccessCheck,
    CertificateReloader,
    HeapFreezer,
    Listener,
    Options,
    _unixCheckerWorks,
    makeService,
)


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


def listenerOf(service: IServiceCollection) -> StreamServerEndpointService:
    """
    The first listener of a service that makeService made.
    """
    return next(c for c in service if isinstance(c, StreamServerEndpointService))


@pytest.mark.parametrize("module", ["crypt", "spwd"])
def test_unixAuthWithoutCrypt(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    """
    Where Python lacks the crypt or spwd module (3.13 removed both), --auth
    unix is a start-up error that says why, not a server that refuses
    every login.
    """
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    message = error("--auth", "unix", "--mailstore", "memory")
    assert message == (
        "popserv: error: --auth 'unix': needs Python's crypt and spwd modules, which"
        f" Python 3.13 removed (this is {platform.python_version()}); use passwd-file: instead"
    )
    # Only unix needs them: the other kinds are taken as before.
    options = parse("--auth", "memory:alice:secret", "--mailstore", "memory")
    assert len(options["credCheckers"]) == 1


def test_authFileExists(tmp_path: Path) -> None:
    """
    --auth file: with a file that exists is taken (only a missing one is
    refused at start).
    """
    users = tmp_path / "users"
    users.write_text("alice:secret\n")
    options = parse("--auth", f"file:{users}", "--mailstore", "memory")
    assert len(options["credCheckers"]) == 1


def test_unixAuthTakesNoArgument() -> None:
    """
    --auth unix with an argument is a start-up error: Twisted's checker
    would ignore it and read the system's accounts all the same.
    """
    message = error("--auth", "unix:/etc/shadow.other", "--mailstore", "memory")
    assert "--auth 'unix:/etc/shadow.other': unix takes no argument (--auth unix)" in message


def _helpAuth() -> str:
    """
    What C{--help-auth} prints.
    """
    options = Options()
    options.authOutput = io.StringIO()
    with pytest.raises(SystemExit) as caught:
        options.parseOptions(["--help-auth"])
    assert caught.value.code == 0
    return options.authOutput.getvalue()


def _helpAuthKinds() -> list[str]:
    """
    The kinds of checker C{--help-auth} lists: its table's first column, to
    the blank line that ends the table.
    """
    lines = _helpAuth().splitlines()
    table = lines[lines.index(next(line for line in lines if "========" in line)) + 1 :]
    return [line.split()[0] for line in table[: table.index("")]]


def test_helpAuthAsStrcred() -> None:
    """
    Where no two plugins claim a kind and none is broken, --help-auth
    prints what strcred's own does, word for word.
    """
    options = Options()
    options.authOutput = io.StringIO()
    with pytest.raises(SystemExit):
        strcred.AuthOptionMixin.opt_help_auth(options)
    assert _helpAuth() == options.authOutput.getvalue()


def test_helpAuthWithoutCrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Where the unix checker cannot work, --help-auth does not offer it; the
    other kinds are still listed, but not those whose logins are not
    POP3's (anonymous, sshkey), which --auth refuses.
    """
    monkeypatch.setitem(sys.modules, "crypt", None)
    kinds = _helpAuthKinds()
    assert "unix" not in kinds
    assert {"memory", "passwd-file", "cert"} <= set(kinds)
    installed = {factory.authType for factory in strcred.findCheckerFactories()}
    assert {"anonymous", "sshkey"} <= installed
    assert not {"anonymous", "sshkey"} & set(kinds)


@pytest.mark.skipif(sys.version_info >= (3, 13), reason="Python 3.13 removed crypt and spwd")
def test_helpAuthWithCrypt() -> None:
    """
    Where Python has crypt and spwd, --help-auth lists unix.
    """
    assert "unix" in _helpAuthKinds()


@pytest.mark.skipif(sys.version_info >= (3, 13), reason="Python 3.13 removed crypt and spwd")
def test_unixAuth() -> None:
    """
    Where Python has crypt and spwd, --auth unix is taken.
    """
    options = Options()
    options.parseOptions(["--auth", "unix", "--mailstore", "memory"])
    assert len(options["credCheckers"]) == 1


def test_defaults(tmp_path: Path) -> None:
    """
    Without --listen, popserv listens on tcp:110; the timeout is 600 s.
    """
    options = parse("--auth", "memory:alice:secret", "--mailstore", f"maildir:{tmp_path}/{{user}}")
    assert options["listen"] == ["tcp:110"]
    assert options["timeout"] == 600
    assert isinstance(options["store"], MaildirStore)


def test_listenShortOption() -> None:
    """
    -l is --listen, repeatable like it; the default is then not added.
    """
    options = parse(
        "-l", "tcp:0:interface=127.0.0.1", "--listen", "tcp:0:interface=127.0.0.2", "-l", "tcp:0",
        "--auth", "memory:a:b", "--mailstore", "memory",
    )  # fmt: skip
    assert options["listen"] == ["tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.2", "tcp:0"]


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
    reloader, *children, access, freezer = list(service)
    assert isinstance(freezer, HeapFreezer)
    # Nothing to check as the server's user: no files read or written later.
    assert isinstance(access, AccessCheck) and access.needed == []
    # SIGHUP is always caught, with or without certificates to reload, and
    # from before the listeners bind their ports.
    assert isinstance(reloader, CertificateReloader) and reloader.certificates == []
    assert len(children) == 2
    assert all(isinstance(c, StreamServerEndpointService) for c in children)
    assert all(c._raiseSynchronously for c in children)
    factory = children[0].factory
    assert factory is children[1].factory
    assert factory.timeout == 900
    (checker,) = options["credCheckers"]
    assert isinstance(checker, InMemoryUsernamePasswordDatabaseDontUse)
    assert checker.users == {b"alice": b"secret"}
    assert isinstance(factory.portal.realm, MaildropRealm)
    assert factory.portal.realm.store is options["store"]
    (chain,) = set(factory.portal.checkers.values())
    assert isinstance(chain, CheckerChain)
    (wrapped,) = chain.checkers
    assert wrapped.checker is checker


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
        (
            ("--auth", "nosuch:x", "--mailstore", "memory"),
            "--auth 'nosuch:x': unknown kind 'nosuch' (installed: cert, file, memory, passwd-file",
        ),
        (("--auth", "file:/nonexistent/passwd", "--mailstore", "memory"), "no such file"),
        (("--auth", "memory", "--mailstore", "memory"), "--auth 'memory': needs NAME:PASSWORD"),
        (("--auth", "memory:", "--mailstore", "memory"), "--auth 'memory:': needs NAME:PASSWORD"),
        (("--bogus",), "bogus"),
        (("--auth", "memory:a:b", "--mailstore", "memory", "--login-delay", "soon"), "login-delay"),
        (("--auth", "memory:a:b", "--mailstore", "memory", "--expire", "-1"), "expire"),
        (
            ("--auth", "memory:a:b", "--mailstore", "memory", "--policy-file", "/nonexistent"),
            "cannot read",
        ),
        (
            ("--auth", "memory:a:b", "--mailstore", "memory", "--state-dir", "/nonexistent"),
            "does not exist",
        ),
        (
            ("--auth", "memory:a:b", "--mailstore", "memory", "--state-dir", "/etc/passwd"),
            "--state-dir: state directory /etc/passwd is not a directory",
        ),
        (
            ("--auth", "memory:a:b", "--mailstore", "memory", "--state-dir", ""),
            "--state-dir: needs a directory",
        ),
        (
            ("--auth", "memory:a:b", "--mailstore", "memory", "--proxy-trusted", "10.0.0.0/8"),
            "--proxy-trusted: no --listen takes the PROXY header (write proxy: before one)",
        ),
        (
            ("--auth", "memory:a:b", "--mailstore", "memory", "--timeout", "soon"),
            "popserv: error: --timeout takes a number of seconds, not 'soon'",
        ),
        (
            ("--auth", "cert", "--mailstore", "memory"),
            "popserv: error: --auth cert needs --tls-client-ca",
        ),
        (
            ("--auth", "memory:a:b", "--mailstore", "memory", "--listen", "tcp:abc"),
            "popserv: error: --listen 'tcp:abc': a port or number that is not a number",
        ),
        (
            (
                "--auth",
                "memory:a:b",
                "--mailstore",
                "memory",
                "--listen",
                "systemd:domain=INET:index=3",
            ),
            "popserv: error: --listen 'systemd:domain=INET:index=3': no such socket was passed"
            " (LISTEN_FDS and LISTEN_FDNAMES, as systemd sets them)",
        ),
        (
            (
                "--auth",
                "memory:a:b",
                "--mailstore",
                "memory",
                "--listen",
                "systemd:domain=INET:name=pop3.socket",
            ),
            "popserv: error: --listen 'systemd:domain=INET:name=pop3.socket': no such socket"
            " was passed (LISTEN_FDS and LISTEN_FDNAMES, as systemd sets them)",
        ),
    ],
)
def test_configurationErrorsAreOneLine(args: tuple[str, ...], text: str) -> None:
    """
    Every configuration mistake ends option parsing with one line that
    names the problem.
    """
    assert text in error(*args)


def test_findStoreFactories() -> None:
    """
    The installed store kinds by name, the built-in ones among them.
    """
    from popserv.mailstores import findStoreFactories, maildirStoreFactory, memoryStoreFactory

    found = findStoreFactories()
    assert (found["maildir"], found["memory"]) == (maildirStoreFactory, memoryStoreFactory)


def test_unknownStoreKindNamesTheInstalled(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    An unknown kind's error names the kinds installed, sorted, or says
    there are none; two plugins claiming a kind are named sorted too.
    """
    import twisted.plugin

    from popserv.mailstores import MemoryStoreFactory, maildirStoreFactory, memoryStoreFactory

    class Other(MemoryStoreFactory):
        pass

    monkeypatch.setattr(
        twisted.plugin, "getPlugins", lambda interface: [memoryStoreFactory, maildirStoreFactory]
    )
    assert error("--auth", "memory:a:b", "--mailstore", "nosuch:x") == (
        "popserv: error: --mailstore: unknown mail store kind 'nosuch' (installed: maildir, memory)"
    )
    monkeypatch.setattr(twisted.plugin, "getPlugins", lambda interface: [])
    assert error("--auth", "memory:a:b", "--mailstore", "nosuch:x") == (
        "popserv: error: --mailstore: unknown mail store kind 'nosuch' (installed: none)"
    )
    monkeypatch.setattr(
        twisted.plugin, "getPlugins", lambda interface: [Other(), memoryStoreFactory]
    )
    assert error("--auth", "memory:a:b", "--mailstore", "memory") == (
        "popserv: error: --mailstore: mail store kind 'memory' is claimed by both"
        " popserv.mailstores.MemoryStoreFactory and"
        " test_tap.test_unknownStoreKindNamesTheInstalled.<locals>.Other"
    )


def test_storePluginWithoutKind(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """
    A store plugin without one of IMailStoreFactory's attributes (a
    misspelt storeKind) is left out: the other kinds still start, and
    the error for an unknown kind and --help-mailstores name it and what
    it lacks.  It used to stop every start, whatever kind was chosen, with
    an AttributeError that named no plugin.
    """
    import twisted.plugin

    from popserv.mailstores import memoryStoreFactory
    from popserv.memorystore import MemoryStore

    class Misspelt:
        kind = "sql"
        argStringFormat = "TABLE"

    monkeypatch.setattr(
        twisted.plugin, "getPlugins", lambda interface: [memoryStoreFactory, Misspelt()]
    )
    options = parse("--auth", "memory:a:b", "--mailstore", "memory")
    assert isinstance(options["store"], MemoryStore)
    assert error("--auth", "memory:a:b", "--mailstore", "sql:mail") == (
        "popserv: error: --mailstore: unknown mail store kind 'sql' (installed: memory;"
        " test_tap.test_storePluginWithoutKind.<locals>.Misspelt has no storeKind or storeHelp)"
    )
    with pytest.raises(SystemExit):
        parse("--help-mailstores")
    assert capsys.readouterr().out.endswith(
        "(store plugin left out: test_tap.test_storePluginWithoutKind.<locals>.Misspelt"
        " has no storeKind or storeHelp)\n\n"
    )


@pytest.mark.parametrize(
    ("attributes", "said"),
    [
        ({"storeKind": "sql", "storeHelp": "Mail in SQL."}, "argStringFormat"),
        # Present but not text (IMailStoreFactory's are str): a kind of
        # None could not even be sorted among the others.
        ({"storeKind": None, "argStringFormat": "TABLE", "storeHelp": "Mail in SQL."}, "storeKind"),
        (
            {"storeKind": "sql", "argStringFormat": "TABLE", "storeHelp": b"Mail in SQL."},
            "storeHelp",
        ),
    ],
)
def test_storePluginLacking(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    attributes: dict[str, object],
    said: str,
) -> None:
    """
    A store plugin is left out for lacking any one of IMailStoreFactory's
    attributes, or for one that is not text, and is named with it.
    """
    import twisted.plugin

    from popserv.mailstores import memoryStoreFactory

    misspelt = type("Misspelt", (), {**attributes, "__module__": "sqlplugin"})
    monkeypatch.setattr(
        twisted.plugin, "getPlugins", lambda interface: [memoryStoreFactory, misspelt()]
    )
    assert error("--auth", "memory:a:b", "--mailstore", "sql:mail") == (
        "popserv: error: --mailstore: unknown mail store kind 'sql' (installed: memory;"
        f" sqlplugin.Misspelt has no {said})"
    )
    with pytest.raises(SystemExit):
        parse("--help-mailstores")
    assert capsys.readouterr().out == (
        f"memory:{memoryStoreFactory.argStringFormat}\n    {memoryStoreFactory.storeHelp}\n\n"
        f"(store plugin left out: sqlplugin.Misspelt has no {said})\n\n"
    )


def test_memoryStoreArgumentsRefused() -> None:
    """
    The whole line an operator gets for arguments to the memory store.
    """
    message = error("--auth", "memory:a:b", "--mailstore", "memory:x")
    assert message == "popserv: error: --mailstore: memory: takes no arguments"


@pytest.mark.parametrize("kind", ["anonymous", "sshkey"])
def test_authKindOfNoPOP3Logins(kind: str) -> None:
    """
    A checker plugin whose logins POP3 cannot make is an error that names
    the --auth, not strcred's bare "Auth plugin not supported: <interface>".
    """
    assert error("--auth", kind, "--mailstore", "memory") == (
        f"popserv: error: --auth '{kind}': popserv cannot use the '{kind}' checker:"
        " its logins are not POP3's (see --help-auth)"
    )


class SqlCheckerFactory:
    """
    A third party's checker plugin, as C{docs/authentication.rst} shows
    one: C{--auth sql:TABLE} gives what C{make} gives, or raises
    L{ValueError} without a table.
    """

    authType = "sql"
    authHelp = "Users in an SQL table."
    argStringFormat = "sql:TABLE"
    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, make: Callable[[str], object]) -> None:
        self.make = make

    def generateChecker(self, argstring: str = "") -> object:
        if not argstring:
            raise ValueError("sql needs a table")
        return self.make(argstring)


def test_checkerPluginMistakes(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A checker kind that two plugins claim is refused, naming both, rather
    than served by whichever the plugin scan found first (strcred's way:
    a plugin could stand in for passwd-file without a word); a plugin
    whose generateChecker gives something that is not a checker is named,
    rather than met as an AttributeError on None; a ValueError it raises
    is one line naming the --auth.  A plugin that does its part is used.
    The error for an unknown kind lists a clashing kind once (it was
    "passwd-file, passwd-file"), and so does --help-auth, which says
    below its table that choosing it is an error.
    """
    installed = list(strcred.findCheckerFactories())
    plugin = SqlCheckerFactory(lambda table: None)
    monkeypatch.setattr(strcred, "findCheckerFactories", lambda: [*installed, plugin])
    name = "test_tap.SqlCheckerFactory"
    assert error("--auth", "sql:users", "--mailstore", "memory") == (
        f"popserv: error: --auth 'sql:users': {name}.generateChecker gave None,"
        " not an ICredentialsChecker provider"
    )
    assert error("--auth", "sql", "--mailstore", "memory") == (
        "popserv: error: --auth 'sql': sql needs a table"
    )
    checker = InMemoryUsernamePasswordDatabaseDontUse(alice=b"pw")
    plugin.make = lambda table: checker
    assert parse("--auth", "sql:users", "--mailstore", "memory")["credCheckers"] == [checker]

    class Impostor(SqlCheckerFactory):
        authType = "passwd-file"

    impostor = Impostor(lambda table: checker)
    monkeypatch.setattr(strcred, "findCheckerFactories", lambda: [impostor, *installed])
    assert error("--auth", "passwd-file:/etc/popserv/users", "--mailstore", "memory") == (
        "popserv: error: --auth 'passwd-file:/etc/popserv/users': checker kind 'passwd-file'"
        " is claimed by both popserv.checkers.PasswdFileCheckerFactory and"
        " test_tap.test_checkerPluginMistakes.<locals>.Impostor"
    )
    # The error for an unknown kind names the clashing kind once.
    message = error("--auth", "sql:users", "--mailstore", "memory")
    assert message.startswith("popserv: error: --auth 'sql:users': unknown kind 'sql' (installed: ")
    assert message.count("passwd-file") == 1, message
    # So does --help-auth (strcred's listed it twice), and says it clashes.
    assert _helpAuthKinds().count("passwd-file") == 1
    # Its row gives the format of the plugin found first ("sql:TABLE", not
    # "passwd-file:PATH"), as --help-auth-type describes that one.
    width = max(map(len, _helpAuthKinds()))
    assert f"\n  {'passwd-file':<{width}}\tsql:TABLE\n" in _helpAuth()
    assert "ArgString format: sql:TABLE\n" in _helpAuthType("passwd-file")
    assert _helpAuth().endswith(
        "\n\n  (passwd-file is claimed by popserv.checkers.PasswdFileCheckerFactory and"
        " test_tap.test_checkerPluginMistakes.<locals>.Impostor: choosing it is an error)\n"
    )


def test_checkerPluginWithoutKind(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A checker plugin without one of ICheckerFactory's attributes (a
    misspelt authType) is left out: the other kinds still work, the error
    for an unknown kind names it and what it lacks, and --help-auth lists
    the others and names it below its table.  Each used to fail with an
    AttributeError.
    """
    installed = list(strcred.findCheckerFactories())

    class Misspelt(SqlCheckerFactory):
        authType = None  # type: ignore[assignment]
        authtype = "sql"

    monkeypatch.setattr(
        strcred, "findCheckerFactories", lambda: [*installed, Misspelt(lambda table: None)]
    )
    assert len(parse("--auth", "memory:a:b", "--mailstore", "memory")["credCheckers"]) == 1
    message = error("--auth", "sql:users", "--mailstore", "memory")
    assert message.startswith("popserv: error: --auth 'sql:users': unknown kind 'sql' (installed: ")
    # unix is listed where it can work (Python before 3.13).
    unix = ", unix" if _unixCheckerWorks() else ""
    assert message.endswith(
        f"passwd-file{unix}; test_tap.test_checkerPluginWithoutKind.<locals>.Misspelt"
        " has no authType)"
    )
    kinds = _helpAuthKinds()
    assert "memory" in kinds and "sql" not in kinds
    assert _helpAuth().endswith(
        "\n\n  (checker plugin left out:"
        " test_tap.test_checkerPluginWithoutKind.<locals>.Misspelt has no authType)\n"
    )


@pytest.mark.parametrize(
    ("checker", "shown"),
    [
        # Text, where a checker was meant: its repr, so the quotes show.
        ("users", "'users'"),
        # Half a checker: neither is enough (strcred meets the other's
        # absence as an AttributeError, or the first login does).
        (
            SimpleNamespace(credentialInterfaces=(IUsernamePassword,)),
            "namespace(credentialInterfaces=(<InterfaceClass"
            " twisted.cred.credentials.IUsernamePassword>,))",
        ),
        (SimpleNamespace(requestAvatarId="x"), "namespace(requestAvatarId='x')"),
    ],
)
def test_checkerPluginGivesNoChecker(
    monkeypatch: pytest.MonkeyPatch, checker: object, shown: str
) -> None:
    """
    A checker plugin whose generateChecker gives something without both
    of a checker's attributes (credentialInterfaces and requestAvatarId)
    is named, with what it gave, at start-up.
    """
    installed = list(strcred.findCheckerFactories())
    plugin = SqlCheckerFactory(lambda table: checker)
    monkeypatch.setattr(strcred, "findCheckerFactories", lambda: [*installed, plugin])
    assert error("--auth", "sql:users", "--mailstore", "memory") == (
        f"popserv: error: --auth 'sql:users': test_tap.SqlCheckerFactory.generateChecker gave"
        f" {shown}, not an ICredentialsChecker provider"
    )


@pytest.mark.parametrize(
    ("lacking", "said"),
    [
        (("authHelp",), "authHelp"),
        (("argStringFormat",), "argStringFormat"),
        (("credentialInterfaces",), "credentialInterfaces"),
        (
            ("authType", "argStringFormat", "credentialInterfaces"),
            "authType or argStringFormat or credentialInterfaces",
        ),
    ],
)
def test_checkerPluginLacking(
    monkeypatch: pytest.MonkeyPatch, lacking: tuple[str, ...], said: str
) -> None:
    """
    A checker plugin is left out for lacking any one of ICheckerFactory's
    attributes, and the error for its kind names every one it lacks (each
    is read: argStringFormat and authType by --help-auth, authHelp by
    --help-auth-type, credentialInterfaces by both and by --auth); the
    --help-auth listing goes on without it.
    """
    attributes = {
        name: value
        for name, value in vars(SqlCheckerFactory).items()
        if not name.startswith("__") and name not in lacking
    }
    misspelt = type("Misspelt", (), attributes)
    misspelt.__module__ = "sqlplugin"
    plugin = misspelt()
    plugin.make = lambda table: InMemoryUsernamePasswordDatabaseDontUse(alice=b"pw")
    installed = list(strcred.findCheckerFactories())
    monkeypatch.setattr(strcred, "findCheckerFactories", lambda: [*installed, plugin])
    message = error("--auth", "sql:users", "--mailstore", "memory")
    assert message.startswith("popserv: error: --auth 'sql:users': unknown kind 'sql' (installed: ")
    # unix is listed where it can work (Python before 3.13).
    unix = ", unix" if _unixCheckerWorks() else ""
    assert message.endswith(f"passwd-file{unix}; sqlplugin.Misspelt has no {said})")
    kinds = _helpAuthKinds()
    assert "memory" in kinds and "sql" not in kinds


def _helpAuthType(kind: str, options: Any = None) -> str:
    """
    What C{--help-auth-type KIND} prints; with C{options}, what strcred's
    own prints for them.
    """
    out = io.StringIO()
    mine = Options()
    mine.authOutput = out
    with pytest.raises(SystemExit) as caught:
        if options is None:
            mine.parseOptions(["--help-auth-type", kind])
        else:
            options(mine, kind)
    assert caught.value.code == 0
    return out.getvalue()


def test_helpAuthType(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    --help-auth-type describes a kind as strcred's did, word for word, and
    still does with a broken checker plugin installed, which made strcred's
    fail with an AttributeError whatever kind was asked for; a broken
    plugin's own kind is unknown, with the plugin named, and a kind two
    plugins claim says that choosing it is an error.
    """
    installed = list(strcred.findCheckerFactories())
    assert {"anonymous", "memory"} <= {f.authType for f in installed}
    for factory in installed:
        theirs = _helpAuthType(factory.authType, strcred.AuthOptionMixin.opt_help_auth_type)
        assert _helpAuthType(factory.authType) == theirs
    # anonymous: the warning that popserv cannot use it, as strcred has it.
    assert _helpAuthType("anonymous").endswith(f"  {strcred.notSupportedWarning}\n\n")
    memory = _helpAuthType("memory")

    # A plugin that misspells authType, and has no authHelp, found first:
    attributes = {"authtype": "sql", "argStringFormat": "sql:TABLE"}
    attributes.update(credentialInterfaces=(IUsernamePassword,), __module__="sqlplugin")
    misspelt = type("Misspelt", (), attributes)
    monkeypatch.setattr(strcred, "findCheckerFactories", lambda: [misspelt(), *installed])
    assert _helpAuthType("memory") == memory
    message = error("--help-auth-type", "sql")
    assert message.startswith(
        "popserv: error: --help-auth-type 'sql': unknown kind 'sql' (installed: cert, "
    )
    assert message.endswith("; sqlplugin.Misspelt has no authType or authHelp)")

    class Impostor(SqlCheckerFactory):
        authType = "memory"

    monkeypatch.setattr(
        strcred, "findCheckerFactories", lambda: [*installed, Impostor(lambda table: None)]
    )
    assert _helpAuthType("memory") == memory + (
        "  (claimed by test_tap.test_helpAuthType.<locals>.Impostor and"
        " twisted.plugins.cred_memory.InMemoryCheckerFactory: choosing it is an error)\n\n"
    )


def test_requiredOptionsNamed() -> None:
    """
    A missing --auth or --mailstore, or a --proxy-trusted no listener uses,
    is an error that says what to write.
    """
    assert error("--mailstore", "memory") == (
        "popserv: error: --auth is required, e.g. --auth memory:alice:secret (see --help-auth)"
    )
    assert error("--auth", "memory:a:b") == (
        "popserv: error: --mailstore is required, e.g. --mailstore maildir:/srv/mail/{user}"
    )
    assert error("--auth", "memory:a:b", "-m", "memory", "--proxy-trusted", "10.0.0.0/8") == (
        "popserv: error: --proxy-trusted: no --listen takes the PROXY header"
        " (write proxy: before one)"
    )


def test_mailstoreTwice() -> None:
    """
    A second --mailstore is an error, not the one served: the mail of
    "-m maildir:... -m memory" would seem gone.
    """
    args = ("--auth", "memory:a:b", "--mailstore", "maildir:/srv/mail/{user}", "-m", "memory")
    assert error(*args) == (
        "popserv: error: --mailstore given twice ('maildir:/srv/mail/{user}' and 'memory'):"
        " give one"
    )
    assert parse("--auth", "memory:a:b", "-m", "memory")["mailstore"] == "memory"


@pytest.mark.parametrize(
    "option", ["tls-cert", "tls-key", "tls-chain", "tls-client-ca", "policy-file"]
)
def test_emptyFileOptions(option: str) -> None:
    """
    An empty file option (an unset variable in a unit file) is an error,
    not a server started without it: with --tls-cert= --tls-key= one
    without TLS.
    """
    args = ("--auth", "memory:a:b", "--mailstore", "memory", f"--{option}=")
    assert error(*args) == f"popserv: error: --{option}: needs a file"


def test_helpMailstores(capsys: pytest.CaptureFixture[str]) -> None:
    """
    --help-mailstores lists the installed store kinds.
    """
    with pytest.raises(SystemExit) as caught:
        parse("--help-mailstores")
    assert caught.value.code == 0
    out = capsys.readouterr().out
    # The built-in kinds, each with its whole paragraph (other installed
    # plugins may add theirs, in order of kind).
    assert (
        "maildir:TEMPLATE\n"
        "    Maildir directories. TEMPLATE is the path of a user's Maildir with"
        " {user} standing for the login name, or {localpart} and {domain} for"
        " the parts of a user@domain login, e.g. maildir:/srv/mail/{user}."
        " The directory before the first field must exist; a user's Maildir"
        " is created on first login.\n\n"
    ) in out
    assert (
        "memory:(no arguments)\n"
        "    Empty maildrops held in memory and lost at exit: for trying out"
        " authentication. Embedding applications deliver into a"
        " popserv.MemoryStore themselves.\n\n"
    ) in out
    assert out.index("maildir:") < out.index("memory:")
    # A kind only one plugin claims is shown without a warning.
    assert "claimed by" not in out


def test_helpMailstoresSorted(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """
    --help-mailstores lists the kinds in order of name, whatever order the
    plugins are found in: one entry of KIND:ARGS and its help each.
    """
    import twisted.plugin

    from popserv.mailstores import maildirStoreFactory, memoryStoreFactory

    monkeypatch.setattr(
        twisted.plugin, "getPlugins", lambda interface: [memoryStoreFactory, maildirStoreFactory]
    )
    with pytest.raises(SystemExit) as caught:
        parse("--help-mailstores")
    assert caught.value.code == 0
    assert capsys.readouterr().out == (
        f"maildir:{maildirStoreFactory.argStringFormat}\n    {maildirStoreFactory.storeHelp}\n\n"
        f"memory:{memoryStoreFactory.argStringFormat}\n    {memoryStoreFactory.storeHelp}\n\n"
    )


def test_heapFrozenLastAtStart() -> None:
    """
    The service's last step of starting puts every object made so far out
    of the garbage collector's reach (gc.freeze), so full collections no
    longer walk the modules; until it starts, nothing is frozen.
    """
    options = parse(
        "--listen", "tcp:0:interface=127.0.0.1", "--auth", "memory:a:b", "--mailstore", "memory"
    )
    freezer = list(makeService(options))[-1]
    assert isinstance(freezer, HeapFreezer)
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    # Garbage of the start-up is collected first, not frozen for good (the
    # collector is off, so that nothing but the freezer collects it).
    gc.disable()
    try:
        garbage = weakref.ref(_Garbage())
        assert garbage() is not None
        freezer.startService()
        assert garbage() is None
        assert gc.get_freeze_count() > 10_000
        assert freezer.running
    finally:
        gc.enable()
        gc.unfreeze()


class _Garbage:
    """
    An object in a reference cycle: only the cyclic collector frees it.
    """

    def __init__(self) -> None:
        self.cycle = self


def _ownHandler(signum: int, frame: Any) -> None:
    """
    A program's own SIGHUP handler.
    """


@pytest.mark.parametrize(
    ("found", "left"),
    [
        (signal.SIG_DFL, signal.SIG_IGN),
        (signal.SIG_IGN, signal.SIG_IGN),
        (_ownHandler, _ownHandler),
    ],
)
def test_sighupCaughtBeforeTheReactorRuns(found: Any, left: Any) -> None:
    """
    The reloader catches SIGHUP from privilegedStartService, where twistd
    also binds the ports, not only from startService, which twistd runs
    once the reactor starts: a SIGHUP in between (a supervisor's reload as
    the server comes up) would end the server.  Stopping it puts back the
    program's handler it found, but never the default action: a SIGHUP as
    the server stops would kill it in the middle of its deletions.
    """
    original = signal.signal(signal.SIGHUP, found)
    try:
        reloader = CertificateReloader([])
        reloader.privilegedStartService()
        try:
            assert signal.getsignal(signal.SIGHUP) not in (found, signal.SIG_DFL)
            # twistd then starts it as the reactor runs: the handler to put
            # back is still the one found, not the reloader's own.
            reloader.startService()
            assert reloader.running
        finally:
            reloader.stopService()
        assert signal.getsignal(signal.SIGHUP) == left
    finally:
        signal.signal(signal.SIGHUP, original)


def test_sighupReloads(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A reloader started by startService alone (an application that embeds
    it) catches SIGHUP too, and the signal has the reactor reload the
    certificates; stopped, it lets the signal go, and started again, it
    catches it again.  One that never started leaves SIGHUP alone when
    stopped.
    """
    from twisted.internet import reactor

    called: list[Any] = []
    monkeypatch.setattr(reactor, "callFromThread", lambda f, *args: called.append(f))
    original = signal.signal(signal.SIGHUP, _ownHandler)
    try:
        CertificateReloader([]).stopService()
        assert signal.getsignal(signal.SIGHUP) == _ownHandler
        reloader = CertificateReloader([])
        for _ in range(2):
            reloader.startService()
            handler = signal.getsignal(signal.SIGHUP)
            assert callable(handler) and handler != _ownHandler
            handler(signal.SIGHUP, None)
            assert called == [reloader.reload]
            called.clear()
            reloader.stopService()
            assert signal.getsignal(signal.SIGHUP) == _ownHandler
            assert not reloader.running
    finally:
        signal.signal(signal.SIGHUP, original)


class _Certificate:
    """
    A certificate whose reload answers C{result}.
    """

    def __init__(self, result: Any) -> None:
        self.result = result
        self.reloads = 0

    def reload(self) -> Any:
        self.reloads += 1
        return succeed(None) if self.result is None else fail(self.result)


def test_reloadLogged() -> None:
    """
    A reload reloads each certificate, once, whichever failed; a reload's
    fault is logged, not lost with its Deferred; without certificates the
    log says there is nothing to reload.
    """
    from twisted.logger import capturedLogs, formatEvent

    with capturedLogs() as events:
        CertificateReloader([]).reload()
    assert [formatEvent(e) for e in events] == ["SIGHUP: no TLS certificate to reload"]
    failing, working = _Certificate(RuntimeError("no such curve")), _Certificate(None)
    reloader = CertificateReloader([failing, working, failing])  # type: ignore[list-item]
    with capturedLogs() as events:
        reloader.reload()
    assert (failing.reloads, working.reloads) == (1, 1)
    [event] = events
    assert formatEvent(event) == "Reloading a TLS certificate failed"
    assert event["log_failure"].value is failing.result


def test_helpReadsCleanly() -> None:
    """
    Each option's help is a sentence or two that Twisted's usage text
    joins to its default and to its value's kind ("A whole number."):
    no option's text ends up with two full stops in a row.
    """
    usage = " ".join(str(Options()).split())
    assert "--concurrent-logins" in usage
    assert "CPU count (at least 2). A whole number." in usage
    assert ".." not in usage.replace("...", "")


def test_tlsOptions(ca: CertificateAuthority, tmp_path: Path) -> None:
    """
    --tls-cert/--tls-key give STLS a certificate; an ssl: listener without
    its own key uses them, one with privateKey= uses its own; every
    certificate is reloaded on SIGHUP.
    """
    server = ca.issue("localhost", ["localhost", "127.0.0.1"])
    other = ca.issue("other", ["localhost"])
    options = parse(
        "--listen",
        "tcp:0:interface=127.0.0.1",
        "--listen",
        "ssl:0:interface=127.0.0.1",
        "--listen",
        f"ssl:0:interface=127.0.0.1:privateKey={other.key}:certKey={other.certificate}",
        "--tls-cert",
        str(server.certificate),
        "--tls-key",
        str(server.key),
        "--auth",
        "memory:a:b",
        "--mailstore",
        "memory",
    )
    service = makeService(options)
    reloader, plain, implicit, own, access, freezer = list(service)
    assert isinstance(freezer, HeapFreezer)
    factory = plain.factory
    assert factory.tls is options["tls"]
    assert isinstance(implicit.factory, TLSMemoryBIOFactory)
    assert options["endpoints"][1][1] is options["tls"]
    assert options["endpoints"][2][1] not in (None, options["tls"])
    assert isinstance(own.factory, TLSMemoryBIOFactory)
    assert implicit.factory.wrappedFactory is factory
    assert isinstance(reloader, CertificateReloader)
    assert len(reloader.certificates) == 2
    # A SIGHUP reads the TLS files again, as the server's user: checked
    # at start, a warning only.
    assert isinstance(access, AccessCheck)
    assert sorted(path for _, path, _, _ in access.needed) == sorted(
        map(str, [server.certificate, server.key, other.certificate, other.key])
    )
    assert {(mode, fatal) for _, _, mode, fatal in access.needed} == {(os.R_OK, False)}


def test_tlsPrefix(ca: CertificateAuthority, tmp_path: Path) -> None:
    """
    C{tls:} in front of any endpoint (here a UNIX socket, behind C{proxy:})
    serves implicit TLS with --tls-cert; without --tls-cert it is a one-line
    start-up error.
    """
    server = ca.issue("localhost", ["localhost"])
    base = ("--auth", "memory:a:b", "--mailstore", "memory")
    options = parse(
        *base,
        "--listen",
        f"proxy:tls:unix:{tmp_path / 'pop3s.sock'}",
        "--proxy-trusted",
        "127.0.0.0/8",
        "--tls-cert",
        str(server.certificate),
        "--tls-key",
        str(server.key),
    )
    assert options["endpoints"][0][1:] == (options["tls"], True)
    reloader, listener, _, _ = makeService(options)  # and AccessCheck, HeapFreezer
    wrapped = listener.factory.wrappedFactory
    assert isinstance(wrapped, TLSMemoryBIOFactory)
    assert wrapped.wrappedFactory.tls is options["tls"]
    assert reloader.certificates == [options["tls"]]
    assert error(*base, "--listen", "tls:tcp:0") == (
        "popserv: error: --listen 'tls:tcp:0': needs --tls-cert and --tls-key"
    )


def test_authByCertificate(ca: CertificateAuthority) -> None:
    """
    --auth cert with --tls-client-ca is taken, over an ssl: listener with
    its own key as well as with --tls-cert; --auth cert alone is an error.
    """
    server = ca.issue("localhost", ["localhost"])
    base = ("--auth", "cert", "--mailstore", "memory")
    clientCA = ("--tls-client-ca", str(ca.files.certificate))
    options = parse(
        *base, *clientCA, "--listen", f"ssl:0:privateKey={server.key}:certKey={server.certificate}"
    )
    assert options["tls"] is None and options["endpoints"][0][1] is not None
    options = parse(
        *base, *clientCA, "--tls-cert", str(server.certificate), "--tls-key", str(server.key)
    )
    assert options["tls"] is not None
    assert error(*base) == "popserv: error: --auth cert needs --tls-client-ca"


def test_listenDescriptions() -> None:
    """
    A tcp: listener gets popserv's default backlog; --proxy-trusted is
    parsed into networks; a mistake in either is one line that names the
    option, whatever Twisted raised.
    """
    base = ("--auth", "memory:a:b", "--mailstore", "memory")
    options = parse(
        *base, "--listen", "tcp:0", "--listen", "proxy:tcp:0",
        "--proxy-trusted", "10.0.0.0/8, 127.0.0.1",
    )  # fmt: skip
    assert options["endpoints"][0][0]._backlog == DEFAULT_BACKLOG
    assert options["proxy-trusted"] == [
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("127.0.0.1/32"),
    ]
    options = parse(
        *base, "--listen", "proxy:tcp:0", "--proxy-trusted", "10.0.0.0/8", "--proxy-timeout", "3"
    )
    (_, listener, _, _) = makeService(options)  # with the reloader, AccessCheck, HeapFreezer
    assert listener.factory.timeout == 3
    assert error(*base, "--listen", "proxy:tcp:0", "--proxy-trusted", "10.0.0.300/8") == (
        "popserv: error: --proxy-trusted: '10.0.0.300/8' does not appear to be an IPv4 or"
        " IPv6 network"
    )
    # A parameter Twisted's parser does not take (its TypeError names a
    # private function), and a ValueError that is not about a number.
    assert error(*base, "--listen", "tcp:0:interfase=127.0.0.1") == (
        "popserv: error: --listen 'tcp:0:interfase=127.0.0.1': tcp: takes no parameter 'interfase'"
    )
    assert error(*base, "--listen", "unix:/run/pop3.sock:mod=0660") == (
        "popserv: error: --listen 'unix:/run/pop3.sock:mod=0660': unix: takes no parameter 'mod'"
    )
    # A port out of range, which Twisted's parsers take and bind() refuses
    # at start-up, here wrapped in Twisted's own haproxy: too.
    for listen in ["tcp:-1", "tcp6:65536:interface=\\:\\:1", "haproxy:tcp:70000"]:
        port = listen.split(":")[-1 if listen.startswith("haproxy") else 1]
        assert error(*base, "--listen", listen) == (
            f"popserv: error: --listen {listen!r}: port {port} is not 0 to 65535"
        )
    assert parse(*base, "--listen", "tcp:65535:interface=127.0.0.1")["endpoints"]
    assert error(*base, "--listen", "systemd:domain=INET") == (
        "popserv: error: --listen 'systemd:domain=INET': Specify exactly one of descriptor"
        " index or name"
    )


def test_stlsCertificateReloaded(ca: CertificateAuthority) -> None:
    """
    The --tls-cert of STLS alone (no implicit-TLS listener) is reloaded on
    SIGHUP too.
    """
    server = ca.issue("localhost", ["localhost"])
    options = parse(
        "--auth", "memory:a:b", "--mailstore", "memory", "--listen", "tcp:0",
        "--tls-cert", str(server.certificate), "--tls-key", str(server.key),
    )  # fmt: skip
    reloader, *_ = makeService(options)
    assert reloader.certificates == [options["tls"]]


def test_tlsHalfGiven(ca: CertificateAuthority) -> None:
    """
    --tls-cert without --tls-key, either way round, or --tls-chain without
    both, is an error rather than a server silently without TLS; so is a
    proxy: listener without --proxy-trusted.
    """
    server = ca.issue("localhost", ["localhost"])
    base = ("--auth", "memory:a:b", "--mailstore", "memory")
    together = "popserv: error: --tls-cert and --tls-key go together"
    assert error(*base, "--tls-key", str(server.key)) == together
    assert error(*base, "--tls-cert", str(server.certificate)) == together
    assert error(*base, "--tls-chain", str(server.certificate)) == (
        "popserv: error: --tls-chain needs --tls-cert and --tls-key"
    )
    assert error(*base, "--listen", "proxy:tcp:0") == (
        "popserv: error: --listen 'proxy:tcp:0': needs --proxy-trusted with the proxies' networks"
    )


def test_tlsErrors(ca: CertificateAuthority, tmp_path: Path) -> None:
    """
    TLS mistakes are one-line start-up errors: a lone --tls-cert, a missing
    file, a key that does not match, an ssl: listener with no key at all,
    a weakening ssl: parameter.
    """
    server = ca.issue("localhost", ["localhost"])
    other = ca.issue("other", ["localhost"])
    base = ("--auth", "memory:a:b", "--mailstore", "memory")
    assert "go together" in error(*base, "--tls-cert", str(server.certificate))
    assert error(*base, "--tls-cert", "/nonexistent.pem", "--tls-key", str(server.key)) == (
        "popserv: error: --tls-cert /nonexistent.pem: cannot read it: No such file or directory"
    )
    # Each file's error names its own option.
    good = ("--tls-cert", str(server.certificate), "--tls-key", str(server.key))
    assert error(*base, *good, "--tls-chain", "/nonexistent.pem") == (
        "popserv: error: --tls-chain /nonexistent.pem: cannot read it: No such file or directory"
    )
    assert error(*base, "--tls-cert", str(server.certificate), "--tls-key", "/no.pem") == (
        "popserv: error: --tls-key /no.pem: cannot read it: No such file or directory"
    )
    # A chain, or a client-CA file, with no certificate in it is refused,
    # and so is a --tls-cert without one even if the chain has some.
    assert error(*base, *good, "--tls-chain", str(server.key)) == (
        f"popserv: error: --tls-chain {server.key}: no certificate in it"
    )
    assert error(*base, *good, "--tls-client-ca", str(server.key)) == (
        f"popserv: error: --tls-client-ca {server.key}: no certificate in it"
    )
    assert error(
        *base,
        *("--tls-cert", str(server.key), "--tls-key", str(server.key)),
        *("--tls-chain", str(server.certificate)),
    ) == (f"popserv: error: --tls-cert {server.key}: no certificate in it")
    assert error(
        *base, "--listen", f"ssl:0:privateKey={server.key}:certKey={other.certificate}"
    ) == (
        f"popserv: error: --listen 'ssl:0:privateKey={server.key}:certKey={other.certificate}': "
        f"privateKey={server.key} does not match certKey={other.certificate}: "
        "[('x509 certificate routines', '', 'key values mismatch')]"
    )
    assert "does not match" in error(
        *base, "--tls-cert", str(server.certificate), "--tls-key", str(other.key)
    )
    assert "needs privateKey=" in error(*base, "--listen", "ssl:0")
    # Without certKey=, the certificate is read from privateKey=: named so.
    assert error(*base, "--listen", "ssl:0:privateKey=/nokey.pem") == (
        "popserv: error: --listen 'ssl:0:privateKey=/nokey.pem': "
        "privateKey=/nokey.pem: cannot read it: No such file or directory"
    )
    # A client CA is for logins by certificate, and they need one; and a
    # certificate comes only over TLS.
    assert error(*base, *good, "--tls-client-ca", str(ca.files.certificate)) == (
        "popserv: error: --tls-client-ca needs --auth cert"
    )
    assert error(
        "--auth", "cert", "--mailstore", "memory", "--tls-client-ca", str(ca.files.certificate)
    ) == ("popserv: error: --tls-client-ca needs --tls-cert or an ssl: listener")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    assert "no certificate" in error(*base, "--tls-cert", str(junk), "--tls-key", str(server.key))
    assert "not supported" in error(
        *base, "--listen", f"ssl:0:privateKey={server.key}:sslmethod=TLSv1_METHOD"
    )
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(server.key.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pass"),
        )
    )
    message = error(*base, "--tls-cert", str(server.certificate), "--tls-key", str(encrypted))
    assert message == (
        f"popserv: error: --tls-key {encrypted}: the key is encrypted; popserv needs it unencrypted"
    )
    # A key file that holds no key, but a certificate.
    assert error(
        *base, "--tls-cert", str(server.certificate), "--tls-key", str(server.certificate)
    ).startswith(f"popserv: error: --tls-key {server.certificate}: not a PEM private key (")


def _certificateFileErrors(ca: CertificateAuthority, bad: Path) -> list[tuple[str, str]]:
    """
    The start-up error with C{bad} given as each certificate file in turn
    (--tls-cert, --tls-chain, --tls-client-ca), the others good, with the
    option it was given as.
    """
    server = ca.issue("localhost", ["localhost"])
    base = ("--auth", "cert", "--mailstore", "memory")
    cert, key = ("--tls-cert", str(server.certificate)), ("--tls-key", str(server.key))
    return [
        (option, error(*base, *args))
        for option, args in [
            ("--tls-cert", ("--tls-cert", str(bad), *key)),
            ("--tls-chain", (*cert, *key, "--tls-chain", str(bad))),
            ("--tls-client-ca", (*cert, *key, "--tls-client-ca", str(bad))),
        ]
    ]


def test_tlsBrokenCertificateNamed(ca: CertificateAuthority, tmp_path: Path) -> None:
    """
    A certificate block that does not hold a certificate is a one-line
    start-up error that names the file it is in (as L{TLSFiles.load} says
    its errors do), whichever of the certificate files it is in.
    """
    broken = tmp_path / "broken.pem"
    broken.write_bytes(
        b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"
    )
    for option, text in _certificateFileErrors(ca, broken):
        assert text.startswith(f"popserv: error: {option} {broken}: not a PEM certificate (")


def test_tlsCutOffCertificate(ca: CertificateAuthority, tmp_path: Path) -> None:
    """
    A certificate file cut short (a copy that stopped, a paste that lost
    its end) is a start-up error that names it, whichever certificate file
    it is, rather than a server that sends the certificates before the cut:
    a chain cut after its first certificate would load, and clients would
    fail to verify it.  A key in the same file as the certificate is still
    taken.
    """
    server = ca.issue("localhost", ["localhost"])
    whole = server.certificate.read_bytes() + ca.files.certificate.read_bytes()
    cut = tmp_path / "cut.pem"
    cut.write_bytes(whole[: len(whole) - 100])
    for option, text in _certificateFileErrors(ca, cut):
        assert text == (
            f"popserv: error: {option} {cut}: its last certificate has no END line (cut off?)"
        )
    combined = tmp_path / "combined.pem"
    combined.write_bytes(server.certificate.read_bytes() + server.key.read_bytes())
    options = parse(
        *("--auth", "memory:a:b", "--mailstore", "memory"),
        *("--tls-cert", str(combined), "--tls-key", str(combined)),
    )
    assert options["tls"] is not None


def test_clientCAsNamed(ca: CertificateAuthority) -> None:
    """
    With --tls-client-ca the certificate request names the acceptable CAs.
    """
    from OpenSSL import SSL

    from popserv.tls import TLSFiles

    server = ca.issue("localhost", ["localhost"])
    options = TLSFiles(
        str(server.certificate), str(server.key), clientCA=str(ca.files.certificate)
    ).load()
    names = SSL.Connection(options.getContext(), None).get_client_ca_list()
    assert [n.commonName for n in names] == ["popserv test CA"]


def test_policyErrorsNameTheOption(tmp_path: Path) -> None:
    """
    A policy mistake names the option (and file) it came from.
    """
    policy = tmp_path / "policy"
    policy.write_text("alice expire=soon\n")
    base = ("--auth", "memory:a:b", "--mailstore", "memory")
    assert f"--policy-file {policy}: line 1" in error(*base, "--policy-file", str(policy))
    assert "--login-delay: " in error(*base, "--login-delay", "15m")
    assert error(*base, "--login-delay", "900", "--expire", "soon") == (
        "popserv: error: --expire: expire must be a number of days or NEVER, not 'soon'"
    )
    policy.write_bytes(b"alice login-delay=60\nb\xf6b expire=3\n")
    assert error(*base, "--policy-file", str(policy)) == (
        f"popserv: error: --policy-file {policy}: line 2: not UTF-8"
    )


def test_allowCleartext() -> None:
    """
    --allow-cleartext reaches the factory; the default is off.
    """
    base = ("--auth", "memory:a:b", "--mailstore", "memory")
    assert not listenerOf(makeService(parse(*base))).factory.allowCleartext
    assert listenerOf(makeService(parse(*base, "--allow-cleartext"))).factory.allowCleartext


def test_noLocalCleartext() -> None:
    """
    --no-local-cleartext reaches the factory, whose default is to allow
    passwords in clear from this machine; with --allow-cleartext it is an
    error that names both.
    """
    base = ("--auth", "memory:a:b", "--mailstore", "memory")
    assert listenerOf(makeService(parse(*base))).factory.localCleartext
    factory = listenerOf(makeService(parse(*base, "--no-local-cleartext"))).factory
    assert not factory.localCleartext and not factory.allowCleartext
    assert error(*base, "--allow-cleartext", "--no-local-cleartext") == (
        "popserv: error: --allow-cleartext and --no-local-cleartext contradict each other: "
        "choose one"
    )


def test_policyOptions(tmp_path: Path) -> None:
    """
    --login-delay, --expire, --policy-file and --state-dir make the factory's
    site policy.
    """
    policyFile = tmp_path / "policy"
    policyFile.write_text("alice expire=NEVER\n")
    options = parse(
        "--auth",
        "memory:a:b",
        "--mailstore",
        "memory",
        "--login-delay",
        "900",
        "--expire",
        "30",
        "--policy-file",
        str(policyFile),
        "--state-dir",
        str(tmp_path),
    )
    policy = listenerOf(makeService(options)).factory.policy
    assert policy.loginDelay().value == 900
    assert policy.expire("alice").value == "NEVER"
    assert policy.expire("bob").value == 30
    # Without them nothing is announced or enforced: above all, retrieved
    # mail is not deleted (EXPIRE 0) unless the operator says so.
    policy = listenerOf(makeService(parse("--auth", "memory:a:b", "--mailstore", "memory")))
    policy = policy.factory.policy
    assert (policy.loginDelay(), policy.expire(), policy.expire("bob")) == (None, None, None)
    assert not policy.expires("bob")
    assert isinstance(policy.history, MemoryHistory)
    assert error("--auth", "memory:a:b", "--mailstore", "memory", "--state-dir", "") == (
        "popserv: error: --state-dir: needs a directory"
    )


def test_limitOptions() -> None:
    """
    The abuse-resistance options reach the factory's limits; the defaults
    are the safe ones.
    """
    base = ("--auth", "memory:a:b", "--mailstore", "memory")
    limits = listenerOf(makeService(parse(*base))).factory.limits
    assert (limits.loginTimeout, limits.maxAuthFailures, limits.maxConnectionsPerAddress) == (
        60,
        3,
        20,
    )
    assert limits.concurrentLogins == max(2, os.cpu_count() or 1)
    options = parse(
        *base,
        "--login-timeout",
        "30",
        "--stall-timeout",
        "120",
        "--max-connections",
        "50",
        "--max-connections-per-address",
        "5",
        "--max-auth-failures",
        "2",
        "--concurrent-logins",
        "7",
    )
    limits = listenerOf(makeService(options)).factory.limits
    assert limits.concurrentLogins == 7
    assert (
        limits.loginTimeout,
        limits.stallTimeout,
        limits.maxConnections,
        limits.maxConnectionsPerAddress,
        limits.maxAuthFailures,
    ) == (30, 120, 50, 5, 2)
    assert "--max-connections" in error(*base, "--max-connections", "0")
    # Seconds: any positive finite number, fractions too; not 0, not inf.
    options = parse(*base, "--login-timeout", "0.5", "--proxy-timeout", "1")
    assert listenerOf(makeService(options)).factory.limits.loginTimeout == 0.5
    assert options["proxy-timeout"] == 1
    for value in ["0", "-1", "inf", "nan"]:
        assert error(*base, "--login-timeout", value) == (
            f"popserv: error: --login-timeout takes a number of seconds, not '{value}'"
        )
    # Each option's own name in its message.
    for option in ["stall-timeout", "proxy-timeout", "timeout"]:
        assert error(*base, f"--{option}", "0") == (
            f"popserv: error: --{option} takes a number of seconds, not '0'"
        )
    for option in ["max-connections", "max-connections-per-address", "max-auth-failures"]:
        assert error(*base, f"--{option}", "0") == (
            f"popserv: error: --{option} takes a whole number from 1, not '0'"
        )
    # Whole numbers from 1 to 9,999,999.
    options = parse(*base, "--max-auth-failures", "1", "--max-connections", "9999999")
    assert (options["max-auth-failures"], options["max-connections"]) == (1, 9999999)
    for value in ["0", "10000000", "-1", "1.5"]:
        assert error(*base, "--concurrent-logins", value) == (
            f"popserv: error: --concurrent-logins takes a whole number from 1, not '{value}'"
        )
    assert error(*base, "--max-auth-failures", "\u00b2") == (
        "popserv: error: --max-auth-failures takes a whole number from 1, not '\u00b2'"
    )


def test_perAddressExemptOption() -> None:
    """
    --per-address-exempt reaches the limits: this machine's own addresses
    by default, as written; a mistake names the option and the item.
    """
    base = ("--auth", "memory:a:b", "--mailstore", "memory")
    exempt = listenerOf(makeService(parse(*base))).factory.limits.perAddressExempt
    assert (str(exempt), "127.0.0.1" in exempt, "192.0.2.1" in exempt) == ("local", True, False)
    options = parse(*base, "--per-address-exempt", "local, 192.0.2.0/24")
    exempt = listenerOf(makeService(options)).factory.limits.perAddressExempt
    assert str(exempt) == "local,192.0.2.0/24"
    assert "192.0.2.1" in exempt and "198.51.100.1" not in exempt
    options = parse(*base, "--per-address-exempt", "none")
    exempt = listenerOf(makeService(options)).factory.limits.perAddressExempt
    assert (str(exempt), "127.0.0.1" in exempt) == ("none", False)
    assert error(*base, "--per-address-exempt", "local,10.0.0.300") == (
        "popserv: error: --per-address-exempt: '10.0.0.300' is not a network, nor 'local' or 'none'"
    )
    assert "--per-address-exempt: 'none,local': give" in error(
        *base, "--per-address-exempt", "none,local"
    )


def test_storePluginMistakes(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """
    A store kind two plugins claim is refused, naming both, rather than
    served by whichever was found first; so is a plugin whose makeStore
    gives something that is not a store; one whose makeStore raises
    ValueError gets one line, the kind put before its message, and one
    that raises StoreConfigError gets its message as it is.
    """
    import twisted.plugin

    from popserv.mailstores import MemoryStoreFactory, findStoreFactories, memoryStoreFactory

    class Impostor(MemoryStoreFactory):
        def makeStore(self, argstring: str) -> object:  # type: ignore[override]
            return object()

    impostor = Impostor()
    monkeypatch.setattr(
        twisted.plugin, "getPlugins", lambda interface: [impostor, memoryStoreFactory]
    )
    assert error("--auth", "memory:a:b", "--mailstore", "memory") == (
        "popserv: error: --mailstore: mail store kind 'memory' is claimed by both"
        " popserv.mailstores.MemoryStoreFactory and"
        " test_tap.test_storePluginMistakes.<locals>.Impostor"
    )
    # findStoreFactories (for plugin authors' tests) gives the first found:
    assert findStoreFactories()["memory"] is impostor
    # --help-mailstores says so too, rather than show one as the only one.
    with pytest.raises(SystemExit):
        parse("--help-mailstores")
    assert capsys.readouterr().out.endswith(
        "    (claimed by popserv.mailstores.MemoryStoreFactory and"
        " test_tap.test_storePluginMistakes.<locals>.Impostor: choosing it is an error)\n\n"
    )
    monkeypatch.setattr(twisted.plugin, "getPlugins", lambda interface: [impostor])
    message = error("--auth", "memory:a:b", "--mailstore", "memory")
    assert message.startswith(
        "popserv: error: --mailstore: memory: test_tap.test_storePluginMistakes.<locals>.Impostor"
        ".makeStore gave <object object at "
    )
    assert message.endswith(">, not an IMailStore provider")

    class Strict(MemoryStoreFactory):
        def makeStore(self, argstring: str) -> object:  # type: ignore[override]
            raise ValueError(f"no such table {argstring!r}")

    # A ValueError, as a checker plugin's is: one line, not a traceback.
    monkeypatch.setattr(twisted.plugin, "getPlugins", lambda interface: [Strict()])
    assert error("--auth", "memory:a:b", "--mailstore", "memory:x") == (
        "popserv: error: --mailstore: memory: no such table 'x'"
    )

    class Explicit(MemoryStoreFactory):
        def makeStore(self, argstring: str) -> object:  # type: ignore[override]
            raise StoreConfigError(f"memory: no such table {argstring!r}")

    # A StoreConfigError's message is shown as it is: it names the kind
    # itself (docs/extending.rst), as a built-in store's does, since a
    # store made by an embedding program raises it too.
    monkeypatch.setattr(twisted.plugin, "getPlugins", lambda interface: [Explicit()])
    assert error("--auth", "memory:a:b", "--mailstore", "memory:x") == (
        "popserv: error: --mailstore: memory: no such table 'x'"
    )


def test_accessCheck(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    What the server's user must be able to do is checked when the service
    starts (after twistd's --uid): a --state-dir it cannot write stops the
    start with one line naming the user; a TLS file it cannot read for a
    reload is only a warning.
    """
    import pwd

    from twisted.logger import capturedLogs

    from popserv.tap import StartFailed

    denied = {str(tmp_path / "state"), "/etc/popserv/key.pem"}
    monkeypatch.setattr(os, "access", lambda path, mode: str(path) not in denied)
    user = pwd.getpwuid(os.geteuid()).pw_name
    check = AccessCheck([("TLS file /etc/popserv/key.pem", "/etc/popserv/key.pem", os.R_OK, False)])
    with capturedLogs() as events:
        check.startService()
    [warning] = [e for e in events if e["log_level"].name == "warn"]
    assert warning["message"] == (
        f"TLS file /etc/popserv/key.pem: the server's user ({user}) cannot read it"
    )
    state = str(tmp_path / "state")
    check = AccessCheck([("--state-dir", state, os.W_OK | os.X_OK, True)])
    with pytest.raises(StartFailed) as failed, capturedLogs():
        check.startService()
    assert str(failed.value) == (
        f"popserv: error: --state-dir: the server's user ({user}) cannot write it"
    )
    assert failed.value.code == 1
    # A directory to enter (a Maildir root) is said so, not "read".
    check = AccessCheck([("--mailstore maildir", state, os.X_OK, True)])
    with pytest.raises(StartFailed) as failed, capturedLogs():
        check.startService()
    assert str(failed.value) == (
        f"popserv: error: --mailstore maildir: the server's user ({user}) cannot enter it"
    )
    check = AccessCheck([("TLS file", state, os.R_OK, True)])
    with pytest.raises(StartFailed) as failed, capturedLogs():
        check.startService()
    assert (
        str(failed.value) == f"popserv: error: TLS file: the server's user ({user}) cannot read it"
    )


def test_accessCheckGoesOn(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Every path is checked, past those allowed and those only warned of:
    the first one the server's user cannot use stops the start.  The
    warning is the log's line; a user with no name is named by its uid.
    """
    import pwd

    from twisted.logger import capturedLogs, formatEvent

    from popserv.tap import StartFailed

    def getpwuid(uid: int) -> Any:
        raise KeyError(uid)

    monkeypatch.setattr(pwd, "getpwuid", getpwuid)
    monkeypatch.setattr(os, "access", lambda path, mode: path == "/allowed")
    check = AccessCheck(
        [
            ("allowed", "/allowed", os.R_OK, True),
            ("warned", "/warned", os.R_OK, False),
            ("refused", "/refused", os.W_OK, True),
        ]
    )
    user = f"uid {os.geteuid()}"
    with pytest.raises(StartFailed) as failed, capturedLogs() as events:
        check.startService()
    assert (
        str(failed.value) == f"popserv: error: refused: the server's user ({user}) cannot write it"
    )
    assert [formatEvent(e) for e in events if e["log_level"].name == "warn"] == [
        f"warned: the server's user ({user}) cannot read it"
    ]


class _Endpoint:
    """
    An endpoint whose listen answers C{result}, a port or a failure.
    """

    def __init__(self, result: Any) -> None:
        self.result = result

    def listen(self, factory: Any) -> Any:
        return (
            succeed(self.result) if isinstance(self.result, SimpleNamespace) else fail(self.result)
        )


@pytest.mark.parametrize(
    ("address", "where"),
    [
        (IPv4Address("TCP", "127.0.0.1", 2110), "127.0.0.1:2110"),
        (IPv6Address("TCP", "::1", 2110), "[::1]:2110"),
        (UNIXAddress(b"/run/popserv.sock"), "/run/popserv.sock"),
        (UNIXAddress(None), "?"),
        # A plugin endpoint's address of its own kind.
        (object(), "?"),
    ],
)
def test_listenerSaysWhere(address: Any, where: str) -> None:
    """
    Once it listens, a listener logs the address, an IPv6 one in brackets
    ("::1:2110" would read as an address of its own), or a UNIX socket's
    path ("?" for an address with neither), and the --listen it was.
    """
    from twisted.logger import capturedLogs, formatEvent

    port = SimpleNamespace(getHost=lambda: address)
    listener = Listener("tcp:2110", _Endpoint(port), object())
    with capturedLogs() as events:
        listener.privilegedStartService()
    assert [formatEvent(e) for e in events] == [f"popserv listening on {where} (tcp:2110)"]
    assert listener._waitingForPort is not None
    assert listener._waitingForPort.result is port


def test_listenerFailsTheStart(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A listener that cannot listen stops the start with one line, logged as
    critical and written, flushed, to the operator's terminal (the original
    stderr, which twistd does not redirect to the log).
    """
    from twisted.internet.error import CannotListenError
    from twisted.logger import capturedLogs, formatEvent

    from popserv.tap import StartFailed

    class Terminal(io.StringIO):
        flushed = ""

        def flush(self) -> None:
            self.flushed = self.getvalue()

    terminal = Terminal()
    monkeypatch.setattr(sys, "__stderr__", terminal)
    refused = CannotListenError("127.0.0.1", 110, OSError(13, "Permission denied"))
    listener = Listener("tcp:110", _Endpoint(refused), object())
    with pytest.raises(StartFailed) as failed, capturedLogs() as events:
        listener.privilegedStartService()
    line = f"popserv: error: cannot listen on tcp:110: {refused}"
    assert str(failed.value) == line
    assert failed.value.__cause__ is None and failed.value.__suppress_context__
    assert [(e["log_level"].name, formatEvent(e)) for e in events] == [("critical", line)]
    assert terminal.flushed == line + "\n"


def test_accessNeeded(tmp_path: Path) -> None:
    """
    What the AccessCheck is given: to enter a Maildir root (fatal) and to
    write it (a warning), to read a file: password database (fatal).
    """
    from twisted.logger import capturedLogs

    mail = tmp_path / "mail"
    mail.mkdir()
    users = tmp_path / "users"
    users.write_text("alice:secret\n")
    store = f"maildir:{mail}/{{user}}"
    state = str(tmp_path)
    options = parse("--auth", f"file:{users}", "--mailstore", store, "--state-dir", state)
    (*_, access, _) = makeService(options)
    assert access.needed == [
        (f"--mailstore {store}: its directory {mail}", str(mail), os.X_OK, True),
        (f"--mailstore {store}: its directory {mail} (new Maildirs)", str(mail), os.W_OK, False),
        ("--state-dir", state, os.W_OK | os.X_OK, True),
        (f"--auth file:{users}", str(users), os.R_OK, True),
    ]
    # All of it allowed (as here, for the user running the tests): it starts.
    with capturedLogs() as events:
        access.startService()
    assert access.running
    assert [e for e in events if e["log_level"].name in ("warn", "critical")] == []


def test_readableKeyWarned(ca: CertificateAuthority) -> None:
    """
    A TLS private key any user may read is used, with a warning at each
    load; one readable by its owner alone gets none.
    """
    from twisted.logger import capturedLogs, formatEvent

    from popserv.tls import TLSFiles

    server = ca.issue("localhost", ["localhost"])
    files = TLSFiles(str(server.certificate), str(server.key))
    for mode, expected in [
        (
            0o644,
            [f"The TLS private key {server.key} can be read by any user (mode 0644): chmod o-r it"],
        ),
        (0o600, []),
    ]:
        os.chmod(server.key, mode)
        with capturedLogs() as events:
            files.load()
        assert [formatEvent(e) for e in events] == expected


def test_twistdPathsUnderChrootOrStandardOutput(tmp_path: Path) -> None:
    """
    twistd's paths are checked only where popserv can see what twistd will
    open: C{--logfile -} is standard output, an empty C{--pidfile} writes
    none, and under C{--chroot} every path is inside the new root.
    """
    from twisted.python.usage import UsageError
    from twisted.scripts._twistd_unix import ServerOptions

    from popserv.tap import _checkTwistdPaths

    twistd = ServerOptions()
    twistd.update(pidfile="", logfile="-", rundir=".", chroot=None)
    _checkTwistdPaths(twistd)
    _checkTwistdPaths(None)  # popserv check: no twistd
    twistd["pidfile"] = str(tmp_path / "run" / "popserv.pid")
    with pytest.raises(UsageError) as caught:
        _checkTwistdPaths(twistd)
    assert str(caught.value) == (
        f"--pidfile '{tmp_path}/run/popserv.pid': {tmp_path}/run is not a directory"
    )
    (tmp_path / "run").write_text("a file, not a directory")
    with pytest.raises(UsageError):
        _checkTwistdPaths(twistd)
    # Each path is checked: an empty --pidfile does not end the checks.
    twistd.update(pidfile="", logfile=str(tmp_path / "log" / "popserv.log"))
    with pytest.raises(UsageError) as caught:
        _checkTwistdPaths(twistd)
    assert str(caught.value) == (
        f"--logfile '{tmp_path}/log/popserv.log': {tmp_path}/log is not a directory"
    )
    twistd["chroot"] = str(tmp_path)
    _checkTwistdPaths(twistd)


def test_emptyRundir() -> None:
    """
    An empty C{--rundir} (an unset variable in a unit file) is refused
    with the others, where it passed: twistd changed to the directory ""
    after the service was made, and ended with a traceback.
    """
    from twisted.python.usage import UsageError
    from twisted.scripts._twistd_unix import ServerOptions

    from popserv.tap import _checkTwistdPaths

    twistd = ServerOptions()
    twistd.update(pidfile="", logfile="-", rundir="", chroot=None)
    with pytest.raises(UsageError) as caught:
        _checkTwistdPaths(twistd)
    assert str(caught.value) == "--rundir '': not a directory"
