"""imflow.analytics over an archive written by the real writer (core.archive.write_segments)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from imflow.analytics import Archive
from imflow.core.storage.archive import ArchiveLayout, write_segments
from imflow.core.ids import EPOCH_MS, NODE_BITS, SEQUENCE_BITS

HOUR = 3_600_000


def mid_at(ms: int, n: int) -> int:
    return ((ms - EPOCH_MS) << (NODE_BITS + SEQUENCE_BITS)) | n


def record(conversation: str, seq: int, sender: str, members: list[str], at_ms: int, n: int = 0) -> dict:
    message = {"mid": mid_at(at_ms, (n + seq) % 64), "seq": seq, "conversation": conversation, "sender": sender,
               "client_msg_id": f"{conversation}-{seq}", "type": "text", "body": {"text": "hi"}, "sent_at_ms": at_ms - 3}
    return {"kind": "message", "message": message, "members": members}


def test_views_deduplicate_and_answer_the_usual_questions(tmp_path: Path) -> None:
    layout = ArchiveLayout(tmp_path)
    start = EPOCH_MS + 1000 * HOUR
    batch = [record("p:alice:bob", i + 1, "alice" if i % 2 else "bob", ["alice", "bob"], start + (i // 5) * HOUR + i) for i in range(15)]
    batch += [record("p:alice:carol", i + 1, "carol", ["alice", "carol"], start + i, n=32) for i in range(3)]
    write_segments(layout, batch)
    write_segments(layout, batch[:4])  # replayed after a crash
    write_segments(layout, [{"kind": "delete", "owner": "bob", "mid": batch[0]["message"]["mid"], "at_ms": start}])
    write_segments(layout, [{"kind": "rows", "table": "red_packets", "rows": [{"mid": 1, "total_cents": 100}]}] * 2)

    with Archive(tmp_path) as archive:
        assert {"im_msg_content", "im_user_msg_box", "red_packets"} <= set(archive.tables())
        assert archive.scalar("SELECT count(*) FROM im_msg_content") == 18
        assert archive.scalar("SELECT count(*) FROM im_user_msg_box") == 36
        assert archive.scalar("SELECT count(*) FROM im_user_msg_box WHERE deleted") == 1
        assert archive.scalar("SELECT count(*) FROM red_packets") == 1
        per_hour = archive.messages_per("hour")
        assert list(per_hour["messages"]) == [8, 5, 5]
        assert list(archive.active_users_per("day")["active_users"]) == [3]
        top = archive.top_conversations(1)
        assert top.loc[0, "conversation"] == "p:alice:bob" and top.loc[0, "messages"] == 15
        assert set(archive.fan_out_cost()["rows_per_message"]) == {2}
        assert archive.ingest_latency_ms().loc[0, "messages"] == 18


def test_an_empty_archive_has_empty_views(tmp_path: Path) -> None:
    with Archive(tmp_path / "nothing-yet") as archive:
        assert archive.messages_per("day").empty
        assert archive.scalar("SELECT count(*) FROM im_user_msg_box") == 0


def test_open_while_a_writer_seals_segments(tmp_path: Path) -> None:
    layout = ArchiveLayout(tmp_path)
    done = threading.Event()
    halfway = threading.Event()  # the writer has sealed half of its segments
    read_halfway = threading.Event()  # the reader has read twice since: the writer may go on

    def writer() -> None:
        try:
            for n in range(40):
                if n == 20:
                    # not left to luck: a slow start of the reader must not find the writer done
                    halfway.set()
                    assert read_halfway.wait(60), "the reader never read"
                write_segments(layout, [record("p:a:b", n * 10 + i + 1, "a", ["a", "b"], EPOCH_MS + HOUR + n * 10 + i) for i in range(10)])
                time.sleep(0.005)  # a writer seals now and then, not all at once
        finally:
            done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    archive = Archive(tmp_path)
    counts = []
    since_halfway = 0
    while not done.is_set():
        archive.refresh()
        counts.append(archive.scalar("SELECT count(*) FROM im_msg_content"))
        if halfway.is_set():
            since_halfway += 1
            if since_halfway >= 2:
                read_halfway.set()
    thread.join()
    archive.refresh()
    assert archive.scalar("SELECT count(*) FROM im_msg_content") == 400
    assert len(counts) >= 2 and counts[0] < 400, "the reader read while the writer was still writing"
    assert counts == sorted(counts), "a reader never loses rows it saw: segments are only added, whole"
    archive.close()
