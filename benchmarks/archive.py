"""The history archive at scale: simulated ingest rate, analyst queries on 10 million messages,
and one user's history page while the archive is being written.

    scripts/bench archive [--messages 10000000] [--users 1000000] [--runs 5] [--catalog CATALOG]
    scripts/bench archive --lake FOLDER [--pages-seconds 40]     # only step 3, on a lake already built

Without ``--catalog`` the lakes are embedded (a SQLite catalog and a folder); with it (e.g. the
``IMFLOW_ARCHIVE_CATALOG`` of ``scripts/services env``: PostgreSQL) each lake gets a catalog
schema of its own and its data under ``IMFLOW_ARCHIVE_DATA_PATH`` (the object store), both
removed afterwards.

1. Ingest: ``imflow.simulate.to_archive`` writes the messages with their mailbox rows (and reads,
   red packets, live rooms) into a DuckLake (SQLite catalog and a folder, the embedded layout); once for the realistic mix (groups of 3 to
   10,000: several mailbox rows per group message), once one-to-one only (two mailbox rows per
   message, the figure the aim is stated in).
2. Queries on the mixed archive through ``imflow.analytics.Archive``: messages per hour over
   all data, daily active users, top groups (median of --runs).
3. History pages (``ArchiveReader.history_page``, what the gateway calls) for random users and
   conversations, while another process writes as a worker does: a commit of new traffic a
   second, and ``merge_recent`` of the fresh files every ``archive_merge_seconds`` (settings:
   IMFLOW_ARCHIVE_MERGE_SECONDS=0 for none). The summary has the lake's files when pages start
   and end, and the merges' seconds and the bytes they rewrote.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from stack import percentile

from imflow.analytics import Archive
from imflow.core.storage import archive_maintenance, lake
from imflow.core.storage.archive import ArchiveReader, write_tables
from imflow.core.storage.lake import CONTENT, MAILBOX, READ_EVENTS, LakeConfig
from imflow.plugins.red_packets import EVENTS_TABLE as GRAB_EVENTS_TABLE
from imflow.plugins.red_packets import PACKETS_TABLE
from imflow.simulate import Generator, Scenario, to_archive


def lake_stats(config: LakeConfig) -> dict:
    """Data files and their bytes over every table of the lake."""
    db = lake.connect(config)
    try:
        tables = archive_maintenance.stats(db)
    finally:
        db.close()
    return {"files": sum(t["files"] for t in tables), "bytes": sum(t["bytes"] for t in tables)}


def target(args: argparse.Namespace, folder: Path, name: str) -> LakeConfig:
    """Where one lake of the run lives: a folder, or a schema and data prefix of --catalog."""
    if not args.catalog:
        return LakeConfig.from_url(folder / name)
    tag = f"bench_{name}_{uuid.uuid4().hex[:8]}"
    data = (os.environ.get("IMFLOW_ARCHIVE_DATA_PATH") or "s3://imflow/").rstrip("/")
    return LakeConfig.from_url(args.catalog, schema=tag, data_path=f"{data}/{tag}/")


def ingest(root: LakeConfig, scenario: Scenario) -> dict:
    print(f"ingest: {scenario.messages:,} messages, group share {scenario.group_share} ...", file=sys.stderr, flush=True)
    written = to_archive(root, scenario)
    result = {
        "messages": written.messages, "mailbox_rows": written.mailbox_rows, "other_rows": written.other_rows,
        "seconds": round(written.seconds, 1),
        "messages_per_s": round(written.messages / written.seconds),
        "rows_per_s": round((written.messages + written.mailbox_rows + written.other_rows) / written.seconds),
        **lake_stats(root),
    }
    print(f"  {result}", file=sys.stderr, flush=True)
    return result


QUERIES = {
    "messages per hour, all data": lambda a: a.messages_per("hour"),
    "daily active users": lambda a: a.active_users_per("day"),
    "top groups": lambda a: a.top_groups(10),
    "one user's conversations": lambda a: a.sql(
        "SELECT conversation, count(*) FROM im_user_msg_box WHERE owner_uid = 'u0000001' GROUP BY 1").df(),
}


def queries(root: LakeConfig, runs: int) -> dict:
    out = {}
    with Archive(root) as archive:
        for name, query in QUERIES.items():
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                result = query(archive)
                times.append(time.perf_counter() - start)
            out[name] = {"median_s": round(statistics.median(times), 3), "rows": len(result)}
            print(f"  {name}: {out[name]}", file=sys.stderr, flush=True)
    return out


def live_files(db: Any) -> dict[str, int]:
    """Path -> bytes of every data file the lake's current snapshot uses."""
    rows = db.execute(f"SELECT table_name FROM duckdb_tables() WHERE database_name = '{lake.LAKE}'").fetchall()
    files: dict[str, int] = {}
    for (table,) in rows:
        listed = db.execute(f"SELECT data_file, data_file_size_bytes FROM ducklake_list_files('{lake.LAKE}', '{table}')")
        files.update(dict(listed.fetchall()))
    return files


