"""The history archive for analysts: a DuckLake opened in one line, as DuckDB views and pandas DataFrames.

    from imflow.analytics import Archive
    archive = Archive.open()                   # the lake of imflow's settings (IMFLOW_ARCHIVE_*, IMFLOW_S3_*)
    archive = Archive.open("data/archive")     # an embedded lake in a folder; or a catalog string
    archive.messages_per("hour")               # a DataFrame
    archive.sql("SELECT sender, count(*) FROM im_msg_content GROUP BY 1").df()
    Archive.open(at=datetime(2026, 11, 1)).messages_per("day")   # the archive as it was then

Views (columns in docs/archive.md): ``im_msg_content`` (one row per message, as sent),
``im_msg_latest`` (each message as it is now: the latest edit, or the tombstone of a recall),
``im_msg_versions`` (every recall and edit), ``im_user_msg_box`` (one row per mailbox entry,
with a ``deleted`` flag), the social graph's history (``im_account_events``, ``im_contact_events``, ``im_block_events``; empty views while
nothing was recorded) and one view per plugin table (``red_packets``, ``red_packet_events``).
Messages and mailbox rows are written exactly once (core/storage/archive_queue.py), so their
views read the tables as they are; deletions and the other tables are written at least once,
and their views de-duplicate. Every query sees the lake's latest commit (or the snapshot
``at`` names).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import duckdb
import pyarrow as pa

try:
    import pandas as pd
except ImportError as exc:  # the [analytics] extra: the server runs without it
    raise ImportError("imflow.analytics needs pandas: pip install 'imflow[analytics]'") from exc

from imflow.core.storage.lake import (
    CONTENT,
    CONTENT_SCHEMA,
    DEDUP_KEYS,
    DELETIONS,
    EXACTLY_ONCE,
    LAKE,
    MAILBOX,
    MAILBOX_SCHEMA,
    MARKS,
    VERSIONS,
    VERSIONS_SCHEMA,
    LakeConfig,
    connect,
)
from imflow.core.storage.social_records import ACCOUNT_EVENTS, BLOCK_EVENTS, CONTACT_EVENTS

Bucket = Literal["minute", "hour", "day", "week", "month"]
_DUCK_TYPES = {"int64": "BIGINT", "string": "VARCHAR"}
# the columns core/storage/social_records.py writes (tests/test_analytics.py holds them to it):
# an archive with no such row yet still has the view, empty
SOCIAL_SCHEMAS = {
    ACCOUNT_EVENTS: pa.schema([("user", pa.string()), ("kind", pa.string()), ("display_name", pa.string()),
                               ("avatar_url", pa.string()), ("custom", pa.string()), ("at_ms", pa.int64())]),
    CONTACT_EVENTS: pa.schema([("user", pa.string()), ("peer", pa.string()), ("kind", pa.string()), ("note", pa.string()),
                               ("at_ms", pa.int64())]),
    BLOCK_EVENTS: pa.schema([("user", pa.string()), ("peer", pa.string()), ("kind", pa.string()), ("at_ms", pa.int64())]),
}
# Every change of a contact edge, per unordered pair (user_a < user_b): 'accepted' links, a
# removal or a block (either way) unlinks; requests, declines and cancels leave edges alone and
# an unblock restores nothing. At one millisecond an acceptance counts before an unlinking: the
# server cannot accept after a block or a removal at the same moment, only the other way round.
_EDGE_CHANGES = """
    SELECT least("user", peer) AS user_a, greatest("user", peer) AS user_b, at_ms, kind = 'accepted' AS linked
    FROM im_contact_events WHERE kind IN ('accepted', 'removed')
    UNION ALL
    SELECT least("user", peer), greatest("user", peer), at_ms, false FROM im_block_events WHERE kind = 'blocked'
"""
# each change with the edge's state before it; ``{until}``: a condition on at_ms, or TRUE
_EDGE_STATES = f"""
    SELECT *, lag(linked, 1, false) OVER (PARTITION BY user_a, user_b ORDER BY at_ms, linked DESC) AS was_linked
    FROM ({_EDGE_CHANGES}) WHERE {{until}}
