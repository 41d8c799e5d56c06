"""The traffic simulator and the archive's commands: what analysts and operators rely on."""

from __future__ import annotations

import contextlib
from pathlib import Path

import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from imflow import archive_cli
from imflow.analytics import SOCIAL_SCHEMAS, Archive
from imflow.cli import cli
from imflow.core import accounts, contacts
from imflow.core.ids import EPOCH_MS, NODE_BITS, SEQUENCE_BITS
from imflow.core.services import Services
from imflow.core.settings import Settings
from imflow.core.storage import contacts as contacts_store
from imflow.core.storage import keys, social_records
from imflow.core.storage.lake import CONTENT, DELETIONS, LAKE, MAILBOX, LakeConfig, connect
from imflow.core.storage.redis_client import connect as connect_redis
from imflow.simulate import Generator, Scenario, social_graph, through_gateway, to_archive
from imflow.testing import eventually

SMALL = Scenario(users=3_000, messages=60_000, days=4, chunk=15_000, max_group=2_000, read_fan_out_threshold=100)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sim") / "archive"
    to_archive(root, SMALL)
    return root


@contextlib.contextmanager
def lake(root: Path):
    """A connection to the embedded lake in ``root``."""
    db = connect(LakeConfig.from_url(root))
    try:
        yield db
    finally:
        db.close()


def truths(archive: Archive) -> dict[str, object]:
    return {
        "messages": archive.scalar("SELECT count(*) FROM im_msg_content"),
        "mailbox": archive.scalar("SELECT count(*) FROM im_user_msg_box"),
        "deleted": archive.scalar("SELECT count(*) FROM im_user_msg_box WHERE deleted"),
        "reads": archive.scalar("SELECT count(*) FROM im_read_events"),
        "per_day": archive.messages_per("day")["messages"].tolist(),
        "edges": len(archive.contact_graph()),
        "packets": archive.scalar("SELECT count(*) FROM red_packets"),
    }


def lake_schema(archive: Archive, table: str) -> pa.Schema:
    """The columns and types of a table as the lake stores it."""
    return archive.db.execute(f"SELECT * FROM {LAKE}.main.{table} LIMIT 0").to_arrow_table().schema.remove_metadata()


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


# -- importing an archive of Parquet segments (imflow before the lake)

HOUR = 3_600_000


def segment(root: Path, table: str, shard: int, name: str, rows: list[dict]) -> None:
    """Write one segment file as the old archive agent (``seg-``) or compaction (``cmp-``) did."""
    folder = root / table / f"shard={shard:03d}"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / f"{name}.parquet")


def old_archive(root: Path) -> dict[str, int]:
    """An archive in the old layout with everything the old writers left: segments of several
    shards, batches sealed twice after a crash, a plugin table whose columns grew, and
    compaction's trash. Returns what each view must count."""
    start = EPOCH_MS + 1000 * HOUR
    mids = [((start + seq - EPOCH_MS) << (NODE_BITS + SEQUENCE_BITS)) for seq in range(1, 31)]
    content = [{"mid": mid, "conversation": "p:a:b", "seq": seq, "sender": "a", "client_msg_id": f"c{seq}", "type": "text",
                "body": '{"text":"hi"}', "sent_at_ms": start + seq - 2, "created_at_ms": start + seq}
               for seq, mid in enumerate(mids, 1)]
    mailbox = [{"owner_uid": owner, "conversation": "p:a:b", "mid": row["mid"], "seq": row["seq"], "box": box,
                "peer": "p:a:b" if box == "out" else "a", "created_at_ms": row["created_at_ms"]}
               for row in content for owner, box in (("a", "out"), ("b", "in"))]
    segment(root, CONTENT, 0, "cmp-0", content[:20])
    segment(root, CONTENT, 1, "seg-1", content[20:])
    segment(root, CONTENT, 1, "seg-2", content[25:])  # sealed again after a crash
    segment(root, MAILBOX, 0, "seg-1", [row for row in mailbox if row["owner_uid"] == "a"])
    segment(root, MAILBOX, 1, "seg-2", [row for row in mailbox if row["owner_uid"] == "b"])
    segment(root, MAILBOX, 1, "seg-3", [row for row in mailbox if row["owner_uid"] == "b"][:10])  # again
    deletion = {"owner_uid": "b", "mid": mids[0], "deleted_at_ms": start + 100}
    segment(root, DELETIONS, 1, "seg-1", [deletion])
    segment(root, DELETIONS, 1, "seg-2", [deletion])
    segment(root, "red_packets", 0, "seg-1", [{"mid": mids[0], "total_cents": 100}])
    segment(root, "red_packets", 0, "seg-2", [{"mid": mids[1], "total_cents": 200, "greeting": "恭喜发财"}])  # a new column
    segment(root, "red_packets", 0, "seg-3", [{"mid": mids[0], "total_cents": 100}])  # again
    segment(root, social_records.CONTACT_EVENTS, 0, "seg-1",
            [{"user": "a", "peer": "b", "kind": "requested", "note": "hi", "at_ms": start},
             {"user": "b", "peer": "a", "kind": "accepted", "note": "", "at_ms": start + 1}])
    segment(root, ".trash", 0, "cmp-old", content)  # compaction's leftovers: not a table
    return {"messages": 30, "mailbox": 60, "deleted": 1, "packets": 2, "edges": 1}


