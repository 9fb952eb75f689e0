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

import base64
import binascii
from array import array
from collections.abc import Callable, Generator, Sequence
from itertools import chain
from typing import TYPE_CHECKING, Any, ClassVar

from twisted.cred.credentials import ICredentials, IUsernameHashedPassword
from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.cred.portal import Portal
from twisted.internet.abstract import FileDescriptor
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks, maybeDeferred
from twisted.internet.interfaces import (
    IAddress,
    IHalfCloseableProtocol,
    IHandshakeListener,
    IReactorCore,
    IReactorTime,
    ISSLTransport,
    ITCPTransport,
    ITLSTransport,
)
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from popserv import audit, replies
from popserv._version import __version__
from popserv.audit import SessionRecord
from popserv.backlog import socketOf, unsent, whenSent
from popserv.capabilities import Facts, capabilities
from popserv.clock import reactorTime
from popserv.commands import Command, CommandError, parseArguments, splitKeyword
from popserv.credentials import (
    APOPCredentials,
    UsernamePassword,
    makeChallenge,
    portalCanVerify,
)
from popserv.downgrade import prefixNeeded
from popserv.encoder import MessageEncoder, downgradeDelta
from popserv.errors import DeletionFailed, MaildropInUse, POP3Error
from popserv.interfaces import IMaildrop, IMessageReader, MessageInfo, column
from popserv.limits import UNIX_PEER, ConnectionCounter, Limits, LoginGate, PenaltyBox
from popserv.policy import SitePolicy
from popserv.realm import LoginMind
from popserv.sasl import (
    Challenge,
    IMechanism,
    IMechanismFactory,
    Outcome,
    SASLCancelled,
    SASLContext,
    SASLError,
    defaultMechanisms,
)
from popserv.states import LEGAL, State
from popserv.timeouts import Timeout, Timeouts
from popserv.tls import ReloadableTLS, channelBinding
from popserv.transaction import Transaction, checkListing, needsCheck
from popserv.transfer import CHUNK_SIZE, MessageTransfer, TransferAborted
from popserv.turnend import writeReply
from popserv.twistedtcp import plainTCP
from popserv.updates import UPDATE_GRACE, SessionsInUpdate

#: RFC 1939 section 3: the autologout timer "MUST be of at least 10 minutes".
DEFAULT_TIMEOUT = 600.0

#: Lines a client may have waiting behind a slow command before the server
#: stops reading from its socket (RFC 2449 section 6.6 pipelining).
MAX_QUEUED_LINES = 64

#: Stands in the queue for an over-long line, so that its -ERR is sent in
#: turn (RFC 2449 section 6.6: responses in the order of the commands).
_LINE_TOO_LONG = b"\0line too long"

#: SASL responses may be longer than command lines (RFC 5034 section 4
#: limits only the AUTH command itself); bounded all the same, at 8192
#: octets including CRLF, counted as MAX_LENGTH counts (with the CR,
#: without the LF).
MAX_SASL_LINE = 8191


class CleartextRefused(POP3Error):
    """
    A password would cross an unencrypted, non-local connection and the
    operator has not allowed that (RFC 2595 section 2.4).
    """

    code = "AUTH"
    text = "Plaintext authentication disallowed on non-secure connections"


#: The commands that only make sense before login, for a clearer error
#: when they are sent after it.
_LOGIN_COMMANDS = frozenset({"USER", "PASS", "APOP"})

Handler = Callable[["POP3Protocol", Command], "Deferred[Any] | None"]

#: The login attempt of a session that has made none: user and mechanism
#: for the audit line.
_NO_ATTEMPT = ("", "-")


