#!/usr/bin/env python3
"""
Benchmark what one trip to a worker thread and back costs, run by hand:
nothing here asserts a speed.

popserv never touches the file system on the reactor thread, so every
login hands its Maildir work (lock, index, listing) to a thread and takes
the result back: two thread switches and two hand-overs of the GIL.  This
measures that trip alone, with a job that does nothing, on a real reactor
pinned to one CPU as the benchmark's servers are: popserv's
L{ThreadRunner} and Twisted's C{deferToThread}, each against the same loop
with no thread (a Deferred that has fired), whose cost is subtracted.

    .venv/bin/python benchmarks/bench_thread.py
    .venv/bin/python benchmarks/bench_thread.py --trips 50000 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from suite.procfs import pinned


def nothing() -> None:
    return None


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trips", type=int, default=20_000, help="trips per round (20000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each (5)")
    parser.add_argument("--cpu", type=int, default=0, help="CPU to pin to (0)")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin")
    options = parser.parse_args(argv)
    if options.trips < 1 or options.rounds < 1:
        parser.error("--trips and --rounds must be at least 1")

    from twisted.internet import defer, reactor, threads

    from popserv.threads import deferToThread

    ways: dict[str, Callable[[], Any]] = {
        "no thread": lambda: defer.succeed(None),
        "popserv ThreadRunner": lambda: deferToThread(nothing),
        "twisted deferToThread": lambda: threads.deferToThread(nothing),
    }
    cpu: dict[str, list[float]] = {name: [] for name in ways}

    async def run() -> None:
        for _ in range(options.rounds):
            # Turn about, so that a busy moment of the machine falls on all.
            for name, trip in ways.items():
                began = time.process_time()
                for _ in range(options.trips):
                    await trip()
                cpu[name].append((time.process_time() - began) / options.trips * 1e6)

    def done(result: Any) -> Any:
        reactor.stop()  # type: ignore[attr-defined]
        return result

    with pinned(options.cpu if options.pin else None):
        reactor.callWhenRunning(  # type: ignore[attr-defined]
            lambda: defer.ensureDeferred(run()).addBoth(done)
        )
        reactor.run()  # type: ignore[attr-defined]

    base = statistics.median(cpu["no thread"])
    print(
        f"{options.trips} trips x {options.rounds} rounds, Python {sys.version.split()[0]},"
        f" pinned: {'yes' if options.pin else 'no'}; CPU per trip, us"
    )
    for name, figures in cpu.items():
        line = f"{name:24} median {statistics.median(figures):6.1f}  best {min(figures):6.1f}"
        if name != "no thread":
            line += f"   less the loop: {statistics.median(figures) - base:6.1f}"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
