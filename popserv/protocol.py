"""
The POP3 server protocol (RFC 1939): the thin layer that moves lines in,
replies out and Deferreds along.

Parsing (L{popserv.commands}), the state table (L{popserv.states}), message
numbering (L{popserv.transaction}), reply formatting (L{popserv.replies}) and
the wire encoding of messages (L{popserv.encoder}) are plain code elsewhere;
this module wires them to a transport, a cred portal and a maildrop.

Commands are answered strictly in order: while one waits on a Deferred (a
login, a message read, the deletions at UPDATE) later lines are queued, and
reading from the socket stops once the queue is long, so a pipelining client
is served in order and a flooding one is held back, not buffered without
bound.
"""

from __future__ import annotations

import binascii
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar

from twisted.cred.credentials import ICredentials
from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IAddress, IReactorTime, ITCPTransport
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from popserv import replies
from popserv.commands import Command, CommandError, parseArguments, splitKeyword
from popserv.credentials import APOPCredentials, UsernamePassword, makeChallenge
from popserv.encoder import MessageEncoder
from popserv.errors import DeletionFailed, POP3Error
from popserv.interfaces import IMaildrop, IMessageReader
from popserv.states import LEGAL, State
from popserv.transaction import Transaction
from popserv.transfer import MessageTransfer, TransferAborted

#: RFC 1939 section 3: the autologout timer "MUST be of at least 10 minutes".
DEFAULT_TIMEOUT = 600.0

#: Lines a client may have waiting behind a slow command before the server
#: stops reading from its socket (RFC 2449 section 6.6 pipelining).
MAX_QUEUED_LINES = 64

#: Stands in the queue for an over-long line, so that its -ERR is sent in
#: turn (RFC 2449 section 6.6: responses in the order of the commands).
_LINE_TOO_LONG = b"\0line too long"

#: The commands that only make sense before login, for a clearer error
#: when they are sent after it.
_LOGIN_COMMANDS = frozenset({"USER", "PASS", "APOP"})

Handler = Callable[["POP3Protocol", Command], "Deferred[Any] | None"]


