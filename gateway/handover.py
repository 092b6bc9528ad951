"""`polegw handover export|import`: the change of operator (运行单位变更) against
the database. The package format, its checks and the cut-over arithmetic are in
`gateway.core.handover`; this module reads and writes PostgreSQL and the zip.

Every table of the `public` schema is carried (discovered from the catalogue, so
a table a later migration adds is carried too) except the ones in
`OMITTED_TABLES`, with credential columns left out. Rows go out as PostgreSQL's
own `to_jsonb` of each row (numbers, times and JSON exactly as stored) and come
back in through `jsonb_populate_recordset`, so a row is equal on both sides.
"""

from __future__ import annotations

import csv
import io
import json
import os
import zipfile
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from gateway.adapters.db import libpq_url
from gateway.core import handover as ho
from gateway.core import metering as mt
from gateway.core.auth import SYSTEM
from gateway.core.profiles import ProfileCatalog
from gateway.errors import HandoverRefused

# Tables not carried, and why (the manifest says so too).
OMITTED_TABLES: dict[str, str] = {
    "alembic_version": "the schema version is the manifest's schema_version",
    "telemetry": "raw readings stay with the outgoing operator; the cut-over reading"
    " of every port is in cutover_readings.jsonl",
    "dead_letters": "messages the outgoing gateway could not store",
    "device_state": "the latest values; the incoming gateway's own ingest rebuilds them",
    "pole_presence": "online/offline as the outgoing broker saw it; rebuilt by the poles",
    "api_keys": "credentials are not handed over: the incoming operator issues new keys",
    "handovers": "each installation's own record of the handovers it took part in",
    "alarm_progress": "the outgoing alarm engine's place in its own event stream",
    "meter_queue": "the outgoing metering worker's to-do list of readings; the incoming"
    " worker queues its own (the cut-over readings first)",
    "gateway_leases": "which of the outgoing gateway's replicas held which role and bus;"
    " the incoming gateways take their own",
}
# Readings this far either side of the cut-over give its interval its context
# (as billing reads a window: usage_store.MARGIN).
MARGIN = timedelta(days=1)
CHUNK = 2000


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: str
    nullable: bool
    has_default: bool
    always_identity: bool


@dataclass(slots=True)
class Catalog:
    tables: list[str]
    columns: dict[str, list[Column]]
    parents: dict[str, set[str]]
    keys: dict[str, list[str]] = field(default_factory=dict)


def read_catalog(conn: psycopg.Connection[Any]) -> Catalog:
    tables = [
        r[0]
        for r in conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') ORDER BY 1"
        ).fetchall()
    ]
    columns: dict[str, list[Column]] = defaultdict(list)
    for t, name, typ, nullable, default, generated, identity in conn.execute(
        "SELECT table_name, column_name, data_type, is_nullable = 'YES',"
        " column_default IS NOT NULL OR identity_generation IS NOT NULL,"
        " is_generated = 'ALWAYS', identity_generation = 'ALWAYS'"
        " FROM information_schema.columns WHERE table_schema = 'public'"
        " ORDER BY table_name, ordinal_position"
    ).fetchall():
        if not generated:
            columns[t].append(Column(name, typ, nullable, default, bool(identity)))
    parents: dict[str, set[str]] = defaultdict(set)
    for child, parent in conn.execute(
        "SELECT conrelid::regclass::text, confrelid::regclass::text FROM pg_constraint"
        " WHERE contype = 'f' AND connamespace = 'public'::regnamespace"
    ).fetchall():
        parents[child].add(parent)
    keys: dict[str, list[str]] = defaultdict(list)
    for t, col in conn.execute(
        "SELECT i.indrelid::regclass::text, a.attname FROM pg_index i"
        " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
        " WHERE i.indisprimary AND i.indrelid::regclass::text NOT LIKE '%.%'"
        " ORDER BY 1, array_position(i.indkey, a.attnum)"
    ).fetchall():
        keys[t].append(col)
    return Catalog(tables, dict(columns), dict(parents), dict(keys))


