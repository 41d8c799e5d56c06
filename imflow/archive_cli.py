"""``imflow simulate`` and ``imflow archive stats|compact|retention|reshard``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

DataOpt = Annotated[Path | None, typer.Option("--data-dir", help="Archive and state folder (default: IMFLOW_DATA_DIR)")]
GraceOpt = Annotated[float, typer.Option("--grace", help="Seconds replaced segments stay in .trash for readers mid-query")]

archive_cli = typer.Typer(help="Look after the history archive: statistics, compaction, retention, sharding.", no_args_is_help=True)


def _settings(data_dir: Path | None):
    from imflow.cli import load_settings

    return load_settings(data_dir=data_dir)


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
    red packets, live-room bursts and a growing contact graph; straight into the archive
    (millions of messages a minute) or through a running imflow's gateway (with
    IMFLOW_ADMIN_SECRET set, its users are registered through the gateway's admin API first;
    without, the server must run with IMFLOW_ACCOUNTS=open)."""
    from imflow.core import tokens
    from imflow.simulate import Scenario, through_gateway, to_archive

    settings = _settings(data_dir)
    scenario = Scenario(users=users, messages=messages, days=days, seed=seed,
                        read_fan_out_threshold=settings.read_fan_out_threshold,
                        content_shards=settings.archive_content_shards, shards=settings.archive_mailbox_shards,
                        chunk=min(1_000_000, max(1, messages)))
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
    root = settings.archive_dir
    if any(root.glob("im_msg_content/*/*.parquet")):
        # simulated segments are taken as holding each row once: a second run would repeat ids
        typer.secho(f"{root} holds messages already; simulate into an empty --data-dir", fg="red", err=True)
        raise typer.Exit(2)
    with _bar() as bar:
        task = bar.add_task(f"simulating into {root}", total=messages)
        written = to_archive(root, scenario, lambda n: bar.advance(task, n))
    rate = written.messages / written.seconds
    typer.echo(f"{written.messages:,} messages, {written.mailbox_rows:,} mailbox rows, {written.other_rows:,} other rows "
               f"in {written.seconds:.1f} s ({rate:,.0f} messages/s) into {root}")


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
    """Segments, rows and bytes per table and shard."""
    from imflow.core.storage.archive_housekeeping import stats as archive_stats

    root = _settings(data_dir).archive_dir
    table = Table("table", "shard", "segments", "rows", "MB", title=str(root))
    for row in archive_stats(root):
        table.add_row(row["table"], row["shard"], str(row["segments"]), f"{row['rows']:,}", f"{row['bytes'] / 1e6:,.1f}")
    Console().print(table)


def _report(what: str, report) -> None:
    typer.echo(f"{what}: {report.segments_in} segment(s), {report.rows_in:,} rows in; "
               f"{report.segments_out} segment(s), {report.rows_out:,} rows out")


def _spinner(description: str):
    progress = Progress(TextColumn("{task.description}"), TimeElapsedColumn(), console=Console(stderr=True), transient=True)
    task = progress.add_task(description, total=None)
    return progress, lambda text: progress.update(task, description=f"{description}: {text}")


@archive_cli.command("compact")
def compact(
    data_dir: DataOpt = None,
    grace: GraceOpt = 300,
    min_age: Annotated[float, typer.Option("--min-age", help="Only segments older than this many seconds (a crashed writer re-seals within 60 s)")] = 600,
) -> None:
    """Merge each shard's small segments into one (de-duplicated, sorted for fast history
    pages). Safe while workers write and notebooks read; run it every few minutes (cron)."""
    from imflow.core.storage.archive_housekeeping import compact as run

    progress, say = _spinner("compacting")
    with progress:
        report = run(_settings(data_dir).archive_dir, grace, min_age_seconds=min_age, progress=say)
    _report("compacted", report)


@archive_cli.command("retention")
def retention(
    keep_days: Annotated[float, typer.Option("--keep-days", help="Keep this many days of messages, events and reads")],
    data_dir: DataOpt = None,
    grace: GraceOpt = 300,
) -> None:
    """Drop what is older than --keep-days (the group membership record is kept). Safe while
    workers write and notebooks read."""
    from imflow.core.storage.archive_housekeeping import retention as run

    if keep_days <= 0:
        typer.secho("--keep-days must be above 0", fg="red", err=True)
        raise typer.Exit(2)
    progress, say = _spinner("applying retention")
    with progress:
        report = run(_settings(data_dir).archive_dir, keep_days, grace_seconds=grace, progress=say)
    _report(f"older than {keep_days:g} days dropped", report)


@archive_cli.command("reshard")
def reshard(
    content_shards: Annotated[int, typer.Option(min=1, help="Shards of im_msg_content (by mid)")],
    mailbox_shards: Annotated[int, typer.Option(min=1, help="Shards of im_user_msg_box (by owner_uid)")],
    data_dir: DataOpt = None,
    grace: GraceOpt = 300,
) -> None:
    """Rewrite the message tables with new shard counts. Stop workers and gateways first, and
    start them again with IMFLOW_ARCHIVE_CONTENT_SHARDS / IMFLOW_ARCHIVE_MAILBOX_SHARDS set to
    the new counts."""
    from imflow.core.storage.archive_housekeeping import reshard as run

    progress, say = _spinner("resharding")
    with progress:
        report = run(_settings(data_dir).archive_dir, content_shards, mailbox_shards, grace, progress=say)
    _report("resharded", report)
    typer.echo(f"now set IMFLOW_ARCHIVE_CONTENT_SHARDS={content_shards} IMFLOW_ARCHIVE_MAILBOX_SHARDS={mailbox_shards}")
