"""
The audit trail: one event per authentication failure and one per session
end, with stable formats operators can match (fail2ban) or read as JSON.

Events go to the C{popserv.audit} namespace of C{twisted.logger}, with their
fields as event keys, so a JSON observer (L{popserv.logs}) keeps them
structured and the text log shows one line each::

    popserv auth-failed: user=alice ip=192.0.2.7 mechanism=PLAIN
    popserv session: user=alice ip=192.0.2.7 tls=TLSv1.3 mechanism=USER
      retr=2/4521 top=0/0 dele=1 left=3/90211 duration=1.204 reason=quit

(the second is one line).  Values never contain spaces: user names are
quoted by L{safe} (spaces and control characters become %XX).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from twisted.logger import Logger

log = Logger(namespace="popserv.audit")

#: The text of an authentication failure; the fail2ban filter in
#: contrib/fail2ban/ matches it.  Changing it breaks operators' setups.
AUTH_FAILED = "popserv auth-failed: user={user} ip={ip} mechanism={mechanism}"

SESSION = (
    "popserv session: user={user} ip={ip} tls={tls} mechanism={mechanism} "
    "retr={retr}/{retrBytes} top={top}/{topBytes} dele={dele} "
    "left={left}/{leftBytes} duration={duration:.3f} reason={reason}"
)


def safe(value: str) -> str:
    """
    C{value} with spaces, controls, "%" and non-ASCII as %XX, so that every
    value is one token (an attacker chooses user names).
    """
    if not value:
        return "-"
    if value == "-":
        # What an empty value is written as: "user=-" must mean no user,
        # not a client that sent "USER -".
        return "%2D"
    if value.isascii() and value.isprintable() and " " not in value and "%" not in value:
        return value[:256]  # nothing to quote: most names
    out = []
    for octet in value.encode("utf-8", "surrogateescape"):
        if 0x21 <= octet < 0x7F and octet != 0x25:
            out.append(chr(octet))
        else:
            out.append(f"%{octet:02X}")
    return "".join(out)[:256]


def authFailed(user: str, ip: str, mechanism: str) -> None:
    """
    Log a failed login.
    """
    log.warn(AUTH_FAILED, user=safe(user), ip=ip, mechanism=mechanism)


@dataclass(slots=True)
class SessionRecord:
    """
    What one session did, for its end-of-session event.
    """

    ip: str
    started: float
    user: str = ""
    tls: str = "-"
    mechanism: str = "-"
    retr: int = 0
    retrBytes: int = 0
    top: int = 0
    topBytes: int = 0
    dele: int = 0
    left: int = 0
    leftBytes: int = 0
    reason: str = "disconnected"
    logged: bool = field(default=False, repr=False)

    def end(self, now: float) -> None:
        """
        Log the session's end, once.
        """
        if self.logged:
            return
        self.logged = True
        fields = {
            "user": safe(self.user),
            "ip": self.ip,
            "tls": self.tls,
            "mechanism": self.mechanism,
            "retr": self.retr,
            "retrBytes": self.retrBytes,
            "top": self.top,
            "topBytes": self.topBytes,
            "dele": self.dele,
            "left": self.left,
            "leftBytes": self.leftBytes,
            "duration": max(now - self.started, 0.0),
            "reason": self.reason,
        }
        # Rendered here with str.format (C) rather than by twisted.logger's
        # own formatter, which parses a format string field by field in
        # Python: for fourteen fields that was a tenth of a short session's
        # CPU.  The fields stay in the event for JSON logs.
        log.info("{session}", session=SESSION.format(**fields), **fields)
