"""Rounds across sessions: one thread owns the model's `BatchedStreams` and runs the sessions' chunks in
shared calls, in the spirit of Triton's sequence batcher with the `oldest` strategy.

A session submits one chunk and waits for it (its codec is synchronous), so at most one chunk per session is
ever queued: the queue is bounded by the number of sessions, and a client that sends faster than the model
works waits on its own previous chunk (back-pressure reaches it through the WebSocket's bounded receive
queue and TCP). A round starts when a chunk arrives; it then waits at most `max_wait` seconds from that
oldest chunk for more, up to `max_batch` chunks, and runs them grouped by graph (BatchedStreams groups them
further by shape). A chunk that fails its checks would fail the whole round (BatchedStreams checks every
chunk before any call and changes no state on failure), so a failed round is rerun stream by stream: the
good chunks get their results and only the bad one its error.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from vae_deploy.errors import VaeDeployError
from vae_deploy.runtime.runner import Runner


@dataclass
class _Request:
    stream: int
    graph: str
    chunk: np.ndarray
    future: Future = field(default_factory=Future)


class Batcher:
    """The model's streams and the thread that runs their rounds (module docstring)."""

    def __init__(self, runner: Runner, max_batch: int = 8, max_wait: float = 0.002,
                 on_round: Callable[[str, int, float], None] | None = None):
        self.runner = runner
        self.max_batch = max_batch
        self.max_wait = max_wait
        self._on_round = on_round  # (graph, chunks in the round, seconds): the metrics' hook
        self._streams = runner.open_batched_streams()
        # BatchedStreams is not thread-safe: sessions join and leave from the server's threads while a
        # round runs in this one
        self._lock = threading.Lock()
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="vae-deploy-batcher", daemon=True)
        self._thread.start()

    def add(self) -> int:
        with self._lock:
            return self._streams.add()

    def remove(self, stream: int) -> None:
        """Free a stream's state (a no-op for one already removed)."""
        with self._lock:
            if stream in self._streams:
                self._streams.remove(stream)

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    def submit(self, stream: int, graph: str, chunk: np.ndarray) -> Future:
        """Queue one chunk of `graph` for `stream`; the future gives its outputs by name."""
        request = _Request(stream, graph, chunk)
        self._queue.put(request)
        return request.future

    def close(self) -> None:
        """Finish the queued chunks, then stop the thread."""
        self._queue.put(None)
        self._thread.join()

    # ------------------------------------------------------------------ the thread

    def _loop(self) -> None:
        carried: list[_Request] = []
        while True:
            first = carried.pop(0) if carried else self._queue.get()
            if first is None:
                return
            batch, stopping = self._collect(first, carried)
            rounds: dict[str, list[_Request]] = {}
            for request in batch:
                mine = rounds.setdefault(request.graph, [])
                if any(r.stream == request.stream for r in mine):
                    carried.append(request)  # a stream's next chunk waits for its previous one's round
                else:
                    mine.append(request)
            for graph, requests in rounds.items():
                self._round(graph, requests)
            if stopping:
                carried.append(None)

    def _collect(self, first: _Request, carried: list) -> tuple[list[_Request], bool]:
        """The oldest chunk and those that arrive within max_wait of it, up to max_batch."""
        batch = [first]
        while carried and len(batch) < self.max_batch:
            batch.append(carried.pop(0))
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                request = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if request is None:
                return batch, True
            batch.append(request)
        return batch, False

    def _round(self, graph: str, requests: list[_Request]) -> None:
        start = time.perf_counter()
        live: list[_Request] = []
        try:
            with self._lock:
                live = [r for r in requests if r.stream in self._streams]
                for r in requests:
                    if r not in live:
                        r.future.set_exception(VaeDeployError(f"session stream {r.stream} is closed"))
                if not live:
                    return
                outputs = self._streams.step(graph, {r.stream: r.chunk for r in live})
        except VaeDeployError as err:
            if len(live) == 1:
                live[0].future.set_exception(err)
            else:  # one bad chunk: rerun each alone so the others still get their results
                for r in live:
                    self._round(graph, [r])
            return
        except Exception as err:  # a backend failure: every chunk of the round gets it
            for r in live:
                r.future.set_exception(err)
            return
        if self._on_round is not None:
            self._on_round(graph, len(live), time.perf_counter() - start)
        for r in live:
            r.future.set_result(outputs[r.stream])
