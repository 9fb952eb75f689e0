"""
The C{twistd popserv} command: options and service.

Every configuration error is found while the options are parsed, before the
reactor runs, and reported as one line (twistd's own handling of option
errors would print its whole usage text above it).
"""

from __future__ import annotations

import gc
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService, Service
from twisted.cred import strcred
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword
from twisted.cred.portal import Portal
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage

from popserv.addresses import parseNetworks
from popserv.certauth import ICertificateCredentials
from popserv.credentials import CheckerChain, normalizeChecker
from popserv.endpoints import parseImplicitTLS, withDefaultBacklog
from popserv.errors import StoreConfigError
from popserv.limits import Exemptions, Limits
from popserv.mailstores import (
    brokenStorePlugins,
    lacking,
    makeStore,
    namedFactories,
    namedFactory,
    storeClaimants,
)
from popserv.policy import (
    DirectoryHistory,
    PolicyError,
    SitePolicy,
    UserPolicy,
    parseExpire,
    parsePolicyFile,
    parseSeconds,
)
from popserv.protocol import DEFAULT_TIMEOUT, POP3ServerFactory
from popserv.proxy import ProxyWrappingFactory
from popserv.realm import MaildropRealm
from popserv.scram import IScramSHA256Credentials
from popserv.tls import ENDPOINT_NAMES, OPTION_NAMES, ReloadableTLS, TLSConfigError, TLSFiles

DEFAULT_LISTEN = "tcp:110"


def _seconds(option: str) -> Callable[[str], float]:
    """
    A coercer for an option taking seconds, naming the option in its error.
    """

    def coerce(value: str) -> float:
        try:
            seconds = float(value)
        except ValueError:
            seconds = float("nan")
        if not 0 < seconds < float("inf"):
            raise ValueError(f"--{option} takes a number of seconds, not {value!r}")
        return seconds

    coerce.coerceDoc = "A number of seconds."  # type: ignore[attr-defined]
    return coerce


def _networks(value: str) -> list[Any]:
    try:
        return parseNetworks(value)
    except ValueError as e:
        raise ValueError(f"--proxy-trusted: {e}") from None


_networks.coerceDoc = "Networks in CIDR notation."  # type: ignore[attr-defined]


def _exemptions(value: str) -> Exemptions:
    try:
        return Exemptions.parse(value)
    except ValueError as e:
        raise ValueError(f"--per-address-exempt: {e}") from None


_exemptions.coerceDoc = (  # type: ignore[attr-defined]
    "'local' (loopback and UNIX sockets) and networks in CIDR notation, or 'none'."
)


def _count(option: str) -> Callable[[str], int]:
    """
    A coercer for an option taking a whole number from 1.
    """

    def coerce(value: str) -> int:
        # isdecimal, not isdigit: int() refuses digits such as "²".
        if not (value.isdecimal() and 0 < int(value) < 10**7):
            raise ValueError(f"--{option} takes a whole number from 1, not {value!r}")
        return int(value)

    coerce.coerceDoc = "A whole number."  # type: ignore[attr-defined]
    return coerce


def _unixCheckerWorks() -> bool:
    """
    Whether Twisted's C{unix} checker can verify a password here: it needs
    the C{crypt} and C{spwd} modules, which Python 3.13 removed.  (Found
    without importing them: on 3.11 and 3.12 the import itself warns.)
    """
    from importlib.util import find_spec

    return all(find_spec(name) is not None for name in ("crypt", "spwd"))


