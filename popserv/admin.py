"""
The C{popserv} administration command::

    popserv passwd add FILE USER [--scheme S] [--password-stdin]
    popserv passwd change FILE USER [--scheme S] [--password-stdin]
    popserv passwd remove FILE USER
    popserv passwd list FILE
    popserv hash [--scheme S] [--password-stdin]
    popserv check -- TWISTD-POPSERV-OPTIONS...
    popserv index [--jobs N] MAILDIR...

Passwords are never taken from the command line (where C{ps} and shell
histories would show them): they are asked twice on the terminal, or read
as one line from standard input with C{--password-stdin}.

Edits of a password file are atomic (a new file is written, flushed to
disk and renamed over the old one, with its mode and owner) and leave
every other line as it was, byte for byte.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import getpass
import os
import re
import sys
import tempfile
import unicodedata
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

from popserv._version import __version__
from popserv.passwdfile import (
    DEFAULT_SCHEME,
    GENERATED_SCHEMES,
    BadEntry,
    hashPassword,
    parseLine,
)


class AdminError(Exception):
    """
    A mistake of the operator: the message is printed, the exit code is 1.
    """


def _fail(message: str) -> NoReturn:
    raise AdminError(message)


def readPassword(fromStdin: bool) -> str:
    """
    A new password: one line of standard input, or asked twice on the
    terminal.

    @raise AdminError: the password is empty, the two differ, or there is
        no terminal to ask on.
    """
    if fromStdin:
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    else:
        if not sys.stdin.isatty():
            _fail("no terminal to ask for the password on; use --password-stdin")
        password = getpass.getpass("New password: ")
        if getpass.getpass("Retype new password: ") != password:
            _fail("the passwords differ")
    if not password:
        _fail("empty password")
    return password


_LINE = re.compile(rb"[^\n]*\n|[^\n]+\Z")


def _lines(data: bytes) -> list[bytes]:
    """
    The lines of C{data}, each with its line end.
    """
    return _LINE.findall(data)


def _userOf(line: bytes) -> bytes | None:
    body = line.rstrip(b"\r\n")
    if not body.strip() or body.lstrip().startswith(b"#"):
        return None
    return body.partition(b":")[0]


def _checkUsername(user: str) -> bytes:
    try:
        name = user.encode("utf-8")
    except UnicodeEncodeError:
        # Octets the command line had that are not UTF-8 (surrogateescape).
        _fail(f"invalid user name {user!r}: it is not UTF-8")
    if not name or re.search(rb"[:\r\n]", name) or name.lstrip().startswith(b"#"):
        _fail(f"invalid user name {user!r}: it cannot be empty, hold ':' or start with '#'")
    return name


def _checkNewUsername(user: str) -> bytes:
    """
    The name of a user to add: as L{_checkUsername} asks, and neither
    starting nor ending with white space nor holding a control character,
    which no client sends (the POP3 command line splits at spaces, and SASL
    PLAIN at NUL) and which is most likely the shell's or a script's
    mistake.  Names already in a file are changed and removed as they are.
    """
    name = _checkUsername(user)
    if user != user.strip() or any(unicodedata.category(c) == "Cc" for c in user):
        _fail(
            f"invalid user name {user!r}: it cannot start or end with white space"
            " or hold a control character"
        )
    return name


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        _fail(f"{path}: {e.strerror}")


def writeAtomically(path: str, data: bytes) -> None:
    """
    Replace C{path} with C{data}: a temporary file in the same directory is
    written, flushed to disk, given the old file's mode and owner (0600 and
    the current user for a new file), then renamed over it.  A symbolic
    link is followed: the file it leads to is replaced, not the link.
    """
    path = os.path.realpath(path)
    directory = os.path.dirname(path)
    with _naming(path):
        try:
            old: os.stat_result | None = os.stat(path)
        except FileNotFoundError:
            old = None
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=".popserv-passwd.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fchmod(f.fileno(), old.st_mode & 0o7777 if old else 0o600)
                if old is not None and (old.st_uid, old.st_gid) != (os.getuid(), os.getgid()):
                    try:
                        os.fchown(f.fileno(), old.st_uid, old.st_gid)
                    except PermissionError:
                        _fail(f"{path}: cannot keep its owner (run as its owner or root)")
                os.fsync(f.fileno())
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
        dirfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)


@contextlib.contextmanager
def _naming(path: str) -> Iterator[None]:
    """
    Name C{path} in an C{OSError} that names no file: those of calls on a
    descriptor (C{write}, C{fsync}, C{fchmod}), such as a full disk's
    C{ENOSPC}, which would otherwise leave the operator to guess the file.
    """
    try:
        yield
    except OSError as e:
        if e.filename is not None or e.errno is None:
            raise
        raise OSError(e.errno, e.strerror, path) from e


@contextlib.contextmanager
def _editing(path: str) -> Iterator[None]:
    """
    Hold the lock for an edit of C{path}: an C{flock} on its directory,
    since every edit replaces the file itself.  Without it two edits at
    once (a provisioning script's) each read the file before the other
    wrote it, and the change of the one that wrote first was lost.
    """
    directory = os.path.dirname(os.path.realpath(path))
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        _fail(f"{path}: {e.strerror}")
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:
            # A file system without locks: edit as before.
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                _fail(f"{path}: cannot lock its directory for the edit: {e.strerror}")
        yield
    finally:
        os.close(fd)


def _find(lines: list[bytes], name: bytes) -> int | None:
    for index, line in enumerate(lines):
        if _userOf(line) == name:
            return index
    return None


def passwdAdd(path: str, user: str, field: str) -> None:
    """
    Add C{user} with password field C{field}; the file is made (mode 0600)
    if it does not exist.

    @raise AdminError: the user is already there.
    """
    name = _checkNewUsername(user)
    with _editing(path):
        data = _read(path) or b""
        lines = _lines(data)
        if _find(lines, name) is not None:
            _fail(f"{path}: user {user} already exists (use 'popserv passwd change')")
        if data and not data.endswith(b"\n"):
            data += b"\n"
        writeAtomically(path, data + name + b":" + field.encode("utf-8") + b"\n")


def _existingUser(path: str, user: str) -> tuple[bytes, list[bytes], int]:
    """
    C{user}'s name as stored, the file's lines, and the index of the user's.

    @raise AdminError: the file or the user does not exist.
    """
    name = _checkUsername(user)
    data = _read(path)
    if data is None:
        _fail(f"{path}: no such file")
    lines = _lines(data)
    index = _find(lines, name)
    if index is None:
        _fail(f"{path}: no user {user}")
    return name, lines, index


def passwdChange(path: str, user: str, field: str) -> None:
    """
    Give C{user} the password field C{field}, keeping the fields after it.

    @raise AdminError: the file or the user does not exist.
    """
    with _editing(path):
        name, lines, index = _existingUser(path, user)
        line = lines[index]
        body = line.rstrip(b"\r\n")
        end = line[len(body) :]
        _, _, rest = body.partition(b":")
        _, colon, extra = rest.partition(b":")
        lines[index] = name + b":" + field.encode("utf-8") + colon + extra + end
        writeAtomically(path, b"".join(lines))


def passwdRemove(path: str, user: str) -> None:
    """
    Remove C{user}'s line.

    @raise AdminError: the file or the user does not exist.
    """
    with _editing(path):
        _, lines, index = _existingUser(path, user)
        del lines[index]
        writeAtomically(path, b"".join(lines))


def passwdList(path: str) -> list[tuple[str, str]]:
    """
    The users of the file and their schemes, in file order; broken lines
    are reported on standard error.
    """
    data = _read(path)
    if data is None:
        _fail(f"{path}: no such file")
    users = []
    for number, line in enumerate(data.split(b"\n"), 1):
        try:
            entry = parseLine(line.removesuffix(b"\r"), number)
        except BadEntry as e:
            print(f"{path}, line {number}: {e}", file=sys.stderr)
            continue
        if entry is not None:
            users.append((entry.username.decode("utf-8", "replace"), entry.scheme))
    return users


def describe(options: Any, authDescriptions: Sequence[str]) -> list[str]:
    """
    What a parsed L{popserv.tap.Options} would serve, as lines of text.
    """
    from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword

    from popserv.certauth import ICertificateCredentials
    from popserv.credentials import canVerify
    from popserv.sasl import ICramMD5Credentials
    from popserv.scram import IScramSHA256Credentials

    kinds = {
        IUsernamePassword: "passwords in clear (USER/PASS, PLAIN, LOGIN)",
        IUsernameHashedPassword: "plaintext-knowing (APOP, CRAM-MD5, SCRAM)",
        IScramSHA256Credentials: "SCRAM keys (SCRAM-SHA-256)",
        ICertificateCredentials: "client certificates (EXTERNAL)",
    }
    lines = []
    for description, (endpoint, tls, proxied) in zip(
        options["listen"], options["endpoints"], strict=True
    ):
        if tls is not None:
            how = "implicit TLS"
        elif options["tls"] is not None:
            how = "STLS available"
        else:
            how = "no TLS"
        if proxied:
            how += ", PROXY protocol"
        if endpoint is None:
            how += "; the socket systemd passes, not checked here"
        lines.append(f"listen: {description} ({how})")
    for description, checker in zip(authDescriptions, options["credCheckers"], strict=False):
        accepted = [
            kinds.get(i, repr(i)) for i in checker.credentialInterfaces if canVerify(checker, i)
        ]
        if canVerify(checker, ICramMD5Credentials) and not canVerify(
            checker, IUsernameHashedPassword
        ):
            accepted.append("CRAM-MD5 digests (CRAM-MD5)")  # users stored in CRAM-MD5 only
        lines.append(f"auth: {description.split(':', 1)[0]}: {', '.join(accepted)}")
    lines.append(f"mailstore: {options['mailstore']}")
    policy = options["policy"]
    defaults = policy.defaults
    lines.append(
        "policy: login-delay "
        + ("none" if defaults.loginDelay is None else f"{defaults.loginDelay} s")
        + ", expire "
        + ("not announced" if defaults.expire is None else str(defaults.expire))
        + f", {len(policy.users)} per-user entries"
        + (f", state in {options['state-dir']}" if options["state-dir"] else "")
    )
    lines.append(f"timeout: {options['timeout']:g} s")
    lines.append(
        "cleartext on insecure connections: "
        + (
            "allowed"
            if options["allow-cleartext"]
            else "refused, from this machine too"
            if options["no-local-cleartext"]
            else "refused"
        )
    )
    return lines


def check(arguments: Sequence[str]) -> list[str]:
    """
    Parse C{twistd popserv} options and say what would be served.

    @raise AdminError: the options are wrong (the one-line error).
    """
    from popserv.tap import NoSuchSocket, Options

    authDescriptions: list[str] = []

    class CheckOptions(Options):
        def opt_auth(self, description: str) -> None:
            super().opt_auth(description)
            authDescriptions.append(description)

        def _serverEndpoint(self, description: str) -> Any:
            # A systemd: socket exists only in the service systemd starts:
            # checking its unit's command line from a shell must not fail
            # for want of it (a malformed one is still an error).
            try:
                return super()._serverEndpoint(description)
            except NoSuchSocket:
                if "LISTEN_FDS" in os.environ:
                    raise
                return None

    options = CheckOptions()
    try:
        options.parseOptions(list(arguments))
    except SystemExit as e:
        if e.code in (0, None):
            raise
        _fail(str(e.code).removeprefix("popserv: error: "))
    return describe(options, authDescriptions)


def _fileName(text: str) -> str:
    # An empty name would be taken for the working directory by realpath(),
    # and the error would name a temporary file beside it.
    if not text:
        raise argparse.ArgumentTypeError("a file name cannot be empty")
    return text


#: The most processes C{popserv index --jobs} may start, unless the machine
#: has more CPUs (L{maxJobs}): more than enough to keep a disk busy, few
#: enough that a mistyped count starts no thousands.
MAX_JOBS = 64


def maxJobs() -> int:
    """
    The most processes C{popserv index --jobs} may start: L{MAX_JOBS}, or
    one for each CPU where there are more, so that C{--jobs "$(nproc)"}
    is never refused.
    """
    return max(MAX_JOBS, os.cpu_count() or 1)


def _jobCount(text: str) -> int:
    jobs, most = int(text) if text.isascii() and text.isdecimal() else 0, maxJobs()
    if not 1 <= jobs <= most:
        raise argparse.ArgumentTypeError(f"JOBS must be a whole number from 1 to {most}")
    return jobs


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="popserv", description="Administer popserv.")
    parser.add_argument("--version", action="version", version=f"popserv {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    schemes = argparse.ArgumentParser(add_help=False)
    schemes.add_argument(
        "--scheme",
        default=DEFAULT_SCHEME,
        type=str.upper,
        choices=GENERATED_SCHEMES,
        help=f"password scheme (default {DEFAULT_SCHEME})",
    )
    schemes.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password as one line from standard input",
    )

    passwd = commands.add_parser("passwd", help="edit a Dovecot passwd-file")
    actions = passwd.add_subparsers(dest="action", required=True)
    for action, text in (("add", "add a user"), ("change", "change a user's password")):
        sub = actions.add_parser(action, help=text, parents=[schemes])
        sub.add_argument("file", type=_fileName)
        sub.add_argument("user")
    remove = actions.add_parser("remove", help="remove a user")
    remove.add_argument("file", type=_fileName)
    remove.add_argument("user")
    listing = actions.add_parser("list", help="list users and their schemes")
    listing.add_argument("file", type=_fileName)

    commands.add_parser("hash", help="print a {SCHEME} password field", parents=[schemes])

    checking = commands.add_parser(
        "check", help="check twistd popserv options and say what would be served"
    )
    checking.add_argument("options", nargs=argparse.REMAINDER, help="-- then the options")

    indexing = commands.add_parser(
        "index", help="build or bring up to date the index of Maildirs, as a first login would"
    )
    indexing.add_argument(
        "-j",
        "--jobs",
        type=_jobCount,
        default=1,
        help=f"index up to JOBS Maildirs at once, each in a process of its own"
        f" (1 to {maxJobs()}; 1 by default)",
    )
    indexing.add_argument("maildirs", nargs="+", type=_fileName, metavar="MAILDIR")
    return parser


def _run(arguments: argparse.Namespace) -> None:
    if arguments.command == "hash":
        print(hashPassword(readPassword(arguments.password_stdin), arguments.scheme))
    elif arguments.command == "index":
        # Here rather than at the top: the other commands need no Twisted.
        from popserv.indexcommand import indexMaildirs

        failed = indexMaildirs(arguments.maildirs, arguments.jobs)
        given = len(arguments.maildirs)
        if failed:
            _fail(
                "the Maildir was not indexed"
                if given == 1
                else f"{failed} of {given} Maildirs not indexed"
            )
    elif arguments.command == "check":
        options = list(arguments.options)
        if options[:1] == ["--"]:
            options = options[1:]
        for line in check(options):
            print(line)
    elif arguments.action == "list":
        for user, scheme in passwdList(arguments.file):
            print(f"{user} {scheme}")
    elif arguments.action == "remove":
        passwdRemove(arguments.file, arguments.user)
    else:
        (_checkNewUsername if arguments.action == "add" else _checkUsername)(arguments.user)
        if arguments.action == "change" and _read(arguments.file) is None:
            _fail(f"{arguments.file}: no such file")
        field = _hash(readPassword(arguments.password_stdin), arguments.scheme)
        edit = passwdAdd if arguments.action == "add" else passwdChange
        edit(arguments.file, arguments.user, field)


def _hash(password: str, scheme: str) -> str:
    try:
        return hashPassword(password, scheme)
    except ValueError as e:
        _fail(str(e))


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run the command; the exit code: 0, 1 for an error (printed as one
    line), 2 for a usage error.
    """
    arguments = _parser().parse_args(argv)
    try:
        _run(arguments)
    except AdminError as e:
        print(f"popserv: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        if e.errno == errno.EPIPE:
            return 1
        # Not every OSError names a file (fsync's, say): no empty name then.
        where = f"{e.filename}: " if e.filename else ""
        print(f"popserv: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
