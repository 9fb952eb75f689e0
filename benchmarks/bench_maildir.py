#!/usr/bin/env python3
"""
Benchmark popserv side by side with Dovecot and twisted.mail.pop3, serving
the same generated Maildirs on the same machine in one run.  Run by hand:
it is not a test and asserts nothing about speed.

Scenarios (see benchmarks/README.rst and docs/benchmarks.rst):

 - C{loadgen}: the load generator against a trivial responder, its ceiling.
 - C{churn}: 50 clients loop connect, USER, PASS, STAT, QUIT: sessions/s
   and server CPU per 1,000 sessions.
 - C{bulk}: one client, LIST, UIDL, RETR of 2,000 messages of 50 KB.
 - C{parallel}: 20 clients at once, each its own user, 200 x 50 KB each.
 - C{maildrop}: 100,000 messages of 900 octets, first and second login:
   PASS + STAT + full UIDL.
 - C{large}: one 50 MB message: RETR MB/s and server memory growth.
 - C{idle}: 1,000 idle authenticated sessions: memory per session.
 - C{sizes}: bulk at 1, 10, 50, 500 KB (throughput against message size).
 - C{concurrency}: churn with 1, 10, 50, 100 clients (latency against
   concurrency).

Each server is started fresh for each scenario (and for each round of
C{--rounds}, the servers in turn), pinned to one CPU, with the
load generator (C{popload.c}, compiled at run time) on the other; every
retrieved byte is checked against the files.  Units: KB = 1,000 octets,
MB = 1,000,000 octets.  Only 127.0.0.1 is used.

    .venv/bin/python benchmarks/bench_maildir.py --quick
    .venv/bin/python benchmarks/bench_maildir.py --json /tmp/bench.json
    .venv/bin/python benchmarks/bench_maildir.py --servers popserv --scenarios churn,bulk
    .venv/bin/python benchmarks/bench_maildir.py --rounds 3 --json /tmp/bench.json
    .venv/bin/python benchmarks/bench_maildir.py --table-from /tmp/bench.json --format rst
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from suite import load, procfs, report
from suite.data import KB
from suite.scenarios import (
    ORDER,
    SCENARIOS,
    Context,
    LoadgenCalibration,
    log,
)
from suite.servers import SERVERS, ServerAdapter, Unavailable

#: (full, quick) defaults of the sizes; --quick picks the second.
DEFAULTS: dict[str, tuple[Any, Any]] = {
    "churn_clients": (50, 50),
    "churn_warmup": (2.0, 0.5),
    "churn_duration": (10.0, 3.0),
    "bulk_count": (2000, 200),
    "parallel_clients": (20, 5),
    "parallel_count": (200, 40),
    "maildrop_count": (100_000, 10_000),
    "large_mb": (50, 10),
    "large_repeat": (3, 2),
    "idle_sessions": (1000, 200),
    "sizes_mb": (20.0, 4.0),
    "concurrency_warmup": (1.0, 0.5),
    "concurrency_duration": (4.0, 1.5),
}


def _numbers(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parseArgs(argv: Sequence[str]) -> argparse.Namespace:
    """
    The options; C{--quick} lowers every size that was not given.
    """
    parser = argparse.ArgumentParser(
        description=__doc__.strip().split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add(
        "--servers",
        default="popserv,dovecot,twisted,floor",
        help="comma list of " + ",".join(SERVERS),
    )
    add("--scenarios", default=",".join(ORDER), help="comma list of " + ",".join(ORDER))
    add("--quick", action="store_true", help="small sizes (about 2 minutes for all)")
    add("--json", metavar="PATH", help="write every figure, the options and the machine to PATH")
    add(
        "--table-from",
        metavar="PATH",
        help="only print the table of an earlier --json file (of the --scenarios)",
    )
    add("--format", choices=("text", "md", "rst"), default="text", help="table style")
    add(
        "--rounds",
        type=int,
        default=1,
        help="measure each scenario's servers N times in turn; the table shows each"
        " server's median round, the JSON keeps all",
    )
    g = parser.add_argument_group("sizes (defaults: full run; --quick: smaller)")
    add = g.add_argument
    add("--churn-clients", type=int, help="churn: concurrent clients, one user each [50]")
    add("--churn-warmup", type=float, help="churn: seconds before measuring [2; quick 0.5]")
    add("--churn-duration", type=float, help="churn: measured seconds [10; quick 3]")
    add("--churn-msgs", type=int, default=1, help="churn: messages in each Maildir")
    add("--churn-msg-size", type=int, default=900, help="churn: octets per message")
    add("--bulk-count", type=int, help="bulk: messages retrieved [2000; quick 200]")
    add("--bulk-size", type=int, default=50 * KB, help="bulk, parallel: octets per message")
    add("--parallel-clients", type=int, help="parallel: clients, one user each [20; quick 5]")
    add("--parallel-count", type=int, help="parallel: messages per client [200; quick 40]")
    add("--maildrop-count", type=int, help="maildrop: messages [100000; quick 10000]")
    add("--maildrop-size", type=int, default=900, help="maildrop: octets per message")
    add("--maildrop-pause", type=float, default=1.0, help="maildrop: seconds between logins")
    add(
        "--maildrop-settle",
        type=float,
        default=2.0,
        help="maildrop: seconds from writing the maildrop to the first login",
    )
    add("--large-mb", type=int, help="large: message size in MB [50; quick 10]")
    add("--large-repeat", type=int, help="large: RETRs of it [3; quick 2]")
    add("--idle-sessions", type=int, help="idle: sessions held [1000; quick 200]")
    add(
        "--sizes",
        type=_numbers,
        default=[1 * KB, 10 * KB, 50 * KB, 500 * KB],
        help="sizes: message sizes in octets",
    )
    add("--sizes-mb", type=float, help="sizes: about this many MB per size [20; quick 4]")
    add(
        "--concurrency",
        type=_numbers,
        default=[1, 10, 50, 100],
        help="concurrency: numbers of clients",
    )
    add("--concurrency-warmup", type=float, help="concurrency: warm-up s [1; quick 0.5]")
    add("--concurrency-duration", type=float, help="concurrency: window s [4; quick 1.5]")
    add("--wire-names", action="store_true", help="name files with ,S= and ,W= (Dovecot LDA)")
    add("--seed", type=int, default=1939, help="seed of the message generator")
    g = parser.add_argument_group("servers and machine")
    add = g.add_argument
    add("--twistd", help="popserv: twistd to run (default: the one next to this Python)")
    add("--server-profile", metavar="DIR", help="popserv: run under cProfile, write DIR/*.prof")
    add("--dovecot-user", default="mail", help="dovecot: the uid its mail processes run as")
    add(
        "--popserv-processes",
        type=int,
        default=2,
        help="popserv-n: processes on one socket, not pinned (docs/operating.rst)",
    )
    add(
        "--popserv-pin-each",
        action="store_true",
        help="popserv-n: pin process I to CPU I instead",
    )
    add("--twisted-nagle", action="store_true", help="twisted: leave TCP_NODELAY off")
    add("--server-cpu", type=int, default=0, help="CPU the server is pinned to")
    add("--client-cpu", type=int, default=1, help="CPU the load generator is pinned to")
    add("--no-pin", dest="pin", action="store_false", help="do not pin processes to CPUs")
    add("--workdir", help="parent of the run's temporary directory (default: system temp)")
    add("--keep", action="store_true", help="keep the temporary directory (data, logs)")
    options = parser.parse_args(argv)
    for name, (full, quick) in DEFAULTS.items():
        if getattr(options, name) is None:
            setattr(options, name, quick if options.quick else full)
    options.servers = [s.strip() for s in options.servers.split(",") if s.strip()]
    options.scenarios = [s.strip() for s in options.scenarios.split(",") if s.strip()]
    for what, chosen, known in (
        ("server", options.servers, list(SERVERS)),
        ("scenario", options.scenarios, ORDER),
    ):
        unknown = set(chosen) - set(known)
        if unknown:
            parser.error(f"unknown {what}(s): {', '.join(sorted(unknown))}")
    for name in (
        "churn_clients",
        "churn_msgs",
        "bulk_count",
        "parallel_clients",
        "parallel_count",
        "maildrop_count",
        "large_mb",
        "large_repeat",
        "idle_sessions",
        "rounds",
        "popserv_processes",
    ):
        if getattr(options, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return options


def _servers(options: argparse.Namespace) -> tuple[list[type[ServerAdapter]], dict[str, Any]]:
    """
    The adapters to run, and each chosen server's version or why it is
    skipped.
    """
    chosen: list[type[ServerAdapter]] = []
    facts: dict[str, Any] = {}
    for name in options.servers:
        cls = SERVERS[name]
        try:
            facts[name] = {"version": cls.check(options)}
            chosen.append(cls)
        except Unavailable as e:
            facts[name] = {"skipped": str(e)}
            log(f"{name}: skipped: {e}")
    return chosen, facts


def printTable(document: dict[str, Any], style: str) -> None:
    """
    The header line, the table, the notes.
    """
    facts = document["machine"]
    servers = [name for name, f in document["servers"].items() if "version" in f]
    versions = "; ".join(
        f"{name}: {f.get('version') or 'skipped: ' + f['skipped']}"
        for name, f in document["servers"].items()
    )
    print(
        f"{document['started']}; {facts['nproc']} x {facts['cpu_model']}, Linux {facts['kernel']},"
        f" Python {facts['python']}; pinned: {document['pinning']};"
        f" {document['duration_s']:.0f} s"
    )
    print(
        f"{versions}; popserv commit {facts.get('git_commit', '?')}"
        + (" (popserv/ modified)" if facts.get("git_dirty") else "")
    )
    several = document["options"].get("rounds", 1)
    if several > 1:
        print(f"{several} rounds of each scenario, servers in turn; each server's median round")
    print()
    header, body = report.tableCells(document["results"], servers)
    print(report.render(header, body, style))
    print()
    for line in report.loadgenSummary(document["results"]):
        print(line)
    # Notes from the run (failures, verification), then those read off the
    # figures (computed again, so that an older file gets today's rules).
    for note in document["run_notes"] + report.notes(document["results"]):
        print(f"note: {note}")


def main(argv: Sequence[str]) -> int:
    """
    Run the chosen scenarios for the chosen servers, print the table,
    write the JSON.
    """
    options = parseArgs(argv)
    if options.table_from:
        with open(options.table_from) as f:
            document = json.load(f)
        # --scenarios picks the rows here too.
        document["results"] = {
            k: v for k, v in document["results"].items() if k in options.scenarios
        }
        printTable(document, options.format)
        return 0
    cpus = os.sched_getaffinity(0)
    if options.pin and not {options.server_cpu, options.client_cpu} <= cpus:
        log("not enough CPUs to pin server and clients apart; not pinning")
        options.pin = False
    if options.pin:
        # popload and the helpers inherit this; servers are started elsewhere.
        os.sched_setaffinity(0, {options.client_cpu})
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    facts = procfs.machineFacts()
    adapters, serverFacts = _servers(options)
    started = datetime.datetime.now(datetime.UTC)
    began = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="popserv-bench-", dir=options.workdir)
    options.rundir = workdir
    results: dict[str, Any] = {}
    ctx = Context(
        options=options,
        workdir=workdir,
        popload=load.Popload(load.build(workdir), workdir),
        serverCPU=options.server_cpu if options.pin else None,
        clientCPU=options.client_cpu if options.pin else None,
    )
    try:
        for name in [s for s in ORDER if s in options.scenarios]:
            log(f"{name}:")
            try:
                if name == "loadgen":
                    results[name] = LoadgenCalibration(ctx).run()
                elif adapters:
                    results[name] = SCENARIOS[name](ctx).run(adapters)
            except Exception as e:
                traceback.print_exc()
                ctx.notes.append(f"{name}: failed: {e}")
    finally:
        if options.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    pinning = "no"
    if options.pin:
        pinning = f"servers CPU {options.server_cpu}, load generator CPU {options.client_cpu}"
    document = {
        "started": started.strftime("%Y-%m-%d %H:%M UTC"),
        "duration_s": round(time.monotonic() - began, 1),
        "machine": facts,
        "servers": serverFacts,
        "pinning": pinning,
        "options": {k: v for k, v in vars(options).items() if k not in ("json", "table_from")},
        "results": results,
        "run_notes": ctx.notes,
        "notes": ctx.notes + report.notes(results),
    }
    print()
    printTable(document, options.format)
    if options.json:
        with open(options.json, "w") as f:
            json.dump(document, f, indent=1, default=str)
        log(f"wrote {options.json}")
    failed = any("error" in r for byServer in results.values() for r in byServer.values())
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
