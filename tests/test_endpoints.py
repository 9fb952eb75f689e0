"""
Tests for popserv.endpoints: reading ssl: listen descriptions.
"""

from __future__ import annotations

import pytest

from popserv.endpoints import ImplicitTLS, parseImplicitTLS


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