@implementer(IHandshakeListener, IHalfCloseableProtocol)
class POP3Protocol(LineOnlyReceiver):
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

    # Per-session state.  What nearly every session sets is set first in
    # __init__ (see there); what only some sessions change has its default
    # here, on the class, so that the others never hold it.
    state: State
    challenge: bytes | None
    _user: bytes | None
    _attempt: tuple[str, str]
    #: A login attempt waiting at the factory's LoginGate.
    _turn: Deferred[Any] | None
    _busy: bool
    _maildrop: IMaildrop | None
    _logout: Callable[[], None] | None
    user: str | None
    _transaction: Transaction | None
    _draining: bool
    _lost: bool
    _transfer: MessageTransfer | None
    #: Indexes of messages retrieved in full (for EXPIRE); made at the
    #: first RETR.
    _retrieved: set[int] | None
    _deleting: Deferred[None] | None
    #: Counted in the factory's L{SessionsInUpdate}: from QUIT until the
    #: reply has left (L{_bye}) or the connection is gone.
    _updating: bool
    utf8: bool
    _readingPaused = False
    _tooLong = False
    _sasl: IMechanism | None = None
    _saslFinal = False
    _discardInput = False
    address = ""
    _counted = False
    _authFailures = 0
    _badCommands = 0
    #: The session's inactivity timer, on the factory's shared Timeouts.
    _timeout: Timeout | None = None
    #: The transport that writes to the socket, whose unsent octets hold
    #: the next command (L{popserv.backlog}); None if it cannot be read.
    _socket: FileDescriptor | None

    def __init__(self) -> None:
        # Lines that arrived while a command was answered (pipelining),
        # at most MAX_QUEUED_LINES: a list is smaller than a deque, and
        # popping its head is cheap at that length.
        self._queue: list[bytes] = []
        # CPython keeps one table of attribute names for all the instances
        # of a class, each instance holding only its values; but every
        # instance made lets that table grow by less.  So when a thousand
        # clients connect at once, the names a session sets only after the
        # others were made (at login, say) are not in it, and every session
        # got a dict of its own: 832 octets instead of about 250.  Set here,
        # in the first session made, they all are.
        self.state = State.AUTHORIZATION
        self.challenge = None
        self._user = None
        self._attempt = _NO_ATTEMPT
        self._turn = None
        self._busy = False
        self._socket = None
        self._maildrop = None
        self._logout = None
        self.user = None
        self._transaction = None
        self._draining = False
        self._lost = False
        self._inputClosed = False
        self._transfer = None
        self._retrieved = None
        self._deleting = None
        self._updating = False
        self.utf8 = False
        self._receiving = False
        # LineOnlyReceiver's own, which it sets at the first data received.
        self._buffer = b""

    # Connection events

    def connectionMade(self) -> None:
        self.address = _addressOf(self.transport.getPeer())
        self.record = SessionRecord(ip=self.address, started=self._clock().seconds())
        refusal = self.factory.connections.admit(self.address)
        if refusal is not None:
            self._send(replies.err(refusal, "SYS/TEMP"))
            self._hangUp("too-many-connections")
            return
        self._counted = True
        self._socket = socketOf(self.transport)
        _setNoDelay(self.transport)
        # Before login a client gets little time; the RFC 1939 ten-minute
        # autologout is for logged-in sessions.
        self.setTimeout(self.factory.limits.loginTimeout)
        greeting = "POP3 server ready"
        if self.factory.apopEnabled():
            self.challenge = makeChallenge()
            greeting += " " + self.challenge.decode("ascii")
        self._send(replies.ok(greeting))

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._lost = True
        self.setTimeout(None)
        if self._transaction is not None:
            # Gone before UPDATE (no QUIT, or before the deletions began),
            # or hung up on (_hangUp, which also stops in State.UPDATE):
            # nothing marked with DELE was removed.
            txn = self._transaction
            quitting = self.state is State.UPDATE and self.record.reason == "quit"
            self.record.left, self.record.leftBytes = txn.stat() if quitting else txn.whole()
        if self.record.reason == "disconnected" and self.factory.stopping:
            self.record.reason = "shutdown"  # cut by the server, not the client
        ended = self._clock().seconds()
        if self._deleting is None:
            self.record.end(ended)
        if self._counted:
            self._counted = False
            self.factory.connections.release(self.address)
        self._queue.clear()
        if self._turn is not None:
            self._turn.cancel()
        if self._transfer is not None:
            self._transfer.stopProducing()
        if self._deleting is not None:
            # Release the lock only once the deletions are over, so the next
            # session never lists a message that is being removed; and
            # write the audit line then, when it knows what they removed.
            def over(_: object) -> None:
                self._release()
                self.record.end(ended)
                self._updateOver()

            self._deleting.addBoth(over)
        else:
            self._release()
            self._updateOver()

    # The inactivity timer

    def setTimeout(self, seconds: float | None) -> None:
        """
        Close the session after C{seconds} without a command line or any
        progress sending a message; never if L{None}.
        """
        if self._timeout is not None:
            if seconds is not None and self._timeout.extend(seconds):
                return
            self._timeout.cancel()
        if seconds is not None:
            self._timeout = self.factory.timeouts.start(seconds, self.timeoutConnection)
        else:
            self._timeout = None

    def resetTimeout(self) -> None:
        """
        Start the inactivity timer again.
        """
        if self._timeout is not None:
            self._timeout.restart()

    def timeoutConnection(self) -> None:
        # RFC 1939 section 3: on autologout the session does not enter
        # UPDATE; close "without removing any messages or sending any
        # response".  Abort rather than lose: a client that stopped reading
        # would otherwise keep the connection open by not draining the buffer.
        if self.state is not State.UPDATE:
            # (In UPDATE the QUIT, or the hang-up, stays the reason.)
            self.record.reason = "stalled" if self._transfer is not None else "timeout"
        if self._transfer is not None:
            self._log.info("The client stopped reading the reply for too long; closing")
        else:
            self._log.info("Autologout timer expired; closing")
        self._abortNow()

    def lineLengthExceeded(self, line: bytes) -> None:
        # Answer in turn, after whatever is queued or being sent (a reply in
        # the middle of a RETR would corrupt the message), and read nothing
        # more from this client.  (Behind STLS in the same read it is
        # dropped with the rest of that read: dataReceived.)
        if self._tooLong or self._discardInput:
            return
        self._tooLong = True
        if not self._readingPaused:
            self._readingPaused = True
            self.transport.pauseProducing()
        self._queue.append(_LINE_TOO_LONG)
        if not self._busy:
            self._drain()

    # Line handling

    def dataReceived(self, data: bytes) -> None:
        self._receiving = True
        try:
            super().dataReceived(data)
        finally:
            self._receiving = False
        if self._discardInput:
            # RFC 2595 section 4 / RFC 8314 section 4.1 (the STARTTLS
            # command-injection class): whatever arrived in clear after STLS
            # in the same read is dropped, partial line included.
            self._discardInput = False
            self._buffer = b""

    def lineReceived(self, line: bytes) -> None:
        if self.state is State.UPDATE or self._lost or self._tooLong or self._discardInput:
            return
        if self.state is State.TRANSACTION:
            # The autologout counts from the last command (RFC 1939 section
            # 3); the login timeout from the connection, so that commands
            # that are no login (CAPA, a cancelled AUTH) cannot keep a
            # connection that never logs in.
            self.resetTimeout()
        if self._busy or self._queue:
            self._queue.append(line)
            if len(self._queue) >= MAX_QUEUED_LINES and not self._readingPaused:
                self._readingPaused = True
                self.transport.pauseProducing()
            return
        self._run(line)

    def _run(self, line: bytes) -> None:
        self._execute(line)
        self._holdForOutput()

    def _execute(self, line: bytes) -> None:
        if line is _LINE_TOO_LONG:
            self._send(replies.err("Line too long"))
            self._hangUp("line-too-long")
            return
        if self._sasl is None and len(line) > type(self).MAX_LENGTH:
            # Read while a SASL exchange allowed longer lines, but it is a
            # command: the RFC 2449 limit holds whenever it is processed.
            self._execute(_LINE_TOO_LONG)
            return
        if line.endswith(b"\r"):
            line = line[:-1]
        try:
            # In a SASL exchange every line is the client's response.
            result = self._saslResponse(line) if self._sasl is not None else self._command(line)
        except POP3Error as e:
            self._endSASL()
            self._send(replies.err(e.text, e.code))
            if isinstance(e, CommandError | SASLError | CleartextRefused):
                self._badCommand()
            return
        except Exception:
            # As from a command that answers later: raised into the
            # transport, it dropped the connection without a reply.
            self._serverFault(Failure())
            return
        if result is not None:
            # Later lines wait in the queue until this answer is complete.
            self._busy = True
            result.addErrback(self._serverFault)
            result.addBoth(self._commandDone)

    def _badCommand(self) -> None:
        # Unknown or malformed commands, malformed or cancelled SASL
        # exchanges and passwords refused in clear (none of them failed
        # logins): each was answered, and a client that sends nothing else
        # is closed.
        self._badCommands += 1
        if self._badCommands >= self.factory.limits.maxBadCommands and not self._lost:
            self._send(replies.err("Too many bad commands"))
            self._hangUp("bad-commands")

    def _command(self, line: bytes) -> Deferred[Any] | None:
        keyword, rest = splitKeyword(line)
        if keyword not in LEGAL[self.state]:
            if keyword in _LOGIN_COMMANDS:
                raise CommandError("Already logged in")
            raise CommandError("Command not valid in this state")
        return self._handlers[keyword](self, parseArguments(keyword, rest))

    def _commandDone(self, _: object) -> None:
        self._busy = False
        self._holdForOutput()
        self._drain()

    def _holdForOutput(self) -> None:
        """
        After a command: if the socket has not taken more of the replies
        than the transport's buffer size, run nothing more (the session is
        busy) until it has taken them all (L{popserv.backlog}).  A client
        that sends commands and reads nothing then costs the server a reply
        and a queue of lines, not all the replies it asks for.
        """
        socket = self._socket
        # After nearly every command the socket took it all: that first.
        if socket is None or unsent(socket) <= socket.bufferSize:
            return
        if self._busy or self._lost or self.state is State.UPDATE:
            return
        if whenSent(socket, self._outputSent):
            self._busy = True

    def _outputSent(self) -> None:
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
                self._run(self._queue.pop(0))
        finally:
            self._draining = False
        if self._readingPaused and not self._tooLong and len(self._queue) < MAX_QUEUED_LINES // 2:
            self._readingPaused = False
            if not self._lost and not self._inputClosed:
                self.transport.resumeProducing()
        self._closeWhenAnswered()

    # The client's half-close

    def readConnectionLost(self) -> None:
        """
        The client shut its sending side (C{printf ... | nc -N}, a script
        that sends its commands and reads): it sends nothing more, and
        still reads.  Its commands are answered, in order, and then the
        connection closed; a QUIT among them is a QUIT (RFC 1939 section
        6), as the server received it in a live session.  (Plain TCP only:
        under TLS or a PROXY header the end of input ends the session.)
        """
        self._inputClosed = True
        self._buffer = b""  # a partial line that can never be ended
        self._closeWhenAnswered()

    def writeConnectionLost(self) -> None:
        """
        Nothing: popserv never shuts its own sending side alone.
        """

    def _closeWhenAnswered(self) -> None:
        # After a half-close: once every command is answered, unless QUIT
        # (State.UPDATE) already closes, or closes after its deletions.
        if (
            self._inputClosed
            and not (self._busy or self._queue or self._lost)
            and self._transfer is None
            and self.state is not State.UPDATE
        ):
            self.transport.loseConnection()

    def _serverFault(self, failure: Failure) -> None:
        """
        Anything unexpected: log it whole, tell the client nothing about it.
        """
        if failure.check(TransferAborted):
            # The transport stops its producer when the connection is lost,
            # before it calls connectionLost: the session is over now.  A
            # DELE and QUIT pipelined behind the cut reply must not run in
            # between (RFC 1939 section 6: a session that ends without a
            # QUIT it answered removes nothing).
            self._lost = True
            return
        transfer = self._transfer
        if transfer is not None and failure.check(POP3Error):
            e = failure.value
            assert isinstance(e, POP3Error)
            if transfer.sent == 0:
                # Refused before the first octet of the response left (a
                # whole() or a first read that raised MessageUnavailable):
                # the reply can still be an -ERR, as when opening it failed.
                # (A message shorter than listed is no POP3Error: it is
                # dropped as a fault, ShorterThanListed says why.)
                self._log.warn("Message unavailable: {error}", error=e.text)
                self._transferDone(transfer)
                self._send(replies.err(e.text, e.code))
                return
            # The store's reader refused mid-message, as its contract lets
            # it (MessageUnavailable: another program removed the file).
            # Not a fault; but the response cannot be finished.
            self._log.warn(
                "Message unavailable in the middle of sending it: {error}; closing",
                error=failure.getErrorMessage(),
            )
            self._abortCut()
            return
        self._log.failure("Server fault in a POP3 command", failure)
        if self._transfer is not None or self._lost:
            self._abortCut()
            return
        # In an AUTH exchange (a mechanism's fault), the -ERR ends it (RFC
        # 5034 section 4): the client's next line is a command.
        self._endSASL()
        self._send(replies.err("Internal server error", "SYS/TEMP"))

    def _abortCut(self) -> None:
        """
        A multi-line response was cut: it cannot be taken back, so the
        connection goes (L{_abortNow}).
        """
        self._transfer = None
        self._abortNow()

    def _abortNow(self) -> None:
        """
        Abort the connection, and end the session now: abortConnection
        reports the loss only on the reactor's next turn, and a DELE and
        QUIT queued behind a command that answers meanwhile (the client's
        pipeline behind a cut reply, or behind the autologout) must not run
        before it.
        """
        self._queue.clear()
        if not self._lost:
            self._lost = True
            self.transport.abortConnection()

    def _send(self, data: bytes) -> None:
        # At the end of the reactor's turn, with the replies to every other
        # client that turn made: on a busy server that wakes each client
        # once a turn rather than once a reply.  Sending each reply at once
        # (L{popserv.sendnow}, which messages use) did fewer instructions
        # but cost more CPU time in login churn, in the wake-ups
        # (docs/performance.rst).  L{writeReply} does it without the two
        # epoll_ctl calls of the transport's own write().
        if not self._lost:
            writeReply(self.transport, data)

    def handshakeCompleted(self) -> None:
        """
        The TLS handshake is over (implicit TLS, or after STLS): the audit
        line records its version, whether or not the session logs in.
        """
        connection = self._tlsConnection()
        if connection is not None:
            self.record.tls = connection.get_protocol_version_name()

    # What the connection is

    def isEncrypted(self) -> bool:
        """
        Whether TLS protects this connection (implicit TLS, or after STLS).
        """
        return ISSLTransport.providedBy(self.transport)

    def isLocal(self) -> bool:
        """
        Whether the client is on this machine: loopback or a UNIX socket,
        where a password in clear crosses no network.
        """
        peer = self.transport.getPeer()
        if isinstance(peer, UNIXAddress):
            return True
        if isinstance(peer, IPv4Address):
            return peer.host.startswith("127.")
        if isinstance(peer, IPv6Address):
            return peer.host in ("::1", "0:0:0:0:0:0:0:1") or peer.host.startswith("::ffff:127.")
        return False

    def plaintextAllowed(self) -> bool:
        """
        Whether a password may be sent in clear: over TLS, from this
        machine unless the operator refused it there too, or anywhere if
        the operator allowed it.
        """
        factory = self.factory
        return (
            factory.allowCleartext
            or self.isEncrypted()
            or (factory.localCleartext and self.isLocal())
        )

    def _tlsConnection(self) -> Any:
        return self.transport.getHandle() if self.isEncrypted() else None

    def _saslContext(self) -> SASLContext:
        connection = self._tlsConnection()
        return SASLContext(
            secure=self.isEncrypted(),
            channelBinding=lambda kind: channelBinding(connection, kind),
            peerCertificate=self._peerCertificate(),
        )

    def _peerCertificate(self) -> Any:
        # Only a certificate the TLS layer verified against the client CA
        # reaches here: with a client CA configured, OpenSSL fails the
        # handshake for one that does not verify.
        if not self.isEncrypted():
            return None
        try:
            certificate = self.transport.getPeerCertificate()
        except Exception:
            return None
        return certificate.to_cryptography() if certificate is not None else None

    def offeredMechanisms(self) -> list[IMechanismFactory]:
        """
        The SASL mechanisms this connection may use now: some checker can
        verify what they produce, the connection has what they need, and
        plaintext ones only where plaintext is allowed.
        """
        portal = self.factory.portal
        context = self._saslContext()
        plaintext = self.plaintextAllowed()
        return [
            m
            for m in self.factory.mechanisms
            if (plaintext or not m.plaintext)
            and any(portalCanVerify(portal, i) for i in m.credentialInterfaces)
            and m.available(context)
        ]

    def _passwordsCheckable(self) -> bool:
        from twisted.cred.credentials import IUsernamePassword

        return portalCanVerify(self.factory.portal, IUsernamePassword)

    def _stlsAvailable(self) -> bool:
        return (
            self.factory.tls is not None
            and not self.isEncrypted()
            and ITLSTransport.providedBy(self.transport)
        )

    # Any state: CAPA (RFC 2449 section 5)

    def _doCAPA(self, command: Command) -> None:
        facts = Facts(
            state=self.state,
            plaintextAllowed=self.plaintextAllowed() and self._passwordsCheckable(),
            stlsAvailable=self._stlsAvailable(),
            mechanisms=[m.name for m in self.offeredMechanisms()],
            implementation=self.factory.implementation,
            loginDelay=self.factory.policy.loginDelay(self.user),
            expire=self.factory.policy.expire(self.user),
        )
        lines = [line.encode("ascii") for line in capabilities(facts)]
        self._send(replies.multiline(replies.ok("Capability list follows"), lines))

    # AUTHORIZATION state: STLS (RFC 2595 section 4), UTF8 (RFC 6856)

    def _doSTLS(self, command: Command) -> None:
        if self.isEncrypted():
            raise CommandError("Command not permitted when TLS active")
        if not self._stlsAvailable():
            raise CommandError("STLS is not available on this server")
        self._send(replies.ok("Begin TLS negotiation"))
        # Forget everything learnt in clear (RFC 2595 section 4): a pending
        # USER, UTF8 (which a man in the middle could have sent for the
        # client), and anything sent behind STLS.
        self._user = None
        self.utf8 = False
        self._queue.clear()
        # A line too long sent behind it went with the queue: read again
        # (_drain resumes reading once this command is done), for TLS.
        self._tooLong = False
        if self._receiving:
            # Run as its line was read: the rest of that read, whole lines
            # and a partial one, is dropped once the read is handled.
            self._discardInput = True
        else:
            # Run later, from the queue (behind a login that took its
            # time): whatever came after it is in the queue, cleared, or a
            # partial line; the next read is the client's first in TLS.
            self._buffer = b""
        if self._inputClosed:
            # Run from the queue after the client shut its sending side: it
            # can never send its part of a handshake.  The replies written
            # in clear are delivered, and the connection closed cleanly
            # (_closeWhenAnswered), rather than reset by a TLS layer that
            # never started.
            return
        self.transport.startTLS(self.factory.tls)

    def _doUTF8(self, command: Command) -> None:
        self.utf8 = True
        self._send(replies.ok("UTF8 enabled"))

    # AUTHORIZATION state: SASL (RFC 5034)

    def _doAUTH(self, command: Command) -> Deferred[None] | None:
        offered = self.offeredMechanisms()
        if not command.args:
            # RFC 1734's listing, which Outlook still asks for.
            names = [m.name.encode("ascii") for m in offered]
            self._send(replies.multiline(replies.ok("Methods supported"), names))
            return None
        name = command.args[0]
        assert isinstance(name, bytes)
        factory = next((m for m in offered if m.name.encode("ascii") == name), None)
        if factory is None:
            known = any(m.name.encode("ascii") == name for m in self.factory.mechanisms)
            if known and not self.plaintextAllowed():
                raise CleartextRefused()
            raise CommandError("Unsupported authentication mechanism")
        initial: bytes | None = None
        if len(command.args) == 2:
            response = command.args[1]
            assert isinstance(response, bytes)
            # RFC 5034 section 4: "=" is an empty initial response.
            initial = b"" if response == b"=" else _decodeBase64(response)
        self._user = None
        self._sasl = factory(self._saslContext())
        self.MAX_LENGTH = MAX_SASL_LINE
        return self._saslStep(maybeDeferred(self._sasl.start, initial))

    def _saslResponse(self, line: bytes) -> Deferred[None] | None:
        if self._saslFinal:
            # The client's answer to the server's final data must be empty
            # (RFC 5034 section 4); only then is the login complete.  A
            # client that cancels here ("*": say, a SCRAM client that could
            # not verify the server's signature) is not logged in, and the
            # maildrop opened for it is given back.
            self._saslFinal = False
            self._endSASL()
            if line:
                self._release()
                self.user = None
                if line == b"*":
                    raise SASLCancelled()
                raise SASLError("Unexpected data after authentication")
            return self._open().addErrback(self._loginFailed)
        if line == b"*":
            raise SASLCancelled()
        assert self._sasl is not None
        return self._saslStep(maybeDeferred(self._sasl.respond, _decodeBase64(line)))

    def _saslStep(self, d: Deferred[Any]) -> Deferred[None]:
        mechanism = self._sasl

        def stepped(step: Challenge | Outcome) -> Any:
            if isinstance(step, Challenge):
                self._send(b"+ " + base64.b64encode(step.data) + b"\r\n")
                return None
            # The client's SASL responses are over: back to the command limit.
            self.MAX_LENGTH = type(self).MAX_LENGTH
            assert mechanism is not None
            return self._login(step.credentials, mechanism, mechanism.name)

        def refused(failure: Failure) -> None:
            failure.trap(SASLError)  # a fault: _serverFault answers it
            self._endSASL()
            e = failure.value
            assert isinstance(e, SASLError)
            self._send(replies.err(e.text, e.code))
            self._badCommand()

        return d.addCallbacks(stepped, refused)

    def _endSASL(self) -> None:
        if self._sasl is None and not self._saslFinal:
            return  # none began: leave the class's values (see __init__)
        self._sasl = None
        self._saslFinal = False
        self.MAX_LENGTH = type(self).MAX_LENGTH

    # AUTHORIZATION state (RFC 1939 section 4, 7)

    def _doUSER(self, command: Command) -> None:
        if not self.plaintextAllowed():
            raise CleartextRefused()
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
        return self._login(UsernamePassword(user, password), mechanismName="USER")

    def _doAPOP(self, command: Command) -> Deferred[None] | None:
        if self.challenge is None:
            raise CommandError("APOP is not available on this server")
        name, digest = command.args
        assert isinstance(name, bytes) and isinstance(digest, bytes)
        if len(digest) != 32 or not _isHex(digest):
            raise CommandError("Syntax: APOP name digest (32 hex digits)")
        self._user = None
        return self._login(APOPCredentials(self.challenge, name, digest), mechanismName="APOP")

    def _login(
        self,
        credentials: ICredentials,
        mechanism: IMechanism | None = None,
        mechanismName: str = "-",
    ) -> Deferred[Any]:
        self._attempt = (_attemptedName(credentials), mechanismName)
        # The penalty and the queue come before the check (LoginGate).
        self._turn = turn = self.factory.gate.enter(self.address)
        turn.addCallback(self._check, credentials, mechanism)
        turn.addErrback(self._loginFailed)
        return turn

    def _check(
        self,
        release: Callable[[], None],
        credentials: ICredentials,
        mechanism: IMechanism | None,
    ) -> Deferred[Any] | None:
        self._turn = None
        if self._lost:
            release()
            return None
        # The realm calls release once the checker has accepted, so opening
        # the maildrop does not hold a turn; a failure releases here.
        mind = LoginMind(release)

        def checked(result: Any) -> Any:
            release()
            if isinstance(result, Failure) and mind.user is not None:
                # The maildrop did not open ([IN-USE], [SYS/TEMP]).
                self._recordRefused(mind.user)
            return result

        d: Deferred[Any] = self.factory.portal.login(credentials, mind, IMaildrop)
        return d.addBoth(checked).addCallback(self._loggedIn, mechanism, mind)

    def _loggedIn(
        self,
        result: tuple[object, IMaildrop, Callable[[], None]],
        mechanism: IMechanism | None,
        mind: LoginMind,
    ) -> Any:
        _, maildrop, logout = result
        if self._lost:
            logout()
            return None
        # A session holds one maildrop: every way back to AUTHORIZATION gave
        # its maildrop back, or this one's logout would never be called.
        assert self._logout is None
        self._maildrop, self._logout = maildrop, logout
        # A realm of the embedder's own that does not tell the mind (it
        # opens the maildrop itself, as twisted.cred's contract allows) has
        # logged in the name the client gave: per-user policy and the audit
        # line go by that, not by "", which made every user's login hold
        # up every other's by the LOGIN-DELAY.
        self.user = mind.user if mind.user is not None else self._attempt[0]
        final = mechanism.serverFinal() if mechanism is not None else None
        if final is not None:
            # RFC 5034 section 4: additional data with success goes out as
            # one more challenge; +OK follows the client's empty answer.
            self._saslFinal = True
            self._send(b"+ " + base64.b64encode(final) + b"\r\n")
            return None
        self._endSASL()
        return self._open()

    def _recordRefused(self, user: str) -> None:
        """
        A login whose credentials were accepted was refused all the same
        ([IN-USE], [LOGIN-DELAY]): the audit line names whose it was.
        """
        self.record.user, self.record.mechanism = user, self._attempt[1]

    def _open(self) -> Deferred[None]:
        # RFC 2449 section 8.1.2: LOGIN-DELAY is judged only after the
        # credentials were verified, so it tells nothing to a guesser.
        return self.factory.policy.checkLogin(self.user or "").addCallback(self._allowed)

    def _allowed(self, allowed: bool) -> Deferred[None] | None:
        if not allowed:
            self._release()
            self._recordRefused(self.user or "")
            self.user = None
            self._send(replies.err("Minimum time between logins not yet passed", "LOGIN-DELAY"))
            return None
        if self._lost:
            return None
        assert self._maildrop is not None
        return maybeDeferred(self._maildrop.listMessages).addCallback(self._listed)

    def _listed(self, messages: Sequence[MessageInfo]) -> Deferred[None] | None:
        if self._lost:
            return None
        if needsCheck(self._maildrop):
            # Another store's bug must not reach the wire (a unique-id with
            # CRLF in a UIDL listing): the login fails as a server fault.
            checkListing(messages)
        if self.utf8:
            self._ready(messages)
            return None
        # RFC 6856: this client did not enable UTF8, so it gets UTF-8 header
        # fields downgraded, and must be told those sizes.  Whole columns,
        # read in C: for 100,000 messages a Python step per message (or a
        # new MessageInfo for each) took longer than listing the Maildir.
        # A MessageList's own column is only read, never copied.  An array of
        # numbers (the Maildir store's column) holds no None, and asking it
        # would make an int of every item: 2.7 ms for 100,000 messages.
        sizes = column(messages, "downgradedSize")
        if not isinstance(sizes, array) and None in sizes:
            return self._readHeaderSizes(messages, list(sizes)).addCallback(self._sized, messages)
        self._sized(sizes, messages)
        return None

    def _sized(self, sizes: Sequence[int], messages: Sequence[MessageInfo]) -> None:
        # Usually every header is ASCII: then the stored sizes do.  (Columns
        # of different kinds, a list and an array, never compare equal: the
        # session then keeps its own sizes, which are as right.)
        self._ready(messages, None if sizes == column(messages, "size") else sizes)

    @inlineCallbacks
    def _readHeaderSizes(
        self, messages: Sequence[MessageInfo], sizes: list[Any]
    ) -> Generator[Deferred[int], int, list[int]]:
        """
        Fill in C{sizes}, by index, where the store did not give the size a
        client without UTF8 sees (L{None}): read each such message's header,
        one message at a time.
        """
        # A loop, not callbacks that call themselves: a closure that refers
        # to itself is a reference cycle, and it held each ended session,
        # with its listing, until the garbage collector next ran.
        for index in [i for i, size in enumerate(sizes) if size is None]:
            if self._lost or self._maildrop is None:
                break  # the session ended while sizing; _ready ignores it
            sizes[index] = messages[index].size + (yield self._headerDelta(index))
        return sizes

    @inlineCallbacks
    def _headerDelta(self, index: int) -> Generator[Deferred[Any], Any, int]:
        """
        How much larger message C{index} is for a client without UTF8: read
        as much of its start as holds its header.
        """
        assert self._maildrop is not None
        try:
            reader: IMessageReader = yield maybeDeferred(self._maildrop.openMessage, index)
            try:
                prefix = bytearray()
                while True:
                    data: bytes = yield reader.read(CHUNK_SIZE)
                    prefix.extend(data)
                    if not (data and prefixNeeded(bytes(prefix))):
                        return downgradeDelta(bytes(prefix))
            finally:
                reader.close()
        except POP3Error:
            # Listed with its stored size; RETR will say it is unavailable.
            return 0

    def _ready(self, messages: Sequence[MessageInfo], sizes: Sequence[int] | None = None) -> None:
        if self._lost:
            return
        # Before the state changes: a listing the session cannot take in (a
        # store's bug) then fails the login, in the AUTHORIZATION state.
        transaction = Transaction(messages, sizes)
        count, octets = transaction.stat()
        self._transaction = transaction
        self.state = State.TRANSACTION
        self.record.user = self.user or ""
        self.record.mechanism = self._attempt[1]
        # Logged in for as long as the client likes: keep nothing that only
        # the AUTHORIZATION state needs (an idle session is mostly this).
        self._attempt = _NO_ATTEMPT
        self.challenge = None
        self.setTimeout(self.factory.timeout)
        self.factory.penalties.succeeded(self.address)
        self._send(replies.ok(f"Logged in, {count} messages ({octets} octets)"))

    def _loginFailed(self, failure: Failure) -> Any:
        if failure.check(CancelledError) and self._lost:
            return None  # the session ended while the attempt waited
        self._release()
        self._endSASL()
        if self.user is not None:
            # Logged in, but the listing failed: name whose, as for a
            # maildrop that did not open.
            self._recordRefused(self.user)
        self.user = None
        if failure.check(UnauthorizedLogin, UnhandledCredentials):
            return self._authFailed()
        error = failure.check(POP3Error)
        if error is not None:
            e = failure.value
            assert isinstance(e, POP3Error)
            self._send(replies.err(e.text, e.code))
            if isinstance(e, MaildropInUse) and not self._lost:
                # RFC 1939 section 4 lets the server close after a failed
                # lock; a client that stays would only poll the lock.
                self._hangUp("in-use")
            return None
        self._log.failure("Login failed with a server fault", failure)
        self._send(replies.err("Login failed, try again later", "SYS/TEMP"))
        return None

    def _hangUp(self, reason: str) -> None:
        """
        End the session after the replies already written, for C{reason}
        (the audit event's): nothing more is read or answered, and it does
        not enter UPDATE, so nothing is deleted.
        """
        self.record.reason = reason
        self.state = State.UPDATE
        self._queue.clear()
        self.transport.loseConnection()

    def _authFailed(self) -> None:
        """
        Answer a failed login (the address's next attempt will wait its
        penalty), and close the session after too many failures.
        """
        audit.authFailed(self._attempt[0], self.address, self._attempt[1])
        self._authFailures += 1
        self.factory.penalties.failed(self.address)
        self._send(replies.err("Authentication failed", "AUTH"))
        if self._authFailures >= self.factory.limits.maxAuthFailures and not self._lost:
            self._hangUp("auth-failures")

    def _clock(self) -> IReactorTime:
        return reactorTime(self.factory.clock)

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
            self._send(replies.ok(f"{number} {txn.size(number)}"))
            return
        count, octets = txn.stat()
        first = replies.ok(f"{count} messages ({octets} octets)")
        self._send(replies.multiline(first, _listing(txn, txn.sizes())))

    def _doUIDL(self, command: Command) -> None:
        txn = self._txn()
        if command.args:
            (number,) = command.args
            assert isinstance(number, int)
            self._send(replies.ok(f"{number} {txn.info(number).uid}"))
            return
        lines = _listing(txn, txn.uids())
        self._send(replies.multiline(replies.ok("Unique-ID listing follows"), lines))

    def _doRETR(self, command: Command) -> Deferred[None]:
        (number,) = command.args
        assert isinstance(number, int)
        size = self._txn().size(number)
        d = self._send_message(number, replies.ok(f"{size} octets"), None, size)
        index = number - 1

        def retrieved(sent: int | None) -> None:
            # For EXPIRE: a message counts as retrieved once RETR sent it all.
            if sent is not None:
                if self._retrieved is None:
                    self._retrieved = set()
                self._retrieved.add(index)
                self.record.retr += 1
                self.record.retrBytes += size

        return d.addCallback(retrieved)

    def _doTOP(self, command: Command) -> Deferred[None]:
        number, lines = command.args
        assert isinstance(number, int) and isinstance(lines, int)
        self._txn().info(number)
        d = self._send_message(number, replies.ok("Top of message follows"), lines)

        def counted(sent: int | None) -> None:
            if sent is not None:
                self.record.top += 1
                self.record.topBytes += sent

        return d.addCallback(counted)

    def _send_message(
        self, number: int, status: bytes, bodyLines: int | None, size: int | None = None
    ) -> Deferred[int | None]:
        """
        Send message C{number} after C{status}; the Deferred fires with the
        octets sent once the whole message went out, or L{None} if it could
        not be sent.

        @param size: the size the listing gave the whole message (RETR),
            which the store's reader must give (L{MessageTransfer}).
        """
        index = self._txn().index(number)
        assert self._maildrop is not None
        d: Deferred[IMessageReader] = maybeDeferred(self._maildrop.openMessage, index)

        def opened(reader: IMessageReader) -> Deferred[int | None] | None:
            if self._lost:
                reader.close()
                return None
            transfer = self._transfer = MessageTransfer(
                self.transport,
                reader,
                MessageEncoder(bodyLines, downgrade=not self.utf8),
                prefix=status,
                onProgress=self.resetTimeout,
                expected=size,
            )
            done = transfer.start()
            if not done.called:
                # Waiting for the client to read or for the store: the timer
                # now measures that wait, and a transfer that makes no
                # progress ends at the stall timeout.  (One written whole at
                # once, as most are, never changes the timer.)
                self.setTimeout(self.factory.limits.stallTimeout)
            return done.addCallback(lambda _: self._transferDone(transfer))

        def unavailable(failure: Failure) -> None:
            failure.trap(POP3Error)
            e = failure.value
            assert isinstance(e, POP3Error)
            self._send(replies.err(e.text, e.code))

        return d.addCallbacks(opened, unavailable)

    def _transferDone(self, transfer: MessageTransfer) -> int:
        self._transfer = None
        # Back to the autologout: in place (Timeout.extend) whether the
        # timer was on it all along or on the shorter stall timeout.
        self.setTimeout(self.factory.timeout)
        return transfer.sent

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
        self.record.reason = "quit"
        if self.state is State.AUTHORIZATION:
            self.state = State.UPDATE
            self._send(replies.ok("Bye"))
            self.transport.loseConnection()
            return None
        txn = self._txn()
        self.state = State.UPDATE
        # Until its reply has left, a server that stops waits for it
        # (popserv.updates): the reply says what was removed.
        self._updating = True
        self.factory.updates.begin()
        self._queue.clear()
        # From here the session is in UPDATE (RFC 1939 section 6): its
        # deletions are applied even if the client hangs up before the
        # reply, so the maildrop is held until they are over (connectionLost
        # waits for _deleting), however long EXPIRE's history takes to read.
        policy, user = self.factory.policy, self.user or ""
        if not policy.expires(user):
            # The deletions are the DELE marks alone, known now: no
            # Deferred to wait for (each costs a login's worth of churn).
            try:
                return self._update(set(), txn)
            except Exception:
                self._updateFailed(Failure())
                return None
        expiring = policy.expired(user, txn.uids, self._retrieved or set())
        expiring.addErrback(self._expiryFailed)
        d: Deferred[None] = expiring.addCallback(self._update, txn)
        d.addErrback(self._updateFailed)
        self._deleting = d

        def over(result: None) -> None:
            self._deleting = None
            return result

        return d.addBoth(over)

    def _updateOver(self) -> None:
        if self._updating:
            self._updating = False
            self.factory.updates.end()

    def _bye(self) -> None:
        """
        Close the connection once the reply to QUIT, written, has gone (RFC
        1939 section 6), and leave UPDATE once it has left the server.  On
        plain TCP the connection closes as soon as it has, and connectionLost
        says so.  Over TLS it closes only once the client's close_notify has
        come, which a client that keeps its socket open never sends: there,
        once the socket has taken the reply.
        """
        if not self._lost:
            self.transport.loseConnection()
        socket = self._socket
        tcp = plainTCP(self.transport)
        if self._lost or socket is None or (tcp is not None and not tcp.TLS):
            # Gone, plain TCP (the PROXY header reader's too), or a
            # transport whose buffer cannot be read (a test's): connectionLost
            # ends it.
            return
        if not unsent(socket):
            self._updateOver()
        else:
            # A producer (none after QUIT): at connectionLost, as above.
            whenSent(socket, self._updateOver)

    def _expiryFailed(self, failure: Failure) -> set[int]:
        # The history of retrievals could not be read or written: EXPIRE
        # removes nothing this time (it will next time), and what the
        # client deleted is still deleted.
        self._log.failure(
            "EXPIRE's history failed: only the messages marked with DELE are removed", failure
        )
        return set()

    def _updateFailed(self, failure: Failure) -> None:
        # Never left in UPDATE, holding the maildrop until the autologout.
        self._log.failure("Applying the deletions failed", failure)
        # What was removed is not known: the audit line counts nothing
        # removed (dele=0), and so everything left.
        self._releaseBeforeBye(self._transaction.whole() if self._transaction else None)
        self._send(replies.err("Some deleted messages not removed", "SYS/TEMP"))
        self._bye()

    def _update(self, expired: set[int], txn: Transaction) -> Deferred[None] | None:
        """
        Apply the deletions (RFC 1939 section 6): the messages marked with
        DELE, and those EXPIRE removes.
        """
        indexes = sorted(set(txn.deletedIndexes()) | expired)
        left = len(txn.messages()) - len(indexes)
        if not indexes:
            self._releaseBeforeBye()
            self._send(replies.ok(f"Bye, {left} messages left"))
            self._bye()
            return None
        assert self._maildrop is not None
        d: Deferred[None] = maybeDeferred(self._maildrop.deleteMessages, indexes)
        self._deleting = d

        def deleted(_: None) -> None:
            self.record.dele = len(indexes)
            self._releaseBeforeBye(txn.without(indexes))
            self._send(replies.ok(f"Bye, {len(indexes)} deleted, {left} left"))

        def failed(failure: Failure) -> None:
            e = failure.value
            if not isinstance(e, DeletionFailed):
                self._updateFailed(failure)
                return
            notDeleted = set(e.notDeleted)
            removed = [i for i in indexes if i not in notDeleted]
            self.record.dele = len(removed)
            self._releaseBeforeBye(txn.without(removed))
            self._send(replies.err(e.text, e.code))

        def close(_: None) -> None:
            self._deleting = None
            self._bye()

        return d.addCallbacks(deleted, failed).addBoth(close)

    def _releaseBeforeBye(self, left: tuple[int, int] | None = None) -> None:
        """
        Give the maildrop back before the reply to QUIT.

        RFC 1939 section 6 has the server reply, "then" release its lock and
        close.  Released after the reply, the lock went only once the
        connection had closed and the session's audit line was written, and
        a client that logged in again the moment it read the reply (to this
        server, or to another serving the same Maildirs) could be told
        [IN-USE].  Nothing else can tell the two orders apart.

        @param left: what the deletions left (messages, octets), for the
            audit line; else what the DELE marks leave.
        """
        if self._transaction is not None:
            self.record.left, self.record.leftBytes = left or self._transaction.stat()
        self._release()

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
        "CAPA": _doCAPA,
        "STLS": _doSTLS,
        "AUTH": _doAUTH,
        "UTF8": _doUTF8,
    }


