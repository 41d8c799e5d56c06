"""The history archive (R8): ``im_msg_content`` and ``im_user_msg_box`` as sealed Parquet segments.

DuckDB lets one process write a database file and no other process open it meanwhile, so the
archive is not a DuckDB file: writers seal immutable Parquet segments (written to a temporary
name, then renamed), and any number of readers, in workers, gateways and notebooks, query them
with DuckDB at the same time. Content is sharded by ``mid``, the mailbox by ``owner_uid``.

Writes are at least once (a segment may be written again after a crash); readers de-duplicate
on (mid) and (owner_uid, mid), so a replay never shows twice.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
import zlib
from collections import defaultdict
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from ..ids import NODE_BITS, SEQUENCE_BITS, id_time_ms
from ..models import group_id

CONTENT = "im_msg_content"
MAILBOX = "im_user_msg_box"
DELETIONS = "im_user_msg_deleted"
READ_EVENTS = "im_read_events"  # read reports, a rows table like a plugin's (owner_uid, conversation, read_seq, at_ms)

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
DELETIONS_SCHEMA = pa.schema([("owner_uid", pa.string()), ("mid", pa.int64()), ("deleted_at_ms", pa.int64())])


# Segment names say what a reader may assume. 'seg-': sealed by the archive agent, at least once
# (a batch may be sealed again after a crash, so readers de-duplicate). 'cmp-': written by
# compaction or the simulator, each row once; compaction only takes segments older than any
# re-sealing can be, so a row in a 'cmp-' segment is in no 'seg-' segment.
SEALED, COMPACTED = "seg-", "cmp-"


def segment_path(folder: Path, kind: str = SEALED) -> Path:
    return folder / f"{kind}{uuid.uuid4().hex}.parquet"


ROW_GROUP = 16 * 1024  # rows per row group of rewritten segments: a history page reads few beyond its own


def content_shard(mid: Any, shards: int) -> Any:
    """By the millisecond in the id: its low bits (node, sequence) are mostly zero. Works on an
    int and on a numpy array of ids alike."""
    return (mid >> (NODE_BITS + SEQUENCE_BITS)) % shards


def mailbox_shard(owner_uid: str, shards: int) -> int:
    return zlib.crc32(owner_uid.encode()) % shards


class ArchiveLayout:
    """Where each table's shards live under the archive root."""

    def __init__(self, root: Path, content_shards: int = 4, mailbox_shards: int = 4) -> None:
        self.root = Path(root)
        self.content_shards = content_shards
        self.mailbox_shards = mailbox_shards

    def shard_dir(self, table: str, shard: int) -> Path:
        return self.root / table / f"shard={shard:03d}"

    def files(self, table: str, shard: int | None = None, kind: str = "") -> list[str]:
        """Segments of a table (one shard, or all); ``kind`` SEALED or COMPACTED for one kind only."""
        pattern = f"shard={shard:03d}/{kind}*.parquet" if shard is not None else f"shard=*/{kind}*.parquet"
        return sorted(str(path) for path in (self.root / table).glob(pattern))


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


def write_segments(layout: ArchiveLayout, records: list[dict[str, Any]]) -> int:
    """Seal the pending records as Parquet segments, one per shard touched; returns rows written."""
    tables: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for record in records:
        if record["kind"] == "message":
            content, mailbox = message_rows(record["message"], record["members"])
            tables[(CONTENT, content_shard(content["mid"], layout.content_shards))].append(content)
            for row in mailbox:
                tables[(MAILBOX, mailbox_shard(row["owner_uid"], layout.mailbox_shards))].append(row)
        elif record["kind"] == "delete":
            row = {"owner_uid": record["owner"], "mid": record["mid"], "deleted_at_ms": record["at_ms"]}
            tables[(DELETIONS, mailbox_shard(record["owner"], layout.mailbox_shards))].append(row)
        elif record["kind"] == "rows":  # a plugin's table (one shard; its schema is its rows')
            tables[(record["table"], 0)].extend(record["rows"])
    schemas = {CONTENT: CONTENT_SCHEMA, MAILBOX: MAILBOX_SCHEMA, DELETIONS: DELETIONS_SCHEMA}
    written = 0
    # every content segment before any mailbox segment: a reader that finds a message in the
    # index must find its content (a mailbox file written first tore pages under load)
    order = {CONTENT: 0, MAILBOX: 1, DELETIONS: 2}
    for (table, shard), rows in sorted(tables.items(), key=lambda item: order.get(item[0][0], 3)):
        folder = layout.shard_dir(table, shard)
        folder.mkdir(parents=True, exist_ok=True)
        final = segment_path(folder)
        temporary = final.with_suffix(".parquet.tmp")
        if table == CONTENT:  # history pages read a conversation's seq range: keep it together
            rows.sort(key=lambda row: (row["conversation"], row["seq"]))
        elif table == MAILBOX:
            rows.sort(key=lambda row: (row["owner_uid"], row["conversation"], row["seq"]))
        pq.write_table(pa.Table.from_pylist(rows, schema=schemas.get(table)), temporary)
        temporary.replace(final)  # atomic: readers see a whole segment or none
        written += len(rows)
    return written