def keep_merging(writer: Any, every: float, stop: threading.Event, out: dict) -> None:
    """``merge_recent`` every ``every`` seconds, as the worker's timer runs it beside the commits
    (a cursor of the writer's connection, as a worker's threads have); ``out`` gets each merge's
    seconds and the bytes of the files it merged away (the commits only ever add files)."""
    db = writer.cursor()
    db.execute(f"USE {lake.LAKE}")
    try:
        while not stop.wait(every):
            before = live_files(db)
            started = time.perf_counter()
            merged, created = archive_maintenance.merge_recent(db)
            out["seconds"].append(time.perf_counter() - started)
            out["files_merged"] += merged
            out["files_created"] += created
            after = live_files(db)
            rewritten = sum(size for path, size in before.items() if path not in after)
            out["bytes_rewritten"] += rewritten
            print(f"  merge: {merged} files into {created}, {rewritten:,} bytes, {out['seconds'][-1]:.2f} s",
                  file=sys.stderr, flush=True)
    finally:
        db.close()


def keep_writing(root: LakeConfig, stop: multiprocessing.Event, results: multiprocessing.Queue) -> None:
    """Write into the same lake as a worker does, until told to stop: one commit a second (here
    2,000 messages a second with their mailbox rows), and the fresh files merged every
    ``Settings().archive_merge_seconds`` (none when 0) by a thread beside them. Puts what the
    merges did on ``results``."""
    from imflow.core.settings import Settings

    every = Settings().archive_merge_seconds
    db = lake.connect(root)
    db.execute("SET threads = 1")  # as a worker's (ArchiveReader's setting)
    merges: dict = {"every_s": every, "seconds": [], "files_merged": 0, "files_created": 0, "bytes_rewritten": 0}
    merging = threading.Event()
    merger = threading.Thread(target=keep_merging, args=(db, every, merging, merges), daemon=True)
    if every > 0:
        merger.start()
    # an hour of traffic made up front, a second of it (a slice) a commit, every kind of row a
    # worker's flush carries in one transaction
    traffic = Generator(Scenario(users=20_000, messages=2_000 * 3_600, chunk=2_000, seed=100, days=1,
                                 start_ms=Scenario().start_ms + 30 * 86_400_000))
    started_at, commits = time.monotonic(), 0
    while not stop.is_set() and commits < traffic.slices():
        started = time.monotonic()
        part = traffic.slice(commits)
        # write_tables and the merges take turns on lake.COMMITS, as in a worker
        write_tables(db, {CONTENT: part.content, MAILBOX: part.mailbox, READ_EVENTS: part.reads,
                          PACKETS_TABLE: part.packets, GRAB_EVENTS_TABLE: part.grabs})
        commits += 1
        time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
    merging.set()
    if merger.is_alive():
        merger.join(120)
    db.close()
    minutes = (time.monotonic() - started_at) / 60
    results.put({
        "every_s": every, "merges": len(merges["seconds"]), "files_merged": merges["files_merged"],
        "files_created": merges["files_created"],
        "merge_p50_s": round(percentile(merges["seconds"], 0.5), 2) if merges["seconds"] else None,
        "merge_max_s": round(max(merges["seconds"]), 2) if merges["seconds"] else None,
        "bytes_rewritten_per_min": round(merges["bytes_rewritten"] / minutes),
        "commits": commits,
    })