def _listing(txn: Transaction, values: Sequence[object]) -> list[bytes]:
    """
    The body of a LIST or UIDL listing: "NUMBER VALUE" for every message not
    marked as deleted, as one CRLF-separated block (or none).

    @param values: the value of every message of the session, by index.
    """
    numbers: Sequence[int] = range(1, len(values) + 1)
    deleted = txn.deletedIndexes()
    if deleted:
        gone = set(deleted)
        numbers = [n for n in numbers if n - 1 not in gone]
        values = [values[n - 1] for n in numbers]
    if not numbers:
        return []
    # One printf-style format of a template of every line, and one encode:
    # for 100,000 messages 16 ms, where a str.format per line (called from
    # C) and a join took 24 ms and a bytes format per line three times
    # that; a next login to them takes about 50 ms in all.
    template = "%d %s\r\n" * len(numbers)
    text = template[:-2] % tuple(chain.from_iterable(zip(numbers, values, strict=True)))
    return [text.encode("ascii")]


def _setNoDelay(transport: Any) -> None:
    """
    Turn off Nagle's algorithm where there is TCP underneath (for TLS, one
    layer down).  Every response is already written whole, so small
    segments are not a risk; with Nagle on, the short write that ends a
    message waits for the client's delayed ACK, some 40 ms per RETR.
    """
    candidate = transport
    for _ in range(4):  # through TLS and PROXY layers to the TCP connection
        if candidate is None:
            return
        if ITCPTransport.providedBy(candidate):
            candidate.setTcpNoDelay(True)
            return
        candidate = getattr(candidate, "transport", None)


