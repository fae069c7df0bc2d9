"""Timing of encode/decode through a runner (no torch): warm-up excluded, median and p95 of repeats.

Two ways to time a model, matching how it is used:

    bench_runner   image models: one call of each graph per batch size (`runner.run`), items per second;
    bench_stream   video models: chunks of frames through an open stream (`Stream.step`), the state carried
                   from one chunk to the next exactly as the pipeline carries it, frames per second.

Every row records the shape of the data input it timed, so a figure never stands without its size.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from vae_deploy.errors import ConfigError
from vae_deploy.runtime.runner import Runner
from vae_deploy.runtime.spec import random_inputs


@dataclass
class Timing:
    graph: str
    shape: tuple[int, ...]  # the data input timed: (batch, ...) for images, (1, T, C, H, W) video chunks
    batch: int
    median_ms: float
    p95_ms: float
    min_ms: float
    repeats: int
    per_s: float  # `unit`s per second at the median: batch / median, or frames per chunk / median
    unit: str = "items"  # "items" (images or latents per call) or "frames" (video frames per chunk)
    chunk_frames: int | None = None  # frames per streamed chunk (video); None for batched calls

    def to_dict(self) -> dict:
        data = asdict(self)
        data["shape"] = list(self.shape)
        return data


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


def summarize(graph: str, shape: tuple[int, ...], seconds: np.ndarray, count: int, unit: str = "items",
              chunk_frames: int | None = None) -> Timing:
    """One row: `count` `unit`s per call (the batch, or the frames of a chunk)."""
    median = float(np.median(seconds))
    return Timing(graph=graph, shape=tuple(int(d) for d in shape), batch=int(shape[0]),
                  median_ms=median * 1e3, p95_ms=float(np.percentile(seconds, 95)) * 1e3,
                  min_ms=float(seconds.min()) * 1e3, repeats=int(seconds.size), per_s=count / median,
                  unit=unit, chunk_frames=chunk_frames)


def bench_runner(runner: Runner, batch_sizes: list[int], repeats: int = 30, warmup: int = 3,
                 graphs: tuple[str, ...] = ("encoder", "decoder")) -> list[Timing]:
    """Time each graph's public call (validation included: what a user of the runner pays) per batch size,
    on random inputs of the graph's example size (the manifest's example_dims)."""
    results = []
    for graph in graphs:
        for batch in batch_sizes:
            inputs = random_inputs(runner.graph(graph), batch, np.random.default_rng(0))
            seconds = time_calls(lambda g=graph, x=inputs: runner.run(g, x), repeats, warmup)
            results.append(summarize(graph, inputs[0].shape, seconds, batch))
    return results


def bench_stream(runner: Runner, chunk_shape: tuple[int, ...], repeats: int = 30, warmup: int = 3
                 ) -> list[Timing]:
    """Time a video model as the pipeline runs it: chunks of `chunk_shape` (the encoder's data input,
    (1, T, C, H, W)) through `runner.open_stream()`, one `step` per chunk with the state carried; then the
    decoder on the latents of that chunk (the encoder's first output), likewise streamed.

    Each graph gets its own stream; warm-up chunks go through the same stream (they set up the state that a
    stream in its steady state holds). A model whose first chunk has its own rule (Wan) opens each stream
    with that first step, untimed: the rows are the steady state. Rows count frames: T per chunk for both
    graphs."""
    encoder = runner.graph("encoder")
    if not encoder.stream_axis:
        raise ConfigError(f"{runner.model_dir}: the encoder has no stream axis; time it with bench_runner")
    video = encoder.inputs[0]
    low, high = video.value_range or (0.0, 1.0)
    rng = np.random.default_rng(0)
    chunk = rng.uniform(low, high, size=chunk_shape).astype(video.dtype)
    frames = int(chunk_shape[1])

    def opened(graph: str, x: np.ndarray):
        """A stream of `graph` past its first rule, if it has one."""
        stream = runner.open_stream()
        n = runner.graph(graph).first_length
        if n:
            stream.step(graph, [x[:, :n]])
        return stream

    latents = opened("encoder", chunk).step("encoder", [chunk])[encoder.outputs[0].name]  # what run decodes
    results = []
    for graph, x in (("encoder", chunk), ("decoder", latents)):
        stream = opened(graph, x)
        seconds = time_calls(lambda s=stream, g=graph, x=x: s.step(g, [x]), repeats, warmup)
        results.append(summarize(graph, x.shape, seconds, frames, unit="frames", chunk_frames=frames))
    return results
