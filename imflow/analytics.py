"""The history archive for analysts: DuckDB views and pandas DataFrames.

    from imflow.analytics import Archive
    archive = Archive("data/archive")          # safe while imflow writes: segments are immutable
    archive.messages_per("hour")               # a DataFrame
    archive.sql("SELECT sender, count(*) FROM im_msg_content GROUP BY 1").df()

Views (columns in docs/archive.md): ``im_msg_content`` (one row per message),
``im_user_msg_box`` (one row per mailbox entry, with a ``deleted`` flag) and one view per plugin
table (``red_packets``, ``red_packet_events``). Segments written again after a crash are
de-duplicated here. ``refresh()`` picks up segments sealed since the archive was opened.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import duckdb
import pandas as pd

from imflow.core.archive import CONTENT, CONTENT_SCHEMA, DELETIONS, DELETIONS_SCHEMA, MAILBOX, MAILBOX_SCHEMA, ArchiveLayout

Bucket = Literal["minute", "hour", "day", "week", "month"]
_DUCK_TYPES = {"int64": "BIGINT", "string": "VARCHAR"}


def _empty(schema) -> str:
    """A typed, empty SELECT for a table that has no segment yet."""
    columns = ", ".join(f"NULL::{_DUCK_TYPES[str(field.type)]} AS {field.name}" for field in schema)
    return f"SELECT {columns} WHERE false"


class Archive:
    def __init__(self, root: str | Path = "data/archive") -> None:
        self.root = Path(root)
        self.layout = ArchiveLayout(self.root)  # shard counts do not matter to readers of every shard
        self.db = duckdb.connect()
        self.refresh()

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _source(self, table: str, schema) -> str:
        files = self.layout.files(table)
        return f"read_parquet({files!r}, union_by_name = true)" if files else f"({_empty(schema)})"

    def refresh(self) -> None:
        """(Re)define the views over the segments sealed so far."""
        content = self._source(CONTENT, CONTENT_SCHEMA)
        mailbox = self._source(MAILBOX, MAILBOX_SCHEMA)
        deletions = self._source(DELETIONS, DELETIONS_SCHEMA)
        self.db.execute(f"""
            CREATE OR REPLACE VIEW im_msg_content AS
            SELECT *, epoch_ms(created_at_ms) AS created_at, epoch_ms(sent_at_ms) AS sent_at
            FROM {content} QUALIFY row_number() OVER (PARTITION BY mid ORDER BY created_at_ms) = 1
        """)
        self.db.execute(f"""
            CREATE OR REPLACE VIEW im_user_msg_box AS
            SELECT box.*, epoch_ms(box.created_at_ms) AS created_at, deleted.mid IS NOT NULL AS deleted
            FROM (SELECT * FROM {mailbox} QUALIFY row_number() OVER (PARTITION BY owner_uid, mid) = 1) AS box
            LEFT JOIN (SELECT DISTINCT owner_uid, mid FROM {deletions}) AS deleted USING (owner_uid, mid)
        """)
        core = {CONTENT, MAILBOX, DELETIONS}
        for folder in sorted(p for p in self.root.glob("*") if p.is_dir() and p.name not in core):
            files = self.layout.files(folder.name)
            if files and folder.name.isidentifier():
                self.db.execute(f"CREATE OR REPLACE VIEW {folder.name} AS SELECT DISTINCT * FROM read_parquet({files!r}, union_by_name = true)")

    def tables(self) -> list[str]:
        return [row[0] for row in self.db.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal ORDER BY 1").fetchall()]

    def sql(self, query: str) -> duckdb.DuckDBPyRelation:
        """Any SQL over the views; ``.df()`` on the result gives a DataFrame, ``.pl()`` polars."""
        return self.db.sql(query)

    def scalar(self, query: str) -> object:
        """The single value a query returns (a count, a maximum)."""
        return self.db.execute(query).fetchall()[0][0]

    # -- the questions analysts ask first

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
