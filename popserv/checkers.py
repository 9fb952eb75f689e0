"""
popserv's own C{--auth} checker plugins (C{twisted.cred.strcred}
factories).  Kept light, like every module a dropin imports: the checkers
themselves are imported when one is made.
"""

from __future__ import annotations

from typing import Any

from twisted.cred.strcred import ICheckerFactory
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(ICheckerFactory, IPlugin)
class ClientCertificateCheckerFactory:
    """
    C{--auth cert}: logins by verified TLS client certificate (SASL
    EXTERNAL).  Needs C{--tls-client-ca}.
    """

    authType = "cert"
    authHelp = (
        "Log in with a TLS client certificate (SASL EXTERNAL). The certificate "
        "must verify against --tls-client-ca; the user is the e-mail address "
        "or DNS name it names."
    )
    argStringFormat = "No argstring required."

    @property
    def credentialInterfaces(self) -> tuple[Any, ...]:
        from popserv.certauth import ICertificateCredentials

        return (ICertificateCredentials,)

    def generateChecker(self, argstring: str = "") -> Any:
        from popserv.certauth import ClientCertificateChecker

        return ClientCertificateChecker()


clientCertificateCheckerFactory = ClientCertificateCheckerFactory()
