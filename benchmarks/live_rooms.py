"""A live room on one gateway, loaded by the compiled generator: deliveries per second, the delay
from a post to a viewer having it, what is lost, and gateway memory per idle connection.

    scripts/bench live-rooms [--viewers 10000] [--rates 100] [--seconds 10] [--runs 1] [--cap]

One ``imflow gateway`` on the real Kafka and Redis (the room stream is a Kafka topic the gateway
reads whole), no worker. The load is ``imflow-loadgen`` (benchmarks/loadgen, Go, built by
``scripts/loadgen``), one process on the same machine: ``room`` mode opens --viewers WebSocket
connections (signed in with tokens minted here with the stack's secret, --connect-rate a second)
and joins them to one room; --posters of them post at each --rates in turn, --size bytes a
post, --warmup seconds unmeasured then --seconds measured. Every viewer counts every post by its
number, so ``lost`` (accepted posts a viewer never got) is exact; latency is post → the viewer
has it, on one clock, from a histogram of every delivery.

The throttling plugin is OFF by default (``IMFLOW_DISABLED_PLUGINS=throttling``), so its
sampling is not what is measured; ``--cap`` runs with it on and the per-viewer cap
(``--viewer-cap``, 40/s): the cell the issue's "cap 40/s" aim is about (there "lost" counts what
the cap sampled away, by design). Beside the figures: the generator's own cores (getrusage over
its measured window) and the gateway's over the same window (/proc), so a reader can see which
side was the bottleneck. Memory (unless --no-memory): the gateway's resident size with --viewers
idle connections in the room (``imflow-loadgen idle``) less before, per connection.
Results: a table on stdout, everything in --json (artifacts/bench-live-rooms.json).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
from loadgen import driver
from stack import SECRET, Stack

ROOM = "bench-room"


def room_options(args, url: str, token_file: Path, rate: float) -> list[str]:
    return ["--target", "imflow", "--url", url, "--tokens", str(token_file), "--room", ROOM,
            "--viewers", str(args.viewers), "--posters", str(args.posters), "--rate", str(rate),
            "--seconds", str(args.seconds), "--warmup", str(args.warmup), "--size", str(args.size),
            "--connect-rate", str(args.connect_rate)]


def idle_memory(binary: Path, stack: Stack, token_file: Path, args) -> dict[str, Any]:
    """The gateway's RSS before and with --viewers idle connections in the room, per connection."""
    gateway = stack.processes[-1].proc.pid
    before = driver.rss_kb(gateway)
    options = ["--target", "imflow", "--url", stack.url, "--tokens", str(token_file), "--room", ROOM,
               "--connections", str(args.viewers), "--connect-rate", str(args.connect_rate)]
    with driver.Idle(binary, options) as idle:
        driver.wait_quiet(gateway)  # the joins' work done, its allocations settled
        after = driver.rss_kb(gateway)
    driver.wait_quiet(gateway)  # the disconnects handled before the next run
    return {"connections": idle.ready, "gateway_rss_before_kb": before, "gateway_rss_after_kb": after,
            "per_connection_kb": round((after - before) / max(1, idle.ready), 1), "generator": idle.result}


def cell(result: dict[str, Any], gateway_cores: float | None) -> dict[str, Any]:
    """The figures of one run that the table shows."""
    latency = result["latency_ms"]
    return {"deliveries_per_s": result["deliveries_per_s"], "p50_ms": latency["p50"], "p90_ms": latency["p90"],
            "p99_ms": latency["p99"], "max_ms": latency["max"], "lost": result["lost"],
            "expected": result["expected_deliveries"], "posts_failed": result["posts_failed"],
            "closed": sum(result["closed"].values()), "generator_cores": result["cpu"]["cores_used"],
            "gateway_cores": gateway_cores}


