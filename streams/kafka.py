"""The Kafka producer used by gateways: idempotent, acks=all (aiokafka defaults to neither)."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError


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
