"""
Log observers for C{twistd --logger}.

C{twistd -n --logger popserv.logs.json popserv ...} writes every event,
the audit trail's fields included, as one JSON object per line on standard
output (for journald, container logs or a log shipper).
"""

from __future__ import annotations

import sys

from twisted.logger import ILogObserver, jsonFileLogObserver


def json() -> ILogObserver:
    """
    A JSON observer on standard output, one event per line.
    """
    return jsonFileLogObserver(sys.stdout, recordSeparator="")
