"""
The benchmarks run, and the side-by-side one verifies every octet it
retrieves: at small sizes, so that a change to popserv that breaks them is
seen here rather than at the next recorded run.  Nothing here asserts a
speed; the figures are for people to read (docs/benchmarks.rst).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from clients import require_program

pytestmark = pytest.mark.integration

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from suite import report  # noqa: E402


def run(script: str, *args: str) -> str:
    """
    Run a benchmark script with this Python; its output, both streams.
    """
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    return output


def test_sideBySide(tmp_path: Path) -> None:
    """
    bench_maildir.py --quick against a real twistd popserv and the floor:
    login churn runs without errors and counts the server's context
    switches; every message of bulk and of the 50 MB scenario arrives as stored, with
    its LIST size right; the first and the next login to the big maildrop
    list every message.
    """
    out = tmp_path / "run.json"
    run(
        "bench_maildir.py",
        "--servers=popserv,floor",
        "--scenarios=churn,bulk,maildrop,large",
        "--quick",
        "--churn-warmup=0.2",
        "--churn-duration=1",
        "--no-pin",
        f"--workdir={tmp_path}",
        f"--json={out}",
    )
    results = json.loads(out.read_text())["results"]
    for server in ("popserv", "floor"):
        churn = results["churn"][server]
        assert churn["errors"] == {}
        assert churn["sessions"] > 0
        # Counted from the server's threads: a single process's are there.
        assert churn["server_switches_per_session"] >= 0
        bulk = results["bulk"][server]
        assert bulk["problems"] == []
        assert bulk["verified"] == bulk["messages"] > 0
        assert bulk["list_sizes_wrong"] == 0
    large = results["large"]["popserv"]
    assert large["problems"] == []
    assert large["verified"] == large["retrievals"] > 0
    maildrop = results["maildrop"]["popserv"]
    for login in ("cold", "warm"):
        assert maildrop[login]["problems"] == []
        assert maildrop[login]["stat_count"] == maildrop["messages"] > 0
        assert maildrop[login]["uidl_lines"] == maildrop["messages"]


def test_inProcess() -> None:
    """
    The in-process benchmarks run and report what they measure.
    """
    number = r"[0-9]+\.[0-9]"
    # A CPU this process may run on (a container may not offer CPU 0).
    cpu = f"--cpu={min(os.sched_getaffinity(0))}"
    out = run("bench_retr.py", "--count=30", "--repeat=1", cpu)
    cached = "in the page cache, 0 us pause before each"
    assert re.search(rf"30 messages .* {cached}: CPU per RETR {number}", out)
    out = run("bench_retr.py", "--count=30", "--repeat=1", "--pause=200", cpu)
    assert re.search(rf"200 us pause before each: CPU per RETR {number}", out)
    out = run("bench_retr.py", "--count=30", "--repeat=1", "--uncached", cpu)
    assert re.search(rf"not {cached}: CPU per RETR {number}.* wall {number}", out)
    out = run("bench_index.py", "--count=200", "--repeat=1", "--deliver=5", "--unread", "--no-pin")
    assert "messages listed: 200 .. 205" in out
    assert re.search(rf"^cold +wall median +{number}", out, re.MULTILINE)
    # The suite's messages, and the parts of a cold login timed on them.
    out = run("bench_index.py", "--count=50", "--repeat=1", "--data=suite", "--parts", "--no-pin")
    assert "50 messages x 900 octets (suite)" in out
    assert "messages listed: 50 .. 150" in out
    for part in ("list", "read", "read+size", "downgrade"):
        assert re.search(rf"^{re.escape(part)} +wall median +{number}", out, re.MULTILINE), part
    out = run("bench_thread.py", "--trips=200", "--rounds=1", "--no-pin")
    assert re.search(rf"popserv ThreadRunner .* less the loop: +{number}", out)


def test_instructions() -> None:
    """
    bench_instructions.py counts, under valgrind, the instructions a real
    twistd popserv and the floor execute per login session: each a
    positive count, and popserv's the larger (it does the floor's work and
    more); and with --retr, a session that also downloads messages counts
    more than one that does not.
    """
    require_program("valgrind")
    out = run("bench_instructions.py", "--servers=popserv,floor", "--sessions=10", "--clients=2")
    counts = dict(
        re.findall(r"^(\w+) \(.*\): ([0-9,]+) instructions per session", out, re.MULTILINE)
    )
    assert set(counts) == {"popserv", "floor"}, out
    popserv, floor = (int(counts[name].replace(",", "")) for name in ("popserv", "floor"))
    assert popserv > floor > 0
    assert re.search(r"^popserv / floor: [0-9]+\.[0-9]{2}$", out, re.MULTILINE)

    # With --retr each session also downloads its messages: more work.
    out = run(
        "bench_instructions.py",
        "--servers=popserv",
        "--sessions=2",
        "--clients=2",
        "--retr=2",
        "--size=20000",
    )
    match = re.search(
        r"^popserv \(.*\): ([0-9,]+) instructions per session \(2 and 10 sessions, 2 clients,"
        r" each retrieving 2 of 20,000 octets\)$",
        out,
        re.MULTILINE,
    )
    assert match, out
    assert int(match.group(1).replace(",", "")) > popserv


def test_rounds(tmp_path: Path) -> None:
    """
    With --rounds, every server runs each round on its own fresh copy of
    the data, in turn with the others; the JSON keeps every round, each
    verified, and shows the median one, which the printed table and its
    notes say.
    """
    out = tmp_path / "run.json"
    printed = run(
        "bench_maildir.py",
        "--servers=popserv,floor",
        "--scenarios=bulk",
        "--quick",
        "--bulk-count=30",
        "--rounds=3",
        "--no-pin",
        f"--workdir={tmp_path}",
        f"--json={out}",
    )
    document = json.loads(out.read_text())
    assert document["options"]["rounds"] == 3
    for server in ("popserv", "floor"):
        shown = document["results"]["bulk"][server]
        made = shown["rounds"]
        assert len(made) == 3
        for one in made:
            assert one["problems"] == []
            assert one["verified"] == one["messages"] == 30
        rates = sorted(one["mb_per_s"] for one in made)
        assert shown["mb_per_s"] == rates[1]
        assert made[shown["shown_round"] - 1]["mb_per_s"] == rates[1]
        # Written as the table writes numbers.
        listed = ", ".join(report._format(one["mb_per_s"]) for one in made)
        assert (
            f"note: bulk {server}: 3 rounds, mb_per_s {listed}:"
            f" round {shown['shown_round']} shown" in printed
        )
    assert "3 rounds of each scenario, servers in turn; each server's median round" in printed
    # The servers took turns: each led one round.
    starts = re.findall(r"bulk (\w+) \(round (\d)\): done", printed)
    assert [name for name, _ in starts] == [
        "popserv",
        "floor",
        "floor",
        "popserv",
        "popserv",
        "floor",
    ]


def test_sharedSocket() -> None:
    """
    shared_socket.py starts each copy of the command with the listening
    socket as descriptor 3 and the environment sd_listen_fds(3) reads, for
    that very process; with --pin, copy N on the N-th CPU this process may
    use.
    """
    # One write each, so that the two copies' lines do not interleave.
    probe = (
        "import os, socket; s = socket.socket(fileno=3); e = os.environ;"
        " os.write(1, ('%s %s %s %s %s\\n' % (s.getsockname()[1],"
        " e['LISTEN_PID'] == str(os.getpid()), e['LISTEN_FDS'], e['LISTEN_FDNAMES'],"
        " sorted(os.sched_getaffinity(0)))).encode())"
    )
    out = run("shared_socket.py", "2", "--pin", "--", sys.executable, "-c", probe)
    lines = out.splitlines()
    port = re.fullmatch(r"shared_socket listening on (\d+)", lines[0])
    assert port is not None, out
    cpus = sorted(os.sched_getaffinity(0))
    expected = {f"{port[1]} True 1 popserv.socket [{cpus[n % len(cpus)]}]" for n in (0, 1)}
    assert set(lines[1:]) == expected, out
    assert len(lines) == 3, out


def test_severalProcesses(tmp_path: Path) -> None:
    """
    bench_maildir.py's popserv-n serves through two popserv processes on
    one socket, each on its own CPU: both listen, logins churn without
    errors and every message of bulk arrives as stored.
    """
    out = tmp_path / "run.json"
    printed = run(
        "bench_maildir.py",
        "--servers=popserv-n",
        "--popserv-processes=2",
        "--popserv-pin-each",
        "--scenarios=churn,bulk",
        "--quick",
        "--churn-warmup=0.2",
        "--churn-duration=1",
        "--bulk-count=30",
        "--no-pin",
        "--keep",
        f"--workdir={tmp_path}",
        f"--json={out}",
    )
    assert "popserv-n: popserv " in printed and "2 processes on one socket, each pinned" in printed
    results = json.loads(out.read_text())["results"]
    churn = results["churn"]["popserv-n"]
    assert churn["errors"] == {}
    assert churn["sessions"] > 0
    bulk = results["bulk"]["popserv-n"]
    assert bulk["problems"] == []
    assert bulk["verified"] == bulk["messages"] == 30
    logs = sorted(tmp_path.rglob("popserv-n.log"))
    assert len(logs) == 2, logs  # one server for each scenario
    for log in logs:
        assert log.read_text().count("popserv listening on 127.0.0.1:") == 2, log.read_text()
