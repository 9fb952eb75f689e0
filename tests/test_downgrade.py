"""
Tests for popserv.downgrade and its use: UTF-8 header fields towards
clients that did not enable UTF8 (RFC 6856, RFC 6858).
"""

from __future__ import annotations

import base64
import email.header
import email.policy
import email.utils
import itertools
import re
import time
import urllib.parse
from array import array
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from protocol_helpers import (
    DelayedStore,
    Session,
    SizesUnknownMaildrop,
    SizesUnknownStore,
    StoreOver,
)
from twisted.internet.defer import fail, succeed
from twisted.logger import capturedLogs

from popserv.downgrade import (
    MAX_HEADER,
    MAX_PARAMETERS,
    HeaderDowngrade,
    _encodedLength,
    _encodedWords,
    _folded,
    downgradeGrowth,
    downgradeHeader,
    headerEnd,
    prefixNeeded,
)
from popserv.encoder import MessageEncoder, downgradeDelta, encodeMessage, wireSize
from popserv.errors import MessageUnavailable
from popserv.interfaces import MessageInfo, MessageList
from popserv.memorystore import MemoryStore

UTF8_MESSAGE = (
    "From: Bj\u00f6rn <bj\u00f6rn@ex\u00e4mple.org>\r\n"
    "To: demo@example.org\r\n"
    "Subject: Gr\u00fc\u00dfe\r\n"
    " aus Z\u00fcrich\r\n"
    "\r\n"
    "K\u00f6rper bleibt UTF-8.\r\n"
).encode("utf-8")


def addresses(field: bytes) -> list[tuple[str, str]]:
    """
    The (display name, address) pairs a mail reader finds in a header
    field, encoded-words decoded as RFC 2047 section 6.2 says (white space
    between two of them is dropped, which Python's newer header parser does
    not do).
    """
    from email.utils import getaddresses

    raw = field.split(b":", 1)[1].replace(b"\r\n", b"").decode("ascii")
    return [
        (decoded(name.encode()) if name else "", address) for name, address in getaddresses([raw])
    ]


def decoded(value: bytes) -> str:
    return str(email.header.make_header(email.header.decode_header(value.decode("ascii"))))


def test_unstructuredField() -> None:
    """
    A UTF-8 Subject becomes encoded-words that decode to the same text,
    folded onto continuation lines when long.
    """
    out = downgradeHeader(("Subject: " + "\u00e4" * 60 + "\r\n").encode())
    assert out.isascii()
    assert out.count(b"\r\n ") >= 1
    assert all(len(line) <= 78 for line in out.split(b"\r\n"))
    assert decoded(out[len(b"Subject: ") :].replace(b"\r\n", b"")) == "\u00e4" * 60


def test_addressField() -> None:
    """
    An address field whose addresses are ASCII keeps them, each mailbox on
    its own line, the UTF-8 display names encoded: a reply still reaches
    the sender.
    """
    out = downgradeHeader("From: Bj\u00f6rn <bjorn@example.org>\r\n".encode())
    assert out == b"From: =?UTF-8?B?QmrDtnJu?= <bjorn@example.org>\r\n"
    field = (
        'To: "M\u00fcller, J\u00fcrgen" <j@example.de>, plain@example.org,'
        "\r\n \u00dcnal <u@example.com.tr>\r\n"
    )
    out = downgradeHeader(field.encode())
    assert out == (
        b"To: =?UTF-8?B?TcO8bGxlciwgSsO8cmdlbg==?= <j@example.de>,\r\n"
        b" plain@example.org,\r\n =?UTF-8?B?w5xuYWw=?= <u@example.com.tr>\r\n"
    )
    assert addresses(out) == [
        ("M\u00fcller, J\u00fcrgen", "j@example.de"),
        ("", "plain@example.org"),
        ("\u00dcnal", "u@example.com.tr"),
    ]


def test_quotedDisplayNameUnquoted() -> None:
    """
    A quoted display name is encoded without its quotes, each quoted-pair
    (RFC 5322 section 3.2.1) made the octet it quotes, the first one too.
    """
    header = b'To: "\\"J\xc3\xbcrgen\\" \\M" <j@example.de>\r\n'
    out = downgradeHeader(header)
    assert out == b"To: =?UTF-8?B?IkrDvHJnZW4iIE0=?= <j@example.de>\r\n"
    assert addresses(out) == [('"J\u00fcrgen" M', "j@example.de")]


@pytest.mark.parametrize(
    "name",
    [
        prefix + base
        for prefix in ("", "Resent-", "RESENT-")
        for base in ("From", "Sender", "Reply-To", "To", "Cc", "bcc")
    ],
)
def test_everyAddressFieldKeepsItsAddress(name: str) -> None:
    """
    Every address field of RFC 5322 section 3.6, and its Resent- form, in
    any case, keeps its ASCII address after a UTF-8 display name, so that
    a reply still reaches it; it is not encoded whole as an unstructured
    field would be.
    """
    out = downgradeHeader(f"{name}: Bj\u00f6rn <bjorn@example.org>\r\n".encode())
    assert out == name.encode() + b": =?UTF-8?B?QmrDtnJu?= <bjorn@example.org>\r\n"


def test_lastAddressFillsTheLine() -> None:
    """
    An address after an encoded display name stays on the name's line when
    it fits within 76 characters (RFC 2047 section 2) with what follows it:
    the last mailbox's address up to the 76th character, another mailbox's
    only with the comma after it, else it starts the next line.  Its size
    is counted as sent.
    """
    address = b"<" + b"a" * 35 + b"@example.org>"  # 49: the name's line ends at 76
    field = b"From: J\xc3\xb6rg " + address + b"\r\n"
    out = downgradeHeader(field)
    assert out == b"From: =?UTF-8?B?SsO2cmc=?= " + address + b"\r\n"
    assert len(out) - 2 == 76
    assert downgradeGrowth(field) == len(out) - len(field)
    field = b"From: J\xc3\xb6rg " + address + b", b@example.org\r\n"
    out = downgradeHeader(field)
    assert out == b"From: =?UTF-8?B?SsO2cmc=?=\r\n " + address + b",\r\n b@example.org\r\n"
    assert downgradeGrowth(field) == len(out) - len(field)


@pytest.mark.parametrize(
    "body",
    [
        "J\u00fcrgen <j\u00fcrgen@b\u00fccher.de>",  # an address that is not ASCII
        "Fr\u00fcnde: a@example.org, b@example.org;",  # a group
        "J\u00fcrgen (work) <j@example.de>",  # a comment
        '"J\u00fcrgen" "M" <j@example.de>',  # two quoted strings
        "J\u00fcrgen",  # no address at all
        "J\u00fcrgen <j@example.de",  # unbalanced
        "J\u00fcrgen <j@example.de> x",  # text after the address
        "J\u00fcrgen <x> <j@example.de>",  # a special in the display name
        "J\u00fcrgen@home <j@example.de>",  # an "@" in an unquoted display name
        "a@example.org (work), J\u00fcrgen <j@example.de>",  # a comment in another mailbox
        "a@example.org>, J\u00fcrgen <j@example.de>",  # a bracket that nothing opened
        "a@example.org,, J\u00fcrgen <j@example.de>",  # an empty element
    ],
)
def test_addressFieldAsGroup(body: str) -> None:
    """
    An address field with a mailbox this cannot keep the address of, or of
    a form it does not take apart, becomes an empty group named by the
    encoded original (RFC 6858).
    """
    out = downgradeHeader(f"To: {body}\r\n".encode())
    name, _, value = out.partition(b": ")
    assert name == b"To" and value.endswith(b" :;\r\n")
    assert decoded(value[: -len(b" :;\r\n")]) == body


# Letters of any script, digits, punctuation and single spaces: what a
# mail reader keeps of a display name as it is (it folds runs of white
# space, of any kind, into one).
_names = st.text(
    st.characters(whitelist_categories=("L", "N", "P", "S"), whitelist_characters=" "),
    min_size=1,
    max_size=40,
).filter(
    lambda n: n == " ".join(n.split(" ")) and "  " not in n and n.strip() == n and not n.isascii()
)
_addresses = st.from_regex(r"[a-z0-9.]{1,30}@[a-z0-9]{1,20}\.example", fullmatch=True)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(_names, _addresses), min_size=1, max_size=4),
    st.sampled_from(["From", "Reply-To", "cc"]),
)
def test_addressesKept(mailboxes: list[tuple[str, str]], field: str) -> None:
    """
    Any UTF-8 display names, quoted, with ASCII addresses: what a mail
    reader parses from the downgraded field is the same names and
    addresses; the field is ASCII and its lines are at most 78 characters.
    """

    def quoted(name: str) -> str:
        return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'

    body = ", ".join(f"{quoted(name)} <{address}>" for name, address in mailboxes)
    out = downgradeHeader(f"{field}: {body}\r\n".encode())
    assert out.isascii()
    assert all(len(line) <= 78 for line in out.split(b"\r\n"))
    assert addresses(out) == mailboxes


