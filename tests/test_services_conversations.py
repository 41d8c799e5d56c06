"""The conversations service (core/conversations.py) on fakeredis and the real redis-server,
without a gateway: read, sync, history, delete and ACK as typed commands and results."""

from __future__ import annotations

import orjson
import pytest

from imflow.core import conversations, groups
from imflow.core.errors import ErrorCode, ImflowError
from imflow.core.models import Message
from imflow.core.services import Services
from imflow.core.settings import Settings
from imflow.core.storage import archive, inbox, keys
from imflow.testing import UNCHANGED_SETTINGS

SETTINGS = Settings(topic_partitions=1, accounts="open")  # users here have no accounts
ALICE_BOB = "p:alice:bob"


@pytest.fixture
def services(any_redis) -> Services:
    return Services(SETTINGS, any_redis, clock=lambda: 4321)


def message(conversation: str, seq: int, sender: str = "alice") -> Message:
    return Message(mid=10_000 + seq, seq=seq, conversation=conversation, sender=sender, client_msg_id=f"c{seq}",
                   body={"text": str(seq)}, sent_at_ms=seq)


async def store(services: Services, conversation: str, members: list[str], count: int, first: int = 1) -> list[Message]:
    """Messages ``first``…: numbered, in the conversation's log and delivered to each member (write fan-out)."""
    stored = [message(conversation, seq) for seq in range(first, first + count)]
    for m in stored:
        await services.redis.zadd(keys.conversation_log(conversation), {inbox.inbox_entry(m): m.seq})
        for member in members:
            await inbox.deliver(services.redis, m, member, SETTINGS.inbox_limit)
    await services.redis.set(keys.conversation_seq(conversation), stored[-1].seq)  # as the ingest script does
    return stored


async def refused(call, code: ErrorCode) -> None:
    with pytest.raises(ImflowError) as error:
        await call
    assert error.value.code == code, error.value.message


async def test_a_non_member_learns_nothing(services: Services) -> None:
    await store(services, ALICE_BOB, ["alice", "bob"], 2)
    await refused(conversations.read(services, conversations.Read("eve", ALICE_BOB, 2)), ErrorCode.NOT_FOUND)
    await refused(conversations.history(services, conversations.History("eve", ALICE_BOB, None, 10)), ErrorCode.NOT_FOUND)
    await refused(conversations.delete(services, conversations.Delete("eve", ALICE_BOB, 10_001)), ErrorCode.NOT_FOUND)


async def test_read_moves_forward_only_and_is_recorded(services: Services) -> None:
    await store(services, ALICE_BOB, ["alice", "bob"], 3)
    unread = await conversations.read(services, conversations.Read("bob", ALICE_BOB, 2))
    assert (unread.count, unread.total, unread.read_seq) == (1, 1, 2)
    late = await conversations.read(services, conversations.Read("bob", ALICE_BOB, 1))
    assert (late.count, late.read_seq) == (1, 2), "a late report changes nothing"
    rows = [orjson.loads(raw) for raw in await services.redis.lrange(keys.archive_pending(SETTINGS.app_id, 0), 0, -1)]
    reports = [row for record in rows if record.get("table") == archive.READ_EVENTS for row in record["rows"]]
    assert reports == [
        {"owner_uid": "bob", "conversation": ALICE_BOB, "read_seq": 2, "at_ms": 4321},
        {"owner_uid": "bob", "conversation": ALICE_BOB, "read_seq": 2, "at_ms": 4321},
    ]


async def test_history_pages_back_hiding_deletions_and_what_came_before_joining(services: Services) -> None:
    stored = await store(services, ALICE_BOB, ["alice", "bob"], 5)
    deleted = await conversations.delete(services, conversations.Delete("bob", ALICE_BOB, stored[3].mid))
    assert deleted == conversations.Deleted(ALICE_BOB, stored[3].mid)
    page = await conversations.history(services, conversations.History("bob", ALICE_BOB, None, 3))
    assert [m["seq"] for m in page.messages] == [5, 3] and page.next_before_seq == 3, "seq 4 hidden, still counted"
    older = await conversations.history(services, conversations.History("bob", ALICE_BOB, page.next_before_seq, 3))
    assert [m["seq"] for m in older.messages] == [2, 1] and older.next_before_seq is None
    alice = await conversations.history(services, conversations.History("alice", ALICE_BOB, None, 9))
    assert [m["seq"] for m in alice.messages] == [5, 4, 3, 2, 1], "deleted for bob only"
    # a group member sees what came after they joined
    await groups.create(services, groups.CreateGroup("ann", "g", gid="h1"))
    await store(services, "g:h1", ["ann"], 3)
    await groups.add(services, groups.AddMembers("ann", "h1", ("ben",)))
    await store(services, "g:h1", ["ann", "ben"], 2, first=4)
    ben = await conversations.history(services, conversations.History("ben", "g:h1", None, 50))
    assert [m["seq"] for m in ben.messages] == [5, 4] and ben.next_before_seq is None


async def test_sync_pages_the_inbox_and_ack_empties_it(services: Services) -> None:
    stored = await store(services, ALICE_BOB, ["alice", "bob"], 3)
    first = await conversations.sync(services, conversations.Sync("bob", None, 2))
    assert [m["seq"] for m in orjson.loads(orjson.dumps(first.messages))] == [3, 2] and first.next_before_mid == stored[1].mid
    # alice has read what she sent: her read seq is bob's peer_read_seq
    expected = {"conversation": ALICE_BOB, "last_seq": 3, "read_seq": 0, "unread": 3, **UNCHANGED_SETTINGS, "peer_read_seq": 3}
    assert first.conversations == [expected]
    assert first.total_unread == 3
    second = await conversations.sync(services, conversations.Sync("bob", first.next_before_mid, 2))
    assert len(second.messages) == 1 and second.next_before_mid is None
    assert second.conversations is None and second.total_unread is None, "only the first page carries states"
    acked = await conversations.acknowledge(services, conversations.Acknowledge("bob", tuple(m.mid for m in stored)))
    assert acked == conversations.Acknowledged(3)
    assert (await conversations.sync(services, conversations.Sync("bob", None, 10))).messages == []