class ArchiveReader:
    """Queries over the sealed segments; safe while writers add more."""

    def __init__(self, layout: ArchiveLayout) -> None:
        self.layout = layout
        self._db = duckdb.connect()
        with contextlib.suppress(duckdb.Error):  # footers of segments read before are kept (they never change)
            self._db.execute("SET parquet_metadata_cache = true")
        # one DuckDB connection refuses a second call while one runs ("connection is busy"), and
        # history pages run in worker threads at once: each thread reads through its own cursor
        self._local = threading.local()
        self._cursors: list[duckdb.DuckDBPyConnection] = []
        self._cursors_lock = threading.Lock()

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        cursor = getattr(self._local, "cursor", None)
        if cursor is None:
            cursor = self._local.cursor = self._db.cursor()
            with contextlib.suppress(duckdb.Error):  # a cursor starts from the defaults
                cursor.execute("SET parquet_metadata_cache = true")
            with self._cursors_lock:
                self._cursors.append(cursor)
        return cursor

    def close(self) -> None:
        with self._cursors_lock:
            for cursor in self._cursors:
                cursor.close()
            self._cursors.clear()
        self._db.close()

    def history_page(
        self, owner: str, conversation: str, before_seq: int, limit: int, after_seq: int = 0, include_deleted: bool = False
    ) -> list[dict[str, Any]]:
        """One page of the owner's mailbox in a conversation, newest first: index first, then contents.

        Messages with ``after_seq < seq < before_seq``, at most ``limit``. A group's messages
        stored by read fan-out have one mailbox row owned by the group conversation itself, so a
        group's page reads those rows too. Messages the owner deleted for themself are left out
        unless ``include_deleted`` (the gateway hides them itself, from Redis, which knows a
        deletion at once: the archive only once it has sealed it).
        """
        db = self._cursor()
        owners = [owner] + ([conversation] if group_id(conversation) else [])
        shards = sorted({mailbox_shard(name, self.layout.mailbox_shards) for name in owners})
        boxes = [path for shard in shards for path in self.layout.files(MAILBOX, shard)]
        if not boxes:
            return []
        deletions = [] if include_deleted else self.layout.files(DELETIONS, mailbox_shard(owner, self.layout.mailbox_shards))
        hidden = (
            "AND mid NOT IN (SELECT mid FROM read_parquet($deleted) WHERE owner_uid = $owner0)" if deletions else ""
        )
        # constants, not a subquery: DuckDB then skips row groups by their owner_uid min/max
        owner_filter = " OR ".join(f"owner_uid = $owner{i}" for i in range(len(owners)))
        owner_filter = f"({owner_filter})"
        params: dict[str, Any] = {
            **{f"owner{i}": name for i, name in enumerate(owners)},
            "boxes": boxes, "conversation": conversation, "before": before_seq,
            "after": after_seq, "limit": limit,
        }
        if deletions:
            params["deleted"] = deletions
        index = db.execute(
            f"""
            SELECT DISTINCT mid, seq FROM read_parquet($boxes, hive_partitioning = false)
            WHERE {owner_filter} AND conversation = $conversation AND seq < $before AND seq > $after {hidden}
            ORDER BY seq DESC LIMIT $limit
            """,
            params,
        ).fetchall()
        if not index:
            return []
        return self.contents(conversation, index)

    def contents(self, conversation: str, page: list[tuple[int, int]]) -> list[dict[str, Any]]:
        """The messages (mid, seq) of one conversation, newest seq first, read only from their
        shards and, in segments sorted by conversation and seq, only from the row groups that
        hold that conversation's seq range."""
        mids = [mid for mid, _ in page]
        seqs = [seq for _, seq in page]
        shards = {content_shard(mid, self.layout.content_shards) for mid in mids}
        files = [path for shard in sorted(shards) for path in self.layout.files(CONTENT, shard)]
        if not files:
            return []
        # DuckDB skips row groups by their min/max of conversation and seq; the mids are
        # integers and go into the query as literals
        listed = ", ".join(str(int(mid)) for mid in mids)
        rows = self._cursor().execute(
            f"""
            SELECT mid, conversation, seq, sender, client_msg_id, type, body, sent_at_ms
            FROM read_parquet($files, hive_partitioning = false)
            WHERE conversation = $conversation AND seq BETWEEN {min(seqs)} AND {max(seqs)} AND mid IN ({listed})
            QUALIFY row_number() OVER (PARTITION BY mid) = 1
            ORDER BY seq DESC
            """,
            {"files": files, "conversation": conversation},
        ).fetchall()
        columns = ("mid", "conversation", "seq", "sender", "client_msg_id", "type", "body", "sent_at_ms")
        messages = [dict(zip(columns, row, strict=True)) for row in rows]
        for message in messages:
            message["body"] = orjson.loads(message["body"])
        return messages
