"""Real `vae-deploy serve` processes on 127.0.0.1 for the tests: started on a free port (port 0, the port
read from the server's `serving ...` line), bounded in time, stopped by SIGTERM (killed if it lingers)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
from torch_free_support import edge_env

START_TIMEOUT = 60.0  # a loaded 2-core machine imports onnxruntime slowly
SERVING = re.compile(r"serving .* on http://127\.0\.0\.1:(\d+) ")


class ServerProcess:
    """`vae-deploy serve MODEL --host 127.0.0.1 --port 0 ARGS...` in a child process."""

    def __init__(self, model: Path, *args: str, edge: bool = False):
        # edge: importing torch fails in the server, as on the edge install (the serve path is torch-free)
        env = {**(edge_env() if edge else os.environ), "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vae_deploy", "serve", str(model), "--host", "127.0.0.1", "--port", "0",
             *args], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
        self.lines: list[str] = []
        found = threading.Event()
        self.port = 0

        def read() -> None:  # drains stderr for the whole life of the process (a full pipe would block it)
            for line in self.proc.stderr:
                self.lines.append(line.rstrip("\n"))
                match = SERVING.search(line)
                if match:
                    self.port = int(match.group(1))
                    found.set()

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not found.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError("the server did not start:\n" + "\n".join(self.lines))
        self._wait_healthy(deadline)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/session"

    def http(self, path: str, headers: dict | None = None) -> tuple[int, str]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def json(self, path: str) -> dict:
        status, body = self.http(path)
        assert status == 200, (status, body)
        return json.loads(body)

    def _wait_healthy(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            try:
                if self.http("/healthz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError("the server never became healthy:\n" + "\n".join(self.lines))

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and the exit code (killed, and the test failed, if it does not exit in time)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def metric(text: str, name: str, **labels: str) -> float:
    """One sample of a Prometheus text exposition (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if key == (f"{name}{{{want}}}" if labels else name):
            return float(value)
    return 0.0


def clip(seed: int, frames: int = 11, size: int = 64) -> np.ndarray:
    """Fitted float32 frames (T, 3, H, W) in [0, 1]: smooth random motion, different per seed."""
    rng = np.random.default_rng(seed)
    base = rng.random((3, size // 8, size // 8), dtype=np.float32)
    out = []
    for t in range(frames):
        shifted = np.roll(base, t, axis=2)
        out.append(np.kron(shifted, np.ones((8, 8), dtype=np.float32)))
    return np.clip(np.stack(out) + rng.normal(0, 0.02, (frames, 3, size, size)).astype(np.float32), 0, 1)


CHUNKS = (4, 4, 3)  # frames per chunk: two full chunks and a partial last one (padded by the codec)


def chunks_of(frames: np.ndarray) -> list[np.ndarray]:
    out, start = [], 0
    for n in CHUNKS:
        out.append(frames[start:start + n])
        start += n
    return out


def in_sessions_together(work, count: int, timeout: float = 60.0) -> list:
    """`work(i, barrier)` for i in range(count), each in a thread of its own, the threads meeting at
    `barrier` (a threading.Barrier of `count`) so that their chunks reach the server in the same rounds;
    their results in order. A thread's error aborts the barrier (the others stop waiting) and is raised."""
    barrier = threading.Barrier(count)
    results: dict[int, object] = {}
    errors: list[BaseException] = []

    def one(i):
        try:
            results[i] = work(i, barrier)
        except BaseException as err:  # noqa: BLE001 - raised below, in the test's thread
            errors.append(err)
            barrier.abort()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not errors, errors
    return [results[i] for i in range(count)]