def test_mimeParameters() -> None:
    """
    A MIME field keeps its value and its ASCII parameters; a UTF-8
    parameter value is written in RFC 2231's form, not as an encoded-word
    (RFC 2047 section 5), so that a mail reader still finds the type of
    the part and the name of the file.
    """
    header = (
        'Content-Type: application/pdf; name="Scan_M\u00e4rz.pdf"\r\n'
        'Content-Disposition: attachment;\r\n filename="\u00fc\\"q\\".pdf"; size=12\r\n'
    ).encode()
    out = downgradeHeader(header)
    assert out == (
        b"Content-Type: application/pdf;\r\n name*=utf-8''Scan_M%C3%A4rz.pdf\r\n"
        b"Content-Disposition: attachment;\r\n filename*=utf-8''%C3%BC%22q%22.pdf;\r\n"
        b" size=12\r\n"
    )
    message = email.message_from_bytes(out + b"\r\nbody\r\n")
    assert message.get_content_type() == "application/pdf"
    assert message.get_filename() == '\u00fc"q".pdf'
    assert email.utils.collapse_rfc2231_value(message.get_param("name")) == "Scan_M\u00e4rz.pdf"


@pytest.mark.parametrize(
    "body, downgraded",
    [
        # An empty parameter, and a trailing ";", as some mailers write.
        (
            'attachment;; filename="M\u00e4rz.pdf";',
            b"attachment;\r\n filename*=utf-8''M%C3%A4rz.pdf",
        ),
        # White space around the "=" (RFC 2045 section 5.1 allows it).
        (
            'attachment; filename = "M\u00e4rz.pdf"',
            b"attachment;\r\n filename*=utf-8''M%C3%A4rz.pdf",
        ),
        # An empty quoted string is a value, kept as written.
        (
            'attachment; size=""; filename="M\u00e4rz.pdf"',
            b"attachment;\r\n size=\"\";\r\n filename*=utf-8''M%C3%A4rz.pdf",
        ),
        # White space before a ";" is not part of the value.
        (
            'attachment \t; filename="M\u00e4rz.pdf"',
            b"attachment;\r\n filename*=utf-8''M%C3%A4rz.pdf",
        ),
        # The value and each parameter's name are kept as written.
        (
            'Attachment; FileName="M\u00e4rz.pdf"',
            b"Attachment;\r\n FileName*=utf-8''M%C3%A4rz.pdf",
        ),
        # A parameter's name is matched without regard to case (RFC 2045
        # section 5.1): a UTF-8 one that the field gives in RFC 2231's form
        # too, its name in other case, is left out.
        (
            "attachment; FileName=\"M\u00e4rz.pdf\"; filename*=utf-8''M%C3%A4rz.pdf",
            b"attachment;\r\n filename*=utf-8''M%C3%A4rz.pdf",
        ),
        # A ";" in a quoted string does not end the value (which should
        # not hold one): the value is kept whole.
        (
            'attachment"x;"; filename="M\u00e4rz.pdf"',
            b"attachment\"x;\";\r\n filename*=utf-8''M%C3%A4rz.pdf",
        ),
    ],
)
def test_mimeParametersTakenApart(body: str, downgraded: bytes) -> None:
    """
    Empty parameters are left out, the white space around a parameter's
    "=" is not part of its name or value, nor that before a ";" part of
    the field's value, and an empty quoted value is a value: such a field
    is still taken apart, its UTF-8 parameter written in RFC 2231's form
    (under its name as written), not encoded whole.  Names are matched
    without regard to case.
    """
    header = f"Content-Disposition: {body}\r\n".encode()
    out = downgradeHeader(header)
    assert out == b"Content-Disposition: " + downgraded + b"\r\n"
    assert downgradeGrowth(header) == len(out) - len(header)


def test_mimeParameterContinuations() -> None:
    """
    A long UTF-8 parameter is written in RFC 2231 continuations (section
    3) of 48 encoded characters, or a few more so that each ends before
    the first octet of a character: no continuation splits one, not even
    before a continuation octet of 0x80 or 0xBF ("\u00c0", "\u00bf"),
    as some readers decode them one by one.
    """
    name = "a" * 50 + "\u00e4" * 7 + "\u00c0b" + "\u00e4" * 7 + "\u00bf" + "\u00e4" * 2 + "c" * 50
    out = downgradeHeader(f'Content-Disposition: attachment; filename="{name}"\r\n'.encode())
    assert out.split(b"\r\n") == [
        b"Content-Disposition: attachment;",
        b" filename*0*=utf-8''" + b"a" * 48 + b";",
        b" filename*1*=aa" + b"%C3%A4" * 7 + b"%C3%80;",
        b" filename*2*=b" + b"%C3%A4" * 7 + b"%C2%BF;",
        b" filename*3*=%C3%A4%C3%A4" + b"c" * 36 + b";",
        b" filename*4*=" + b"c" * 14,
        b"",
    ]
    assert email.message_from_bytes(out + b"\r\n").get_filename() == name


def _spaced(more: int) -> bytes:
    """
    An ASCII parameter with white space, of 45 characters and C{more}.
    """
    return b'x="' + b"a" * 40 + b" " + b"b" * more + b'"'


@pytest.mark.parametrize(
    "body, lines",
    [
        # The last parameter: a line of 78 characters is kept, one of 79
        # folded before its white space.
        (b'attachment; filename="\xc3\xa4"; ' + _spaced(32), [b" " + _spaced(32)]),
        (
            b'attachment; filename="\xc3\xa4"; ' + _spaced(33),
            [b' x="' + b"a" * 40, b" " + b"b" * 33 + b'"'],
        ),
        # Another parameter follows: the ";" after it counts.
        (
            b'attachment; filename="\xc3\xa4"; ' + _spaced(31) + b"; size=1",
            [b" " + _spaced(31) + b";", b" size=1"],
        ),
        (
            b'attachment; filename="\xc3\xa4"; ' + _spaced(32) + b"; size=1",
            [b' x="' + b"a" * 40, b" " + b"b" * 32 + b'";', b" size=1"],
        ),
    ],
)
def test_mimeParameterLinesWithin78(body: bytes, lines: list[bytes]) -> None:
    """
    Each parameter of a downgraded MIME field starts a line, in its second
    column: an ASCII one is folded before its white space only if that
    line, with the ";" after it if another parameter follows, would pass
    78 characters (RFC 5322 section 2.1.1).  The size is counted as sent.
    """
    header = b"Content-Disposition: " + body + b"\r\n"
    out = downgradeHeader(header)
    assert out.split(b"\r\n") == [
        b"Content-Disposition: attachment;",
        b" filename*=utf-8''%C3%A4;",
        *lines,
        b"",
    ]
    assert max(map(len, out.split(b"\r\n"))) <= 78
    assert downgradeGrowth(header) == len(out) - len(header)


@pytest.mark.parametrize("length", [54, 55])
def test_mimeValueLineWithin78(length: int) -> None:
    """
    A MIME field's value with white space (RFC 2045 takes the field as RFC
    822 does a structured one, where white space may stand around the
    "/"), counted from the column after the field's name, with the ";"
    after it: the line is kept when it is then 78 characters, folded
    before its last white space that keeps it within 78 when it would be
    79 (RFC 5322 section 2.1.1).
    """
    value = b"text / x-" + b"a" * length
    header = b"Content-Type: " + value + b'; name="\xc3\xa4"\r\n'
    out = downgradeHeader(header)
    if length == 54:
        first = [b"Content-Type: " + value + b";"]
        assert len(first[0]) == 78
    else:
        first = [b"Content-Type: text /", b" x-" + b"a" * length + b";"]
    assert out.split(b"\r\n") == [*first, b" name*=utf-8''%C3%A4", b""]
    assert downgradeGrowth(header) == len(out) - len(header)


def test_mimeParameterPercentEncoded() -> None:
    """
    A UTF-8 parameter in RFC 2231's form holds as they are only the octets
    of section 7's attribute-char: a space, a tspecial ("/"), and the "*",
    "'" and "%" that the form itself uses are percent-encoded, as is every
    octet of a UTF-8 character; a mail reader finds the same name.
    """
    header = 'Content-Disposition: attachment; filename="a b/50%*\'\u00e4.pdf"\r\n'.encode()
    out = downgradeHeader(header)
    assert out == (
        b"Content-Disposition: attachment;\r\n filename*=utf-8''a%20b%2F50%25%2A%27%C3%A4.pdf\r\n"
    )
    assert email.message_from_bytes(out + b"\r\n").get_filename() == "a b/50%*'\u00e4.pdf"
    assert downgradeGrowth(header) == len(out) - len(header)


def test_mimeParameterGivenTwice() -> None:
    """
    A UTF-8 file name given also in RFC 2231's form, as mailers write both,
    is left out: a reader that takes the plain one first would otherwise
    find something else than the name, and every reader finds it once.
    """
    header = (
        'Content-Disposition: attachment; filename="M\u00e4rz.pdf";\r\n'
        " filename*=utf-8''M%C3%A4rz.pdf\r\n"
    ).encode()
    out = downgradeHeader(header)
    assert out == b"Content-Disposition: attachment;\r\n filename*=utf-8''M%C3%A4rz.pdf\r\n"
    for policy in (email.policy.compat32, email.policy.default):
        message = email.message_from_bytes(out + b"\r\n", policy=policy)
        assert message.get_filename() == "M\u00e4rz.pdf"


