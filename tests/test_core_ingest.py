"""The ingest script on its own: one answer per client message id, gap-free seqs."""

from imflow.core.storage import keys
from imflow.core.ids import IdGenerator
from imflow.core.storage.ingest import accept
from imflow.core.models import SendCommand
from imflow.core.storage.scripts import script


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
    log = keys.conversation_log("p:alice:bob")
    # nothing is sealed into the archive yet: the log keeps every message (history has no hole)
    assert await any_redis.zcard(log) == 10
    old, stored = await accept(any_redis, ids, cmd("m0"), 60, log_limit=3)
    assert old.duplicate and old.seq == 1 and stored is not None
    # the archive sealed seqs 1..8: the log keeps the newest 3 (and would keep anything unsealed above)
    trim_keys = [log, keys.conversation_sealed("p:alice:bob"), keys.conversation_amended("p:alice:bob")]
    await script(any_redis, "trim_log")(keys=trim_keys, args=[8, 3])
    assert [int(score) for _, score in await any_redis.zrange(log, 0, -1, withscores=True)] == [8, 9, 10]
    # a later ingest trims the same way, and the mark only rises
    await script(any_redis, "trim_log")(keys=trim_keys, args=[5, 3])
    await accept(any_redis, ids, cmd("m10"), 60, log_limit=3)
    assert [int(score) for _, score in await any_redis.zrange(log, 0, -1, withscores=True)] == [9, 10, 11]
    old, stored = await accept(any_redis, ids, cmd("m0"), 60, log_limit=3)
    assert old.duplicate and old.seq == 1 and stored is None  # trimmed from Redis, in the archive