def counts(root: Path) -> dict[str, int]:
    """What the views of the lake in ``root`` count of what old_archive wrote."""
    with Archive(root) as archive:
        return {"messages": archive.scalar("SELECT count(*) FROM im_msg_content"),
                "mailbox": archive.scalar("SELECT count(*) FROM im_user_msg_box"),
                "deleted": archive.scalar("SELECT count(*) FROM im_user_msg_box WHERE deleted"),
                "packets": archive.scalar("SELECT count(*) FROM red_packets"), "edges": len(archive.contact_graph())}


@pytest.mark.parametrize("chunk_rows", [7, archive_cli.IMPORT_CHUNK_ROWS])
def test_an_old_archive_imports_once_however_often_it_is_imported(tmp_path: Path, chunk_rows: int,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archive_cli, "IMPORT_CHUNK_ROWS", chunk_rows)  # 7: many chunks a table
    expected = old_archive(tmp_path / "old")
    target = tmp_path / "lake"
    seen: list[tuple[str, int, int]] = []
    with lake(target) as db:
        first = {row.table: row for row in archive_cli.import_old(db, tmp_path / "old", lambda *step: seen.append(step))}
    assert set(first) == {CONTENT, MAILBOX, DELETIONS, "red_packets", social_records.CONTACT_EVENTS}
    assert (first[CONTENT].files, first[CONTENT].rows_read, first[CONTENT].rows_added) == (3, 35, 30)
    assert (first[MAILBOX].rows_read, first[MAILBOX].rows_added) == (70, 60)
    assert first[DELETIONS].rows_added == 1 and first["red_packets"].rows_added == 2
    assert counts(target) == expected
    last = {table: (done, total) for table, done, total in seen}
    assert all(done == total for done, total in last.values()) and last[MAILBOX] == (70, 70), "the bar ends full"
    with lake(target) as db:
        again = archive_cli.import_old(db, tmp_path / "old")
    assert [row.rows_added for row in again] == [0] * len(again), "a second import adds nothing"
    assert counts(target) == expected
    with Archive(target) as archive:
        assert archive.sql("SELECT greeting FROM red_packets ORDER BY total_cents").fetchall() == [(None,), ("恭喜发财",)]


def test_a_simulated_archive_in_the_old_layout_imports_whole(simulated: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The old layout of a realistic archive (content and mailboxes over shards, every other
    table, a replayed segment), imported in many chunks, reads as the original."""
    monkeypatch.setattr(archive_cli, "IMPORT_CHUNK_ROWS", 50_000)
    old = tmp_path / "old"
    with Archive(simulated) as archive:
        before = truths(archive)
        tables = [table for table in archive.tables() if archive.stored_rows(table)]
        for table in tables:
            shard = {CONTENT: "mid % 3", MAILBOX: "hash(owner_uid) % 2"}.get(table, "0")
            for n in range(3):
                (old / table / f"shard={n:03d}").mkdir(parents=True, exist_ok=True)
                archive.db.execute(f"COPY (SELECT * FROM {LAKE}.main.{table} WHERE {shard} = {n}) "
                                   f"TO '{old / table / f'shard={n:03d}' / 'cmp-1.parquet'}' (FORMAT parquet)")
        archive.db.execute(f"COPY (SELECT * FROM {LAKE}.main.{CONTENT} LIMIT 5000) "
                           f"TO '{old / CONTENT / 'shard=000' / 'seg-replayed.parquet'}' (FORMAT parquet)")
    with lake(tmp_path / "lake") as db:
        imported = {row.table: row for row in archive_cli.import_old(db, old)}
    assert set(imported) == set(tables)
    assert imported[CONTENT].rows_read == SMALL.messages + 5000 and imported[CONTENT].rows_added == SMALL.messages
    with Archive(tmp_path / "lake") as archive:
        assert truths(archive) == before


def test_the_commands(tmp_path: Path) -> None:
    runner = CliRunner()
    data = str(tmp_path / "data")
    made = runner.invoke(cli, ["simulate", "--messages", "20000", "--users", "800", "--days", "2", "--data-dir", data])
    assert made.exit_code == 0, made.output
    assert "20,000 messages" in made.output
    again = runner.invoke(cli, ["simulate", "--messages", "100", "--users", "50", "--data-dir", data])
    assert again.exit_code == 2 and "empty --data-dir" in again.output
    shown = runner.invoke(cli, ["archive", "stats", "--data-dir", data])
    assert shown.exit_code == 0 and "im_user_msg_box" in shown.output and "20,000" in shown.output, shown.output
    maintained = runner.invoke(cli, ["archive", "maintain", "--data-dir", data])
    assert maintained.exit_code == 0 and "maintained" in maintained.output, maintained.output
    expected = old_archive(tmp_path / "old")
    other = str(tmp_path / "other")
    for _ in range(2):  # the second time adds nothing
        imported = runner.invoke(cli, ["archive", "import", str(tmp_path / "old"), "--data-dir", other])
        assert imported.exit_code == 0 and "im_msg_content" in imported.output, imported.output
        assert counts(Path(other) / "archive") == expected
    empty = runner.invoke(cli, ["archive", "import", data, "--data-dir", other])  # a lake's folder: no old segments
    assert empty.exit_code == 2 and "no <table>/shard=NNN" in empty.output
    for gone in ("compact", "retention", "reshard"):  # the maintenance timer's jobs now
        assert runner.invoke(cli, ["archive", gone, "--data-dir", data]).exit_code == 2


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
    archive = Archive(stack.lake_config())  # the stack's own lake (PostgreSQL + S3 under scripts/test)
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
    with Archive(simulated) as archive:
        for table, schema in SOCIAL_SCHEMAS.items():  # the columns and types the live server writes
            assert lake_schema(archive, table) == schema, table
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
    redis = connect_redis(None)
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
