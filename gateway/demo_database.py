"""Which databases `polegw demo` may write into (DESIGN.md section 3).

The demo creates its site, users, leases, a tariff, meter readings and bills. It
does so only in a demo database: one it created itself (the embedded PostgreSQL
under --data-dir), or one that carries the demo's mark, the table
`polegw_demo`, which the demo adds when it takes a database. A database named by
POLEGW_DATABASE_URL that has no user tables at all is taken and marked; one that
holds tables and no mark (a production database, another application's) is
refused with one line, and nothing in it is changed, unless the user passes
--use-database-anyway (which does not mark it).
"""

from __future__ import annotations

import logging
from enum import StrEnum

import psycopg

from gateway.adapters.db import libpq_url, redacted
from gateway.cli_errors import database_errors
from gateway.errors import ConfigError

log = logging.getLogger(__name__)

MARK_TABLE = "polegw_demo"

# Tables, views and sequences of the user's, outside PostgreSQL's and TimescaleDB's
# own schemas.
_USER_RELATIONS = """
SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
   AND n.nspname <> 'information_schema'
   AND n.nspname !~ '^(pg_|_timescaledb|timescaledb_|toolkit_)'
"""


class Claim(StrEnum):
    MARKED = "a polegw demo database"
    TAKEN = "was empty: now marked as a polegw demo database"
    ANYWAY = "not a demo database, used because of --use-database-anyway"


async def claim_database(database_url: str, *, ours: bool, anyway: bool = False) -> Claim:
    """Make sure the demo may change the database; mark it when it may and is not
    marked yet. `ours`: the demo created it (the embedded one). Raises ConfigError,
    having changed nothing, when the database is not the demo's."""
    with database_errors(database_url):
        async with await psycopg.AsyncConnection.connect(
            libpq_url(database_url), autocommit=True, connect_timeout=10
        ) as conn:
            cur = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", (MARK_TABLE,))
            row = await cur.fetchone()
            if row is not None and row[0]:
                return Claim.MARKED
            cur = await conn.execute(_USER_RELATIONS)
            row = await cur.fetchone()
            relations = int(row[0]) if row is not None else 0
            if relations and not ours:
                if anyway:
                    log.warning(
                        "the demo writes into %s, which is not a demo database"
                        " (--use-database-anyway)",
                        redacted(database_url),
                    )
                    return Claim.ANYWAY
                raise ConfigError(
                    f"{redacted(database_url)} (POLEGW_DATABASE_URL) is not a polegw demo"
                    f" database ({relations} tables and views, no {MARK_TABLE} mark), so the"
                    " demo left it untouched: unset POLEGW_DATABASE_URL to use the embedded"
                    " database, point it at an empty database, or pass --use-database-anyway"
                )
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {MARK_TABLE} ("
                " marked_at timestamptz NOT NULL DEFAULT now(),"
                " note text NOT NULL)"
            )
            await conn.execute(
                f"INSERT INTO {MARK_TABLE} (note) VALUES (%s)",
                ("made by polegw demo: demo data, safe to throw away",),
            )
            return Claim.MARKED if ours else Claim.TAKEN
