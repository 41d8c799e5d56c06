"""The traffic simulator and archive housekeeping: what analysts and operators rely on."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from imflow.analytics import Archive
from imflow.cli import cli
from imflow.core.storage import archive_housekeeping as housekeeping
from imflow.core.storage.archive import COMPACTED, CONTENT, MAILBOX, SEALED, ArchiveLayout, ArchiveReader
from imflow.simulate import Scenario, through_gateway, to_archive
from imflow.testing import eventually

SMALL = Scenario(users=3_000, messages=60_000, days=4, chunk=15_000, max_group=2_000, read_fan_out_threshold=100)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sim") / "archive"
    to_archive(root, SMALL)
    return root


def copy(root: Path, tmp_path: Path) -> Path:
    target = tmp_path / "archive"
    shutil.copytree(root, target)
    return target


def truths(archive: Archive) -> dict[str, object]:
    return {
        "messages": archive.scalar("SELECT count(*) FROM im_msg_content"),
        "mailbox": archive.scalar("SELECT count(*) FROM im_user_msg_box"),
        "reads": archive.scalar("SELECT count(*) FROM im_read_events"),
        "per_day": archive.messages_per("day")["messages"].tolist(),
    }


def test_the_simulated_archive_holds_what_the_real_one_would(simulated: Path) -> None:
    with Archive(simulated) as archive:
        assert archive.scalar("SELECT count(DISTINCT mid) FROM im_msg_content") == SMALL.messages
        # seqs are gap-free per conversation and follow time
        gaps = archive.scalar("""
            SELECT count(*) FROM (SELECT conversation, max(seq) AS top, count(*) AS n, min(seq) AS low FROM im_msg_content GROUP BY 1)
            WHERE top <> n OR low <> 1""")
        assert gaps == 0
        disorder = archive.scalar("""
            SELECT count(*) FROM (SELECT created_at_ms < lag(created_at_ms) OVER (PARTITION BY conversation ORDER BY seq) AS back
                                  FROM im_msg_content) WHERE back""")
        assert disorder == 0
        # mailbox rows: 2 per one-to-one message, one per member below the threshold, one above
        economics = archive.fan_out_economics().set_index("band")
        assert (economics.loc[["3-9", "10-29", "30-99"], "rows_per_message"] > 2.9).all()
        big = economics.loc[[band for band in economics.index if band in ("100-299", "300-999", "1000+")]]
        assert (big["rows_per_message"] == 1).all() and (big["write_rows_per_message"] >= 100).all()
        direct = archive.scalar("SELECT count(*) / count(DISTINCT mid) FROM im_user_msg_box WHERE conversation LIKE 'p:%'")
        assert direct == 2
        # a daily rhythm: the evening peak hour has several times the traffic of the night's low
        hourly = archive.sql("SELECT hour(created_at) AS h, count(*) AS n FROM im_msg_content GROUP BY 1 ORDER BY 1").df()
        assert hourly["n"].max() > 8 * hourly["n"].min()
        # Zipf-like activity: the busiest 10 % of senders send most messages
        top = archive.scalar("""
            WITH per AS (SELECT sender, count(*) AS n FROM im_msg_content GROUP BY 1)
            SELECT sum(n) FILTER (WHERE rank <= (SELECT count(*) FROM per) / 10) / sum(n)
            FROM (SELECT n, row_number() OVER (ORDER BY n DESC) AS rank FROM per)""")
        assert top > 0.5
        stats = archive.red_packet_stats()
        assert (stats["grabbed_cents"] + stats["refunded_cents"] == stats["cents"]).all(), "no cent lost or made"
        assert archive.live_room_peaks()["peak_viewers"].max() <= 1_000_000
        assert len(archive.unread_backlog()) > 0 and archive.read_delay_minutes()["minutes"].min() >= 0


def test_the_same_seed_gives_the_same_traffic(tmp_path: Path) -> None:
    scenario = Scenario(users=500, messages=5_000, days=2, chunk=2_000, max_group=300, seed=7)
    to_archive(tmp_path / "a", scenario)
    to_archive(tmp_path / "b", scenario)
    with Archive(tmp_path / "a") as a, Archive(tmp_path / "b") as b:
        query = "SELECT sum(hash(mid, conversation, seq, sender, body)) FROM im_msg_content"
        assert a.scalar(query) == b.scalar(query)
        assert a.scalar("SELECT count(*) FROM im_user_msg_box") == b.scalar("SELECT count(*) FROM im_user_msg_box")


def test_compaction_merges_segments_and_keeps_every_row_once(simulated: Path, tmp_path: Path) -> None:
    root = copy(simulated, tmp_path)
    layout = ArchiveLayout(root)
    # as the archive agent leaves them: sealed segments, one of them sealed twice after a crash
    for path in map(Path, layout.files(CONTENT) + layout.files(MAILBOX)):
        path.rename(path.with_name(path.name.replace(COMPACTED, SEALED)))
    replayed = Path(layout.files(CONTENT)[0])
    shutil.copy(replayed, replayed.with_name(f"{SEALED}replayed.parquet"))
    replayed_rows = pq.ParquetFile(replayed).metadata.num_rows
    with Archive(root) as archive:
        before = truths(archive)
        assert housekeeping.compact(root, grace_seconds=0).segments_in == 0, "fresh segments wait (a replay may follow)"
        report = housekeeping.compact(root, grace_seconds=0, min_age_seconds=0)
        assert report.segments_in > report.segments_out > 0
        assert report.rows_in - report.rows_out == replayed_rows, "the replayed rows went"
        assert truths(archive) == before, "an open archive sees the same data after compaction"
    for table in (CONTENT, MAILBOX):
        for folder in housekeeping.shard_dirs(root, table):
            assert [p.name[:4] for p in folder.glob("*.parquet")] == [COMPACTED]
    assert housekeeping.compact(root, grace_seconds=0, min_age_seconds=0).segments_in == 0, "nothing left to do"


def test_retention_drops_old_days_and_keeps_the_membership_record(simulated: Path, tmp_path: Path) -> None:
    root = copy(simulated, tmp_path)
    with Archive(root) as archive:
        first_ms = archive.scalar("SELECT min(created_at_ms) FROM im_msg_content")
        members = archive.scalar("SELECT count(*) FROM im_group_events")
        now = first_ms + 4 * 86_400_000
        report = housekeeping.retention(root, keep_days=2, now_ms=now, grace_seconds=0)
        assert report.rows_in > report.rows_out
        cutoff = now - 2 * 86_400_000
        for table, column in (("im_msg_content", "created_at_ms"), ("im_user_msg_box", "created_at_ms"), ("im_read_events", "at_ms")):
            assert archive.scalar(f"SELECT min({column}) FROM {table}") >= cutoff, table
        assert archive.scalar("SELECT count(*) FROM im_msg_content") > 0
        assert archive.scalar("SELECT count(*) FROM im_group_events") == members


def test_resharding_moves_rows_and_history_reads_the_new_layout(simulated: Path, tmp_path: Path) -> None:
    root = copy(simulated, tmp_path)
    with Archive(root) as archive:
        before = truths(archive)
        user, conversation, top = archive.sql(
            "SELECT owner_uid, conversation, max(seq) FROM im_user_msg_box WHERE conversation LIKE 'p:%' GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 1"
        ).fetchall()[0]
    report = housekeeping.reshard(root, content_shards=3, mailbox_shards=2, grace_seconds=0)
    assert report.rows_in == report.rows_out
    assert {p.name for p in housekeeping.shard_dirs(root, CONTENT)} == {"shard=000", "shard=001", "shard=002"}
    assert {p.name for p in housekeeping.shard_dirs(root, MAILBOX)} == {"shard=000", "shard=001"}
    with Archive(root) as archive:
        assert truths(archive) == before
    reader = ArchiveReader(ArchiveLayout(root, 3, 2))
    try:
        page = reader.history_page(user, conversation, top + 1, 20)
    finally:
        reader.close()
    assert [m["seq"] for m in page] == list(range(top, max(top - 20, 0), -1))


def test_the_commands(tmp_path: Path) -> None:
    runner = CliRunner()
    data = str(tmp_path / "data")
    made = runner.invoke(cli, ["simulate", "--messages", "20000", "--users", "800", "--days", "2", "--data-dir", data])
    assert made.exit_code == 0, made.output
    assert "20,000 messages" in made.output
    again = runner.invoke(cli, ["simulate", "--messages", "100", "--users", "50", "--data-dir", data])
    assert again.exit_code == 2 and "empty --data-dir" in again.output
    shown = runner.invoke(cli, ["archive", "stats", "--data-dir", data])
    assert shown.exit_code == 0 and "im_user_msg_box" in shown.output
    for command in (["compact", "--min-age", "0"], ["retention", "--keep-days", "1"], ["reshard", "--content-shards", "2", "--mailbox-shards", "2"]):
        done = runner.invoke(cli, ["archive", *command, "--data-dir", data, "--grace", "0"])
        assert done.exit_code == 0, (command, done.output)
        assert "rows in" in done.output
    refused = runner.invoke(cli, ["archive", "retention", "--keep-days", "0", "--data-dir", data])
    assert refused.exit_code == 2 and "above 0" in refused.output


async def test_simulated_traffic_through_a_running_imflow_reaches_its_archive(stack) -> None:
    scenario = Scenario(users=12, messages=80, days=1, chunk=80, max_group=6, red_packet_share=0.05, seed=3)
    counts = await through_gateway(stack.url(), stack.token, scenario)
    assert counts["messages"] == 80 and counts["groups"] >= 1
    archive = Archive(Path(stack.env["IMFLOW_DATA_DIR"]) / "archive")
    try:
        async def archived() -> int:
            return archive.scalar("SELECT count(*) FROM im_msg_content WHERE client_msg_id LIKE 'sim-%'") >= 80

        await eventually(archived, timeout=30)
        assert archive.scalar("SELECT count(*) FROM red_packets") >= 1
        assert counts["reads"] > 0

        async def reads_archived() -> bool:  # the gateway archives every read report
            return archive.scalar("SELECT count(*) FROM im_read_events") >= counts["reads"]

        await eventually(reads_archived, timeout=30)
    finally:
        archive.close()
