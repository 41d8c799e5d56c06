"""``imflow simulate`` and ``imflow archive stats|maintain|import``: the archive's command line."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

if TYPE_CHECKING:
    import duckdb

DataOpt = Annotated[Path | None, typer.Option("--data-dir", help="Archive and state folder (default: IMFLOW_DATA_DIR)")]

archive_cli = typer.Typer(help="Look after the history archive (a DuckLake): statistics, maintenance, importing an old archive.",
                          no_args_is_help=True)

# rows one import transaction takes at most (each chunk: one pass over the old files, one commit)
IMPORT_CHUNK_ROWS = 4_000_000


def _settings(data_dir: Path | None):
    from imflow.cli import load_settings

    return load_settings(data_dir=data_dir)


def _lake(data_dir: Path | None):
    """The configured lake, attached (made if new): IMFLOW_ARCHIVE_CATALOG and friends."""
    from imflow.core.storage.lake import LakeConfig, connect

    config = LakeConfig.from_settings(_settings(data_dir))
    return config, connect(config)


def _where(config) -> str:
    """Where the lake is, for messages: its catalog (a password in it masked) and data path."""
    catalog = re.sub(r"password=\S+", "password=********", config.catalog)
    return f"{catalog} (data {config.data_path})"


def _bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=Console(stderr=True))


def simulate(
    messages: Annotated[int, typer.Option(help="How many messages")] = 1_000_000,
    users: Annotated[int, typer.Option(help="How many users")] = 100_000,
    days: Annotated[int, typer.Option(help="Over how many days")] = 7,
    seed: Annotated[int, typer.Option(help="Same seed, same traffic")] = 1,
    via: Annotated[str | None, typer.Option("--via", help="Play the traffic through a running imflow at this WebSocket URL (small scales) instead of writing the archive")] = None,
    data_dir: DataOpt = None,
) -> None:
    """Generate realistic traffic: Zipf-active users, a daily rhythm, groups of 3 to 10,000, reads,
    red packets, live-room bursts and a growing contact graph; straight into the archive's
    lake (IMFLOW_ARCHIVE_CATALOG, else the embedded one under --data-dir; about a million
    messages in ten seconds) or through a running imflow's gateway (with IMFLOW_ADMIN_SECRET
    set, its users are registered through the gateway's admin API first; without, the server
    must run with IMFLOW_ACCOUNTS=open)."""
    from imflow.core import tokens
    from imflow.simulate import Scenario, through_gateway, to_archive

    settings = _settings(data_dir)
    scenario = Scenario(users=users, messages=messages, days=days, seed=seed,
                        read_fan_out_threshold=settings.read_fan_out_threshold, chunk=min(1_000_000, max(1, messages)))
    if via:
        secret = settings.secret_key.get_secret_value()
        admin_secret = settings.admin_secret.get_secret_value() if settings.admin_secret else None

        def token(user: str) -> str:
            if admin_secret:  # accounts=registered: the users need accounts first
                _register(via, admin_secret, user)
            return tokens.issue(secret, user, 3600)

        with _bar() as bar:
            task = bar.add_task(f"sending through {via}", total=messages)
            counts = asyncio.run(through_gateway(via, token, scenario, lambda n: bar.advance(task, n)))
        typer.echo(", ".join(f"{value} {name.replace('_', ' ')}" for name, value in counts.items()))
        return
    config, db = _lake(data_dir)
    try:
        # simulated rows go in once each: a second run would repeat ids and seqs
        held = db.execute("SELECT count(*) FROM (SELECT 1 FROM im_msg_content LIMIT 1)").fetchall()[0][0]
    finally:
        db.close()
    if held:
        typer.secho(f"{_where(config)} holds messages already; simulate into an empty --data-dir or lake", fg="red", err=True)
        raise typer.Exit(2)
    with _bar() as bar:
        task = bar.add_task("simulating", total=messages)
        written = to_archive(config, scenario, lambda n: bar.advance(task, n))
    rate = written.messages / written.seconds
    typer.echo(f"{written.messages:,} messages, {written.mailbox_rows:,} mailbox rows, {written.other_rows:,} other rows "
               f"in {written.seconds:.1f} s ({rate:,.0f} messages/s) into {_where(config)}")


def _register(via: str, admin_secret: str, user: str) -> None:
    """Create ``user``'s account on the imflow whose WebSocket URL is ``via`` (an existing one is
    kept); raises typer.Exit(2) with the server's answer when it refuses."""
    import httpx

    base = via.replace("ws://", "http://", 1).replace("wss://", "https://", 1).removesuffix("/ws")
    headers = {"Authorization": f"Bearer {admin_secret}"}
    reply = httpx.post(f"{base}/admin/users", json={"user": user}, headers=headers, timeout=10)
    if reply.status_code not in (201, 409):
        typer.secho(f"could not register {user} at {base}/admin/users: {reply.status_code} {reply.text}", fg="red", err=True)
        raise typer.Exit(2)


