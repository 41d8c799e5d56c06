"""The in-process transport keeps Kafka's per-key order and isolates failing consumers."""

import asyncio

from imflow.streams.local import LocalBus


async def test_records_with_one_key_arrive_in_order_on_one_partition() -> None:
    bus = LocalBus(partitions=4)
    seen: dict[str, list[tuple[int, bytes]]] = {"a": [], "b": []}

    async def consumer(values: list[bytes], partition: int) -> None:
        await asyncio.sleep(0)  # let other partitions interleave
        for value in values:
            seen[value.decode()[0]].append((partition, value))

    bus.subscribe("t", consumer)
    await bus.start()
    for i in range(50):
        await bus.send("t", b"key-a", f"a{i}".encode())
        await bus.send("t", b"key-b", f"b{i}".encode())
    await bus.join()
    await bus.stop()
    for key in "ab":
        assert [v for _, v in seen[key]] == [f"{key}{i}".encode() for i in range(50)]
        assert len({p for p, _ in seen[key]}) == 1


async def test_a_failing_consumer_does_not_stop_the_partition() -> None:
    bus = LocalBus(partitions=1)
    got: list[bytes] = []

    async def consumer(values: list[bytes], partition: int) -> None:
        if b"bad" in values:
            raise RuntimeError("boom")
        got.extend(values)

    bus.subscribe("t", consumer)
    await bus.start()
    for value in (b"1", b"bad", b"2"):
        await bus.send("t", b"k", value)
        await bus.join()  # one batch each
    await bus.stop()
    assert got == [b"1", b"2"]


async def test_topics_made_after_start_are_consumed() -> None:
    bus = LocalBus(partitions=2)
    await bus.start()
    got: list[bytes] = []

    async def consumer(values: list[bytes], partition: int) -> None:
        got.extend(values)

    bus.subscribe("late", consumer)
    await bus.send("late", b"k", b"v")
    await bus.join()
    await bus.stop()
    assert got == [b"v"]