def test_asciiParameterTwice() -> None:
    """
    An ASCII parameter named twice (as some mailers write x-mac-type) does
    not stop a UTF-8 one from being written in RFC 2231's form: the field
    keeps its type.
    """
    header = (
        'Content-Type: application/pdf; name="M\u00e4rz.pdf"; x-mac-type="50"; x-mac-type="50"\r\n'
    ).encode()
    out = downgradeHeader(header)
    assert out == (
        b"Content-Type: application/pdf;\r\n name*=utf-8''M%C3%A4rz.pdf;\r\n"
        b' x-mac-type="50";\r\n x-mac-type="50"\r\n'
    )
    message = email.message_from_bytes(out + b"\r\n", policy=email.policy.compat32)
    assert message.get_content_type() == "application/pdf"


@pytest.mark.parametrize(
    "body",
    [
        'text/plain; name="\u00e4" (comment)',  # a comment
        "text/\u00e4; charset=utf-8",  # a value that is not ASCII
        "text/plain; name*=\u00e4",  # RFC 2231 asked for, but not ASCII
        'text/plain; name*0="Scan_"; name*1="M\u00e4rz"',  # continuations, not ASCII
        'text/plain; name="\u00e4"; NAME="\u00e4"',  # a UTF-8 parameter named twice
        'text/plain; Name="\u00e4"; NAME="\u00e4"',  # the same, neither in lower case
        "text/plain; \u00e4",  # not name=value
        'text/plain; name="\u00e4',  # an unbalanced quote
        "text/plain; name=\u00e4 (comment)",  # a comment after a token
        'text/plain; name="\u00e4"x',  # text after the quoted string
        'attachment"x;\u00e4"',  # a quoted ";" in a value that is not ASCII
        '"x;\u00e4"; name=a',  # the same, the value only a quoted string
    ],
)
def test_mimeFieldEncodedWhole(body: str) -> None:
    """
    A MIME field this does not take apart is encoded whole, as any other
    field is: the text is kept, if not the structure.
    """
    out = downgradeHeader(f"Content-Type: {body}\r\n".encode())
    assert out.startswith(b"Content-Type: =?UTF-8?B?")
    assert decoded(out[len(b"Content-Type: ") :].replace(b"\r\n", b"")) == body


@settings(max_examples=300, deadline=None)
@given(
    st.text(
        st.characters(blacklist_categories=("Cs", "Cc")),
        min_size=1,
        max_size=120,
    ).filter(lambda n: not n.isascii() and n == n.strip()),
    st.sampled_from(["Content-Type: application/octet-stream", "Content-Disposition: inline"]),
)
def test_mimeParameterKept(name: str, field: str) -> None:
    """
    Any UTF-8 file name, quoted: a mail reader finds the same name in the
    downgraded field, which is ASCII with lines of at most 78 characters.
    """
    quoted = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    parameter = "name" if field.startswith("Content-Type") else "filename"
    out = downgradeHeader(f"{field}; {parameter}={quoted}\r\n".encode())
    assert out.isascii()
    assert all(len(line) <= 78 for line in out.split(b"\r\n"))
    message = email.message_from_bytes(out + b"\r\n")
    value = email.utils.collapse_rfc2231_value(
        message.get_param(parameter, header=field[:19].split(":")[0])
    )
    assert value == name


@pytest.mark.parametrize(
    "text",
    [b"J\xc3\xb6rg <j@example.org>", b"report; name=M\xc3\xa4rz"],
)
def test_unstructuredFieldEncodedWhole(text: bytes) -> None:
    """
    A field that is neither an address field nor a MIME field is encoded
    whole, also when its text looks like a mailbox or like parameters: no
    address is kept apart, no parameter written in RFC 2231's form (for
    MIME parameters only); it is sized as sent, also where the size of a
    mailbox is counted without building it.
    """
    header = b"Subject: " + text + b"\r\n"
    out = downgradeHeader(header)
    assert out == b"Subject: =?UTF-8?B?" + base64.b64encode(text) + b"?=\r\n"
    assert downgradeGrowth(header) == len(out) - len(header)


def test_leftAlone() -> None:
    """
    ASCII fields, and 8-bit fields that are not UTF-8, are not changed, nor
    are their folds, also in a header with UTF-8 fields; their sizes are
    unchanged.
    """
    header = b"Subject: plain\r\nX-Legacy: caf\xe9\r\nX-Folded: a\r\n b\r\n"
    assert downgradeHeader(header) == header
    kept = b"X-Folded: a\r\n b\r\nX-Legacy: caf\xe9\r\n\tmore\r\n"
    header = b"Subject: \xc3\xa4\r\n" + kept + b"To: c@d.example\r\n"
    out = downgradeHeader(header)
    assert out == b"Subject: =?UTF-8?B?w6Q=?=\r\n" + kept + b"To: c@d.example\r\n"
    assert downgradeGrowth(header) == len(out) - len(header)


@pytest.mark.parametrize("fold", [b" more", b"\tmore \xc3\xa9"])
def test_unterminatedFoldSentAsItIs(fold: bytes) -> None:
    """
    An unterminated last line belongs to no field, even one that looks like
    a continuation: it is sent as it is, the field before it downgraded
    alone, and sized so.
    """
    header = b"Subject: \xc3\xa9\r\n" + fold
    out = downgradeHeader(header)
    assert out == b"Subject: =?UTF-8?B?w6k=?=\r\n" + fold
    assert downgradeGrowth(header) == len(out) - len(header)


@pytest.mark.parametrize("nameLength", range(1, 13))
def test_wordsHoldWholeCharacters(nameLength: int) -> None:
    """
    Each encoded-word holds whole characters (RFC 2047 section 5: "a
    multi-octet character may not be split across adjacent
    'encoded-word's"), so each decodes as UTF-8 on its own, whatever the
    field name's length puts where.
    """
    text = "a\u00e4\u20ac\U0001f600\u00c0\u00bf\u07ff" * 8
    out = downgradeHeader(b"X" * nameLength + b": " + text.encode() + b"\r\n")
    words = out[nameLength + 2 :].split()
    assert len(words) > 2
    assert "".join(base64.b64decode(word[10:-2]).decode("utf-8") for word in words) == text


def cpuSeconds(function: Any, *args: Any) -> float:
    """
    The CPU time one call takes.
    """
    start = time.process_time()
    function(*args)
    return time.process_time() - start


@pytest.mark.parametrize(
    "field",
    [
        b"To: J\xc3\xb6rg " + b'"\\' * 30000,
        b"Content-Type: text/plain; name=\xc3\xa9; x=" + b'"\\' * 30000,
    ],
)
def test_unclosedQuotesCostLittle(field: bytes) -> None:
    """
    A UTF-8 field of escaped quotes that nothing closes (C{"\\"\\"...}),
    which anyone can mail, is downgraded and sized in time that grows with
    its length, not with its square.  Trying the quoted string again at
    every quote took 17 s for this 60 KB field, on the reactor thread, and
    minutes within L{MAX_HEADER}.  The bound guards against that (two
    seconds, where both take milliseconds); it is not a speed target.
    """
    message = field + b"\r\n\r\nbody\r\n"
    assert cpuSeconds(downgradeDelta, message) < 2.0
    assert cpuSeconds(encodeMessage, message, None, True) < 2.0
    # Nothing was taken apart: the field is encoded whole, as any field
    # with an unbalanced quote.
    head = encodeMessage(message, None, True).split(b"\r\n\r\n")[0]
    assert head.isascii()
    assert decoded(head.split(b": ", 1)[1].replace(b"\r\n", b"").removesuffix(b" :;")) == (
        field.split(b": ", 1)[1].decode()
    )


def test_manyParametersCostLittle() -> None:
    """
    A MIME field of many UTF-8 parameters (26,000 in 249 KB, within
    L{MAX_HEADER}) is downgraded in time that grows with their number, not
    with its square: counting each parameter's name among all the others
    took 9 s, on the reactor thread.  The bound guards against that; it is
    not a speed target.  Up to L{MAX_PARAMETERS}, each parameter is
    written in RFC 2231's form; beyond, the field is encoded whole, which
    costs less than taking it apart.
    """
    message = (
        b"Content-Type: text/plain"
        + b"".join(b";a%d=\xc3\xa9" % i for i in range(26000))
        + b"\r\n\r\nbody\r\n"
    )
    assert len(message) < MAX_HEADER
    assert cpuSeconds(downgradeDelta, message) < 2.0
    assert cpuSeconds(encodeMessage, message, None, True) < 2.0
    head = encodeMessage(message, None, True).split(b"\r\n\r\n")[0]
    assert decoded(head.split(b": ", 1)[1].replace(b"\r\n", b"")) == (
        message.split(b": ", 1)[1].split(b"\r\n")[0].decode()
    )
    field = b"Content-Type: text/plain" + b"".join(
        b";a%d=\xc3\xa9" % i for i in range(MAX_PARAMETERS)
    )
    lines = encodeMessage(field + b"\r\n\r\n", None, True).split(b"\r\n")
    assert lines[:2] == [b"Content-Type: text/plain;", b" a0*=utf-8''%C3%A9;"]
    assert lines[MAX_PARAMETERS] == b" a%d*=utf-8''%%C3%%A9" % (MAX_PARAMETERS - 1)
    lines = encodeMessage(field + b";a=\xc3\xa9\r\n\r\n", None, True).split(b"\r\n")
    assert lines[0].startswith(b"Content-Type: =?UTF-8?B?")


