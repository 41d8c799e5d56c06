"""Archive maintenance: keep the lake's files few and large, apply retention, expire old snapshots.

Everything is DuckLake's own work, each step a commit of its own, so readers and writers go on
meanwhile and see the same rows before and after (merging rewrites files, never rows):

1. rows inlined in the catalog (small writes) move to Parquet files;
2. rows older than ``archive_retention_days`` are deleted (not the KEEP_FOREVER tables);
3. adjacent small files are merged (in the tables' sort order) and files with many deleted
   rows rewritten;
4. snapshots older than ``archive_snapshot_days`` expire (time travel reaches no further),
   and the files no snapshot uses any more are deleted two days after (CLEANUP_GRACE_SECONDS);
5. exactly-once marks older than an hour are deleted (``archive.prune_marks``).

A worker timer runs it under a Redis lock (``maintain_once``), so one worker at a time does.

Between runs every archive commit adds a small file per bucket it touches, and every page pays
DuckLake's catalog work per file (~0.8 ms a commit). ``merge_recent``, on a faster timer
(``archive_merge_seconds``, under a lock of its own: ``merge_recent_once``), merges only the
fresh files, those under RECENT_FILE_SIZE, so a bucket keeps about one of them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from . import archive, keys, lake
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
# Bytes: files under this are fresh and merged by merge_recent (in the tables' sort order, within
# a partition) until their merge reaches it; larger ones wait for the full maintenance. Small on
# purpose: a bucket's fresh file is rewritten at every merge until it is this big, so the bytes a
# merge rewrites (and its seconds) grow with it; and a merged lake's bucket files must be above it,
# or each merge would rewrite the whole lake (3 M messages: 6-7 MB files a bucket). Measured at
# 2,000 msgs a second, a merge every 10 s: 1 MB, 0.4-1 s a merge, ~20 MB rewritten a merge once
# the fresh files are full (~120 MB a minute), ~17 more live files a minute; 256 kB: 0.5 s,
# ~6.5 MB a merge (~35 MB a minute), ~40 more files a minute (maintenance merges them all).
RECENT_FILE_SIZE = 1_000_000
MARKS_KEPT_MS = 3_600_000  # the exactly-once marks kept: an hour (archive.prune_marks; fewer to look up per flush)
# Files no snapshot uses (merged away, or only expired snapshots used them) are deleted this
# long after, not at once: a query that began before may still read them. A merge keeps time
# travel without them (the merged file records each row's snapshot), so keeping them as long
# as snapshots (a week) would only keep merge_recent's rewrites that long. Two days, not an
# hour: on a SQLite catalog DuckLake compares the times as text, to the day (measured with
# 1.5.5: older_than a minute ago deleted files merged away a second before).
CLEANUP_GRACE_SECONDS = 2 * 86_400

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
    marks_pruned: int = 0
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
    """Run one DuckLake function call (a commit of its own), retried on a conflict with another
    process's commit. It holds the process's lake commit lock, as the archive writer does: on a
    SQLite catalog a merge's commit fails whenever another commit came since it began, so beside
    a writer committing every second it lost at nearly every try (merges took 11-23 s, and some
    gave up), and with the lock held by both every merge went through at once (0.4-0.8 s)."""
    def run() -> list[tuple[Any, ...]]:
        with lake.COMMITS:
            return db.execute(sql).fetchall()

    rows: list[tuple[Any, ...]] = lake.retrying(run)
    return rows


def _merged(done: list[tuple[Any, ...]]) -> tuple[int, int]:
    """(files merged, files created) of a merge or rewrite call's rows."""
    return sum(int(row[2]) for row in done), sum(int(row[3]) for row in done)


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
        result = _call(db, f'DELETE FROM {table} WHERE "{column}" < {int(cutoff)}')  # a commit: under lake.COMMITS, retried
        count = int(result[0][0]) if result else 0
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
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    report.marks_pruned = archive.prune_marks(db, now - MARKS_KEPT_MS)
    # a table at a time, each a commit of its own: the archive writer waits for the commit lock
    # one table's merge at a time (lake.COMMIT_WAIT_S), not the whole lake's
    calls = [f"CALL ducklake_merge_adjacent_files('{LAKE}', '{table}')" for table in _tables(db)]
    for call in [*calls, f"CALL ducklake_rewrite_data_files('{LAKE}')"]:
        merged, created = _merged(_call(db, call))
        report.files_merged += merged
        report.files_created += created
    say(f"{report.files_merged} files rewritten as {report.files_created}")
    keep = f"now() - INTERVAL {int(settings.archive_snapshot_days * 86_400)} SECOND"  # older snapshots go
    report.snapshots_expired = len(_call(db, f"CALL ducklake_expire_snapshots('{LAKE}', older_than => {keep})"))
    grace = f"now() - INTERVAL {CLEANUP_GRACE_SECONDS} SECOND"
    report.files_deleted = len(_call(db, f"CALL ducklake_cleanup_old_files('{LAKE}', older_than => {grace})"))
    say(f"{report.snapshots_expired} snapshots expired, {report.files_deleted} files deleted")
    report.seconds = time.perf_counter() - started
    return report


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


