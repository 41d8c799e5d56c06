"""A record no agent can process goes to the dead-letter topic once, and its sender hears of it.

Runs the agents' own code (streams/agents.py run_body) on the in-process transport's Redis
(fakeredis) and on the real redis-server, with a producer that keeps what it is given; the
real-Kafka path is tests/test_frame_limits.py.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import orjson

from imflow.core.agents import AgentContext, AgentSpec
from imflow.core.sending import ingest
from imflow.core.settings import Settings
from imflow.core.storage import keys, redis_client
from imflow.gateway import frames
from imflow.streams.agents import run_body


class KeptProducer:
    """A producer that keeps its records (a unit-test double for the broker)."""

    def __init__(self) -> None:
        self.records: list[tuple[str, bytes, bytes]] = []

    async def send(self, topic: str, key: bytes, value: bytes) -> None:
        self.records.append((topic, key, value))

    async def enqueue(self, topic: str, key: bytes, value: bytes) -> asyncio.Future:
        await self.send(topic, key, value)
        done: asyncio.Future = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def deep(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


async def test_malformed_and_failing_records_are_set_aside_once_and_the_sender_told(any_redis, tmp_path) -> None:
    settings = Settings(data_dir=tmp_path, kafka_url=None, redis_url=None, app_id="dlq-test")
    producer = KeptProducer()
    ctx = AgentContext(settings=settings, redis=any_redis, producer=producer)
    pubsub = await redis_client.subscribe(any_redis, keys.gateway_channel("gw-1"))  # returns once subscribed
    poison = orjson.dumps({
        "sender": "alice", "client_msg_id": "c-1", "conversation": "p:alice:bob", "type": "text",
        "body": {"text": "hi", "n": deep(100)}, "sent_at_ms": 1, "gateway": "gw-1", "origin": "",
    })
    garbage = b"\xff\xfe not even json"
    spec = AgentSpec("ingest", "ingest", ingest)
    for _ in range(2):  # Kafka may deliver the same records again
        await run_body(spec, ctx, [(poison, 3), (garbage, 5)])

    assert [topic for topic, _, _ in producer.records] == ["dlq-test.dead_letter"] * 2
    kept = [orjson.loads(value) for _, _, value in producer.records]
    assert {base64.b64decode(record["value_b64"]) for record in kept} == {poison, garbage}
    assert {record["partition"] for record in kept} == {3, 5}
    assert all(record["agent"] == "ingest" and record["error"] for record in kept)

    told = []
    while (message := await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)) is not None:
        told.extend(orjson.loads(message["data"]))
    await pubsub.aclose()
    why = "message c-1 could not be processed and was set aside; do not resend it unchanged"
    assert told == [{"users": ["alice"], "push": {"kind": "rejected", "cmid": "c-1", "message": why}}]
    # and the gateway turns that notification into this frame
    assert frames.push(told[0]["push"]) == {"op": "error", "code": "rejected", "cmid": "c-1", "message": why}


async def test_a_body_that_keeps_failing_is_set_aside_not_retried_forever(any_redis, tmp_path) -> None:
    settings = Settings(data_dir=tmp_path, kafka_url=None, redis_url=None, app_id="dlq-test2")
    producer = KeptProducer()
    ctx = AgentContext(settings=settings, redis=any_redis, producer=producer)
    calls = []

    async def broken(context: AgentContext, records: list[tuple[bytes, int]]) -> None:
        calls.append(len(records))
        if any(value == b"bad" for value, _ in records):
            raise ValueError("cannot handle this one")

    await run_body(AgentSpec("plugin.agent", "plugin.topic", broken), ctx, [(b"good", 0), (b"bad", 0), (b"good2", 0)])
    # the batch failed, then each record alone: the good ones went through, the bad one was set aside
    assert calls == [3, 1, 1, 1]
    [(topic, _, value)] = producer.records
    assert topic == "dlq-test2.dead_letter"
    assert base64.b64decode(orjson.loads(value)["value_b64"]) == b"bad"
    assert "cannot handle this one" in orjson.loads(value)["error"]