def history_pages(root: LakeConfig, pages: int, seconds: float) -> dict:
    """At least ``pages`` one-to-one history pages, for at least ``seconds``, while written."""
    with Archive(root) as archive:
        targets = archive.sql("""
            SELECT owner_uid, conversation, max(seq) + 1 AS before
            FROM (SELECT * FROM (SELECT * FROM im_user_msg_box WHERE box <> 'group') USING SAMPLE 5000 ROWS) GROUP BY 1, 2""").fetchall()
    spawn = multiprocessing.get_context("spawn")
    stop, results = spawn.Event(), spawn.Queue()
    writer = spawn.Process(target=keep_writing, args=(root, stop, results), daemon=True)
    writer.start()
    time.sleep(3)  # writing is under way
    files_before = lake_stats(root)["files"]
    reader = ArchiveReader(root)
    times, sizes = [], []
    rng = random.Random(1)
    started = time.monotonic()
    try:
        while len(times) < pages or time.monotonic() - started < seconds:
            owner, conversation, before = rng.choice(targets)
            start = time.perf_counter()
            # as the gateway calls it: it hides the owner's deletions itself, from Redis, which
            # knows one at once (the lake only once it is written), so the lake's deletions table
            # is not joined in (a page with it took twice as long)
            page = reader.history_page(owner, conversation, before, 50, include_deleted=True)
            times.append((time.perf_counter() - start) * 1000)
            sizes.append(len(page))
    finally:
        stop.set()
        merges = results.get(timeout=180)
        writer.join(60)
        reader.close()
    return {
        "pages": len(times), "seconds": round(time.monotonic() - started, 1),
        "page_p50_ms": round(percentile(times, 0.5), 2), "page_p99_ms": round(percentile(times, 0.99), 2),
        "mean_messages_per_page": round(statistics.mean(sizes), 1),
        "files_when_pages_start": files_before, "files_when_pages_end": lake_stats(root)["files"],
        "merges": merges,
    }


def mixed_settings():
    """The maintenance settings of a default deployment (retention off, a week of snapshots)."""
    from imflow.core.settings import Settings

    return Settings()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--pages", type=int, default=500, help="history pages: at least this many ...")
    parser.add_argument("--pages-seconds", type=float, default=40.0,
                        help="... and for at least this long (several merges: IMFLOW_ARCHIVE_MERGE_SECONDS apart)")
    parser.add_argument("--lake", type=Path, default=None,
                        help="an embedded lake already built (a folder): only maintenance and the history pages on it")
    parser.add_argument("--folder", type=Path, default=None, help="where to build the archives (default: a temporary folder, removed)")
    parser.add_argument("--json", type=Path, default=Path("artifacts/bench-archive.json"))
    parser.add_argument("--skip-one-to-one", action="store_true", help="only the mixed archive")
    parser.add_argument("--catalog", default=None, help="a DuckLake catalog (postgres:…) instead of embedded lakes in --folder")
    args = parser.parse_args()
    folder = args.folder or Path(tempfile.mkdtemp(prefix="imflow-archive-bench-"))
    summary: dict = {"messages": args.messages, "users": args.users, "catalog": "postgres" if args.catalog else "embedded"}
    lakes: list[LakeConfig] = []
    if args.lake:
        existing = LakeConfig.from_url(args.lake)
        summary = {"lake": str(args.lake), "maintenance_s": maintain(existing),
                   "history": history_pages(existing, args.pages, args.pages_seconds)}
        finish(args, summary)
        return
    try:
        if not args.skip_one_to_one:
            direct = target(args, folder, "direct")
            summary["ingest_one_to_one"] = ingest(direct, Scenario(users=args.users, messages=args.messages, group_share=0.0))
            lake.drop_catalog_schema(direct)
            shutil.rmtree(folder / "direct", ignore_errors=True)
        lakes.append(mixed := target(args, folder, "mixed"))
        summary["ingest_mixed"] = ingest(mixed, Scenario(users=args.users, messages=args.messages))
        summary["maintenance_s"] = maintain(mixed)
        summary["after_maintenance"] = lake_stats(mixed)
        print("queries ...", file=sys.stderr, flush=True)
        summary["queries"] = queries(mixed, args.runs)
        print("history pages while writing ...", file=sys.stderr, flush=True)
        summary["history"] = history_pages(mixed, args.pages, args.pages_seconds)
    finally:
        for config in lakes:
            lake.drop_catalog_schema(config)
        if args.folder is None:
            shutil.rmtree(folder, ignore_errors=True)
    finish(args, summary)


def maintain(config: LakeConfig) -> float:
    """One full maintenance run, as the worker's timer runs it; its seconds."""
    print("maintenance (as the worker timer runs it) ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    db = lake.connect(config)
    try:
        archive_maintenance.maintain(db, mixed_settings())
    finally:
        db.close()
    return round(time.perf_counter() - started, 1)


def finish(args: argparse.Namespace, summary: dict) -> None:
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