class POP3Protocol(LineOnlyReceiver, TimeoutMixin):
    """
    One POP3 session.

    @ivar state: the session's L{State}.
    """

    # Accept LF alone as well as CRLF: the CR, if any, is stripped in
    # lineReceived.  RFC 2449 section 4 limits command lines to 255 octets
    # including CRLF; MAX_LENGTH counts the line with its CR, without the LF.
    delimiter = b"\n"
    MAX_LENGTH = 254

    factory: POP3ServerFactory
    #: What the reactor gives: an ITCPTransport that is also a push producer
    #: and has abortConnection (or a test double of one).
    transport: Any
    _log = Logger()

    def __init__(self) -> None:
        self.state = State.AUTHORIZATION
        self.challenge: bytes | None = None
        self._user: bytes | None = None
        self._maildrop: IMaildrop | None = None
        self._logout: Callable[[], None] | None = None
        self._transaction: Transaction | None = None
        self._transfer: MessageTransfer | None = None
        self._queue: deque[bytes] = deque()
        self._busy = False
        self._draining = False
        self._readingPaused = False
        self._lost = False
        self._tooLong = False
        self._deleting: Deferred[None] | None = None

    # Connection events

    def connectionMade(self) -> None:
        _setNoDelay(self.transport)
        self.setTimeout(self.factory.timeout)
        greeting = "POP3 server ready"
        if self.factory.apopEnabled():
            self.challenge = makeChallenge()
            greeting += " " + self.challenge.decode("ascii")
        self._send(replies.ok(greeting))

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._lost = True
        self.setTimeout(None)
        self._queue.clear()
        if self._transfer is not None:
            self._transfer.stopProducing()
        if self._deleting is not None:
            # Release the lock only once the deletions are over, so the next
            # session never lists a message that is being removed.
            self._deleting.addBoth(lambda _: self._release())
        else:
            self._release()

    def timeoutConnection(self) -> None:
        # RFC 1939 section 3: on autologout the session does not enter
        # UPDATE; close "without removing any messages or sending any
        # response".  Abort rather than lose: a client that stopped reading
        # would otherwise keep the connection open by not draining the buffer.
        self._log.info("Autologout timer expired; closing")
        self.transport.abortConnection()

    def lineLengthExceeded(self, line: bytes) -> None:
        # Answer in turn, after whatever is queued or being sent (a reply in
        # the middle of a RETR would corrupt the message), and read nothing
        # more from this client.
        if self._tooLong:
            return
        self._tooLong = True
        if not self._readingPaused:
            self._readingPaused = True
            self.transport.pauseProducing()
        self._queue.append(_LINE_TOO_LONG)
        if not self._busy:
            self._drain()

    # Line handling

    def lineReceived(self, line: bytes) -> None:
        if self.state is State.UPDATE or self._lost or self._tooLong:
            return
        self.resetTimeout()
        if self._busy or self._queue:
            self._queue.append(line)
            if len(self._queue) >= MAX_QUEUED_LINES and not self._readingPaused:
                self._readingPaused = True
                self.transport.pauseProducing()
            return
        self._run(line)

    def _run(self, line: bytes) -> None:
        if line is _LINE_TOO_LONG:
            self._send(replies.err("Line too long"))
            self.state = State.UPDATE
            self.transport.loseConnection()
            return
        if line.endswith(b"\r"):
            line = line[:-1]
        try:
            keyword, rest = splitKeyword(line)
            if keyword not in LEGAL[self.state]:
                if keyword in _LOGIN_COMMANDS:
                    raise CommandError("Already logged in")
                raise CommandError("Command not valid in this state")
            command = parseArguments(keyword, rest)
            result = self._handlers[keyword](self, command)
        except POP3Error as e:
            self._send(replies.err(e.text, e.code))
            return
        if result is not None:
            self._busy = True
            result.addErrback(self._serverFault)
            result.addBoth(self._commandDone)

    def _commandDone(self, _: object) -> None:
        self._busy = False
        self._drain()

    def _drain(self) -> None:
        if self._draining:
            return
        self._draining = True
        try:
            while self._queue and not self._busy and not self._lost:
                if self.state is State.UPDATE:
                    self._queue.clear()
                    break
                self._run(self._queue.popleft())
        finally:
            self._draining = False
        if self._readingPaused and not self._tooLong and len(self._queue) < MAX_QUEUED_LINES // 2:
            self._readingPaused = False
            if not self._lost:
                self.transport.resumeProducing()

    def _serverFault(self, failure: Failure) -> None:
        """
        Anything unexpected: log it whole, tell the client nothing about it.
        """
        if failure.check(TransferAborted):
            return
        self._log.failure("Server fault in a POP3 command", failure)
        if self._transfer is not None or self._lost:
            # A multi-line response was cut: it cannot be taken back.
            self._transfer = None
            if not self._lost:
                self.transport.abortConnection()
            return
        self._send(replies.err("Internal server error", "SYS/TEMP"))

    def _send(self, data: bytes) -> None:
        if not self._lost:
            self.transport.write(data)

    # AUTHORIZATION state (RFC 1939 section 4, 7)

    def _doUSER(self, command: Command) -> None:
        (name,) = command.args
        assert isinstance(name, bytes)
        self._user = name
        self._send(replies.ok("Send PASS"))

    def _doPASS(self, command: Command) -> Deferred[None] | None:
        if self._user is None:
            raise CommandError("Send USER first")
        (password,) = command.args
        assert isinstance(password, bytes)
        user, self._user = self._user, None
        return self._login(UsernamePassword(user, password))

    def _doAPOP(self, command: Command) -> Deferred[None] | None:
        if self.challenge is None:
            raise CommandError("APOP is not available on this server")
        name, digest = command.args
        assert isinstance(name, bytes) and isinstance(digest, bytes)
        if len(digest) != 32 or not _isHex(digest):
            raise CommandError("Syntax: APOP name digest (32 hex digits)")
        self._user = None
        return self._login(APOPCredentials(self.challenge, name, digest))

    def _login(self, credentials: ICredentials) -> Deferred[Any]:
        d: Deferred[Any] = self.factory.portal.login(credentials, None, IMaildrop)
        d.addCallback(self._loggedIn)
        d.addErrback(self._loginFailed)
        return d

    def _loggedIn(self, result: tuple[object, IMaildrop, Callable[[], None]]) -> Any:
        _, maildrop, logout = result
        if self._lost:
            logout()
            return None
        self._maildrop, self._logout = maildrop, logout
        return maybeDeferred(maildrop.listMessages).addCallback(self._listed)

    def _listed(self, messages: Any) -> None:
        if self._lost:
            return
        self._transaction = Transaction(messages)
        self.state = State.TRANSACTION
        count, octets = self._transaction.stat()
        self._send(replies.ok(f"Logged in, {count} messages ({octets} octets)"))

    def _loginFailed(self, failure: Failure) -> None:
        self._release()
        if failure.check(UnauthorizedLogin, UnhandledCredentials):
            self._send(replies.err("Authentication failed", "AUTH"))
            return
        error = failure.check(POP3Error)
        if error is not None:
            e = failure.value
            assert isinstance(e, POP3Error)
            self._send(replies.err(e.text, e.code))
            return
        self._log.failure("Login failed with a server fault", failure)
        self._send(replies.err("Login failed, try again later", "SYS/TEMP"))

    def _release(self) -> None:
        logout, self._logout = self._logout, None
        self._maildrop = self._transaction = None
        if logout is not None:
            try:
                logout()
            except Exception:
                self._log.failure("Releasing the maildrop failed")

    # TRANSACTION state (RFC 1939 section 5, 7)

    def _txn(self) -> Transaction:
        assert self._transaction is not None
        return self._transaction

    def _doSTAT(self, command: Command) -> None:
        count, octets = self._txn().stat()
        self._send(replies.ok(f"{count} {octets}"))

    def _doLIST(self, command: Command) -> None:
        txn = self._txn()
        if command.args:
            (number,) = command.args
            assert isinstance(number, int)
            self._send(replies.ok(f"{number} {txn.info(number).size}"))
            return
        count, octets = txn.stat()
        lines = [b"%d %d" % (n, m.size) for n, m in txn.visible()]
        first = replies.ok(f"{count} messages ({octets} octets)")
        self._send(replies.multiline(first, lines))

    def _doUIDL(self, command: Command) -> None:
        txn = self._txn()
        if command.args:
            (number,) = command.args
            assert isinstance(number, int)
            self._send(replies.ok(f"{number} {txn.info(number).uid}"))
            return
        lines = [b"%d %s" % (n, m.uid.encode("ascii")) for n, m in txn.visible()]
        self._send(replies.multiline(replies.ok("Unique-ID listing follows"), lines))

    def _doRETR(self, command: Command) -> Deferred[None]:
        (number,) = command.args
        assert isinstance(number, int)
        size = self._txn().info(number).size
        return self._send_message(number, replies.ok(f"{size} octets"), None)

    def _doTOP(self, command: Command) -> Deferred[None]:
        number, lines = command.args
        assert isinstance(number, int) and isinstance(lines, int)
        self._txn().info(number)
        return self._send_message(number, replies.ok("Top of message follows"), lines)

    def _send_message(self, number: int, status: bytes, bodyLines: int | None) -> Deferred[None]:
        index = self._txn().index(number)
        assert self._maildrop is not None
        d: Deferred[IMessageReader] = maybeDeferred(self._maildrop.openMessage, index)

        def opened(reader: IMessageReader) -> Deferred[None] | None:
            if self._lost:
                reader.close()
                return None
            self._transfer = MessageTransfer(
                self.transport,
                reader,
                MessageEncoder(bodyLines),
                prefix=status,
                onProgress=self.resetTimeout,
            )
            return self._transfer.start().addCallback(self._transferDone)

        def unavailable(failure: Failure) -> None:
            failure.trap(POP3Error)
            e = failure.value
            assert isinstance(e, POP3Error)
            self._send(replies.err(e.text, e.code))

        return d.addCallbacks(opened, unavailable)

    def _transferDone(self, _: None) -> None:
        self._transfer = None

    def _doDELE(self, command: Command) -> None:
        (number,) = command.args
        assert isinstance(number, int)
        self._txn().delete(number)
        self._send(replies.ok(f"Message {number} deleted"))

    def _doNOOP(self, command: Command) -> None:
        self._send(replies.ok())

    def _doRSET(self, command: Command) -> None:
        txn = self._txn()
        txn.reset()
        count, octets = txn.stat()
        self._send(replies.ok(f"{count} messages ({octets} octets)"))

    # QUIT, and the UPDATE state (RFC 1939 section 6)

    def _doQUIT(self, command: Command) -> Deferred[None] | None:
        if self.state is State.AUTHORIZATION:
            self.state = State.UPDATE
            self._send(replies.ok("Bye"))
            self.transport.loseConnection()
            return None
        txn = self._txn()
        self.state = State.UPDATE
        self._queue.clear()
        indexes = txn.deletedIndexes()
        count, _ = txn.stat()
        if not indexes:
            self._send(replies.ok(f"Bye, {count} messages left"))
            self.transport.loseConnection()
            return None
        assert self._maildrop is not None
        d: Deferred[None] = maybeDeferred(self._maildrop.deleteMessages, indexes)
        self._deleting = d

        def deleted(_: None) -> None:
            self._send(replies.ok(f"Bye, {len(indexes)} deleted, {count} left"))

        def failed(failure: Failure) -> None:
            if failure.check(DeletionFailed):
                e = failure.value
                assert isinstance(e, DeletionFailed)
                self._send(replies.err(e.text, e.code))
            else:
                self._log.failure("Applying deletions failed", failure)
                self._send(replies.err("Some deleted messages not removed", "SYS/TEMP"))

        def close(_: None) -> None:
            self._deleting = None
            if not self._lost:
                self.transport.loseConnection()

        return d.addCallbacks(deleted, failed).addBoth(close)

    #: keyword -> handler: every method a client can reach, in one place.
    _handlers: ClassVar[dict[str, Handler]] = {
        "USER": _doUSER,
        "PASS": _doPASS,
        "APOP": _doAPOP,
        "QUIT": _doQUIT,
        "STAT": _doSTAT,
        "LIST": _doLIST,
        "RETR": _doRETR,
        "DELE": _doDELE,
        "NOOP": _doNOOP,
        "RSET": _doRSET,
        "TOP": _doTOP,
        "UIDL": _doUIDL,
    }


