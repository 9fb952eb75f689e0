"""
Tests for popserv.endpoints: reading ssl: listen descriptions.
"""

from __future__ import annotations

import pytest

from popserv.endpoints import DEFAULT_BACKLOG, ImplicitTLS, parseImplicitTLS, withDefaultBacklog


def test_otherKindsUntouched() -> None:
    """
    Descriptions other than ssl: are not implicit TLS.
    """
    assert parseImplicitTLS("tcp:110") is None
    assert parseImplicitTLS("unix:/run/pop.sock") is None


def test_split() -> None:
    """
    The TLS parameters are taken out; the rest becomes a tcp: description
    with the same escapes; certKey defaults to privateKey.
    """
    assert parseImplicitTLS(
        r"ssl:995:interface=\:\:1:privateKey=/k.pem:extraCertChain=/chain.pem:backlog=10"
    ) == ImplicitTLS(
        tcp=r"tcp:995:interface=\:\:1:backlog=10",
        key="/k.pem",
        certificate="/k.pem",
        chain="/chain.pem",
    )
    assert parseImplicitTLS("ssl:995:privateKey=k:certKey=c") == ImplicitTLS(
        tcp="tcp:995", key="k", certificate="c", chain=None
    )
    assert parseImplicitTLS("ssl:995") == ImplicitTLS("tcp:995", None, None, None)
    # A TLS parameter's name without "=" is no TLS parameter: it stays in
    # the tcp: part, where Twisted's parser judges it.
    assert parseImplicitTLS("ssl:995:privateKey") == ImplicitTLS(
        "tcp:995:privateKey", None, None, None
    )
    # A backslash, escaped, stays one backslash, escaped, in the tcp: part;
    # the file names are unescaped, as Twisted's parser gives them.
    assert parseImplicitTLS(r"ssl:995:interface=a\\b\:c:privateKey=C\:\\k.pem") == ImplicitTLS(
        tcp=r"tcp:995:interface=a\\b\:c",
        key="C:\\k.pem",
        certificate="C:\\k.pem",
        chain=None,
    )


@pytest.mark.parametrize("parameter", ["sslmethod=TLSv1_METHOD", "dhParameters=dh.pem"])
def test_policyParametersRefused(parameter: str) -> None:
    """
    Parameters that would weaken popserv's TLS policy are refused.
    """
    with pytest.raises(ValueError, match="not supported"):
        parseImplicitTLS(f"ssl:995:privateKey=k:{parameter}")


def test_certificateWithoutKey() -> None:
    """
    certKey= or extraCertChain= without privateKey= is refused, not ignored.
    """
    with pytest.raises(ValueError, match="need privateKey="):
        parseImplicitTLS("ssl:995:certKey=c.pem")
    with pytest.raises(ValueError, match="need privateKey="):
        parseImplicitTLS("ssl:995:extraCertChain=chain.pem")


@pytest.mark.parametrize(
    ("description", "expected"),
    [
        ("tcp:110", "tcp:110:backlog=1024"),
        ("tcp:110:interface=127.0.0.1", "tcp:110:interface=127.0.0.1:backlog=1024"),
        (r"tcp6:110:interface=\:\:1", r"tcp6:110:interface=\:\:1:backlog=1024"),
        ("tcp:port=110", "tcp:port=110:backlog=1024"),
        # The interface by position is not a backlog.
        ("tcp:110:127.0.0.1", "tcp:110:127.0.0.1:backlog=1024"),
        # The operator's own backlog, by keyword or by position, stays.
        ("tcp:110:backlog=10", "tcp:110:backlog=10"),
        ("tcp:110:127.0.0.1:10", "tcp:110:127.0.0.1:10"),
        ("tcp:backlog=10:port=110", "tcp:backlog=10:port=110"),
        # Not TCP: nothing to add.
        ("unix:/run/pop.sock", "unix:/run/pop.sock"),
        ("systemd:domain=INET:index=0", "systemd:domain=INET:index=0"),
    ],
)
def test_defaultBacklog(description: str, expected: str) -> None:
    """
    A tcp: or tcp6: listener without a backlog gets DEFAULT_BACKLOG instead
    of Twisted's 50; every other description is left as written.
    """
    assert DEFAULT_BACKLOG == 1024
    assert withDefaultBacklog(description) == expected
