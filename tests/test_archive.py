"""The archive: sealed segments, read-time de-duplication, delete-for-me, readers beside writers."""

from __future__ import annotations

import threading
from pathlib import Path

from imflow.core.storage.archive import CONTENT, MAILBOX, ArchiveLayout, ArchiveReader, content_shard, mailbox_shard, write_segments


def mid_of(seq: int) -> int:
    return (5_000 + seq) << 12  # one millisecond apart, as ids of a quiet conversation are


def record(seq: int, sender: str = "alice", conversation: str = "p:alice:bob") -> dict:
    message = {
        "mid": mid_of(seq),
        "seq": seq,
        "conversation": conversation,
        "sender": sender,
        "client_msg_id": f"c{seq}",
        "type": "text",
        "body": {"text": f"m{seq}"},
        "sent_at_ms": seq,
    }
    return {"kind": "message", "message": message, "members": ["alice", "bob"]}


def test_history_reads_index_then_content_and_ignores_replayed_segments(tmp_path: Path) -> None:
    layout = ArchiveLayout(tmp_path, content_shards=4, mailbox_shards=4)
    batch = [record(seq) for seq in range(1, 31)]
    assert write_segments(layout, batch) == 30 * 3  # one content row, two mailbox rows each
    write_segments(layout, batch[10:20])  # a crash before the queue was trimmed: written again
    reader = ArchiveReader(layout)
    page = reader.history_page("bob", "p:alice:bob", before_seq=25, limit=10)
    assert [m["seq"] for m in page] == list(range(24, 14, -1))
    assert page[0]["body"] == {"text": "m24"}
    assert reader.history_page("carol", "p:alice:bob", before_seq=99, limit=10) == []
    # content is sharded by the millisecond of its mid, the mailbox by owner
    content_shards = {Path(f).parent.name for f in layout.files(CONTENT)}
    mailbox_shards = {Path(f).parent.name for f in layout.files(MAILBOX)}
    assert content_shards == {f"shard={content_shard(mid_of(seq), 4):03d}" for seq in range(1, 31)} == {f"shard={n:03d}" for n in range(4)}
    assert mailbox_shards == {f"shard={mailbox_shard(owner, 4):03d}" for owner in ("alice", "bob")}


def test_delete_for_me_hides_from_one_owner(tmp_path: Path) -> None:
    layout = ArchiveLayout(tmp_path)
    write_segments(layout, [record(1), record(2)])
    write_segments(layout, [{"kind": "delete", "owner": "bob", "mid": mid_of(2), "at_ms": 9}])
    reader = ArchiveReader(layout)
    assert [m["seq"] for m in reader.history_page("bob", "p:alice:bob", 99, 10)] == [1]
    assert [m["seq"] for m in reader.history_page("alice", "p:alice:bob", 99, 10)] == [2, 1]


def test_readers_never_see_half_a_segment_while_a_writer_seals(tmp_path: Path) -> None:
    layout = ArchiveLayout(tmp_path, content_shards=2, mailbox_shards=2)
    done = threading.Event()

    def writer() -> None:
        for start in range(0, 2000, 100):
            write_segments(layout, [record(seq) for seq in range(start + 1, start + 101)])
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    reader = ArchiveReader(layout)
    seen = 0
    while not done.is_set() or seen < 2000:
        page = reader.history_page("alice", "p:alice:bob", before_seq=10**9, limit=5000)
        seqs = [m["seq"] for m in page]
        assert seqs == list(range(len(seqs), 0, -1)), "every page is a whole prefix: no torn segments"
        seen = len(seqs)
    thread.join()
    assert seen == 2000


def test_history_pages_can_be_read_from_many_threads_at_once(tmp_path: Path) -> None:
    """Gateways read history pages in worker threads at once; one DuckDB connection refused a
    second call while one ran ("connection is busy"), which became an `internal` error."""
    from concurrent.futures import ThreadPoolExecutor

    layout = ArchiveLayout(tmp_path, content_shards=2, mailbox_shards=2)
    write_segments(layout, [record(seq) for seq in range(1, 201)])
    reader = ArchiveReader(layout)

    def page(before: int) -> list[int]:
        return [m["seq"] for m in reader.history_page("bob", "p:alice:bob", before_seq=before, limit=20)]

    try:
        with ThreadPoolExecutor(8) as pool:
            pages = list(pool.map(page, [200 - n % 150 for n in range(400)]))
    finally:
        reader.close()
    assert pages == [list(range(before - 1, max(0, before - 21), -1)) for before in [200 - n % 150 for n in range(400)]]
