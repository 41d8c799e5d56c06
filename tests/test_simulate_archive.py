"""The traffic simulator and archive housekeeping: what analysts and operators rely on."""

from __future__ import annotations

import shutil
from pathlib import Path

import orjson
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from imflow.analytics import SOCIAL_SCHEMAS, Archive
from imflow.cli import cli
from imflow.core import accounts, contacts
from imflow.core.services import Services
from imflow.core.settings import Settings
from imflow.core.storage import archive_housekeeping as housekeeping
from imflow.core.storage import contacts as contacts_store
from imflow.core.storage import keys, social_records
from imflow.core.storage.redis_client import connect
from imflow.core.storage.archive import COMPACTED, CONTENT, MAILBOX, SEALED, ArchiveLayout, ArchiveReader
from imflow.simulate import Generator, Scenario, social_graph, through_gateway, to_archive
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
        for table in SOCIAL_SCHEMAS:
            rows = f'SELECT count(*), sum(hash(COLUMNS(*))) FROM {table}'
            assert a.sql(rows).fetchall() == b.sql(rows).fetchall(), table


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


async def test_simulated_traffic_through_a_running_imflow_reaches_its_archive(stack, tmp_path: Path) -> None:
    scenario = Scenario(users=12, messages=80, days=1, chunk=80, max_group=6, red_packet_share=0.05, seed=3)
    counts = await through_gateway(stack.url(), stack.token, scenario)
    assert counts["messages"] == 80 and counts["groups"] >= 1
    to_archive(tmp_path / "simulated", scenario)
    with Archive(tmp_path / "simulated") as simulated:
        changes = sum(simulated.scalar(f"SELECT count(*) FROM {table}") for table in ("im_contact_events", "im_block_events"))
        removals_by_blocks = simulated.scalar("""SELECT count(*) FROM im_contact_events c JOIN im_block_events b
                                                 USING ("user", peer, at_ms) WHERE b.kind = 'blocked'""")
        expected_graph = simulated.contact_graph()[["user_a", "user_b"]].values.tolist()
    assert counts["contact_changes"] == changes - removals_by_blocks > 10 and len(expected_graph) > 5
    archive = Archive(Path(stack.env["IMFLOW_DATA_DIR"]) / "archive")
    try:
        async def graph_archived() -> bool:  # the server's own times, the same order: the same graph
            return archive.contact_graph()[["user_a", "user_b"]].values.tolist() == expected_graph

        await eventually(graph_archived, timeout=30)
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


# -- the social graph

