"""
Tests for popserv.transaction: message numbers, deletion marks, and the
sizes this client sees.
"""

from __future__ import annotations

from array import array
from typing import Any

import pytest

from popserv.interfaces import MessageInfo, MessageList, column
from popserv.transaction import (
    BrokenListing,
    MessageDeleted,
    NoSuchMessage,
    Transaction,
    checkListing,
    needsCheck,
)

MESSAGES = [MessageInfo(100, "a", 120), MessageInfo(200, "b", 200), MessageInfo(300, "c", 310)]


def test_storedSizes() -> None:
    """
    By default the sizes are the messages' own (a client that enabled
    UTF8, or mail whose headers are ASCII).
    """
    txn = Transaction(MESSAGES)
    assert txn.stat() == (3, 600)
    assert [txn.size(n) for n in (1, 2, 3)] == [100, 200, 300]
    assert list(txn.sizes()) == [100, 200, 300]


def test_clientSizes() -> None:
    """
    Given sizes (the downgraded ones, for a client without UTF8) are what
    STAT, LIST and the deletion count use; the messages keep their uids.
    """
    txn = Transaction(MESSAGES, [120, 200, 310])
    assert txn.stat() == (3, 630)
    assert txn.size(1) == 120
    txn.delete(3)
    assert txn.stat() == (2, 320)
    assert txn.info(1).uid == "a"
    assert txn.uids() == ["a", "b", "c"]
    with pytest.raises(MessageDeleted):
        txn.size(3)
    txn.reset()
    assert txn.stat() == (3, 630)


def test_numbers() -> None:
    """
    Numbers are 1-based; 0 and numbers past the end are no such message.
    """
    txn = Transaction(MESSAGES)
    assert txn.index(1) == 0
    for number in (0, 4, -1):
        with pytest.raises(NoSuchMessage):
            txn.size(number)
    txn.delete(2)
    assert txn.deletedIndexes() == [1]
    visible = []
    for number in (1, 2, 3):
        try:
            txn.index(number)
        except MessageDeleted:
            continue
        visible.append(number)
    assert visible == [1, 3]


def test_messageInfoMany() -> None:
    """
    MessageInfo.many makes from columns what MessageInfo makes one by one:
    equal, of the same type, with the same fields; columns of different
    lengths are refused rather than cut short.
    """
    sizes, uids, downgraded = [10, 20, 30], ["a", "b", "c"], [10, None, 35]
    many = MessageInfo.many(sizes, uids, downgraded)
    one = list(map(MessageInfo, sizes, uids, downgraded))
    assert many == one
    assert [type(m) for m in many] == [MessageInfo] * 3
    assert [(m.size, m.uid, m.downgradedSize) for m in many] == [
        (10, "a", 10),
        (20, "b", None),
        (30, "c", 35),
    ]
    assert MessageInfo.many([], [], []) == []
    with pytest.raises(ValueError):
        MessageInfo.many(sizes, uids, downgraded[:2])


def test_messageList() -> None:
    """
    A MessageList is a read-only sequence of the MessageInfo its columns
    hold: indexes (negative ones too), slices, iteration, length, and
    equality where a list of them would be equal (to such a list, either
    way round, or to another MessageList), not to a tuple.
    Columns of different lengths are refused.
    """
    sizes, uids, downgraded = array("q", [10, 20, 30]), ["a", "b", "c"], array("q", [10, 25, 35])
    listed = MessageList(sizes, uids, downgraded)
    expected = list(map(MessageInfo, sizes, uids, downgraded))
    assert len(listed) == 3
    assert listed[0] == MessageInfo(10, "a", 10)
    assert type(listed[0]) is MessageInfo
    assert listed[-1] == MessageInfo(30, "c", 35)
    assert listed[1:] == expected[1:]
    assert list(listed) == expected
    assert listed == expected
    assert expected == listed
    assert listed != expected[:2]
    assert listed != [*expected[:2], MessageInfo(30, "c", 30)]
    assert listed != "abc"
    assert listed != tuple(expected)  # as a list of them is not
    assert listed == MessageList(list(sizes), list(uids), list(downgraded))
    assert MessageInfo(20, "b", 25) in listed
    assert listed.index(MessageInfo(30, "c", 35)) == 2
    with pytest.raises(IndexError):
        listed[3]
    with pytest.raises(TypeError):
        hash(listed)
    assert repr(MessageList([1], ["a"], [None])) == (
        "MessageList([MessageInfo(size=1, uid='a', downgradedSize=None)])"
    )
    with pytest.raises(ValueError):
        MessageList(sizes, uids, downgraded[:2])