@archive_cli.command("stats")
def stats(data_dir: DataOpt = None) -> None:
    """Data files, rows and bytes per table (from the lake's catalog), and the check that every
    message and mailbox row is there once (duplicates: rows beyond one per key, 0 when sound)."""
    from imflow.core.storage.archive import duplicates
    from imflow.core.storage.archive_maintenance import stats as lake_stats

    config, db = _lake(data_dir)
    try:
        rows = lake_stats(db)
        twice = duplicates(db)
    finally:
        db.close()
    table = Table("table", "files", "rows", "MB", "duplicates", title=_where(config))
    for row in rows:
        extra = f"{twice[row['table']]:,}" if row["table"] in twice else ""
        table.add_row(row["table"], f"{row['files']:,}", f"{row['rows']:,}", f"{row['bytes'] / 1e6:,.1f}", extra)
    Console().print(table)
    if any(twice.values()):
        typer.secho(f"duplicates: {', '.join(f'{name} {count:,}' for name, count in twice.items() if count)} "
                    "(rows beyond one per key; history pages still show each message once)", fg="yellow", err=True)


@archive_cli.command("maintain")
def maintain(data_dir: DataOpt = None) -> None:
    """Maintain the lake now, as the workers' timer does every IMFLOW_ARCHIVE_MAINTENANCE_SECONDS:
    inlined rows to files, retention (IMFLOW_ARCHIVE_RETENTION_DAYS), small files merged,
    snapshots older than IMFLOW_ARCHIVE_SNAPSHOT_DAYS expired and their files deleted. Safe
    while workers write and notebooks read."""
    from imflow.core.storage.archive_maintenance import maintain as run

    settings = _settings(data_dir)
    config, db = _lake(data_dir)
    progress = Progress(TextColumn("{task.description}"), TimeElapsedColumn(), console=Console(stderr=True), transient=True)
    task = progress.add_task("maintaining", total=None)
    try:
        with progress:
            report = run(db, settings, progress=lambda text: progress.update(task, description=f"maintaining: {text}"))
    finally:
        db.close()
    typer.echo(f"maintained {_where(config)} in {report.seconds:.1f} s: {report.rows_flushed:,} inlined rows written "
               f"to files, {report.rows_expired:,} rows past retention deleted, {report.files_merged:,} files merged "
               f"into {report.files_created:,}, {report.snapshots_expired:,} snapshots expired, "
               f"{report.files_deleted:,} files deleted")


@dataclass(frozen=True)
class Imported:
    """What ``import_old`` did to one table: rows in the old files, rows added to the lake."""

    table: str
    files: int
    rows_read: int
    rows_added: int


def old_tables(root: Path) -> dict[str, list[str]]:
    """The tables of an archive in the Parquet-segment layout (``<root>/<table>/shard=NNN/
    {seg-,cmp-}*.parquet``) and their files; folders of no table (``.trash``, a lake's
    ``data/``) have none and are left out."""
    tables = {}
    for folder in sorted(path for path in Path(root).iterdir() if path.is_dir() and path.name.isidentifier()):
        files = sorted(str(path) for path in folder.glob("shard=*/*.parquet"))
        if files:
            tables[folder.name] = files
    return tables


