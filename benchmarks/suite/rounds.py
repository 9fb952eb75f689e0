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
and the notes tell the spread and any problem in a round not shown.
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


def spread(result: dict[str, Any]) -> str | None:
    """
    The main figure of each round, in round order, and which one the table
    shows; L{None} for a single round.
    """
    rounds = result.get("rounds")
    if not rounds:
        return None
    key = result["rounds_by"]
    if "points" in result:
        return f"{len(rounds)} rounds, the median round of each point shown (by {key})"

    def show(r: dict[str, Any]) -> str:
        value = figure(r, key)
        return "failed" if "error" in r else "-" if value is None else f"{value:,g}"

    values = ", ".join(show(r) for r in rounds)
    shown = result.get("shown_round")
    which = f"round {shown} shown" if shown else "every round failed"
    return f"{len(rounds)} rounds, {key} {values}: {which}"


def problems(result: dict[str, Any]) -> list[str]:
    """
    What went wrong in each round the table does not show, so that a median
    never hides a failure, a wrong byte or a wrong size.
    """
    rounds = result.get("rounds") or []
    shownPoints = [p.get("round") for p in result.get("points", [])]
    out = []
    for n, r in enumerate(rounds, 1):
        if "points" in r:
            # A sweep shows each point from its own median round.
            found = [
                f"point {i + 1}: {text}"
                for i, p in enumerate(r["points"])
                if i >= len(shownPoints) or shownPoints[i] != n
                for text in _wrong(p)
            ]
        elif n == result.get("shown_round"):
            continue
        else:
            found = _wrong(r)
        if found:
            out.append(f"round {n}: " + "; ".join(found))
    return out


def _wrong(result: dict[str, Any]) -> list[str]:
    """
    The failures a result records, in words.
    """
    if "error" in result:
        return [f"failed: {result['error']}"]
    found = []
    parts = [("", result), *((f"{k}: ", result[k]) for k in ("cold", "warm") if k in result)]
    for where, r in parts:
        if r.get("mismatched"):
            found.append(f"{where}{r['mismatched']} retrievals not as stored")
        if r.get("list_sizes_wrong"):
            found.append(f"{where}{r['list_sizes_wrong']} LIST sizes wrong")
        if r.get("problems"):
            found.append(f"{where}{r['problems'][0]}")
        if r.get("errors"):
            found.append(f"{where}errors {r['errors']}")
    return found