@pytest.mark.parametrize(
    "before, line",
    [
        (b"Subject: ok\r\n", b"S\xc3\xbcbject: hi"),
        (b"Subject: ok\r\n", b"Caf\xc3\xa9 without a colon"),
        (b"", b" Caf\xc3\xa9 on the first line, indented"),
    ],
)
def test_lineNotAField(before: bytes, line: bytes) -> None:
    """
    A UTF-8 line in the header that is not a field, with a name that is not
    ASCII or no colon (RFC 5322 section 2.2), reaches a client without
    UTF8 as encoded-words of the whole line and its continuation (RFC 6856
    section 2: no raw UTF-8), with nothing added before it: it stays a
    line that is not a field.  Its size is counted as it is sent.
    """
    after = b"To: a@b.example\r\n"
    header = before + line + b"\r\n folded \xc3\xa9\r\n" + after
    out = downgradeHeader(header)
    assert out.isascii()
    assert out.startswith(before + b"=?UTF-8?B?")
    assert out.endswith(b"?=\r\n" + after)
    encoded = out[len(before) : -len(after)]
    assert decoded(encoded.replace(b"\r\n", b"")) == (line.strip() + b" folded \xc3\xa9").decode()
    assert downgradeGrowth(header) == len(out) - len(header)


def test_lineNotAFieldWordsWithin75() -> None:
    """
    A long UTF-8 line that is not a field, encoded whole from its first
    column, is cut into encoded-words of at most 75 characters (RFC 2047
    section 2), each on its own line of at most 76.
    """
    line = ("\u00e9" * 60).encode()
    out = downgradeHeader(line + b"\r\n")
    lines = out.split(b"\r\n")
    assert lines[-1] == b""
    words = [lines[0]] + [folded[1:] for folded in lines[1:-1]]
    assert [len(word) for word in words] == [72, 72, 56]
    assert b"".join(base64.b64decode(word[10:-2]) for word in words) == line
    assert downgradeGrowth(line + b"\r\n") == len(out) - len(line) - 2


def test_bodyUntouched() -> None:
    """
    Only the header is downgraded; the body stays UTF-8.
    """
    out = encodeMessage(UTF8_MESSAGE, downgrade=True)
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.isascii()
    assert body == "K\u00f6rper bleibt UTF-8.\r\n.\r\n".encode()
    assert b"To: demo@example.org\r\n" in head


def chunked(message: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(message) + 1) for c in cuts} | {0, len(message)})
    return [message[a:b] for a, b in itertools.pairwise(points)]


headers = st.lists(
    st.sampled_from(
        [
            b"Subject: \xc3\xa4\xc3\xb6",
            b"To: a@b",
            b"From: \xe2\x82\xac <x@y>",
            b" folded \xc3\xbc",
            b"X: \xff",
            b"",
            b".dot",
        ]
    ),
    max_size=8,
)
endings = st.sampled_from([b"\n", b"\r\n"])


@settings(max_examples=300, deadline=None)
@given(headers, endings, st.lists(st.integers(0, 300), max_size=8), st.integers(0, 3))
def test_chunkingNeverMatters(lines: list[bytes], ending: bytes, cuts: list[int], top: int) -> None:
    """
    Downgrading gives the same bytes however the message is chunked, also
    for TOP, and the downgraded wire size (whole or from the delta) is what
    is sent before stuffing.
    """
    message = ending.join(lines) + ending + b"body\xc3\xa4" + ending
    whole = encodeMessage(message, downgrade=True)
    for bodyLines in (None, top):
        encoder = MessageEncoder(bodyLines, downgrade=True)
        out = b"".join(encoder.feed(c) for c in chunked(message, cuts)) + encoder.finish()
        assert out == encodeMessage(message, bodyLines, downgrade=True)
    unstuffed = whole[:-3].replace(b"\r\n..", b"\r\n.")
    if unstuffed.startswith(b".."):
        unstuffed = unstuffed[1:]
    assert wireSize(message, downgrade=True) == len(unstuffed)
    assert wireSize(message) + downgradeDelta(message) == len(unstuffed)


@pytest.mark.parametrize(
    "message, header",
    [
        (b"Subject: \xc3\xa4\r\nTo: a@b\r\n", b"Subject: =?UTF-8?B?w6Q=?=\r\nTo: a@b\r\n"),
        (b"To: a@b\nSubject: \xc3\xa4", b"To: a@b\r\nSubject: =?UTF-8?B?w6Q=?=\r\n"),
        (b"Subject: \xc3\xa4", b"Subject: =?UTF-8?B?w6Q=?=\r\n"),
    ],
)
def test_headerOnlyMessage(message: bytes, header: bytes) -> None:
    """
    A message that ends inside its header section (no blank line, no body;
    its last line terminated or not) is held back to its end, then sent
    downgraded, and sized as sent; the filter then has nothing more.
    """
    assert encodeMessage(message, downgrade=True) == header + b".\r\n"
    assert wireSize(message, downgrade=True) == len(header)
    assert wireSize(message) + downgradeDelta(message) == len(header)
    f = HeaderDowngrade()
    crlf = message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    assert f.feed(crlf) == b""
    assert f.finish() + (b"" if crlf.endswith(b"\r\n") else b"\r\n") == header
    assert f.finish() == b""
    assert f.feed(b"late") == b"late"


def test_unendedHeaderHeldBackOnlyToTheBound() -> None:
    """
    A header section that has not ended within the bound is held back no
    longer: the chunk that takes it past L{MAX_HEADER} (and 2, for a CRLF
    that could still end it) lets all of it through, unchanged, and what
    follows goes straight through.  Memory stays bounded for a hostile
    message with no blank line, on a session that reads it in chunks.
    """
    first = b"Subject: \xc3\xa4\r\nX: "
    filler = b"a" * (MAX_HEADER + 2 - len(first))
    f = HeaderDowngrade()
    assert f.feed(first) == b""
    assert f.feed(filler) == b""  # exactly at the bound: an end could still come
    assert f.feed(b"b") == first + filler + b"b"
    assert f.feed(b"\xc3\xa4\r\n\r\nbody\r\n") == b"\xc3\xa4\r\n\r\nbody\r\n"
    assert f.finish() == b""


def test_hugeHeaderPassesThrough() -> None:
    """
    A header section ending beyond the bound is sent as it is, whatever the
    chunking, and the size agrees.
    """
    message = b"Subject: \xc3\xa4\r\n" + b"X: " + b"a" * MAX_HEADER + b"\r\n\r\nbody\r\n"
    for size in (1000, 65536, len(message)):
        f = HeaderDowngrade()
        out = b"".join(f.feed(message[i : i + size]) for i in range(0, len(message), size))
        assert out + f.finish() == message
    assert wireSize(message, downgrade=True) == wireSize(message)


@pytest.mark.parametrize("body", [b"\r\nbody\r\n", b""])
@pytest.mark.parametrize("over", [0, 1])
def test_headerBoundIsDocumented(over: int, body: bytes) -> None:
    """
    docs/capabilities.rst: "A header section that ends more than 256 KiB
    into a message is sent as it is"; one that ends at 256 KiB is
    downgraded, and sized as sent.  So too for a message that is all
    header.
    """
    first = b"Subject: \xc3\xa4\r\n"
    filler = 256 * 1024 + over - len(first) - len(b"X: \r\n")
    message = first + b"X: " + b"a" * filler + b"\r\n" + body
    out = encodeMessage(message, downgrade=True)
    if over:
        assert out == message + b".\r\n"
    else:
        assert out.startswith(b"Subject: =?UTF-8?B?w6Q=?=\r\nX: aaa")
        assert out.endswith(b"a\r\n" + body + b".\r\n")
    assert wireSize(message, downgrade=True) == len(out) - 3
    assert wireSize(message) + downgradeDelta(message) == len(out) - 3


@pytest.mark.parametrize("over", [-1, 0, 1])
@pytest.mark.parametrize("ending", [b"\n", b"\r\n"])
def test_deltaAtHeaderBound(over: int, ending: bytes) -> None:
    """
    The size a login computes from a stored prefix agrees with the encoder
    for a header just within the bound, at it and just beyond it.
    """
    first = b"Subject: \xc3\xa4" + ending
    # The bound counts the header in CRLF form, up to its last CRLF.
    filler = MAX_HEADER + over - len(first.replace(ending, b"\r\n")) - len(b"X: \r\n")
    message = first + b"X: " + b"a" * filler + ending + ending + b"body" + ending
    downgraded = wireSize(message, downgrade=True)
    assert (downgraded > wireSize(message)) == (over <= 0)
    assert wireSize(message) + downgradeDelta(message) == downgraded


