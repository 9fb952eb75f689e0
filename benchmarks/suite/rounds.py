"""
A server's rounds of one scenario (C{--rounds}), made into the one result
the table shows.

On a shared machine one run of a scenario can be slowed by someone else's
load, and a slow round of one server beside a quiet round of another makes
a ratio that says nothing about either.  With several rounds, taken in
turn with the other servers', the table shows each server's median round:
the round in the middle when its rounds are ordered by the scenario's
main figure (for a sweep, point by point), so that every figure in a
column still comes from one measurement.  Every round stays in the JSON,
and the notes tell the spread (L{report.spread}).  A failure, a wrong
octet or a client error in any round is a note of the run itself, which
names the round.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def figure(result: dict[str, Any], key: str) -> Any:
    """
    The value at C{key} (dotted, as C{"cold.total_s"}) in C{result}, or
    L{None}.
    """
    value: Any = result
    for part in key.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def median(
    items: Sequence[dict[str, Any]], key: str, better: str
) -> tuple[int, dict[str, Any]] | None:
    """
    The median of C{items} by C{key}, and its index; of an even number, the
    worse of the two in the middle, so that rounds never flatter.  Items
    without a number at C{key} do not count; L{None} if none has one.

    @param better: C{"higher"} or C{"lower"}.
    """
    numbered = [
        (i, item) for i, item in enumerate(items) if isinstance(figure(item, key), int | float)
    ]
    if not numbered:
        return None
    # Worst first; ties keep the earlier round first.
    numbered.sort(key=lambda pair: figure(pair[1], key), reverse=better == "lower")
    return numbered[(len(numbered) - 1) // 2]


def combine(rounds: list[dict[str, Any]], key: str, better: str) -> dict[str, Any]:
    """
    The result the table shows for a server's C{rounds} of a scenario,
    with every round under C{"rounds"}.

    One round is its own result.  Of several, the median round by C{key}
    (for a sweep, whose result has C{"points"}, the median of each point
    in turn, marked with its C{"round"}), numbered from 1 in
    C{"shown_round"}.  Failed rounds (with an C{"error"}) are left out of
    the choice; if every round failed, the first one's error is shown.
    """
    if len(rounds) == 1:
        return rounds[0]
    ok = [(i, r) for i, r in enumerate(rounds) if "error" not in r]
    shown: dict[str, Any]
    if not ok:
        shown = dict(rounds[0])
    elif "points" in ok[0][1]:
        shown = {"points": _medianPoints(ok, key, better)}
    else:
        picked = median([r for _, r in ok], key, better)
        index, _ = picked if picked is not None else (0, ok[0][1])
        shown = dict(ok[index][1])
        shown["shown_round"] = ok[index][0] + 1
    shown["rounds"] = rounds
    shown["rounds_by"] = key
    return shown


def _medianPoints(
    ok: list[tuple[int, dict[str, Any]]], key: str, better: str
) -> list[dict[str, Any]]:
    """
    Point by point (the rounds measure the same points in the same order),
    the median of the rounds' points.
    """
    points = []
    for n in range(min(len(r["points"]) for _, r in ok)):
        candidates = [r["points"][n] for _, r in ok]
        picked = median(candidates, key, better)
        index, point = picked if picked is not None else (0, candidates[0])
        points.append({**point, "round": ok[index][0] + 1})
    return points
