"""
One adapter per server under test, all driven the same way: given a mail
root of Maildirs (C{ROOT/USER}) and the users, start the server on a free
port of 127.0.0.1 pinned to one CPU, report its processes, stop it.

 - L{Popserv}: C{twistd -n popserv ...} as an operator starts it.
 - L{PopservProcesses}: several of those on one listening socket.
 - L{Dovecot}: Debian's C{dovecot-pop3d}, a private instance (own
   configuration, base and state directories, log) in the foreground.
 - L{TwistedPOP3}: C{twisted_ref.py} next to this package, a server made
   of twisted.mail.pop3 and twisted.mail.maildir, in its own process.
 - L{TwistedFloor}: C{twisted_floor.py}, not a server to use but the floor
   to measure against: canned answers on Twisted, nothing else.

An adapter whose software is missing raises L{Unavailable} from
L{ServerAdapter.check}; the runner then skips that server with a note.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from . import procfs

HOST = "127.0.0.1"
#: How long a server may take to start listening.
STARTUP_TIMEOUT = 60.0
#: After SIGTERM, how long a server has to exit before SIGKILL.
STOP_TIMEOUT = 15.0

BENCHMARKS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Unavailable(Exception):
    """
    The server's software is not installed (or cannot run here).
    """


class ServerAdapter:
    """
    One server process (or process tree) under test.

    @cvar name: the column name in results.
    @cvar multiProcess: the server forks processes per connection, so its
        CPU time and memory are summed over its process tree.
    @cvar utf8: the server offers RFC 6856 UTF8, so a client that wants the
        stored bytes of messages with UTF-8 header fields sends it (else a
        server may downgrade those fields); the others get no UTF8 command.
    @cvar scenarios: the names of the scenarios the server takes part in;
        L{None} for all.
    """

    name: ClassVar[str] = "?"
    multiProcess: ClassVar[bool] = False
    utf8: ClassVar[bool] = False
    scenarios: ClassVar[frozenset[str] | None] = None

    def __init__(self, workdir: str, options: Any) -> None:
        self.workdir = workdir
        self.options = options
        os.makedirs(workdir, exist_ok=True)
        self.logPath = os.path.join(workdir, f"{self.name}.log")
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._family: dict[int, int | None] = {}
        #: A command the server's own runs under (valgrind, say), or empty.
        self.wrapper: list[str] = []
        #: How long start() waits for a greeting: longer under a wrapper
        #: such as valgrind, which runs the server tens of times slower.
        self.startupTimeout = STARTUP_TIMEOUT

    # What a subclass provides.

    @classmethod
    def check(cls, options: Any) -> str:
        """
        The server's version, or L{Unavailable} saying what to install.
        """
        raise NotImplementedError

    def command(self, mailroot: str, users: Sequence[tuple[str, str]]) -> list[str]:
        raise NotImplementedError

    def prepareMail(self, mailroot: str) -> None:
        """
        Make the server's copy of the mail usable by it (ownership...).
        """

    def _findPort(self) -> int | None:
        """
        The port the server listens on once it does, else L{None}.
        """
        raise NotImplementedError

    # Common machinery.

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, mailroot: str, users: Sequence[tuple[str, str]], cpu: int | None) -> None:
        """
        Start the server on C{cpu} and wait (bounded) until it greets.
        """
        self.prepareMail(mailroot)
        argv = [*self.wrapper, *self.command(mailroot, users)]
        with open(self.logPath, "ab") as log, procfs.pinned(cpu):
            # The child inherits the affinity set around Popen, so every
            # thread and process it ever starts is on the server CPU.
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
                env=self.environment(),
            )
        deadline = time.monotonic() + self.startupTimeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            port = self._findPort()
            if port and self._greets(port):
                self.port = port
                self._remember()
                return
            time.sleep(0.05)
        status = self.process.poll()
        self.stop()
        raise RuntimeError(f"{self.name} did not start (exit status {status}):\n{self.logTail()}")

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def _greets(self, port: int) -> bool:
        try:
            with socket.create_connection((HOST, port), timeout=5) as s:
                s.settimeout(5)
                greeting = s.recv(512)
                s.sendall(b"QUIT\r\n")
                with contextlib.suppress(OSError):
                    s.recv(512)
        except OSError:
            return False
        return greeting.startswith(b"+OK")

    def pids(self) -> list[int]:
        """
        The server's processes now (the tree for a forking server).
        """
        if self.process is None or self.process.poll() is not None:
            return []
        if self.multiProcess:
            pids = procfs.tree(self.pid)
            self._remember(pids)
            return pids
        return [self.pid]

    def _remember(self, pids: Sequence[int] | None = None) -> None:
        # Every process seen, with its start time, so that stop() can end
        # exactly the ones that were ours.
        for pid in pids if pids is not None else procfs.tree(self.pid):
            self._family.setdefault(pid, procfs.startTime(pid))

    def cpuSeconds(self) -> float:
        """
        CPU seconds the server has used so far (live processes and the
        children they reaped).
        """
        if not self.multiProcess:
            try:
                return procfs.processCPU(self.pid)
            except (OSError, ValueError):
                return 0.0
        return procfs.treeCPU(self.pids())

    def contextSwitches(self) -> int | None:
        """
        The server's context switches so far (L{procfs.contextSwitches}), or
        L{None} for a server that forks processes per connection, whose
        ended processes take theirs with them.
        """
        if self.multiProcess:
            return None
        try:
            return procfs.contextSwitches(self.pid)
        except OSError:
            return None

    def memory(self) -> dict[str, Any]:
        """
        RSS and PSS of the server's processes, summed (KiB).
        """
        return procfs.memory(self.pids())

    def stop(self) -> None:
        """
        SIGTERM, then SIGKILL after L{STOP_TIMEOUT}; then any process of the
        server's tree still alive (same pid and start time) is killed.
        """
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            self._remember()
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT)
        deadline = time.monotonic() + 5
        for pid, started in self._family.items():
            while procfs.startTime(pid) == started and time.monotonic() < deadline:
                time.sleep(0.05)
            if started is not None and procfs.startTime(pid) == started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self._family.clear()

    def logTail(self, lines: int = 20) -> str:
        try:
            with open(self.logPath, "rb") as f:
                data = f.read()
        except OSError:
            return ""
        return b"\n".join(data.splitlines()[-lines:]).decode("utf-8", "replace")

    def logProblems(self) -> list[str]:
        """
        Log lines that look like errors.
        """
        try:
            with open(self.logPath, "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return []
        markers = ("Traceback", "Unhandled", "CRITICAL", "Error", "Fatal", "Panic")
        return [line for line in text.splitlines() if any(m in line for m in markers)]


def _freePort() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


class Popserv(ServerAdapter):
    """
    popserv, started as an operator would: C{twistd -n --pidfile= popserv
    --listen tcp:0:interface=127.0.0.1 --auth memory:... --mailstore
    maildir:ROOT/{user}}, plus C{--max-connections} raised above the
    C{idle} scenario's sessions (the default is 1,000 in all).  The
    per-address limit does not apply: the clients are on this machine.
    """

    name = "popserv"
    utf8 = True

    @classmethod
    def twistd(cls, options: Any) -> str:
        return options.twistd or os.path.join(os.path.dirname(sys.executable), "twistd")

    @classmethod
    def check(cls, options: Any) -> str:
        twistd = cls.twistd(options)
        if not os.access(twistd, os.X_OK):
            raise Unavailable(f"no twistd at {twistd} (make install, or --twistd)")
        try:
            import popserv

            version = getattr(popserv, "__version__", "?")
        except ImportError:
            version = "?"
        return f"popserv {version}"

    def command(self, mailroot: str, users: Sequence[tuple[str, str]]) -> list[str]:
        limit = str(max(2000, 2 * self.options.idle_sessions))
        command = [
            self.twistd(self.options),
            "-n",
            "--pidfile=",
            "popserv",
            "--listen",
            f"tcp:0:interface={HOST}",
            "--auth",
            "memory:" + ":".join(f"{u}:{p}" for u, p in users),
            "--mailstore",
            f"maildir:{mailroot}/{{user}}",
            "--max-connections",
            limit,
        ]
        if self.options.server_profile:
            # twistd's own profiler: "python -m cProfile" never writes its
            # file, as twistd ends by killing itself with the signal it got.
            os.makedirs(self.options.server_profile, exist_ok=True)
            path = os.path.join(
                os.path.abspath(self.options.server_profile),
                # The scenario, and the round of several ("churn-2").
                os.path.basename(os.path.dirname(self.workdir))
                + os.path.basename(self.workdir).removeprefix(self.name)
                + ".prof",
            )
            command[1:1] = ["--profile", path, "--profiler", "cprofile", "--savestats"]
        return command

    def _findPort(self) -> int | None:
        with open(self.logPath, "rb") as f:
            match = re.search(rb"POP3ServerFactory starting on (\d+)", f.read())
        return int(match.group(1)) if match else None

    def logProblems(self) -> list[str]:
        # popserv logs failed logins and such as "error" in prose; only
        # tracebacks and faults count here.
        return [
            line
            for line in super().logProblems()
            if "Traceback" in line or "Unhandled" in line or "CRITICAL" in line
        ]


class PopservProcesses(Popserv):
    """
    popserv as several processes sharing one listening socket, as
    operating.rst's "Several processes" runs it with systemd:
    C{shared_socket.py N} next to this package binds the socket and starts
    C{--popserv-processes} twistd processes (the L{Popserv} command) that
    inherit it and listen with C{systemd:domain=INET:index=0}.  Not pinned
    to the server CPU: the processes may use every CPU, the load
    generator's too, as they would on a machine they are run on to use its
    cores; with C{--popserv-pin-each}, process I is pinned to CPU I (as
    C{CPUAffinity=%i} pins the instances of C{popserv@.service}).  Its CPU
    time and memory are those of the whole tree.
    """

    name = "popserv-n"
    multiProcess = True

    @classmethod
    def check(cls, options: Any) -> str:
        processes = f"{options.popserv_processes} processes on one socket"
        pinned = ", each pinned to its CPU" if options.popserv_pin_each else ""
        return f"{super().check(options)}, {processes}{pinned}"

    def command(self, mailroot: str, users: Sequence[tuple[str, str]]) -> list[str]:
        command = super().command(mailroot, users)
        command[command.index("--listen") + 1] = "systemd:domain=INET:index=0"
        launcher = os.path.join(BENCHMARKS, "shared_socket.py")
        pin = ["--pin"] if self.options.popserv_pin_each else []
        return [sys.executable, launcher, str(self.options.popserv_processes), *pin, "--", *command]

    def start(self, mailroot: str, users: Sequence[tuple[str, str]], cpu: int | None) -> None:
        super().start(mailroot, users, None)

    def _findPort(self) -> int | None:
        # Once every process listens: a connection the kernel gives to one
        # still starting would wait for it, and a measurement that began
        # then would count fewer processes than it says.
        with open(self.logPath, "rb") as f:
            log = f.read()
        match = re.search(rb"shared_socket listening on (\d+)", log)
        if match is None or log.count(b"popserv listening on") < self.options.popserv_processes:
            return None
        return int(match.group(1))


class Dovecot(ServerAdapter):
    """
    A private Dovecot (Debian's C{dovecot-pop3d}): C{dovecot -F -c CONF}
    with a configuration written here, as root.

    Settings that differ from Dovecot's defaults: the listener on 127.0.0.1
    and a free port, no TLS, C{disable_plaintext_auth = no} (USER/PASS on
    the plain port), users from a C{passwd-file} (PLAIN scheme) and a
    static userdb with the mail uid (C{--dovecot-user}, default C{mail}),
    and process and client limits raised for 1,000 sessions.  The login
    processes stay in Dovecot's default "high-security" mode (one
    C{pop3-login} process per connection, one C{pop3} process per session).
    """

    name = "dovecot"
    multiProcess = True

    @classmethod
    def binary(cls) -> str | None:
        return shutil.which("dovecot") or (
            "/usr/sbin/dovecot" if os.path.exists("/usr/sbin/dovecot") else None
        )

    @classmethod
    def check(cls, options: Any) -> str:
        binary = cls.binary()
        if binary is None:
            raise Unavailable("not installed (apt-get install dovecot-pop3d)")
        if os.geteuid() != 0:
            raise Unavailable("needs root (to run mail processes as the mail user)")
        try:
            pwd.getpwnam(options.dovecot_user)
        except KeyError:
            raise Unavailable(f"no user {options.dovecot_user!r} (--dovecot-user)") from None
        if not os.path.exists("/usr/lib/dovecot/pop3"):
            raise Unavailable("no /usr/lib/dovecot/pop3 (apt-get install dovecot-pop3d)")
        version = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=20, check=False
        ).stdout.strip()
        return f"Dovecot {version}"

    def prepareMail(self, mailroot: str) -> None:
        account = pwd.getpwnam(self.options.dovecot_user)
        uid, gid = account.pw_uid, account.pw_gid
        for dirpath, dirnames, filenames in os.walk(mailroot):
            os.chown(dirpath, uid, gid)
            for name in filenames:
                os.chown(os.path.join(dirpath, name), uid, gid)
            dirnames.sort()
        # The mail processes must be able to reach the mail root: open the
        # run's own directories to them, and check the ones above.
        own = os.path.abspath(self.options.rundir)
        path = os.path.abspath(mailroot)
        while path != "/":
            mode = os.stat(path).st_mode
            if not mode & 0o001:
                if path != own and not path.startswith(own + os.sep):
                    raise RuntimeError(
                        f"{path} is not searchable by others, so Dovecot's mail processes"
                        " cannot reach the mail: use a --workdir under /tmp"
                    )
                os.chmod(path, (mode & 0o7777) | 0o011)  # noqa: S103 - search only
            path = os.path.dirname(path)

    def command(self, mailroot: str, users: Sequence[tuple[str, str]]) -> list[str]:
        account = pwd.getpwnam(self.options.dovecot_user)
        self.port = _freePort()
        run = os.path.join(self.workdir, "run")
        state = os.path.join(self.workdir, "state")
        os.makedirs(state, exist_ok=True)
        passwd = os.path.join(self.workdir, "passwd")
        with open(passwd, "w") as f:
            for user, password in users:
                f.write(f"{user}:{{PLAIN}}{password}::::::\n")
        try:
            os.chown(passwd, 0, grp.getgrnam("dovecot").gr_gid)
            os.chmod(passwd, 0o640)
        except KeyError:
            os.chmod(passwd, 0o644)
        sessions = max(2048, 2 * self.options.idle_sessions)
        config = f"""\