def _connect(database_url: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(libpq_url(database_url), connect_timeout=10)
    conn.execute("SET TIME ZONE 'UTC'")
    return conn


def _schema_version(conn: psycopg.Connection[Any]) -> str | None:
    try:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    except psycopg.errors.UndefinedTable:
        return None
    return None if row is None else str(row[0])


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def csv_of(lines: list[str], columns: list[str]) -> bytes:
    """The JSON lines as a CSV for people (JSON values as JSON text)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(columns)
    for line in lines:
        row = json.loads(line, parse_float=str, parse_int=str)
        writer.writerow([_cell(row.get(c)) for c in columns])
    return out.getvalue().encode()


# --------------------------------------------------------------------------- export


@dataclass(frozen=True, slots=True)
class Exported:
    path: Path
    manifest: ho.Manifest
    cutover_rows: int


def _modulus(catalog: ProfileCatalog, profile: str, metric: str) -> Decimal | None:
    p = catalog.get(profile)
    if p is None or p.modbus is None:
        return None
    point = p.modbus.points.get(metric)
    return None if point is None else mt.counter_modulus(point.type, point.scale)


def cutover_lines(
    conn: psycopg.Connection[Any], at: datetime, catalog: ProfileCatalog
) -> list[str]:
    """One JSON line per port: its counter at the cut-over and how it was obtained."""
    lines = []
    ports = conn.execute(
        "SELECT p.id, p.meter_device_id, p.port_no, p.rated_w, d.profile FROM ports p"
        " JOIN devices d ON d.id = p.meter_device_id ORDER BY p.id"
    ).fetchall()
    for port_id, device_id, port_no, rated_w, profile in ports:
        metric = f"port{port_no}_energy_kwh"
        # The series billing meters (usage_store._readings): the 15-minute rollup.
        readings: list[mt.Reading] = []
        for first_ts, first, last_ts, last in conn.execute(
            "SELECT first_ts, first, last_ts, last FROM telemetry_15m_between(%s, %s, %s, %s)"
            " ORDER BY bucket",
            (device_id, metric, at - MARGIN, at + MARGIN),
        ).fetchall():
            readings.append(mt.Reading(mt.utc(first_ts), mt.to_decimal(first)))
            if last_ts != first_ts:
                readings.append(mt.Reading(mt.utc(last_ts), mt.to_decimal(last)))
        swaps = [
            mt.Replacement(a, Decimal(o), Decimal(n))
            for a, o, n in conn.execute(
                "SELECT replaced_at, old_final_kwh, new_first_kwh FROM meter_replacements"
                " WHERE port_id = %s ORDER BY replaced_at",
                (port_id,),
            ).fetchall()
        ]
        c = ho.cutover_reading(
            readings,
            at,
            rated_w=mt.to_decimal(rated_w),
            modulus=_modulus(catalog, profile, metric),
            replacements=swaps,
        )
        record = {
            "port_id": port_id,
            "meter_device_id": device_id,
            "metric": metric,
            "ts": at.isoformat(),
            "value": None if c.value is None else str(c.value),
            "how": c.how,
            "flagged": c.flagged,
            "flags": sorted(c.flags),
            "before": ho.reading_json(c.before),
            "after": ho.reading_json(c.after),
        }
        lines.append(json.dumps(record, ensure_ascii=False))
    return lines


CUTOVER_COLUMNS = [
    ("port_id", "text"),
    ("meter_device_id", "text"),
    ("metric", "text"),
    ("ts", "timestamp with time zone"),
    ("value", "numeric (kWh; null: no reading within a day of the cut-over)"),
    ("how", "measured | interpolated | last_before | first_after | none"),
    ("flagged", "boolean: true unless read at the cut-over itself"),
    ("flags", "metering flags of the interval it was interpolated in"),
    ("before", "the reading before it {ts, value}"),
    ("after", "the reading after it {ts, value}"),
]


def export(
    database_url: str,
    *,
    cutover: datetime,
    out: Path,
    private_key_pem: bytes,
    key_file: str,
    catalog: ProfileCatalog,
    profiles_dir: Path | None = None,
    record: bool = True,
) -> Exported:
    """Write the package to `out` and (with `record`) note the cut-over in this
    installation's `handovers`, so its billing stops there."""
    key = ho.load_private_key(private_key_pem, key_file)
    files: dict[str, bytes] = {}
    entries: list[ho.FileEntry] = []

    def add(
        name: str, data: bytes, table: str | None, rows: int, cols: list[ho.ColumnInfo], text: str
    ) -> None:
        files[name] = data
        fmt = "csv" if name.endswith(".csv") else "yaml" if name.endswith(".yaml") else "jsonl"
        entries.append(
            ho.FileEntry(
                name=name,
                sha256=ho.sha256_hex(data),
                bytes=len(data),
                format=fmt,
                table=table,
                rows=rows,
                columns=cols,
                description=text,
            )
        )

    with _connect(database_url) as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        version = _schema_version(conn)
        if version is None:
            raise HandoverRefused("the database has no schema version: run polegw migrate")
        cat = read_catalog(conn)
        carried = [t for t in cat.tables if t not in OMITTED_TABLES]
        order = ho.load_order(carried, cat.parents)
        omitted_columns: dict[str, list[str]] = {}
        for table in order:
            cols = [c for c in cat.columns.get(table, []) if not ho.is_secret_column(c.name)]
            secret = [c.name for c in cat.columns.get(table, []) if ho.is_secret_column(c.name)]
            if secret:
                omitted_columns[table] = secret
            names = [c.name for c in cols]
            key_cols = cat.keys.get(table) or names
            query = sql.SQL(
                "SELECT to_jsonb(x)::text FROM (SELECT {} FROM {} ORDER BY {}) x"
            ).format(
                sql.SQL(", ").join(map(sql.Identifier, names)),
                sql.Identifier(table),
                sql.SQL(", ").join(map(sql.Identifier, key_cols)),
            )
            lines = [r[0] for r in conn.execute(query).fetchall()]
            info = [ho.ColumnInfo(name=c.name, type=c.type) for c in cols]
            body = "".join(line + "\n" for line in lines).encode()
            add(f"tables/{table}.jsonl", body, table, len(lines), info, f"table {table}")
            add(
                f"csv/{table}.csv",
                csv_of(lines, names),
                table,
                len(lines),
                info,
                f"table {table} for people (JSON values as JSON text)",
            )
        cut = cutover_lines(conn, cutover, catalog)
        cut_info = [ho.ColumnInfo(name=n, type=t) for n, t in CUTOVER_COLUMNS]
        add(
            ho.CUTOVER_FILE,
            "".join(line + "\n" for line in cut).encode(),
            None,
            len(cut),
            cut_info,
            "every port's meter counter at the cut-over; the importing side meters on from it",
        )
        add(
            "csv/cutover_readings.csv",
            csv_of(cut, [n for n, _ in CUTOVER_COLUMNS]),
            None,
            len(cut),
            cut_info,
            "the cut-over readings for people",
        )
        # The site's own device profiles (POLEGW_PROFILES_DIR): their alarm rules
        # and maps go with the site; the built-in ones come with polegw itself.
        for path in sorted(profiles_dir.glob("*.y*ml")) if profiles_dir is not None else []:
            add(
                f"profiles/{path.stem}.yaml",
                path.read_bytes(),
                None,
                0,
                [],
                "a device profile of this site (alarm rules, maps): copy into POLEGW_PROFILES_DIR",
            )
        manifest = ho.Manifest(
            format="polegw-handover",
            format_version=ho.FORMAT_VERSION,
            schema_version=version,
            created_at=datetime.now(UTC),
            cutover=cutover,
            signed_with=ho.key_id(key.public_key()),
            files=entries,
            tables=order,
            omitted_tables={t: why for t, why in OMITTED_TABLES.items() if t in cat.tables},
            omitted_columns=omitted_columns,
        )
        manifest_bytes = manifest.model_dump_json(indent=2).encode()
        _write_zip(out, manifest_bytes, key.sign(manifest_bytes), files)
        if record:
            _record(conn, "export", cutover, ho.sha256_hex(out.read_bytes()), manifest)
        conn.commit()
    return Exported(out, manifest, len(cut))


def package_bytes(manifest: bytes, signature: bytes, files: dict[str, bytes]) -> bytes:
    """The zip, byte for byte the same for the same members: stored (no
    compression, which another zlib may do differently), fixed times, fixed
    order. The importer rebuilds it from the checked members and compares, so a
    changed byte anywhere, even in the zip's own headers, is refused."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as z:
        for name, data in [(ho.MANIFEST, manifest), (ho.SIGNATURE, signature), *files.items()]:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            z.writestr(info, data)
    return out.getvalue()


def _write_zip(out: Path, manifest: bytes, signature: bytes, files: dict[str, bytes]) -> None:
    tmp = out.with_name(out.name + ".partial")
    tmp.write_bytes(package_bytes(manifest, signature, files))
    os.replace(tmp, out)


# --------------------------------------------------------------------------- import


@dataclass(frozen=True, slots=True)
class Imported:
    manifest: ho.Manifest
    rows: dict[str, int]
    cutover_readings: int
    dry_run: bool


def read_package(path: Path) -> tuple[bytes, dict[str, bytes]]:
    """The package's bytes and its members by name."""
    try:
        raw = path.read_bytes()
        with zipfile.ZipFile(io.BytesIO(raw)) as z:
            return raw, {name: z.read(name) for name in z.namelist()}
    except OSError as exc:
        raise HandoverRefused(f"{path}: {exc.strerror or exc}") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as exc:
        raise HandoverRefused(f"{path}: not a readable zip (changed or cut short: {exc})") from None


def check_bytes(path: Path, raw: bytes, members: dict[str, bytes], manifest: ho.Manifest) -> None:
    """The file is exactly the zip its checked members make (see package_bytes)."""
    files = {f.name: members[f.name] for f in manifest.files}
    if package_bytes(members[ho.MANIFEST], members[ho.SIGNATURE], files) != raw:
        raise HandoverRefused(f"{path}: changed outside the signed files (the zip's own bytes)")


def import_package(
    database_url: str, path: Path, *, public_key_pem: bytes, key_file: str, dry_run: bool
) -> Imported:
    """Check the package and load it into a fresh installation in one transaction."""
    from gateway.adapters import migrate

    public = ho.load_public_key(public_key_pem, key_file)
    raw, members = read_package(path)
    with _connect(database_url) as conn:
        version = _schema_version(conn)
        if version is None:
            raise HandoverRefused("the database has no schema version: run polegw migrate first")
        manifest = ho.verify_package(
            members, public, known_versions=_known_versions(migrate), this_version=version
        )
        check_bytes(path, raw, members, manifest)
        cat = read_catalog(conn)
        for table in manifest.tables:
            if table not in cat.tables:
                raise HandoverRefused(f"table {table}: not in this database")
            row = conn.execute(
                sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(sql.Identifier(table))
            ).fetchone()
            if row is not None and row[0]:
                raise HandoverRefused(
                    f"table {table} already has rows: import into a fresh installation"
                )
        files = {f.table: f for f in manifest.files if f.format == "jsonl" and f.table}
        rows = {t: files[t].rows for t in manifest.tables if t in files}
        cut = [json.loads(line) for line in members[ho.CUTOVER_FILE].decode().splitlines()]
        cut = [c for c in cut if c.get("value") is not None]
        if dry_run:
            conn.rollback()
            return Imported(manifest, rows, len(cut), True)
        try:
            with conn.transaction():
                for table in manifest.tables:
                    entry = files.get(table)
                    if entry is None:
                        continue
                    _load_table(conn, table, entry, members[entry.name], cat)
                for c in cut:
                    conn.execute(
                        "INSERT INTO telemetry (ts, device_id, metric, value)"
                        " VALUES (%s, %s, %s, %s) ON CONFLICT (device_id, metric, ts)"
                        " DO UPDATE SET value = excluded.value",
                        (c["ts"], c["meter_device_id"], c["metric"], Decimal(c["value"])),
                    )
                _record(conn, "import", manifest.cutover, ho.sha256_hex(raw), manifest)
        except psycopg.Error as exc:
            first = (str(exc) or repr(exc)).splitlines()[0]
            raise HandoverRefused(f"nothing loaded: {first}") from None
    return Imported(manifest, rows, len(cut), False)


def _record(
    conn: psycopg.Connection[Any],
    direction: str,
    cutover: datetime,
    sha256: str,
    manifest: ho.Manifest,
) -> None:
    """The cut-over in `handovers` (billing reads it) and in the audit log."""
    row = conn.execute(
        "INSERT INTO handovers (direction, cutover, package_sha256) VALUES (%s, %s, %s)"
        " RETURNING id",
        (direction, cutover, sha256),
    ).fetchone()
    assert row is not None
    after = {
        "cutover": cutover.isoformat(),
        "package_sha256": sha256,
        "schema_version": manifest.schema_version,
        "signed_with": manifest.signed_with,
        "rows": {f.table: f.rows for f in manifest.files if f.format == "jsonl" and f.table},
    }
    conn.execute(
        "INSERT INTO audit_log (actor, actor_role, action, resource, resource_id, after)"
        " VALUES (%s, %s, %s, 'handover', %s, %s)",
        (f"{SYSTEM.name} (cli)", SYSTEM.audit_role, direction, str(row[0]), Jsonb(after)),
    )


def _known_versions(migrate: Any) -> set[str]:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(migrate.alembic_config("postgresql://unused/"))
    return {r.revision for r in script.walk_revisions()}


def _load_table(
    conn: psycopg.Connection[Any], table: str, entry: ho.FileEntry, data: bytes, cat: Catalog
) -> None:
    have = {c.name: c for c in cat.columns.get(table, [])}
    names = [c.name for c in entry.columns]
    for n in names:
        if n not in have:
            raise HandoverRefused(f"table {table}: column {n} is not in this database")
    select: list[sql.Composable] = [sql.Identifier(n) for n in names]
    into = list(names)
    for c in have.values():
        if c.name in names or c.nullable or c.has_default:
            continue
        if not ho.is_secret_column(c.name) or c.type != "text":
            raise HandoverRefused(
                f"table {table}: column {c.name} is required but not in the package"
            )
        into.append(c.name)
        select.append(sql.Literal(ho.LOCKED))
    overriding = any(c.always_identity for c in have.values())
    query = sql.SQL(
        "INSERT INTO {t} ({into}) {ov}"
        " SELECT {sel} FROM jsonb_populate_recordset(NULL::{t}, %s::jsonb)"
    ).format(
        t=sql.Identifier(table),
        into=sql.SQL(", ").join(map(sql.Identifier, into)),
        ov=sql.SQL("OVERRIDING SYSTEM VALUE" if overriding else ""),
        sel=sql.SQL(", ").join(select),
    )
    lines = data.decode().splitlines()
    # The rows are the outgoing side's history as it was: the triggers that write
    # history (archive_history), guard issued bills or announce live events would
    # add to it or refuse it. Off for the load, inside the transaction; foreign
    # keys (system triggers) stay on.
    toggle = sql.SQL("ALTER TABLE {} {} TRIGGER USER")
    conn.execute(toggle.format(sql.Identifier(table), sql.SQL("DISABLE")))
    for i in range(0, len(lines), CHUNK):
        conn.execute(query, ("[" + ",".join(lines[i : i + CHUNK]) + "]",))
    conn.execute(toggle.format(sql.Identifier(table), sql.SQL("ENABLE")))
    for c in have.values():
        # Identity and serial columns go on after the highest id loaded.
        seq = conn.execute("SELECT pg_get_serial_sequence(%s, %s)", (table, c.name)).fetchone()
        if seq is None or seq[0] is None:
            continue
        conn.execute(
            sql.SQL("SELECT setval(%s, max({c})) FROM {t} HAVING max({c}) IS NOT NULL").format(
                c=sql.Identifier(c.name), t=sql.Identifier(table)
            ),
            (seq[0],),
        )
