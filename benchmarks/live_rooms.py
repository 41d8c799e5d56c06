"""A live room with 10,000 viewers on one gateway: deliveries per second, batch delay, memory
per connection, and what overload drops.

    scripts/bench live-rooms [--viewers 10000] [--processes 4] [--rates 200,1000,3000,6000] [--seconds 6]

One ``imflow gateway`` on the real Kafka and Redis (the room stream is a Kafka topic the
gateway reads whole). The viewers are real WebSocket connections held by --processes load
processes. A host posts 2 messages a second (high priority) and a gift now and then; the
audience posts chat at each rate in turn, pipelined from a few connections. Measured, per
rate: room messages received per second by all viewers together, the delay from a post to
its batch reaching a viewer (p50/p99 over a sample), and whether every host message reached
every viewer. Memory: the gateway's resident size with the viewers connected and idle, less
before, per connection. The per-viewer cap is IMFLOW_THROTTLE_VIEWER_CAP (--viewer-cap).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import random
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import httpx
import orjson
import websockets
from stack import SECRET, Stack, percentile

from imflow.client import Client
from imflow.core import tokens

ROOM = "bench-room"


def viewer_process(url: str, tokens_: list[str], ready, stop, results) -> None:
    asyncio.run(viewers(url, tokens_, ready, stop, results))


async def viewers(url: str, tokens_: list[str], ready, stop, results) -> None:
    """One load process: its viewers' tokens come from the parent (the stack's secret is there)."""
    per_second: dict[int, int] = defaultdict(int)
    delays: dict[int, list[float]] = defaultdict(list)
    host_seen: list[int] = []
    sockets = []

    async def one(token: str) -> None:
        ws = await websockets.connect(url, compression=None, max_queue=None, open_timeout=60)
        await ws.send(orjson.dumps({"op": "auth", "token": token}).decode())
        await ws.recv()  # welcome
        await ws.send(orjson.dumps({"op": "room.join", "room": ROOM, "ref": 1}).decode())
        while orjson.loads(await ws.recv()).get("op") != "room.join":
            pass
        sockets.append(ws)

    for start in range(0, len(tokens_), 200):
        await asyncio.gather(*(one(token) for token in tokens_[start : start + 200]))
    ready.set()
    rng = random.Random()

    async def listen(index: int, ws) -> None:
        try:
            async for data in ws:
                frame = orjson.loads(data)
                messages = frame.get("messages")
                if not messages:
                    continue
                now = time.time() * 1000
                second = int(now // 1000)
                per_second[second] += len(messages)
                host_seen[index] += sum(1 for m in messages if m["sender"] == "host")
                if rng.random() < 0.02:  # a sample of batches is enough for the delay percentiles
                    delays[second].extend(now - m["at_ms"] for m in messages[:: max(1, len(messages) // 4)])
        except websockets.ConnectionClosed:
            pass

    host_seen.extend([0] * len(sockets))
    tasks = [asyncio.create_task(listen(i, ws)) for i, ws in enumerate(sockets)]
    while not stop.is_set():
        await asyncio.sleep(0.2)
    for ws in sockets:
        await ws.close()
    await asyncio.gather(*tasks, return_exceptions=True)
    results.send({"per_second": dict(per_second), "delays": {k: v for k, v in delays.items()}, "host_seen": host_seen})


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def post_at(clients: list[Client], rate: float, seconds: float, host: Client, counts: dict) -> None:
    """Audience chat at ``rate`` a second from several connections; the host twice a second."""
    start = time.perf_counter()
    total = int(rate * seconds)
    pending: list[asyncio.Task] = []  # all of them: a failure must be counted however early
    next_host = 0.0
    for i in range(total):
        await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
        elapsed = time.perf_counter() - start
        if elapsed >= next_host:
            next_host += 0.5
            counts["host"] += 1
            pending.append(asyncio.create_task(host.request({"op": "room.post", "room": ROOM, "text": f"host {counts['host']}"})))
        kind = "gift" if i % 200 == 0 else "chat"
        task = asyncio.create_task(clients[i % len(clients)].request({"op": "room.post", "room": ROOM, "text": f"m{i}", "kind": kind}, timeout=30))
        pending.append(task)
    results = await asyncio.gather(*pending, return_exceptions=True)
    counts["refused"] += sum(1 for r in results if isinstance(r, Exception))


async def run(args) -> dict:
    env = {"IMFLOW_THROTTLE_VIEWER_CAP": str(args.viewer_cap), "IMFLOW_ROOMS_BATCH_MS": str(args.batch_ms),
           "IMFLOW_THROTTLE_ROOM_INBOUND_RATE": "1000000", "IMFLOW_OUTBOUND_QUEUE_FRAMES": "1000"}
    stack = Stack(args.kafka, args.redis, workers=0, gateways=1, env=env)
    gateway = stack.processes[-1].proc.pid
    try:
        host = await stack.connect("host")
        await host.request({"op": "room.open", "room": ROOM})
        await host.request({"op": "room.join", "room": ROOM})
        chatters = [await stack.connect(f"chatter{i}") for i in range(8)]
        for chatter in chatters:
            await chatter.request({"op": "room.join", "room": ROOM})
        time.sleep(1)
        before = rss_kb(gateway)
        spawn = multiprocessing.get_context("spawn")
        names = [tokens.issue(SECRET, f"viewer{i:05d}", 3600) for i in range(args.viewers)]
        stop = spawn.Event()
        procs = []
        for p in range(args.processes):
            ready, (mine, theirs) = spawn.Event(), spawn.Pipe()
            proc = spawn.Process(target=viewer_process, args=(stack.url, names[p :: args.processes], ready, stop, theirs), daemon=True)
            proc.start()
            procs.append((proc, ready, mine))
        for _, ready, _ in procs:
            assert await asyncio.to_thread(ready.wait, 300), "viewers did not connect"
        await asyncio.sleep(3)
        after = rss_kb(gateway)
        info = await host.request({"op": "room.info", "room": ROOM})
        print(f"{args.viewers} viewers connected; room.info says {info['viewers']}; gateway RSS {before} → {after} kB",
              file=sys.stderr, flush=True)
        counts = {"host": 0, "refused": 0}
        phases = []
        for rate in args.rates:
            print(f"audience posting {rate}/s for {args.seconds} s ...", file=sys.stderr, flush=True)
            begin = time.time()
            await post_at(chatters, rate, args.seconds, host, counts)
            phases.append((rate, begin, time.time()))
            await asyncio.sleep(2)  # drain before the next rate
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(stack.urls[0].replace("ws://", "http://").replace("/ws", "/metrics"))).text
        stop.set()
        outputs = [await asyncio.to_thread(lambda m=mine: m.recv()) for _, _, mine in procs]
        for proc, _, _ in procs:
            proc.join(30)
        for client in [host, *chatters]:
            await client.close()
    finally:
        stack.stop()
    per_second: dict[int, int] = defaultdict(int)
    delays: dict[int, list[float]] = defaultdict(list)
    host_seen: list[int] = []
    for output in outputs:
        for second, n in output["per_second"].items():
            per_second[int(second)] += n
        for second, values in output["delays"].items():
            delays[int(second)].extend(values)
        host_seen.extend(output["host_seen"])
    results = []
    for rate, begin, end in phases:
        seconds = [s for s in range(int(begin) + 1, int(end))]  # whole seconds inside the phase
        delivered = [per_second.get(s, 0) for s in seconds]
        sample = [d for s in range(int(begin), int(end) + 2) for d in delays.get(s, [])]
        results.append({"audience_rate": rate, "deliveries_per_s": int(statistics.median(delivered)) if delivered else 0,
                        "batch_delay_p50_ms": round(percentile(sample, 0.5), 1), "batch_delay_p99_ms": round(percentile(sample, 0.99), 1)})
    metric = {line.split()[0]: float(line.split()[-1]) for line in metrics.splitlines()
              if line.startswith(("imflow_throttle_", "imflow_dropped_frames_total", "imflow_slow_connections_closed_total"))}
    return {
        "viewers": args.viewers, "viewer_cap": args.viewer_cap, "batch_ms": args.batch_ms,
        "memory_per_idle_connection_kb": round((after - before) / args.viewers, 1),
        "phases": results,
        "host_messages_posted": counts["host"], "viewers_with_every_host_message": sum(1 for n in host_seen if n >= counts["host"]),
        "posts_refused": counts["refused"], "metrics": metric,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kafka", required=True)
    parser.add_argument("--redis", required=True)
    parser.add_argument("--viewers", type=int, default=10_000)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--rates", type=lambda s: [int(x) for x in s.split(",")], default=[200, 1000, 3000, 6000])
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--viewer-cap", type=float, default=40)
    parser.add_argument("--batch-ms", type=int, default=100)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--json", type=Path, default=Path("artifacts/bench-live-rooms.json"))
    args = parser.parse_args()
    summary = asyncio.run(run(args))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
