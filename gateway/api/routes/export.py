"""Data management: CSV exports of telemetry, alarms and work orders for a time range.

Streamed: rows come from the database through `cursor.stream()` (one result
row at a time from the server, never the whole result in memory) and go out
in chunks of about 64 KiB, so an export's memory does not grow with its size.
If the database fails mid-export the response ends early (the status line is
already sent); a client checks that the last line ends with a newline.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import StreamingResponse
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from gateway.api.deps import ApiContext, Context
from gateway.api.errors import bad_param
from gateway.api.hardening import ExpensiveStaff

router = APIRouter(prefix="/export", tags=["export"])

CHUNK_BYTES = 64 * 1024
STREAM_ROWS = 1000  # rows per round trip from the server (psycopg chunked mode)
# Alarms and work orders are few next to readings: a year and a day per request.
RECORDS_MAX_RANGE = timedelta(days=366)
CSV_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/csv": {}}, "description": "CSV with a header line"},
}

Start = Annotated[datetime | None, Query(description="Inclusive, RFC 3339 with offset")]
End = Annotated[datetime | None, Query(description="Exclusive, RFC 3339 with offset; default now")]


def _cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, dict | list):
        return orjson.dumps(value, default=str).decode()
    return value


def _range(
    start: datetime | None, end: datetime | None, cap: timedelta
) -> tuple[datetime, datetime]:
    for name, value in (("start", start), ("end", end)):
        if value is not None and value.tzinfo is None:
            raise bad_param(name, "must carry a UTC offset (e.g. 2026-11-22T10:00:00Z)")
    end = end or datetime.now(UTC)
    start = start or end - timedelta(days=1)
    if start >= end:
        raise bad_param("start", "must be before end")
    if end - start > cap:
        raise bad_param("start", f"the range may span at most {cap}; export in parts")
    return start, end


async def _rows_as_csv(
    pool: AsyncConnectionPool,
    query: sql.Composed | sql.SQL,
    params: Sequence[object],
    header: Sequence[str],
) -> AsyncIterator[str]:
    """CSV text: the header line, then the query's rows, in chunks of about CHUNK_BYTES."""
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(header)
    async with pool.connection() as conn, conn.cursor() as cur:
        async for row in cur.stream(query, params, size=STREAM_ROWS):
            out.writerow([_cell(v) for v in row])
            if buf.tell() >= CHUNK_BYTES:
                yield buf.getvalue()
                buf.seek(0)
                buf.truncate()
    yield buf.getvalue()


def _csv(body: AsyncIterator[str], name: str, start: datetime, end: datetime) -> StreamingResponse:
    def stamp(t: datetime) -> str:
        return t.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")

    return StreamingResponse(
        body,
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="{name}_{stamp(start)}_{stamp(end)}.csv"'
        },
    )


@router.get(
    "/telemetry.csv",
    summary="Readings over a time range as CSV, streamed (staff)",
    description=(
        "Columns: ts, device_id, metric, value, quality; ordered by device, metric, time. "
        "The range defaults to the last 24 hours and may span at most "
        "POLEGW_EXPORT_MAX_RANGE_D days."
    ),
    response_class=StreamingResponse,
    responses=CSV_RESPONSE,
)
async def telemetry_csv(
    ctx: Context,
    _: ExpensiveStaff,
    start: Start = None,
    end: End = None,
    device: Annotated[str | None, Query(max_length=64, description="Only this device")] = None,
    metric: Annotated[str | None, Query(max_length=64, description="Only this metric")] = None,
) -> StreamingResponse:
    start, end = _range(start, end, timedelta(days=ctx.settings.export_max_range_d))
    query = sql.SQL(
        "SELECT ts, device_id, metric, value, quality FROM telemetry"
        " WHERE ts >= %s AND ts < %s"
        " AND (%s::text IS NULL OR device_id = %s) AND (%s::text IS NULL OR metric = %s)"
        " ORDER BY device_id, metric, ts"
    )
    params = (start, end, device, device, metric, metric)
    body = _rows_as_csv(
        ctx.pool, query, params, header=("ts", "device_id", "metric", "value", "quality")
    )
    return _csv(body, "telemetry", start, end)


async def _table_export(
    ctx: ApiContext,
    table: str,
    migration: str,
    time_columns: Sequence[str],
    start: datetime,
    end: datetime,
) -> StreamingResponse:
    """All columns of `table` for rows whose first existing `time_columns` falls in the range.

    The alarms and work-order tables belong to other parts of the gateway; the
    export follows their columns as they are (the header names them)."""
    async with ctx.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = %s"
            " ORDER BY ordinal_position",
            (table,),
        )
        columns = [str(r[0]) for r in await cur.fetchall()]
    if not columns:
        raise HTTPException(
            503, detail=f"no {table} table in this database yet (migration {migration})"
        )
    at = next((c for c in time_columns if c in columns), None)
    if at is None:
        raise HTTPException(503, detail=f"the {table} table has none of {list(time_columns)}")
    query = sql.SQL(
        "SELECT {cols} FROM {t} WHERE {at} >= %s AND {at} < %s ORDER BY {order}"
    ).format(
        cols=sql.SQL(", ").join(map(sql.Identifier, columns)),
        t=sql.Identifier(table),
        at=sql.Identifier(at),
        order=sql.SQL(", ").join(map(sql.Identifier, [at, *(["id"] if "id" in columns else [])])),
    )
    return _csv(_rows_as_csv(ctx.pool, query, (start, end), header=columns), table, start, end)


@router.get(
    "/alarms.csv",
    summary="Alarms first seen in a time range as CSV, streamed (staff)",
    description=(
        "Every column of the alarms table, for alarms whose first_seen falls in the range;"
        " the range defaults to the last 24 hours and may span at most 366 days."
    ),
    response_class=StreamingResponse,
    responses={**CSV_RESPONSE, 503: {"description": "No alarms table in this database yet"}},
)
async def alarms_csv(
    ctx: Context, _: ExpensiveStaff, start: Start = None, end: End = None
) -> StreamingResponse:
    start, end = _range(start, end, RECORDS_MAX_RANGE)
    return await _table_export(ctx, "alarms", "0005", ("first_seen", "created_at"), start, end)


@router.get(
    "/work-orders.csv",
    summary="Work orders created in a time range as CSV, streamed (staff)",
    description=(
        "Every column of the work_orders table, for orders created in the range;"
        " the range defaults to the last 24 hours and may span at most 366 days."
    ),
    response_class=StreamingResponse,
    responses={**CSV_RESPONSE, 503: {"description": "No work_orders table in this database yet"}},
)
async def work_orders_csv(
    ctx: Context, _: ExpensiveStaff, start: Start = None, end: End = None
) -> StreamingResponse:
    start, end = _range(start, end, RECORDS_MAX_RANGE)
    return await _table_export(ctx, "work_orders", "0006", ("created_at",), start, end)