class TestProtocol:
    def session(self, store: Any = None) -> Session:
        s = Session(store=store)
        s.memory.deliver("alice", UTF8_MESSAGE)
        return s

    def test_withoutUTF8(self) -> None:
        """
        A client that did not send UTF8 gets the header downgraded, and
        STAT, LIST and RETR's size agree with what it gets.
        """
        s = self.session()
        s.login()
        size = wireSize(UTF8_MESSAGE, downgrade=True)
        assert size != wireSize(UTF8_MESSAGE)
        assert s.command(b"STAT") == b"+OK 1 %d\r\n" % size
        reply = s.command(b"RETR 1")
        assert reply == b"+OK %d octets\r\n" % size + encodeMessage(UTF8_MESSAGE, downgrade=True)
        assert s.command(b"TOP 1 0").split(b"\r\n\r\n")[0].isascii()

    def test_withUTF8(self) -> None:
        """
        A client that sent UTF8 gets the message as stored.
        """
        s = self.session()
        s.command(b"UTF8")
        s.login()
        assert s.command(b"STAT") == b"+OK 1 %d\r\n" % wireSize(UTF8_MESSAGE)
        assert s.command(b"RETR 1").endswith(encodeMessage(UTF8_MESSAGE))

    def test_storeWithoutDowngradedSize(self) -> None:
        """
        For a store that does not give downgraded sizes the protocol reads
        each message's header at login to find them.
        """
        memory = MemoryStore()
        memory.deliver("alice", UTF8_MESSAGE)
        memory.deliver("alice", b"Subject: ascii\r\n\r\nx\r\n")
        s = Session(store=SizesUnknownStore(memory))
        s.login()
        sizes = [wireSize(UTF8_MESSAGE, downgrade=True), wireSize(b"Subject: ascii\r\n\r\nx\r\n")]
        assert s.command(b"LIST") == (
            b"+OK 2 messages (%d octets)\r\n1 %d\r\n2 %d\r\n.\r\n" % (sum(sizes), *sizes)
        )

    def test_commandsWaitForHeaderSizes(self) -> None:
        """
        Where the headers are read at login for their sizes and the reads
        answer later, a command pipelined behind PASS waits for the login
        to complete: STAT is answered in TRANSACTION, with the sizes.
        """
        memory = MemoryStore()
        memory.deliver("alice", UTF8_MESSAGE)
        store = DelayedStore(memory)
        s = Session(store=SizesUnknownStore(store))  # type: ignore[arg-type]
        s.send(b"USER alice\r\nPASS secret\r\nSTAT\r\n")
        store.fireAll()
        size = wireSize(UTF8_MESSAGE, downgrade=True)
        assert s.take() == (
            b"+OK Send PASS\r\n+OK Logged in, 1 messages (%d octets)\r\n+OK 1 %d\r\n" % (size, size)
        )

    def test_headerSizedAcrossShortReads(self) -> None:
        """
        A store's reader may give fewer octets than asked (IMessageReader:
        1 to size): the header is read on until its end to size it, and
        every reader opened for that is closed.
        """
        closed: list[int] = []

        class ShortReader:
            def __init__(self, reader: Any) -> None:
                self._reader = reader
                self._left = b""
                self._end = False

            def read(self, size: int) -> Any:
                if self._left or self._end:
                    part, self._left = self._left[:7], self._left[7:]
                    return succeed(part)
                return self._reader.read(size).addCallback(self._cut)

            def _cut(self, data: bytes) -> bytes:
                self._end = not data
                self._left = data[7:]
                return data[:7]

            def close(self) -> None:
                closed.append(1)
                self._reader.close()

        class ShortReadsMaildrop(SizesUnknownMaildrop):
            def openMessage(self, index: int) -> Any:
                return self._maildrop.openMessage(index).addCallback(ShortReader)

        memory = MemoryStore()
        memory.deliver("alice", UTF8_MESSAGE)
        s = Session(store=StoreOver(memory, ShortReadsMaildrop))
        assert s.login().startswith(b"+OK Logged in")
        size = wireSize(UTF8_MESSAGE, downgrade=True)
        assert s.command(b"LIST 1") == b"+OK 1 %d\r\n" % size
        assert closed == [1]

    def test_headerThatNeverEndsSized(self) -> None:
        """
        A message that is all header, with no blank line to end it, is
        sized at login from what there is: reading stops at the message's
        end (here at most 100 reads).
        """
        message = "Subject: caf\u00e9\r\n".encode()
        reads: list[int] = []

        class Counting(SizesUnknownMaildrop):
            def openMessage(self, index: int) -> Any:
                def counted(reader: Any) -> Any:
                    read = reader.read

                    def limited(size: int) -> Any:
                        reads.append(size)
                        assert len(reads) <= 100, "read on past the message's end"
                        return read(size)

                    reader.read = limited
                    return reader

                return self._maildrop.openMessage(index).addCallback(counted)

        memory = MemoryStore()
        memory.deliver("alice", message)
        s = Session(store=StoreOver(memory, Counting))
        assert s.login().startswith(b"+OK Logged in")
        size = wireSize(message, downgrade=True)
        assert s.command(b"LIST 1") == b"+OK 1 %d\r\n" % size

    def test_messageGoneWhileSizingHeaders(self) -> None:
        """
        A message whose file vanished before its header could be read for
        its size (MessageUnavailable) does not fail the login: it is
        listed with its stored size, and RETR says it is unavailable.
        """

        class FirstGone(SizesUnknownMaildrop):
            def openMessage(self, index: int) -> Any:
                if index == 0:
                    return fail(MessageUnavailable())
                return self._maildrop.openMessage(index)

        memory = MemoryStore()
        memory.deliver("alice", UTF8_MESSAGE)
        memory.deliver("alice", UTF8_MESSAGE)
        s = Session(store=StoreOver(memory, FirstGone))
        assert s.login().startswith(b"+OK Logged in, 2 messages")
        stored, downgraded = wireSize(UTF8_MESSAGE), wireSize(UTF8_MESSAGE, downgrade=True)
        assert s.command(b"LIST") == (
            b"+OK 2 messages (%d octets)\r\n1 %d\r\n2 %d\r\n.\r\n"
            % (stored + downgraded, stored, downgraded)
        )
        assert s.command(b"RETR 1").startswith(b"-ERR")

    def test_droppedWhileSizingHeaders(self) -> None:
        """
        A session that ends while the headers are read for their sizes
        stops reading them, quietly: no server fault logged, and no
        autologout later for the session that is gone.
        """
        memory = MemoryStore()
        memory.deliver("alice", UTF8_MESSAGE)
        memory.deliver("alice", UTF8_MESSAGE)
        store = DelayedStore(memory)
        opened: list[int] = []

        class Recording(SizesUnknownMaildrop):
            def openMessage(self, index: int) -> Any:
                opened.append(index)
                return self._maildrop.openMessage(index)

        s = Session(store=StoreOver(store, Recording))  # type: ignore[arg-type]
        s.send(b"USER alice\r\nPASS secret\r\n")
        for _ in range(100):
            if opened:
                break
            assert store.fireOne()
        assert opened == [0]
        s.protocol.connectionLost(None)
        with capturedLogs() as events:
            store.fireAll()
            s.clock.advance(600)  # no autologout timer was started for it
        assert events == []

    @pytest.mark.parametrize("known", [True, False])
    def test_storeListingColumns(self, known: bool) -> None:
        """
        A store that lists its messages as a MessageList (array columns, as
        the Maildir store does; or list columns without the downgraded
        sizes) gives a client without UTF8 the same STAT and LIST as a list
        of MessageInfo does, and one that sent UTF8 the stored sizes.
        """
        plain = b"Subject: ascii\r\n\r\nx\r\n"

        class ColumnsMaildrop(SizesUnknownMaildrop):
            def listMessages(self) -> Any:
                def columns(infos: list[MessageInfo]) -> MessageList:
                    sizes = array("q", [i.size for i in infos])
                    uids = [i.uid for i in infos]
                    if known:
                        return MessageList(
                            sizes, uids, array("q", [i.downgradedSize for i in infos])
                        )
                    return MessageList(list(sizes), uids, [None] * len(infos))

                return self._maildrop.listMessages().addCallback(columns)

        class ColumnsStore(SizesUnknownStore):
            def openMaildrop(self, user: str) -> Any:
                return self._store.openMaildrop(user).addCallback(ColumnsMaildrop)

        memory = MemoryStore()
        memory.deliver("alice", UTF8_MESSAGE)
        memory.deliver("alice", plain)
        s = Session(store=ColumnsStore(memory))
        s.login()
        sizes = [wireSize(UTF8_MESSAGE, downgrade=True), wireSize(plain)]
        assert s.command(b"LIST") == (
            b"+OK 2 messages (%d octets)\r\n1 %d\r\n2 %d\r\n.\r\n" % (sum(sizes), *sizes)
        )
        s.command(b"QUIT")  # the maildrop's lock
        s = Session(store=ColumnsStore(memory))
        s.command(b"UTF8")
        s.login()
        stored = wireSize(UTF8_MESSAGE) + wireSize(plain)
        assert s.command(b"STAT") == b"+OK 2 %d\r\n" % stored


