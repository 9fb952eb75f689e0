"""
A password-guessing bot for the load tests, run as its own process so that
its work does not share a GIL with the client being measured.

    python badlogins.py PORT ADDRESSES CONNECTIONS SECONDS USER

Opens CONNECTIONS connections from each of ADDRESSES source addresses
(127.0.0.2, 127.0.0.3, ...: all of 127.0.0.0/8 is this machine's loopback)
to 127.0.0.1:PORT, and on each keeps sending USER/PASS with wrong passwords
for SECONDS, reconnecting whenever the server closes.  Then it stops,
whatever replies are still owed, and prints one JSON object: attempts
made, replies by kind, connections opened, errors.
"""

from __future__ import annotations

import asyncio
import collections
import json
import sys
import time

HOST = "127.0.0.1"
#: No single reply may take longer than this (the penalty is at most 15 s).
REPLY_TIMEOUT = 30.0


async def guess(
    port: int, source: str, user: bytes, deadline: float, stats: collections.Counter[str]
) -> None:
    attempt = 0
    while time.monotonic() < deadline:
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
            while time.monotonic() < deadline:
                attempt += 1
                writer.write(b"USER " + user + b"\r\nPASS wrong-%d\r\n" % attempt)
                stats["attempts"] += 1
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
    stats: collections.Counter[str] = collections.Counter()
    deadline = time.monotonic() + seconds
    sources = [f"127.0.0.{2 + i}" for i in range(addresses)]
    bots = [
        asyncio.create_task(guess(port, source, user.encode(), deadline, stats))
        for source in sources
        for _ in range(connections)
    ]
    _, unfinished = await asyncio.wait(bots, timeout=seconds + 1)
    stats["unanswered"] = len(unfinished)
    for bot in unfinished:
        bot.cancel()
    await asyncio.gather(*unfinished, return_exceptions=True)
    print(json.dumps(dict(stats)), flush=True)


if __name__ == "__main__":
    port, addresses, connections, seconds, user = sys.argv[1:]
    asyncio.run(main(int(port), int(addresses), int(connections), float(seconds), user))
