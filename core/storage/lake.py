"""Open the history archive, a DuckLake: its catalog (SQLite, PostgreSQL) and its data files (a folder, S3).

A DuckLake keeps its tables as Parquet files plus a catalog database that says which files make up
which snapshot. Any number of processes (workers, gateways, notebooks) attach the same lake at
once; each commit is a transaction of the catalog, so a reader sees whole commits only.
``connect`` attaches it as ``lake`` and makes the core tables; ``check`` says whether the
catalog and the data files answer (for /readyz).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import random
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa

if TYPE_CHECKING:
    from ..settings import Settings

LAKE = "lake"  # the name the lake is attached as (and USEd): queries name tables bare

CONTENT = "im_msg_content"
MAILBOX = "im_user_msg_box"
DELETIONS = "im_user_msg_deleted"
READ_EVENTS = "im_read_events"  # read reports, a rows table like a plugin's (owner_uid, conversation, read_seq, at_ms)
# internal (no analyst view): per archive queue partition, how far each batch took that queue (the
# qid of the first record it took there, and how many from that one on), committed with the
# batch, so a batch written again after a crash is skipped
MARKS = "im_archive_marks"
# every recall and edit of a message (core/amending.py): its original row in CONTENT stays as
# sent, and readers show the latest version, or the tombstone (``archive.amended``)
VERSIONS = "im_msg_versions"

CONTENT_SCHEMA = pa.schema(
    [
        ("mid", pa.int64()),
        ("conversation", pa.string()),
        ("seq", pa.int64()),
        ("sender", pa.string()),
        ("client_msg_id", pa.string()),
        ("type", pa.string()),
        ("body", pa.string()),  # JSON
        ("sent_at_ms", pa.int64()),
        ("created_at_ms", pa.int64()),
    ]
)
MAILBOX_SCHEMA = pa.schema(
    [
        ("owner_uid", pa.string()),
        ("conversation", pa.string()),
        ("mid", pa.int64()),
        ("seq", pa.int64()),
        ("box", pa.string()),  # 'out' (sender), 'in' (each receiver), 'group' (read fan-out)
        ("peer", pa.string()),  # the other side: the sender for 'in', the conversation for 'out'
        ("created_at_ms", pa.int64()),
    ]
)
VERSIONS_SCHEMA = pa.schema(
    [
        ("mid", pa.int64()),
        ("conversation", pa.string()),
        ("seq", pa.int64()),
        ("version", pa.int64()),  # an edit's new version (2, 3, …); a recall's: the version it ended
        ("kind", pa.string()),  # 'edit' or 'recall'
        ("body", pa.string()),  # JSON: the edit's new body; '{}' for a recall
        ("by_user", pa.string()),  # who made the change (BY is an SQL keyword)
        ("at_ms", pa.int64()),
    ]
)
DELETIONS_SCHEMA = pa.schema([("owner_uid", pa.string()), ("mid", pa.int64()), ("deleted_at_ms", pa.int64())])
MARKS_SCHEMA = pa.schema([("partition", pa.int32()), ("qid", pa.string()), ("at_ms", pa.int64()), ("taken", pa.int32()),
                          ("last_qid", pa.string())])
SCHEMAS = {CONTENT: CONTENT_SCHEMA, MAILBOX: MAILBOX_SCHEMA, DELETIONS: DELETIONS_SCHEMA, MARKS: MARKS_SCHEMA,
           VERSIONS: VERSIONS_SCHEMA}
# what a row is (its key). Content and mailbox rows are written exactly once (the archive
# queue's marks and sealed seqs): readers take them as they are, and ``archive.duplicates`` and
# the import of an old archive check against these keys; deletions are written at least once,
# and readers de-duplicate them on theirs
DEDUP_KEYS = {CONTENT: "mid", MAILBOX: "owner_uid, mid", DELETIONS: "owner_uid, mid", VERSIONS: "mid, kind, version"}
EXACTLY_ONCE = (CONTENT, MAILBOX)

# The layout a history page wants (measured: docs/benchmarks.md). Content and mailbox rows are
# bucketed by conversation, so a page's rows of both tables are in one partition of each, and
# sorted by (conversation, seq) within a file, so the page reads one row group of it. 16, not
# more: every write makes a file per bucket it touches (a 3M-message lake's pages: p50 11 ms
# merged, 18 ms unmerged with 16 buckets; 11 and 37 ms with 64).
BUCKETS = 16
LAYOUT = {
    CONTENT: (f"bucket({BUCKETS}, conversation)", "conversation, seq"),
    MAILBOX: (f"bucket({BUCKETS}, conversation)", "conversation, seq"),
    DELETIONS: (None, "owner_uid, mid"),
    MARKS: (None, "partition, at_ms"),
    VERSIONS: (f"bucket({BUCKETS}, conversation)", "conversation, seq"),
}
# Writes of at most this many rows a table go into the catalog itself instead of a Parquet file
# of their own; maintenance moves them to files. A quiet system's flushes then add no tiny files.
# Small, because every page scans the inlined rows in the catalog: with 10,000 (a busy system's
# one-second flushes inlined) pages took p50 72 ms instead of 25 after 35 s of writes.
INLINING_ROW_LIMIT = 100
# One DuckLake commit at a time in a process: on a SQLite catalog a commit fails ("database is
# locked") whenever another commit landed since its transaction began, even from this process.
# Beside a worker's one-second writes a merge lost nearly every try (merges of 11-23 s, some
# given up); with the archive writer and maintenance both holding this, each went through at
# once (0.4-0.8 s). Re-entrant, so a holder may call another step that takes it.
COMMITS = threading.RLock()
# How long the archive writer waits for COMMITS (a maintenance merge may hold it for a minute on
# a big lake) before it gives up this tick (LakeBusy; the records stay queued): well under the
# archive queue's partition lock (60 s), so a writer never commits after its lock ran out.
COMMIT_WAIT_S = 20.0
TARGET_FILE_SIZE = 64_000_000  # bytes: files written by inserts and by maintenance's merges
ROW_GROUP_SIZE = 16_384  # rows: a page reads one row group of a file, not the whole file

# extension -> the pip package that carries it; LOADed by path, never downloaded
EXTENSION_PACKAGES = {
    "ducklake": "duckdb-extension-ducklake",
    "sqlite_scanner": "duckdb-extension-sqlite-scanner",
    "postgres_scanner": "duckdb-extension-postgres-scanner",
    "httpfs": "duckdb-extension-httpfs",
}
CATALOG_EXTENSIONS = {"sqlite": "sqlite_scanner", "postgres": "postgres_scanner", "duckdb": None}
CHECK_TIMEOUT = 2.0  # seconds each readiness check may take
SQLITE_BUSY_TIMEOUT_MS = 5000  # how long a SQLite catalog waits for another process's commit


class LakeError(RuntimeError):
    """The lake cannot be opened: a missing extension package, or a catalog string it cannot read."""


class LakeBusy(LakeError):
    """Another commit of this process (maintenance) held the lake longer than COMMIT_WAIT_S: try later."""


@dataclass(frozen=True)
class LakeConfig:
    """Where a lake's catalog and data are, and the S3 credentials of its data (if on S3).

    ``catalog`` is what follows ``ducklake:`` in ATTACH: ``sqlite:PATH``, ``postgres:<libpq
    connection string>`` or ``duckdb:PATH`` (one process only: DuckDB files lock). ``schema``:
    the catalog schema of this lake (several lakes share one PostgreSQL database); ``data_path``:
    where new lakes put their files (a folder or ``s3://bucket/prefix/``; once created, the
    catalog's own stored path wins)."""

    catalog: str
    data_path: str
    schema: str | None = None
    s3_endpoint: str | None = None
    s3_key_id: str | None = None
    s3_secret: str | None = None
    s3_region: str = "us-east-1"
    s3_use_ssl: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> LakeConfig:
        """The lake of imflow's settings (``archive_*``, ``s3_*``; defaults under ``data_dir/archive``)."""
        root = settings.archive_dir
        return cls(
            catalog=settings.archive_catalog or f"sqlite:{root / 'catalog.sqlite'}",
            data_path=settings.archive_data_path or f"{root / 'data'}/",
            schema=settings.archive_schema,
            s3_endpoint=settings.s3_endpoint,
            s3_key_id=settings.s3_key_id,
            s3_secret=settings.s3_secret.get_secret_value() if settings.s3_secret else None,
            s3_region=settings.s3_region,
            s3_use_ssl=settings.s3_use_ssl,
        )

    @classmethod
    def from_url(cls, catalog: str | Path, **overrides: Any) -> LakeConfig:
        """A lake named by its catalog string, or by a folder (the embedded layout in it:
        ``sqlite:<folder>/catalog.sqlite`` and ``<folder>/data/``). S3 values not given come from
        IMFLOW_S3_ENDPOINT, IMFLOW_S3_KEY_ID, IMFLOW_S3_SECRET, IMFLOW_S3_REGION, IMFLOW_S3_USE_SSL;
        ``data_path`` from IMFLOW_ARCHIVE_DATA_PATH (else beside a file catalog)."""
        text = str(catalog)
        if text.split(":", 1)[0] not in CATALOG_EXTENSIONS:  # a folder
            folder = Path(text)
            text, default_data = f"sqlite:{folder / 'catalog.sqlite'}", f"{folder / 'data'}/"
        else:
            kind, _, rest = text.partition(":")
            default_data = f"{Path(rest).parent / 'data'}/" if kind != "postgres" else ""
        env = os.environ.get
        values: dict[str, Any] = {
            "catalog": text,
            "data_path": env("IMFLOW_ARCHIVE_DATA_PATH") or default_data,
            "schema": env("IMFLOW_ARCHIVE_SCHEMA") or None,
            "s3_endpoint": env("IMFLOW_S3_ENDPOINT") or None,
            "s3_key_id": env("IMFLOW_S3_KEY_ID") or None,
            "s3_secret": env("IMFLOW_S3_SECRET") or None,
            "s3_region": env("IMFLOW_S3_REGION") or "us-east-1",
            "s3_use_ssl": (env("IMFLOW_S3_USE_SSL") or "false").lower() in ("1", "true", "yes"),
        }
        return cls(**{**values, **overrides})

    def with_(self, **changes: Any) -> LakeConfig:
        """A copy with some fields changed."""
        return replace(self, **changes)

    @property
    def catalog_kind(self) -> str:
        return self.catalog.split(":", 1)[0]

    @property
    def on_s3(self) -> bool:
        return self.data_path.startswith("s3://")


def extension_path(name: str) -> str:
    """The file of a DuckDB extension shipped by its pip package, for this DuckDB version.

    Raises LakeError naming the package to install when it is missing."""
    package = EXTENSION_PACKAGES[name]
    spec = importlib.util.find_spec(package.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise LakeError(f"the DuckDB extension {name!r} is missing: pip install {package}=={duckdb.__version__}")
    folder = Path(next(iter(spec.submodule_search_locations))) / "extensions" / f"v{duckdb.__version__}"
    path = folder / f"{name}.duckdb_extension"
    if not path.exists():
        version = duckdb.__version__
        raise LakeError(f"{package} has no extension for DuckDB {version}: pip install {package}=={version}")
    return str(path)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _extensions(config: LakeConfig) -> list[str]:
    kind = config.catalog_kind
    if kind not in CATALOG_EXTENSIONS:
        raise LakeError(f"unknown archive catalog {config.catalog!r}: use sqlite:PATH, postgres:DSN or duckdb:PATH")
    wanted = ["ducklake", CATALOG_EXTENSIONS[kind]]
    if config.on_s3 or config.s3_endpoint:
        wanted.append("httpfs")
    return [name for name in wanted if name]


def _open(config: LakeConfig) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the lake's extensions loaded and its S3 secret made (not attached)."""
    # never fetch anything from the network: the extensions come from their pip packages
    db = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    try:
        # maintenance's merges are long: no bars in the logs (Jupyter without ipywidgets refuses
        # the setting itself, and a notebook opening the lake must not fail on that)
        with contextlib.suppress(duckdb.Error):
            db.execute("SET enable_progress_bar = false")
        # a lake's data files never change (new data, new files): their footers and HTTP metadata
        # may be kept, so a page reads only its row groups (each a round trip on S3)
        db.execute("SET parquet_metadata_cache = true")
        db.execute("SET enable_http_metadata_cache = true")
        for name in _extensions(config):
            db.execute(f"LOAD {_quote(extension_path(name))}")
        if config.s3_endpoint:
            db.execute(
                f"""CREATE OR REPLACE SECRET imflow_s3 (TYPE s3, KEY_ID {_quote(config.s3_key_id or "")},
                SECRET {_quote(config.s3_secret or "")}, ENDPOINT {_quote(config.s3_endpoint)}, URL_STYLE 'path',
                USE_SSL {str(config.s3_use_ssl).lower()}, REGION {_quote(config.s3_region)})"""
            )
    except BaseException:
        db.close()
        raise
    return db


def _attach_sql(config: LakeConfig, snapshot: int | datetime | None, *, data_path: bool = True, read_only: bool = False) -> str:
    options = [f"DATA_PATH {_quote(config.data_path)}"] if config.data_path and data_path else []
    if config.schema:
        options.append(f"METADATA_SCHEMA {_quote(config.schema)}")
    if config.catalog_kind == "sqlite":
        # readers beside a writer (in this or another process): without WAL and a busy timeout a
        # reader fails at once with "database is locked" (duckdb/ducklake#128)
        options += ["META_JOURNAL_MODE 'WAL'", f"META_BUSY_TIMEOUT {SQLITE_BUSY_TIMEOUT_MS}"]
    if snapshot is not None or read_only:
        options.append("READ_ONLY")
        if isinstance(snapshot, datetime):
            options.append(f"SNAPSHOT_TIME {_quote(snapshot.isoformat())}")
        elif snapshot is not None:
            options.append(f"SNAPSHOT_VERSION {int(snapshot)}")
    elif not read_only:
        options.append(f"DATA_INLINING_ROW_LIMIT {INLINING_ROW_LIMIT}")
    return f"ATTACH {_quote('ducklake:' + config.catalog)} AS {LAKE} ({', '.join(options)})"


def _attach(db: duckdb.DuckDBPyConnection, config: LakeConfig, snapshot: int | datetime | None = None, *,
            read_only: bool = False) -> None:
    """ATTACH the lake as LAKE. DATA_PATH counts only when the lake is made: once it exists, the
    catalog's stored path wins (processes with data dirs of their own share one lake)."""
    try:
        db.execute(_attach_sql(config, snapshot, read_only=read_only))
    except duckdb.Error as error:
        if "does not match existing data path" not in str(error):
            raise
        db.execute(_attach_sql(config, snapshot, data_path=False, read_only=read_only))


def _conflict(error: duckdb.Error) -> bool:
    """A commit lost to another process's (both made the catalog or a table at once): try again."""
    text = str(error).lower()
    return any(word in text for word in ("conflict", "already exists", "locked", "busy", "duplicate key", "unique constraint"))


def retrying(action: Any, attempts: int = 8) -> Any:
    """Run ``action()``; on a commit conflict with another process, wait a little and run it again."""
    for attempt in range(attempts):
        try:
            return action()
        except duckdb.Error as error:
            if attempt == attempts - 1 or not _conflict(error):
                raise
            time.sleep(0.05 * (attempt + 1) + random.random() * 0.05)  # jitter: two processes retry apart
    raise AssertionError("unreachable")


def _sql_type(type_: pa.DataType) -> str:
    return {pa.int64(): "BIGINT", pa.string(): "VARCHAR", pa.int32(): "INTEGER", pa.float64(): "DOUBLE"}[type_]


def create_core_tables(db: duckdb.DuckDBPyConnection) -> None:
    """Make the core tables, with their partitioning and sort order, where they are missing, and
    add the columns a table made by an older imflow lacks (null in its older rows).

    One transaction, so two processes starting at once make them once (the loser's commit
    conflicts, is retried and finds them)."""

    def plan() -> list[str]:
        listed = db.execute(
            "SELECT table_name, list(column_name) FROM duckdb_columns() WHERE database_name = $lake GROUP BY 1",
            {"lake": LAKE},
        ).fetchall()
        existing = {table: set(columns) for table, columns in listed}
        statements = []
        for table, schema in SCHEMAS.items():
            if table not in existing:
                columns = ", ".join(f"{field.name} {_sql_type(field.type)}" for field in schema)
                statements.append(f"CREATE TABLE IF NOT EXISTS {table} ({columns})")
                partition, order = LAYOUT[table]
                if partition:
                    statements.append(f"ALTER TABLE {table} SET PARTITIONED BY ({partition})")
                statements.append(f"ALTER TABLE {table} SET SORTED BY ({order})")
            else:
                statements += [f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {field.name} {_sql_type(field.type)}"
                               for field in schema if field.name not in existing[table]]
        return statements

    if not plan():
        return

    def create() -> None:
        db.execute("BEGIN")
        try:
            for statement in plan():  # again inside the transaction: another process may have made them
                db.execute(statement)
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(duckdb.Error):
                db.execute("ROLLBACK")
            raise

    retrying(create)


def _set_options(db: duckdb.DuckDBPyConnection) -> None:
    """The lake-wide file sizes (stored in the catalog; the same values every time)."""
    current = {row[0]: row[2] for row in db.execute(f"FROM ducklake_options({_quote(LAKE)})").fetchall()}
    # (name, as stored, as set: the size option takes a unit)
    wanted = [("target_file_size", str(TARGET_FILE_SIZE), f"{TARGET_FILE_SIZE // 1000}KB"),
              ("parquet_row_group_size", str(ROW_GROUP_SIZE), str(ROW_GROUP_SIZE))]
    for name, stored, value in wanted:
        if str(current.get(name)) != stored:
            sql = f"CALL ducklake_set_option({_quote(LAKE)}, {_quote(name)}, {_quote(value)})"
            retrying(lambda sql=sql: db.execute(sql))


def connect(config: LakeConfig, *, create: bool = True, snapshot: int | datetime | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the lake attached as ``lake`` and in use (tables named bare).

    ``create``: make the lake (a new catalog) and its core tables if missing; ``snapshot``: a
    snapshot version or a point in time, attached read-only (time travel). Raises LakeError
    (a missing extension package, an unknown catalog kind) or duckdb.Error (the catalog or the
    data path cannot be reached). The connection is not thread-safe: give each thread a
    ``cursor()`` of it."""
    if config.catalog_kind == "sqlite" and create:
        Path(config.catalog.split(":", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
    if create and config.data_path and not config.on_s3:
        Path(config.data_path).mkdir(parents=True, exist_ok=True)
    db = _open(config)
    try:
        retrying(lambda: _attach(db, config, snapshot))
        db.execute(f"USE {LAKE}")
        if create and snapshot is None:
            create_core_tables(db)
            _set_options(db)
    except BaseException:
        db.close()
        raise
    return db


def _with_timeout(probe: Any, timeout: float) -> bool:
    """Run ``probe()`` in a thread; False if it raises or takes longer than ``timeout`` seconds
    (the thread is left to finish on its own: a hung connection cannot be interrupted)."""
    outcome: list[bool] = []

    def run() -> None:
        try:
            probe()
            outcome.append(True)
        except Exception:  # any failure means "not reachable"
            outcome.append(False)

    thread = threading.Thread(target=run, daemon=True, name="lake-check")
    thread.start()
    thread.join(timeout)
    return bool(outcome and outcome[0])


def drop_catalog_schema(config: LakeConfig) -> None:
    """Drop the PostgreSQL catalog schema of a lake named with a ``schema`` (its data files
    stay where they are); nothing for other catalogs, whose files their owner removes. For
    throwaway lakes (test stacks, benchmarks). Raises duckdb.Error if PostgreSQL refuses."""
    if config.catalog_kind != "postgres" or not config.schema:
        return
    db = _open(config)
    try:
        db.execute(f"ATTACH {_quote(config.catalog.split(':', 1)[1])} AS catalog_db (TYPE postgres)")
        db.execute(f"""CALL postgres_execute('catalog_db', 'DROP SCHEMA IF EXISTS "{config.schema}" CASCADE')""")
    finally:
        db.close()


def check(config: LakeConfig, timeout: float = CHECK_TIMEOUT) -> dict[str, bool]:
    """``{"archive_catalog": …, "archive_storage": …}``: whether the catalog answers (the lake
    attaches and names its current snapshot) and whether the data path can be listed (a stopped
    object store or a missing bucket is False); each within ``timeout`` seconds."""
    data_path: list[str] = []

    def catalog() -> None:
        db = _open(config)
        try:
            _attach(db, config, read_only=True)
            db.execute(f"FROM ducklake_current_snapshot({_quote(LAKE)})").fetchall()
            stored = dict(db.execute(f"SELECT option_name, value FROM ducklake_options({_quote(LAKE)})").fetchall())
            data_path.append(stored.get("data_path") or config.data_path)
        finally:
            db.close()

    catalog_ok = _with_timeout(catalog, timeout)

    def storage() -> None:
        path = data_path[0] if data_path else config.data_path
        if not path.startswith("s3://"):
            if not Path(path).is_dir():
                raise FileNotFoundError(path)
            return
        db = _open(config)
        try:
            # glob lists the prefix: a missing bucket, wrong credentials or a stopped store fail
            db.execute(f"SELECT count(*) FROM glob({_quote(path.rstrip('/') + '/*')})").fetchall()
        finally:
            db.close()

    return {"archive_catalog": catalog_ok, "archive_storage": _with_timeout(storage, timeout)}
