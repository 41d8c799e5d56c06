"""The ingest agent end to end: one body, two transports.

On Kafka the agent runs in a real ``imflow worker`` (Faust) subprocess and writes to the real
redis-server; embedded it runs on the in-process transport and fakeredis.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from imflow.testing import ImflowProcess, eventually

from imflow.core.storage import keys, redis_client
from imflow.core.models import SendCommand
from imflow.core.settings import Settings
from imflow.node import Node
from imflow.streams.kafka import KafkaProducer
from imflow.streams.topics import INGEST, topic_name

GATEWAY = "gw-test"


@dataclass
class Pipeline:
    send: Any  # async (SendCommand) -> None
    redis: aioredis.Redis


@pytest.fixture
async def embedded(tmp_path: Path) -> AsyncIterator[Pipeline]:
    settings = Settings(data_dir=tmp_path, kafka_url=None, redis_url=None)
    node = Node(settings, run_agents=True)
    await node.start()

    async def send(command: SendCommand) -> None:
        await node.producer.send(topic_name(settings.app_id, INGEST), command.conversation.encode(), command.model_dump_json().encode())

    yield Pipeline(send, node.redis)
    await node.stop()


@pytest.fixture
async def on_kafka(tmp_path: Path, kafka_url: str, redis_url: str, real_redis: aioredis.Redis, app_id: str) -> AsyncIterator[Pipeline]:
    env = {"IMFLOW_KAFKA_URL": kafka_url, "IMFLOW_REDIS_URL": redis_url, "IMFLOW_APP_ID": app_id, "IMFLOW_DATA_DIR": str(tmp_path)}
    worker = ImflowProcess(["worker"], env, tmp_path / "worker.log", tmp_path)
    producer = KafkaProducer(kafka_url.split("://")[1], "test")
    await producer.start()
    try:
        worker.wait_output("Worker ready", timeout=90)

        async def send(command: SendCommand) -> None:
            await producer.send(topic_name(app_id, INGEST), command.conversation.encode(), command.model_dump_json().encode())

        yield Pipeline(send, real_redis)
    finally:
        await producer.stop()
        worker.stop_gracefully()


@pytest.fixture(params=["embedded", pytest.param("kafka", marks=[pytest.mark.kafka, pytest.mark.redis])])
def pipeline(request: pytest.FixtureRequest) -> Pipeline:
    return request.getfixturevalue("embedded" if request.param == "embedded" else "on_kafka")


def command(i: int) -> SendCommand:
    peer = "bob" if i % 2 == 0 else "carol"
    return SendCommand(
        sender="alice",
        client_msg_id=f"m{i}",
        conversation=f"p:alice:{peer}",
        body={"text": f"message {i}"},
        sent_at_ms=1_700_000_000_000 + i,
        gateway=GATEWAY,
    )


async def test_ingest_assigns_gap_free_seqs_once_per_client_message(pipeline: Pipeline) -> None:
    # returns once subscribed, so for sure before anything is sent
    acks = await redis_client.subscribe(pipeline.redis, keys.gateway_channel(GATEWAY))

    originals = [command(i) for i in range(20)]
    resends = originals[:10]  # a client that timed out sends the same client message id again
    for cmd in originals + resends:
        await pipeline.send(cmd)

    answers: dict[str, set[tuple[int, int]]] = defaultdict(set)
    acked = 0

    async def all_acked() -> bool:
        nonlocal acked
        while (message := await acks.get_message(ignore_subscribe_messages=True, timeout=0.2)) is not None:
            for event in json.loads(message["data"]):
                push = event["push"]
                assert event["users"] == ["alice"] and push["kind"] == "sent"
                answers[push["cmid"]].add((push["mid"], push["seq"]))
                acked += 1
        return len(answers) == 20 and acked >= 30

    await eventually(all_acked, timeout=60)
    await acks.aclose()

    # a resend got exactly the answer of the first send
    assert all(len(given) == 1 for given in answers.values()), answers
    for conversation in ("p:alice:bob", "p:alice:carol"):
        stored = await pipeline.redis.zrange(keys.conversation_log(conversation), 0, -1, withscores=True)
        messages = [json.loads(member) for member, _ in stored]
        assert [m["seq"] for m in messages] == list(range(1, 11)), "seqs are gap-free and each message is stored once"
        assert [int(score) for _, score in stored] == [m["seq"] for m in messages]
        for m in messages:
            assert answers[m["client_msg_id"]] == {(m["mid"], m["seq"])}
        # within a conversation, mids grow with seqs (time-ordered ids, one partition owner)
        assert [m["mid"] for m in messages] == sorted(m["mid"] for m in messages)


async def test_malformed_record_is_skipped_and_the_partition_goes_on(pipeline: Pipeline) -> None:
    """A poison record on the topic must not stop the agent."""
    good = command(0)
    raw_send = pipeline.send

    class Poison:
        conversation = good.conversation

        def model_dump_json(self) -> str:
            return '{"sender": 42}'

    await raw_send(Poison())  # type: ignore[arg-type]
    await raw_send(good)

    async def stored() -> int:
        return await pipeline.redis.zcard(keys.conversation_log(good.conversation))

    assert await eventually(stored, timeout=60) == 1


async def test_an_interval_of_0_turns_a_timer_off(tmp_path: Path) -> None:
    """The class: any timer whose interval is 0 does not run (``IMFLOW_ARCHIVE_MERGE_SECONDS=0``:
    only maintenance merges); with it set, the timer runs."""
    for merge_seconds, expected in ((0, False), (10, True)):
        settings = Settings(data_dir=tmp_path / str(merge_seconds), kafka_url=None, redis_url=None,
                            archive_merge_seconds=merge_seconds)
        node = Node(settings, run_agents=True)
        await node.start()
        try:
            running = {timer.name for timer in node.running_timers}
            assert len(node._timers) == len(node.running_timers), "a task for each, none for the others"
            assert ("archive_merge" in running) is expected, running
            assert {"archive", "archive_maintenance"} <= running
        finally:
            await node.stop()