def _setNoDelay(transport: Any) -> None:
    """
    Turn off Nagle's algorithm where there is TCP underneath (for TLS, one
    layer down).  Every response is already written whole, so small
    segments are not a risk; with Nagle on, the short write that ends a
    message waits for the client's delayed ACK, some 40 ms per RETR.
    """
    for candidate in (transport, getattr(transport, "transport", None)):
        if ITCPTransport.providedBy(candidate):
            candidate.setTcpNoDelay(True)
            return


def _isHex(data: bytes) -> bool:
    try:
        binascii.unhexlify(data)
    except binascii.Error:
        return False
    return True


class POP3ServerFactory(ServerFactory[POP3Protocol]):
    """
    Makes L{POP3Protocol} sessions that log in through C{portal}.

    This is the embedding API: put it on any endpoint, e.g.
    C{TCP4ServerEndpoint(reactor, 110).listen(POP3ServerFactory(portal))}.
    The portal's realm must give L{IMaildrop} avatars, as
    L{popserv.realm.MaildropRealm} does.
    """

    protocol = POP3Protocol

    def __init__(
        self,
        portal: Portal,
        timeout: float = DEFAULT_TIMEOUT,
        clock: IReactorTime | None = None,
    ) -> None:
        """
        @param portal: authenticates logins and yields maildrops.
        @param timeout: the autologout timer in seconds (RFC 1939 section 3
            requires at least 600; less is for tests).
        @param clock: the clock for the timer; the global reactor if
            L{None}.
        """
        self.portal = portal
        self.timeout = timeout
        self.clock = clock

    def apopEnabled(self) -> bool:
        """
        Whether some checker can verify APOP digests (it must know the
        plaintext password: L{IUsernameHashedPassword}).
        """
        from twisted.cred.credentials import IUsernameHashedPassword

        return IUsernameHashedPassword in self.portal.listCredentialsInterfaces()

    def buildProtocol(self, addr: IAddress | None) -> POP3Protocol:
        p = self.protocol()
        p.factory = self
        if self.clock is not None:
            p.callLater = self.clock.callLater  # type: ignore[assignment]
        return p