async def _take_turn(redis: Redis, key: str, seconds: float) -> bool:
    """Whether this worker's turn has come: the lock ``key`` is taken for ``seconds`` and not
    released, so with many workers ticking, one acts per interval."""
    return bool(await redis.set(key, "1", nx=True, px=_ms(seconds)))


async def maintain_once(redis: Redis, app_id: str, reader: ArchiveReader, settings: Any) -> Report | None:
    """Run ``maintain`` in a worker thread unless another worker did within the last
    ``settings.archive_maintenance_seconds``. None when skipped.

    Meanwhile no worker starts ``merge_recent``: both merge the fresh files, and the full merge,
    the longer, would lose its commit to the quick one at every try. After it the next quick
    merge is an interval away (``archive_merge_seconds``; the full one left nothing to merge)."""
    if not await _take_turn(redis, keys.archive_maintenance_lock(app_id), settings.archive_maintenance_seconds):
        return None
    merge_lock = keys.archive_merge_lock(app_id)
    await redis.set(merge_lock, "1", px=_ms(settings.archive_maintenance_seconds))
    try:
        return await asyncio.to_thread(lambda: maintain(reader.cursor(), settings))
    finally:
        await redis.set(merge_lock, "1", px=_ms(getattr(settings, "archive_merge_seconds", 0)))


def merge_recent(db: duckdb.DuckDBPyConnection, max_file_size: int | None = None) -> tuple[int, int]:
    """Merge the lake's fresh files: (files merged, files created). First the rows inlined in
    the catalog go to files (pages scan them all), then in every table and partition adjacent
    files under ``max_file_size`` bytes (default RECENT_FILE_SIZE) become one, sorted by the
    table's order (conversation, seq), so a page still reads one narrow row group. Readers see
    the same rows before and after, time travel included (each a commit of its own, retried on a
    conflict). Raises duckdb.Error when the lake cannot be reached."""
    size = RECENT_FILE_SIZE if max_file_size is None else int(max_file_size)
    _call(db, f"CALL ducklake_flush_inlined_data('{LAKE}')")
    merged = created = 0
    # a table at a time: the archive writer waits for the commit lock (_call) one short merge
    # at a time, not for all of them
    for table in _tables(db):
        done = _merged(_call(db, f"CALL ducklake_merge_adjacent_files('{LAKE}', '{table}', max_file_size => {size})"))
        merged, created = merged + done[0], created + done[1]
    return merged, created


async def merge_recent_once(redis: Redis, app_id: str, reader: ArchiveReader, settings: Any) -> tuple[int, int] | None:
    """Run ``merge_recent`` in a worker thread unless another worker did within the last
    ``settings.archive_merge_seconds`` (or maintenance runs); its (merged, created), None when
    skipped, and always when ``archive_merge_seconds`` is 0 (only maintenance merges then)."""
    if settings.archive_merge_seconds <= 0:
        return None
    if not await _take_turn(redis, keys.archive_merge_lock(app_id), settings.archive_merge_seconds):
        return None
    return await asyncio.to_thread(lambda: merge_recent(reader.cursor()))


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
