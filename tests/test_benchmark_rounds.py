"""
How the benchmark suite makes a server's rounds of a scenario into the
result its table shows (benchmarks/suite/rounds.py, C{--rounds}).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from suite import report, rounds


def churn(rate: float, cpu: float, **more: Any) -> dict[str, Any]:
    return {"sessions_per_s": rate, "server_cpu_s_per_1000": cpu, "errors": {}, **more}


def test_oneRoundIsItsOwnResult() -> None:
    """
    With one round (the default) the result is the round itself: files
    written before C{--rounds} existed read the same.
    """
    only = churn(1400.0, 0.7)
    assert rounds.combine([only], "sessions_per_s", "higher") is only


def test_medianRoundWholeByHigher() -> None:
    """
    Of three rounds the one in the middle by the main figure is shown,
    whole: its other figures come from the same round, not from medians of
    their own.
    """
    made = [churn(1500.0, 0.60), churn(1300.0, 0.90), churn(1400.0, 0.50)]
    shown = rounds.combine(made, "sessions_per_s", "higher")
    assert shown["sessions_per_s"] == 1400.0
    assert shown["server_cpu_s_per_1000"] == 0.50
    assert shown["shown_round"] == 3
    assert shown["rounds"] == made
    assert shown["rounds_by"] == "sessions_per_s"


def test_evenRoundsShowTheWorseMiddle() -> None:
    """
    Of an even number, the worse of the two in the middle, whichever way
    is better: rounds never flatter a server.
    """
    higher = [{"mb_per_s": v} for v in (90.0, 60.0, 80.0, 70.0)]
    assert rounds.combine(higher, "mb_per_s", "higher")["mb_per_s"] == 70.0
    lower = [{"cold": {"total_s": v}} for v in (2.0, 3.0, 2.5, 2.2)]
    shown = rounds.combine(lower, "cold.total_s", "lower")
    assert shown["cold"] == {"total_s": 2.5}
    assert shown["shown_round"] == 3


def test_failedRoundsAreLeftOut() -> None:
    """
    A failed round is not chosen while another succeeded; if all failed,
    the first failure is shown, and the notes say what failed.
    """
    made = [{"error": "RuntimeError: boom"}, churn(1200.0, 0.8)]
    shown = rounds.combine(made, "sessions_per_s", "higher")
    assert shown["sessions_per_s"] == 1200.0
    assert shown["shown_round"] == 2
    assert report.spread(shown) == "2 rounds, sessions_per_s failed, 1,200: round 2 shown"
    failed = rounds.combine([{"error": "A: 1"}, {"error": "B: 2"}], "sessions_per_s", "higher")
    assert failed["error"] == "A: 1"
    assert "shown_round" not in failed
    assert report.spread(failed) == ("2 rounds, sessions_per_s failed, failed: every round failed")


def test_sweepsPickEachPointsMedian() -> None:
    """
    A sweep (C{points}) shows the median round of each point, marked with
    the round it came from.
    """
    made = [
        {
            "points": [
                {"message_size": 1000, "mb_per_s": 10.0},
                {"message_size": 50000, "mb_per_s": 90.0},
            ]
        },
        {
            "points": [
                {"message_size": 1000, "mb_per_s": 12.0},
                {"message_size": 50000, "mb_per_s": 70.0},
            ]
        },
        {
            "points": [
                {"message_size": 1000, "mb_per_s": 11.0},
                {"message_size": 50000, "mb_per_s": 80.0},
            ]
        },
    ]
    shown = rounds.combine(made, "mb_per_s", "higher")
    assert shown["points"] == [
        {"message_size": 1000, "mb_per_s": 11.0, "round": 3},
        {"message_size": 50000, "mb_per_s": 80.0, "round": 3},
    ]
    made[2]["points"][1]["mb_per_s"] = 95.0
    shown = rounds.combine(made, "mb_per_s", "higher")
    assert [p["round"] for p in shown["points"]] == [3, 1]


def test_notesTellTheSpread() -> None:
    """
    The report's notes give each server's main figure round by round, as
    the table writes numbers, and the round shown, which is the one the
    table's column is made of.
    """
    made = [churn(1500.4, 0.6), churn(1300.0, 0.9), churn(1400.0, 0.5)]
    small = [{"cold": {"total_s": v}} for v in (2.452, 1.9782, 0.5)]
    results = {
        "churn": {"popserv": rounds.combine(made, "sessions_per_s", "higher")},
        "maildrop": {"popserv": rounds.combine(small, "cold.total_s", "lower")},
    }
    notes = report.notes(results)
    assert "churn popserv: 3 rounds, sessions_per_s 1,500, 1,300, 1,400: round 3 shown" in notes
    assert "maildrop popserv: 3 rounds, cold.total_s 2.45, 1.98, 0.500: round 2 shown" in notes
    _header, body = report.tableCells(results, ["popserv"])
    rows = {row[0]: row[1] for row in body}
    assert rows["churn: sessions/s"] == "1,400"
    assert rows["churn: server CPU s / 1,000 sessions"] == "0.500"
    assert rows["maildrop cold: PASS+STAT+UIDL (s)"] == "1.98"