def test_encodedWordLength() -> None:
    """
    Every encoded-word is at most 75 characters (RFC 2047 section 2).
    """
    out = downgradeHeader(("Subject: " + "\u20ac" * 100 + "\r\n").encode())
    for word in out[len(b"Subject: ") :].split():
        assert len(word) <= 75
        assert base64.b64decode(word[10:-2]).decode("utf-8")


@pytest.mark.parametrize("nameLength", [1, 7, 30, 60, 61, 62, 63, 64, 65, 70, 74, 80])
def test_encodedWordsFillLines(nameLength: int) -> None:
    """
    Lines of encoded-words are at most 76 characters (RFC 2047 section 2),
    and each but the last is full: another word's worth of base64 (four
    characters) would not fit.  After a field name too long to leave room
    for one character, the text starts on the next line.
    """
    name = b"X" * nameLength
    text = ("\u00e9" + "a" * 300).encode()
    lines = downgradeHeader(name + b": " + text + b"\r\n").split(b"\r\n")
    assert lines[-1] == b""
    lines = lines[:-1]
    first = lines[0][len(name) + 2 :]
    if nameLength + 2 + 12 + 4 > 76:
        assert first == b""  # no room: the text starts on the next line
    words = ([first] if first else []) + [line[1:] for line in lines[1:]]
    assert b"".join(base64.b64decode(word[10:-2]) for word in words) == text
    for line, word in zip(lines[-len(words) :], words, strict=True):
        assert len(line) <= 76 and len(word) <= 75
    for line in lines[-len(words) : -1]:
        assert len(line) > 76 - 4


@pytest.mark.parametrize("nameLength", [54, 55, 58])
def test_firstWordHoldsAnyCharacter(nameLength: int) -> None:
    """
    The first line carries an encoded-word only if it has room for any
    character, of up to four UTF-8 octets; after a longer field name the
    text starts on the next line, whatever its first character.
    """
    name = b"X" * nameLength
    out = downgradeHeader(name + b": \xc3\xa9abc\r\n")
    fold = b" " if nameLength == 54 else b" \r\n "
    assert out == name + b":" + fold + b"=?UTF-8?B?w6lhYmM=?=\r\n"
    # One character of three octets: counted, as sent, on the next line.
    header = name + b": \xe2\x82\xac\r\n"
    out = downgradeHeader(header)
    assert out == name + b":" + fold + b"=?UTF-8?B?4oKs?=\r\n"
    assert downgradeGrowth(header) == len(out) - len(header)


def test_addressAfterNameWithWhiteSpace() -> None:
    """
    An address field whose name is followed by white space (RFC 5322
    section 4.5.3's obsolete syntax) may leave its first line room for
    three octets only: a display name of one three-octet character then
    starts the next line, and is sized so.
    """
    header = b"Cc" + b" " * 53 + b": \xe2\x82\xac <a@b.example>\r\n"
    out = downgradeHeader(header)
    assert out == header[:57] + b"\r\n =?UTF-8?B?4oKs?= <a@b.example>\r\n"
    assert downgradeGrowth(header) == len(out) - len(header)


def test_tabFoldedField() -> None:
    """
    A field folded before a tab is one field, as one folded before a
    space: downgraded whole, its text unfolded (RFC 5322 section 2.2.3),
    and sized as sent.
    """
    header = "Subject: Gr\u00fc\u00dfe\r\n\taus Z\u00fcrich\r\nTo: a@b.example\r\n".encode()
    out = downgradeHeader(header)
    assert out == b"Subject: =?UTF-8?B?R3LDvMOfZQlhdXMgWsO8cmljaA==?=\r\nTo: a@b.example\r\n"
    assert downgradeGrowth(header) == len(out) - len(header)
    # Only the line after the tab is UTF-8: sizing finds the field's start.
    header = "To: a@b.example\r\nSubject: G\r\n\taus Z\u00fcrich\r\n".encode()
    out = downgradeHeader(header)
    assert out == b"To: a@b.example\r\nSubject: =?UTF-8?B?RwlhdXMgWsO8cmljaA==?=\r\n"
    assert downgradeGrowth(header) == len(out) - len(header)


def test_foldedPartsKeepShortLines() -> None:
    """
    An ASCII mailbox or MIME parameter that the stored header folds over
    many lines is written back folded, its lines within 78 characters
    (RFC 5322 section 2.1.1; the downgrade unfolds a field to take it
    apart, and gave it back as one line of 2,462 characters, past the 998
    the RFC allows).  The fields read as they did, and are sized as sent.
    """
    name = b"\r\n ".join([b"word" * 15] * 40)
    charset = b"\r\n ".join([b"w" * 60] * 40)
    for header in (
        b'To: "' + name + b'"\r\n <a@example.org>, J\xc3\xb6rg <j@example.org>\r\n',
        b'Content-Type: text/plain;\r\n charset="' + charset + b'";\r\n name="M\xc3\xa4rz.pdf"\r\n',
    ):
        assert max(map(len, header.split(b"\r\n"))) <= 78
        out = downgradeHeader(header)
        assert max(map(len, out.split(b"\r\n"))) <= 78
        assert downgradeGrowth(header) == len(out) - len(header)
        message = email.message_from_bytes(out + b"\r\n", policy=email.policy.compat32)
        if header.startswith(b"To:"):
            assert addresses(out) == [
                (name.replace(b"\r\n", b"").decode(), "a@example.org"),
                ("J\u00f6rg", "j@example.org"),
            ]
        else:
            unfolded = message.get_param("charset").replace("\r\n", "")  # type: ignore[union-attr]
            assert unfolded == charset.replace(b"\r\n", b"").decode()


@pytest.mark.parametrize("more", [b"", b", b@example.org"])
def test_foldedAddressAfterEncodedName(more: bytes) -> None:
    """
    An address that holds white space (RFC 5322's obsolete syntax), folded
    over many lines in the stored header, is folded again after an encoded
    display name too, within 78 characters (it came back as one line of
    1,222), and reads as it did.
    """
    address = b"<" + b"\r\n ".join([b"a" * 60] * 20) + b">"
    header = b"To: J\xc3\xb6rg " + address + more + b"\r\n"
    out = downgradeHeader(header)
    assert max(map(len, out.split(b"\r\n"))) <= 78
    assert downgradeGrowth(header) == len(out) - len(header)
    # The address, too long for the name's line, starts the next one.
    assert out.startswith(b"To: =?UTF-8?B?SsO2cmc=?=\r\n <" + b"a" * 60 + b"\r\n ")
    assert out.replace(b"\r\n", b"").endswith(address.replace(b"\r\n", b"") + more)


@pytest.mark.parametrize("length", [54, 55])
def test_laterMailboxStartsItsLine(length: int) -> None:
    """
    A mailbox after the first starts its own line, in its second column,
    however long the field name: its address stays on its encoded display
    name's line if that line is then at most 76 characters (RFC 2047
    section 2), as on any continuation line.
    """
    address = b"<" + b"a" * (length - 14) + b"@example.org>"
    name = "J\u00f6rg".encode()
    header = b"Resent-Reply-To: a@example.org, " + name + b" " + address + b"\r\n"
    out = downgradeHeader(header)
    word = b"=?UTF-8?B?" + base64.b64encode(name) + b"?="
    assert 1 + len(word) + 1 + 54 == 76
    fold = b" " if length == 54 else b"\r\n "
    assert out == b"Resent-Reply-To: a@example.org,\r\n " + word + fold + address + b"\r\n"
    assert downgradeGrowth(header) == len(out) - len(header)


@pytest.mark.parametrize("length", [50, 51])
def test_addressAfterTwoLineName(length: int) -> None:
    """
    After a display name whose encoded-words take two lines, the address
    stays on the second line if that line is then at most 76 characters
    (RFC 2047 section 2): the column counted is where that line's word
    ends, not the first line's.
    """
    name = b"J\xc3\xb6rg" + b"a" * 49  # 45 octets, then 9 on the second line
    address = b"<" + b"a" * (length - 14) + b"@example.org>"
    header = b"To: " + name + b" " + address + b"\r\n"
    out = downgradeHeader(header)
    words = b"=?UTF-8?B?" + base64.b64encode(name[:45]) + b"?=\r\n =?UTF-8?B?YWFhYWFhYWFh?="
    fold = b" " if length == 50 else b"\r\n "
    assert out == b"To: " + words + fold + address + b"\r\n"
    assert max(map(len, out.split(b"\r\n"))) == 76
    assert downgradeGrowth(header) == len(out) - len(header)