def _attemptedName(credentials: ICredentials) -> str:
    """
    The user name a login attempt gives, for its audit line if it fails:
    the name it authenticates as, or, for EXTERNAL, the authorization
    identity it asks for (empty when it lets the certificate say).
    """
    name = getattr(credentials, "username", None)
    if name is None:
        name = getattr(credentials, "authzid", b"")
    return _bytesName(name)


def _bytesName(name: object) -> str:
    if isinstance(name, bytes):
        return name.decode("utf-8", "surrogateescape")
    return name if isinstance(name, str) else ""


def _addressOf(peer: IAddress) -> str:
    """
    The source address limits and penalties count by: the IP address, or
    "unix" for a UNIX socket.
    """
    host = getattr(peer, "host", None)
    return host if isinstance(host, str) else UNIX_PEER


def _decodeBase64(data: bytes) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except binascii.Error:
        raise SASLError("Invalid base64 data") from None


def _isHex(data: bytes) -> bool:
    try:
        binascii.unhexlify(data)
    except binascii.Error:
        return False
    return True


if TYPE_CHECKING:
    _ServerFactory = ServerFactory[POP3Protocol]
else:
    # Twisted's factories are generic (subscriptable at run time) only
    # from 26.4 on; setup.cfg allows older ones.
    _ServerFactory = ServerFactory