# popserv benchmarks: a private Dovecot instance for measurements.
instance_name = popserv-bench-{self.port}
base_dir = {run}
state_dir = {state}
log_path = {os.path.join(self.workdir, "dovecot.log")}
protocols = pop3
listen = {HOST}
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
first_valid_uid = {account.pw_uid}
last_valid_uid = {account.pw_uid}
mail_location = maildir:{mailroot}/%u
default_client_limit = {2 * sessions}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {passwd}
}}
userdb {{
  driver = static
  args = uid={account.pw_uid} gid={account.pw_gid} home={mailroot}/%u
}}
service pop3-login {{
  inet_listener pop3 {{
    address = {HOST}
    port = {self.port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
  process_limit = 512
}}
service pop3 {{
  process_limit = {sessions}
}}
"""
        self.config = os.path.join(self.workdir, "dovecot.conf")
        with open(self.config, "w") as f:
            f.write(config)
        binary = self.binary()
        assert binary is not None
        return [binary, "-F", "-c", self.config]

    def environment(self) -> dict[str, str]:
        return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}

    def _findPort(self) -> int | None:
        return self.port

    def logTail(self, lines: int = 20) -> str:
        tail = super().logTail(lines)
        try:
            with open(os.path.join(self.workdir, "dovecot.log"), "rb") as f:
                data = f.read()
        except OSError:
            return tail
        return tail + "\n" + b"\n".join(data.splitlines()[-lines:]).decode("utf-8", "replace")

    def logProblems(self) -> list[str]:
        try:
            with open(os.path.join(self.workdir, "dovecot.log"), "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except OSError:
            text = ""
        own = [line for line in text.splitlines() if "Error:" in line or "Fatal:" in line]
        return super().logProblems() + own


class TwistedPOP3(ServerAdapter):
    """
    twisted.mail.pop3 as a library user would assemble it (C{twisted_ref.py}):
    one process, TCP_NODELAY unless C{--twisted-nagle}.
    """

    name = "twisted"
    script: ClassVar[str] = "twisted_ref"

    @classmethod
    def check(cls, options: Any) -> str:
        try:
            import twisted.mail.pop3

            import twisted
        except ImportError as e:
            raise Unavailable(f"cannot import twisted.mail.pop3: {e}") from None
        return f"twisted.mail.pop3 {twisted.__version__}"

    def command(self, mailroot: str, users: Sequence[tuple[str, str]]) -> list[str]:
        path = os.path.join(self.workdir, "users")
        with open(path, "w") as f:
            for user, password in users:
                f.write(f"{user} {password}\n")
        return [
            sys.executable,
            os.path.join(BENCHMARKS, f"{self.script}.py"),
            "--port",
            "0",
            "--users",
            path,
            "--mailroot",
            mailroot,
            *self.arguments(),
        ]

    def arguments(self) -> list[str]:
        """
        The script's own options.
        """
        return ["--nagle"] if self.options.twisted_nagle else []

    def _findPort(self) -> int | None:
        with open(self.logPath, "rb") as f:
            match = re.search(rb"%s listening on (\d+)" % self.script.encode(), f.read())
        return int(match.group(1)) if match else None


class TwistedFloor(TwistedPOP3):
    """
    C{twisted_floor.py}: canned answers from mail read into memory at
    start-up, with nothing else a server does; the least a POP3 server on
    Twisted spends on a workload (its docstring says why).  Only in the
    scenarios where mail held in memory serves the same bytes.
    """

    name = "floor"
    script = "twisted_floor"
    utf8 = True
    scenarios = frozenset({"churn", "concurrency", "bulk", "parallel", "sizes"})

    @classmethod
    def check(cls, options: Any) -> str:
        import twisted

        return f"twisted_floor on Twisted {twisted.__version__}"

    def arguments(self) -> list[str]:
        return []  # it always sets TCP_NODELAY


SERVERS: dict[str, type[ServerAdapter]] = {
    "popserv": Popserv,
    "popserv-n": PopservProcesses,
    "dovecot": Dovecot,
    "twisted": TwistedPOP3,
    "floor": TwistedFloor,
}