def median_cell(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {key: statistics.median(r[key] for r in runs) if all(r[key] is not None for r in runs) else None
            for key in runs[0]}


def table(summary: dict[str, Any]) -> str:
    head = (f"live room, {summary['viewers']} viewers, {summary['posters']} posters, {summary['size']} B posts, "
            f"throttling {'ON (viewer cap ' + str(summary['viewer_cap']) + '/s)' if summary['cap'] else 'off'}, "
            f"medians of {summary['runs']}")
    rows = [("| posts/s | deliveries/s | p50 ms | p90 ms | p99 ms | max ms | lost / expected | closed "
             "| generator cores | gateway cores |"), "|---|---|---|---|---|---|---|---|---|---|"]
    for rate, c in summary["rates"].items():
        gateway = "?" if c["gateway_cores"] is None else f"{c['gateway_cores']:.2f}"
        rows.append(f"| {rate} | {c['deliveries_per_s']:,.0f} | {c['p50_ms']:.1f} | {c['p90_ms']:.1f} | {c['p99_ms']:.1f} | "
                    f"{c['max_ms']:.1f} | {c['lost']:,.0f} / {c['expected']:,.0f} | {c['closed']:.0f} | "
                    f"{c['generator_cores']:.2f} | {gateway} |")
    memory = summary.get("memory")
    tail = (f"\ngateway memory per idle connection: {memory['per_connection_kb']} kB "
            f"({memory['connections']} connections)" if memory else "")
    return head + "\n" + "\n".join(rows) + tail


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kafka", required=True)
    parser.add_argument("--redis", required=True)
    parser.add_argument("--viewers", type=int, default=10_000)
    parser.add_argument("--posters", type=int, default=10)
    parser.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")], default=[100.0],
                        help="posts a second into the room, in total; each measured in turn (default 100)")
    parser.add_argument("--seconds", type=float, default=10, help="measured seconds per rate")
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--size", type=int, default=100, help="bytes of text per post")
    parser.add_argument("--connect-rate", type=float, default=1000, help="connections opened a second")
    parser.add_argument("--cap", action="store_true", help="throttling plugin on, with the per-viewer cap")
    parser.add_argument("--viewer-cap", type=float, default=40)
    parser.add_argument("--batch-ms", type=int, default=100)
    parser.add_argument("--no-memory", action="store_true", help="skip the idle-memory measurement")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--json", type=Path, default=Path("artifacts/bench-live-rooms.json"))
    args = parser.parse_args()

    binary = driver.build()
    env = {"IMFLOW_ROOMS_BATCH_MS": str(args.batch_ms), "IMFLOW_THROTTLE_ROOM_INBOUND_RATE": "1000000"}
    if args.cap:
        env["IMFLOW_THROTTLE_VIEWER_CAP"] = str(args.viewer_cap)
    else:
        env["IMFLOW_DISABLED_PLUGINS"] = "throttling"
    folder = Path(tempfile.mkdtemp(prefix="imflow-live-rooms-"))
    token_file = driver.write_tokens(folder / "tokens", [f"viewer{i:05d}" for i in range(args.viewers)], SECRET)
    stack = Stack(args.kafka, args.redis, workers=args.workers, gateways=1, env=env)
    gateway = stack.processes[-1].proc.pid
    raw: dict[str, list[dict[str, Any]]] = {f"{rate:g}": [] for rate in args.rates}
    cells: dict[str, list[dict[str, Any]]] = {f"{rate:g}": [] for rate in args.rates}
    try:
        memory = None if args.no_memory else idle_memory(binary, stack, token_file, args)
        if memory:
            print(f"gateway memory per idle connection: {memory['per_connection_kb']} kB", file=sys.stderr, flush=True)
        for run in range(1, args.runs + 1):
            for rate in args.rates:
                print(f"run {run}/{args.runs}: {args.viewers} viewers, {rate:g} posts/s ...", file=sys.stderr, flush=True)
                with driver.CpuSampler(gateway) as sampler:
                    result = driver.run(binary, "room", room_options(args, stack.url, token_file, rate))
                cpu = result["cpu"]
                raw[f"{rate:g}"].append(result)
                cells[f"{rate:g}"].append(cell(result, sampler.cores(cpu["from_unix_s"], cpu["to_unix_s"])))
                if not driver.wait_quiet(gateway):  # the closed viewers' disconnects handled
                    print("the gateway did not settle within 120 s of the run", file=sys.stderr, flush=True)
        metrics = httpx.get(stack.http[0] + "/metrics").text
        report(args, cells, raw, memory, metrics)  # before the stack stops: a failing shutdown loses no figures
    finally:
        stack.stop()


def report(args, cells: dict[str, list[dict[str, Any]]], raw: dict[str, list[dict[str, Any]]],
           memory: dict[str, Any] | None, metrics: str) -> None:
    """Write --json and print the table and the summary."""
    metric = {line.split()[0]: float(line.split()[-1]) for line in metrics.splitlines()
              if line.startswith(("imflow_throttle_", "imflow_dropped_frames_total", "imflow_slow_connections_closed_total"))}
    summary = {
        "viewers": args.viewers, "posters": args.posters, "size": args.size, "seconds": args.seconds,
        "cap": args.cap, "viewer_cap": args.viewer_cap if args.cap else None, "batch_ms": args.batch_ms, "runs": args.runs,
        "rates": {rate: median_cell(runs) for rate, runs in cells.items()},
        "memory": memory, "metrics": metric, "raw": raw,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2))
    print(table(summary))
    print(json.dumps({k: v for k, v in summary.items() if k not in ("raw", "memory")} | {
        "memory_per_idle_connection_kb": memory and memory["per_connection_kb"]}, indent=2), flush=True)

if __name__ == "__main__":
    main()
