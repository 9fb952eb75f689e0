"""
What the real server does to a Maildir on disk: deletions at QUIT and only
then, mail that arrives during a session, crashes, unique ids that survive
other programs, and sizes from file names.
"""

from __future__ import annotations

import os
import poplib
import re
import subprocess
import sys
import time

import pytest

from popserv.maildir import _directories
from popserv.maildirindex import parse

pytestmark = pytest.mark.integration


#: The wire size of each message L{_fill} delivers ("Subject: N", "",
#: "body N", each with CRLF).
SIZE = 22


def _fill(maildir, deliver, count):
    return [deliver(maildir, b"Subject: %d\n\nbody %d\n" % (n, n)) for n in range(count)]


def test_dele_quit_removes_exactly_the_deleted(server, maildir, deliver, raw_client, message_files):
    """
    DELE marks messages and QUIT removes exactly their files; DELE of a
    message already marked is -ERR; mail delivered into new/ during the
    session is not listed and survives the QUIT; nothing else on disk
    changes.
    """
    paths = _fill(maildir, deliver, 4)
    # A message another program has already seen, in cur/ with flags.
    seen = maildir / "cur" / (paths[3].name + ":2,S")
    os.rename(paths[3], seen)
    paths[3] = seen
    client = raw_client(server.port)
    assert client.login().startswith(b"+OK")
    before = message_files(maildir)
    assert client.command(b"DELE 2") == b"+OK Message 2 deleted\r\n"
    assert client.command(b"DELE 4").startswith(b"+OK")
    assert client.command(b"DELE 2").startswith(b"-ERR")
    assert client.command(b"RETR 2").startswith(b"-ERR")
    late = deliver(maildir, b"Subject: late\n\narrived during the session\n")
    assert client.command(b"STAT").startswith(b"+OK 2 ")
    listing = client.multiline(b"LIST")
    assert listing.split(b"\r\n")[1:-2] == [b"1 %d" % SIZE, b"3 %d" % SIZE]
    assert client.command(b"LIST 5").startswith(b"-ERR")
    assert message_files(maildir) == before | {f"new/{late.name}"}
    assert client.command(b"QUIT").startswith(b"+OK")
    assert client.read_to_close() == b""
    removed = {f"new/{paths[1].name}", f"cur/{seen.name}"}
    assert message_files(maildir) == (before - removed) | {f"new/{late.name}"}


def test_rset_undoes_deletions(server, maildir, deliver, raw_client, message_files):
    """
    RSET unmarks every message: they are listed again and QUIT removes
    nothing.
    """
    _fill(maildir, deliver, 3)
    client = raw_client(server.port)
    assert client.login().startswith(b"+OK")
    before = message_files(maildir)
    assert client.command(b"DELE 1").startswith(b"+OK")
    assert client.command(b"DELE 3").startswith(b"+OK")
    assert client.command(b"STAT") == b"+OK 1 %d\r\n" % SIZE
    assert client.command(b"RSET") == b"+OK 3 messages (%d octets)\r\n" % (3 * SIZE)
    assert client.command(b"STAT") == b"+OK 3 %d\r\n" % (3 * SIZE)
    assert client.multiline(b"RETR 1").endswith(b"body 0\r\n.\r\n")
    assert client.command(b"QUIT").startswith(b"+OK")
    assert client.read_to_close() == b""
    assert message_files(maildir) == before


@pytest.mark.parametrize("close", ["close", "reset"])
def test_dropped_connection_deletes_nothing(
    close, server, maildir, deliver, raw_client, message_files, wait_until, stat_when_free
):
    """
    A connection that ends without QUIT after DELE, closed or reset by the
    client, removes nothing: the session never enters the UPDATE state.
    """
    _fill(maildir, deliver, 2)
    client = raw_client(server.port)
    assert client.login().startswith(b"+OK")
    before = message_files(maildir)
    assert client.command(b"DELE 1").startswith(b"+OK")
    assert client.command(b"DELE 2").startswith(b"+OK")
    if close == "reset":
        client.abort()
    else:
        client.close()
    stat = wait_until(lambda: stat_when_free(server.port))
    assert stat == b"+OK 2 %d\r\n" % (2 * SIZE)
    assert message_files(maildir) == before


