"""The Python side of imflow-loadgen (this folder's Go program): build it, write the tokens its
connections sign in with, run it, read its one JSON object; and a server process's CPU and
memory from /proc, to set beside the generator's own.

Used by benchmarks/live_rooms.py and benchmarks/one_to_one.py (``from loadgen.driver import
…``: benchmarks/ is on sys.path when they run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from imflow.core import tokens

ROOT = Path(__file__).resolve().parents[2]


def build() -> Path:
    """Build the generator if a source changed (``scripts/loadgen``) and return the binary's path.
    Raises ``subprocess.CalledProcessError`` if the build fails (its output is on stderr)."""
    out = subprocess.run([str(ROOT / "scripts/loadgen")], check=True, stdout=subprocess.PIPE, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def write_tokens(path: Path, users: list[str], secret: str, ttl_s: int = 24 * 3600) -> Path:
    """One imflow token per line, line i for ``users[i]``, signed with ``secret`` (the stack's)."""
    path.write_text("".join(tokens.issue(secret, user, ttl_s) + "\n" for user in users))
    return path


def run(binary: Path, mode: str, options: list[str], timeout: float = 900) -> dict[str, Any]:
    """``imflow-loadgen MODE OPTIONS…``: its progress goes to our stderr, its JSON object is
    returned. Raises ``RuntimeError`` if it exits non-zero or prints no JSON."""
    command = [str(binary), mode, *options]
    print("$ " + " ".join(command), file=sys.stderr, flush=True)
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, timeout=timeout)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"imflow-loadgen {mode} exited {done.returncode}: {done.stdout[-2000:]!r}")
    return json.loads(lines[-1])


class Idle:
    """``imflow-loadgen idle`` held open: ``with Idle(binary, options) as idle:`` returns once
    every connection is signed in (``idle.ready`` of them); leaving the block lets it go, and
    ``idle.result`` is then its JSON object."""

    def __init__(self, binary: Path, options: list[str], timeout: float = 600) -> None:
        self.command = [str(binary), "idle", *options]
        self.timeout = timeout
        self.ready = 0
        self.result: dict[str, Any] = {}

    def __enter__(self) -> Idle:
        print("$ " + " ".join(self.command), file=sys.stderr, flush=True)
        self.process = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # "ready N", or nothing if it failed
        if not line.startswith("ready "):
            self.process.kill()
            raise RuntimeError(f"imflow-loadgen idle: {line!r}, exit {self.process.wait()}")
        self.ready = int(line.split()[1])
        return self

    def __exit__(self, *exc: object) -> None:
        out, _ = self.process.communicate("", timeout=self.timeout)  # closes stdin: it lets go
        lines = [line for line in out.splitlines() if line.startswith("{")]
        self.result = json.loads(lines[-1]) if lines else {}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_quiet(pid: int, cores: float = 0.05, window: float = 0.5, timeout: float = 120) -> bool:
    """Wait until process ``pid`` uses under ``cores`` over ``window`` seconds (a server done
    with the connections a run closed, before the next run or its shutdown); False on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = cpu_seconds(pid)
        time.sleep(window)
        if cpu_seconds(pid) - before < cores * window:
            return True
    return False


def rss_kb(pid: int) -> int:
    """Resident memory of process ``pid`` now, in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


class CpuSampler:
    """Samples a process's CPU seconds every ``period`` s in a thread, so its cores over a span
    known only afterwards (the generator's measured window, Unix seconds) can be read."""

    def __init__(self, pid: int, period: float = 0.2) -> None:
        self.pid, self.period = pid, period
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.time(), cpu_seconds(self.pid)))
            except OSError:
                return  # the process is gone
            self._stop.wait(self.period)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def cores(self, start: float, end: float) -> float | None:
        """CPU seconds / wall seconds between the samples nearest ``start`` and ``end``."""
        if not self.samples:
            return None
        first = min(self.samples, key=lambda s: abs(s[0] - start))
        last = min(self.samples, key=lambda s: abs(s[0] - end))
        return round((last[1] - first[1]) / (last[0] - first[0]), 3) if last[0] > first[0] else None
