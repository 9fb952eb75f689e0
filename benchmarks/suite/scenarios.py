"""
The workloads.  Each scenario generates its data once, then for every
server in turn: hard-links a copy of the data into a fresh mail root, starts
a fresh server on it, measures, stops the server.  The figures come back as
a dict per server.

Times are C{time.monotonic()} seconds, the clock popload reports in, so the
server's CPU time and memory sampled here line up with the client's events.
"""

from __future__ import annotations

import bisect
import os
import shutil
import statistics
import sys
import time
import traceback
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from . import procfs, rounds
from .data import MB, DataSet, Expected, verifySession
from .load import DRAIN_SLACK, IdleSessions, Popload, Responder, writeUsers
from .servers import ServerAdapter

#: Seconds between starting popload and the first session (it must start up).
LEAD = 0.3


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def sleepUntil(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _pct(part: float, whole: float) -> float:
    return round(100.0 * part / whole, 1) if whole > 0 else 0.0


def _perMB(cpuSeconds: float, octets: int) -> float | None:
    """
    Server CPU milliseconds per MB of messages: unlike MB/s, barely
    changed by other load on the machine.
    """
    return round(1000 * cpuSeconds / (octets / MB), 2) if octets else None


@dataclass
class Context:
    """
    What every scenario needs: options, the run's directory, the load
    generator, the CPUs, and where notes go.
    """

    options: Any
    workdir: str
    popload: Popload
    serverCPU: int | None
    clientCPU: int | None
    notes: list[str] = field(default_factory=list)

    def preflight(self) -> dict[str, float]:
        """
        How busy both CPUs are for half a second with the server idle:
        anything much above zero is someone else's load.
        """
        before = procfs.cpuTimes()
        time.sleep(0.5)
        after = procfs.cpuTimes()
        result = {}
        for role, cpu in (("server", self.serverCPU), ("client", self.clientCPU)):
            load = procfs.coreLoad(before, after, cpu)
            if load:
                result[f"{role}_core_busy_pct"] = load["busy_pct"]
        return result


@dataclass
class Sample:
    """
    One reading of the server: CPU seconds, RSS of each process (KiB), and
    /proc/stat.
    """

    t: float
    cpu: float
    rss: dict[int, int]
    cores: dict[str, list[int]]


class Sampler:
    """
    Reads the server's CPU time (and RSS) while a client runs.  A forking
    server's process tree is looked up at every sample (with RSS) or every
    0.1 s.
    """

    def __init__(self, server: ServerAdapter, rss: bool) -> None:
        self.server = server
        self.rss = rss
        self.samples: list[Sample] = []
        self._pids = server.pids()
        self._pidsAt = time.monotonic()
        self.cpuSpent = 0.0

    def sample(self) -> None:
        began = time.process_time()
        now = time.monotonic()
        if self.server.multiProcess and (self.rss or now - self._pidsAt > 0.1):
            self._pids = self.server.pids()
            self._pidsAt = now
        multi = self.server.multiProcess
        cpu = procfs.treeCPU(self._pids) if multi else self.server.cpuSeconds()
        rss = {p: procfs.rssKB(p) for p in self._pids} if self.rss else {}
        self.samples.append(Sample(time.monotonic(), cpu, rss, procfs.cpuTimes()))
        self.cpuSpent += time.process_time() - began

    def rssGrowth(self, t0: float, t1: float) -> tuple[float | None, int, int]:
        """
        The largest growth of the server's RSS (KiB) between C{t0} and C{t1}
        over its RSS just before C{t0}, process by process (a process first
        seen inside the window counts from its first reading), with the
        baseline total and the number of samples in the window.
        """
        before = [s for s in self.samples if s.t <= t0]
        inside = [s for s in self.samples if t0 <= s.t <= t1]
        baseline = dict(before[-1].rss if before else self.samples[0].rss)
        total = sum(baseline.values())
        growth: float | None = None
        for sample in inside:
            for pid, rss in sample.rss.items():
                baseline.setdefault(pid, rss)
            here = sum(rss - baseline[pid] for pid, rss in sample.rss.items())
            growth = here if growth is None else max(growth, here)
        return growth, total, len(inside)

    def cpuAt(self, t: float) -> float:
        """
        The server's CPU seconds at C{t}, interpolated between samples.
        """
        samples = self.samples
        times = [s.t for s in samples]
        i = bisect.bisect_left(times, t)
        if i <= 0:
            return samples[0].cpu
        if i >= len(samples):
            return samples[-1].cpu
        a, b = samples[i - 1], samples[i]
        return a.cpu + (b.cpu - a.cpu) * (t - a.t) / ((b.t - a.t) or 1)

    def cores(self, t0: float, t1: float, ctx: Context) -> dict[str, Any]:
        inside = [s for s in self.samples if t0 <= s.t <= t1]
        if len(inside) < 2:
            return {}
        return {
            "server_core": procfs.coreLoad(inside[0].cores, inside[-1].cores, ctx.serverCPU),
            "client_core": procfs.coreLoad(inside[0].cores, inside[-1].cores, ctx.clientCPU),
        }


class Scenario:
    """
    A workload: its data (L{plan}) and what it measures on a started
    server (L{measure}).
    """

    name: ClassVar[str] = "?"
    #: The figure that orders a server's rounds (L{rounds.combine}), in a
    #: result or in each point of a sweep, and which way is better.
    primary: ClassVar[tuple[str, str]]

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.options = ctx.options
        self._expected: dict[str, Expected] = {}
        #: Who is being measured, for notes: scenario, server and round.
        self.who = self.name

    def plan(self) -> list[tuple[str, list[int]]]:
        """
        (user, message sizes) for each Maildir.
        """
        raise NotImplementedError

    def measure(self, server: ServerAdapter, data: DataSet, mailroot: str) -> dict[str, Any]:
        raise NotImplementedError

    def expected(self, data: DataSet, user: str) -> Expected:
        if user not in self._expected:
            self._expected[user] = Expected(data.maildir(user))
        return self._expected[user]

    def run(self, servers: Sequence[type[ServerAdapter]]) -> dict[str, Any]:
        """
        Generate the data, then measure each server on its own copy, in
        C{--rounds} rounds: each round runs every server once, the first
        server of one round last in the next, so that each leads a round in
        turn and a slow spell of the machine falls on all of them.
        """
        root = os.path.join(self.ctx.workdir, self.name)
        data = DataSet.generate(
            os.path.join(root, "data"), self.plan(), self.options.seed, self.options.wire_names
        )
        log(
            f"{self.name}: generated {sum(data.counts.values())} messages,"
            f" {data.octets / MB:.1f} MB, in {data.seconds:.1f} s"
        )
        chosen = [c for c in servers if c.scenarios is None or self.name in c.scenarios]
        byServer: dict[str, list[dict[str, Any]]] = {c.name: [] for c in chosen}
        try:
            for n in range(self.options.rounds):
                turn = chosen[n % len(chosen) :] + chosen[: n % len(chosen)] if chosen else []
                for cls in turn:
                    byServer[cls.name].append(self._one(cls, data, root, n + 1))
        finally:
            if not self.options.keep:
                shutil.rmtree(root, ignore_errors=True)
        key, better = self.primary
        return {name: rounds.combine(results, key, better) for name, results in byServer.items()}

    def _one(
        self, cls: type[ServerAdapter], data: DataSet, root: str, n: int = 1
    ) -> dict[str, Any]:
        """
        Round C{n} of one server: a fresh copy of the data, a fresh server.
        """
        several = self.options.rounds > 1
        who = self.who = f"{self.name} {cls.name}" + (f" (round {n})" if several else "")
        work = os.path.join(root, f"{cls.name}-{n}" if several else cls.name)
        mailroot = os.path.join(work, "mail")
        began = time.monotonic()
        data.cloneTo(mailroot)
        server = cls(work, self.options)
        try:
            server.start(mailroot, data.users, self.ctx.serverCPU)
            preflight = self.ctx.preflight()
            result = self.measure(server, data, mailroot)
            result["preflight"] = preflight
        except Exception as e:
            traceback.print_exc()
            self.ctx.notes.append(f"{who}: failed: {e}")
            result = {"error": f"{type(e).__name__}: {e}"}
        finally:
            server.stop()
            problems = server.logProblems()
            if problems:
                self.ctx.notes.append(
                    f"{who}: {len(problems)} error lines in the server log,"
                    f" first: {problems[0][:160]}"
                )
            if not self.options.keep:
                shutil.rmtree(mailroot, ignore_errors=True)
        log(f"{who}: done in {time.monotonic() - began:.1f} s")
        return result

    # Shared pieces.

    def usersFile(self, name: str, users: Sequence[tuple[str, str]]) -> str:
        return writeUsers(os.path.join(self.ctx.workdir, f"users-{name}"), users)

    def churn(
        self, server: ServerAdapter, usersFile: str, clients: int, warmup: float, duration: float
    ) -> dict[str, Any]:
        """
        One churn run: popload loops sessions; the server's CPU is read at
        the edges of the measured window.
        """
        start = time.monotonic() + LEAD
        drops = procfs.listenDrops()
        process, path = self.ctx.popload.churn(
            server.port, usersFile, clients, start, warmup, duration, self.options.churn_msgs
        )
        try:
            sleepUntil(start + warmup)
            switches0 = server.contextSwitches()
            cpu0, stat0, t0 = server.cpuSeconds(), procfs.cpuTimes(), time.monotonic()
            sleepUntil(start + warmup + duration)
            cpu1, stat1, t1 = server.cpuSeconds(), procfs.cpuTimes(), time.monotonic()
            switches1 = server.contextSwitches()
        finally:
            result = Popload.finish(process, path, warmup + duration + DRAIN_SLACK)
        drops = procfs.listenDrops() - drops
        if result["errors"]:
            # In the table for the round shown; here for every round.
            self.ctx.notes.append(f"{self.who}: client errors {result['errors']}")
        sessions = result["sessions"]
        wall = t1 - t0
        serverCPU = cpu1 - cpu0
        return {
            "clients": clients,
            "window_s": round(wall, 3),
            "sessions": sessions,
            "sessions_per_s": round(result["sessions_per_s"], 1),
            "server_cpu_s_per_1000": round(1000 * serverCPU / sessions, 3) if sessions else None,
            "server_cpu_pct": _pct(serverCPU, wall),
            # A server whose threads hand work to each other switches
            # between them: CPU time that instruction counts do not show.
            "server_switches_per_session": (
                round((switches1 - switches0) / sessions, 2)
                if sessions and switches0 is not None and switches1 is not None
                else None
            ),
            "client_cpu_pct": _pct(result["cpu_s"], result["cpu_window_s"]),
            "latency_ms_p50": result["latency_ms"]["p50"],
            "latency_ms_p90": result["latency_ms"]["p90"],
            "latency_ms_p99": result["latency_ms"]["p99"],
            "latency_ms_max": result["latency_ms"]["max"],
            "errors": result["errors"],
            "first_error": result["first_error"] or None,
            # Sessions whose SYN the server's full accept queue dropped
            # (connect() delayed by a second or more), and the kernel's
            # count of such drops (machine-wide: others' too).
            "retransmitted": result["retransmitted"],
            "listen_drops_machine": drops,
            "server_core": procfs.coreLoad(stat0, stat1, self.ctx.serverCPU),
            "client_core": procfs.coreLoad(stat0, stat1, self.ctx.clientCPU),
        }

    def fetch(
        self,
        server: ServerAdapter,
        data: DataSet,
        users: Sequence[tuple[str, str]],
        interval: float,
        rss: bool = False,
        **options: Any,
    ) -> tuple[dict[str, Any], Sampler, dict[str, Any]]:
        """
        One popload fetch run (a session per user, all at once) with the
        server sampled every C{interval} s; then every session verified.
        Just before it, the users' message files are read into the page
        cache (L{DataSet.readMessages}).

        @return: popload's result, the sampler, and the verification summed
            over the sessions.
        """
        usersFile = self.usersFile(self.name, users)
        data.readMessages([user for user, _ in users])
        sampler = Sampler(server, rss)
        sampler.sample()
        process, path, prefix = self.ctx.popload.fetch(
            server.port, usersFile, utf8=int(server.utf8), **options
        )
        deadline = time.monotonic() + 3600
        while process.poll() is None and time.monotonic() < deadline:
            sampler.sample()
            time.sleep(interval)
        sampler.sample()
        result = Popload.finish(process, path, 60)
        check: Counter[str] = Counter()
        problems: list[str] = []
        for index, session in enumerate(result["sessions"]):
            raw_path = f"{prefix}.{index}"
            with open(raw_path, "rb") as f:
                raw = f.read()
            os.unlink(raw_path)
            if session["error"]:
                problems.append(
                    f"{session['user']}: {session['error']}: {session.get('error_line')}"
                )
                continue
            verdict = verifySession(session, raw, self.expected(data, session["user"]))
            problems += [f"{session['user']}: {p}" for p in verdict.pop("problems")]
            check.update(verdict)
        summary: dict[str, Any] = dict(check)
        summary["problems"] = problems
        summary["errors"] = result["errors"]
        failed = [s for s in result["sessions"] if s["error"]]
        if failed:
            raise RuntimeError(
                f"{len(failed)} of {len(result['sessions'])} sessions failed: {problems[0]}"
            )
        if problems:
            self.ctx.notes.append(
                f"{self.who}: {len(problems)} verification problem(s), first: {problems[0][:200]}"
            )
        return result, sampler, summary


def _verification(summary: dict[str, Any]) -> dict[str, Any]:
    return {
        "verified": summary.get("verified", 0),
        "mismatched": summary.get("mismatched", 0),
        "list_sizes_wrong": summary.get("list_sizes_wrong", 0),
        "problems": summary["problems"][:5],
    }


class Churn(Scenario):
    """
    Login churn: C{--churn-clients} connections, each its own user (the
    maildrop lock would otherwise serialise them), loop connect, USER,
    PASS, STAT, QUIT for a warm-up and a measured window.
    """

    name = "churn"
    primary = ("sessions_per_s", "higher")

    def plan(self) -> list[tuple[str, list[int]]]:
        o = self.options
        return [(f"c{i}", [o.churn_msg_size] * o.churn_msgs) for i in range(o.churn_clients)]

    def measure(self, server: ServerAdapter, data: DataSet, mailroot: str) -> dict[str, Any]:
        o = self.options
        users = self.usersFile("churn", data.users)
        return self.churn(server, users, o.churn_clients, o.churn_warmup, o.churn_duration)


class Concurrency(Scenario):
    """
    Churn at several numbers of clients (C{--concurrency}), for the plot
    of session latency against concurrency.
    """

    name = "concurrency"
    primary = ("sessions_per_s", "higher")

    def plan(self) -> list[tuple[str, list[int]]]:
        o = self.options
        most = max(o.concurrency)
        return [(f"k{i}", [o.churn_msg_size] * o.churn_msgs) for i in range(most)]

    def measure(self, server: ServerAdapter, data: DataSet, mailroot: str) -> dict[str, Any]:
        o = self.options
        users = self.usersFile("concurrency", data.users)
        points = []
        for clients in o.concurrency:
            points.append(
                self.churn(server, users, clients, o.concurrency_warmup, o.concurrency_duration)
            )
            time.sleep(0.3)
        return {"points": points}


class Bulk(Scenario):
    """
    One client: login, STAT, LIST, UIDL, RETR of every message, QUIT.
    """

    name = "bulk"
    primary = ("mb_per_s", "higher")

    def plan(self) -> list[tuple[str, list[int]]]:
        return [("bulk", [self.options.bulk_size] * self.options.bulk_count)]

    def measure(self, server: ServerAdapter, data: DataSet, mailroot: str) -> dict[str, Any]:
        return self.download(server, data, data.users[0])

    def download(
        self, server: ServerAdapter, data: DataSet, user: tuple[str, str]
    ) -> dict[str, Any]:
        result, sampler, summary = self.fetch(server, data, [user], 0.02)
        s = result["sessions"][0]
        retrs = s["retr"]
        session = s["t_quit_ok"] - s["t_connect"]
        retrPhase = retrs[-1][4] - retrs[0][3]
        octets = summary.get("message_octets", 0)
        serverCPU = sampler.cpuAt(s["t_quit_ok"]) - sampler.cpuAt(s["t_connect"])
        return {
            "messages": len(retrs),
            "message_octets": octets,
            "wire_octets": sum(r[2] for r in retrs),
            "session_s": round(session, 3),
            "mb_per_s": round(octets / MB / session, 1),
            "retr_mb_per_s": round(octets / MB / retrPhase, 1),
            "messages_per_s": round(len(retrs) / retrPhase, 1),
            "retr_ms_p50": _ms(statistics.median(r[4] - r[3] for r in retrs)),
            "login_s": round(s["t_pass_ok"] - s["t_pass_sent"], 4),
            "stat_s": round(s["t_stat_ok"] - s["t_pass_ok"], 4),
            "list_uidl_s": round(s["t_uidl_ok"] - s["t_stat_ok"], 4),
            "utf8": s["utf8_ok"],
            "server_cpu_pct": _pct(serverCPU, session),
            "server_cpu_ms_per_mb": _perMB(serverCPU, octets),
            "client_cpu_pct": _pct(result["cpu_s"], result["t_end"] - result["t_start"]),
            "sampler_cpu_pct": _pct(sampler.cpuSpent, result["t_end"] - result["t_start"]),
            **_verification(summary),
            **sampler.cores(s["t_connect"], s["t_quit_ok"], self.ctx),
        }


class Parallel(Scenario):
    """
    C{--parallel-clients} clients at once, each its own user, each as in
    bulk.
    """

    name = "parallel"
    primary = ("mb_per_s", "higher")

    def plan(self) -> list[tuple[str, list[int]]]:
        o = self.options
        return [(f"p{i}", [o.bulk_size] * o.parallel_count) for i in range(o.parallel_clients)]

    def measure(self, server: ServerAdapter, data: DataSet, mailroot: str) -> dict[str, Any]:
        result, sampler, summary = self.fetch(server, data, data.users, 0.02)
        sessions = result["sessions"]
        first = min(s["t_connect"] for s in sessions)
        last = max(s["t_quit_ok"] for s in sessions)
        wall = last - first
        octets = summary.get("message_octets", 0)
        perClient = [
            sum(r[2] for r in s["retr"]) / MB / (s["t_quit_ok"] - s["t_connect"]) for s in sessions
        ]
        serverCPU = sampler.cpuAt(last) - sampler.cpuAt(first)
        return {
            "clients": len(sessions),
            "messages": sum(len(s["retr"]) for s in sessions),
            "message_octets": octets,
            "wall_s": round(wall, 3),
            "mb_per_s": round(octets / MB / wall, 1),
            "client_mb_per_s_min": round(min(perClient), 1),
            "client_mb_per_s_max": round(max(perClient), 1),
            "server_cpu_pct": _pct(serverCPU, wall),
            "server_cpu_ms_per_mb": _perMB(serverCPU, octets),
            "client_cpu_pct": _pct(result["cpu_s"], result["t_end"] - result["t_start"]),
            "sampler_cpu_pct": _pct(sampler.cpuSpent, result["t_end"] - result["t_start"]),
            **_verification(summary),
            **sampler.cores(first, last, self.ctx),
        }


class Sizes(Bulk):
    """
    Bulk at several message sizes (C{--sizes}), for the plot of throughput
    against message size; each size moves about C{--sizes-mb} MB.
    """

    name = "sizes"

    def plan(self) -> list[tuple[str, list[int]]]:
        o = self.options
        plan = []
        for size in o.sizes:
            count = max(20, min(5000, int(o.sizes_mb * MB / size)))
            plan.append((f"s{size}", [size] * count))
        return plan

    def measure(self, server: ServerAdapter, data: DataSet, mailroot: str) -> dict[str, Any]:
        points = []
        for size, user in zip(self.options.sizes, data.users, strict=True):
            point = self.download(server, data, user)
            point["message_size"] = size
            points.append(point)
        return {"points": points}


class Maildrop(Scenario):
    """
    A big maildrop (C{--maildrop-count} small messages, no size hints in
    the names): USER, PASS, STAT, UIDL, QUIT twice.  The first login is
    cold (no server index yet: the copy is fresh and the server just
    started), the second warm.  Timed as the client sees it, from PASS sent
    to the end of the UIDL listing.

    The first login waits until C{--maildrop-settle} seconds have passed
    since the copy was written.  Servers that skip listing directories whose
    times have not changed (Dovecot, popserv) do not trust times from the
    last second, when a delivery may still be changing them; a client's
    login is rarely within a second of the last delivery.
    """

    name = "maildrop"
    primary = ("cold.total_s", "lower")

    def plan(self) -> list[tuple[str, list[int]]]:
        o = self.options
        return [("big", [o.maildrop_size] * o.maildrop_count)]

    def measure(self, server: ServerAdapter, data: DataSet, mailroot: str) -> dict[str, Any]:
        user = data.users[0]
        maildir = os.path.join(mailroot, user[0])
        figures: dict[str, Any] = {"messages": data.counts[user[0]]}
        written = max(os.stat(os.path.join(maildir, d)).st_mtime for d in ("new", "cur"))
        time.sleep(max(0.0, written + self.options.maildrop_settle - time.time()))
        for which in ("cold", "warm"):
            result, sampler, summary = self.fetch(server, data, [user], 0.05, list=0, retr="none")
            s = result["sessions"][0]
            total = s["t_uidl_ok"] - s["t_pass_sent"]
            figures[which] = {
                "pass_s": round(s["t_pass_ok"] - s["t_pass_sent"], 4),
                "stat_s": round(s["t_stat_ok"] - s["t_pass_ok"], 4),
                "uidl_s": round(s["t_uidl_ok"] - s["t_stat_ok"], 4),
                "total_s": round(total, 4),
                "server_cpu_s": round(
                    sampler.cpuAt(s["t_uidl_ok"]) - sampler.cpuAt(s["t_pass_sent"]), 3
                ),
                "client_cpu_pct": _pct(result["cpu_s"], result["t_end"] - result["t_start"]),
                "stat_count": s["stat_count"],
                "uidl_lines": summary.get("uidl_lines", 0),
                "problems": summary["problems"][:3],
                # What the server keeps next to the messages after this login.
                "files_in_maildir": sorted(
                    n for n in os.listdir(maildir) if n not in ("new", "cur", "tmp")
                ),
            }
            # A client polls again later, not within the same millisecond;
            # a server may finish writing its index after QUIT.
            time.sleep(self.options.maildrop_pause)
        return figures


class Large(Scenario):
    """
    One big message retrieved C{--large-repeat} times in one session; the
    server's RSS is sampled every 5 ms.
    """

    name = "large"
    primary = ("mb_per_s_median", "higher")

    def plan(self) -> list[tuple[str, list[int]]]:
        return [("large", [self.options.large_mb * MB])]

    def measure(self, server: ServerAdapter, data: DataSet, mailroot: str) -> dict[str, Any]:
        hwm0 = procfs.hwmKB(server.pid) if not server.multiProcess else 0
        result, sampler, summary = self.fetch(
            server, data, data.users, 0.005, rss=True, repeat=self.options.large_repeat
        )
        hwm1 = procfs.hwmKB(server.pid) if not server.multiProcess else 0
        s = result["sessions"][0]
        retrs = s["retr"]
        octets = summary.get("message_octets", 0) // max(len(retrs), 1)
        durations = [r[4] - r[3] for r in retrs]
        first, last = retrs[0][3], retrs[-1][4]
        growth, baseline, samples = sampler.rssGrowth(first, last)
        # Shrinking is no growth (the raw figure stays in the JSON).
        rawGrowth = growth
        if growth is not None:
            growth = max(growth, 0.0)
        serverCPU = sampler.cpuAt(last) - sampler.cpuAt(first)
        return {
            "message_octets": octets,
            "retrievals": len(retrs),
            "retr_s": [round(d, 4) for d in durations],
            "mb_per_s_median": round(octets / MB / statistics.median(durations), 1),
            "mb_per_s_best": round(octets / MB / min(durations), 1),
            "rss_before_retr_mb": round(baseline / 1024, 1),
            "rss_growth_mb": round(growth / 1024, 2) if growth is not None else None,
            "rss_growth_raw_mb": round(rawGrowth / 1024, 2) if rawGrowth is not None else None,
            "rss_samples_in_retr": samples,
            "hwm_growth_mb": round((hwm1 - hwm0) / 1024, 2) if hwm0 else None,
            "server_cpu_pct": _pct(serverCPU, last - first),
            "server_cpu_ms_per_mb": _perMB(serverCPU, octets * len(retrs)),
            "client_cpu_pct": _pct(result["cpu_s"], result["t_end"] - result["t_start"]),
            "sampler_cpu_pct": _pct(sampler.cpuSpent, result["t_end"] - result["t_start"]),
            **_verification(summary),
            **sampler.cores(first, last, self.ctx),
        }


#: Sessions the idle scenario opens and closes before it measures.
WARMUP_SESSIONS = 50


class Idle(Scenario):
    """
    C{--idle-sessions} sessions, each its own user, logged in and left
    idle: the server's memory growth per session.
    """

    name = "idle"
    primary = ("pss_per_session_kb", "lower")

    def plan(self) -> list[tuple[str, list[int]]]:
        return [(f"i{i}", [900]) for i in range(self.options.idle_sessions)]

    def measure(self, server: ServerAdapter, data: DataSet, mailroot: str) -> dict[str, Any]:
        # Warm up first, as a server that has been running would be: a
        # round of WARMUP_SESSIONS logins and logouts starts thread pools
        # and fills allocator arenas, a one-time cost that is not per
        # session (the same for every server).
        warm = IdleSessions(
            self.ctx.popload.binary,
            server.port,
            self.usersFile("idle-warmup", data.users[:WARMUP_SESSIONS]),
            min(WARMUP_SESSIONS, len(data.users)),
        )
        try:
            warm.ready(60)
            warm.release()
        finally:
            warm.kill()
        time.sleep(0.5)
        before = server.memory()
        users = self.usersFile("idle", data.users)
        sessions = IdleSessions(self.ctx.popload.binary, server.port, users, len(data.users))
        try:
            ready = sessions.ready(600)
            time.sleep(1.0)
            after = server.memory()
            final = sessions.release()
        finally:
            sessions.kill()
        held = ready["held"]
        if not held:
            raise RuntimeError(f"no session could log in: {ready.get('first_error')}")
        if ready["failed"]:
            self.ctx.notes.append(
                f"{self.who}: {ready['failed']} sessions failed: {ready['first_error']}"
            )
        return {
            "sessions": held,
            "failed": ready["failed"],
            "setup_s": ready["setup_s"],
            "rss_before_mb": round(before["rss_kb"] / 1024, 1),
            "rss_after_mb": round(after["rss_kb"] / 1024, 1),
            "rss_per_session_kb": round((after["rss_kb"] - before["rss_kb"]) * 1.024 / held, 2),
            "pss_before_mb": round(before["pss_kb"] / 1024, 1),
            "pss_after_mb": round(after["pss_kb"] / 1024, 1),
            "pss_per_session_kb": round((after["pss_kb"] - before["pss_kb"]) * 1.024 / held, 2),
            "processes_before": before["processes"],
            "processes_after": after["processes"],
            # For a forking server: where the memory is (Dovecot: one
            # "pop3" process per session).
            "by_command_before": before["by_command"],
            "by_command_after": after["by_command"],
            "dropped": final.get("dropped"),
            "quit_ok": final.get("quit_ok"),
        }


class LoadgenCalibration:
    """
    The load generator against popload's own trivial responder (pinned to
    the server CPU): how far it can go, so that each server's figure can be
    compared with the generator's ceiling.
    """

    name = "loadgen"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.options = ctx.options

    def run(self) -> dict[str, Any]:
        o = self.options
        ctx = self.ctx
        users = writeUsers(
            os.path.join(ctx.workdir, "users-loadgen"),
            [(f"c{i}", "pw") for i in range(o.churn_clients)],
        )
        out: dict[str, Any] = {}
        with procfs.pinned(ctx.serverCPU):
            responder = Responder(ctx.popload.binary, o.churn_msgs, o.bulk_size)
        try:
            start = time.monotonic() + LEAD
            warmup, duration = 0.5, max(2.0, o.churn_duration / 3)
            process, path = ctx.popload.churn(
                responder.port, users, o.churn_clients, start, warmup, duration, o.churn_msgs
            )
            sleepUntil(start + warmup)
            cpu0, t0 = procfs.processCPU(responder.pid), time.monotonic()
            sleepUntil(start + warmup + duration)
            cpu1, t1 = procfs.processCPU(responder.pid), time.monotonic()
            churn = Popload.finish(process, path, warmup + duration + DRAIN_SLACK)
            out["churn_sessions_per_s"] = round(churn["sessions_per_s"], 1)
            out["churn_client_cpu_pct"] = _pct(churn["cpu_s"], churn["cpu_window_s"])
            out["churn_responder_cpu_pct"] = _pct(cpu1 - cpu0, t1 - t0)
            out["churn_errors"] = churn["errors"]
        finally:
            responder.stop()
        with procfs.pinned(ctx.serverCPU):
            responder = Responder(ctx.popload.binary, 1, o.large_mb * MB)
        try:
            single = writeUsers(os.path.join(ctx.workdir, "users-loadgen1"), [("c0", "pw")])
            process, path, prefix = ctx.popload.fetch(responder.port, single, repeat=o.large_repeat)
            fetch = Popload.finish(process, path, 600)
            os.unlink(f"{prefix}.0")
            retrs = fetch["sessions"][0]["retr"]
            octets = sum(r[2] for r in retrs)
            retrTime = sum(r[4] - r[3] for r in retrs)
            out["retr_mb_per_s"] = round(octets / MB / retrTime, 1)
            out["retr_client_cpu_pct"] = _pct(fetch["cpu_s"], fetch["t_end"] - fetch["t_start"])
        finally:
            responder.stop()
        for key in ("churn", "retr"):
            cpu = out[f"{key}_client_cpu_pct"]
            rate = out["churn_sessions_per_s" if key == "churn" else "retr_mb_per_s"]
            out[f"{key}_ceiling"] = round(rate * 100 / cpu) if cpu else None
        return {"popload": out}


SCENARIOS: dict[str, type[Scenario]] = {
    cls.name: cls for cls in (Churn, Bulk, Parallel, Maildrop, Large, Idle, Sizes, Concurrency)
}
ORDER = [
    "loadgen",
    "churn",
    "bulk",
    "parallel",
    "maildrop",
    "large",
    "idle",
    "sizes",
    "concurrency",
]
