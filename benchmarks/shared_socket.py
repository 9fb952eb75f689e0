"""
Run N copies of a server on one listening socket, as systemd does for the
instances of docs/operating.rst's C{popserv@.service} ("Several
processes"): the benchmark suite's C{popserv-n} server.

    shared_socket.py N [--port P] [--pin] -- COMMAND [ARG ...]

Binds 127.0.0.1:P (0: a free port), prints C{shared_socket listening on
PORT}, and starts N processes of COMMAND, each with the socket as
descriptor 3 and C{LISTEN_FDS=1}, C{LISTEN_FDNAMES=popserv.socket} and
C{LISTEN_PID} set to its own pid (sd_listen_fds(3)), so that a twistd
listening on C{systemd:domain=INET:index=0} serves it.  The kernel gives
each connection to one of them.  With C{--pin}, process I runs on the
I-th CPU this one may use (modulo their number), as C{CPUAffinity=} in a
unit would put it; without, anywhere.  SIGTERM or SIGINT is passed on to them;
it exits when they all have, with the first non-zero status.  Not a test
and not part of popserv.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

#: Sets what sd_listen_fds(3) reads for the process it becomes (exec keeps
#: the pid), then becomes the command.
_AS_SYSTEMD = """
import os, sys
cpu = os.environ.pop("SHARED_SOCKET_CPU", "")
if cpu:
    os.sched_setaffinity(0, {int(cpu)})
os.environ.update(
    LISTEN_PID=str(os.getpid()), LISTEN_FDS="1", LISTEN_FDNAMES="popserv.socket"
)
os.execvp(sys.argv[1], sys.argv[1:])
"""

#: After passing SIGTERM on, how long the copies have before SIGKILL.
_STOP_TIMEOUT = 15.0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("processes", type=int, help="copies of the command to run")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 [0: a free one]")
    parser.add_argument("--pin", action="store_true", help="process I on the I-th CPU")
    parser.usage = "%(prog)s N [--port P] [--pin] -- COMMAND [ARG ...]"
    split = argv.index("--") if "--" in argv else len(argv)
    options = parser.parse_args(argv[:split])
    command = argv[split + 1 :]
    if options.processes < 1 or not command:
        parser.error("give at least one process and a command after --")

    listener = socket.create_server(("127.0.0.1", options.port), backlog=1024)
    # sd_listen_fds(3): the first passed socket is descriptor 3.
    if listener.fileno() != 3:
        os.dup2(listener.fileno(), 3)
    os.set_inheritable(3, True)
    print(f"shared_socket listening on {listener.getsockname()[1]}", flush=True)

    children: list[subprocess.Popen[bytes]] = []
    asked = False  # to stop, by a signal
    #: Once the copies were told to stop: when they are killed instead.
    deadline: float | None = None

    def stop() -> None:
        nonlocal deadline
        deadline = time.monotonic() + _STOP_TIMEOUT
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    def stopAsked(signum: int, frame: object) -> None:
        nonlocal asked
        asked = True
        stop()

    signal.signal(signal.SIGTERM, stopAsked)
    signal.signal(signal.SIGINT, stopAsked)
    cpus = sorted(os.sched_getaffinity(0))
    for i in range(options.processes):
        env = dict(os.environ)
        if options.pin:
            env["SHARED_SOCKET_CPU"] = str(cpus[i % len(cpus)])
        children.append(
            subprocess.Popen([sys.executable, "-c", _AS_SYSTEMD, *command], pass_fds=(3,), env=env)
        )
    # Ends when every copy has: one that fails (a status other than 0)
    # ends the others too, so that a broken server is not measured at part
    # strength.
    while any(child.poll() is None for child in children):
        if deadline is None and any(child.returncode for child in children):
            stop()
        if deadline is not None and time.monotonic() > deadline:
            for child in children:
                if child.poll() is None:
                    child.kill()
        time.sleep(0.05)
    # A copy that failed unasked (a status, or a signal this process did
    # not pass on) makes the status 1 at least.
    failed = not asked and any(child.returncode for child in children)
    status = next((c.returncode for c in children if c.returncode and c.returncode > 0), 0)
    return status or int(failed)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