"""


# Each message as it is now: the latest edit's body (version 1 = as sent), a recalled one's
# body '{}' (im_msg_content keeps every original; im_msg_versions every change)
_LATEST = """
    CREATE OR REPLACE VIEW im_msg_latest AS
    WITH edits AS (
        SELECT mid, max(version) AS version, arg_max(body, version) AS body, arg_max(at_ms, version) AS edited_at_ms
        FROM im_msg_versions WHERE kind = 'edit' GROUP BY mid
    ), recalls AS (
        SELECT mid, min(at_ms) AS recalled_at_ms, arg_min(by_user, at_ms) AS recalled_by
        FROM im_msg_versions WHERE kind = 'recall' GROUP BY mid
    )
    SELECT c.* REPLACE (CASE WHEN r.mid IS NULL THEN coalesce(e.body, c.body) ELSE '{}' END AS body),
           coalesce(e.version, 1) AS version, e.edited_at_ms, r.recalled_at_ms, r.recalled_by,
           r.mid IS NOT NULL AS recalled
    FROM im_msg_content c LEFT JOIN edits e ON e.mid = c.mid LEFT JOIN recalls r ON r.mid = c.mid
"""


def _empty(schema: pa.Schema) -> str:
    """A typed, empty SELECT for a table nothing was written to yet."""
    columns = ", ".join(f"NULL::{_DUCK_TYPES[str(field.type)]} AS {field.name}" for field in schema)
    return f"SELECT {columns} WHERE false"


def _once(table: str) -> str:
    """A lake table's rows, each once: as they are for the exactly-once tables, else de-duplicated."""
    source = f"{LAKE}.main.{table}"
    if table in EXACTLY_ONCE:
        return source
    if key := DEDUP_KEYS.get(table):
        return f"(SELECT * FROM {source} QUALIFY row_number() OVER (PARTITION BY {key}) = 1)"
    return f"(SELECT DISTINCT * FROM {source})"


