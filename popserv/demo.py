"""
Seed a demo Maildir for C{make demo}: user C{demo} with a few messages that
show off what a POP3 server must get right (dot-stuffing, LF line endings,
UTF-8 headers, a larger body).

Run as C{python -m popserv.demo ROOT}; creates C{ROOT/demo} if it is not
there and never touches an existing one.
"""

from __future__ import annotations

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


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m popserv.demo ROOT", file=sys.stderr)
        return 2
    print(f"demo Maildir: {seed(argv[1])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