def test_columns() -> None:
    """
    column() gives a MessageList's own columns, and makes the same from
    any other sequence of MessageInfo; a Transaction over either answers
    alike.
    """
    sizes, uids, downgraded = array("q", [100, 200, 300]), ["a", "b", "c"], [120, 200, 310]
    listed = MessageList(sizes, uids, downgraded)
    assert column(listed, "size") is sizes
    assert column(listed, "uid") is uids
    assert column(listed, "downgradedSize") is downgraded
    assert column(MESSAGES, "size") == [100, 200, 300]
    assert column(MESSAGES, "uid") == ["a", "b", "c"]
    assert column(MESSAGES, "downgradedSize") == [120, 200, 310]
    # A MessageList's columns are read where they are, not copied.
    assert Transaction(listed).uids() is uids
    assert Transaction(listed).sizes() is sizes
    for messages in (MESSAGES, listed):
        txn = Transaction(messages)
        assert txn.stat() == (3, 600)
        assert list(txn.sizes()) == [100, 200, 300]
        assert txn.uids() == ["a", "b", "c"]
        assert txn.info(2) == MessageInfo(200, "b", 200)
        txn.delete(1)
        assert txn.stat() == (2, 500)


def test_checkListingColumns() -> None:
    """
    A L{MessageList} is checked by its columns: arrays of sizes, downgraded
    sizes with L{None} among them; a unique-id given twice is found.
    """
    good = MessageList(array("Q", [3, 0]), ["a", "b"], [None, 4])
    checkListing(good)
    checkListing([])
    twice = MessageList(array("Q", [3, 0]), ["a", "a"], [None, 4])
    with pytest.raises(BrokenListing, match="message 2 with unique-id 'a': given to an earlier"):
        checkListing(twice)
    with pytest.raises(BrokenListing, match="listMessages gave a generator, not a sequence"):
        checkListing(i for i in good)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("listing", "why"),
    [
        ([MessageInfo(-1, "a")], "size -1, downgraded size None: not whole numbers from 0"),
        ([MessageInfo(2**63, "a")], f"size {2**63}, downgraded size None: not whole numbers"),
        ([MessageInfo(5, "a", 2**63)], f"size 5, downgraded size {2**63}: not whole numbers"),
        ([MessageInfo(5, 7)], "unique-id 7: not 1 to 70 characters"),  # type: ignore[arg-type]
        ([MessageInfo(5, b"a")], "unique-id b'a': not 1 to 70"),  # type: ignore[arg-type]
        (
            [MessageInfo(5, "a"), (5, "b", 5)],
            "message 2 as (5, 'b', 5), not a MessageInfo (IMaildrop)",
        ),
        (
            [MessageInfo(2**63 - 1, "a", 2**63 - 1), MessageInfo(0, "a", 0)],
            "message 2 with unique-id 'a': given to an earlier message too",
        ),
    ],
)
def test_checkListingBounds(listing: list[MessageInfo], why: str) -> None:
    """
    Sizes are whole numbers from 0 to 2**63 - 1, the largest the columns
    hold; -1 and 2**63 are refused, and the largest is no culprit when
    something else is wrong.  A unique-id that is not a L{str}, or an
    entry that is not a L{MessageInfo} (a plain tuple), is named as the
    culprit, not raised over.
    """
    with pytest.raises(BrokenListing) as caught:
        checkListing(listing)
    assert str(caught.value).startswith("the store listed message")
    assert why in str(caught.value)
    checkListing([MessageInfo(2**63 - 1, "a", 2**63 - 1), MessageInfo(0, "b", 0)])


def test_ownStoresTrusted(tmp_path: Any) -> None:
    """
    popserv's own maildrops are taken without the check; any other,
    a wrapper of theirs too, is checked.
    """
    from popserv.maildir import MaildirMaildrop
    from popserv.memorystore import MemoryStore

    store = MemoryStore()
    store.deliver("alice", b"hi\n")
    maildrop = store.openMaildrop("alice").result
    assert not needsCheck(maildrop)
    assert not needsCheck(MaildirMaildrop.__new__(MaildirMaildrop))
    assert needsCheck(object())
    maildrop.close()