class Archive:
    """The archive as views over the lake (``sql``, ``scalar``) and the questions analysts ask
    first, each a DataFrame. ``Archive(folder_or_catalog)`` is ``Archive.open`` of it.

    A connection of its own, attached read-write (it creates an empty lake where there was
    none, so a new archive has empty views) or, with ``at``, read-only at that snapshot. Not
    thread-safe: one per thread."""

    def __init__(self, root: str | Path | LakeConfig = "data/archive", *, at: int | datetime | None = None) -> None:
        self.config = root if isinstance(root, LakeConfig) else LakeConfig.from_url(root)
        self.at = at
        self.db = connect(self.config, create=at is None, snapshot=at)
        self.db.execute("USE memory")  # the views live here, beside the lake, never in its catalog
        self._shape: object = None  # the lake's tables and columns the views were made for
        self._tables: set[str] = set()
        self.refresh()

    @classmethod
    def open(cls, url: str | Path | None = None, *, at: int | datetime | None = None, **overrides: Any) -> Archive:
        """Open a lake: ``url`` a catalog string (``sqlite:PATH``, ``postgres:dbname=imflow
        host=…``, ``duckdb:PATH``) or a folder (the embedded layout in it); None: the lake of
        imflow's settings (environment, ``.env``). ``at``: a snapshot version (see
        ``snapshots()``) or a datetime, to read the archive as it was then (read-only).
        ``overrides``: LakeConfig fields (``data_path``, ``schema``, ``s3_endpoint``, …).
        Raises LakeError (a missing extension package, an unknown catalog kind) or
        duckdb.Error (the catalog or the data cannot be reached; ``at`` before the oldest
        snapshot kept)."""
        if url is None:
            from imflow.core.settings import Settings

            return cls(LakeConfig.from_settings(Settings()).with_(**overrides), at=at)
        return cls(LakeConfig.from_url(url, **overrides), at=at)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def refresh(self) -> None:
        """(Re)define the views when the lake's tables changed (a plugin's first rows, a new
        column, the first deletion); ``sql()`` does it before each query."""
        columns = self.db.execute(
            "SELECT table_name, list(column_name ORDER BY column_index) FROM duckdb_columns() "
            "WHERE database_name = $lake AND schema_name = 'main' GROUP BY 1 ORDER BY 1", {"lake": LAKE}).fetchall()
        tables = self._tables = {name for name, _ in columns}
        deleted = DELETIONS in tables and bool(self.db.execute(f"SELECT 1 FROM {LAKE}.main.{DELETIONS} LIMIT 1").fetchall())
        shape = (columns, deleted)
        if shape == self._shape:
            return
        content = _once(CONTENT) if CONTENT in tables else f"({_empty(CONTENT_SCHEMA)})"
        mailbox = _once(MAILBOX) if MAILBOX in tables else f"({_empty(MAILBOX_SCHEMA)})"
        self.db.execute(f"""
            CREATE OR REPLACE VIEW im_msg_content AS
            SELECT *, epoch_ms(created_at_ms) AS created_at, epoch_ms(sent_at_ms) AS sent_at FROM {content}
        """)
        if deleted:
            self.db.execute(f"""
                CREATE OR REPLACE VIEW im_user_msg_box AS
                SELECT box.*, epoch_ms(box.created_at_ms) AS created_at, deleted.mid IS NOT NULL AS deleted
                FROM {mailbox} AS box LEFT JOIN (SELECT DISTINCT owner_uid, mid FROM {LAKE}.main.{DELETIONS}) AS deleted
                USING (owner_uid, mid)
            """)
        else:  # nobody deleted anything: no join over every mailbox row
            self.db.execute(f"""
                CREATE OR REPLACE VIEW im_user_msg_box AS
                SELECT *, epoch_ms(created_at_ms) AS created_at, false AS deleted FROM {mailbox}
            """)
        versions = _once(VERSIONS) if VERSIONS in tables else f"({_empty(VERSIONS_SCHEMA)})"
        self.db.execute(f"CREATE OR REPLACE VIEW {VERSIONS} AS SELECT * FROM {versions}")
        self.db.execute(_LATEST)
        for table in sorted(tables - {CONTENT, MAILBOX, DELETIONS, MARKS, VERSIONS}):  # the marks are the writer's own
            if table.isidentifier():
                self.db.execute(f"CREATE OR REPLACE VIEW {table} AS SELECT * FROM {_once(table)}")
        for table, schema in SOCIAL_SCHEMAS.items():
            if table not in tables:
                self.db.execute(f"CREATE OR REPLACE VIEW {table} AS {_empty(schema)}")
        self._shape = shape

    def tables(self) -> list[str]:
        """The views there are, sorted."""
        self.refresh()
        return [row[0] for row in self.db.execute(
            "SELECT view_name FROM duckdb_views() WHERE NOT internal AND database_name = 'memory' ORDER BY 1").fetchall()]

    def sql(self, query: str) -> duckdb.DuckDBPyRelation:
        """Any SQL over the views; ``.df()`` on the result gives a DataFrame, ``.pl()`` polars.
        Every query reads the lake's latest commit (or the snapshot of ``at``)."""
        self.refresh()
        return self.db.sql(query)

    def scalar(self, query: str) -> object:
        """The single value a query returns (a count, a maximum)."""
        return self.sql(query).fetchall()[0][0]

    def stored_rows(self, table: str = CONTENT) -> int:
        """Rows a lake table holds as written (cheap: no de-duplication, the counts come from the
        files' metadata; for content and mailbox, written once each, what their views hold); 0
        for a table nothing was written to yet."""
        self.refresh()
        if table not in self._tables:
            return 0
        return self.db.execute(f"SELECT count(*) FROM {LAKE}.main.{table}").fetchall()[0][0]

    def snapshots(self) -> pd.DataFrame:
        """The lake's snapshots, oldest first: snapshot_id (a version for ``at``),
        snapshot_time (with time zone), schema_version, changes (what each commit did: tables
        created, inserted into, deleted from), author, commit_message, commit_extra_info.
        Snapshots older than ``IMFLOW_ARCHIVE_SNAPSHOT_DAYS`` are expired by maintenance."""
        snapshots = self.db.sql(f"SELECT * FROM ducklake_snapshots('{LAKE}') ORDER BY snapshot_id")
        # through Arrow: DuckDB's own .df() of a time zone column calls a pandas API pandas 3.1 deprecates
        return snapshots.to_arrow_table().to_pandas()

    # -- the questions analysts ask first

    def messages(self, conversation: str | None = None) -> pd.DataFrame:
        """Messages as they are now (view ``im_msg_latest``), by conversation and seq: the latest
        edit's ``body`` and ``version`` (1: as sent), ``edited_at_ms``; a recalled one's body
        ``{}`` with ``recalled_at_ms``, ``recalled_by`` and ``recalled`` true. ``conversation``:
        that one only. What was first sent stays in ``im_msg_content``."""
        where = "WHERE conversation = $conversation" if conversation is not None else ""
        self.refresh()
        query = f"SELECT * FROM im_msg_latest {where} ORDER BY conversation, seq"
        return self.db.execute(query, {"conversation": conversation} if conversation is not None else {}).df()

    def message_versions(self, conversation: str | None = None) -> pd.DataFrame:
        """Every recall and edit (view ``im_msg_versions``), by conversation, seq and version:
        mid, conversation, seq, version (an edit's new one; a recall's, the one it ended), kind
        ('edit' or 'recall'), body (JSON; '{}' for a recall), by_user, at_ms. ``conversation``:
        that one only."""
        where = "WHERE conversation = $conversation" if conversation is not None else ""
        self.refresh()
        query = f"SELECT * FROM im_msg_versions {where} ORDER BY conversation, seq, version, kind DESC"
        return self.db.execute(query, {"conversation": conversation} if conversation is not None else {}).df()

    def messages_per(self, bucket: Bucket = "hour") -> pd.DataFrame:
        return self.sql(f"""
            SELECT date_trunc('{bucket}', created_at) AS {bucket}, count(*) AS messages
            FROM im_msg_content GROUP BY 1 ORDER BY 1
        """).df()

    def active_users_per(self, bucket: Bucket = "day") -> pd.DataFrame:
        """Users who sent at least one message in each bucket."""
        return self.sql(f"""
            SELECT date_trunc('{bucket}', created_at) AS {bucket}, count(DISTINCT sender) AS active_users
            FROM im_msg_content GROUP BY 1 ORDER BY 1
        """).df()

    def top_conversations(self, n: int = 10) -> pd.DataFrame:
        return self.sql(f"""
            SELECT conversation, count(*) AS messages, count(DISTINCT sender) AS senders,
                   min(created_at) AS first_message, max(created_at) AS last_message
            FROM im_msg_content GROUP BY 1 ORDER BY messages DESC, conversation LIMIT {int(n)}
        """).df()

    def fan_out_cost(self) -> pd.DataFrame:
        """Per conversation: messages, mailbox rows written, and rows per message."""
        return self.sql("""
            SELECT conversation, count(DISTINCT mid) AS messages, count(*) AS mailbox_rows,
                   count(*) / count(DISTINCT mid) AS rows_per_message
            FROM im_user_msg_box GROUP BY 1 ORDER BY mailbox_rows DESC
        """).df()

    def ingest_latency_ms(self) -> pd.DataFrame:
        """From the gateway's receipt (sent_at) to the message id (created_at): quantiles."""
        return self.sql("""
            SELECT quantile_cont(created_at_ms - sent_at_ms, [0.5, 0.9, 0.99]) AS q, count(*) AS messages
            FROM im_msg_content
        """).df()

    # -- conversations and groups

    def conversation_activity(self, bucket: Bucket = "day") -> pd.DataFrame:
        """Messages per bucket in one-to-one conversations and in groups."""
        return self.sql(f"""
            SELECT date_trunc('{bucket}', created_at) AS {bucket},
                   CASE WHEN conversation LIKE 'g:%' THEN 'group' ELSE 'one-to-one' END AS kind,
                   count(*) AS messages, count(DISTINCT conversation) AS conversations
            FROM im_msg_content GROUP BY 1, 2 ORDER BY 1, 2
        """).df()

    def group_sizes(self) -> pd.DataFrame:
        """Members of each group now, from the membership record (joins minus leaves)."""
        return self.sql(f"{self._group_sizes_sql()} ORDER BY members DESC").df()

    def top_groups(self, n: int = 10) -> pd.DataFrame:
        """The busiest groups: messages, distinct senders, members (counted for these groups only)."""
        return self.sql(f"""
            WITH top AS (SELECT conversation, count(*) AS messages, count(DISTINCT sender) AS senders
                         FROM im_msg_content WHERE conversation LIKE 'g:%' GROUP BY 1 ORDER BY messages DESC LIMIT {int(n)}),
                 sizes AS ({self._group_sizes_sql("WHERE 'g:' || gid IN (SELECT conversation FROM top)")})
            SELECT top.*, sizes.members FROM top LEFT JOIN sizes USING (conversation) ORDER BY messages DESC
        """).df()

    @staticmethod
    def _group_sizes_sql(where: str = "") -> str:
        """Members per group now: each member's latest join or leave decides."""
        joined = f"kind IN ('joined', 'left', 'removed'){' AND ' + where.removeprefix('WHERE ') if where else ''}"
        return f"""SELECT 'g:' || gid AS conversation, count(*) AS members FROM (
                SELECT gid, "user", arg_max(kind, at_ms) AS last FROM im_group_events
                WHERE {joined} GROUP BY 1, 2) WHERE last = 'joined' GROUP BY 1"""

    def fan_out_economics(self) -> pd.DataFrame:
        """Per group size band: messages, mailbox rows written, and rows per message — what write
        fan-out costs against read fan-out (one row per message) at each size."""
        return self.sql(f"""
            WITH sizes AS ({self._group_sizes_sql()}),
            per AS (SELECT conversation, count(*) AS rows, count(DISTINCT mid) AS messages FROM im_user_msg_box
                    WHERE conversation LIKE 'g:%' GROUP BY 1)
            SELECT CASE WHEN members < 10 THEN '3-9' WHEN members < 30 THEN '10-29' WHEN members < 100 THEN '30-99'
                        WHEN members < 300 THEN '100-299' WHEN members < 1000 THEN '300-999' ELSE '1000+' END AS band,
                   min(members) AS smallest, count(*) AS groups, sum(messages) AS messages, sum(rows) AS mailbox_rows,
                   sum(rows) / sum(messages) AS rows_per_message, sum(members * messages) / sum(messages) AS write_rows_per_message
            FROM per JOIN sizes USING (conversation) GROUP BY 1 ORDER BY smallest
        """).df()

    # -- delivery, reading, unread

    def latency_distribution(self) -> pd.DataFrame:
        """Ingest latency (gateway receipt → stored) per message, in ms, for a histogram."""
        return self.sql("SELECT created_at_ms - sent_at_ms AS ingest_ms FROM im_msg_content USING SAMPLE 200000 ROWS").df()

    def read_delay_minutes(self) -> pd.DataFrame:
        """How long after a message was stored its receiver reported reading up to it."""
        return self.sql("""
            SELECT (r.at_ms - m.created_at_ms) / 60000.0 AS minutes
            FROM im_read_events r JOIN im_user_msg_box m
              ON m.owner_uid = r.owner_uid AND m.conversation = r.conversation AND m.seq = r.read_seq
            USING SAMPLE 200000 ROWS
        """).df()

    def unread_backlog(self) -> pd.DataFrame:
        """Per user: messages received but never reported read (newest seq in their mailbox minus
        their latest read position, over their conversations)."""
        return self.sql("""
            WITH got AS (SELECT owner_uid, conversation, max(seq) AS last FROM im_user_msg_box WHERE box = 'in' GROUP BY 1, 2),
                 seen AS (SELECT owner_uid, conversation, max(read_seq) AS read FROM im_read_events GROUP BY 1, 2)
            SELECT got.owner_uid AS user, sum(greatest(last - coalesce(read, 0), 0)) AS unread,
                   count(*) AS conversations
            FROM got LEFT JOIN seen USING (owner_uid, conversation) GROUP BY 1 ORDER BY unread DESC
        """).df()

    # -- plugins

    def red_packet_stats(self, bucket: Bucket = "day") -> pd.DataFrame:
        """Packets sent, cents in them, grabbed and refunded, and the mean share, per bucket."""
        return self.sql(f"""
            WITH e AS (SELECT mid, sum(cents) FILTER (WHERE kind = 'grab') AS grabbed,
                              sum(cents) FILTER (WHERE kind = 'refund') AS refunded,
                              count(*) FILTER (WHERE kind = 'grab') AS grabs, max(at_ms) FILTER (WHERE kind = 'grab') AS last_grab
                       FROM red_packet_events GROUP BY 1)
            SELECT date_trunc('{bucket}', epoch_ms(c.created_at_ms)) AS {bucket}, count(*) AS packets,
                   sum(p.total_cents) AS cents, sum(coalesce(e.grabbed, 0)) AS grabbed_cents,
                   sum(coalesce(e.refunded, 0)) AS refunded_cents, sum(e.grabs) AS grabs,
                   sum(coalesce(e.grabbed, 0)) / nullif(sum(e.grabs), 0) AS mean_share_cents,
                   median((e.last_grab - c.created_at_ms) / 1000.0) AS median_seconds_to_last_grab
            FROM red_packets p JOIN im_msg_content c USING (mid) LEFT JOIN e USING (mid)
            GROUP BY 1 ORDER BY 1
        """).df()

    def live_room_peaks(self) -> pd.DataFrame:
        """Per live room: peak viewers, when, messages at the peak minute, and dropped share."""
        return self.sql("""
            SELECT room, max(viewers) AS peak_viewers, epoch_ms(arg_max(minute_ms, viewers)) AS peak_at,
                   arg_max(messages, viewers) AS messages_at_peak,
                   sum(dropped) / nullif(sum(messages), 0) AS dropped_share
            FROM live_room_minutes GROUP BY 1 ORDER BY peak_viewers DESC
        """).df()

    # -- the social graph (rows core/storage/social_records.py writes)

    def account_events(self) -> pd.DataFrame:
        """One row per account change, oldest first: user, kind (``created``, ``updated``,
        ``deactivated``, ``reactivated``), display_name, avatar_url and custom (JSON object text)
        as they were after the change, at_ms, and ``at`` (a timestamp)."""
        return self._events(ACCOUNT_EVENTS)

    def contact_events(self) -> pd.DataFrame:
        """One row per change of a contact request or edge, oldest first: user (who acted), peer,
        kind (``requested``, ``accepted``, ``declined``, ``cancelled``, ``removed``), note (of a
        request; else empty), at_ms, and ``at``. An acceptance is recorded by the one who
        accepts; a block that ends a contact or request also records its removal, decline or
        cancel, by the blocker."""
        return self._events(CONTACT_EVENTS)

    def block_events(self) -> pd.DataFrame:
        """One row per block or unblock, oldest first: user (the blocker), peer, kind
        (``blocked``, ``unblocked``), at_ms, and ``at``."""
        return self._events(BLOCK_EVENTS)

    def _events(self, table: str) -> pd.DataFrame:
        return self.sql(f'SELECT *, epoch_ms(at_ms) AS at FROM {table} ORDER BY at_ms, "user"').df()

    @staticmethod
    def _until(at_ms: int | None) -> str:
        return "TRUE" if at_ms is None else f"at_ms <= {int(at_ms)}"

    def _graph_sql(self, at_ms: int | None) -> str:
        return f"""
            SELECT user_a, user_b, since_ms FROM (
                SELECT user_a, user_b, arg_max(linked, (at_ms, NOT linked)) AS linked,
                       max(at_ms) FILTER (WHERE linked AND NOT was_linked) AS since_ms
                FROM ({_EDGE_STATES.format(until=self._until(at_ms))}) GROUP BY 1, 2)
            WHERE linked"""

    def contact_graph(self, at_ms: int | None = None) -> pd.DataFrame:
        """The contact graph as it was at ``at_ms`` (ms since 1970, that moment included; None:
        everything recorded): one row per edge, sorted, with columns user_a, user_b (user_a <
        user_b: an edge is mutual), since_ms (when the edge as it stands was accepted) and
        ``since`` (a timestamp). An edge is there once accepted, until removed or until either
        side blocks the other (unblocking restores nothing); accepted again after that, its
        since_ms is the new acceptance."""
        return self.sql(f"""
            SELECT user_a, user_b, since_ms, epoch_ms(since_ms) AS since FROM ({self._graph_sql(at_ms)}) ORDER BY 1, 2
        """).df()

    def _degrees_sql(self, at_ms: int | None) -> str:
        return f"""
            WITH edges AS ({self._graph_sql(at_ms)}),
                 ends AS (SELECT user_a AS "user" FROM edges UNION ALL SELECT user_b FROM edges),
                 everyone AS (SELECT "user" FROM im_account_events WHERE kind = 'created' AND {self._until(at_ms)}
                              UNION SELECT "user" FROM ends)
            SELECT everyone."user" AS "user", count(ends."user") AS degree
            FROM everyone LEFT JOIN ends ON ends."user" = everyone."user" GROUP BY 1"""

    def contact_degrees(self, at_ms: int | None = None) -> pd.DataFrame:
        """Contacts per user at ``at_ms`` (as ``contact_graph``): columns user, degree, most
        contacts first (then by user). Every account created by then is there, those without
        a contact with degree 0 (deactivated ones too: their edges stay), and so is every user
        with a contact but no account record (a server in ``open`` accounts mode)."""
        return self.sql(f'{self._degrees_sql(at_ms)} ORDER BY degree DESC, "user"').df()

    def degree_distribution(self, at_ms: int | None = None) -> pd.DataFrame:
        """How many users have each number of contacts at ``at_ms`` (as ``contact_degrees``):
        columns degree (0 up, only degrees some user has), users, share (of all those users,
        summing to 1). On log-log axes (degrees above 0) a straight tail is a power law."""
        return self.sql(f"""
            SELECT degree, count(*) AS users, count(*) / sum(count(*)) OVER () AS share
            FROM ({self._degrees_sql(at_ms)}) GROUP BY 1 ORDER BY 1
        """).df()

    def contact_graph_growth(self, bucket: Bucket = "day") -> pd.DataFrame:
        """How the graph grew, per bucket that saw a change: columns ``<bucket>`` (its start),
        accounts (created up to its end), active_accounts (those minus deactivated, plus
        reactivated), new_edges and ended_edges (edges accepted, and removed or blocked, in it)
        and edges (contact edges at its end: ``contact_graph`` at that moment has that many rows)."""
        return self.sql(f"""
            WITH edge_moves AS (
                SELECT date_trunc('{bucket}', epoch_ms(at_ms)) AS {bucket},
                       count(*) FILTER (WHERE linked AND NOT was_linked) AS new_edges,
                       count(*) FILTER (WHERE was_linked AND NOT linked) AS ended_edges
                FROM ({_EDGE_STATES.format(until="TRUE")}) GROUP BY 1),
            account_moves AS (
                SELECT date_trunc('{bucket}', epoch_ms(at_ms)) AS {bucket},
                       count(*) FILTER (WHERE kind = 'created') AS created,
                       count(*) FILTER (WHERE kind = 'reactivated') - count(*) FILTER (WHERE kind = 'deactivated') AS returned
                FROM im_account_events GROUP BY 1),
            moves AS (SELECT {bucket}, coalesce(created, 0) AS created, coalesce(returned, 0) AS returned,
                             coalesce(new_edges, 0) AS new_edges, coalesce(ended_edges, 0) AS ended_edges
                      FROM edge_moves FULL JOIN account_moves USING ({bucket}))
            SELECT {bucket}, sum(created) OVER w::BIGINT AS accounts, sum(created + returned) OVER w::BIGINT AS active_accounts,
                   new_edges, ended_edges, sum(new_edges - ended_edges) OVER w::BIGINT AS edges
            FROM moves WINDOW w AS (ORDER BY {bucket}) ORDER BY {bucket}
        """).df()
