"""
Reading listen descriptions: C{ssl:} ones, so that popserv applies its own
TLS policy (and certificate reloading) to implicit TLS, and C{tcp:} ones,
to give them a listen backlog fit for a server (L{withDefaultBacklog}).

Twisted's C{ssl:} endpoint builds a TLS context once, when the description
is parsed; popserv instead listens with C{tcp:} on the same address and puts
its reloadable TLS layer on top.  The description keeps Twisted's syntax:
C{ssl:995:interface=0.0.0.0:privateKey=key.pem:certKey=cert.pem}.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ImplicitTLS:
    """
    An C{ssl:} description split into its TCP part and its TLS files.

    @ivar tcp: the same listening address as a C{tcp:} description.
    @ivar key: C{privateKey=}, or L{None} to use C{--tls-key}.
    @ivar certificate: C{certKey=}, defaulting to the key file (Twisted's
        rule: key and certificate may share one PEM file).
    @ivar chain: C{extraCertChain=}, or L{None}.
    """

    tcp: str
    key: str | None
    certificate: str | None
    chain: str | None


#: Parameters of Twisted's ssl: endpoint that are about TLS, not TCP.
_TLS_PARAMETERS = {"privateKey", "certKey", "extraCertChain", "sslmethod", "dhParameters"}


def _split(description: str) -> list[str]:
    # Twisted's endpoint syntax: ":" separates, "\:" is a literal colon.
    parts, current, escaped = [], [], False
    for char in description:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


def parseImplicitTLS(description: str) -> ImplicitTLS | None:
    """
    Split an C{ssl:} description; L{None} for any other kind.

    @raise ValueError: a TLS parameter popserv does not support (C{sslmethod}:
        popserv always requires TLS 1.2 or later; C{dhParameters}: popserv
        offers no finite-field Diffie-Hellman, so forward secrecy comes from
        ECDHE), or a certificate without its key.
    """
    parts = _split(description)
    if parts[0] != "ssl":
        return None
    tcp: list[str] = ["tcp"]
    tls: dict[str, str] = {}
    for part in parts[1:]:
        name, equals, value = part.partition("=")
        if equals and name in _TLS_PARAMETERS:
            tls[name] = value
        else:
            tcp.append(_escape(part))
    for unsupported in ("sslmethod", "dhParameters"):
        if unsupported in tls:
            raise ValueError(f"{unsupported}= is not supported; popserv sets the TLS policy")
    key = tls.get("privateKey")
    if key is None and ("certKey" in tls or "extraCertChain" in tls):
        raise ValueError("certKey= and extraCertChain= need privateKey=")
    return ImplicitTLS(
        tcp=":".join(tcp),
        key=key,
        certificate=tls.get("certKey", key),
        chain=tls.get("extraCertChain"),
    )


#: The listen backlog popserv asks for when a C{tcp:} or C{tcp6:} listener
#: names none.  Twisted's default is 50: a burst of more simultaneous
#: connects than that (a mail client's folder sync, many users on the hour,
#: a password-guessing flood) has SYNs dropped, and the kernel retries them
#: only after 1, 3, 7 seconds.  The kernel caps it at net.core.somaxconn
#: (4096 on current Linux).
DEFAULT_BACKLOG = 1024


def withDefaultBacklog(description: str, backlog: int = DEFAULT_BACKLOG) -> str:
    """
    Add C{backlog=} to a C{tcp:} or C{tcp6:} description that sets none.

    Any other description, and one giving the backlog by keyword or as its
    third positional argument (C{tcp:port:interface:backlog}), is returned
    unchanged.
    """
    parts = _split(description)
    if parts[0] not in ("tcp", "tcp6"):
        return description
    positional = [part for part in parts[1:] if "=" not in part]
    if len(positional) > 2 or any(part.startswith("backlog=") for part in parts[1:]):
        return description
    return f"{description}:backlog={backlog}"
