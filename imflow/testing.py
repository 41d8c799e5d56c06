"""Helpers for tests and benchmarks: run imflow as a subprocess, wait for a condition.

Used by imflow's own tests and benchmarks; plugin authors may use them too.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


async def eventually(check, timeout: float = 30.0, interval: float = 0.1):
    """Await ``check()`` until it returns a truthy value; fail with its last value after ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s; last value: {value!r}")
        await asyncio.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_running: set[subprocess.Popen] = set()


@atexit.register
def _kill_leftovers() -> None:
    """A test that failed half-way must not leave a worker consuming from the shared services."""
    for proc in _running:
        if proc.poll() is None:
            proc.kill()


class ImflowProcess:
    """``imflow <command>`` in a subprocess, its output in a log file, stopped with SIGTERM."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path, cwd: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "imflow", *args],
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
        )
        _running.add(self.proc)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_http(self, url: str, timeout: float = 60.0) -> httpx.Response:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"imflow exited with {self.proc.returncode}:\n{self.output()}")
            try:
                return httpx.get(url, timeout=2)
            except httpx.TransportError:
                time.sleep(0.2)
        raise AssertionError(f"{url} did not answer in {timeout}s:\n{self.output()}")

    def wait_output(self, text: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if self.proc.poll() is not None:
                raise AssertionError(f"imflow exited with {self.proc.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not printed in {timeout}s:\n{self.output()}")
            time.sleep(0.2)

    def stop_gracefully(self, timeout: float = 30.0) -> None:
        """SIGTERM; fails unless the process shuts down cleanly within ``timeout``.

        uvicorn re-raises SIGTERM after its clean shutdown, so -SIGTERM counts as clean too.
        """
        code = self.terminate(timeout)
        assert code in (0, -signal.SIGTERM), f"exit code {code}:\n{self.output()}"
        assert "Traceback" not in self.output(), self.output()

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, then the exit code; kills and fails if it does not stop in ``timeout``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"imflow ignored SIGTERM for {timeout}s:\n{self.output()}") from None
        self._log.close()
        return self.proc.returncode
