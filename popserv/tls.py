"""
TLS for STLS (RFC 2595) and implicit TLS (RFC 8314): the server's
certificate, a context that can be reloaded while sessions run, and the
channel-binding data SCRAM-PLUS needs.

The policy: TLS 1.2 at least; on TLS 1.2 only ECDHE key exchange with AEAD
ciphers (forward secrecy, no CBC; Mozilla's "intermediate" profile without
finite-field DHE); TLS 1.3's suites, which are all of that kind; and
Twisted's other defaults (no compression, no renegotiation).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from popserv.secretfiles import warnIfReadableByOthers
from popserv.threads import Runner, deferToThread

#: TLS 1.2 cipher suites: ECDHE with AES-GCM or ChaCha20-Poly1305 only.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL"

#: RFC 9266 section 2: the exporter label for tls-exporter channel binding.
EXPORTER_LABEL = b"EXPORTER-Channel-Binding"


class TLSConfigError(ValueError):
    """
    The certificate, key or chain cannot be used; one line for the operator.
    """


#: How errors name each of L{TLSFiles}' files, unless told otherwise.
FILE_NAMES = {
    "certificate": "certificate",
    "key": "key",
    "chain": "chain",
    "clientCA": "client CA file",
}

#: How they are named when they come from the --tls-* options.
OPTION_NAMES = {
    "certificate": "--tls-cert",
    "key": "--tls-key",
    "chain": "--tls-chain",
    "clientCA": "--tls-client-ca",
}

#: How they are named for an ssl: listener with its own key (the client
#: CA still comes from --tls-client-ca).
ENDPOINT_NAMES = {
    "certificate": "certKey=",
    "key": "privateKey=",
    "chain": "extraCertChain=",
    "clientCA": OPTION_NAMES["clientCA"],
}


#: The files of L{TLSFiles} that must hold a certificate if given.
_CERTIFICATE_FILES = ("certificate", "chain", "clientCA")


@dataclass(frozen=True)
class TLSFiles:
    """
    Where the server's TLS identity lives.

    @ivar certificate: PEM file with the server certificate (and, after it,
        any intermediate certificates).
    @ivar key: PEM file with the private key.
    @ivar chain: optional PEM file with intermediate certificates.
    @ivar clientCA: optional PEM file of CA certificates; when given, clients
        may present a certificate, which must verify against them (for
        SASL EXTERNAL).  Clients without one can still connect.
    @ivar names: what errors call each file (L{FILE_NAMES},
        L{OPTION_NAMES}), with its path after.
    """

    certificate: str
    key: str
    chain: str | None = None
    clientCA: str | None = None
    names: dict[str, str] = field(default_factory=lambda: FILE_NAMES, compare=False)

    def _named(self, name: str) -> str:
        label = self.names[name]
        # "--tls-key /etc/key.pem", or as an endpoint names it, "privateKey=key.pem".
        return (
            f"{label}{getattr(self, name)}"
            if label.endswith("=")
            else f"{label} {getattr(self, name)}"
        )

    def load(self) -> ssl.CertificateOptions:
        """
        Read the files and build the TLS options.

        @raise TLSConfigError: a file is missing or unreadable, holds no
            certificate (or key) where it should, or the key does not belong
            to the certificate; the message names the file.
        """
        read: dict[str, bytes] = {}
        for name in ("certificate", "key", "chain", "clientCA"):
            path = getattr(self, name)
            if not path:
                continue
            try:
                with open(path, "rb") as f:
                    read[name] = f.read()
                    if name == "key":
                        warnIfReadableByOthers(f.fileno(), path, "The TLS private key")
            except OSError as e:
                raise TLSConfigError(f"{self._named(name)}: cannot read it: {e.strerror}") from None
        try:
            loaded: dict[str, list[ssl.Certificate]] = {}
            for name in _CERTIFICATE_FILES:
                blocks = _pemBlocks(read.get(name, b""))
                if blocks is None:
                    # A copy cut short: loading the blocks before it would
                    # serve a chain that clients cannot verify.
                    raise TLSConfigError(
                        f"{self._named(name)}: its last certificate has no END line (cut off?)"
                    )
                if name in read and not blocks:
                    raise TLSConfigError(f"{self._named(name)}: no certificate in it")
                loaded[name] = [_loadCertificate(b, self._named(name)) for b in blocks]
            certificates = loaded["certificate"] + loaded["chain"]
            key = _loadKey(read["key"], self._named("key"))
            authorities = [c.original for c in loaded["clientCA"]]
        except TLSConfigError:
            raise
        except Exception as e:
            raise TLSConfigError(f"cannot load the certificate or key: {e}") from None
        options = ssl.CertificateOptions(
            privateKey=key,
            certificate=certificates[0].original,
            extraCertChain=[c.original for c in certificates[1:]],
            raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
            acceptableCiphers=ssl.AcceptableCiphers.fromOpenSSLCipherString(TLS12_CIPHERS),
            verify=bool(authorities),
            caCerts=authorities or None,
            requireCertificate=False,
        )
        try:
            context = options.getContext()  # checks that the key matches the certificate
        except SSL.Error as e:
            raise TLSConfigError(
                f"{self._named('key')} does not match {self._named('certificate')}: {e}"
            ) from None
        # Name the acceptable CAs in the certificate request, so a client
        # holding several certificates can pick the right one.  (Given as
        # cryptography's certificates: pyOpenSSL 24.3 deprecated its X509 and
        # X509Name here.  Twisted's CertificateOptions is documented to take
        # pyOpenSSL's objects, and gets them.)
        for authority in authorities:
            context.add_client_ca(authority.to_cryptography())
        return options


def _loadCertificate(pem: bytes, path: str) -> ssl.Certificate:
    """
    One PEM certificate block of the file C{path} names.
    """
    try:
        return ssl.Certificate.loadPEM(pem)
    except crypto.Error as e:
        raise TLSConfigError(f"{path}: not a PEM certificate ({e})") from None


def _loadKey(pem: bytes, path: str) -> crypto.PKey:
    """
    An unencrypted PEM private key.  (Through pyOpenSSL directly, OpenSSL
    would ask for a pass phrase on the terminal, also at a reload.)
    """
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(pem, password=None)
    except TypeError:
        raise TLSConfigError(
            f"{path}: the key is encrypted; popserv needs it unencrypted"
        ) from None
    except ValueError as e:
        raise TLSConfigError(f"{path}: not a PEM private key ({e})") from None
    return crypto.PKey.from_cryptography_key(key)  # type: ignore[arg-type]


def _pemBlocks(data: bytes) -> list[bytes] | None:
    """
    The PEM certificate blocks in C{data}, in order (other blocks, such as
    a key, are left out); L{None} if a certificate begins after the last
    one that ends.
    """
    begin, end = b"-----BEGIN CERTIFICATE-----", b"-----END CERTIFICATE-----"
    *parts, rest = data.split(end)
    if begin in rest:
        return None
    blocks = []
    for part in parts:
        start = part.find(begin)
        if start >= 0:
            blocks.append(part[start:] + end + b"\n")
    return blocks


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableTLS:
    """
    Makes server-side TLS connections from the current certificate.

    L{reload} reads the files again; connections made afterwards use the new
    certificate, sessions already running keep theirs.  A reload that fails
    keeps the old certificate and reports why.
    """

    _log = Logger()

    def __init__(self, files: TLSFiles) -> None:
        """
        @raise TLSConfigError: the files cannot be used.
        """
        self.files = files
        self._options = files.load()
        # Reloads started, and which of them read the certificate in use
        # (0: the constructor).  Two reloads close together (two renewal
        # hooks, each sending SIGHUP) can finish in either order: the one
        # that read the files last must win.
        self._started = 0
        self._inUse = 0

    def reload(self, runInThread: Runner = deferToThread) -> Deferred[bool]:
        """
        Read the certificate files again, in a thread: the reactor keeps
        serving clients meanwhile.

        @return: a Deferred firing with whether the new certificate is now
            in use: not if a reload started later has already put its own
            in use.
        """
        self._started += 1
        started = self._started

        def loaded(options: ssl.CertificateOptions) -> bool:
            if started < self._inUse:
                self._log.info(
                    "TLS reload from {path} overtaken by a later one; keeping that one's",
                    path=self.files.certificate,
                )
                return False
            self._options = options
            self._inUse = started
            self._log.info("TLS certificate reloaded from {path}", path=self.files.certificate)
            return True

        def failed(failure: Failure) -> bool:
            failure.trap(TLSConfigError)
            self._log.error("TLS reload failed, keeping the old certificate: {e}", e=failure.value)
            return False

        d: Deferred[ssl.CertificateOptions] = runInThread(self.files.load)
        return d.addCallbacks(loaded, failed)

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return SSL.Connection(self._options.getContext(), None)


def channelBinding(connection: SSL.Connection | None, kind: str) -> bytes | None:
    """
    The channel-binding data of a TLS connection, or L{None} if the
    connection has none of this kind.

     - C{tls-exporter} (RFC 9266): 32 octets of exported keying material;
       only on TLS 1.3, where the handshake makes it unique.
     - C{tls-unique} (RFC 5929 section 3): the first Finished message of
       the latest handshake; only on TLS 1.2, since TLS 1.3 has none
       (RFC 9266).  That is the client's: every handshake is a full one,
       as these contexts resume no sessions (Twisted's CertificateOptions
       keeps no session cache and sends no tickets); the triple handshake
       attack on this type needs a resumed one (RFC 7627 section 3).
     - C{tls-server-end-point} (RFC 5929 section 4.1): the hash of the
       server's certificate with the certificate's own signature hash,
       SHA-256 where that is MD5 or SHA-1.
    """
    if connection is None:
        return None
    try:
        if kind == "tls-exporter":
            if connection.get_protocol_version_name() != "TLSv1.3":
                return None
            return bytes(connection.export_keying_material(EXPORTER_LABEL, 32))
        if kind == "tls-unique":
            if connection.get_protocol_version_name() != "TLSv1.2":
                return None
            return connection.get_peer_finished()
        if kind == "tls-server-end-point":
            # cryptography's certificate (pyOpenSSL 24.3 and later): its
            # X509 type is on the way out.
            cert = connection.get_certificate(as_cryptography=True)
            if cert is None:
                return None
            algorithm = cert.signature_hash_algorithm
            name = algorithm.name if algorithm is not None else "sha256"
            if name in ("md5", "sha1"):
                name = "sha256"
            from cryptography.hazmat.primitives.serialization import Encoding

            return hashlib.new(name, cert.public_bytes(Encoding.DER)).digest()
    except SSL.Error:
        return None
    return None