def test_server_killed_deletes_nothing(
    start_server, maildir_root, maildir, deliver, raw_client, message_files, stat_when_free
):
    """
    A server killed with SIGKILL after DELE removes nothing, and its lock
    dies with it: a new server opens the maildrop at once.
    """
    _fill(maildir, deliver, 2)
    first = start_server(f"maildir:{maildir_root}/{{user}}")
    client = raw_client(first.port)
    assert client.login().startswith(b"+OK")
    before = message_files(maildir)
    assert client.command(b"DELE 1").startswith(b"+OK")
    first.kill()
    assert message_files(maildir) == before
    second = start_server(f"maildir:{maildir_root}/{{user}}")
    assert stat_when_free(second.port) == b"+OK 2 %d\r\n" % (2 * SIZE)


def _uidl(port):
    client = poplib.POP3("127.0.0.1", port, timeout=10)
    try:
        client.user("alice")
        client.pass_("secret")
        listing = client.uidl()[1]
        client.quit()
        return listing
    finally:
        client.close()


def test_uidl_survives_move_to_cur(server, maildir, deliver, raw_client):
    """
    A message's unique id is its file name without the flags: it stays the
    same after another program moves the file from new/ to cur/ with
    ":2,S" appended, between sessions and during one, and the moved
    message can still be read and deleted.
    """
    paths = _fill(maildir, deliver, 3)
    before = _uidl(server.port)
    assert before == [b"%d %s" % (n, p.name.encode()) for n, p in enumerate(paths, 1)]
    os.rename(paths[0], maildir / "cur" / (paths[0].name + ":2,S"))
    assert _uidl(server.port) == before

    client = raw_client(server.port)
    assert client.login().startswith(b"+OK")
    # Moved while the session has the maildrop open.
    moved = maildir / "cur" / (paths[1].name + ":2,RS")
    os.rename(paths[1], moved)
    assert client.command(b"UIDL 2") == b"+OK 2 %s\r\n" % paths[1].name.encode()
    assert client.multiline(b"RETR 2").endswith(b"\r\nbody 1\r\n.\r\n")
    assert client.command(b"DELE 2").startswith(b"+OK")
    assert client.command(b"QUIT").startswith(b"+OK")
    assert client.read_to_close() == b""
    assert not moved.exists()
    assert _uidl(server.port) == [before[0], b"2 " + before[2].split(b" ")[1]]


def _settle(maildir):
    """
    Wait until new/ and cur/ were last changed more than a second ago, so
    that a login stamps them (popserv.maildir._SETTLE_NS).
    """
    directories = _directories(str(maildir))
    assert directories is not None
    time.sleep(max(0.0, directories.newest / 1e9 + 1.1 - time.time()))


def _stamp_matches(maildir):
    """
    Whether the index ends with a stamp of new/ and cur/ as they are now.
    """
    stamp = parse((maildir / "popserv.index").read_bytes()).stamp
    directories = _directories(str(maildir))
    return directories is not None and stamp == directories.stamp


def test_unchanged_maildir_served_from_index(server, maildir, deliver):
    """
    Through the real server: a login to a Maildir unchanged for over a
    second ends the index with a stamp of its directories, and the next
    login, which takes its messages from the index, lists the same ones
    and writes nothing.  A delivery, a move to cur/ and a removal by other
    programs after a stamped login are each seen by the next login.
    """
    paths = _fill(maildir, deliver, 3)
    _settle(maildir)
    first = _uidl(server.port)
    assert first == [b"%d %s" % (n, p.name.encode()) for n, p in enumerate(paths, 1)]
    assert _stamp_matches(maildir)
    index = (maildir / "popserv.index").read_bytes()
    assert _uidl(server.port) == first
    assert (maildir / "popserv.index").read_bytes() == index

    late = deliver(maildir, b"Subject: late\n\nlate\n")
    assert _uidl(server.port) == [*first, b"4 " + late.name.encode()]
    assert not _stamp_matches(maildir)  # changed within the second: no stamp

    _settle(maildir)
    _uidl(server.port)
    assert _stamp_matches(maildir)
    os.rename(paths[0], maildir / "cur" / (paths[0].name + ":2,S"))
    assert _uidl(server.port) == [*first, b"4 " + late.name.encode()]

    _settle(maildir)
    _uidl(server.port)
    assert _stamp_matches(maildir)
    os.unlink(paths[2])
    names = [paths[0].name, paths[1].name, late.name]
    assert _uidl(server.port) == [b"%d %s" % (n, m.encode()) for n, m in enumerate(names, 1)]


