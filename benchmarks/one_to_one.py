"""One-to-one chat on the real stack: throughput, latency at a fixed rate, offline drain.

A Faust worker and a gateway run as their own processes on the local Kafka and Redis
(scripts/services); this process is the load: WebSocket clients speaking the real protocol.

    scripts/bench one-to-one [--runs 3] [--seconds 8] [--rates 500,1000,2000] [--pairs 50] [--social]

With ``--social`` each rate is measured twice in the same run: plain pairs, and pairs whose
users take messages from contacts only and block a few others, each sender a contact of its
receiver, so every send takes the full path of the block and privacy check (core/contacts.py)
on both users' slots.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
import uuid

from stack import Stack, arguments, percentile

from imflow.client import Client


BLOCKS_PER_USER = 3  # strangers each user of a social pair blocks, so the block hashes are not empty


async def pairs(stack: Stack, count: int, social: bool = False) -> list[tuple[Client, Client, str]]:
    """``count`` connected (sender, receiver, receiver's id); ``social``: contacts of each other,
    contacts-only, each blocking a few strangers."""
    tag = uuid.uuid4().hex[:6]
    out = []
    for i in range(count):
        sender = await stack.connect(f"s{i}-{tag}")
        receiver = await stack.connect(f"r{i}-{tag}")
        if social:
            await sender.request({"op": "contact_request", "user": receiver.user})
            await receiver.request({"op": "contact_accept", "user": sender.user})
            for client in (sender, receiver):
                await client.request({"op": "set_privacy", "dm": "contacts"})
                for j in range(BLOCKS_PER_USER):
                    await client.request({"op": "block", "user": f"x{j}-{client.user}"})
        out.append((sender, receiver, receiver.user))
    return out


async def close_all(clients: list[tuple[Client, Client, str]]) -> None:
    for sender, receiver, _ in clients:
        await sender.close()
        await receiver.close()


async def receive_all(receiver: Client, latencies: list[float], stop: asyncio.Event, counter: list[int]) -> None:
    while not stop.is_set():
        try:
            push = await receiver.next_message(timeout=0.2)
        except TimeoutError:
            continue
        counter[0] += 1
        text = push["message"]["body"]["text"]
        if text.startswith("t="):  # a timed message: the text carries its send time
            latencies.append(time.perf_counter() - float(text[2:]))


async def throughput(stack: Stack, n_pairs: int, seconds: float, window: int = 20) -> float:
    """Messages per second from send to the receiver's push, senders keeping ``window`` in flight."""
    clients = await pairs(stack, n_pairs)
    stop, counter, latencies = asyncio.Event(), [0], []
    receivers = [asyncio.create_task(receive_all(r, latencies, stop, counter)) for _, r, _ in clients]

    sending = asyncio.Event()
    sending.set()

    async def sender(client: Client, to: str) -> None:
        in_flight: set[asyncio.Future] = set()
        while sending.is_set():
            while len(in_flight) < window:
                in_flight.add(await client.send_nowait({"to": to, "body": {"text": "x"}}))
            done, in_flight = await asyncio.wait(in_flight, timeout=1, return_when=asyncio.FIRST_COMPLETED)
        await asyncio.wait(in_flight, timeout=60)  # leave no backlog for the next phase

    senders = [asyncio.create_task(sender(s, to)) for s, _, to in clients]
    await asyncio.sleep(2)  # warm up
    start_count, start = counter[0], time.perf_counter()
    await asyncio.sleep(seconds)
    rate = (counter[0] - start_count) / (time.perf_counter() - start)
    sending.clear()
    await asyncio.gather(*senders, return_exceptions=True)
    await asyncio.sleep(1)
    stop.set()
    await asyncio.gather(*receivers, return_exceptions=True)
    await close_all(clients)
    return rate


async def fixed_rate(stack: Stack, n_pairs: int, seconds: float, rate: int, social: bool = False) -> dict[str, float]:
    """Send→push and send→ACK latency at a fixed offered rate (open loop, 5 ms ticks), between
    plain or ``social`` pairs (see ``pairs``)."""
    clients = await pairs(stack, n_pairs, social)
    stop, counter, push_latency = asyncio.Event(), [0], []
    receivers = [asyncio.create_task(receive_all(r, push_latency, stop, counter)) for _, r, _ in clients]
    ack_latency: list[float] = []
    pending: list[asyncio.Future] = []

    def on_ack(sent_at: float):
        return lambda future: ack_latency.append(time.perf_counter() - sent_at) if not future.exception() else None

    tick, per_tick, i = 0.005, rate * 0.005, 0
    start = time.perf_counter()
    owed = 0.0
    while time.perf_counter() - start < seconds:
        owed += per_tick
        while owed >= 1:
            sender, _, to = clients[i % len(clients)]
            now = time.perf_counter()
            future = await sender.send_nowait({"to": to, "body": {"text": f"t={now!r}"}})
            future.add_done_callback(on_ack(now))
            pending.append(future)
            owed -= 1
            i += 1
        await asyncio.sleep(max(0.0, start + (i / rate) - time.perf_counter()) or tick / 5)
    sent = i
    await asyncio.wait(pending, timeout=10)
    deadline = time.perf_counter() + 10
    while counter[0] < sent and time.perf_counter() < deadline:
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.gather(*receivers, return_exceptions=True)
    await close_all(clients)
    return {
        "offered_per_s": sent / seconds,
        "delivered": counter[0] / sent,
        "push_p50_ms": percentile(push_latency, 0.5) * 1000,
        "push_p99_ms": percentile(push_latency, 0.99) * 1000,
        "ack_p50_ms": percentile(ack_latency, 0.5) * 1000,
        "ack_p99_ms": percentile(ack_latency, 0.99) * 1000,
    }


async def offline_drain(stack: Stack, messages: int = 1000) -> tuple[float, float]:
    """Seconds for a user coming online to fetch ``messages`` waiting in the inbox, and to fetch and ACK them."""
    tag = uuid.uuid4().hex[:6]
    sender = await stack.connect(f"d-s-{tag}")
    futures = [await sender.send_nowait({"to": f"d-r-{tag}", "body": {"text": f"m{i}"}}) for i in range(messages)]
    await asyncio.wait_for(asyncio.gather(*futures), 60)
    await sender.close()
    receiver = await stack.connect(f"d-r-{tag}")
    start = time.perf_counter()
    fetched, before, fetching = 0, None, 0.0
    while True:
        page = await receiver.sync(before_mid=before, limit=1000)
        fetching = time.perf_counter() - start
        fetched += len(page["messages"])
        if page["messages"]:
            await receiver.ack([m["mid"] for m in page["messages"]])
        before = page["next_before_mid"]
        if before is None:
            break
    elapsed = time.perf_counter() - start
    await receiver.close()
    assert fetched == messages, f"drained {fetched} of {messages}"
    return fetching, elapsed


async def check_cost(redis_url: str, calls: int = 3000) -> dict[str, dict[str, float]]:
    """What the one-to-one send check (core/contacts.check_direct, run by every send at the
    gateway) costs by itself, in µs per call, in this process on the real Redis: for a plain
    pair, for a ``social`` pair (contacts, contacts-only, each blocking a few others), and a
    bare PING round trip beside them for scale."""
    from imflow.core import accounts, contacts
    from imflow.core.services import Services
    from imflow.core.settings import Settings
    from imflow.core.storage.redis_client import connect

    redis = connect(redis_url)  # a single server or a cluster (redis+cluster://)
    services = Services(Settings(accounts="open"), redis, node="bench")
    tag = uuid.uuid4().hex[:6]
    plain, social = (f"cp-s-{tag}", f"cp-r-{tag}"), (f"cs-s-{tag}", f"cs-r-{tag}")
    await contacts.request(services, contacts.Request(social[0], social[1], "", ""))
    await contacts.accept(services, contacts.Accept(social[1], social[0], ""))
    for user in social:
        await accounts.set_privacy(services, accounts.SetPrivacy(user, "contacts", None))
        for j in range(BLOCKS_PER_USER):
            await contacts.block(services, contacts.Block(user, f"x{j}-{user}", ""))

    async def timed(call) -> dict[str, float]:
        took = []
        for _ in range(calls):
            start = time.perf_counter()
            await call()
            took.append((time.perf_counter() - start) * 1e6)
        return {"p50_us": percentile(took, 0.5), "p99_us": percentile(took, 0.99)}

    try:
        return {
            "ping": await timed(redis.ping),
            "check_plain": await timed(lambda: contacts.check_direct(services, *plain)),
            "check_social": await timed(lambda: contacts.check_direct(services, *social)),
        }
    finally:
        await redis.aclose()


async def main() -> None:
    parser = arguments(__doc__, "artifacts/bench-one-to-one.json")
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--rates", type=lambda text: [int(r) for r in text.split(",")], default=[500, 1000, 2000])
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--social", action="store_true", help="each rate also between contacts-only pairs that block others")
    args = parser.parse_args()

    # the load's users have no accounts: they are registered on first sign-in
    stack = Stack(args.kafka, args.redis, workers=args.workers, gateways=1, env={"IMFLOW_ACCOUNTS": "open"})
    kinds = ["", "_social"] if args.social else [""]
    rated = {f"rate_{r}{kind}": f"at_{r}_per_s{kind}" for r in args.rates for kind in kinds}  # raw -> summary key
    results: dict[str, list] = {"throughput_per_s": [], "drain_fetch_1000_ms": [], "drain_1000_ms": []}
    results |= {name: [] for name in rated}
    try:
        for run in range(1, args.runs + 1):
            print(f"run {run}/{args.runs}: throughput ...", file=sys.stderr, flush=True)
            results["throughput_per_s"].append(await throughput(stack, args.pairs, args.seconds))
            for rate in args.rates:
                for kind in kinds:
                    print(f"run {run}/{args.runs}: latency at {rate}/s{kind} ...", file=sys.stderr, flush=True)
                    results[f"rate_{rate}{kind}"].append(await fixed_rate(stack, args.pairs, args.seconds, rate, bool(kind)))
            print(f"run {run}/{args.runs}: offline drain ...", file=sys.stderr, flush=True)
            fetching, draining = await offline_drain(stack)
            results["drain_fetch_1000_ms"].append(1000 * fetching)
            results["drain_1000_ms"].append(1000 * draining)
        if args.social:
            print("the send check by itself ...", file=sys.stderr, flush=True)
            results["send_check"] = [await check_cost(args.redis) for _ in range(args.runs)]
    finally:
        stack.stop()
    median = statistics.median
    summary = {
        "runs": args.runs,
        "workers": args.workers,
        "throughput_per_s": median(results["throughput_per_s"]),
        **{label: {key: median(r[key] for r in results[name]) for key in results[name][0]} for name, label in rated.items()},
        "drain_fetch_1000_ms": median(results["drain_fetch_1000_ms"]),
        "drain_1000_ms": median(results["drain_1000_ms"]),
        **({"send_check": {
            part: {key: median(run[part][key] for run in results["send_check"]) for key in ("p50_us", "p99_us")}
            for part in results["send_check"][0]
        }} if args.social else {}),
        "raw": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "raw"}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
