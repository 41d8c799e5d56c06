"""Red packets on the real stack: 1,000 members of one group grab a 500-share packet at once,
through two real gateways.

    scripts/bench red-packets [--runs 3] [--grabbers 1000] [--shares 500]
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
import uuid

from stack import Stack, arguments, percentile

from imflow.client import Client, ClientError


async def one_run(stack: Stack, grabbers: int, shares: int, total_cents: int) -> dict:
    tag = uuid.uuid4().hex[:6]
    users = [f"g{i}-{tag}" for i in range(grabbers)]
    clients = []
    for i in range(0, grabbers, 100):  # connect in waves
        clients += await asyncio.gather(*(stack.connect(users[j], gateway=j) for j in range(i, min(i + 100, grabbers))))
    host = await stack.connect(f"host-{tag}")
    group = await host.request({"op": "create_group", "name": "bench", "members": []})
    for i in range(0, grabbers, 1000):
        await host.request({"op": "add_members", "gid": group["gid"], "users": users[i : i + 1000]})
    sent = await host.send(
        {"conversation": group["conversation"], "type": "red_packet", "body": {"total_cents": total_cents, "count": shares}},
        timeout=30,
    )
    await asyncio.gather(*(client.next_message(timeout=60) for client in clients))  # everyone has it

    async def grab(client: Client) -> tuple[str, int, float]:
        start = time.perf_counter()
        try:
            reply = await client.request({"op": "red_packet.grab", "conversation": group["conversation"], "mid": sent["mid"]}, timeout=30)
            return "won", reply["share_cents"], time.perf_counter() - start
        except ClientError as error:
            return error.code, 0, time.perf_counter() - start

    start = time.perf_counter()
    results = await asyncio.gather(*(grab(client) for client in clients))
    wall = time.perf_counter() - start
    for client in [*clients, host]:
        await client.close()
    won = [cents for outcome, cents, _ in results if outcome == "won"]
    latencies = [seconds * 1000 for _, _, seconds in results]
    refusals = {}
    for outcome, _, _ in results:
        if outcome != "won":
            refusals[outcome] = refusals.get(outcome, 0) + 1
    return {
        "winners": len(won),
        "sum_cents": sum(won),
        "min_share": min(won) if won else 0,
        "refusals": refusals,
        "grab_p50_ms": percentile(latencies, 0.5),
        "grab_p99_ms": percentile(latencies, 0.99),
        "all_grabs_s": wall,
    }


async def main() -> None:
    parser = arguments(__doc__, "artifacts/bench-red-packets.json")
    parser.add_argument("--grabbers", type=int, default=1000)
    parser.add_argument("--shares", type=int, default=500)
    parser.add_argument("--total-cents", type=int, default=10_000)
    args = parser.parse_args()

    stack = Stack(args.kafka, args.redis, workers=args.workers, gateways=2)
    runs = []
    try:
        for run in range(1, args.runs + 1):
            print(f"run {run}/{args.runs}: {args.grabbers} grabbers, {args.shares} shares ...", file=sys.stderr, flush=True)
            result = await one_run(stack, args.grabbers, args.shares, args.total_cents)
            assert result["sum_cents"] == args.total_cents and result["winners"] == args.shares, result
            runs.append(result)
    finally:
        stack.stop()
    summary = {
        "runs": args.runs, "grabbers": args.grabbers, "shares": args.shares, "total_cents": args.total_cents,
        "grab_p50_ms": statistics.median(r["grab_p50_ms"] for r in runs),
        "grab_p99_ms": statistics.median(r["grab_p99_ms"] for r in runs),
        "all_grabs_s": statistics.median(r["all_grabs_s"] for r in runs),
        "raw": runs,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