@pytest.mark.parametrize(
    "length, more",
    [(77, b""), (78, b""), (76, b", b@example.org"), (77, b", b@example.org")],
)
def test_addressOnItsOwnLine(length: int, more: bytes) -> None:
    """
    An address that starts the line after an encoded display name starts
    in its second column, after the space that folds it: it is folded again
    only if that line, with the comma after it if another mailbox follows,
    would pass 78 characters (RFC 5322 section 2.1.1).
    """
    address = b"<" + b"a" * 40 + b" " + b"b" * (length - 43) + b">"
    assert len(address) == length
    header = b"To: J\xc3\xb6rg " + address + more + b"\r\n"
    out = downgradeHeader(header)
    lines = [b"To: =?UTF-8?B?SsO2cmc=?="]
    comma = b"," if more else b""
    if length + len(comma) == 77:  # a line of 78
        lines.append(b" " + address + comma)
    else:
        lines += [b" <" + b"a" * 40, b" " + b"b" * (length - 43) + b">" + comma]
    if more:
        lines.append(b" b@example.org")
    assert out.split(b"\r\n") == [*lines, b""]
    assert max(map(len, out.split(b"\r\n"))) <= 78
    assert downgradeGrowth(header) == len(out) - len(header)


@pytest.mark.parametrize("length", [18, 19])
def test_asciiMailboxFirst(length: int) -> None:
    """
    An ASCII mailbox before a UTF-8 one is kept as it is, on the field's
    first line, counted from the column after the field's name with the
    comma after it: folded before its white space only if that line would
    pass 78 characters (RFC 5322 section 2.1.1).
    """
    mailbox = b"A" * 40 + b" <" + b"a" * length + b"@example.org>"
    header = b"To: " + mailbox + b", J\xc3\xb6rg <j@example.org>\r\n"
    out = downgradeHeader(header)
    if length == 18:
        first = [b"To: " + mailbox + b","]
        assert len(first[0]) == 78
    else:
        first = [b"To: " + b"A" * 40, b" <" + b"a" * length + b"@example.org>,"]
    assert out.split(b"\r\n") == [*first, b" =?UTF-8?B?SsO2cmc=?= <j@example.org>", b""]
    assert downgradeGrowth(header) == len(out) - len(header)


@pytest.mark.parametrize(
    "body", [b"J\xc3\xb6rg\t<j@example.org>", b"J\xc3\xb6rg \t\r\n\t<j@example.org>"]
)
def test_tabBeforeAddress(body: bytes) -> None:
    """
    A tab between a UTF-8 display name and its address, or a fold before
    one, is white space (RFC 5322 section 3.2.2), not part of the name.
    """
    header = b"To: " + body + b"\r\n"
    out = downgradeHeader(header)
    assert out == b"To: =?UTF-8?B?SsO2cmc=?= <j@example.org>\r\n"
    assert downgradeGrowth(header) == len(out) - len(header)


@pytest.mark.parametrize(
    "field, downgraded",
    [
        (
            b"To: J\xc3\xb6rg\x0c <j@example.org>",
            b"To: =?UTF-8?B?" + base64.b64encode(b"J\xc3\xb6rg\x0c") + b"?= <j@example.org>",
        ),
        (
            b'Content-Type: text/plain\x0c; name="\xc3\xa4"',
            b"Content-Type: text/plain\x0c;\r\n name*=utf-8''%C3%A4",
        ),
    ],
)
def test_controlAtEdgeKept(field: bytes, downgraded: bytes) -> None:
    """
    A control octet at the end of a display name or of a MIME field's
    value (a form feed, which RFC 5322 does not allow there) is not white
    space: it is kept, only space and tab taken away.  Bad input loses
    nothing.
    """
    header = field + b"\r\n"
    out = downgradeHeader(header)
    assert out == downgraded + b"\r\n"
    assert downgradeGrowth(header) == len(out) - len(header)


@settings(max_examples=2000, deadline=None)
@given(
    st.lists(st.sampled_from([b"a", b"x" * 30, b" ", b"\t", b"\\", b'"', b"<b@c>"]), max_size=40),
    st.integers(0, 80),
    st.integers(0, 1),
)
def test_foldedOnlyAtWhiteSpace(pieces: list[bytes], column: int, after: int) -> None:
    """
    An ASCII part is folded only by putting a line break before white space
    that follows something other than white space or a backslash (a
    quoted-pair stays whole): unfolding gives it back, and no line is only
    white space (RFC 5322 section 3.2.2).  A line goes past 78 characters
    only where no such white space lets it be cut sooner, and is not cut
    sooner than it must be: up to the next place it could be cut, it
    would have passed 78.
    """

    def points(line: bytes) -> list[int]:
        return [i for i in range(1, len(line)) if line[i] in b" \t" and line[i - 1] not in b" \t\\"]

    text = b"".join(pieces).strip(b" \t")
    out = _folded(text, column, after)
    assert out.replace(b"\r\n", b"") == text
    lines = out.split(b"\r\n")
    for n, line in enumerate(lines):
        if n:
            assert line[:1] in (b" ", b"\t") and line.strip(b" \t")
        start = column if n == 0 else 0
        end = after if n == len(lines) - 1 else 0
        if start + len(line) + end > 78:
            # No fold point in the line after its first 78 - start octets
            # would have made a shorter line.
            assert not [i for i in points(line) if start + i <= 78]
        if n < len(lines) - 1:
            following = lines[n + 1]
            more = points(following)[:1] or [
                len(following) + (after if n + 1 == len(lines) - 1 else 0)
            ]
            assert start + len(line) + more[0] > 78


@pytest.mark.parametrize(
    "rest, lengths",
    [
        (b" " + b"y" * 70 + b" " + b"w" * 6 + b" z", [100, 78, 2]),
        (b" " + b"y" * 70 + b" " + b"w" * 7, [100, 71, 8]),
    ],
)
def test_foldedAfterLongWord(rest: bytes, lengths: list[int]) -> None:
    """
    A word too long for any line is left whole on a line of its own; the
    line after it, which starts with the white space folded before, is
    counted from its first column: it holds 78 characters, not 77 or 79.
    """
    text = b"x" * 100 + rest
    out = _folded(text, 0, 0)
    assert out.replace(b"\r\n", b"") == text
    assert [len(line) for line in out.split(b"\r\n")] == lengths


@pytest.mark.parametrize("length", range(1, 40))
def test_encodedLinesEndWithin76(length: int) -> None:
    """
    A line that holds encoded-words is at most 76 characters (RFC 2047
    section 2) with what follows the last word too: the comma after an
    address that another mailbox follows, and the C{:;} that ends an
    empty group, which go to the next line when they would not fit.  The
    fields still read as they did, and their sizes are counted as sent.
    """
    name = ("a" + "\u00e9" * length).encode()
    for header in (
        b"To: " + name + b" <j@example.org>, b@example.org\r\n",
        b"To: " + name + b" <j@ex\xc3\xa4mple.org>\r\n",
    ):
        out = downgradeHeader(header)
        lines = out.split(b"\r\n")
        assert max(len(line) for line in lines if b"=?UTF-8?" in line) <= 76, lines
        assert downgradeGrowth(header) == len(out) - len(header)
        parsed = addresses(out)
        if b"\xc3\xa4mple" in header:  # the empty group
            assert out.endswith(b":;\r\n")
            assert decoded(out[4:].replace(b"\r\n", b"").removesuffix(b" :;")) == (
                header[4:-2].decode()
            )
        else:
            assert parsed == [(name.decode(), "j@example.org"), ("", "b@example.org")]


@pytest.mark.parametrize("name, fold", [(b"Resent-From", b" "), (b"From", b"\r\n ")])
def test_groupEndFillsTheLine(name: bytes, fold: bytes) -> None:
    """
    The C{:;} that ends an empty group stays on the line of the encoded
    original when the line is then 76 characters, and starts the next
    line when it would be 77 (RFC 2047 section 2); the size is counted
    as sent.
    """
    # One encoded-word of the most octets the first line holds after the
    # name, ending in column 73 after "Resent-From: ", 74 after "From: ".
    text = b"a" * (19 if name == b"Resent-From" else 25) + b" <j@ex\xc3\xa4mple.org>"
    header = name + b": " + text + b"\r\n"
    out = downgradeHeader(header)
    word = b"=?UTF-8?B?" + base64.b64encode(text) + b"?="
    assert out == name + b": " + word + fold + b":;\r\n"
    assert max(map(len, out.split(b"\r\n"))) == (76 if fold == b" " else 74)
    assert downgradeGrowth(header) == len(out) - len(header)


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.sampled_from([b"a", b":", b" ", b"\n", b"\r", b"\xc3\xa9"]), max_size=30))
def test_headerEnd(parts: list[bytes]) -> None:
    """
    headerEnd, which searches for one ending and then for the other only
    before it, finds what searching the whole text for both finds: the
    first blank line, whatever its line ending.
    """
    data = b"".join(parts)
    found = [i for i in (data.find(b"\n\n"), data.find(b"\n\r\n")) if i >= 0]
    assert headerEnd(data) == (min(found) if found else -1)


