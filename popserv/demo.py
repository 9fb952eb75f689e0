"""
Seed a demo Maildir for C{make demo}: user C{demo} with a few messages that
show off what a POP3 server must get right (dot-stuffing, LF line endings,
UTF-8 headers, a larger body).

Run as C{python -m popserv.demo ROOT}; creates C{ROOT/demo} if it is not
there and never touches an existing one.  With C{--tls}, also makes a
self-signed certificate for localhost and 127.0.0.1 in C{ROOT/tls/} (for
C{make demo-tls}), again only if there is none.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

MESSAGES = [
    (
        b"From: Postmaster <postmaster@example.org>\r\n"
        b"To: demo@example.org\r\n"
        b"Subject: Welcome to popserv\r\n"
        b"\r\n"
        b"This maildrop was made by 'make demo'.\r\n"
        b"Try RETR, TOP, UIDL and DELE on it; QUIT applies deletions.\r\n"
    ),
    (
        b"From: Alice <alice@example.org>\n"
        b"To: demo@example.org\n"
        b"Subject: Lines that start with a dot\n"
        b"\n"
        b".this line is byte-stuffed on the wire\n"
        b"..and so is this one\n"
        b".\n"
        b"(the line above is a lone dot; this file uses LF line endings)\n"
    ),
    (
        "From: Bj\u00f6rn <bjorn@example.org>\r\n"
        "To: demo@example.org\r\n"
        "Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
        "Gr\u00fc\u00dfe aus Z\u00fcrich.\r\n"
    ).encode("utf-8"),
    (
        b"From: Bulk <bulk@example.org>\r\n"
        b"To: demo@example.org\r\n"
        b"Subject: A larger message\r\n"
        b"\r\n" + b"".join(b"line %05d of a longer body\r\n" % i for i in range(2000))
    ),
]


def seed(root: str, user: str = "demo") -> str:
    """
    Create C{root/user} as a Maildir with L{MESSAGES} in C{new/}, unless it
    exists already.

    @return: the Maildir's path.
    """
    path = os.path.join(root, user)
    if os.path.isdir(path):
        return path
    for subdir in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(path, subdir), mode=0o700)
    now = int(time.time())
    for number, message in enumerate(MESSAGES):
        name = f"{now}.M{number}P{os.getpid()}.popserv-demo"
        tmp = os.path.join(path, "tmp", name)
        with open(tmp, "wb") as f:
            f.write(message)
        os.rename(tmp, os.path.join(path, "new", name))
    return path


def makeCertificate(directory: str) -> tuple[str, str]:
    """
    A self-signed certificate for C{localhost} and C{127.0.0.1}, valid for
    a year, as C{directory/cert.pem} and C{directory/key.pem}; kept if they
    exist.

    @return: the certificate's and the key's paths.
    """
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    certificate = os.path.join(directory, "cert.pem")
    keyfile = os.path.join(directory, "key.pem")
    if os.path.exists(certificate) and os.path.exists(keyfile):
        return certificate, keyfile
    os.makedirs(directory, mode=0o700, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    with open(keyfile, "wb", opener=lambda path, flags: os.open(path, flags, 0o600)) as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    with open(certificate, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return certificate, keyfile


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m popserv.demo",
        description="Seed the demo Maildir that make demo serves: user demo,"
        " in ROOT/demo, left as it is if it exists.",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="also make a self-signed certificate for localhost and 127.0.0.1"
        " in ROOT/tls/ (for make demo-tls), unless there is one",
    )
    parser.add_argument("root", metavar="ROOT", help="the directory of the demo's mail")
    try:
        args = parser.parse_args(argv[1:])
    except SystemExit as e:
        # --help (0) or a usage error (2), already printed: nothing made.
        return e.code if isinstance(e.code, int) else 2
    print(f"demo Maildir: {seed(args.root)}")
    if args.tls:
        certificate, key = makeCertificate(os.path.join(args.root, "tls"))
        print(f"demo certificate: {certificate} (key {key})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
