"""
Readings from C{/proc}: CPU time and memory of a server's processes, how
each CPU spent its time, and the facts about the machine that a result is
quoted with.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from collections.abc import Iterable, Iterator
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _statFields(pid: int) -> list[bytes]:
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    # The command name is in parentheses and may hold spaces.
    return data[data.rindex(b")") + 2 :].split()


def processCPU(pid: int, children: bool = True) -> float:
    """
    User plus system CPU seconds of process C{pid} (all its threads) and,
    with C{children}, of the children it has reaped: that is where the CPU
    time of Dovecot's short-lived login and pop3 processes ends up.
    """
    fields = _statFields(pid)
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLOCK_TICKS


def contextSwitches(pid: int) -> int:
    """
    Context switches of process C{pid} so far, voluntary (it waited) and
    not (it was preempted), summed over its live threads.
    """
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/status", "rb") as f:
            for line in f:
                if line.startswith((b"voluntary_ctxt_switches:", b"nonvoluntary_ctxt_switches:")):
                    total += int(line.split()[1])
    return total


def startTime(pid: int) -> int | None:
    """
    When C{pid} started (clock ticks after boot), to tell it from a later
    process that reuses its number; L{None} if it is gone.
    """
    try:
        return int(_statFields(pid)[19])
    except (OSError, IndexError, ValueError):
        return None


def children(pid: int) -> list[int]:
    """
    The live children of C{pid}, from C{/proc/PID/task/*/children}.
    """
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
            found.extend(int(p) for p in f.read().split())
    return found


def tree(pid: int) -> list[int]:
    """
    C{pid} and all its live descendants.
    """
    out: list[int] = []
    todo = [pid]
    while todo and len(out) < 100_000:
        current = todo.pop()
        out.append(current)
        todo.extend(children(current))
    return out


def treeCPU(pids: Iterable[int]) -> float:
    """
    L{processCPU} summed over C{pids}, skipping those that have gone.
    """
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += processCPU(pid)
    return total


def _fieldKB(path: str, key: bytes) -> int:
    """
    The number after C{key} on the line of C{path} that starts with it (KiB
    in C{/proc}), 0 if there is none or the file cannot be read (the
    process is gone).
    """
    try:
        with open(path, "rb") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def rssKB(pid: int) -> int:
    """
    Resident set size of C{pid} in KiB (VmRSS), 0 if it is gone.
    """
    return _fieldKB(f"/proc/{pid}/status", b"VmRSS:")


def hwmKB(pid: int) -> int:
    """
    The peak resident set size of C{pid} in KiB (VmHWM), 0 if it is gone.
    """
    return _fieldKB(f"/proc/{pid}/status", b"VmHWM:")


def pssKB(pid: int) -> int:
    """
    Proportional set size of C{pid} in KiB: shared pages divided among the
    processes that share them (C{/proc/PID/smaps_rollup}).
    """
    return _fieldKB(f"/proc/{pid}/smaps_rollup", b"Pss:")


def command(pid: int) -> str:
    """
    The command name of C{pid} (C{/proc/PID/comm}), "" if it is gone.
    """
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def memory(pids: Iterable[int]) -> dict[str, Any]:
    """
    RSS and PSS summed over C{pids} (KiB), how many there were, and the
    same by command name (C{by_command}).
    """
    rss = pss = count = 0
    byCommand: dict[str, dict[str, int]] = {}
    for pid in pids:
        r = rssKB(pid)
        if r:
            p = pssKB(pid)
            rss += r
            pss += p
            count += 1
            entry = byCommand.setdefault(command(pid), {"processes": 0, "rss_kb": 0, "pss_kb": 0})
            entry["processes"] += 1
            entry["rss_kb"] += r
            entry["pss_kb"] += p
    return {"rss_kb": rss, "pss_kb": pss, "processes": count, "by_command": byCommand}


def listenDrops() -> int:
    """
    Connection attempts the kernel dropped because a listening socket's
    accept queue was full (C{ListenDrops} in C{/proc/net/netstat}, all
    sockets of the machine).  A dropped SYN is retried after a second.
    """
    try:
        with open("/proc/net/netstat") as f:
            lines = f.read().splitlines()
    except OSError:
        return 0
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            fields = dict(zip(names.split(), values.split(), strict=False))
            return int(fields.get("ListenDrops", 0))
    return 0


def cpuTimes() -> dict[str, list[int]]:
    """
    The per-CPU lines of C{/proc/stat}: cpuN -> jiffies by kind.
    """
    result = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *values = line.split()
                result[name] = [int(v) for v in values]
    return result


_KINDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def coreLoad(
    before: dict[str, list[int]], after: dict[str, list[int]], cpu: int | None
) -> dict[str, float]:
    """
    How one CPU spent the time between two L{cpuTimes} readings, in percent.

    Softirq matters on loopback: the kernel's receive-side TCP work is
    accounted there, not to either process, so a core can be saturated
    while the process pinned to it shows spare CPU.
    """
    name = f"cpu{cpu}"
    if cpu is None or name not in before or name not in after:
        return {}
    delta = dict(
        zip(_KINDS, (b - a for a, b in zip(before[name], after[name], strict=False)), strict=False)
    )
    total = sum(delta.values()) or 1
    share = {kind: round(100.0 * value / total, 1) for kind, value in delta.items()}
    share["busy"] = round(100.0 - share["idle"] - share["iowait"] - share["steal"], 1)
    return {
        f"{kind}_pct": share[kind]
        for kind in ("busy", "user", "system", "softirq", "irq", "steal", "iowait")
    }


@contextlib.contextmanager
def pinned(cpu: int | None) -> Iterator[None]:
    """
    Run the block (and any process started in it) on CPU C{cpu} only.
    """
    if cpu is None:
        yield
        return
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, saved)


def _command(*argv: str) -> str:
    try:
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=20, check=False
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machineFacts() -> dict[str, Any]:
    """
    What a reader needs to compare runs across machines.
    """
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memTotal = 0
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as f:
        memTotal = int(f.readline().split()[1])
    osName = ""
    with contextlib.suppress(OSError), open("/etc/os-release") as f:
        for line in f:
            if line.startswith("PRETTY_NAME="):
                osName = line.split("=", 1)[1].strip().strip('"')
    facts: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(memTotal / 1024 / 1024, 1),
        "os": osName,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_at_start": os.getloadavg(),
    }
    try:
        import twisted

        facts["twisted"] = twisted.__version__
    except ImportError:
        pass
    try:
        import popserv

        facts["popserv"] = getattr(popserv, "__version__", "?")
    except ImportError:
        pass
    top = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    facts["git_commit"] = _command("git", "-C", top, "rev-parse", "--short", "HEAD")
    # Uncommitted changes to the server measured.
    facts["git_dirty"] = bool(_command("git", "-C", top, "status", "--porcelain", "--", "popserv"))
    return facts