def test_the_simulated_social_graph_grows_plausibly(simulated: Path) -> None:
    for table, schema in SOCIAL_SCHEMAS.items():  # the columns and types the live server writes
        assert {pq.read_schema(path).remove_metadata() for path in ArchiveLayout(simulated).files(table)} == {schema}, table
    with Archive(simulated) as archive:
        # every sender has an account, created before the messages start and never deactivated
        late = archive.scalar("""
            WITH first AS (SELECT sender, min(created_at_ms) AS first_ms FROM im_msg_content GROUP BY 1),
                 made AS (SELECT "user", min(at_ms) FILTER (WHERE kind = 'created') AS made_ms,
                                 count(*) FILTER (WHERE kind = 'deactivated') AS deactivations FROM im_account_events GROUP BY 1)
            SELECT count(*) FROM first LEFT JOIN made ON made."user" = first.sender
            WHERE made_ms IS NULL OR made_ms >= (SELECT min(created_at_ms) FROM im_msg_content) OR deactivations > 0""")
        assert late == 0
        # no block between two users who message each other (their sends would be refused)
        assert archive.scalar("""
            SELECT count(*) FROM im_block_events b JOIN im_msg_content m
              ON m.conversation = 'p:' || least(b."user", b.peer) || ':' || greatest(b."user", b.peer)""") == 0
        # growth: accounts sign up over the weeks before the messages and while they run;
        # edges follow, and the last bucket's count is the graph now
        growth = archive.contact_graph_growth("week")
        assert growth["accounts"].is_monotonic_increasing and len(growth) >= SMALL.social_days // 7
        assert growth["accounts"].iloc[len(growth) // 2] < growth["accounts"].iloc[-1] / 2, "sign-ups speed up"
        assert growth["edges"].iloc[-1] == len(archive.contact_graph()) > 1.5 * growth["accounts"].iloc[-1]
        # preferential attachment: a skewed degree distribution, far below the contacts limit
        degrees = archive.contact_degrees()["degree"]
        assert degrees.max() >= 15 * degrees.median() and degrees.max() < SMALL.contacts_max
        assert degrees.nlargest(len(degrees) // 100).sum() > 0.08 * degrees.sum(), "the top 1 % hold many contacts"
        kinds = archive.contact_events()["kind"].value_counts()
        assert 0.6 < kinds["accepted"] / kinds["requested"] < 0.9
        assert kinds["declined"] > 0 and kinds["cancelled"] > 0 and kinds["removed"] > 0
        blocks = archive.block_events()["kind"].value_counts()
        assert blocks["blocked"] > blocks["unblocked"] > 0


CHANGES = {  # kind: (the service call, its command)
    "created": (accounts.create, accounts.CreateAccount), "updated": (accounts.update, accounts.UpdateProfile),
    "deactivated": (accounts.deactivate, accounts.Deactivate), "reactivated": (accounts.reactivate, accounts.Reactivate),
    "requested": (contacts.request, contacts.Request), "accepted": (contacts.accept, contacts.Accept),
    "declined": (contacts.decline, contacts.Decline), "cancelled": (contacts.cancel, contacts.Cancel),
    "removed": (contacts.remove, contacts.Remove), "blocked": (contacts.block, contacts.Block),
    "unblocked": (contacts.unblock, contacts.Unblock),
}


async def replay(services: Services, row: dict) -> None:
    """Make the change an archive row records, through the live service."""
    call, command = CHANGES[row["kind"]]
    if row["kind"] in ("created", "updated"):
        fields = {"display_name": row["display_name"], "custom": orjson.loads(row["custom"])}
        if row["avatar_url"]:
            fields["avatar_url"] = row["avatar_url"]
        await call(services, command(row["user"], accounts.profile_fields(fields, 4096)))
    elif row["kind"] == "requested":
        await call(services, command(row["user"], row["peer"], note=row["note"]))
    elif "peer" in row:
        await call(services, command(row["user"], row["peer"]))
    else:
        await call(services, command(row["user"]))


async def test_the_simulated_social_graph_is_what_the_live_server_writes(tmp_path: Path) -> None:
    """Played through the live services (core/accounts.py and core/contacts.py, registered
    accounts, a small contacts limit the simulator keeps to), every simulated change is
    accepted and records the very rows the simulator wrote; the graph Redis ends with is the
    archive's contact graph."""
    scenario = Scenario(users=150, messages=1_500, days=3, chunk=1_500, max_group=60, social_days=20, contacts_max=8, seed=5,
                        late_account_share=0.3, deactivate_share=0.4)
    root = tmp_path / "archive"
    to_archive(root, scenario)
    with Archive(root) as archive:
        simulated = {table: archive.sql(f"SELECT * FROM {table}").df() for table in SOCIAL_SCHEMAS}
        graph = archive.contact_graph()
        most = archive.scalar("""SELECT max(n) FROM (SELECT "user", count(*) AS n FROM (
            SELECT "user" FROM im_contact_events WHERE kind = 'accepted'
            UNION ALL SELECT peer FROM im_contact_events WHERE kind = 'accepted') GROUP BY 1)""")
    assert most == scenario.contacts_max, "the simulator met the limit and kept to it"
    assert {"deactivated", "reactivated", "updated"} <= set(simulated[social_records.ACCOUNT_EVENTS]["kind"])
    assert {"unblocked"} <= set(simulated[social_records.BLOCK_EVENTS]["kind"])
    redis = connect(None)
    services = Services(Settings(_env_file=None, topic_partitions=1, accounts="registered", contacts_max=8), redis)
    for change in social_graph(scenario, Generator(scenario).pop).changes():
        services.clock = lambda at_ms=change["at_ms"]: at_ms
        await replay(services, change)
    recorded: dict[str, list] = {table: [] for table in SOCIAL_SCHEMAS}
    for raw in await redis.lrange(keys.archive_pending(services.settings.app_id, 0), 0, -1):
        record = orjson.loads(raw)
        recorded[record["table"]] += record["rows"]
    for table, rows in simulated.items():
        live = pd.DataFrame(recorded[table], columns=rows.columns).values.tolist()
        assert sorted(map(tuple, live)) == sorted(map(tuple, rows.values.tolist())), table
    users = sorted(set(simulated[social_records.ACCOUNT_EVENTS]["user"]))
    live_graph = {tuple(sorted((user, peer))) for user in users for peer in await contacts_store.contacts_of(redis, user)}
    assert live_graph == set(zip(graph["user_a"], graph["user_b"], strict=True)) and len(live_graph) > 100
    await redis.aclose()
