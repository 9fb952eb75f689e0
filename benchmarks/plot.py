#!/usr/bin/env python3
"""
Turn a C{bench_maildir.py --json} file into PNG plots:

 - C{throughput-vs-size.png}: bulk download MB/s and messages/s against
   message size (scenario C{sizes}), one line per server;
 - C{latency-vs-concurrency.png}: churn session latency (p50, p99) and
   sessions/s against the number of clients (scenario C{concurrency});
 - C{headline.png}: the issue's headline figures, one panel each, a bar
   per server.

Needs matplotlib, which is not a popserv dependency:
C{.venv/bin/pip install -r benchmarks/requirements-plot.txt}.

    .venv/bin/python benchmarks/plot.py /tmp/bench.json docs/_static/benchmarks
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

#: matplotlib is optional: without it, main() says what to install.
HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
if HAVE_MATPLOTLIB:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.axes import Axes
    from matplotlib.ticker import FuncFormatter

#: One colour and marker per server, the same in every plot.
STYLE = {
    "popserv": ("#1f77b4", "o"),
    "dovecot": ("#d62728", "s"),
    "twisted": ("#2ca02c", "^"),
    # The floor is a bound, not a peer: grey.
    "floor": ("#7f7f7f", "v"),
}


def _servers(document: dict[str, Any]) -> list[str]:
    return [name for name, facts in document["servers"].items() if "version" in facts]


def _subtitle(document: dict[str, Any]) -> str:
    machine = document["machine"]
    return (
        f"{document['started']}, {machine['nproc']} x {machine['cpu_model']},"
        f" server and load generator on one CPU each"
    )


def _points(document: dict[str, Any], scenario: str, server: str) -> list[dict[str, Any]]:
    result = document["results"].get(scenario, {}).get(server, {})
    return result.get("points", []) if "error" not in result else []


def _roundValues(result: dict[str, Any], get: Callable[[dict[str, Any]], Any]) -> list[float]:
    """
    C{get} of each round of C{result} that has a number there (C{--rounds});
    none for a run of one round.
    """
    values = [get(r) for r in result.get("rounds", []) if "error" not in r]
    return [v for v in values if isinstance(v, int | float)]


def _whiskers(shown: list[float], spans: list[list[float]]) -> list[list[float]] | None:
    """
    Error bars from each shown value down to its lowest round and up to its
    highest (C{yerr} of matplotlib), or L{None} if no value has rounds.
    """
    if not any(spans):
        return None
    return [
        [v - min(span) if span else 0 for v, span in zip(shown, spans, strict=True)],
        [max(span) - v if span else 0 for v, span in zip(shown, spans, strict=True)],
    ]


def _pointSpans(
    document: dict[str, Any], scenario: str, server: str, field: str
) -> list[list[float]]:
    """
    For each shown point of a sweep, C{field} in that point of every round.
    """
    result = document["results"].get(scenario, {}).get(server, {})

    def at(n: int) -> Callable[[dict[str, Any]], Any]:
        def get(one: dict[str, Any]) -> Any:
            points = one.get("points", [])
            return points[n].get(field) if n < len(points) else None

        return get

    return [_roundValues(result, at(n)) for n in range(len(_points(document, scenario, server)))]


def _roundsNote(document: dict[str, Any]) -> str:
    rounds = document["options"].get("rounds", 1)
    if rounds < 2:
        return ""
    return f"; each server's median of {rounds} rounds, whiskers from its lowest to its highest"


def _sizeLabel(size: float, _: Any = None) -> str:
    return f"{size / 1000:g} KB" if size < 1_000_000 else f"{size / 1_000_000:g} MB"


def _save(fig: Any, path: str, title: str, y: float = 0.02, bottom: float = 0.04) -> None:
    """
    Put C{title} small at the foot of C{fig} (at height C{y}, the plots
    above C{bottom}), write it to C{path} and close it.
    """
    fig.suptitle(title, fontsize=8, y=y, va="bottom")
    fig.tight_layout(rect=(0, bottom, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def throughputVsSize(document: dict[str, Any], path: str) -> bool:
    servers = [s for s in _servers(document) if _points(document, "sizes", s)]
    if not servers:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4))
    for server in servers:
        points = _points(document, "sizes", server)
        sizes = [p["message_size"] for p in points]
        color, marker = STYLE.get(server, ("black", "x"))
        for axes, field in ((left, "mb_per_s"), (right, "messages_per_s")):
            values = [p[field] for p in points]
            axes.errorbar(
                sizes,
                values,
                yerr=_whiskers(values, _pointSpans(document, "sizes", server, field)),
                marker=marker,
                color=color,
                label=server,
                capsize=3,
            )
    for axes, title, unit in (
        (left, "Throughput of one client (LIST, UIDL, RETR all)", "MB/s (whole session)"),
        (right, "Messages retrieved per second", "messages/s (RETR phase)"),
    ):
        axes.set_xscale("log")
        axes.set_xticks(
            sorted({p["message_size"] for s in servers for p in _points(document, "sizes", s)})
        )
        axes.xaxis.set_major_formatter(FuncFormatter(_sizeLabel))
        axes.xaxis.set_minor_formatter(FuncFormatter(lambda *_: ""))
        axes.set_xlabel("message size")
        axes.set_ylabel(unit)
        axes.set_title(title, fontsize=10)
        axes.set_ylim(bottom=0)
        axes.grid(True, which="both", alpha=0.3)
        axes.legend()
    _save(fig, path, _subtitle(document) + _roundsNote(document))
    return True


def latencyVsConcurrency(document: dict[str, Any], path: str) -> bool:
    servers = [s for s in _servers(document) if _points(document, "concurrency", s)]
    if not servers:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4))
    for server in servers:
        points = _points(document, "concurrency", server)
        clients = [p["clients"] for p in points]
        color, marker = STYLE.get(server, ("black", "x"))
        left.plot(
            clients,
            [p["latency_ms_p50"] for p in points],
            marker=marker,
            color=color,
            label=f"{server} p50",
        )
        left.plot(
            clients,
            [p["latency_ms_p99"] for p in points],
            marker=marker,
            color=color,
            linestyle="--",
            label=f"{server} p99",
        )
        rates = [p["sessions_per_s"] for p in points]
        right.errorbar(
            clients,
            rates,
            yerr=_whiskers(rates, _pointSpans(document, "concurrency", server, "sessions_per_s")),
            marker=marker,
            color=color,
            label=server,
            capsize=3,
        )
    left.set_yscale("log")
    left.set_ylabel("session latency, ms (log scale)")
    left.set_title("Login session latency: connect to close after QUIT", fontsize=10)
    right.set_ylabel("sessions/s")
    right.set_ylim(bottom=0)
    right.set_title("Sessions completed per second", fontsize=10)
    for axes in (left, right):
        axes.set_xscale("log")
        axes.set_xticks(
            sorted({p["clients"] for s in servers for p in _points(document, "concurrency", s)})
        )
        axes.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        axes.set_xlabel("concurrent clients (closed loop)")
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=8)
    _save(fig, path, _subtitle(document) + _roundsNote(document))
    return True


#: (scenario, getter, title with {options}, better, popserv's target from
#: issue 5: a value, or a factor of a peer's value)
HEADLINES: list[tuple[str, Callable[[dict[str, Any]], Any], str, str, tuple[float, str | None]]] = [
    (
        "churn",
        lambda r: r.get("sessions_per_s"),
        "login churn, {churn_clients} clients: sessions/s",
        "higher",
        (2, "twisted"),
    ),
    (
        "churn",
        lambda r: r.get("server_cpu_s_per_1000"),
        "login churn: server CPU s / 1,000 sessions",
        "lower",
        (0.35, None),
    ),
    (
        "bulk",
        lambda r: r.get("mb_per_s"),
        "bulk, {bulk_count:,} x {bulk_kb:g} KB: MB/s",
        "higher",
        (3, "dovecot"),
    ),
    (
        "parallel",
        lambda r: r.get("mb_per_s"),
        "parallel, {parallel_clients} x {parallel_count} x {bulk_kb:g} KB: MB/s",
        "higher",
        (3, "dovecot"),
    ),
    (
        "maildrop",
        lambda r: (r.get("cold") or {}).get("total_s"),
        "{maildrop_count:,}-message maildrop, first login: s",
        "lower",
        (1.0, None),
    ),
    (
        "maildrop",
        lambda r: (r.get("warm") or {}).get("total_s"),
        "{maildrop_count:,}-message maildrop, next login: s",
        "lower",
        (0.2, None),
    ),
    (
        "large",
        lambda r: r.get("mb_per_s_median"),
        "one {large_mb} MB message: RETR MB/s",
        "higher",
        (400, None),
    ),
    (
        "idle",
        lambda r: r.get("pss_per_session_kb"),
        "{idle_sessions:,} idle sessions: KB each (PSS)",
        "lower",
        (4, None),
    ),
]


def headline(document: dict[str, Any], path: str) -> bool:
    servers = _servers(document)
    panels = [
        h
        for h in HEADLINES
        if any(
            isinstance(h[1](document["results"].get(h[0], {}).get(s, {})), int | float)
            for s in servers
        )
    ]
    if not panels:
        return False
    columns = 4
    rows = (len(panels) + columns - 1) // columns
    fig, grid = plt.subplots(rows, columns, figsize=(12, 2.9 * rows), squeeze=False)
    options = dict(document["options"])
    options["bulk_kb"] = options["bulk_size"] / 1000
    for index, (scenario, get, template, better, target) in enumerate(panels):
        title = template.format(**options)
        axes: Axes = grid[index // columns][index % columns]
        names, values, colors, spans = [], [], [], []
        for server in servers:
            result = document["results"].get(scenario, {}).get(server, {})
            value = get(result) if "error" not in result else None
            if isinstance(value, int | float):
                names.append(server)
                values.append(value)
                colors.append(STYLE.get(server, ("grey", ""))[0])
                spans.append(_roundValues(result, get))
        bars = axes.bar(
            names, values, color=colors, yerr=_whiskers(values, spans), capsize=3, ecolor="#333333"
        )
        goal, peer = target
        if peer is not None:
            goal = goal * values[names.index(peer)] if peer in names else float("nan")
        if goal == goal:  # not NaN: the peer ran
            axes.axhline(goal, color="#555555", linestyle=":", linewidth=1.2)
        axes.bar_label(
            bars, labels=[f"{v:,.0f}" if v >= 100 else f"{v:.3g}" for v in values], fontsize=8
        )
        if values and max(values) > 30 * max(min(values), 1e-9) and min(values) > 0:
            axes.set_yscale("log")
        axes.set_title(f"{title}\n({better} is better)", fontsize=9)
        axes.tick_params(labelsize=8)
        axes.margins(y=0.2)
    for index in range(len(panels), rows * columns):
        grid[index // columns][index % columns].axis("off")
    footer = _subtitle(document) + _roundsNote(document) + "; dotted: popserv's target (issue 5)"
    _save(fig, path, footer, y=0.01, bottom=0.03)
    return True


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0] if __doc__ else "")
    parser.add_argument("json", help="a file written by bench_maildir.py --json")
    parser.add_argument("outdir", help="where the PNGs go")
    options = parser.parse_args(argv)
    if not HAVE_MATPLOTLIB:
        print(
            "matplotlib is needed: pip install -r benchmarks/requirements-plot.txt", file=sys.stderr
        )
        return 2
    with open(options.json) as f:
        document = json.load(f)
    os.makedirs(options.outdir, exist_ok=True)
    for name, plot in (
        ("throughput-vs-size.png", throughputVsSize),
        ("latency-vs-concurrency.png", latencyVsConcurrency),
        ("headline.png", headline),
    ):
        path = os.path.join(options.outdir, name)
        if plot(document, path):
            print(f"wrote {path}")
        else:
            print(f"skipped {name}: no data for it in {options.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
