"""One-to-one chat on the real stack: throughput, latency at a fixed rate, offline drain.

A Faust worker and a gateway run as their own processes on the local Kafka and Redis
(scripts/services). The load is ``imflow-loadgen chat`` (benchmarks/loadgen, Go, built by
``scripts/loadgen``): --pairs WebSocket pairs signed in with tokens minted here with the stack's
secret, user 2i sending to user 2i+1, each message's text "t=<send ns> n=<k>", so latency is send
→ the receiver's push on one clock and ``lost`` (stored messages never pushed) is exact.

    scripts/bench one-to-one [--runs 3] [--seconds 8] [--rates 500,1000,2000] [--pairs 50] [--inflight 20] [--social]

Throughput: each sender keeps --inflight sends unanswered (closed loop); pushes received a
second. Latency: open loop at each of --rates messages a second in total; send → push and
send → ``sent`` percentiles from a histogram of every message. Beside each figure the
generator's own cores (getrusage over its measured window) and the gateway's and workers' over
the same window (/proc). Each phase signs in fresh users, so no inbox carries over.

With ``--social`` each rate is measured twice in the same run: plain pairs, and pairs whose
users take messages from contacts only and block a few others, each sender a contact of its
receiver, so every send takes the full path of the block and privacy check (core/contacts.py)
on both users' slots. The offline drain (1,000 messages waiting, then fetched and ACKed) and the
send check's own cost stay in Python: they are one client's round trips, not load.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from loadgen import driver
from stack import SECRET, Stack, arguments, percentile

BLOCKS_PER_USER = 3  # strangers each user of a social pair blocks, so the block hashes are not empty


async def make_social(stack: Stack, users: list[str]) -> None:
    """Make each (sender, receiver) of ``users`` (s0, r0, s1, r1, …) contacts of each other,
    contacts-only, each blocking a few strangers."""
    for sender_id, receiver_id in zip(users[::2], users[1::2], strict=True):
        sender, receiver = await stack.connect(sender_id), await stack.connect(receiver_id)
        try:
            await sender.request({"op": "contact_request", "user": receiver_id})
            await receiver.request({"op": "contact_accept", "user": sender_id})
            for client in (sender, receiver):
                await client.request({"op": "set_privacy", "dm": "contacts"})
                for j in range(BLOCKS_PER_USER):
                    await client.request({"op": "block", "user": f"x{j}-{client.user}"})
        finally:
            await sender.close()
            await receiver.close()


async def chat(binary: Path, stack: Stack, folder: Path, args, load: list[str], social: bool = False) -> dict[str, Any]:
    """One ``imflow-loadgen chat`` run between fresh pairs (``social``: see ``make_social``) with
    the ``load`` options (--rate R or --inflight W); its JSON plus the servers' cores."""
    tag = uuid.uuid4().hex[:6]
    users = [name for i in range(args.pairs) for name in (f"s{i}-{tag}", f"r{i}-{tag}")]
    if social:
        await make_social(stack, users)
    token_file = driver.write_tokens(folder / f"tokens-{tag}", users, SECRET)
    options = ["--target", "imflow", "--url", stack.url, "--tokens", str(token_file), "--pairs", str(args.pairs),
               "--seconds", str(args.seconds), "--warmup", str(args.warmup), *load]
    samplers = [driver.CpuSampler(process.proc.pid) for process in stack.processes]  # workers, then the gateway
    for sampler in samplers:
        sampler.__enter__()
    try:
        result = await asyncio.to_thread(driver.run, binary, "chat", options)
    finally:
        for sampler in samplers:
            sampler.__exit__()
    span = result["cpu"]["from_unix_s"], result["cpu"]["to_unix_s"]
    cores = [sampler.cores(*span) for sampler in samplers]
    result["gateway_cores"] = cores[-1]
    result["worker_cores"] = sum(c for c in cores[:-1] if c is not None)
    return result