@pytest.mark.parametrize(
    "prefix, needed",
    [
        (b"", True),
        (b"Subject: \xc3\xa4\r\n", True),
        (b"Subject: \xc3\xa4\r\n\r", True),
        (b"Subject: \xc3\xa4\r\n\r\n", False),
        (b"Subject: \xc3\xa4\n\nbody\n", False),
        # An empty header section, before a body with no blank line.
        (b"\r\nbody\r\nmore", False),
        (b"\nbody", False),
        # A header of MAX_HEADER octets up to its last CRLF, which the
        # downgrade applies to, its blank line's LF not read yet.
        (b"X: " + b"a" * (MAX_HEADER - 5) + b"\r\n\r", True),
        # A header that has not ended this far can no longer end within
        # the bound: it is sent as it is.
        (b"X: " + b"a" * (MAX_HEADER + 64), False),
    ],
)
def test_prefixNeeded(prefix: bytes, needed: bool) -> None:
    """
    A login reads a stored message only until it holds the header
    section's end, or so much of the header that its end can no longer
    come within L{MAX_HEADER}; a message whose header is empty is read no
    further than its first line.
    """
    assert prefixNeeded(prefix) is needed


#: Pieces of header sections, for sizing without encoding: field names
#: short and long (too long for a character on the first line), address
#: fields in any case, folding, bare CRs, text of 1- to 4-octet characters
#: long enough to need several encoded-words, and 8-bit that is not UTF-8.
headerPieces = st.sampled_from(
    [
        b"Subject:",
        b"FROM:",
        b"resent-cc :",
        b"X-" + b"n" * 70 + b":",
        b"a",
        b" ",
        b"\t",
        b":",
        b"\r\n",
        b"\r",
        b"\xc3\xa4",
        b"\xe2\x82\xac" * 9,
        b"\xf0\x9f\x98\x80",
        b"\xff",
        b"x" * 40,
        # The pieces of MIME parameters, for MIME fields' own path.
        b"Content-Type:",
        b"content-disposition :",
        b";",
        b"=",
        b"name",
        b"filename*",
        b"(",
        # The pieces of address lists, for address fields' own path.
        b"<a@b.example>",
        b'"',
        b",",
        b"<",
        b">",
        b"\\",
    ]
)


@settings(max_examples=3000, deadline=None)
@given(st.lists(headerPieces, max_size=24))
def test_growthWithoutEncoding(pieces: list[bytes]) -> None:
    """
    downgradeGrowth, which looks only at the fields around non-ASCII octets
    and encodes nothing, is what downgrading the whole header adds: for
    fields folded or not, a first line that starts with a space, an
    unterminated last line, and fields that stay as they are.
    """
    header = b"".join(pieces)
    assert downgradeGrowth(header) == len(downgradeHeader(header)) - len(header)


#: An RFC 2047 encoded-word as the downgrade writes them.
_ENCODED_WORD = re.compile(rb"=\?UTF-8\?B\?([^?]*)\?=")


@settings(max_examples=2000, deadline=None)
@given(
    st.lists(headerPieces, max_size=24),
    st.booleans(),
    st.lists(st.integers(0, 2000), max_size=6),
)
def test_downgradeStreamedAndBounded(pieces: list[bytes], body: bool, cuts: list[int]) -> None:
    """
    Whatever the header section: the filter gives the bytes
    L{downgradeHeader} gives, however the message is chunked, with or
    without a body; the header grows by what L{downgradeGrowth} counts;
    no raw UTF-8 is left; every encoded-word is at most 75 characters and
    decodes as UTF-8 on its own, a line that holds one at most 76 (RFC
    2047 sections 2 and 5); and no line passes 998 characters (RFC 5322
    section 2.1.1) unless the stored header had one as long.
    """
    lines = [line for line in b"".join(pieces).split(b"\r\n") if line]
    header = b"".join(line + b"\r\n" for line in lines)  # no blank line
    out = downgradeHeader(header)
    rest = b"\r\nbody \xc3\xa4\r\n" if body else b""
    f = HeaderDowngrade()
    streamed = b"".join(f.feed(chunk) for chunk in chunked(header + rest, cuts)) + f.finish()
    assert streamed == out + rest
    assert downgradeGrowth(header) == len(out) - len(header)
    if b"\xff" not in header:  # every field UTF-8 or ASCII
        assert out.isascii()
    for word in _ENCODED_WORD.finditer(out):
        assert len(word.group()) <= 75
        base64.b64decode(word.group(1), validate=True).decode("utf-8")
    for line in out.split(b"\r\n"):
        if b"=?UTF-8?B?" in line:
            assert len(line) <= 76
        assert len(line) <= max([998, *map(len, lines)])


#: A UTF-8 parameter in RFC 2231's form as the downgrade writes it: its
#: name, its value or first continuation, and the continuations after it.
_EXTENDED = re.compile(
    rb"([^\s;*=]+)\*(?:0\*)?=utf-8''([^\s;]*)((?:;\s*\1\*[1-9][0-9]*\*=[^\s;]*)*)"
)
#: Where an RFC 2231 continuation starts, after the one before it.
_CONTINUATION = re.compile(rb";\s*[^\s;*=]+\*[0-9]+\*=")


def _extendedRead(match: re.Match[bytes]) -> bytes:
    """
    An RFC 2231 parameter as a mail reader takes it: C{name=}, then its
    value, continuations joined and octets percent-decoded.
    """
    value = match.group(2) + _CONTINUATION.sub(b"", match.group(3))
    return match.group(1) + b"=" + urllib.parse.unquote_to_bytes(value)


def _characters(header: bytes) -> Counter[str]:
    """
    The characters of a header section as a mail reader finds them,
    encoded-words and RFC 2231 parameters decoded, but for white space,
    quotes and backslashes, and ":;=,": what downgrading adds (the ":;" of
    an empty group, the ";" before each continuation) or takes away (the
    quotes and quoted-pairs of a value it writes in RFC 2231's form).
    """
    text = _EXTENDED.sub(_extendedRead, header)
    text = _ENCODED_WORD.sub(lambda word: base64.b64decode(word.group(1)), text)
    return Counter(
        c for c in text.decode("utf-8", "surrogateescape") if not c.isspace() and c not in '"\\:;=,'
    )


@settings(max_examples=2000, deadline=None)
@given(
    st.sampled_from([b"Content-Type:", b"content-disposition :", b"To:", b"From:", b"Subject:"]),
    st.lists(
        st.sampled_from(
            [
                b"\xc3\xa4",
                b"a",
                b"x" * 30,
                b" ",
                b"\r\n ",
                b'"',
                b"\\",
                b";",
                b"=",
                b"name",
                b"%",
                b"(",
                b"<a@b.example>",
                b"<",
                b">",
                b"@",
                b",",
            ]
        ),
        max_size=16,
    ),
)
def test_downgradeLosesNothing(name: bytes, pieces: list[bytes]) -> None:
    """
    Whatever a MIME, address or unstructured field holds, downgrading
    loses no character of it: a mail reader finds every one in the field
    as sent, in its encoded-words and in its parameters written in RFC
    2231's form.  (A UTF-8 parameter that the field also gives in that
    form is left out on purpose: no piece here holds the "*" it takes.)
    A MIME value cut at a quoted ";" lost what followed it.  The growth is
    counted as sent.
    """
    header = name + b"".join(pieces) + b"\r\n"
    out = downgradeHeader(header)
    assert _characters(out) == _characters(header)
    assert downgradeGrowth(header) == len(out) - len(header)


@settings(max_examples=1000, deadline=None)
@given(st.text(max_size=80), st.integers(0, 90))
def test_encodedLength(text: str, used: int) -> None:
    """
    The length of the encoded-words, computed, is that of the words made.
    """
    data = text.encode("utf-8", "surrogatepass")
    assert _encodedLength(data, used) == len(_encodedWords(data, used))


_mailboxPieces = st.sampled_from(
    [
        "J\u00f6rg",
        "M\u00fcller",
        " ",
        "\t",
        "a",
        ".",
        '"',
        "\\",
        "<",
        ">",
        "@",
        ",",
        ";",
        "(",
        "x" * 30,
    ]
)


@settings(max_examples=2000, deadline=None)
@given(
    st.lists(_mailboxPieces, min_size=1, max_size=8),
    st.lists(
        st.sampled_from(["a", "@", "\u00e4", ".", "<", ">", ",", '"', " ", "example.org"]),
        max_size=12,
    ),
    st.sampled_from(["From", "Resent-Reply-To", "X-" + "n" * 60]),
    st.booleans(),
)
def test_addressGrowthCounted(
    name: list[str], address: list[str], field: str, quoted: bool
) -> None:
    """
    The growth of an address field of one mailbox, which a login counts
    without building the field in the usual cases, is what building it
    adds, whatever the name (quoted or not) and the address hold.
    """
    display = f'"{"".join(name)}"' if quoted else "".join(name)
    header = f"{field}: {display} <{''.join(address)}>\r\n".encode()
    assert downgradeGrowth(header) == len(downgradeHeader(header)) - len(header)
