"""
The results as a table (servers side by side, ratios popserv / each peer,
the issue's targets), notes on figures that may be unreliable, and the
renderings: plain text, Markdown, reStructuredText.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from . import rounds

SUBJECT = "popserv"


@dataclass(frozen=True)
class Target:
    """
    A goal from issue 5: C{popserv OP value}, or C{popserv OP factor x peer}.
    """

    op: str  # ">=", "<=", "<"
    value: float
    peer: str | None = None

    def describe(self) -> str:
        sign = {">=": "≥", "<=": "≤", "<": "<"}[self.op]
        if self.peer:
            return f"{sign} {self.value:g}x {self.peer}"
        return f"{sign} {self.value:g}"

    def met(self, values: dict[str, Any]) -> bool | None:
        mine = values.get(SUBJECT)
        if not isinstance(mine, int | float):
            return None
        bound = self.value
        if self.peer:
            theirs = values.get(self.peer)
            if not isinstance(theirs, int | float):
                return None
            bound = self.value * theirs
        if self.op == ">=":
            return bool(mine >= bound)
        if self.op == "<=":
            return bool(mine <= bound)
        return bool(mine < bound)


@dataclass(frozen=True)
class Row:
    """
    One figure: where it is in a server's result, its label, which
    direction is better, and the target if the issue sets one.
    """

    scenario: str
    key: str | Callable[[dict[str, Any]], Any]
    label: str
    better: str = ""
    target: Target | None = None

    def value(self, result: dict[str, Any]) -> Any:
        if callable(self.key):
            return self.key(result)
        return rounds.figure(result, self.key)


def _verified(result: dict[str, Any]) -> str | None:
    if "verified" not in result:
        return None
    total = result["verified"] + result["mismatched"]
    return f"{result['verified']}/{total}" + (" !" if result["mismatched"] else "")


def _errors(result: dict[str, Any]) -> str | None:
    errors = result.get("errors")
    if errors is None:
        return None
    return str(sum(errors.values())) if errors else "0"


ROWS: list[Row] = [
    Row("churn", "sessions_per_s", "churn: sessions/s", "higher", Target(">=", 2, "twisted")),
    Row(
        "churn",
        "server_cpu_s_per_1000",
        "churn: server CPU s / 1,000 sessions",
        "lower",
        Target("<=", 0.35),
    ),
    Row("churn", "latency_ms_p50", "churn: session latency p50 (ms)", "lower"),
    Row("churn", "latency_ms_p99", "churn: session latency p99 (ms)", "lower"),
    Row("churn", "server_cpu_pct", "churn: server CPU %"),
    Row(
        "churn",
        "server_switches_per_session",
        "churn: server context switches / session",
        "lower",
    ),
    Row("churn", "client_cpu_pct", "churn: load generator CPU %"),
    Row("churn", _errors, "churn: errors"),
    Row("churn", "retransmitted", "churn: sessions with a dropped SYN"),
    Row("bulk", "mb_per_s", "bulk: MB/s (whole session)", "higher", Target(">=", 3, "dovecot")),
    Row("bulk", "retr_mb_per_s", "bulk: MB/s (RETR phase)", "higher"),
    Row("bulk", "login_s", "bulk: PASS -> +OK (s)", "lower"),
    Row("bulk", "stat_s", "bulk: STAT (s)", "lower"),
    Row("bulk", "list_uidl_s", "bulk: LIST + UIDL (s)", "lower"),
    Row("bulk", "server_cpu_ms_per_mb", "bulk: server CPU ms / MB", "lower"),
    Row("bulk", "server_cpu_pct", "bulk: server CPU %"),
    Row("bulk", "client_cpu_pct", "bulk: load generator CPU %"),
    Row("bulk", _verified, "bulk: messages verified"),
    Row("bulk", "list_sizes_wrong", "bulk: LIST sizes wrong"),
    Row(
        "parallel",
        "mb_per_s",
        "parallel: aggregate MB/s",
        "higher",
        Target(">=", 3, "dovecot"),
    ),
    Row("parallel", "client_mb_per_s_min", "parallel: slowest client MB/s", "higher"),
    Row("parallel", "server_cpu_ms_per_mb", "parallel: server CPU ms / MB", "lower"),
    Row("parallel", "server_cpu_pct", "parallel: server CPU %"),
    Row("parallel", "client_cpu_pct", "parallel: load generator CPU %"),
    Row("parallel", _verified, "parallel: messages verified"),
    Row(
        "maildrop",
        "cold.total_s",
        "maildrop cold: PASS+STAT+UIDL (s)",
        "lower",
        Target("<=", 1.0),
    ),
    Row("maildrop", "cold.pass_s", "maildrop cold: PASS (s)", "lower"),
    Row("maildrop", "cold.stat_s", "maildrop cold: STAT (s)", "lower"),
    Row("maildrop", "cold.uidl_s", "maildrop cold: UIDL (s)", "lower"),
    Row("maildrop", "cold.server_cpu_s", "maildrop cold: server CPU s", "lower"),
    Row(
        "maildrop",
        "warm.total_s",
        "maildrop warm: PASS+STAT+UIDL (s)",
        "lower",
        Target("<=", 0.2),
    ),
    Row("maildrop", "warm.pass_s", "maildrop warm: PASS (s)", "lower"),
    Row("maildrop", "warm.stat_s", "maildrop warm: STAT (s)", "lower"),
    Row("maildrop", "warm.uidl_s", "maildrop warm: UIDL (s)", "lower"),
    Row("large", "mb_per_s_median", "large: RETR MB/s (median)", "higher", Target(">=", 400)),
    Row("large", "mb_per_s_best", "large: RETR MB/s (best)", "higher"),
    Row("large", "rss_growth_mb", "large: server RSS growth in RETR (MB)", "lower", Target("<", 1)),
    Row("large", "hwm_growth_mb", "large: server peak RSS growth (MB)", "lower"),
    Row("large", "server_cpu_ms_per_mb", "large: server CPU ms / MB", "lower"),
    Row("large", "server_cpu_pct", "large: server CPU %"),
    Row("large", "client_cpu_pct", "large: load generator CPU %"),
    Row("large", _verified, "large: retrievals verified"),
    Row(
        "idle",
        "pss_per_session_kb",
        "idle: memory per session (KB, PSS)",
        "lower",
        Target("<=", 4),
    ),
    Row("idle", "rss_per_session_kb", "idle: memory per session (KB, RSS)", "lower"),
    Row("idle", "sessions", "idle: sessions held"),
    Row("idle", "processes_after", "idle: server processes"),
]


def _sweepRows(results: dict[str, Any]) -> list[Row]:
    """
    Rows for the sweeps, one per point the results have.
    """

    def distinct(scenario: str, match: str) -> list[int]:
        """
        The values of C{match} over the points of C{scenario}, each once, in
        the order they first come.
        """
        found: list[int] = []
        for result in results.get(scenario, {}).values():
            for p in result.get("points", []):
                if p[match] not in found:
                    found.append(p[match])
        return found

    def point(field: str, match: str, wanted: int) -> Callable[[dict[str, Any]], Any]:
        """
        A getter of C{field} from the point whose C{match} is C{wanted}.
        """

        def get(result: dict[str, Any]) -> Any:
            for p in result.get("points", []):
                if p.get(match) == wanted:
                    return p.get(field)
            return None

        return get

    def sizeRow(size: int, field: str, what: str) -> Row:
        return Row(
            "sizes",
            point(field, "message_size", size),
            f"sizes: {what} at {size / 1000:g} KB",
            "higher",
        )

    def levelRow(clients: int, field: str, what: str, better: str = "") -> Row:
        return Row(
            "concurrency",
            point(field, "clients", clients),
            f"concurrency: {what}, {clients} clients",
            better,
        )

    sizes = distinct("sizes", "message_size")
    levels = distinct("concurrency", "clients")
    rows = [sizeRow(size, "mb_per_s", "MB/s") for size in sizes]
    rows += [sizeRow(size, "messages_per_s", "messages/s") for size in sizes]
    rows += [levelRow(clients, "sessions_per_s", "sessions/s", "higher") for clients in levels]
    rows += [levelRow(clients, "retransmitted", "dropped SYNs") for clients in levels]
    for clients in levels:
        rows.append(levelRow(clients, "latency_ms_p50", "p50 ms", "lower"))
        rows.append(levelRow(clients, "latency_ms_p99", "p99 ms", "lower"))
    return rows


def _format(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        magnitude = abs(value)
        if magnitude >= 100:
            return f"{value:,.0f}"
        if magnitude >= 10:
            return f"{value:.1f}"
        if magnitude >= 1:
            return f"{value:.2f}"
        return f"{value:.3f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def tableCells(
    results: dict[str, Any], servers: Sequence[str]
) -> tuple[list[str], list[list[str]]]:
    """
    The header and rows: figure, a column per server, popserv / each peer,
    better, target.
    """
    peers = [s for s in servers if s != SUBJECT] if SUBJECT in servers else []
    header = ["figure", *servers, *(f"{SUBJECT}/{p}" for p in peers), "better", "target"]
    body: list[list[str]] = []
    for row in ROWS + _sweepRows(results):
        byServer = results.get(row.scenario)
        if not byServer:
            continue
        values: dict[str, Any] = {}
        cells = [row.label]
        for server in servers:
            result = byServer.get(server)
            if result is None:
                cells.append("n/a")
            elif "error" in result:
                cells.append("FAILED")
            else:
                values[server] = row.value(result)
                cells.append(_format(values[server]))
        for peer in peers:
            mine, theirs = values.get(SUBJECT), values.get(peer)
            numeric = isinstance(mine, int | float) and isinstance(theirs, int | float)
            if numeric and row.better and theirs:
                cells.append(f"{mine / theirs:.2f}x")
            else:
                cells.append("")
        cells.append(row.better)
        if row.target:
            met = row.target.met(values)
            verdict = "" if met is None else (": met" if met else ": missed")
            cells.append(row.target.describe() + verdict)
        else:
            cells.append("")
        body.append(cells)
    return header, body


def spread(result: dict[str, Any]) -> str | None:
    """
    The main figure of each round, in round order and written as the table
    writes it, and which round the table shows; L{None} for a single
    round.
    """
    made = result.get("rounds")
    if not made:
        return None
    key = result["rounds_by"]
    if "points" in result:
        return f"{len(made)} rounds, the median round of each point shown (by {key})"

    def show(one: dict[str, Any]) -> str:
        return "failed" if "error" in one else _format(rounds.figure(one, key))

    values = ", ".join(map(show, made))
    shown = result.get("shown_round")
    which = f"round {shown} shown" if shown else "every round failed"
    return f"{len(made)} rounds, {key} {values}: {which}"


def render(header: list[str], body: list[list[str]], style: str = "text") -> str:
    """
    A table as plain text, Markdown (C{md}) or an RST simple table (C{rst}).
    """
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(cells: Sequence[str], sep: str = "  ") -> str:
        parts = []
        for i, cell in enumerate(cells):
            parts.append(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]))
        return sep.join(parts).rstrip()

    if style == "md":
        out = ["| " + " | ".join(header) + " |"]
        out.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|")
        out += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(out)
    if style == "rst":
        # An empty first cell would make the row a continuation line.
        fixed = [[r[0] or "-", *r[1:]] for r in body]
        widths = [max(len(r[i]) for r in [header, *fixed]) for i in range(len(header))]
        ruler = "  ".join("=" * w for w in widths)
        return "\n".join([ruler, line(header), ruler, *(line(r) for r in fixed), ruler])
    rule = "-" * len(line(header))
    return "\n".join([line(header), rule, *(line(r) for r in body)])


def loadgenSummary(results: dict[str, Any]) -> list[str]:
    """
    The calibration, in words.
    """
    cal = (results.get("loadgen") or {}).get("popload")
    if not cal or "error" in cal:
        return []
    return [
        f"load generator (popload) against a trivial responder on the server CPU:"
        f" {cal['churn_sessions_per_s']:,.0f} churn sessions/s at"
        f" {cal['churn_client_cpu_pct']}% of its core (responder"
        f" {cal['churn_responder_cpu_pct']}%), so its ceiling is about"
        f" {cal['churn_ceiling'] or 0:,} sessions/s;"
        f" one RETR stream {cal['retr_mb_per_s']:,.0f} MB/s at {cal['retr_client_cpu_pct']}%"
        f" (ceiling about {cal['retr_ceiling'] or 0:,} MB/s)."
    ]


def notes(results: dict[str, Any]) -> list[str]:
    """
    Flags for figures that the load generator or someone else's load may
    have limited, one line per scenario and server; with several rounds,
    each server's spread over them.
    """
    out: list[str] = []
    calibration = (results.get("loadgen") or {}).get("popload") or {}
    for scenario, byServer in results.items():
        if scenario == "loadgen":
            continue
        for server, result in byServer.items():
            spreadNote = spread(result)
            if spreadNote:
                out.append(f"{scenario} {server}: {spreadNote}")
            noise: dict[str, float] = {}
            for where, r in _measurements(scenario, result):
                out += _clientBound(f"{where} {server}", r, calibration)
                for key, value in _noise(r).items():
                    noise[key] = max(noise.get(key, 0.0), value)
            if noise:
                out.append(f"{scenario} {server}: " + _describeNoise(noise))
    return out


def _measurements(scenario: str, result: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    if "points" in result:
        return [
            (f"{scenario}[{p.get('message_size', p.get('clients'))}]", p) for p in result["points"]
        ]
    if scenario == "maildrop":
        return [(scenario, {"preflight": result.get("preflight")})]
    return [(scenario, result)]


def _clientBound(where: str, result: dict[str, Any], calibration: dict[str, Any]) -> list[str]:
    out = []
    client = result.get("client_cpu_pct")
    server = result.get("server_cpu_pct")
    if client is not None and server is not None and client > 85 and server < 85:
        out.append(
            f"{where}: load generator CPU {client}% vs server {server}%: may be client-bound"
        )
    for key, ceilingKey, unit in (
        ("sessions_per_s", "churn_ceiling", "sessions/s"),
        ("mb_per_s_best", "retr_ceiling", "MB/s"),
    ):
        rate = result.get(key) or 0
        ceiling = calibration.get(ceilingKey)
        if ceiling and rate > 0.7 * ceiling:
            out.append(
                f"{where}: {rate:,.0f} {unit} is more than 70% of the load generator's"
                f" ceiling ({ceiling:,}): may be client-bound"
            )
    return out


def _noise(result: dict[str, Any]) -> dict[str, float]:
    """
    Other processes' share of each CPU, hypervisor steal, and how busy
    each CPU was just before, where above the thresholds.
    """
    found: dict[str, float] = {}
    for role in ("server", "client"):
        own = result.get(f"{role}_cpu_pct")
        core = result.get(f"{role}_core") or {}
        if core and own is not None:
            if role == "client":
                own += result.get("sampler_cpu_pct", 0)
            # Softirq is mostly our own loopback traffic; the rest is not ours.
            other = core["busy_pct"] - own - core["softirq_pct"] - core["irq_pct"]
            if other > 10:
                found[f"{role}_other"] = other
            if core["steal_pct"] > 5:
                found[f"{role}_steal"] = core["steal_pct"]
        busy = (result.get("preflight") or {}).get(f"{role}_core_busy_pct", 0)
        if busy > 10:
            found[f"{role}_before"] = busy
    return found


def _describeNoise(noise: dict[str, float]) -> str:
    parts = []
    for role, name in (("server", "the server's CPU"), ("client", "the load generator's CPU")):
        bits = []
        if f"{role}_other" in noise:
            bits.append(f"up to {noise[role + '_other']:.0f}% went to other processes")
        if f"{role}_steal" in noise:
            bits.append(f"the hypervisor stole up to {noise[role + '_steal']:.0f}%")
        if f"{role}_before" in noise:
            bits.append(f"it was {noise[role + '_before']:.0f}% busy just before")
        if bits:
            parts.append(f"on {name}, " + " and ".join(bits))
    return "; ".join(parts) + " (other load: rerun on a quiet machine)"