def import_old(db: duckdb.DuckDBPyConnection, root: Path,
               progress: Callable[[str, int, int], None] | None = None) -> list[Imported]:
    """Copy an archive in the Parquet-segment layout into the lake attached to ``db``,
    de-duplicated by the archive's rule (a message once per mid, a mailbox row once per
    (owner_uid, mid), any other row once) against itself and against what the lake holds
    already, so running it twice adds nothing the second time. A table the lake lacks is
    made from the files' columns, and columns it lacks are added. Each table goes in chunks
    of about IMPORT_CHUNK_ROWS rows (the rows whose key hashes to the chunk), one commit each:
    an import stopped halfway goes on where it stopped when run again. ``progress(table,
    rows_done, rows_total)`` after each chunk. Returns one Imported per table."""
    import pyarrow.parquet as pq

    from imflow.core.storage import archive
    from imflow.core.storage.lake import DEDUP_KEYS, retrying

    done = []
    for table, files in old_tables(root).items():
        total = sum(pq.ParquetFile(path).metadata.num_rows for path in files)
        source = f"read_parquet({files!r}, union_by_name = true, hive_partitioning = false)"
        # the lake's table, made or widened to the old columns (an empty insert)
        old_columns = db.execute(f"SELECT * FROM {source} LIMIT 0").to_arrow_table()
        archive.insert_table(db, table, old_columns)
        columns = ", ".join(f'"{name}"' for name in old_columns.column_names)
        chunks = max(1, math.ceil(total / IMPORT_CHUNK_ROWS))
        added = 0
        for chunk in range(chunks):
            if key := DEDUP_KEYS.get(table):
                mine = f"hash({key}) % {chunks} = {chunk}"
                query = f"""
                    INSERT INTO {table} ({columns})
                    SELECT {columns} FROM (SELECT {columns} FROM {source} WHERE {mine}
                                           QUALIFY row_number() OVER (PARTITION BY {key}) = 1)
                    ANTI JOIN (SELECT {key} FROM {table} WHERE {mine}) USING ({key})"""
            else:  # EXCEPT: each row once, nulls equal to nulls
                mine = f"hash({columns}) % {chunks} = {chunk}"
                query = f"""
                    INSERT INTO {table} ({columns})
                    SELECT {columns} FROM {source} WHERE {mine} EXCEPT SELECT {columns} FROM {table} WHERE {mine}"""
            # one commit; lost to a live writer's commit, it is run again against what is there then
            added += retrying(lambda query=query: db.execute(query).fetchall()[0][0])
            if progress:
                progress(table, min(total, (chunk + 1) * math.ceil(total / chunks)), total)
        done.append(Imported(table, len(files), total, added))
    return done


@archive_cli.command("import")
def import_command(
    old_root: Annotated[Path, typer.Argument(
        help="An archive folder in the old Parquet-segment layout (<table>/shard=NNN/*.parquet)", exists=True, file_okay=False)],
    data_dir: DataOpt = None,
) -> None:
    """Import an archive of Parquet segments (imflow before the lake) into the configured lake:
    de-duplicated, in chunks, safe to run again (a second run adds nothing) and while imflow
    writes (the old folder is only read)."""
    config, db = _lake(data_dir)
    try:
        with _bar() as bar:
            tasks: dict[str, object] = {}

            def show(table: str, done: int, total: int) -> None:
                if table not in tasks:
                    tasks[table] = bar.add_task(f"importing {table}", total=total)
                bar.update(tasks[table], completed=done)

            imported = import_old(db, old_root, show)
    finally:
        db.close()
    if not imported:
        typer.secho(f"{old_root} holds no <table>/shard=NNN/*.parquet files", fg="red", err=True)
        raise typer.Exit(2)
    table = Table("table", "files", "rows read", "rows added", title=f"{old_root} → {_where(config)}")
    for row in imported:
        table.add_row(row.table, f"{row.files:,}", f"{row.rows_read:,}", f"{row.rows_added:,}")
    Console().print(table)
