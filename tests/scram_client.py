"""
A SCRAM-SHA-256 client for the tests, straight from RFC 5802 sections 3
and 7 (and RFC 7677), written independently of popserv.scram so that the
tests check the server against the RFC rather than against itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


class ScramClient:
    """
    One SCRAM-SHA-256(-PLUS) exchange, client side.

    @ivar salt: the salt the server sent, once L{final} was called.
    @ivar iterations: the iteration count the server sent.
    """

    def __init__(
        self,
        username: str,
        password: str | bytes,
        nonce: str = "fyko+d2lbbFgONRv9qkxdawL",
        flag: str = "n",
        channelBinding: bytes = b"",
        authzid: str | None = None,
    ) -> None:
        """
        @param flag: the gs2 channel-binding flag: "n", "y" or "p=TYPE".
        @param channelBinding: the binding data sent with "p=TYPE".
        """
        escaped = username.replace("=", "=3D").replace(",", "=2C")
        self.gs2 = flag + "," + ("" if authzid is None else "a=" + authzid) + ","
        self.bare = f"n={escaped},r={nonce}"
        self.nonce = nonce
        self.password = password.encode("utf-8") if isinstance(password, str) else password
        self.cbind = self.gs2.encode() + channelBinding
        self.serverSignature = b""
        self.salt: bytes | None = None
        self.iterations: int | None = None

    def first(self) -> bytes:
        """
        The client-first-message.
        """
        return (self.gs2 + self.bare).encode("utf-8")

    def final(self, serverFirst: bytes) -> bytes:
        """
        The client-final-message answering C{serverFirst}; remembers the
        server signature the server must send next.
        """
        fields = dict(f.split(b"=", 1) for f in serverFirst.split(b","))
        assert fields[b"r"].startswith(self.nonce.encode())
        self.salt = base64.b64decode(fields[b"s"])
        self.iterations = int(fields[b"i"])
        salted = hashlib.pbkdf2_hmac("sha256", self.password, self.salt, self.iterations)
        clientKey = _hmac(salted, b"Client Key")
        storedKey = hashlib.sha256(clientKey).digest()
        withoutProof = b"c=" + base64.b64encode(self.cbind) + b",r=" + fields[b"r"]
        authMessage = self.bare.encode("utf-8") + b"," + serverFirst + b"," + withoutProof
        proof = bytes(a ^ b for a, b in zip(clientKey, _hmac(storedKey, authMessage), strict=True))
        self.serverSignature = _hmac(_hmac(salted, b"Server Key"), authMessage)
        return withoutProof + b",p=" + base64.b64encode(proof)

    def checkServerFinal(self, message: bytes | None) -> bool:
        """
        Whether C{message} is C{v=} with the signature the server must send.
        """
        return message == b"v=" + base64.b64encode(self.serverSignature)


def authenticate(
    send: Callable[[bytes], bytes], client: ScramClient, mechanism: bytes = b"SCRAM-SHA-256"
) -> list[bytes]:
    """
    Run the exchange over POP3 AUTH with C{send} (sends a line, returns
    the reply line without CRLF); returns the replies.  Checks the server's
    signature when it sends one.
    """
    replies = [send(b"AUTH " + mechanism + b" " + base64.b64encode(client.first()))]
    if not replies[-1].startswith(b"+ "):
        return replies
    replies.append(send(base64.b64encode(client.final(base64.b64decode(replies[-1][2:])))))
    if replies[-1].startswith(b"+ "):
        assert client.checkServerFinal(base64.b64decode(replies[-1][2:]))
        replies.append(send(b""))
    return replies