def latency_figures(result: dict[str, Any], seconds: float) -> dict[str, float]:
    """What the summary keeps of a fixed-rate run."""
    return {
        "offered_per_s": result["posts_sent"] / seconds,
        "delivered": result["deliveries"] / max(1, result["expected_deliveries"]),
        "lost": result["lost"],
        "push_p50_ms": result["latency_ms"]["p50"], "push_p99_ms": result["latency_ms"]["p99"],
        "ack_p50_ms": result["ack_ms"]["p50"], "ack_p99_ms": result["ack_ms"]["p99"],
        "generator_cores": result["cpu"]["cores_used"], "gateway_cores": result["gateway_cores"],
        "worker_cores": result["worker_cores"],
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


def table(summary: dict[str, Any], rated: dict[str, str]) -> str:
    rows = [f"one-to-one, {summary['pairs']} pairs, {summary['workers']} worker(s), medians of {summary['runs']}",
            "| load | msgs/s | push p50 / p99 ms | sent p50 / p99 ms | lost | generator cores | gateway cores | worker cores |",
            "|---|---|---|---|---|---|---|---|"]
    def row(load: str, rate: str, c: dict[str, Any]) -> str:
        gateway = "?" if c["gateway_cores"] is None else f"{c['gateway_cores']:.2f}"
        return (f"| {load} | {rate} | {c['push_p50_ms']:.1f} / {c['push_p99_ms']:.1f} | {c['ack_p50_ms']:.1f} / "
                f"{c['ack_p99_ms']:.1f} | {c['lost']:.0f} | {c['generator_cores']:.2f} | {gateway} | {c['worker_cores']:.2f} |")

    t = summary["throughput"]
    rows.append(row(f"{summary['inflight']} in flight per sender", f"{t['per_s']:,.0f}", t))
    rows.extend(row(label, f"{summary[label]['offered_per_s']:,.0f} offered", summary[label]) for label in rated.values())
    rows.append(f"offline drain of 1,000 messages: fetched in {summary['drain_fetch_1000_ms']:.0f} ms, "
                f"fetched and ACKed in {summary['drain_1000_ms']:.0f} ms")
    return "\n".join(rows)


async def main() -> None:
    parser = arguments(__doc__, "artifacts/bench-one-to-one.json")
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--rates", type=lambda text: [int(r) for r in text.split(",")], default=[500, 1000, 2000])
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--inflight", type=int, default=20, help="throughput: sends each sender keeps unanswered")
    parser.add_argument("--social", action="store_true", help="each rate also between contacts-only pairs that block others")
    args = parser.parse_args()

    binary = driver.build()
    folder = Path(tempfile.mkdtemp(prefix="imflow-one-to-one-"))
    # the load's users have no accounts: they are registered on first sign-in
    stack = Stack(args.kafka, args.redis, workers=args.workers, gateways=1, env={"IMFLOW_ACCOUNTS": "open"})
    kinds = ["", "_social"] if args.social else [""]
    rated = {f"rate_{r}{kind}": f"at_{r}_per_s{kind}" for r in args.rates for kind in kinds}  # raw -> summary key
    results: dict[str, list] = {"throughput": [], "drain_fetch_1000_ms": [], "drain_1000_ms": []}
    results |= {name: [] for name in rated}
    try:
        for run in range(1, args.runs + 1):
            print(f"run {run}/{args.runs}: throughput ...", file=sys.stderr, flush=True)
            results["throughput"].append(await chat(binary, stack, folder, args, ["--inflight", str(args.inflight)]))
            for rate in args.rates:
                for kind in kinds:
                    print(f"run {run}/{args.runs}: latency at {rate}/s{kind} ...", file=sys.stderr, flush=True)
                    results[f"rate_{rate}{kind}"].append(
                        await chat(binary, stack, folder, args, ["--rate", str(rate)], social=bool(kind)))
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
    throughput = [latency_figures(r, args.seconds) | {"per_s": r["deliveries_per_s"]} for r in results["throughput"]]
    summary = {
        "runs": args.runs,
        "workers": args.workers,
        "pairs": args.pairs,
        "inflight": args.inflight,
        "throughput_per_s": median(t["per_s"] for t in throughput),
        "throughput": {key: median(t[key] for t in throughput) for key in throughput[0]},
        **{label: {key: median(figures[key] for figures in (latency_figures(r, args.seconds) for r in results[name]))
                   for key in latency_figures(results[name][0], args.seconds)} for name, label in rated.items()},
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
    print(table(summary, rated))
    print(json.dumps({k: v for k, v in summary.items() if k != "raw"}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
