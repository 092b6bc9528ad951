"""Users and API keys in PostgreSQL (tables users, api_keys)."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from gateway.adapters.credentials import NewApiKey, digest_matches, secret_digest
from gateway.core.auth import Principal, Role

Row = dict[str, Any]

USER_COLUMNS = "id, name, role, tenant_id, disabled, created_at"
KEY_COLUMNS = "id, user_id, name, created_at, revoked_at"


class UserExists(Exception):
    pass


class UnknownTenant(Exception):
    pass


def principal_of(row: Row, via: str = "token") -> Principal:
    return Principal(int(row["id"]), str(row["name"]), Role(row["role"]), row["tenant_id"], via)


class UserStore:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def create(
        self,
        name: str,
        role: Role,
        password_hash: str,
        tenant_id: str | None = None,
        conn: psycopg.AsyncConnection[Any] | None = None,
    ) -> Row:
        sql = (
            "INSERT INTO users (name, role, tenant_id, password_hash)"
            f" VALUES (%s, %s, %s, %s) RETURNING {USER_COLUMNS}"
        )
        args = (name, role.value, tenant_id, password_hash)
        try:
            if conn is not None:
                async with conn.cursor(row_factory=dict_row) as cur:
                    await cur.execute(sql, args)
                    row = await cur.fetchone()
            else:
                async with self._pool.connection() as c, c.cursor(row_factory=dict_row) as cur:
                    await cur.execute(sql, args)
                    row = await cur.fetchone()
        except psycopg.errors.UniqueViolation:
            raise UserExists(name) from None
        except psycopg.errors.ForeignKeyViolation:
            raise UnknownTenant(tenant_id) from None
        assert row is not None
        return row

    async def credentials(self, name: str) -> tuple[Row, str] | None:
        """An enabled user and their password hash, for a login."""
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {USER_COLUMNS}, password_hash FROM users WHERE name = %s AND NOT disabled",
                (name,),
            )
            row = await cur.fetchone()
        if row is None:
            return None
        return row, str(row.pop("password_hash"))

    async def get(self, user_id: int) -> Row | None:
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(f"SELECT {USER_COLUMNS} FROM users WHERE id = %s", (user_id,))
            return await cur.fetchone()

    async def page(self, *, after: int | None, limit: int) -> list[Row]:
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {USER_COLUMNS} FROM users WHERE id > %s ORDER BY id LIMIT %s",
                (after or 0, limit),
            )
            return await cur.fetchall()

    async def set_disabled(
        self, conn: psycopg.AsyncConnection[Any], user_id: int, disabled: bool
    ) -> Row | None:
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"UPDATE users SET disabled = %s WHERE id = %s RETURNING {USER_COLUMNS}",
                (disabled, user_id),
            )
            return await cur.fetchone()

    # API keys

    async def add_key(
        self, conn: psycopg.AsyncConnection[Any], user_id: int, name: str, key: NewApiKey
    ) -> Row:
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "INSERT INTO api_keys (id, user_id, name, secret_sha256)"
                f" VALUES (%s, %s, %s, %s) RETURNING {KEY_COLUMNS}",
                (key.key_id, user_id, name, secret_digest(key.secret)),
            )
            row = await cur.fetchone()
        assert row is not None
        return row

    async def keys(self, user_id: int | None) -> list[Row]:
        """API keys of one user, or of everyone (None), newest first."""
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {KEY_COLUMNS} FROM api_keys"
                " WHERE %(user)s::bigint IS NULL OR user_id = %(user)s"
                " ORDER BY created_at DESC, id",
                {"user": user_id},
            )
            return await cur.fetchall()

    async def key(self, key_id: str) -> Row | None:
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE id = %s", (key_id,))
            return await cur.fetchone()

    async def revoke_key(self, conn: psycopg.AsyncConnection[Any], key_id: str) -> Row | None:
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = %s"
                f" RETURNING {KEY_COLUMNS}",
                (key_id,),
            )
            return await cur.fetchone()

    async def by_api_key(self, key_id: str, secret: str) -> Principal | None:
        """The enabled user an unrevoked key belongs to, if the secret matches."""
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT k.secret_sha256, u.id, u.name, u.role, u.tenant_id FROM api_keys k"
                " JOIN users u ON u.id = k.user_id"
                " WHERE k.id = %s AND k.revoked_at IS NULL AND NOT u.disabled",
                (key_id,),
            )
            row = await cur.fetchone()
        if row is None or not digest_matches(bytes(row["secret_sha256"]), secret):
            return None
        return principal_of(row, via=f"api_key:{key_id}")
