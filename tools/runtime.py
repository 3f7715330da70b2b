"""`Runtime` for local processes: a supervisor whose state survives its own death.

Services are started in their own session (`start_new_session=True`), so they outlive the worker that
started them. Everything needed to find them again — pid, the kernel's start time of that pid (to tell a
reused pid from ours), restart counter, desired replica count, last exit code — lives in
`state_dir/supervisor.db`, so a new `ProcessSupervisor` in a new process adopts what is running.

Exit codes are exact for processes this interpreter started (it reaps them); for adopted processes that die
on their own the exit code is unknown (their parent, init, reaps them), except after our own `kill`.

Replicas: replica 0 runs the spec as is; replica i >= 1 runs the same argv with `REPLICA=i` in its
environment and nothing routes traffic to it — the service decides what a replica means (the local app's
services listen on PORT+i). `status()` describes replica 0 and reports the desired replica count.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tools.base import ConfigError, NotFound, ServiceStatus, ToolError
from tools.redact import SECRET_ENV_NAMES

STOP_GRACE_S = 3.0
KILL_WAIT_S = 2.0
MAX_LOG_BYTES = 5 * 1024 * 1024
OOM_EXIT_CODE = 137

SERVICE_ENV_ALLOW: tuple[str, ...] = (
    "PATH",
    "HOME",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
)
"""The only variables of sregraph's own environment a managed service inherits; everything else it needs is
in its spec. Tokens and keys stay with sregraph (docs/security.md)."""


def service_environment(
    spec_env: Mapping[str, str], inherit: Mapping[str, str] | None = None
) -> dict[str, str]:
    """A managed service's whole environment: the allow-listed variables of `inherit` plus its own `spec_env`.

    ConfigError if `spec_env` names one of sregraph's secrets: a spec must not hand them on either.
    """
    leaked = sorted(set(spec_env) & set(SECRET_ENV_NAMES))
    if leaked:
        raise ConfigError(
            f"service env: {', '.join(leaked)} is sregraph's secret and never goes to a managed service"
        )
    inherit = os.environ if inherit is None else inherit
    env = {name: inherit[name] for name in SERVICE_ENV_ALLOW if name in inherit}
    env.update(spec_env)
    return env


# Popen objects of every child this interpreter started, keyed by pid. Module level on purpose: a second
# supervisor object in the same process must still be able to reap (and read the exit code of) children the
# first one started, and a Popen that is garbage-collected while its child runs warns (ResourceWarning).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
_CHILDREN_LOCK = threading.Lock()
_LINGERING: set[int] = set()  # forgotten by the supervisor but not reaped yet

_SCHEMA = """
CREATE TABLE IF NOT EXISTS services (
    service        TEXT PRIMARY KEY,
    restarts       INTEGER NOT NULL DEFAULT 0,
    replicas       INTEGER NOT NULL DEFAULT 1,
    last_exit_code INTEGER,
    started_at     REAL
);
CREATE TABLE IF NOT EXISTS procs (
    service    TEXT NOT NULL,
    replica    INTEGER NOT NULL,
    pid        INTEGER NOT NULL,
    pstart     INTEGER NOT NULL,
    started_at REAL NOT NULL,
    PRIMARY KEY (service, replica)
);
"""


@dataclass(frozen=True)
class ProcessSpec:
    """How to run one service: argv, its environment (added to a short allow-list of ours) and working directory."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | str | None = None


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of a pid, or None if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses; everything after the last ')' is space-separated.
    rest = raw[raw.rfind(")") + 2 :].split()
    return rest[0], int(rest[19])


def _rss_mb(pid: int) -> float | None:
    """Resident memory of a pid in MB (VmRSS), or None."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _reap(pid: int, timeout: float = 1.0) -> int | None:
    """Reap `pid` if it is a dead child of this interpreter; its exit code (negative = signal) or None.

    A multi-threaded process shows as a zombie ('Z') as soon as its main thread exits, but it can only be
    waited for once every thread is gone, so this waits up to `timeout` for that to happen.
    """
    with _CHILDREN_LOCK:
        popen = _CHILDREN.get(pid)
    deadline = time.monotonic() + timeout
    while True:
        if popen is not None:
            code = popen.poll()  # Popen caches the code, so asking twice is safe
        else:
            try:
                waited, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                return None  # not our child (init reaps it), or already reaped
            code = os.waitstatus_to_exitcode(status) if waited else None
        if code is not None or time.monotonic() >= deadline:
            return code
        time.sleep(0.01)


def _release(pid: int) -> None:
    """Forget a child's Popen once it has been reaped; one still exiting is kept until it is."""
    with _CHILDREN_LOCK:
        for known in list(_CHILDREN):
            popen = _CHILDREN[known]
            if (known == pid or known in _LINGERING) and popen.poll() is not None:
                del _CHILDREN[known]
                _LINGERING.discard(known)
            elif known == pid:
                _LINGERING.add(known)


