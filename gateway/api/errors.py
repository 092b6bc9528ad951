"""Error bodies: always JSON, always naming what was wrong."""

from __future__ import annotations

from fastapi import HTTPException


def not_found(kind: str, ident: str) -> HTTPException:
    return HTTPException(404, detail=f"{kind} {ident!r} not found")


def bad_param(name: str, message: str, *, where: str = "query") -> HTTPException:
    """A 422 in FastAPI's own validation shape, so clients parse one format."""
    return HTTPException(
        422, detail=[{"loc": [where, name], "msg": message, "type": "value_error"}]
    )
