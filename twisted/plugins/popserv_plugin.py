"""
The popserv dropin: the C{twistd popserv} command and the built-in mail store
kinds.  Kept tiny; twistd imports every dropin whenever it scans.
"""

from twisted.application.service import ServiceMaker

from popserv.checkers import clientCertificateCheckerFactory, passwdFileCheckerFactory
from popserv.mailstores import maildirStoreFactory, memoryStoreFactory

popserv = ServiceMaker(
    "popserv",
    "popserv.tap",
    "A pluggable POP3 server (RFC 1939).",
    "popserv",
)

__all__ = [
    "clientCertificateCheckerFactory",
    "maildirStoreFactory",
    "memoryStoreFactory",
    "passwdFileCheckerFactory",
    "popserv",
]
