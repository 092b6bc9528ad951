"""Database connection details shared by the adapters."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from gateway.errors import ConfigError


def libpq_url(url: str) -> str:
    """A URL psycopg accepts: postgresql://… (SQLAlchemy's +driver suffix removed)."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme not in ("postgresql", "postgres"):
        raise ConfigError(f"database URL must start with postgresql://, got {parts.scheme}://")
    return urlunsplit(("postgresql", *parts[1:]))


def sqlalchemy_url(url: str) -> str:
    """The same database for SQLAlchemy with the psycopg 3 driver."""
    return "postgresql+psycopg" + libpq_url(url)[len("postgresql") :]


def redacted(url: str) -> str:
    """The URL without its password, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = (parts.username or "") + ":***"
    return urlunsplit((parts.scheme, f"{user}@{netloc[-1]}", *parts[2:]))
