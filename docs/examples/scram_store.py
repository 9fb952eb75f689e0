"""
A checker that stores SCRAM-SHA-256 keys instead of passwords.

Serves user "alice" (password "secret") from a MemoryStore holding one
message, on a Twisted server endpoint (default tcp:1110:interface=127.0.0.1).
The checker keeps, per user, only the salt, the iteration count, StoredKey
and ServerKey (RFC 5802 section 3): enough to verify SCRAM-SHA-256 logins,
and USER/PASS, PLAIN and LOGIN by recomputing the keys, but not CRAM-MD5 or
APOP, which need the password itself.  Prints "listening on HOST:PORT" once
it listens, then serves until interrupted.
"""

from __future__ import annotations

import argparse
import hmac
import os
import sys
from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet import endpoints, task, threads
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import globalLogBeginner, textFileLogObserver
from zope.interface import implementer

from popserv import MaildropRealm, MemoryStore, POP3ServerFactory
from popserv.scram import IScramKeySource, IScramSHA256Credentials, saslprep, scramKeys

#: The message alice finds: LF line endings and a line that starts with ".".
WELCOME = (
    b"From: postmaster@example.org\n"
    b"To: alice@example.org\n"
    b"Subject: Logged in with SCRAM\n"
    b"\n"
    b"This server keeps SCRAM keys, not passwords.\n"
    b".This line starts with a dot.\n"
)

#: RFC 7677 section 4 asks for at least 4096.  popserv makes up a 16-octet
#: salt and 4096 iterations for names it does not know; using the same here
#: keeps the server's first message from telling real users from others.
ITERATIONS = 4096
SALT_LENGTH = 16


@implementer(ICredentialsChecker, IScramKeySource)
class ScramKeyChecker:
    """
    Users and their SCRAM-SHA-256 keys; no password is kept.
    """

    credentialInterfaces = (IScramSHA256Credentials, IUsernamePassword)

    def __init__(self) -> None:
        #: SASLprepped UTF-8 name -> (salt, iterations, StoredKey, ServerKey)
        self.users: dict[bytes, tuple[bytes, int, bytes, bytes]] = {}

    def addUser(self, name: str, password: str, iterations: int = ITERATIONS) -> None:
        """
        Store the keys of C{password}; in a real system this runs where the
        password is set, and only the four values reach the database.
        """
        salt = os.urandom(SALT_LENGTH)
        storedKey, serverKey = scramKeys(password, salt, iterations)
        # SCRAM credentials carry the SASLprepped name (RFC 5802 section 5.1).
        self.users[saslprep(name).encode("utf-8")] = (salt, iterations, storedKey, serverKey)

    # IScramKeySource: asked before the client proves anything.

    def scramParameters(self, username: bytes) -> Deferred[tuple[bytes, int] | None]:
        entry = self.users.get(username)
        return succeed(None if entry is None else entry[:2])

    # ICredentialsChecker

    def requestAvatarId(self, credentials: Any) -> Deferred[Any]:
        if IScramSHA256Credentials.providedBy(credentials):
            return self._checkProof(credentials)
        return threads.deferToThread(self._checkPassword, credentials)

    def _checkProof(self, credentials: Any) -> Deferred[bytes]:
        entry = self.users.get(credentials.username)
        if entry is None:
            return fail(UnauthorizedLogin())
        salt, iterations, storedKey, serverKey = entry
        # Another key source may have answered for this name, with other
        # parameters: then these keys cannot match.
        if (credentials.salt, credentials.iterations) != (salt, iterations):
            return fail(UnauthorizedLogin())
        # Two HMACs: cheap enough for the reactor thread.
        if credentials.verify(storedKey, serverKey):
            return succeed(credentials.username)
        return fail(UnauthorizedLogin())

    def _checkPassword(self, credentials: Any) -> bytes:
        # USER/PASS, PLAIN and LOGIN send the password: recompute the keys
        # (PBKDF2, slow on purpose, hence the thread) and compare.
        try:
            name = saslprep(credentials.username.decode("utf-8")).encode("utf-8")
        except ValueError:  # not UTF-8, or SASLprep refuses it
            raise UnauthorizedLogin() from None
        entry = self.users.get(name)
        if entry is None:
            raise UnauthorizedLogin()
        salt, iterations, storedKey, _ = entry
        computed, _ = scramKeys(credentials.password, salt, iterations)
        if not hmac.compare_digest(computed, storedKey):
            raise UnauthorizedLogin()
        return name


async def main(reactor: Any, argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="popserv with a SCRAM key store.")
    parser.add_argument("endpoint", nargs="?", default="tcp:1110:interface=127.0.0.1")
    args = parser.parse_args(argv)

    # The server's log goes to stderr; stdout carries only the line below.
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)

    checker = ScramKeyChecker()
    checker.addUser("alice", "secret")
    store = MemoryStore()
    store.deliver("alice", WELCOME)
    # POP3ServerFactory finds the portal's checkers that provide
    # IScramKeySource and asks them for each user's salt and iterations.
    factory = POP3ServerFactory(Portal(MaildropRealm(store), [checker]))

    port = await endpoints.serverFromString(reactor, args.endpoint).listen(factory)
    address = port.getHost()
    if hasattr(address, "port"):
        where = f"{address.host}:{address.port}"
    else:  # a UNIX socket: its path
        where = os.fsdecode(address.name)
    print(f"listening on {where}", flush=True)

    # Serve until the reactor stops (Ctrl-C or SIGTERM).
    await Deferred()


if __name__ == "__main__":
    task.react(lambda reactor: Deferred.fromCoroutine(main(reactor, sys.argv[1:])))
