"""The protocol model's state machine (tests/test_model.py) for as long as you like, on both stacks.

    scripts/bench model [--minutes 10] [--stacks embedded,real] [--examples 20] [--steps 80]

Starts the embedded stack and the real one (two gateways and a Faust worker on the local Kafka
and Redis), then runs the state machine seed after seed, the stacks taking turns, until the time
is up: one progress line per run. On a discrepancy it prints the seed and hypothesis's shrunk
steps and exits with 1 (``IMFLOW_MODEL_SEED=<seed> pytest tests/test_model.py`` replays it).
The summary goes to artifacts/model.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

from hypothesis import settings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from stacks import Stack, embedded_stack, real_stack  # noqa: E402

from imflow.core.storage.redis_client import flush_sync  # noqa: E402
from test_model import STACK_EXTRA_ENV, ProtocolMachine, run_model  # noqa: E402


def start(kind: str, kafka: str, redis_url: str) -> Stack:
    folder = Path(tempfile.mkdtemp(prefix=f"imflow-model-{kind}-"))
    if kind == "embedded":
        return embedded_stack(folder, STACK_EXTRA_ENV)
    flush_sync(redis_url)  # every primary of a cluster
    return real_stack(folder, kafka, redis_url, extra_env=STACK_EXTRA_ENV)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kafka", required=True)
    parser.add_argument("--redis", required=True, help="a database of its own: it is flushed first")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--stacks", default="embedded,real")
    parser.add_argument("--examples", type=int, default=20, help="examples per run (one seed)")
    parser.add_argument("--steps", type=int, default=80, help="steps per example at most")
    parser.add_argument("--json", type=Path, default=ROOT / "artifacts" / "model.json")
    args = parser.parse_args()
    settings.register_profile("bench", parent=settings.get_profile("long"), max_examples=args.examples, stateful_step_count=args.steps)

    kinds = [kind.strip() for kind in args.stacks.split(",") if kind.strip()]
    stacks = {kind: start(kind, args.kafka, args.redis) for kind in kinds}
    began = time.monotonic()
    deadline = began + args.minutes * 60
    runs: list[dict] = []
    failed = None
    try:
        while time.monotonic() < deadline and failed is None:
            for kind, stack in stacks.items():
                if time.monotonic() >= deadline:
                    break
                before = Counter(ProtocolMachine.totals)
                run_started = time.monotonic()
                try:
                    used = run_model(stack, "bench")
                except BaseException as failure:  # noqa: BLE001  (report it, stop the stacks, exit 1)
                    traceback.print_exception(failure)
                    failed = {"stack": kind, "error": repr(failure), "notes": getattr(failure, "__notes__", [])}
                    break
                done = ProtocolMachine.totals - before
                runs.append({"stack": kind, "seed": used, "seconds": round(time.monotonic() - run_started, 1), **done})
                elapsed = int(time.monotonic() - began)
                print(
                    f"[{elapsed // 60:3d}:{elapsed % 60:02d}] {kind:8s} seed {used:10d}: {done['examples']} examples, "
                    f"{done['steps']} steps, {done['messages']} messages, {done['pushes']} pushes, "
                    f"{done['groups']} groups: as the model says ({runs[-1]['seconds']} s)",
                    flush=True,
                )
            for stack in stacks.values():
                stack.assert_alive()
    finally:
        for stack in stacks.values():
            stack.stop()
    totals = Counter()
    for run in runs:
        totals.update({k: v for k, v in run.items() if isinstance(v, int) and k != "seed"})
    summary = {"minutes": args.minutes, "stacks": kinds, "runs": runs, "totals": dict(totals), "failed": failed}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2))
    print(f"{len(runs)} runs, {totals['examples']} examples, {totals['steps']} steps: "
          + ("no discrepancy" if failed is None else f"DISCREPANCY on {failed['stack']}: {failed['notes']}"))
    return 0 if failed is None else 1


if __name__ == "__main__":
    sys.exit(main())
