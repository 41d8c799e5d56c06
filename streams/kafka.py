"""Kafka for gateways: the producer (idempotent, acks=all: aiokafka defaults to neither) and the
broadcast consumer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

log = logging.getLogger(__name__)


class KafkaProducer:
    def __init__(self, bootstrap: str, client_id: str) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            client_id=client_id,
            acks="all",
            enable_idempotence=True,
            linger_ms=1,
            request_timeout_ms=10_000,
        )

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def send(self, topic: str, key: bytes, value: bytes) -> None:
        await self._producer.send_and_wait(topic, value=value, key=key)

    async def enqueue(self, topic: str, key: bytes, value: bytes) -> asyncio.Future:
        """Queue a record in send order; the future resolves once the broker has it (acks=all)."""
        return await self._producer.send(topic, value=value, key=key)

    async def ready(self) -> bool:
        try:
            await self._producer.client.fetch_all_metadata()
        except KafkaError:
            return False
        return True


async def ensure_topics(bootstrap: str, names: list[str], partitions: int, replication_factor: int) -> None:
    """Create the topics that are missing, with ``partitions`` each; existing ones are left alone."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(name, partitions, replication_factor) for name in names if name not in existing]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:  # another process made them first
                pass
    finally:
        await admin.close()


class BroadcastConsumer:
    """Reads every partition of a topic from its end, outside any consumer group: each gateway
    gets every record of a broadcast stream (live rooms), none before it started."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, handle: Callable[[list[bytes]], Awaitable[None]]) -> None:
        self._consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
        self._topic, self._partitions, self._handle = topic, partitions, handle
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._consumer.start()
        self._consumer.assign([TopicPartition(self._topic, p) for p in range(self._partitions)])
        await self._consumer.seek_to_end()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                batches = await self._consumer.getmany(timeout_ms=20, max_records=5_000)
            except asyncio.CancelledError:
                raise
            except Exception:  # a broker hiccup must not end the stream for this gateway
                log.exception("broadcast stream %s: reading failed; retrying", self._topic)
                await asyncio.sleep(1)
                continue
            for records in batches.values():
                try:
                    await self._handle([record.value for record in records if record.value is not None])
                except Exception:
                    log.exception("broadcast stream %s: a handler failed; its records are skipped", self._topic)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        with contextlib.suppress(Exception):
            await self._consumer.stop()
