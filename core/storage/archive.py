"""The history archive (R8): write batches of records into the lake, and read history pages from it.

The archive is a DuckLake (core/storage/lake.py): ``im_msg_content`` (one row per message),
``im_user_msg_box`` (the mailbox index: one row per member, or one per read fan-out group),
``im_user_msg_deleted`` and the rows tables of plugins and of core/ (read reports, the social
graph, group membership). A batch is one transaction over every table it touches, so a reader
never finds a mailbox row without its content.

Content and mailbox rows are written exactly once (core/storage/archive_queue.py: each batch
commits marks of how far it took the queues, ``MARKS``, and a replayed send is dropped by the
conversation's sealed seq), so readers take them as they are; ``duplicates`` checks it. Deletions
and other rows tables stay at least once (a record queued twice by its producer), and readers
de-duplicate those.
"""

from __future__ import annotations

import contextlib
import threading
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import duckdb
import orjson
import pyarrow as pa

from ..ids import id_time_ms
from ..models import group_id
from . import lake
from .lake import (
    CONTENT,
    CONTENT_SCHEMA,
    DEDUP_KEYS,
    DELETIONS,
    DELETIONS_SCHEMA,
    EXACTLY_ONCE,
    MAILBOX,
    MAILBOX_SCHEMA,
    MARKS,
    MARKS_SCHEMA,
    READ_EVENTS,
    SCHEMAS,
    VERSIONS,
    VERSIONS_SCHEMA,
    LakeConfig,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

# the table names and schemas are the lake's (core/storage/lake.py); here too for the archive's users
__all__ = [
    "CONTENT", "CONTENT_SCHEMA", "DELETIONS", "DELETIONS_SCHEMA", "MAILBOX", "MAILBOX_SCHEMA", "MARKS", "PAGE_COLUMNS",
    "READ_EVENTS", "VERSIONS", "VERSIONS_SCHEMA", "ArchiveReader", "LakeConfig", "LakeWriter", "amended", "duplicates",
    "insert_table", "marked", "message_rows", "present", "prune_marks", "tables_of", "write_records", "write_tables",
]

READER_THREADS = 1  # DuckDB threads of the process's lake connection (a global setting of its database)
PAGE_COLUMNS = ("mid", "conversation", "seq", "sender", "client_msg_id", "type", "body", "sent_at_ms")


def message_rows(message: dict[str, Any], members: list[str]) -> tuple[dict, list[dict]]:
    """One content row and one mailbox row per member (the sender's 'out', the others' 'in')."""
    created = id_time_ms(message["mid"])
    content = {
        "mid": message["mid"],
        "conversation": message["conversation"],
        "seq": message["seq"],
        "sender": message["sender"],
        "client_msg_id": message["client_msg_id"],
        "type": message.get("type", "text"),
        "body": orjson.dumps(message.get("body", {})).decode(),
        "sent_at_ms": message["sent_at_ms"],
        "created_at_ms": created,
    }
    mailbox = [
        {
            "owner_uid": member,
            "conversation": message["conversation"],
            "mid": message["mid"],
            "seq": message["seq"],
            # 'group': the one row of a read fan-out message, owned by the group conversation
            "box": "out" if member == message["sender"] else ("group" if member == message["conversation"] else "in"),
            "peer": message["conversation"] if member == message["sender"] else message["sender"],
            "created_at_ms": created,
        }
        for member in members
    ]
    return content, mailbox


def _rows_table(rows: list[dict[str, Any]]) -> pa.Table:
    """A plugin's rows as a table: every key any row has is a column (missing = null), types inferred."""
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    columns = {name: pa.array([row.get(name) for row in rows]) for name in names}
    # a column of nulls only has no type a table can store: text, until a row says otherwise
    typed = {name: column.cast(pa.string()) if pa.types.is_null(column.type) else column for name, column in columns.items()}
    return pa.table(typed)


def tables_of(records: Iterable[dict[str, Any]]) -> dict[str, pa.Table]:
    """The rows each table gets from these queued records, as Arrow tables (core tables in their schema).

    Kinds: 'message' (a content row and its mailbox rows), 'delete', 'rows' (a plugin's or
    core's rows table) and 'mark' (``partition``, ``qid``, ``taken``, ``at_ms``, ``last_qid``: how
    far a batch took a queue, one ``MARKS`` row)."""
    rows: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        if record["kind"] == "message":
            content, mailbox = message_rows(record["message"], record["members"])
            rows[CONTENT].append(content)
            rows[MAILBOX].extend(mailbox)
        elif record["kind"] == "delete":
            rows[DELETIONS].append({"owner_uid": record["owner"], "mid": record["mid"], "deleted_at_ms": record["at_ms"]})
        elif record["kind"] == "rows":  # a plugin's table (its schema is its rows')
            rows[record["table"]].extend(record["rows"])
        elif record["kind"] == "mark":
            rows[MARKS].append({name: record.get(name) for name in MARKS_SCHEMA.names})
    return {
        table: pa.Table.from_pylist(batch, schema=SCHEMAS[table]) if table in SCHEMAS else _rows_table(batch)
        for table, batch in rows.items()
        if batch
    }


def _columns(db: duckdb.DuckDBPyConnection, table: str) -> set[str] | None:
    """The columns of a lake table, None if it does not exist."""
    found = db.execute(
        "SELECT column_name FROM duckdb_columns() WHERE database_name = $lake AND schema_name = 'main' AND table_name = $table",
        {"lake": lake.LAKE, "table": table},
    ).fetchall()
    return {row[0] for row in found} or None


def insert_table(db: duckdb.DuckDBPyConnection, table: str, data: pa.Table) -> None:
    """Append ``data`` to a lake table, making the table (a plugin's, on its first rows) or its new columns first."""
    existing = _columns(db, table)
    db.register("incoming", data)
    try:
        if existing is None:
            db.execute(f"CREATE TABLE {table} AS SELECT * FROM incoming LIMIT 0")
        else:
            for name in data.column_names:
                if name not in existing:
                    kind = db.execute(f"SELECT typeof({_ident(name)}) FROM incoming LIMIT 1").fetchone()
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {_ident(name)} {kind[0] if kind else 'VARCHAR'}")
        db.execute(f"INSERT INTO {table} BY NAME SELECT * FROM incoming")
    finally:
        db.unregister("incoming")


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def write_tables(db: duckdb.DuckDBPyConnection, tables: dict[str, pa.Table]) -> int:
    """Append Arrow tables (table name -> rows) to the lake attached to ``db`` in ONE transaction
    (readers see all of it or none); returns the rows written. A commit that loses to another
    writer's (both made a plugin table) is tried again. Raises duckdb.Error when the lake cannot
    be written (the caller keeps the batch)."""
    tables = {name: rows for name, rows in tables.items() if rows.num_rows}
    if not tables:
        return 0

    def write() -> int:
        # one commit at a time in the process (lake.COMMITS says why), waiting a bounded time
        if not lake.COMMITS.acquire(timeout=lake.COMMIT_WAIT_S):
            raise lake.LakeBusy(f"the lake was busy with another commit for {lake.COMMIT_WAIT_S:.0f} s")
        try:
            db.execute("BEGIN")
            try:
                for table, rows in tables.items():
                    insert_table(db, table, rows)
                db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(duckdb.Error):
                    db.execute("ROLLBACK")
                raise
        finally:
            lake.COMMITS.release()
        return sum(rows.num_rows for rows in tables.values())

    written: int = lake.retrying(write)
    return written


def write_records(db: duckdb.DuckDBPyConnection, records: list[dict[str, Any]]) -> int:
    """Write queued archive records (kinds as ``tables_of``) into the lake attached to ``db``,
    every table in one transaction (``write_tables``); returns the rows written. Writes what it
    is given: skipping what the lake holds already is the queue's work (``archive_queue.flush``)."""
    return write_tables(db, tables_of(records))


def marked(db: duckdb.DuckDBPyConnection, anchors: dict[int, str]) -> dict[int, tuple[int, str | None]]:
    """How far committed batches took each queue: ``anchors`` maps a queue partition to the qid
    of its first queued record that has one; the answer maps it to (the most records a ``MARKS``
    row says a batch took from that record on, the qid of that batch's last record), partitions
    without such a row left out. Raises duckdb.Error."""
    if not anchors:
        return {}
    listed = ", ".join(str(int(partition)) for partition in anchors)  # integers: literals are safe
    asked = ", ".join("?" * len(anchors))
    rows = db.execute(
        f"SELECT partition, qid, max(taken), arg_max(last_qid, taken) FROM {MARKS} "
        f"WHERE partition IN ({listed}) AND qid IN ({asked}) GROUP BY 1, 2",
        list(anchors.values()),
    ).fetchall()
    return {partition: (int(taken), last) for partition, qid, taken, last in rows if anchors.get(partition) == qid}


def present(db: duckdb.DuckDBPyConnection, mids: dict[str, list[int]]) -> set[int]:
    """Which of these messages (conversation -> mids) ``im_msg_content`` holds: the check behind
    dropping a record as a replay. One query (DuckLake's planning is most of a query's cost);
    the table is bucketed and sorted by conversation, so it reads a row group or two per
    conversation. Raises duckdb.Error."""
    if not mids:
        return set()
    conversations = list(mids)
    literals = ", ".join(str(int(mid)) for listed in mids.values() for mid in listed)  # integers: literals are safe
    rows = db.execute(
        f"SELECT conversation, mid FROM {CONTENT} WHERE conversation IN ({', '.join('?' * len(conversations))}) "
        f"AND mid IN ({literals})",
        conversations,
    ).fetchall()
    return {int(mid) for conversation, mid in rows if int(mid) in mids[conversation]}


def prune_marks(db: duckdb.DuckDBPyConnection, older_than_ms: int) -> int:
    """Delete the ``MARKS`` rows written before ``older_than_ms`` (ms since 1970); returns how
    many. A mark matters only while its batch's records may still wait in the queue (a crash
    between the commit and the trim, until the next flush): maintenance keeps an hour of them.
    Retried on a commit conflict; raises duckdb.Error when the lake cannot be written."""
    def prune() -> int:
        with lake.COMMITS:
            found = db.execute(f"DELETE FROM {MARKS} WHERE at_ms < $cutoff", {"cutoff": int(older_than_ms)}).fetchone()
        return int(found[0]) if found else 0

    deleted: int = lake.retrying(prune)
    return deleted


def duplicates(db: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Rows beyond one per key (``DEDUP_KEYS``) in each exactly-once table (content, mailbox):
    all 0 when the lake holds every message once, as it should. A full scan of both tables (an
    operator's check: ``imflow archive stats``). Raises duckdb.Error."""
    found = {}
    for table in EXACTLY_ONCE:
        row = db.execute(f"SELECT count(*) - count(DISTINCT ({DEDUP_KEYS[table]})) FROM {table}").fetchone()
        found[table] = int(row[0]) if row else 0
    return found


class LakeWriter:
    """The archive queue's side of the lake (``archive_queue.flush``): which queued records it
    holds already (``marked``, ``present``) and one-transaction writes (``write``). Each call runs on
    ``cursor()``, the calling thread's cursor (``ArchiveReader.cursor``): flush calls them in
    worker threads."""

    def __init__(self, cursor: Callable[[], duckdb.DuckDBPyConnection]) -> None:
        self.cursor = cursor

    def marked(self, anchors: dict[int, str]) -> dict[int, tuple[int, str | None]]:
        """``marked`` on this thread's cursor."""
        return marked(self.cursor(), anchors)

    def present(self, mids: dict[str, list[int]]) -> set[int]:
        """``present`` on this thread's cursor."""
        return present(self.cursor(), mids)

    def write(self, records: list[dict[str, Any]]) -> int:
        """``write_records`` on this thread's cursor."""
        return write_records(self.cursor(), records)


# One query a page. A group's: the owner's mailbox rows of the conversation in the seq range
# (newest first, de-duplicated, deletions left out unless asked), joined to their contents. A
# one-to-one conversation's two members have every message in their mailboxes, so its page reads
# the contents alone (each table a query touches costs a catalog round trip: measured 12 ms
# instead of 25 on a SQLite catalog). Both tables are bucketed by conversation and sorted by
# (conversation, seq), so the filters choose one partition and few row groups of each.
_GROUP_PAGE = """
WITH page AS (
    SELECT DISTINCT mid, seq FROM im_user_msg_box
    WHERE conversation = $conversation AND owner_uid IN ($owner, $conversation) AND seq < $before AND seq > $after {hidden}
    ORDER BY seq DESC LIMIT $limit
)
SELECT c.mid, c.conversation, c.seq, c.sender, c.client_msg_id, c.type, c.body, c.sent_at_ms
FROM im_msg_content c SEMI JOIN page p ON c.mid = p.mid
WHERE c.conversation = $conversation AND c.seq < $before AND c.seq > $after
QUALIFY row_number() OVER (PARTITION BY c.mid) = 1
ORDER BY c.seq DESC
"""
_ONE_TO_ONE_PAGE = """
SELECT mid, conversation, seq, sender, client_msg_id, type, body, sent_at_ms FROM im_msg_content
WHERE conversation = $conversation AND seq < $before AND seq > $after {hidden}
QUALIFY row_number() OVER (PARTITION BY mid) = 1
ORDER BY seq DESC LIMIT $limit
"""
_HIDDEN = "AND mid NOT IN (SELECT mid FROM im_user_msg_deleted WHERE owner_uid = $owner)"


def _messages(rows: list[tuple]) -> list[dict[str, Any]]:
    messages = [dict(zip(PAGE_COLUMNS, row, strict=True)) for row in rows]
    for message in messages:
        message["body"] = orjson.loads(message["body"])
    return messages


# A page's changes: every version row of its messages (at least once: de-duplicated in amended)
_PAGE_VERSIONS = """
SELECT mid, kind, version, body, by_user, at_ms FROM im_msg_versions
WHERE conversation = $conversation AND seq BETWEEN $low AND $high AND mid IN ({mids})
"""


def amended(messages: list[dict[str, Any]], versions: Iterable[tuple]) -> list[dict[str, Any]]:
    """The messages (dicts of PAGE_COLUMNS) as they are now, given their ``VERSIONS`` rows
    (mid, kind, version, body JSON, by_user, at_ms; in any order, repeats allowed): the latest
    edit's body, ``version`` and ``edited_at_ms``; after a recall, ``body`` ``{}`` with
    ``recalled_at_ms`` and ``recalled_by`` — as the conversation log in Redis holds them."""
    latest: dict[int, tuple] = {}
    recalled: dict[int, tuple] = {}
    for row in versions:
        mid, kind = int(row[0]), row[1]
        if kind == "recall":
            recalled.setdefault(mid, row)
        elif kind == "edit" and (mid not in latest or row[2] > latest[mid][2]):
            latest[mid] = row
    for message in messages:
        mid = message["mid"]
        if mid in latest:
            _, _, version, body, _, at_ms = latest[mid]
            message.update(body=orjson.loads(body), edited_at_ms=int(at_ms), version=int(version))
        if mid in recalled:
            _, _, _, _, by, at_ms = recalled[mid]
            message.update(body={}, recalled_at_ms=int(at_ms), recalled_by=by)
    return messages


class ArchiveReader:
    """History pages and message contents from the lake; safe while writers add more.

    Opens the lake on first use (a gateway starts, and says it is not ready, while the catalog is
    away), then keeps one connection and gives each thread its own cursor of it (one DuckDB
    connection runs one query at a time, and pages are read in worker threads at once)."""

    def __init__(self, config: LakeConfig) -> None:
        self.config = config
        self._db: duckdb.DuckDBPyConnection | None = None
        self._local = threading.local()
        self._cursors: list[duckdb.DuckDBPyConnection] = []
        self._lock = threading.Lock()

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """This thread's cursor of the process's lake connection (opened on first use; raises
        duckdb.Error or LakeError when the lake cannot be opened, and the next call tries again).
        Writers use it too: ``write_records(reader.cursor(), records)`` in a worker thread."""
        cursor = getattr(self._local, "cursor", None)
        if cursor is None:
            with self._lock:
                if self._db is None:
                    self._db = lake.connect(self.config)
                    # a page reads a row group or two: one thread each beats spreading it over
                    # the cores, and many pages run at once anyway (measured on 2 cores: a
                    # page's query 17 ms with 2 threads, 10 ms with 1). It holds for the
                    # process's writes and maintenance too (one DuckDB database, one setting)
                    self._db.execute(f"SET threads = {READER_THREADS}")
                cursor = self._db.cursor()
                cursor.execute(f"USE {lake.LAKE}")  # a cursor starts from the defaults
                cursor.execute("SET enable_progress_bar = false")
                self._cursors.append(cursor)
            self._local.cursor = cursor
        return cursor

    def close(self) -> None:
        """Close every cursor and the connection (a later call opens them again)."""
        with self._lock:
            for cursor in self._cursors:
                with contextlib.suppress(duckdb.Error):
                    cursor.close()
            self._cursors.clear()
            if self._db is not None:
                self._db.close()
                self._db = None
            self._local = threading.local()

    def history_page(
        self, owner: str, conversation: str, before_seq: int, limit: int, after_seq: int = 0, include_deleted: bool = False
    ) -> list[dict[str, Any]]:
        """One page of the owner's mailbox in a conversation, newest first (dicts of PAGE_COLUMNS,
        ``body`` decoded): messages with ``after_seq < seq < before_seq``, at most ``limit``.

        A group's messages stored by read fan-out have one mailbox row owned by the group
        conversation itself, so a group's page reads those rows too. Messages the owner deleted
        for themself are left out unless ``include_deleted`` (the gateway hides them itself, from
        Redis, which knows a deletion at once: the archive only once it has written it).
        Recalled and edited messages are as they are now (``amended``): the tombstone, the latest
        version. A page still takes each mid once, though the writer writes each message once: on 50 rows
        it costs nothing, and it covers a lake written before exactly-once writes or behind a
        Redis that lost its sealed seqs. Raises duckdb.Error when the lake cannot be read."""
        template = _GROUP_PAGE if group_id(conversation) else _ONE_TO_ONE_PAGE
        query = template.format(hidden="" if include_deleted else _HIDDEN)
        params: dict[str, Any] = {"conversation": conversation, "before": before_seq, "limit": limit}
        if "$owner" in query:
            params["owner"] = owner
        # seqs are gap-free, so a page is mostly the `limit` seqs below before_seq: read only
        # that range (a row group or two), and further back only when it falls short
        window = max(after_seq, before_seq - limit - 1)
        rows = self.cursor().execute(query, {**params, "after": window}).fetchall()
        if len(rows) < limit and window > after_seq:
            rows = self.cursor().execute(query, {**params, "after": after_seq}).fetchall()
        return self._as_now(conversation, _messages(rows))

    def _as_now(self, conversation: str, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The page's messages with their recalls and edits applied (``amended``): one query
        more, on the versions table's partition of the conversation."""
        if not messages:
            return messages
        seqs = [message["seq"] for message in messages]
        listed = ", ".join(str(int(message["mid"])) for message in messages)  # integers: literals are safe
        rows = self.cursor().execute(
            _PAGE_VERSIONS.format(mids=listed), {"conversation": conversation, "low": min(seqs), "high": max(seqs)}
        ).fetchall()
        return amended(messages, rows)

    def contents(self, conversation: str, page: list[tuple[int, int]]) -> list[dict[str, Any]]:
        """The messages (mid, seq) of one conversation, newest seq first (dicts of PAGE_COLUMNS),
        each mid once (as ``history_page``, for lakes with a duplicate; cheap on a page), as they
        are now (recalls and edits applied, as in ``history_page``)."""
        if not page:
            return []
        seqs = [seq for _, seq in page]
        listed = ", ".join(str(int(mid)) for mid, _ in page)  # integers: literals are safe
        rows = self.cursor().execute(
            f"""
            SELECT {", ".join(PAGE_COLUMNS)} FROM im_msg_content
            WHERE conversation = $conversation AND seq BETWEEN $low AND $high AND mid IN ({listed})
            QUALIFY row_number() OVER (PARTITION BY mid) = 1
            ORDER BY seq DESC
            """,
            {"conversation": conversation, "low": min(seqs), "high": max(seqs)},
        ).fetchall()
        return self._as_now(conversation, _messages(rows))
