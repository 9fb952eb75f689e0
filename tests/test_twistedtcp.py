"""
L{popserv.twistedtcp}: the fast paths for writes check that Twisted's TCP
transport still has what they rely on, and fall back to its C{write()}
when it does not.
"""

from __future__ import annotations

from typing import Any

import pytest
from loopback import Connection, connectionFixture  # noqa: F401 (a fixture)
from twisted.logger import capturedLogs, formatEvent

from popserv import twistedtcp
from popserv.backlog import socketOf
from popserv.sendnow import sendNow
from popserv.turnend import writeReply

REPLY = b"+OK POP3 server ready\r\n"


#: What each attribute the fast paths (and popserv.backlog) use holds on an
#: idle connection: open, not closing, half-closed, aborted or TLS, nothing
#: to send, a 64 KiB buffer, no producer.
IDLE = {
    "dataBuffer": b"",
    "offset": 0,
    "bufferSize": 2**16,
    "_tempDataBuffer": [],
    "_tempDataLen": 0,
    "connected": True,
    "disconnecting": False,
    "_writeDisconnecting": False,
    "_writeDisconnected": False,
    "_aborting": False,
    "TLS": False,
    "producer": None,
    "streamingProducer": False,
    "producerPaused": False,
}


def test_thisTwistedUnderstood(connection: Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    The installed Twisted's TCP transport has every attribute the fast
    paths (L{popserv.sendnow}, L{popserv.turnend}) use, with the values
    that mean "open, nothing to send" when it is idle: if an upgrade of
    Twisted renamed one or changed its meaning, this says so first.
    """
    monkeypatch.setattr(twistedtcp, "_understood", None)
    with capturedLogs() as events:
        assert twistedtcp.understood(connection.transport)
    assert events == []
    transport: Any = connection.transport
    assert {name: getattr(transport, name) for name in twistedtcp.ATTRIBUTES} == IDLE
    for flag in ("TLS", "_aborting", "streamingProducer"):
        assert getattr(transport, flag) is False, flag


def test_missingAttribute(connection: Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A transport without one of them (as a future Twisted might be) gets
    C{write()} from both paths, is not measured for a backlog, and the log
    says so once.
    """
    monkeypatch.setattr(twistedtcp, "_understood", None)
    monkeypatch.delattr(connection.transport, "_tempDataBuffer")
    written: list[Any] = []
    monkeypatch.setattr(connection.transport, "write", written.append)
    with capturedLogs() as events:
        writeReply(connection.transport, REPLY)
        sendNow(connection.transport, b"+OK 2 octets\r\n")
        writeReply(connection.transport, b"+OK bye\r\n")
    assert written == [REPLY, b"+OK 2 octets\r\n", b"+OK bye\r\n"]
    # Nor is a session held back by what it cannot measure (popserv.backlog):
    assert socketOf(connection.transport) is None
    assert connection.reactor.getDelayedCalls() == []
    assert connection.receivedNow(wait=0.1) == b""
    assert [formatEvent(event) for event in events] == [
        "Twisted's TCP transport has no _tempDataBuffer: replies and messages"
        " go through its write(), which is slower, and a client that"
        " does not read its replies is not held back"
    ]


def test_missingAttributesNamed(connection: Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    The log names every attribute missing, in the order of L{ATTRIBUTES}.
    """
    monkeypatch.setattr(twistedtcp, "_understood", None)
    monkeypatch.delattr(connection.transport, "_tempDataLen")
    monkeypatch.delattr(connection.transport, "_tempDataBuffer")
    with capturedLogs() as events:
        assert not twistedtcp.understood(connection.transport)
    assert [event["missing"] for event in events] == ["_tempDataBuffer, _tempDataLen"]
