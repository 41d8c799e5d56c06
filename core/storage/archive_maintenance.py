"""Archive maintenance: keep the lake's files few and large, apply retention, expire old snapshots.

Everything is DuckLake's own work, each step a commit of its own, so readers and writers go on
meanwhile and see the same rows before and after (merging rewrites files, never rows):

1. rows inlined in the catalog (small writes) move to Parquet files;
2. rows older than ``archive_retention_days`` are deleted (not the KEEP_FOREVER tables);
3. adjacent small files are merged (in the tables' sort order) and files with many deleted
   rows rewritten;
4. snapshots older than ``archive_snapshot_days`` expire (time travel reaches no further),
   and the files only they used are deleted.

A worker timer runs it under a Redis lock (``maintain_once``), so one worker at a time does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from . import keys
from .groups import EVENTS_TABLE
from .lake import LAKE
from .social_records import ACCOUNT_EVENTS, BLOCK_EVENTS, CONTACT_EVENTS

if TYPE_CHECKING:
    import duckdb
    from redis.asyncio import Redis

    from .archive import ArchiveReader

# the membership record (group sizes are computed from it) and the social graph's (the contact
# graph at any time is computed from its whole history) stay whatever their age
KEEP_FOREVER = {EVENTS_TABLE, ACCOUNT_EVENTS, CONTACT_EVENTS, BLOCK_EVENTS}
TIME_COLUMNS = ("created_at_ms", "at_ms", "deleted_at_ms", "minute_ms")  # the first a table has is its age

Progress = Callable[[str], None]


class MaintenanceSettings(Protocol):
    """What maintenance reads of the settings (imflow's Settings has them)."""

    archive_retention_days: float
    archive_snapshot_days: float


@dataclass
class Report:
    """What one run did: rows moved out of the catalog, rows deleted by retention, files merged
    into fewer, snapshots expired and files deleted; ``seconds`` it took."""

    rows_flushed: int = 0
    rows_expired: int = 0
    files_merged: int = 0
    files_created: int = 0
    snapshots_expired: int = 0
    files_deleted: int = 0
    seconds: float = 0.0
    tables: dict[str, int] = field(default_factory=dict)  # rows each table lost to retention


def _tables(db: duckdb.DuckDBPyConnection) -> list[str]:
    rows = db.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = $lake ORDER BY 1", {"lake": LAKE}).fetchall()
    return [row[0] for row in rows]


def _time_column(db: duckdb.DuckDBPyConnection, table: str) -> str | None:
    found = {
        row[0]
        for row in db.execute(
            "SELECT column_name FROM duckdb_columns() WHERE database_name = $lake AND table_name = $table",
            {"lake": LAKE, "table": table},
        ).fetchall()
    }
    return next((name for name in TIME_COLUMNS if name in found), None)


def _call(db: duckdb.DuckDBPyConnection, sql: str) -> list[tuple[Any, ...]]:
    return db.execute(sql).fetchall()


def retention(db: duckdb.DuckDBPyConnection, keep_days: float, now_ms: int | None = None,
              progress: Progress | None = None) -> dict[str, int]:
    """Delete rows older than ``keep_days`` (by each table's first TIME_COLUMNS column) from every
    table but KEEP_FOREVER; returns the rows deleted per table. ``keep_days`` 0 deletes nothing."""
    if keep_days <= 0:
        return {}
    cutoff = (now_ms if now_ms is not None else int(time.time() * 1000)) - int(keep_days * 86_400_000)
    deleted: dict[str, int] = {}
    for table in _tables(db):
        column = None if table in KEEP_FOREVER else _time_column(db, table)
        if column is None:
            continue
        result = db.execute(f'DELETE FROM {table} WHERE "{column}" < $cutoff', {"cutoff": cutoff}).fetchone()
        count = int(result[0]) if result else 0
        if count:
            deleted[table] = count
            if progress:
                progress(f"{table}: {count} rows older than {keep_days} days deleted")
    return deleted


def maintain(db: duckdb.DuckDBPyConnection, settings: MaintenanceSettings, progress: Progress | None = None,
             now_ms: int | None = None) -> Report:
    """One maintenance run on the lake attached to ``db`` (see the module's steps); returns its
    Report. Raises duckdb.Error when the lake cannot be reached (a later run starts over: every
    step is safe to repeat)."""
    started = time.perf_counter()
    say = progress or (lambda _: None)
    report = Report()
    flushed = _call(db, f"CALL ducklake_flush_inlined_data('{LAKE}')")
    report.rows_flushed = sum(int(row[2]) for row in flushed)
    say(f"{report.rows_flushed} inlined rows written to files")
    report.tables = retention(db, settings.archive_retention_days, now_ms, progress)
    report.rows_expired = sum(report.tables.values())
    if report.rows_expired:  # deletions of inlined rows may be inlined too
        _call(db, f"CALL ducklake_flush_inlined_data('{LAKE}')")
    for step in ("ducklake_merge_adjacent_files", "ducklake_rewrite_data_files"):
        done = _call(db, f"CALL {step}('{LAKE}')")
        report.files_merged += sum(int(row[2]) for row in done)
        report.files_created += sum(int(row[3]) for row in done)
    say(f"{report.files_merged} files rewritten as {report.files_created}")
    # snapshots older than this go; the files only they referred to are then deleted
    keep = f"now() - INTERVAL {int(settings.archive_snapshot_days * 86_400)} SECOND"
    report.snapshots_expired = len(_call(db, f"CALL ducklake_expire_snapshots('{LAKE}', older_than => {keep})"))
    report.files_deleted = len(_call(db, f"CALL ducklake_cleanup_old_files('{LAKE}', older_than => {keep})"))
    say(f"{report.snapshots_expired} snapshots expired, {report.files_deleted} files deleted")
    report.seconds = time.perf_counter() - started
    return report


async def maintain_once(redis: Redis, app_id: str, lake: ArchiveReader, settings: Any) -> Report | None:
    """Run ``maintain`` in a worker thread unless another worker did within the last
    ``settings.archive_maintenance_seconds``: the lock is taken for that long and not released,
    so with many workers ticking, the lake is maintained once an interval. None when skipped."""
    hold_ms = max(1, int(settings.archive_maintenance_seconds * 1000))
    if not await redis.set(keys.archive_maintenance_lock(app_id), "1", nx=True, px=hold_ms):
        return None
    return await asyncio.to_thread(lambda: maintain(lake.cursor(), settings))


def stats(db: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """Per table of the lake: ``table``, ``files`` (Parquet data files), ``bytes`` (theirs),
    ``delete_files`` and ``rows`` (live rows, inlined ones included)."""
    out = []
    for name, files, size, delete_files in db.execute(
        f"SELECT table_name, file_count, file_size_bytes, delete_file_count FROM ducklake_table_info('{LAKE}') ORDER BY 1"
    ).fetchall():
        rows = db.execute(f"SELECT count(*) FROM {name}").fetchone()
        out.append({"table": name, "files": int(files), "bytes": int(size), "delete_files": int(delete_files),
                    "rows": int(rows[0]) if rows else 0})
    return out
