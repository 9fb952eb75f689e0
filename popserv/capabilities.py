"""
The CAPA response (RFC 2449 section 5): which capabilities to announce in
which state on which connection.  A pure function of the facts, so every
combination can be tested without a connection.

Everything advertised must be true and everything true advertised:
 - USER only where a plaintext password may be sent (RFC 2595 section 2.4:
   not over an unencrypted link unless the operator allowed it);
 - SASL with the mechanisms that can run on this connection and that some
   checker can verify;
 - STLS when a certificate is configured and TLS is not on yet (RFC 2595
   section 4);
 - IMPLEMENTATION only after login, so that the version is not shown to
   anyone who connects (RFC 2449 section 6.9 allows it);
 - the capabilities of commands valid only before login (USER, SASL,
   STLS, UTF8) after login too: RFC 2449 section 5, "Capabilities
   available in the AUTHORIZATION state MUST be announced in both
   states", though their commands are then refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from popserv.states import State


@dataclass(frozen=True)
class Policy:
    """
    A LOGIN-DELAY or EXPIRE value (RFC 2449 sections 6.5 and 6.7).

    @ivar value: seconds (LOGIN-DELAY), or days or C{"NEVER"} (EXPIRE); in
        the AUTHORIZATION state the server-wide value, after login the
        user's own.
    @ivar perUser: some users have other values: AUTHORIZATION announces
        C{USER} after the value.
    """

    value: int | str
    perUser: bool = False


@dataclass(frozen=True)
class Facts:
    """
    What decides the capability list of one session at one moment.
    """

    state: State
    plaintextAllowed: bool
    stlsAvailable: bool
    mechanisms: Sequence[str]
    implementation: str
    loginDelay: Policy | None = None
    expire: Policy | None = None


def capabilities(facts: Facts) -> list[str]:
    """
    The capability lines, in a stable order.
    """
    before = facts.state is State.AUTHORIZATION
    lines = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
    if facts.plaintextAllowed:
        lines.append("USER")
    if facts.mechanisms:
        lines.append("SASL " + " ".join(facts.mechanisms))
    if facts.stlsAvailable:
        lines.append("STLS")
    # RFC 6856 section 2: "USER" says user names and passwords may be
    # UTF-8, in USER/PASS and in APOP's user name (section 3.2): APOP is
    # offered where passwords may not be sent in clear too.
    lines.append("UTF8 USER")
    for tag, policy in (("LOGIN-DELAY", facts.loginDelay), ("EXPIRE", facts.expire)):
        if policy is not None:
            suffix = " USER" if before and policy.perUser else ""
            lines.append(f"{tag} {policy.value}{suffix}")
    if not before:
        lines.append(f"IMPLEMENTATION {facts.implementation}")
    return lines
