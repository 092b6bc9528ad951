"""How the command line ends: one line saying what went wrong, a non-zero exit code,
and a bounded stop after Ctrl-C/SIGTERM.

Every failure a user can cause (settings, an unreachable database, a port in
use, a data folder locked by another run) is printed as one line that names what
to fix; a failure of one task of a long-running command (`run`, `demo`,
`simulate`) stops the others and is reported the same way. An error polegw did
not expect is also printed as one line; its traceback is logged at DEBUG
(POLEGW_LOG_LEVEL=DEBUG shows it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator

import psycopg
import sqlalchemy.exc

from gateway.adapters.db import redacted
from gateway.errors import (
    ConfigError,
    DatabaseUnreachable,
    EmbeddedServiceError,
    SourceFileError,
    StorageUnavailable,
)

log = logging.getLogger("gateway.cli")

# After the first Ctrl-C/SIGTERM a command drains and stops on its own; if it has
# not within STOP_WITHIN_S its tasks are cancelled, and if even that has not ended
# it CANCEL_GRACE_S later, the process exits at once (stopping any embedded
# PostgreSQL first). A second signal cancels at once. Docker's default grace is 10 s,
# the compose file gives the gateway 30 s.
STOP_WITHIN_S = 25.0
CANCEL_GRACE_S = 4.0

EXIT_USER = 2  # bad settings, options or input; the environment refused (port, lock…)
EXIT_UNEXPECTED = 1
EXIT_INTERRUPTED = 130


def first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0].strip()


@contextlib.contextmanager
def database_errors(database_url: str | None) -> Iterator[None]:
    """Turn "cannot connect" and friends into a DatabaseUnreachable naming the URL
    (without its password) and the setting to fix."""
    where = f" at {redacted(database_url)}" if database_url else ""
    try:
        yield
    except (sqlalchemy.exc.DBAPIError, psycopg.Error) as exc:
        cause: BaseException = exc
        if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.orig is not None:
            cause = exc.orig
        if isinstance(cause, psycopg.OperationalError | psycopg.errors.InsufficientPrivilege):
            raise DatabaseUnreachable(
                f"cannot use the database{where} (POLEGW_DATABASE_URL): {first_line(cause)}"
            ) from None
        raise DatabaseUnreachable(f"database{where}: {first_line(cause)}") from None


async def check_database(database_url: str) -> None:
    """Connect once, so that a database that cannot be reached is one quick error
    (a pool would retry, logging each attempt, before it gives up)."""
    from gateway.adapters.db import libpq_url

    with database_errors(database_url):
        conn = await psycopg.AsyncConnection.connect(libpq_url(database_url), connect_timeout=5)
        await conn.close()


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions an exception group holds, however deeply nested."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]


def user_message(exc: BaseException) -> str | None:
    """The one line for a failure the user can fix; None for anything else."""
    if isinstance(exc, SourceFileError):
        return str(exc)  # one line per problem, each naming file:line
    if isinstance(exc, ConfigError | EmbeddedServiceError | StorageUnavailable):
        return first_line(exc)
    if isinstance(exc, sqlalchemy.exc.OperationalError | psycopg.OperationalError):
        try:
            with database_errors(None):
                raise exc
        except DatabaseUnreachable as converted:
            return first_line(converted)
    if isinstance(exc, OSError):
        return first_line(exc)
    return None


def explain(exc: BaseException) -> tuple[str, int]:
    """What to print and the exit code for a command that failed with `exc`."""
    found = [e for e in leaves(exc) if not isinstance(e, asyncio.CancelledError)]
    if not found:
        return "stopped", EXIT_INTERRUPTED
    for leaf in found:
        message = user_message(leaf)
        if message is not None:
            return message, EXIT_USER
    leaf = found[0]
    log.debug("unexpected error", exc_info=leaf)
    return (
        f"unexpected error: {type(leaf).__name__}: {first_line(leaf)}"
        " (POLEGW_LOG_LEVEL=DEBUG shows where)",
        EXIT_UNEXPECTED,
    )


def say_and_exit(exc: BaseException) -> None:
    """Print the one line for `exc` to stderr and exit with its code."""
    message, code = explain(exc)
    print(f"polegw: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def run_until_signal(
    main: Callable[[asyncio.Event], Awaitable[None]],
    *,
    on_hard_exit: Callable[[], None] | None = None,
    stop_within_s: float = STOP_WITHIN_S,
) -> None:
    """Run `main(stop)`. The first Ctrl-C/SIGTERM sets `stop`; if `main` has not ended
    `stop_within_s` later, or at a second signal, it is cancelled; if it has not ended
    CANCEL_GRACE_S after that, `on_hard_exit` runs and the process exits at once.
    Any failure is printed as one line (see `explain`)."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def hard_exit() -> None:
            print("polegw: did not stop in time; exiting now", file=sys.stderr, flush=True)
            if on_hard_exit is not None:
                on_hard_exit()
            os._exit(EXIT_INTERRUPTED)

        def cancel() -> None:
            if not task.done():
                log.warning("not stopped yet: cancelling what is still running")
                task.cancel()
                loop.call_later(CANCEL_GRACE_S, hard_exit)

        def on_signal() -> None:
            if stop.is_set():
                cancel()
                return
            stop.set()
            loop.call_later(stop_within_s, cancel)

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        await main(stop)

    try:
        asyncio.run(runner())
    except (KeyboardInterrupt, asyncio.CancelledError):
        raise SystemExit(EXIT_INTERRUPTED) from None
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 (the top-level supervisor: every failure ends here)
        say_and_exit(exc)