class Options(usage.Options, strcred.AuthOptionMixin):
    """
    Options of C{twistd popserv}.
    """

    synopsis = "[options]"
    longdesc = (
        "A POP3 server (RFC 1939). Example: twistd -n popserv "
        "--listen tcp:1110:interface=127.0.0.1 --auth memory:alice:secret "
        "--mailstore maildir:/srv/mail/{user}"
    )
    supportedInterfaces = (
        IUsernamePassword,
        IUsernameHashedPassword,
        ICertificateCredentials,
        IScramSHA256Credentials,
    )

    optParameters = [
        [
            "tls-cert",
            None,
            None,
            "PEM certificate (and intermediates) for STLS and ssl: listeners.",
        ],
        ["tls-key", None, None, "PEM private key for --tls-cert."],
        ["tls-chain", None, None, "Optional PEM file of intermediate certificates."],
        [
            "tls-client-ca",
            None,
            None,
            "PEM file of CAs whose client certificates may log in (SASL EXTERNAL, --auth cert).",
        ],
        [
            "login-delay",
            None,
            None,
            "Least seconds between two logins of a user, announced and enforced "
            "(RFC 2449 LOGIN-DELAY).",
        ],
        [
            "expire",
            None,
            None,
            "Days retrieved mail stays on the server, 0 to delete it when the session "
            "that retrieved it ends, or NEVER; announced and enforced (RFC 2449 EXPIRE).",
        ],
        [
            "policy-file",
            None,
            None,
            "Per-user LOGIN-DELAY/EXPIRE: lines 'USER login-delay=N expire=D|NEVER'.",
        ],
        [
            "state-dir",
            None,
            None,
            "Directory for login and retrieval times, shared by all popserv processes; "
            "in memory if not given.",
        ],
        [
            "login-timeout",
            None,
            Limits.loginTimeout,
            "Seconds a client has to log in, from its connection.",
            _seconds("login-timeout"),
        ],
        [
            "stall-timeout",
            None,
            Limits.stallTimeout,
            "Seconds a message transfer may wait for a client that does not read.",
            _seconds("stall-timeout"),
        ],
        [
            "max-connections",
            None,
            Limits.maxConnections,
            "Connections served at once; more are refused with -ERR [SYS/TEMP].",
            _count("max-connections"),
        ],
        [
            "max-connections-per-address",
            None,
            Limits.maxConnectionsPerAddress,
            "Connections one client address may have at once.",
            _count("max-connections-per-address"),
        ],
        [
            "per-address-exempt",
            None,
            Limits.perAddressExempt,
            "Addresses that --max-connections-per-address does not limit "
            "(comma-separated), such as a proxy on this machine that all "
            "clients come through",
            _exemptions,
        ],
        [
            "max-auth-failures",
            None,
            Limits.maxAuthFailures,
            "Failed logins after which a session is closed (after a failure, the "
            "next attempt from that address waits 2 s, doubling to 15 s).",
            _count("max-auth-failures"),
        ],
        [
            "concurrent-logins",
            None,
            None,
            "Logins whose credentials are checked at once; more wait, those from "
            "addresses with a recent good login first.  Default: the CPU count "
            "(at least 2)",
            _count("concurrent-logins"),
        ],
        [
            "proxy-trusted",
            None,
            None,
            "Networks (comma-separated, e.g. 10.0.0.0/8) whose proxies may send "
            "the HAProxy PROXY header on proxy: listeners",
            _networks,
        ],
        [
            "proxy-timeout",
            None,
            10.0,
            "Seconds a proxy has to send the PROXY header.",
            _seconds("proxy-timeout"),
        ],
        [
            "timeout",
            None,
            DEFAULT_TIMEOUT,
            "Autologout timer in seconds; at least 600 (RFC 1939 section 3).",
            _seconds("timeout"),
        ],
    ]

    optFlags = [
        [
            "allow-cleartext",
            None,
            "Allow passwords in clear (USER/PASS, PLAIN, LOGIN) on unencrypted "
            "connections from other machines; by default only over TLS or "
            "from this machine.",
        ],
        [
            "no-local-cleartext",
            None,
            "Refuse passwords in clear from this machine too (loopback and "
            "UNIX sockets), as from any other, unless TLS is on: for a server "
            "behind a port forwarder on the same host, where every client "
            "looks local.",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["mailstore"] = None

    def opt_mailstore(self, description: str) -> None:
        """Where mail is stored, as KIND:ARGS (see --help-mailstores)."""
        # Not the last one silently: "--mailstore memory" added to a unit's
        # command line would serve every user an empty maildrop.
        if self["mailstore"] is not None:
            raise usage.UsageError(
                f"--mailstore given twice ({self['mailstore']!r} and {description!r}): give one"
            )
        self["mailstore"] = description

    opt_m = opt_mailstore

    def opt_listen(self, description: str) -> None:
        """Endpoint: tcp:, ssl:, unix:, systemd:, proxy:...; repeatable. Default: tcp:110."""
        self["listen"].append(description)

    opt_l = opt_listen

    def opt_auth(self, description: str) -> None:
        """Checker for logins, as KIND:ARGS (see --help-auth); repeatable, tried in order."""
        # strcred only warns about a missing file: and then every login
        # fails; refuse it at start instead.
        kind, _, argument = description.partition(":")
        if kind == "file" and not os.path.isfile(argument):
            raise usage.UsageError(f"--auth {description!r}: no such file")
        if kind == "unix" and argument:
            # Twisted's unix checker takes no argument, and ignores one
            # without a word: "unix:/etc/shadow.other" would read the
            # system's accounts all the same.
            raise usage.UsageError(f"--auth {description!r}: unix takes no argument (--auth unix)")
        if kind == "unix" and not _unixCheckerWorks():
            # Twisted's unix checker needs crypt (and spwd for /etc/shadow);
            # without them it refuses every login without a word.
            raise usage.UsageError(
                f"--auth {description!r}: needs Python's crypt and spwd modules,"
                f" which Python 3.13 removed (this is {sys.version.split()[0]});"
                " use passwd-file: instead"
            )
        if kind == "memory" and not argument:
            # Twisted's memory checker takes no users at all without a
            # word: a server nobody can log in to.
            raise usage.UsageError(
                f"--auth {description!r}: needs NAME:PASSWORD, e.g. memory:alice:secret"
            )
        self._addChecker(description, kind, argument)

    def _addChecker(self, description: str, kind: str, argument: str) -> None:
        """
        What C{strcred}'s C{opt_auth} does, said in popserv's words: make
        the checker of C{kind} from C{argument} and add it, or raise a
        L{usage.UsageError} that names the C{--auth} option.
        """
        claimants = _checkerClaimants(
            f"--auth {description!r}", kind, self._checkerFactoriesForOptHelpAuth
        )
        if len(claimants) > 1:
            # strcred takes the first that getPlugins finds, which depends
            # on the order of files on disk: a plugin could stand in for
            # passwd-file without a word.  Never pick one silently (as for
            # --mailstore).
            names = namedFactories(claimants)
            raise usage.UsageError(
                f"--auth {description!r}: checker kind {kind!r} is claimed by both {names}"
            )
        factory = claimants[0]
        try:
            checker = factory.generateChecker(argument)
        except Exception as e:
            # A checker factory's own error (a missing file, a bad
            # argument) is the operator's mistake: one line, as strcred
            # has it, naming the --auth it was.
            raise usage.UsageError(f"--auth {description!r}: {e}") from None
        if not (hasattr(checker, "credentialInterfaces") and hasattr(checker, "requestAvatarId")):
            # Said as the plugin's bug it is, not as the AttributeError
            # strcred would meet ("'NoneType' object has no attribute
            # 'credentialInterfaces'").
            raise usage.UsageError(
                f"--auth {description!r}: {namedFactory(factory)}.generateChecker gave"
                f" {checker!r}, not an ICredentialsChecker provider"
            )
        try:
            self.addChecker(checker)
        except strcred.UnsupportedInterfaces:
            # A checker of logins POP3 has no way to make (anonymous,
            # sshkey): strcred names only the interface.
            raise usage.UsageError(
                f"--auth {description!r}: popserv cannot use the {kind!r} checker:"
                " its logins are not POP3's (see --help-auth)"
            ) from None

    def _checkerFactoriesForOptHelpAuth(self) -> Iterator[strcred.ICheckerFactory]:
        # What --help-auth lists (strcred's hook for it).  Nor a plugin
        # left out as broken (_checkerPlugins), which made strcred's
        # listing fail with an AttributeError.
        return self._usableCheckers(_checkerPlugins()[0])

    def _usableCheckers(self, installed: list[Any]) -> Iterator[strcred.ICheckerFactory]:
        # Of the C{installed} checker plugins, those popserv can use: not
        # unix where it cannot work (opt_auth says why if it is chosen all
        # the same), nor those whose logins are not POP3's.
        unix = _unixCheckerWorks()
        for factory in installed:
            if self.supportsCheckerFactory(factory) and (unix or factory.authType != "unix"):
                yield factory

    def opt_help_auth(self) -> None:
        """
        Show all authentication methods available.
        """
        # strcred's own, but with each kind once: it listed a kind two
        # plugins claim twice, as if both could be chosen.  A clash, and a
        # plugin left out as broken, is said below the table, as
        # --help-mailstores says them.
        installed, broken = _checkerPlugins()  # one scan of the plugins
        kinds: dict[str, list[strcred.ICheckerFactory]] = {}
        for factory in self._usableCheckers(installed):
            kinds.setdefault(factory.authType, []).append(factory)
        width = max(map(len, kinds), default=0)
        write = self.authOutput.write
        write(
            "Usage: --auth AuthType[:ArgString]\nFor detailed help: --help-auth-type AuthType\n\n"
        )
        for kind, text in [("AuthType", "ArgString format"), ("========", "================")]:
            write(f"  {kind:<{width}}\t{text}\n")
        for kind, claimants in kinds.items():
            write(f"  {kind:<{width}}\t{claimants[0].argStringFormat}\n")
        write("\n")
        for kind, claimants in kinds.items():
            if len(claimants) > 1:
                names = namedFactories(claimants)
                write(f"  ({kind} is claimed by {names}: choosing it is an error)\n")
        for line in broken:
            write(f"  (checker plugin left out: {line})\n")
        raise SystemExit(0)

    def opt_help_auth_type(self, kind: str) -> None:
        """
        Show help for a particular authentication type.
        """
        # strcred's own read every plugin's authType, and the chosen one's
        # authHelp: a plugin left out as broken (_checkerPlugins) made it
        # fail with an AttributeError, whatever kind was asked for.
        claimants = _checkerClaimants(
            f"--help-auth-type {kind!r}", kind, self._checkerFactoriesForOptHelpAuth
        )
        factory, write = claimants[0], self.authOutput.write
        write(f"Usage: --auth {kind}[:ArgString]\nArgString format: {factory.argStringFormat}\n\n")
        for line in factory.authHelp.strip().splitlines():
            write(f"  {line.rstrip()}\n")
        write("\n")
        if not self.supportsCheckerFactory(factory):
            write(f"  {strcred.notSupportedWarning}\n\n")
        if len(claimants) > 1:
            # --auth refuses such a kind: say so here too, rather than
            # describe one plugin as if it were the only one.
            names = namedFactories(claimants)
            write(f"  (claimed by {names}: choosing it is an error)\n\n")
        raise SystemExit(0)

    def opt_help_mailstores(self) -> None:
        """
        List the installed mail store kinds and exit.
        """
        for kind, claimants in sorted(storeClaimants().items()):
            factory = claimants[0]
            print(f"{kind}:{factory.argStringFormat}\n    {factory.storeHelp}\n")
            if len(claimants) > 1:
                # makeStore refuses such a kind: say so here too, rather
                # than show one plugin as if it were the only one.
                names = namedFactories(claimants)
                print(f"    (claimed by {names}: choosing it is an error)\n")
        for line in brokenStorePlugins():
            print(f"(store plugin left out: {line})\n")
        sys.exit(0)

    def parseOptions(self, options: Any = None) -> None:
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            # Twisted words a coercer's refusal "Parameter type enforcement
            # failed: ..."; the coercer's own message names the option.
            message = str(e).removeprefix("Parameter type enforcement failed: ")
            raise SystemExit(f"popserv: error: {message}") from None

    def postOptions(self) -> None:
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]
        if self["proxy-trusted"] and not any(d.startswith("proxy:") for d in self["listen"]):
            # The proxies' headers would reach the POP3 parser as commands,
            # and every client would have the proxy's address.
            raise usage.UsageError(
                "--proxy-trusted: no --listen takes the PROXY header (write proxy: before one)"
            )
        if not self.get("credCheckers"):
            raise usage.UsageError(
                "--auth is required, e.g. --auth memory:alice:secret (see --help-auth)"
            )
        if not self["mailstore"]:
            raise usage.UsageError(
                "--mailstore is required, e.g. --mailstore maildir:/srv/mail/{user}"
            )
        if self["allow-cleartext"] and self["no-local-cleartext"]:
            raise usage.UsageError(
                "--allow-cleartext and --no-local-cleartext contradict each other: choose one"
            )
        for name in ("tls-cert", "tls-key", "tls-chain", "tls-client-ca", "policy-file"):
            if self[name] == "":
                # An empty value (an unset variable in a unit file) must not
                # mean "none" without a word: a server without its TLS.
                raise usage.UsageError(f"--{name}: needs a file")
        if self["timeout"] < DEFAULT_TIMEOUT:
            raise usage.UsageError(
                f"--timeout must be at least {DEFAULT_TIMEOUT:.0f} seconds (RFC 1939 section 3)"
            )
        try:
            self["store"] = makeStore(self["mailstore"])
        except StoreConfigError as e:
            raise usage.UsageError(f"--mailstore: {e}") from None
        self["policy"] = self._policy()
        self["tls"] = self._tls()
        self["endpoints"] = [self._endpoint(d) for d in self["listen"]]
        hasTLS = self["tls"] is not None or any(tls for _, tls, _ in self["endpoints"])
        if self["tls-client-ca"] and not hasTLS:
            raise usage.UsageError("--tls-client-ca needs --tls-cert or an ssl: listener")
        # Each is useless without the other: a server nobody can log in to
        # by certificate, or clients asked for certificates nothing reads.
        byCertificate = any(
            ICertificateCredentials in c.credentialInterfaces for c in self["credCheckers"]
        )
        if byCertificate and not self["tls-client-ca"]:
            raise usage.UsageError("--auth cert needs --tls-client-ca")
        if self["tls-client-ca"] and not byCertificate:
            raise usage.UsageError("--tls-client-ca needs --auth cert")
        _checkTwistdPaths(getattr(self, "parent", None))

    def _policy(self) -> SitePolicy:
        try:
            option = "--login-delay"
            loginDelay = self["login-delay"]
            delay = parseSeconds(loginDelay) if loginDelay is not None else None
            option = "--expire"
            expire = parseExpire(self["expire"]) if self["expire"] is not None else None
            defaults = UserPolicy(loginDelay=delay, expire=expire)
            users = {}
            if self["policy-file"]:
                option = f"--policy-file {self['policy-file']}"
                try:
                    with open(self["policy-file"], encoding="utf-8") as f:
                        text = f.read()
                except OSError as e:
                    raise PolicyError(f"cannot read it: {e.strerror}") from None
                except UnicodeDecodeError as e:
                    line = e.object[: e.start].count(b"\n") + 1
                    raise PolicyError(f"line {line}: not UTF-8") from None
                users = parsePolicyFile(text, defaults)
            option = "--state-dir"
            if self["state-dir"] == "":
                # An empty value (an unset variable in a unit file) must not
                # mean "in memory" without a word.
                raise PolicyError("needs a directory")
            history = DirectoryHistory(self["state-dir"]) if self["state-dir"] else None
        except PolicyError as e:
            raise usage.UsageError(f"{option}: {e}") from None
        return SitePolicy(defaults, users, history)

    def _tls(self) -> ReloadableTLS | None:
        certificate, key = self["tls-cert"], self["tls-key"]
        if not certificate and not key:
            if self["tls-chain"]:
                raise usage.UsageError("--tls-chain needs --tls-cert and --tls-key")
            return None
        if not (certificate and key):
            raise usage.UsageError("--tls-cert and --tls-key go together")
        files = TLSFiles(
            certificate, key, self["tls-chain"], self["tls-client-ca"], names=OPTION_NAMES
        )
        return _loadTLS(files, None)

    def _endpoint(self, listen: str) -> tuple[Any, ReloadableTLS | None, bool]:
        # "proxy:" in front: the listener takes the HAProxy PROXY protocol.
        proxied = listen.startswith("proxy:")
        description = listen.removeprefix("proxy:")
        if proxied and not self["proxy-trusted"]:
            raise usage.UsageError(
                f"--listen {listen!r}: needs --proxy-trusted with the proxies' networks"
            )
        endpoint, tls = self._innerEndpoint(description)
        return endpoint, tls, proxied

    def _innerEndpoint(self, description: str) -> tuple[Any, ReloadableTLS | None]:
        if description.startswith("tls:"):
            # Implicit TLS (RFC 8314) with --tls-cert over any endpoint, for
            # the ones ssl: cannot name: systemd:, unix:, a plugin's.
            if self["tls"] is None:
                raise usage.UsageError(f"--listen {description!r}: needs --tls-cert and --tls-key")
            return self._serverEndpoint(description.removeprefix("tls:")), self["tls"]
        try:
            implicit = parseImplicitTLS(description)
        except ValueError as e:
            raise usage.UsageError(f"--listen {description!r}: {e}") from None
        if implicit is None:
            return self._serverEndpoint(description), None
        if implicit.key is None:
            if self["tls"] is None:
                raise usage.UsageError(
                    f"--listen {description!r}: needs privateKey= (and certKey=) "
                    "or --tls-cert and --tls-key"
                )
            tls = self["tls"]
        else:
            assert implicit.certificate is not None
            names = ENDPOINT_NAMES
            if implicit.certificate == implicit.key:
                # No certKey=: the certificate is read from privateKey=.
                names = {**ENDPOINT_NAMES, "certificate": ENDPOINT_NAMES["key"]}
            files = TLSFiles(
                implicit.certificate,
                implicit.key,
                implicit.chain,
                self["tls-client-ca"],
                names=names,
            )
            tls = _loadTLS(files, f"--listen {description!r}")
        return self._serverEndpoint(implicit.tcp), tls

    def _serverEndpoint(self, description: str) -> Any:
        """
        The endpoint of one listen description, without the prefixes
        popserv handles itself (C{proxy:}, C{tls:}, C{ssl:}'s files).
        """
        return _endpoint(description)


def _checkTwistdPaths(twistd: usage.Options | None) -> None:
    """
    Refuse twistd's own options that name a place in a directory that does
    not exist: twistd reads them only after popserv's options are taken,
    the service made and, for C{--pidfile}, the server listening, and ends
    with a traceback (a C{--pidfile} under C{/run/popserv} before systemd's
    C{RuntimeDirectory=} made it, a C{--logfile} under a log directory not
    yet made).

    @param twistd: twistd's options, whose sub-command these are; L{None}
        when popserv's options are parsed alone (C{popserv check}).
    """
    if twistd is None or twistd.get("chroot"):
        # Under --chroot the paths are looked up inside the new root, and
        # only as root: not ours to second-guess.
        return
    rundir = twistd.get("rundir")
    # An empty one too (an unset variable in a unit file): twistd would
    # chdir("") after the service was made, and end with a traceback.
    if rundir is not None and not os.path.isdir(rundir):
        raise usage.UsageError(f"--rundir {rundir!r}: not a directory")
    # twistd makes --pidfile absolute when it has parsed everything, from
    # the directory it started in; --logfile is opened from there too.
    for option in ("pidfile", "logfile"):
        path = twistd.get(option)
        if not path or path == "-":  # none, or (--logfile -) standard output
            continue
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise usage.UsageError(f"--{option} {path!r}: {directory} is not a directory")


def _checkerClaimants(
    option: str, kind: str, usable: Callable[[], Iterator[strcred.ICheckerFactory]]
) -> list[Any]:
    """
    The installed checker plugins of C{kind}: more than one where plugins
    clash.

    @param option: the option that names C{kind}, as its error says it.
    @param usable: the plugins popserv can use, as C{--help-auth} lists
        them: the error names only their kinds, not those whose logins
        POP3 has no way to make (C{anonymous}, C{sshkey}).
    @raise usage.UsageError: no plugin has that kind; the error names the
        kinds installed and the plugins left out as broken.
    """
    installed, broken = _checkerPlugins()
    claimants = [f for f in installed if f.authType == kind]
    if not claimants:
        # A set: a kind that two plugins claim is named once.
        kinds = ", ".join(sorted({f.authType for f in usable()}))
        # The kind may be that of a plugin left out as broken: say so.
        left = "".join(f"; {line}" for line in broken)
        raise usage.UsageError(f"{option}: unknown kind {kind!r} (installed: {kinds}{left})")
    return claimants


#: What each checker plugin must have as text (strcred's ICheckerFactory).
_CHECKER_ATTRIBUTES = ("authType", "authHelp", "argStringFormat")


def _checkerPlugins() -> tuple[list[Any], list[str]]:
    """
    The installed checker plugins (C{--auth} kinds) that have what
    C{ICheckerFactory} asks for, and one line for each that does not
    (C{"mystore.Factory has no authType"}): a plugin's bug (a misspelt
    attribute) must not stop every start with an AttributeError.
    """
    installed: list[Any] = []
    broken: list[str] = []
    for factory in strcred.findCheckerFactories():
        wrong = lacking(factory, _CHECKER_ATTRIBUTES, ["credentialInterfaces"])
        if wrong is None:
            installed.append(factory)
        else:
            broken.append(wrong)
    return installed, broken


class NoSuchSocket(usage.UsageError):
    """
    A C{systemd:} listen description names a socket the process was not
    given.
    """


def _loadTLS(files: TLSFiles, where: str | None) -> ReloadableTLS:
    try:
        return ReloadableTLS(files)
    except TLSConfigError as e:
        raise usage.UsageError(f"{where}: {e}" if where else str(e)) from None


def _endpoint(description: str) -> Any:
    # The reactor is already chosen when a twistd plugin's options are
    # parsed; building the endpoint here (it does not listen yet) finds bad
    # strings and unreadable certificates before start-up.
    from twisted.internet import endpoints, reactor

    try:
        endpoint = endpoints.serverFromString(reactor, withDefaultBacklog(description))
    except (IndexError, KeyError):
        if description.startswith("systemd:"):
            # Twisted finds the sockets by LISTEN_FDS and LISTEN_FDNAMES.
            raise NoSuchSocket(
                f"--listen {description!r}: no such socket was passed"
                " (LISTEN_FDS and LISTEN_FDNAMES, as systemd sets them)"
            ) from None
        raise usage.UsageError(f"--listen {description!r}: not a valid endpoint") from None
    except ValueError as e:
        if "invalid literal for int()" in str(e):
            raise usage.UsageError(
                f"--listen {description!r}: a port or number that is not a number"
            ) from None
        raise usage.UsageError(f"--listen {description!r}: {e}") from None
    except TypeError as e:
        # A parameter the endpoint's parser does not take: Twisted's own
        # words are about its private function ("_parseTCP() got an
        # unexpected keyword argument 'interfase'").
        unknown = re.search(r"unexpected keyword argument '([^']*)'", str(e))
        if unknown is None:
            raise usage.UsageError(f"--listen {description!r}: {e}") from None
        kind = description.split(":", 1)[0]
        raise usage.UsageError(
            f"--listen {description!r}: {kind}: takes no parameter {unknown.group(1)!r}"
        ) from None
    except Exception as e:
        raise usage.UsageError(f"--listen {description!r}: {e}") from None
    # Twisted's parsers take any integer as a port (and haproxy: wraps
    # one); bind() would refuse it only at start-up, after "popserv check"
    # had passed it.
    inner = endpoint
    while hasattr(inner, "_wrappedEndpoint"):
        inner = inner._wrappedEndpoint
    port = getattr(inner, "_port", None)
    if isinstance(port, int) and not 0 <= port <= 65535:
        raise usage.UsageError(f"--listen {description!r}: port {port} is not 0 to 65535")
    return endpoint


def makeService(options: Options) -> IService:
    """
    The POP3 service: one listener per --listen endpoint, all serving one
    factory.
    """
    checkers: list[ICredentialsChecker] = [normalizeChecker(c) for c in options["credCheckers"]]
    # One chain for all: a Portal alone keeps one checker per credentials
    # interface, so a second --auth would silently replace the first.
    portal = Portal(MaildropRealm(options["store"]), [CheckerChain(checkers)])
    factory = POP3ServerFactory(
        portal,
        timeout=options["timeout"],
        tls=options["tls"],
        allowCleartext=bool(options["allow-cleartext"]),
        localCleartext=not options["no-local-cleartext"],
        policy=options["policy"],
        limits=Limits(
            loginTimeout=options["login-timeout"],
            stallTimeout=options["stall-timeout"],
            maxConnections=options["max-connections"],
            maxConnectionsPerAddress=options["max-connections-per-address"],
            perAddressExempt=options["per-address-exempt"],
            maxAuthFailures=options["max-auth-failures"],
            concurrentLogins=options["concurrent-logins"] or Limits().concurrentLogins,
        ),
    )
    top = MultiService()
    certificates = [options["tls"]] if options["tls"] is not None else []
    listeners = []
    for description, (endpoint, tls, proxied) in zip(
        options["listen"], options["endpoints"], strict=True
    ):
        served: Any = factory
        if tls is not None:
            # Implicit TLS (RFC 8314): TLS from the first octet.
            served = TLSMemoryBIOFactory(tls, False, factory)
            certificates.append(tls)
        if proxied:
            # The PROXY header comes first, before TLS.
            served = ProxyWrappingFactory(
                served, options["proxy-trusted"], timeout=options["proxy-timeout"]
            )
        listeners.append(Listener(description, endpoint, served))
    # Always: an operator's (or systemd's ExecReload's) SIGHUP must never
    # kill the server, as the signal's default action would.  First, so
    # that SIGHUP is caught before a port is bound: the moment a client or
    # a supervisor can see the server.
    reloader = CertificateReloader(certificates)
    reloader.setServiceParent(top)
    for listener in listeners:
        listener.setServiceParent(top)
    # Started once twistd has bound the ports and dropped its privileges
    # (--uid), before the reactor runs, so before anyone is served.
    AccessCheck(_neededAccess(options, reloader.certificates)).setServiceParent(top)
    # Last: what the services above make when they start is set up too.
    HeapFreezer().setServiceParent(top)
    return top


def _neededAccess(
    options: Options, certificates: list[ReloadableTLS]
) -> list[tuple[str, str, int, bool]]:
    """
    What the server's user must be able to do once it serves, as
    (what, path, os.access mode, fatal): enter the Maildirs' directory
    (and write it, for new users' Maildirs: only a warning); write the
    --state-dir; read the password files it reads again as they change;
    read the files of C{certificates}, which a SIGHUP reloads (only a
    warning: the old certificate stays in use).
    """
    from twisted.cred.checkers import FilePasswordDB

    from popserv.maildir import MaildirStore
    from popserv.passwdfile import PasswdFileChecker

    needed = []
    store = options.get("store")
    if isinstance(store, MaildirStore):
        what = f"--mailstore {options['mailstore']}: its directory {store.template.root}"
        # Entering it is enough (a root of mode 0711 hides the user names).
        needed.append((what, store.template.root, os.X_OK, True))
        # Existing Maildirs may be the user's own under a root-owned
        # directory: only a new user's first login needs to write here.
        needed.append((f"{what} (new Maildirs)", store.template.root, os.W_OK, False))
    if options["state-dir"]:
        needed.append(("--state-dir", options["state-dir"], os.W_OK | os.X_OK, True))
    for checker in options.get("credCheckers", []):
        if isinstance(checker, PasswdFileChecker):
            needed.append((f"--auth passwd-file:{checker.path}", checker.path, os.R_OK, True))
        elif isinstance(checker, FilePasswordDB):
            path = os.fsdecode(checker.filename)
            needed.append((f"--auth file:{path}", path, os.R_OK, True))
    for tls in certificates:
        for name in ("certificate", "key", "chain", "clientCA"):
            path = getattr(tls.files, name)
            if path:
                needed.append((f"TLS file {path} (read again on SIGHUP)", path, os.R_OK, False))
    return needed


class AccessCheck(Service):
    """
    Checks, as the user the server runs as (after twistd's --uid), that it
    can read and write what it will need to while serving: the options are
    checked when they are parsed, as root if twistd started as root, and a
    file that only root can read passed then, to fail every login later.
    A failure stops start-up with one line (L{StartFailed}); a TLS file a
    reload could not read is a warning.
    """

    _log = Logger()

    def __init__(self, needed: list[tuple[str, str, int, bool]]) -> None:
        self.needed = needed

    def startService(self) -> None:
        super().startService()
        user = _userName()
        for what, path, mode, fatal in self.needed:
            if os.access(path, mode):
                continue
            can = "write" if mode & os.W_OK else "read" if mode & os.R_OK else "enter"
            message = f"{what}: the server's user ({user}) cannot {can} it"
            if not fatal:
                self._log.warn("{message}", message=message)
                continue
            raise _startFailed(self._log, message)


def _userName() -> str:
    import pwd

    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


class HeapFreezer(Service):
    """
    Puts every object that exists once the server is set up out of the
    cyclic garbage collector's reach (C{gc.freeze()}), as the last step of
    starting.

    Those objects (the modules of Twisted, popserv and the libraries they
    use: about 48,000 of them) live as long as the process, yet each full
    collection walked them all.  Under login churn that was a 20 ms pause
    for every client at once, about every second, some 3 % of the CPU, and
    it freed nothing (docs/performance.rst, "Garbage collection").  Objects
    made later, sessions among them, are collected as before.  Only the
    process twistd runs is popserv's to tune this way: an application that
    embeds popserv decides for itself.
    """

    def startService(self) -> None:
        super().startService()
        # Collect first: garbage of the start-up still waiting for a
        # collection would otherwise be frozen with the rest, for good.
        gc.collect()
        gc.freeze()


class CertificateReloader(Service):
    """
    Reloads the TLS certificates on SIGHUP; sessions already running keep
    theirs, new ones get the new certificate.  Without certificates SIGHUP
    only logs that there is nothing to reload (password files are read
    again as they change, without a signal).
    """

    _log = Logger()

    def __init__(self, certificates: list[ReloadableTLS]) -> None:
        self.certificates = list({id(c): c for c in certificates}.values())
        self._previous: Any = None
        self._catching = False

    def reload(self) -> None:
        if not self.certificates:
            self._log.info("SIGHUP: no TLS certificate to reload")
        for certificate in self.certificates:
            # A bad file is logged by reload() itself; anything else is a
            # fault, logged here rather than lost with the Deferred.
            certificate.reload().addErrback(
                lambda failure: self._log.failure("Reloading a TLS certificate failed", failure)
            )

    def privilegedStartService(self) -> None:
        # twistd binds the ports in the listeners' privilegedStartService,
        # and runs startService only once the reactor starts: a SIGHUP in
        # between would end the server.
        super().privilegedStartService()
        self._catch()

    def startService(self) -> None:
        super().startService()
        self._catch()  # if started without privilegedStartService

    def _catch(self) -> None:
        if self._catching:
            return
        from twisted.internet import reactor

        def handler(signum: int, frame: Any) -> None:
            # Queued until the reactor runs, if it does not yet.
            reactor.callFromThread(self.reload)  # type: ignore[attr-defined]

        self._previous = signal.signal(signal.SIGHUP, handler)
        self._catching = True

    def stopService(self) -> Any:
        if self._catching:
            # The handler found, if it was Python's; never the default
            # action, which ends the process: twistd stops the services as
            # the server starts to stop, and a reload (logrotate's,
            # systemd's) then would kill it in the middle of its sessions'
            # deletions.
            # (None: a handler not set from Python, which cannot be put back.)
            previous = self._previous
            if previous in (None, signal.SIG_DFL):
                previous = signal.SIG_IGN
            signal.signal(signal.SIGHUP, previous)
            self._catching = False
        return super().stopService()


class StartFailed(SystemExit, Exception):
    """
    Start-up failed, and a line saying why was written.

    A C{SystemExit} (status 1), so that C{twistd -n} ends without a
    traceback; and an C{Exception}, so that a daemonizing twistd reports it
    through the pipe its first process waits on, which then exits with
    status 1 too.  Twisted catches only an C{Exception} there: the first
    process, which holds the pipe's other end, would otherwise wait for
    ever.
    """

    def __init__(self, message: str) -> None:
        super().__init__(1)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _startFailed(log: Logger, problem: str) -> StartFailed:
    """
    Say why start-up failed, once services are starting, and give the
    exception that ends it.  Once logging has started twistd's
    C{sys.stderr} feeds the log; the operator's terminal is the original
    stderr.  A daemon has none, so the log gets the line too.
    """
    message = f"popserv: error: {problem}"
    log.critical("{message}", message=message)
    print(message, file=sys.__stderr__, flush=True)
    return StartFailed(message)


class Listener(StreamServerEndpointService):
    """
    Listens on one endpoint; if it cannot (address in use, no permission),
    start-up fails with one line rather than a traceback or, as Twisted's
    own service would by default, a log message and a server with no
    listener.
    """

    _log = Logger()

    def __init__(self, description: str, endpoint: Any, factory: Any) -> None:
        super().__init__(endpoint, factory)
        self.description = description
        self._raiseSynchronously = True

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except Exception as e:
            raise _startFailed(self._log, f"cannot listen on {self.description}: {e}") from None
        if self._waitingForPort is not None:
            self._waitingForPort.addCallback(self._listening)

    def _listening(self, port: Any) -> Any:
        # Twisted logs only the port number ("... starting on 110"); the
        # operator wants the address too, and which --listen it was.
        address = port.getHost()
        if hasattr(address, "port"):
            # An IPv6 address in brackets (RFC 3986, section 3.2.2): "::1:110"
            # would read as an address of its own.
            host = f"[{address.host}]" if ":" in address.host else address.host
            where = f"{host}:{address.port}"
        else:
            where = os.fsdecode(getattr(address, "name", None) or b"?")
        self._log.info(
            "popserv listening on {where} ({description})",
            where=where,
            description=self.description,
        )
        return port