def test_index_command_before_first_login(server, maildir, deliver):
    """
    The installed C{popserv index} builds the index that the real server's
    first login then takes every size from: a message rewritten in place
    afterwards (same name, same directory) is still listed at the size the
    index holds, so that login did not read it; mail delivered after the
    command is read, as at any login.
    """
    _fill(maildir, deliver, 3)
    command = os.path.join(os.path.dirname(sys.executable), "popserv")
    done = subprocess.run(
        [command, "index", str(maildir)], capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert re.fullmatch(
        re.escape(f"{maildir}: 3 messages, {3 * SIZE} octets, indexed in ") + r"\d+\.\d\d s\n",
        done.stdout,
    )
    rewritten = sorted((maildir / "new").iterdir())[1]
    rewritten.write_bytes(b"Subject: 1\n\nbody 1, longer now\n")
    late = deliver(maildir, b"Subject: late\n\nlate mail\n")
    client = poplib.POP3("127.0.0.1", server.port, timeout=10)
    try:
        client.user("alice")
        client.pass_("secret")
        # "Subject: late", "", "late mail": 13 + 0 + 9 octets, 3 CRLFs.
        assert client.list()[1] == [b"1 22", b"2 22", b"3 22", b"4 28"]
        assert client.uidl(4).split()[-1] == late.name.encode()
        client.quit()
    finally:
        client.close()


def test_sizes_from_file_names(server, maildir, deliver):
    """
    A ,W=N field in the name of a file too large to read whole at login
    (over 64 KiB) is the size LIST reports, if a file of its size can have
    it; a smaller file is counted whatever its name says; a ,S= field
    alone is not trusted, since it counts LF endings as one octet: the
    size is then counted with CRLF endings.
    """
    small = b"Subject: w\n\nbody\n"
    deliver(maildir, small, wire_size=12345)
    lf = b"Subject: s\n\none\ntwo\n"
    deliver(maildir, lf, size_field=True)
    large = b"Subject: l\n\n" + (b"x" * 99 + b"\n") * 1000
    named = len(large) + large.count(b"\n") + 7  # wrong, but not impossible: taken
    deliver(maildir, large, wire_size=named)
    client = poplib.POP3("127.0.0.1", server.port, timeout=10)
    try:
        client.user("alice")
        client.pass_("secret")
        assert client.list()[1] == [
            b"1 %d" % (len(small) + small.count(b"\n")),
            b"2 %d" % (len(lf) + lf.count(b"\n")),
            b"3 %d" % named,
        ]
        client.quit()
    finally:
        client.close()


def test_maildir_created_on_first_login(server, maildir_root, raw_client):
    """
    A user without a Maildir gets an empty one, created at the first login.
    """
    (maildir_root / "alice" / "new").rmdir()
    (maildir_root / "alice" / "cur").rmdir()
    (maildir_root / "alice" / "tmp").rmdir()
    (maildir_root / "alice").rmdir()
    client = raw_client(server.port)
    assert client.login() == b"+OK Logged in, 0 messages (0 octets)\r\n"
    assert client.command(b"QUIT").startswith(b"+OK")
    for sub in ("new", "cur", "tmp"):
        assert (maildir_root / "alice" / sub).is_dir()


def test_message_removed_by_another_program(server, maildir, deliver, raw_client, message_files):
    """
    A listed message whose file another program removed during the session
    gets -ERR [SYS/TEMP] on RETR and the session goes on; deleting it and
    QUIT still succeed and remove exactly the other deleted message.
    """
    paths = _fill(maildir, deliver, 3)
    client = raw_client(server.port)
    assert client.login().startswith(b"+OK")
    paths[0].unlink()
    assert client.multiline(b"RETR 1").startswith(b"-ERR [SYS/TEMP]")
    assert client.multiline(b"RETR 2").endswith(b"\r\nbody 1\r\n.\r\n")
    assert client.command(b"DELE 1").startswith(b"+OK")
    assert client.command(b"DELE 3").startswith(b"+OK")
    assert client.command(b"QUIT").startswith(b"+OK")
    assert client.read_to_close() == b""
    assert message_files(maildir) == {f"new/{paths[1].name}", "popserv.lock"}


def test_stray_directory_in_new(server, maildir, deliver, raw_client):
    """
    An entry in new/ that is not a readable file (a directory) does not
    lock its owner out: the messages around it are listed.
    """
    _fill(maildir, deliver, 2)
    (maildir / "new" / "1700000000.Mstray.testhost").mkdir()
    client = raw_client(server.port)
    assert client.login() == (b"+OK Logged in, 2 messages (%d octets)\r\n" % (2 * SIZE))
