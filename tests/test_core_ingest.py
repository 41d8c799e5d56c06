"""The ingest script on its own: one answer per client message id, gap-free seqs."""

from imflow.core.ids import IdGenerator
from imflow.core.ingest import accept
from imflow.core.models import SendCommand


def cmd(cmid: str, text: str = "hi") -> SendCommand:
    return SendCommand(sender="alice", client_msg_id=cmid, conversation="p:alice:bob", body={"text": text}, sent_at_ms=1)


async def test_replay_returns_the_stored_message(any_redis) -> None:
    ids = IdGenerator(1)
    first, stored = await accept(any_redis, ids, cmd("a"), 60)
    again, stored_again = await accept(any_redis, ids, cmd("a", "changed on resend"), 60)
    assert not first.duplicate and again.duplicate
    assert (again.mid, again.seq) == (first.mid, first.seq) == (stored.mid, 1)
    assert stored_again == stored and stored.body == {"text": "hi"}, "the first version wins"
    second, _ = await accept(any_redis, ids, cmd("b"), 60)
    assert second.seq == 2


async def test_log_keeps_the_newest_and_an_old_replay_still_answers(any_redis) -> None:
    ids = IdGenerator(1)
    for i in range(10):
        await accept(any_redis, ids, cmd(f"m{i}"), 60, log_limit=3)
    old, stored = await accept(any_redis, ids, cmd("m0"), 60, log_limit=3)
    assert old.duplicate and old.seq == 1 and stored is None  # trimmed from Redis, in the archive