class ProcessSupervisor:
    """`Runtime` over local processes, with durable state in `state_dir/supervisor.db`."""

    def __init__(self, state_dir: Path, specs: dict[str, ProcessSpec], max_replicas: int = 8) -> None:
        """Supervise `specs`; adopts processes a previous supervisor on the same `state_dir` started."""
        self.state_dir = Path(state_dir)
        self.specs = dict(specs)
        self.max_replicas = max_replicas
        self.log_dir = self.state_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            self.state_dir / "supervisor.db", timeout=5.0, isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA busy_timeout = 5000")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.executescript(_SCHEMA)
        for name in self.specs:
            self._db.execute("INSERT OR IGNORE INTO services (service) VALUES (?)", (name,))

    def close(self) -> None:
        """Close the state database; running services are left alone."""
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------ state helpers

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One immediate transaction on the state database."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _check(self, service: str) -> ProcessSpec:
        """The spec of `service`, or NotFound naming the known services."""
        spec = self.specs.get(service)
        if spec is None:
            raise NotFound(f"unknown service {service!r}; known services: {', '.join(sorted(self.specs))}")
        return spec

    def _procs(self, service: str) -> dict[int, tuple[int, int]]:
        """replica -> (pid, pstart) as recorded."""
        rows = self._db.execute(
            "SELECT replica, pid, pstart FROM procs WHERE service = ?", (service,)
        ).fetchall()
        return {r: (pid, pstart) for r, pid, pstart in rows}

    def _alive(self, pid: int, pstart: int) -> bool:
        """Whether the recorded process is still ours and running."""
        stat = _proc_stat(pid)
        if stat is None or stat[1] != pstart:
            return False  # gone, or the pid now belongs to someone else
        return stat[0] not in ("Z", "X")  # a zombie is dead; the caller reaps it

    def _forget(self, service: str, replica: int, exit_code: int | None) -> None:
        """Drop a dead replica's row, keeping replica 0's exit code when we learn it."""
        pid_row = self._db.execute(
            "SELECT pid FROM procs WHERE service = ? AND replica = ?", (service, replica)
        ).fetchone()
        if pid_row is not None:
            _release(pid_row[0])
        with self._tx() as db:
            db.execute("DELETE FROM procs WHERE service = ? AND replica = ?", (service, replica))
            if replica == 0 and exit_code is not None:
                db.execute("UPDATE services SET last_exit_code = ? WHERE service = ?", (exit_code, service))

    def _refresh(self, service: str) -> dict[int, tuple[int, int]]:
        """Replicas still alive (dead ones are reaped and forgotten)."""
        alive: dict[int, tuple[int, int]] = {}
        for replica, (pid, pstart) in self._procs(service).items():
            stat = _proc_stat(pid)
            ours = stat is not None and stat[1] == pstart
            if ours and stat is not None and stat[0] not in ("Z", "X"):
                alive[replica] = (pid, pstart)
            elif ours or stat is None:
                # A zombie of ours may take a moment to become waitable; a vanished pid is already reaped.
                self._forget(service, replica, _reap(pid, timeout=1.0 if ours else 0.0))
            else:
                self._forget(service, replica, None)  # the pid was reused by an unrelated process
        return alive

    # ------------------------------------------------------------------ process control

    def _spawn(self, spec: ProcessSpec, replica: int) -> None:
        """Start one replica and record it."""
        log_path = self.log_dir / (f"{spec.name}.log" if replica == 0 else f"{spec.name}-{replica}.log")
        if log_path.exists() and log_path.stat().st_size > MAX_LOG_BYTES:
            log_path.replace(log_path.with_suffix(log_path.suffix + ".1"))
        env = service_environment(spec.env)
        if replica:
            env["REPLICA"] = str(replica)
        else:
            env.pop("REPLICA", None)
        try:
            with open(log_path, "ab") as log:
                popen = subprocess.Popen(
                    spec.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=spec.cwd,
                    start_new_session=True,
                )
        except OSError as exc:
            raise ToolError(f"cannot start {spec.name}: {exc}") from exc
        with _CHILDREN_LOCK:
            _CHILDREN[popen.pid] = popen
        stat = _proc_stat(popen.pid)
        pstart = stat[1] if stat else 0
        now = time.time()
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO procs VALUES (?, ?, ?, ?, ?)",
                (spec.name, replica, popen.pid, pstart, now),
            )
            if replica == 0:
                db.execute("UPDATE services SET started_at = ? WHERE service = ?", (now, spec.name))

    def _signal(self, pid: int, pstart: int, sig: int) -> None:
        """Send `sig` to the process group of a recorded process, if it is still ours."""
        stat = _proc_stat(pid)
        if stat is None or stat[1] != pstart:
            return
        try:
            os.killpg(pid, sig)  # the service is its own session and group leader
        except ProcessLookupError:
            pass
        except PermissionError:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def _wait_dead(self, pid: int, pstart: int, timeout: float) -> bool:
        """Poll until the process is gone or `timeout` passes; True if it is gone."""
        deadline = time.monotonic() + timeout
        while True:
            if not self._alive(pid, pstart):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    def _terminate(self, service: str, replica: int, pid: int, pstart: int) -> None:
        """SIGTERM, wait up to STOP_GRACE_S, then SIGKILL; forget the replica."""
        self._signal(pid, pstart, signal.SIGTERM)
        if not self._wait_dead(pid, pstart, STOP_GRACE_S):
            self._signal(pid, pstart, signal.SIGKILL)
            if not self._wait_dead(pid, pstart, KILL_WAIT_S):
                raise ToolError(f"{service} (pid {pid}) did not die after SIGKILL")
        code = _reap(pid)
        self._forget(service, replica, code)

    # ------------------------------------------------------------------ Runtime protocol

    def services(self) -> list[str]:
        """Names of the services this runtime manages."""
        return sorted(self.specs)

    def status(self, service: str) -> ServiceStatus:
        """Current state of one service (replica 0); NotFound for an unknown one."""
        self._check(service)
        with self._lock:
            alive = self._refresh(service)
            restarts, replicas, exit_code, started_at = self._db.execute(
                "SELECT restarts, replicas, last_exit_code, started_at FROM services WHERE service = ?",
                (service,),
            ).fetchone()
        main = alive.get(0)
        running = main is not None
        return ServiceStatus(
            service=service,
            running=running,
            replicas=replicas,
            pid=main[0] if main else None,
            restarts=restarts,
            exit_code=None if running else exit_code,
            oom_killed=(not running) and exit_code == OOM_EXIT_CODE,
            started_at=started_at if running else None,
            memory_mb=_rss_mb(main[0]) if main else None,
        )

    def start(self, service: str) -> ServiceStatus:
        """Start every desired replica that is not running (a no-op for a running service)."""
        spec = self._check(service)
        with self._lock:
            alive = self._refresh(service)
            (replicas,) = self._db.execute(
                "SELECT replicas FROM services WHERE service = ?", (service,)
            ).fetchone()
            for replica in range(replicas):
                if replica not in alive:
                    self._spawn(spec, replica)
        return self.status(service)

    def stop(self, service: str) -> ServiceStatus:
        """Stop every replica: SIGTERM, up to 3 s grace, then SIGKILL."""
        self._check(service)
        with self._lock:
            for replica, (pid, pstart) in sorted(self._refresh(service).items(), reverse=True):
                self._terminate(service, replica, pid, pstart)
        return self.status(service)

    def restart(self, service: str) -> ServiceStatus:
        """Stop then start; the restart counter goes up by one."""
        self._check(service)
        with self._lock:
            self.stop(service)
            with self._tx() as db:
                db.execute("UPDATE services SET restarts = restarts + 1 WHERE service = ?", (service,))
            return self.start(service)

    def scale(self, service: str, replicas: int) -> ServiceStatus:
        """Run `replicas` copies: start missing ones (REPLICA=i) or stop the highest-numbered extras."""
        spec = self._check(service)
        if not 1 <= replicas <= self.max_replicas:
            raise ConfigError(f"replicas must be between 1 and {self.max_replicas}, got {replicas}")
        with self._lock:
            with self._tx() as db:
                db.execute("UPDATE services SET replicas = ? WHERE service = ?", (replicas, service))
            alive = self._refresh(service)
            for replica, (pid, pstart) in sorted(alive.items(), reverse=True):
                if replica >= replicas:
                    self._terminate(service, replica, pid, pstart)
            # Extra replicas only join a running service; a stopped one gets them on its next start.
            if 0 in alive:
                for replica in range(1, replicas):
                    if replica not in alive:
                        self._spawn(spec, replica)
        return self.status(service)

    def logs(self, service: str, tail: int = 100) -> list[str]:
        """Last `tail` lines replica 0 wrote to stdout/stderr."""
        self._check(service)
        path = self.log_dir / f"{service}.log"
        if tail <= 0 or not path.exists():
            return []
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            block, data = 8192, b""
            while size > 0 and data.count(b"\n") <= tail:
                step = min(block, size)
                size -= step
                fh.seek(size)
                data = fh.read(step) + data
                block = min(block * 2, 1 << 20)
        return data.decode("utf-8", "replace").splitlines()[-tail:]

    # ------------------------------------------------------------------ extras

    def kill(self, service: str, sig: int = signal.SIGKILL) -> ServiceStatus:
        """Send `sig` to every replica, as a crash would (not counted as a restart, nothing restarts it)."""
        self._check(service)
        with self._lock:
            alive = self._refresh(service)
            for pid, pstart in alive.values():
                self._signal(pid, pstart, sig)
            if sig in (signal.SIGKILL, signal.SIGTERM):
                for replica, (pid, pstart) in alive.items():
                    if self._wait_dead(pid, pstart, KILL_WAIT_S):
                        code = _reap(pid)
                        # An adopted process is reaped by init; we still know which signal we sent.
                        self._forget(service, replica, code if code is not None else -int(sig))
        return self.status(service)

    def shutdown_all(self) -> None:
        """Stop every service (used on teardown)."""
        errors: list[str] = []
        for name in self.services():
            try:
                self.stop(name)
            except ToolError as exc:
                errors.append(str(exc))
        if errors:
            raise ToolError("; ".join(errors))

    def pids(self) -> list[int]:
        """Pids of every recorded live process (for emergency cleanup)."""
        with self._lock:
            return [pid for name in self.specs for pid, _ in self._refresh(name).values()]
