"""Timing of encode/decode through a runner (no torch): warm-up excluded, median and p95 of repeats."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from vae_deploy.runtime.runner import Runner
from vae_deploy.runtime.spec import random_inputs


@dataclass
class Timing:
    graph: str
    batch: int
    median_ms: float
    p95_ms: float
    min_ms: float
    repeats: int
    items_per_s: float  # batch / median: images (or latents) per second

    def to_dict(self) -> dict:
        return asdict(self)


def time_calls(fn: Callable[[], object], repeats: int, warmup: int) -> np.ndarray:
    """Seconds per call of `fn`, after `warmup` untimed calls (first-call allocations, thread start-up)."""
    for _ in range(warmup):
        fn()
    times = np.empty(repeats)
    for i in range(repeats):
        start = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - start
    return times


def summarize(graph: str, batch: int, seconds: np.ndarray) -> Timing:
    median = float(np.median(seconds))
    return Timing(graph=graph, batch=batch, median_ms=median * 1e3,
                  p95_ms=float(np.percentile(seconds, 95)) * 1e3, min_ms=float(seconds.min()) * 1e3,
                  repeats=int(seconds.size), items_per_s=batch / median)


def bench_runner(runner: Runner, batch_sizes: list[int], repeats: int = 30, warmup: int = 3,
                 graphs: tuple[str, ...] = ("encoder", "decoder")) -> list[Timing]:
    """Time each graph's public call (validation included: what a user of the runner pays) per batch size."""
    results = []
    for graph in graphs:
        for batch in batch_sizes:
            inputs = random_inputs(runner.graph(graph), batch, np.random.default_rng(0))
            seconds = time_calls(lambda g=graph, x=inputs: runner.run(g, x), repeats, warmup)
            results.append(summarize(graph, batch, seconds))
    return results
