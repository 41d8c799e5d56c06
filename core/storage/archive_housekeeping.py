"""Archive housekeeping: compaction of small segments, retention, resharding (R8), statistics.

Every change is a new sealed segment followed by moving the old ones to ``<root>/.trash``,
so readers that are in the middle of a query still find their files; trash older than the
grace period is deleted by the next run. Nothing is lost in a crash. Readers take 'cmp-'
segments as holding each row once; that holds unless a run crashes between sealing its new
segment and moving the old ones away (those rows show twice until the next compaction merges
both), or two runs overlap (run it from one cron job, not several).
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .archive import COMPACTED, CONTENT, DELETIONS, MAILBOX, ROW_GROUP, ArchiveLayout, content_shard, mailbox_shard, segment_path
from .groups import EVENTS_TABLE
from .social_records import ACCOUNT_EVENTS, BLOCK_EVENTS, CONTACT_EVENTS

TRASH = ".trash"
SMALL_BYTES = 64 << 20  # segments below this are compacted together
MIN_AGE = 600.0  # seconds: far beyond the archive lock (60 s) after which a batch is re-sealed
# how each core table is de-duplicated and ordered when rewritten
KEYS = {
    CONTENT: ("mid", "conversation, seq"),  # a history page reads one conversation's seq range
    MAILBOX: ("owner_uid, mid", "owner_uid, conversation, seq"),
    DELETIONS: ("owner_uid, mid", "owner_uid, mid"),
}
TIME_COLUMNS = ("created_at_ms", "at_ms", "deleted_at_ms", "minute_ms")
# the membership record (group sizes are computed from it) and the social graph's (the contact
# graph at any time is computed from its whole history)
KEEP_FOREVER = {EVENTS_TABLE, ACCOUNT_EVENTS, CONTACT_EVENTS, BLOCK_EVENTS}

Progress = Callable[[str], None]


@dataclass
class Report:
    segments_in: int = 0
    segments_out: int = 0
    rows_in: int = 0
    rows_out: int = 0

    def add(self, other: Report) -> None:
        for name in ("segments_in", "segments_out", "rows_in", "rows_out"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


def tables(root: Path) -> list[str]:
    if not Path(root).exists():
        return []
    return sorted(p.name for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith("."))


def shard_dirs(root: Path, table: str) -> list[Path]:
    return sorted(p for p in (Path(root) / table).glob("shard=*") if p.is_dir())


def _segments(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.parquet"))


def _seal_query(db: duckdb.DuckDBPyConnection, query: str, params: dict, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    final = segment_path(folder, COMPACTED)
    temporary = final.with_suffix(".parquet.tmp")
    db.execute(f"COPY ({query}) TO '{temporary}' (FORMAT parquet, ROW_GROUP_SIZE {ROW_GROUP})", params)
    temporary.replace(final)
    return final


def _to_trash(root: Path, files: list[Path]) -> None:
    bin_ = Path(root) / TRASH / f"{int(time.time())}-{uuid.uuid4().hex[:8]}"
    for path in files:
        target = bin_ / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        path.replace(target)


def empty_trash(root: Path, grace_seconds: float) -> int:
    """Delete what was moved to the trash more than ``grace_seconds`` ago."""
    removed = 0
    for bin_ in sorted((Path(root) / TRASH).glob("*")):
        if time.time() - int(bin_.name.split("-")[0]) > grace_seconds:
            shutil.rmtree(bin_, ignore_errors=True)
            removed += 1
    return removed


def _rewrite(table: str, files: list[Path], where: str = "") -> tuple[str, dict]:
    """The query that rewrites these segments as one: de-duplicated, ordered for range reads."""
    source = "read_parquet($files, union_by_name = true, hive_partitioning = false)"
    if table in KEYS:
        key, order = KEYS[table]
        query = f"SELECT * FROM {source} {where} QUALIFY row_number() OVER (PARTITION BY {key}) = 1 ORDER BY {order}"
    else:
        query = f"SELECT DISTINCT * FROM {source} {where}"
    return query, {"files": [str(f) for f in files]}


def _rows(files: list[Path]) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def compact(root: Path, grace_seconds: float = 300, small_bytes: int = SMALL_BYTES, min_age_seconds: float = MIN_AGE,
            progress: Progress | None = None) -> Report:
    """Merge each shard's small segments into one; returns how many went in and came out.

    Only segments older than ``min_age_seconds`` are taken: a batch the archive agent seals
    twice (after a crash, once its lock of 60 s expired) is sealed within that time, so both
    copies are compacted together and the output holds each row once (a 'cmp-' segment)."""
    root = Path(root)
    report = Report()
    settled = time.time() - min_age_seconds
    with duckdb.connect() as db:
        for table in tables(root):
            for folder in shard_dirs(root, table):
                small = [f for f in _segments(folder) if f.stat().st_size < small_bytes and f.stat().st_mtime <= settled]
                if len(small) < 2:
                    continue
                if progress:
                    progress(f"{table}/{folder.name}: {len(small)} segments")
                query, params = _rewrite(table, small)
                out = _seal_query(db, query, params, folder)
                report.add(Report(len(small), 1, _rows(small), _rows([out])))
                _to_trash(root, small)
    empty_trash(root, grace_seconds)
    return report


def _time_column(schema: pa.Schema) -> str | None:
    return next((name for name in TIME_COLUMNS if name in schema.names), None)


def retention(root: Path, keep_days: float, now_ms: int | None = None, grace_seconds: float = 300,
              progress: Progress | None = None) -> Report:
    """Drop rows older than ``keep_days``: whole segments when all their rows are older, else the
    segment is rewritten without them. The membership record is kept whatever its age."""
    root = Path(root)
    cutoff = (now_ms if now_ms is not None else int(time.time() * 1000)) - int(keep_days * 86_400_000)
    report = Report()
    with duckdb.connect() as db:
        for table in tables(root):
            if table in KEEP_FOREVER:
                continue
            for folder in shard_dirs(root, table):
                for segment in _segments(folder):
                    column = _time_column(pq.read_schema(segment))
                    if column is None:
                        continue
                    sql = f"SELECT min({column}), max({column}) FROM read_parquet($f)"
                    low, high = db.execute(sql, {"f": str(segment)}).fetchone() or (None, None)
                    if low is None or low >= cutoff:
                        continue
                    rows = _rows([segment])
                    if high >= cutoff:  # some rows stay
                        query, params = _rewrite(table, [segment], f"WHERE {column} >= {cutoff}")
                        out = _seal_query(db, query, params, folder)
                        report.add(Report(1, 1, rows, _rows([out])))
                    else:
                        report.add(Report(1, 0, rows, 0))
                    if progress:
                        progress(f"{table}/{folder.name}/{segment.name}")
                    _to_trash(root, [segment])
    empty_trash(root, grace_seconds)
    return report


def _batches(files: list[Path], table: str) -> Iterator[pa.RecordBatch]:
    query, params = _rewrite(table, files)
    with duckdb.connect() as db:
        yield from db.sql(query, params=params).to_arrow_reader(ROW_GROUP * 4)


def reshard(root: Path, content_shards: int, mailbox_shards: int, grace_seconds: float = 300,
            progress: Progress | None = None) -> Report:
    """Rewrite the core tables with new shard counts (content by ``mid``, mailboxes and
    deletions by ``owner_uid``). Set IMFLOW_ARCHIVE_*_SHARDS to the same numbers before
    workers and gateways start again; run it while they are stopped (each table is swapped in
    as a whole, and a writer with the old counts would write to the old places)."""
    root = Path(root)
    report = Report()
    staging = root / f".reshard-{uuid.uuid4().hex[:8]}"
    for table, shards in ((CONTENT, content_shards), (MAILBOX, mailbox_shards), (DELETIONS, mailbox_shards)):
        old = [f for folder in shard_dirs(root, table) for f in _segments(folder)]
        if not old:
            continue
        layout = ArchiveLayout(staging, content_shards, mailbox_shards)
        writers: dict[int, pq.ParquetWriter] = {}
        written = 0
        try:
            for batch in _batches(old, table):
                if table == CONTENT:
                    shard_of = content_shard(batch.column("mid").to_numpy(), shards)
                else:
                    owners = batch.column("owner_uid")
                    distinct = pc.unique(owners)
                    per_owner = np.array([mailbox_shard(o, shards) for o in distinct.to_pylist()], dtype=np.int64)
                    shard_of = per_owner[pc.index_in(owners, distinct).to_numpy()]
                for shard in np.unique(shard_of):
                    part = batch.filter(pa.array(shard_of == shard))
                    if int(shard) not in writers:
                        folder = layout.shard_dir(table, int(shard))
                        folder.mkdir(parents=True, exist_ok=True)
                        writers[int(shard)] = pq.ParquetWriter(segment_path(folder, COMPACTED), part.schema)
                    writers[int(shard)].write_batch(part, row_group_size=ROW_GROUP)
                    written += part.num_rows
        finally:
            for writer in writers.values():
                writer.close()
        if progress:
            progress(f"{table}: {len(old)} segments → {len(writers)} shards")
        report.add(Report(len(old), len(writers), _rows(old), written))
        _to_trash(root, [root / table])
        (staging / table).replace(root / table)
    shutil.rmtree(staging, ignore_errors=True)
    empty_trash(root, grace_seconds)
    return report


def stats(root: Path) -> list[dict]:
    """Per table and shard: segments, rows and bytes."""
    out = []
    for table in tables(root):
        for folder in shard_dirs(root, table):
            files = _segments(folder)
            out.append({"table": table, "shard": folder.name.split("=", 1)[1], "segments": len(files),
                        "rows": _rows(files), "bytes": sum(f.stat().st_size for f in files)})
    return out
