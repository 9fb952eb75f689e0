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


@implementer(ICheckerFactory, IPlugin)
class PasswdFileCheckerFactory:
    """
    C{--auth passwd-file:PATH}: users and password hashes in Dovecot's
    passwd-file format (L{popserv.passwdfile}).
    """

    authType = "passwd-file"
    authHelp = (
        "Users and password hashes in Dovecot's passwd-file format "
        "(user:{SCHEME}hash[:...]), re-read when the file changes. Schemes: "
        "ARGON2ID, BLF-CRYPT, SHA512-CRYPT, SHA256-CRYPT, SSHA512, "
        "SCRAM-SHA-256, CRAM-MD5, PLAIN. Manage it with 'popserv passwd'."
    )
    argStringFormat = "passwd-file:PATH"

    @property
    def credentialInterfaces(self) -> tuple[Any, ...]:
        from popserv.passwdfile import PasswdFileChecker

        return PasswdFileChecker.credentialInterfaces

    def generateChecker(self, argstring: str = "") -> Any:
        """
        A checker reading C{argstring}, the file's path.

        @raise ValueError: no path was given.
        @raise popserv.passwdfile.PasswdFileError: the file cannot be read.
        """
        from popserv.passwdfile import PasswdFileChecker

        if not argstring:
            raise ValueError("passwd-file needs a path: --auth passwd-file:PATH")
        return PasswdFileChecker(argstring)


passwdFileCheckerFactory = PasswdFileCheckerFactory()
