"""
Test doubles for driving POP3Protocol over an in-memory transport.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from twisted.cred.checkers import ICredentialsChecker, InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from popserv.errors import MessageUnavailable
from popserv.interfaces import MessageInfo
from popserv.memorystore import MemoryStore
from popserv.protocol import POP3Protocol, POP3ServerFactory
from popserv.realm import MaildropRealm


class Delayed:
    """
    Wraps an object so every method's Deferred fires only when the test
    calls L{fire}: the "still pending" kind of store.
    """

    def __init__(self, wrapped: Any, queue: list[tuple[Deferred[Any], Any]]) -> None:
        self._wrapped = wrapped
        self._queue = queue

    def __getattr__(self, name: str) -> Any:
        if name == "whole":
            # A reader whose reads wait holds nothing in memory.
            return lambda size: None
        attr = getattr(self._wrapped, name)
        if not callable(attr) or name == "close":
            return attr

        def call(*args: Any) -> Deferred[Any]:
            result: list[Any] = []
            maybeDeferred(attr, *args).addBoth(result.append)
            d: Deferred[Any] = Deferred()
            self._queue.append((d, result[0]))
            return d.addCallback(self._wrap)

        return call

    def _wrap(self, value: Any) -> Any:
        if hasattr(value, "read") or hasattr(value, "listMessages"):
            return Delayed(value, self._queue)
        return value


class DelayedStore:
    """
    A store over L{MemoryStore} whose every Deferred, down to message reads,
    waits for L{fireAll}/L{fireOne}.
    """

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.queue: list[tuple[Deferred[Any], Any]] = []
        self._delayed = Delayed(store, self.queue)

    def openMaildrop(self, user: str) -> Deferred[Any]:
        return self._delayed.openMaildrop(user)

    def fireOne(self) -> bool:
        if not self.queue:
            return False
        d, result = self.queue.pop(0)
        d.callback(result) if not hasattr(result, "raiseException") else d.errback(result)
        return True

    def fireAll(self, limit: int = 10_000) -> None:
        for _ in range(limit):
            if not self.fireOne():
                return
        raise AssertionError("store kept producing work")


class MaildropOver:
    """
    A maildrop that passes everything to the one it wraps: a test's
    subclass overrides what it changes.
    """

    def __init__(self, maildrop: Any) -> None:
        self._maildrop = maildrop

    def __getattr__(self, name: str) -> Any:
        return getattr(self._maildrop, name)


class VanishingReader:
    """
    A message reader whose first read gives C{first(size)} and whose later
    reads fail at once with L{MessageUnavailable}, as a store's do when
    another program removed the file while it was being sent.
    """

    def __init__(self, first: Callable[[int], bytes]) -> None:
        self._first = first
        self.reads = 0

    def read(self, size: int) -> Deferred[bytes]:
        self.reads += 1
        if self.reads > 1:
            return fail(MessageUnavailable())
        return succeed(self._first(size))

    def close(self) -> None:
        pass


class StoreOver:
    """
    A store over another (a L{MemoryStore}) whose maildrops are made into
    C{wrap(maildrop)}, a L{MaildropOver} subclass.
    """

    def __init__(self, store: MemoryStore, wrap: Callable[[Any], Any]) -> None:
        self._store = store
        self._wrap = wrap

    def openMaildrop(self, user: str) -> Any:
        return self._store.openMaildrop(user).addCallback(self._wrap)


class SizesUnknownMaildrop(MaildropOver):
    """
    A maildrop that does not say the downgraded sizes, so the protocol
    reads every header at login (RFC 6856).
    """

    def listMessages(self) -> Any:
        return self._maildrop.listMessages().addCallback(
            lambda infos: [MessageInfo(info.size, info.uid) for info in infos]
        )


class SizesUnknownStore(StoreOver):
    """
    A L{MemoryStore} whose maildrops are L{SizesUnknownMaildrop}s.
    """

    def __init__(self, store: MemoryStore) -> None:
        super().__init__(store, SizesUnknownMaildrop)


class Session:
    """
    A POP3Protocol connected to a StringTransport, with helpers to send
    lines and take what the server wrote.
    """

    def __init__(
        self,
        store: Any = None,
        users: dict[bytes, bytes] | None = None,
        clock: Clock | None = None,
        checkers: list[Any] | None = None,
        timeout: float = 600,
        transport: StringTransport | None = None,
        peer: str = "127.0.0.1",
        factory: POP3ServerFactory | None = None,
        **factoryOptions: Any,
    ) -> None:
        self.memory = MemoryStore()
        self.store = store if store is not None else self.memory
        if checkers is None:
            checker = InMemoryUsernamePasswordDatabaseDontUse()
            for name, password in (users or {b"alice": b"secret"}).items():
                checker.addUser(name, password)
            checkers = [checker]
        if factory is not None:
            # Another connection to the same server (shared limits, store).
            self.factory = factory
            self.clock = factory.clock
            self.portal = factory.portal
            # A realm of the test's own may have no one store.
            self.store = getattr(self.portal.realm, "store", None)
        else:
            self.clock = clock or Clock()
            self.portal = Portal(MaildropRealm(self.store), checkers)
            self.factory = POP3ServerFactory(
                self.portal, timeout=timeout, clock=self.clock, **factoryOptions
            )
        self.protocol: POP3Protocol = self.factory.buildProtocol(None)
        if transport is None:
            transport = StringTransport(peerAddress=IPv4Address("TCP", peer, 54321))
        self.transport = transport
        self.protocol.makeConnection(self.transport)
        self.greeting = self.take()

    def wrapMaildrops(self, wrap: Callable[[Any], Any]) -> None:
        """
        Serve this session's L{MemoryStore} with each maildrop made into
        C{wrap(maildrop)} (L{StoreOver}).
        """
        self.store = StoreOver(self.memory, wrap)
        self.portal.realm.store = self.store

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def take(self) -> bytes:
        value = self.transport.value()
        self.transport.clear()
        return value

    def command(self, line: bytes) -> bytes:
        self.send(line + b"\r\n")
        return self.take()

    def login(self, user: bytes = b"alice", password: bytes = b"secret") -> bytes:
        assert self.command(b"USER " + user) == b"+OK Send PASS\r\n"
        return self.command(b"PASS " + password)

    def challenge(self) -> bytes:
        match = re.search(rb"<[^>]+>", self.greeting)
        assert match is not None
        return match.group(0)


@implementer(ICredentialsChecker)
class SlowChecker:
    """
    A checker whose answers wait until the test releases them, one at a
    time, like one that asks a database or hashes in a thread.  It accepts
    the password "secret" for any user name.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self) -> None:
        self.pending: list[Any] = []

    def requestAvatarId(self, credentials: Any) -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        self.pending.append((d, credentials))
        return d

    def release(self) -> None:
        d, credentials = self.pending.pop(0)
        if credentials.checkPassword(b"secret"):
            d.callback(credentials.username)
        else:
            d.errback(UnauthorizedLogin())