class POP3ServerFactory(_ServerFactory):
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
        *,
        tls: ReloadableTLS | None = None,
        allowCleartext: bool = False,
        localCleartext: bool = True,
        mechanisms: Sequence[IMechanismFactory] | None = None,
        implementation: str = f"popserv {__version__}",
        policy: SitePolicy | None = None,
        limits: Limits | None = None,
    ) -> None:
        """
        @param portal: authenticates logins and yields maildrops.
        @param timeout: the autologout timer in seconds (RFC 1939 section 3
            requires at least 600; less is for tests).
        @param clock: the clock for the timer; the global reactor if
            L{None}.
        @param tls: the certificate for STLS; without it STLS is not
            offered.  (Implicit TLS is the listening endpoint's business.)
        @param allowCleartext: allow passwords in clear (USER/PASS, PLAIN,
            LOGIN) on unencrypted connections from other machines.  Off by
            default: there they are refused and not advertised.
        @param localCleartext: allow them from this machine (loopback and
            UNIX sockets), where they cross no network.  On by default;
            turn it off behind a port forwarder on the same host, where
            every client looks local (RFC 2595 section 2.3: the server
            "MUST be configurable to refuse all clear-text login commands"
            without TLS).
        @param mechanisms: the SASL mechanisms to offer, strongest first;
            each is offered only where it can work.  Default: all built in.
        @param implementation: the IMPLEMENTATION capability's text.
        @param policy: LOGIN-DELAY and EXPIRE (RFC 2449); by default neither
            is announced nor enforced.
        @param limits: abuse resistance (failed-login penalty, connection
            limits, login and stall timeouts); safe defaults if L{None}.
        """
        self.portal = portal
        self.timeout = timeout
        self.clock = clock
        self.tls = tls
        if allowCleartext and not localCleartext:
            raise ValueError(
                "allowCleartext allows passwords in clear from everywhere, "
                "localCleartext=False refuses them from this machine: choose one"
            )
        self.allowCleartext = allowCleartext
        self.localCleartext = localCleartext
        if mechanisms is None:
            from popserv.scram import keySourceFromCheckers

            mechanisms = defaultMechanisms(keySourceFromCheckers(set(portal.checkers.values())))
        self.mechanisms = list(mechanisms)
        self.implementation = implementation
        self.policy = policy if policy is not None else SitePolicy()
        self.limits = limits if limits is not None else Limits()
        clockFunction = clock.seconds if clock is not None else None
        self.penalties = (
            PenaltyBox(self.limits, clockFunction) if clockFunction else PenaltyBox(self.limits)
        )
        self.gate = LoginGate(self.penalties, clock)
        self.connections = ConnectionCounter(self.limits)
        #: Every session's inactivity timer, on one reactor timer.
        self.timeouts = Timeouts(clock)
        #: The sessions in UPDATE, which the reactor's shutdown waits for
        #: (L{popserv.updates}), at most C{updateGrace} seconds.
        self.updates = SessionsInUpdate(clock)
        self.updateGrace = UPDATE_GRACE
        #: Whether the reactor's shutdown has waited for them: the sessions
        #: it cuts after are logged with reason=shutdown.
        self.stopping = False
        self._shutdownTrigger: Any = None

    def startFactory(self) -> None:
        # Called when the first listener starts: the reactor is chosen by
        # then.  (A clock that is not a reactor has no shutdown.)
        reactor = reactorTime(self.clock)
        if IReactorCore.providedBy(reactor):
            self._shutdownTrigger = reactor.addSystemEventTrigger(
                "before", "shutdown", self._shuttingDown
            )

    def stopFactory(self) -> None:
        # The last listener stopped: no shutdown of the reactor to wait in
        # (a factory no longer served must not be kept alive by it), unless
        # it is that shutdown that stopped them, and the trigger has fired.
        if self._shutdownTrigger is not None:
            reactor: Any = reactorTime(self.clock)
            reactor.removeSystemEventTrigger(self._shutdownTrigger)
            self._shutdownTrigger = None

    def _shuttingDown(self) -> Deferred[None]:
        self._shutdownTrigger = None

        def waited(_: bool) -> None:
            self.stopping = True

        return self.updates.drained(self.updateGrace).addCallback(waited)

    def apopEnabled(self) -> bool:
        """
        Whether some checker can verify APOP digests (it must know the
        plaintext password: L{IUsernameHashedPassword}), now
        (L{popserv.credentials.IOfferedCredentials}).
        """
        return portalCanVerify(self.portal, IUsernameHashedPassword)

    def buildProtocol(self, addr: IAddress | None) -> POP3Protocol:
        p = self.protocol()
        p.factory = self
        return p
