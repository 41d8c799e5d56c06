"""Group fan-out on the real stack: a 10,000-member group with 1,000 members online on two
gateways, by read and by write fan-out; and where read fan-out starts to win.

    scripts/bench groups [--runs 3] [--members 10000] [--online 1000] [--messages 200] [--rate 10]
    scripts/bench groups --part threshold      # only the core-level sweep over group sizes

Part 1 (end to end): gateways and a Faust worker as their own processes; this process holds
the 1,000 WebSocket members and the sender. Per message: the sender's ACK latency and the time
until every online member has it; per mode: Redis commands and Redis CPU per message
(including the unread flush for read fan-out).

Part 2 (threshold): the send path (core/sending.py) called directly on the real Redis for
groups of 10 to 3,000 members, 10 % online, one message per batch as in a quiet group, with
the group unread flush every 5 s at 1 and at 10 messages per second per group: Redis CPU per
message by mode. The threshold is the smallest size at which read fan-out costs less.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import statistics
import sys
import time
import uuid

import redis as redis_sync
import redis.asyncio as aioredis
from stack import SECRET, Stack, arguments, percentile

from imflow.client import Client
from imflow.core import groups, tokens
from imflow.core.storage import fan_out, keys, presence
from imflow.core.ids import IdGenerator
from imflow.core.models import SendCommand, group_conversation
from imflow.core.agents import AgentContext
from imflow.core.sending import handle_sends
from imflow.core.services import Services
from imflow.core.settings import Settings


class RedisMeter:
    """Redis's own view of the work done between two points: commands and CPU seconds."""

    def __init__(self, url: str) -> None:
        self.client = redis_sync.Redis.from_url(url)

    def snapshot(self) -> dict[str, float]:
        stats, cpu = self.client.info("stats"), self.client.info("cpu")
        calls = self.client.info("commandstats")
        return {
            "commands": stats["total_commands_processed"],
            "all_calls": sum(row["calls"] for row in calls.values()),
            "evalsha": calls.get("cmdstat_evalsha", {}).get("calls", 0),
            "cpu_s": cpu["used_cpu_user"] + cpu["used_cpu_sys"],
        }

    @staticmethod
    def per(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
        delta = {name: (after[name] - before[name]) / n for name in before}
        return {
            "commands_per_msg": round(delta["commands"], 1),
            "calls_incl_scripts_per_msg": round(delta["all_calls"], 1),
            "scripts_per_msg": round(delta["evalsha"], 1),
            "redis_cpu_ms_per_msg": round(delta["cpu_s"] * 1000, 3),
        }


# -- part 1: end to end
#
# The online members live in two receiver processes, so the sender's ACKs are not read by an
# event loop busy with a thousand sockets (time.perf_counter is CLOCK_MONOTONIC on Linux: the
# same clock in every process).


def receiver_main(targets: list[tuple[str, str]], conversation: str, expect: int, pipe) -> None:
    asyncio.run(receive(targets, conversation, expect, pipe))


async def receive(targets: list[tuple[str, str]], conversation: str, expect: int, pipe) -> None:
    clients: list[Client] = []
    for start in range(0, len(targets), 100):  # in waves: the gateways accept a burst at a time
        clients += await asyncio.gather(*(Client.connect(url, token) for url, token in targets[start : start + 100]))
    times: dict[int, list[float]] = {}

    async def collect(client: Client) -> None:
        got = 0
        while got < expect:
            push = await client.next_message(timeout=120)
            if push["message"]["conversation"] == conversation:
                times.setdefault(push["message"]["seq"], []).append(time.perf_counter())
                got += 1

    pipe.send("ready")
    try:
        await asyncio.gather(*(collect(client) for client in clients))
    finally:
        pipe.send({seq: (len(seen), max(seen)) for seq, seen in times.items()})
        for client in clients:
            await client.close()


async def end_to_end(stack: Stack, meter: RedisMeter, redis_url: str, members: int, online: int, messages: int, rate: float) -> dict:
    tag = uuid.uuid4().hex[:6]
    names = [f"u{i:05d}-{tag}" for i in range(members)]
    owner = await stack.connect(names[0])
    group = await owner.request({"op": "create_group", "name": "bench", "members": []})
    conversation = group["conversation"]
    for start in range(1, members, 1000):
        await owner.request({"op": "add_members", "gid": group["gid"], "users": names[start : start + 1000]}, timeout=60)
    targets = [(stack.urls[i % len(stack.urls)], tokens.issue(SECRET, name, 3600)) for i, name in enumerate(names[1 : online + 1])]
    spawn = multiprocessing.get_context("spawn")
    receivers = []
    for part in (targets[0::2], targets[1::2]):
        mine, theirs = spawn.Pipe()
        process = spawn.Process(target=receiver_main, args=(part, conversation, messages, theirs), daemon=True)
        process.start()
        receivers.append((process, mine))
    for _, mine in receivers:
        assert await asyncio.to_thread(mine.poll, 120) and mine.recv() == "ready", "receivers did not connect"
    await asyncio.sleep(1)

    before = meter.snapshot()
    sent_at: dict[int, float] = {}
    acks: list[float] = []
    pending = []
    start = time.perf_counter()
    for i in range(messages):
        await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
        t0 = time.perf_counter()
        future = await owner.send_nowait({"conversation": conversation, "body": {"text": f"news {i}"}})

        def acked(f: asyncio.Future, t0: float = t0) -> None:
            if not f.cancelled() and f.exception() is None:
                sent_at[f.result()["seq"]] = t0
                acks.append((time.perf_counter() - t0) * 1000)

        future.add_done_callback(acked)
        pending.append(future)
    await asyncio.wait_for(asyncio.gather(*pending), 120)
    reached_at: dict[int, tuple[int, float]] = {}
    for process, mine in receivers:
        assert await asyncio.to_thread(mine.poll, 180), "a receiver did not finish"
        for seq, (count, last) in mine.recv().items():
            had = reached_at.get(seq, (0, 0.0))
            reached_at[seq] = (had[0] + count, max(had[1], last))
        process.join(10)
    async with aioredis.Redis.from_url(redis_url) as redis:  # read fan-out: wait for the flush
        deadline = time.perf_counter() + 30
        while await redis.hlen(keys.fan_out_pending()) and time.perf_counter() < deadline:
            await asyncio.sleep(0.2)
    after = meter.snapshot()
    reached = [(reached_at[seq][1] - sent_at[seq]) * 1000 for seq in sent_at if reached_at.get(seq, (0,))[0] == online]
    await owner.close()
    return {
        "messages": messages,
        "all_reached": len(reached),
        "ack_p50_ms": round(percentile(acks, 0.5), 1),
        "ack_p99_ms": round(percentile(acks, 0.99), 1),
        "reach_p50_ms": round(percentile(reached, 0.5), 1),
        "reach_p99_ms": round(percentile(reached, 0.99), 1),
        **RedisMeter.per(before, after, messages),
    }


# -- part 2: threshold sweep on the core send path


async def sweep(redis_url: str, sizes: list[int], messages: int, rates: list[int], flush_s: float = 5.0) -> list[dict]:
    meter = RedisMeter(redis_url)
    redis = aioredis.Redis.from_url(redis_url)
    ids = IdGenerator(3)
    rows = []
    try:
        for size in sizes:
            for rate in rates:
                per_flush = max(1, int(rate * flush_s))  # messages between two flushes
                for mode in ("write", "read"):
                    gid = f"t{size}-{rate}-{mode}-{uuid.uuid4().hex[:6]}"
                    names = [f"{gid}-m{i}" for i in range(size)]
                    await groups.create(Services(Settings(accounts="open"), redis), groups.CreateGroup(names[0], "sweep", tuple(names[1:]), gid=gid))
                    for name in names[: max(1, size // 10)]:
                        await presence.connected(redis, name, "sweep-gw")
                    # the threshold alone picks the mode: read fan-out from 2 members, write below size + 1
                    settings = Settings(read_fan_out_threshold=2 if mode == "read" else size + 1)
                    ctx = AgentContext(settings=settings, redis=redis, producer=None, generators={0: ids})  # one for all runs

                    before = meter.snapshot()
                    wall = []
                    for i in range(messages):
                        command = SendCommand(sender=names[i % size], client_msg_id=f"c{i}", conversation=group_conversation(gid),
                                              body={"text": "x" * 40}, sent_at_ms=1)
                        t0 = time.perf_counter()
                        await handle_sends(ctx, [(command, 0)])
                        wall.append((time.perf_counter() - t0) * 1000)
                        if mode == "read" and (i + 1) % per_flush == 0:
                            await fan_out.flush_pending(redis)
                    if mode == "read":
                        await fan_out.flush_pending(redis)
                    after = meter.snapshot()
                    row = {"members": size, "rate_per_s": rate, "mode": mode,
                           "send_path_ms_p50": round(statistics.median(wall), 2), **RedisMeter.per(before, after, messages)}
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
                    await redis.flushdb()
    finally:
        await redis.aclose()
    return rows


def threshold(rows: list[dict], rate: int) -> int | None:
    """The smallest size at which read fan-out costs Redis less CPU per message than write."""
    by = {(r["members"], r["mode"]): r["redis_cpu_ms_per_msg"] for r in rows if r["rate_per_s"] == rate}
    wins = sorted(size for size, mode in by if mode == "read" and by[(size, "read")] < by[(size, "write")])
    return wins[0] if wins else None


async def main() -> None:
    parser = arguments(__doc__, "artifacts/bench-groups.json")
    parser.add_argument("--part", choices=["all", "e2e", "threshold"], default="all")
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--online", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--rate", type=float, default=10.0, help="group messages per second (read fan-out)")
    parser.add_argument("--write-messages", type=int, default=20, help="messages for the write fan-out comparison")
    parser.add_argument("--write-rate", type=float, default=1.0)
    parser.add_argument("--flush-seconds", type=float, default=5.0, help="IMFLOW_GROUP_UNREAD_FLUSH_SECONDS")
    parser.add_argument("--sizes", default="3,5,10,30,100,300,1000,3000")
    args = parser.parse_args()
    summary: dict = {"runs": args.runs}

    if args.part in ("all", "threshold"):
        sizes = [int(s) for s in args.sizes.split(",")]
        with redis_sync.Redis.from_url(args.redis) as client:
            client.flushdb()
        runs = []
        for run in range(1, args.runs + 1):
            print(f"threshold sweep, run {run}/{args.runs}: sizes {sizes}", file=sys.stderr, flush=True)
            runs.append(await sweep(args.redis, sizes, 40, [1, 10]))
        medians = []
        for i, row in enumerate(runs[0]):
            merged = dict(row)
            for name in ("send_path_ms_p50", "commands_per_msg", "calls_incl_scripts_per_msg", "scripts_per_msg", "redis_cpu_ms_per_msg"):
                merged[name] = statistics.median(r[i][name] for r in runs)
            medians.append(merged)
        summary["sweep"] = medians
        summary["read_wins_from"] = {f"{rate}/s": threshold(medians, rate) for rate in (1, 10)}

    modes = [("read", "100", args.messages, args.rate), ("write", str(args.members + 1), args.write_messages, args.write_rate)]
    for mode, threshold_env, messages, rate in modes[: 1 if args.write_messages == 0 else 2] if args.part in ("all", "e2e") else ():
            stack = Stack(args.kafka, args.redis, workers=args.workers, gateways=2,
                          env={"IMFLOW_READ_FAN_OUT_THRESHOLD": threshold_env,
                               "IMFLOW_GROUP_UNREAD_FLUSH_SECONDS": str(args.flush_seconds)})
            runs = []
            try:
                meter = RedisMeter(args.redis)
                for run in range(1, args.runs + 1):
                    print(f"{mode} fan-out, run {run}/{args.runs}: {args.members} members, {args.online} online, "
                          f"{messages} messages at {rate}/s ...", file=sys.stderr, flush=True)
                    runs.append(await end_to_end(stack, meter, args.redis, args.members, args.online, messages, rate))
                    print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
            finally:
                stack.stop()
            summary[mode] = {name: statistics.median(r[name] for r in runs) for name in runs[0]}
            summary[mode]["raw"] = runs

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "sweep"}, indent=2, default=str))


if __name__ == "__main__":
    asyncio.run(main())
