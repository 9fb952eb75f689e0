"""
A password-guessing bot for the load tests, run as its own process so that
its work does not share a GIL with the client being measured.

    python badlogins.py PORT ADDRESSES CONNECTIONS SECONDS USER

Opens CONNECTIONS connections from each of ADDRESSES source addresses
(127.0.0.2, 127.0.0.3, ...: all of 127.0.0.0/8 is this machine's loopback)
to 127.0.0.1:PORT, and on each keeps sending USER/PASS with wrong passwords,
reconnecting whenever the server closes.

Once every connection has sent its first guess (or READY_LIMIT seconds have
passed) it prints one JSON line, C{{"guessing": N}}: the connections
guessing by then.  The flood goes on for SECONDS more; then it stops,
whatever replies are still owed, and prints a second JSON line: attempts
made, replies by kind, connections opened, errors.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import math
import sys
import time

HOST = "127.0.0.1"
#: No single reply may take longer than this (the penalty is at most 15 s).
REPLY_TIMEOUT = 30.0
#: The longest the bot waits for every connection to be guessing.
READY_LIMIT = 15.0


class Flood:
    """
    What the bots share: when to stop, and how many have begun guessing.
    """

    def __init__(self, bots: int) -> None:
        self.bots = bots
        self.deadline = math.inf
        self.guessing = 0
        self.allGuessing = asyncio.Event()
        self.stats: collections.Counter[str] = collections.Counter()

    def started(self) -> None:
        self.guessing += 1
        if self.guessing == self.bots:
            self.allGuessing.set()

    def going(self) -> bool:
        return time.monotonic() < self.deadline


async def guess(port: int, source: str, user: bytes, flood: Flood) -> None:
    attempt = 0
    stats = flood.stats
    while flood.going():
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(HOST, port, local_addr=(source, 0)), REPLY_TIMEOUT
            )
        except OSError as e:
            stats[f"connect error {e.errno}"] += 1
            await asyncio.sleep(0.1)
            continue
        stats["connections"] += 1
        try:
            greeting = await asyncio.wait_for(reader.readline(), REPLY_TIMEOUT)
            if not greeting.startswith(b"+OK"):
                stats["refused: " + greeting.decode("ascii", "replace").strip()] += 1
                continue
            while flood.going():
                attempt += 1
                writer.write(b"USER " + user + b"\r\nPASS wrong-%d\r\n" % attempt)
                stats["attempts"] += 1
                if attempt == 1:
                    flood.started()
                first = await asyncio.wait_for(reader.readline(), REPLY_TIMEOUT)
                second = await asyncio.wait_for(reader.readline(), REPLY_TIMEOUT)
                if not second:
                    stats["closed"] += 1
                    break
                stats[" / ".join(r.decode().strip() for r in (first, second))] += 1
        except (TimeoutError, OSError, asyncio.IncompleteReadError) as e:
            stats[type(e).__name__] += 1
        finally:
            writer.close()


async def main(port: int, addresses: int, connections: int, seconds: float, user: str) -> None:
    flood = Flood(addresses * connections)
    sources = [f"127.0.0.{2 + i}" for i in range(addresses)]
    bots = [
        asyncio.create_task(guess(port, source, user.encode(), flood))
        for source in sources
        for _ in range(connections)
    ]
    with contextlib.suppress(TimeoutError):  # then report however many are guessing
        await asyncio.wait_for(flood.allGuessing.wait(), READY_LIMIT)
    flood.deadline = time.monotonic() + seconds
    print(json.dumps({"guessing": flood.guessing}), flush=True)
    _, unfinished = await asyncio.wait(bots, timeout=seconds + 1)
    flood.stats["unanswered"] = len(unfinished)
    for bot in unfinished:
        bot.cancel()
    await asyncio.gather(*unfinished, return_exceptions=True)
    print(json.dumps(dict(flood.stats)), flush=True)


if __name__ == "__main__":
    port, addresses, connections, seconds, user = sys.argv[1:]
    asyncio.run(main(int(port), int(addresses), int(connections), float(seconds), user))
