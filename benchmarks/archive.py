"""The history archive at scale: simulated ingest rate, analyst queries on 10 million messages,
and one user's history page while the archive is being written.

    scripts/bench archive [--messages 10000000] [--users 1000000] [--runs 5] [--catalog CATALOG]

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
   conversations, while another process keeps committing new traffic into the same lake.
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
import time
import uuid
from pathlib import Path

from stack import percentile

from imflow.analytics import Archive
from imflow.core.storage import archive_maintenance, lake
from imflow.core.storage.archive import ArchiveReader
from imflow.core.storage.lake import LakeConfig
from imflow.simulate import Scenario, to_archive


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


def keep_writing(root: LakeConfig, stop: multiprocessing.Event) -> None:
    """Commit new traffic into the same lake as the archive agent does: one commit a second
    (here 2,000 messages a second with their mailbox rows), until told to stop."""
    seed = 100
    while not stop.is_set():
        started = time.monotonic()
        to_archive(root, Scenario(users=20_000, messages=2_000, chunk=2_000, seed=seed, days=1,
                                        start_ms=Scenario().start_ms + 30 * 86_400_000))
        seed += 1
        time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))


def history_pages(root: LakeConfig, pages: int) -> dict:
    with Archive(root) as archive:
        targets = archive.sql("""
            SELECT owner_uid, conversation, max(seq) + 1 AS before
            FROM (SELECT * FROM (SELECT * FROM im_user_msg_box WHERE box <> 'group') USING SAMPLE 5000 ROWS) GROUP BY 1, 2""").fetchall()
    spawn = multiprocessing.get_context("spawn")
    stop = spawn.Event()
    writer = spawn.Process(target=keep_writing, args=(root, stop), daemon=True)
    writer.start()
    time.sleep(3)  # writing is under way
    files_before = lake_stats(root)["files"]
    reader = ArchiveReader(root)
    times, sizes = [], []
    rng = random.Random(1)
    try:
        for _ in range(pages):
            owner, conversation, before = rng.choice(targets)
            start = time.perf_counter()
            page = reader.history_page(owner, conversation, before, 50)
            times.append((time.perf_counter() - start) * 1000)
            sizes.append(len(page))
    finally:
        stop.set()
        writer.join(60)
        reader.close()
    return {
        "pages": pages, "page_p50_ms": round(percentile(times, 0.5), 2), "page_p99_ms": round(percentile(times, 0.99), 2),
        "mean_messages_per_page": round(statistics.mean(sizes), 1),
        "files_added_meanwhile": lake_stats(root)["files"] - files_before,
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
    parser.add_argument("--pages", type=int, default=500)
    parser.add_argument("--folder", type=Path, default=None, help="where to build the archives (default: a temporary folder, removed)")
    parser.add_argument("--json", type=Path, default=Path("artifacts/bench-archive.json"))
    parser.add_argument("--skip-one-to-one", action="store_true", help="only the mixed archive")
    parser.add_argument("--catalog", default=None, help="a DuckLake catalog (postgres:…) instead of embedded lakes in --folder")
    args = parser.parse_args()
    folder = args.folder or Path(tempfile.mkdtemp(prefix="imflow-archive-bench-"))
    summary: dict = {"messages": args.messages, "users": args.users, "catalog": "postgres" if args.catalog else "embedded"}
    lakes: list[LakeConfig] = []
    try:
        if not args.skip_one_to_one:
            direct = target(args, folder, "direct")
            summary["ingest_one_to_one"] = ingest(direct, Scenario(users=args.users, messages=args.messages, group_share=0.0))
            lake.drop_catalog_schema(direct)
            shutil.rmtree(folder / "direct", ignore_errors=True)
        lakes.append(mixed := target(args, folder, "mixed"))
        summary["ingest_mixed"] = ingest(mixed, Scenario(users=args.users, messages=args.messages))
        print("maintenance (as the worker timer runs it) ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        db = lake.connect(mixed)
        try:
            archive_maintenance.maintain(db, mixed_settings())
        finally:
            db.close()
        summary["maintenance_s"] = round(time.perf_counter() - started, 1)
        summary["after_maintenance"] = lake_stats(mixed)
        print("queries ...", file=sys.stderr, flush=True)
        summary["queries"] = queries(mixed, args.runs)
        print("history pages while writing ...", file=sys.stderr, flush=True)
        summary["history"] = history_pages(mixed, args.pages)
    finally:
        for config in lakes:
            lake.drop_catalog_schema(config)
        if args.folder is None:
            shutil.rmtree(folder, ignore_errors=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
