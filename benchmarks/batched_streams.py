"""Batched streams (runtime/batched_stream.py, issue 25 item 1): chunks of different lengths in one round,
grouped by length or padded, against each stream run alone.

    .venv/bin/python benchmarks/batched_streams.py [--model NAME=DIR ...] [--streams 4] [--size 64]
                                                  [--rounds 6] [--repeats 3] [--threads 1]

Per model (the packaged model, and each --model folder: the tests' tiny models, for example), backend
(ort-cpu and torch, --threads each, default 1, with the options the streaming commands give them:
ort-cpu's threads sleep rather than spin) and graph (encoder on real frames of the packaged clip,
cropped to --size, one crop per stream; decoder on random latents), --streams streams push --rounds rounds
of chunks:
- lengths "equal": every stream 4 frames (or their latent frames) per round;
- lengths "mixed": 8, 4, 4, 2, ... frames per round, cycling over the streams.
Cases: "alone" (each stream its own `runner.open_stream()`, one call per chunk or per call_limit piece),
"group" and "pad" (one BatchedStreams round per round; "pad" differs from "group" only on stateless graphs,
the others are never padded). Timed: all rounds, after one warm-up round; the cases alternate within each
repeat, the median of --repeats is reported as frames per second, all streams together (frames of video:
input frames for the encoder, output frames for the decoder).
Writes benchmarks/results/batched_streams.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
LENGTHS = {"equal": (4,), "mixed": (8, 4, 4, 2)}  # frames per chunk, cycled over the streams
CASES = ("alone", "group", "pad")


def clip_frames(count: int) -> np.ndarray:
    """The packaged clip's first `count` frames, float32 (1, T, 3, 144, 176) in [0, 1]."""
    from vae_deploy.video.samples import sample_video_path
    from vae_deploy.video.sources import open_source

    with open_source(sample_video_path("carphone_pristine")) as source:
        frames = source.read(max_frames=count)
    return (frames.astype(np.float32) / 255).transpose(0, 3, 1, 2)[None]


def workload(runner, graph: str, streams: int, size: int, rounds: int, lengths: tuple[int, ...],
             clip: np.ndarray, rng: np.random.Generator) -> list[list[np.ndarray]]:
    """rounds x streams chunks of `graph`: crops of the clip (encoder) or random latents (decoder)."""
    spec = runner.graph(graph)
    factor = _temporal_factor(runner)
    chunks = []
    for r in range(rounds):
        row = []
        for s in range(streams):
            frames = lengths[s % len(lengths)]
            if graph == "encoder":
                start = (r * 8) % (clip.shape[1] - frames)
                y, x = (17 * s) % (clip.shape[3] - size), (29 * s) % (clip.shape[4] - size)
                row.append(np.ascontiguousarray(clip[:, start:start + frames, :, y:y + size, x:x + size]))
            else:
                shape = spec.inputs[0].resolve({"batch": 1, "latent_frames": max(1, frames // factor),
                                                "latent_h": size // 8, "latent_w": size // 8})
                row.append(rng.standard_normal(shape).astype(np.float32))
        chunks.append(row)
    return chunks


def _temporal_factor(runner) -> int:
    return runner.graph("encoder").dim_multiples.get("frames", 1)


def run_case(runner, case: str, graph: str, chunks: list[list[np.ndarray]]) -> tuple[float, int]:
    """Seconds for all rounds after the first (warm-up) and the video frames they made or took."""
    spec = runner.graph(graph)
    if case == "alone":
        streams = [runner.open_stream() for _ in chunks[0]]
        step = lambda row: [s.step(graph, c) for s, c in zip(streams, row, strict=True)]  # noqa: E731
    else:
        batched = runner.open_batched_streams(case)
        ids = [batched.add() for _ in chunks[0]]
        step = lambda row: list(batched.step(graph, dict(zip(ids, row, strict=True))).values())  # noqa: E731
    step(chunks[0])
    started = time.perf_counter()
    frames = 0
    for row in chunks[1:]:
        out = step(row)
        video = row if graph == "encoder" else [o[spec.outputs[0].name] for o in out]
        frames += sum(v.shape[0] * v.shape[1] for v in video)
    return time.perf_counter() - started, frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=[], help="NAME=DIR, repeatable")
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", default="ort-cpu,torch")
    parser.add_argument("--threads", type=int, default=1, help="runner threads")
    parser.add_argument("--out", type=Path, default=RESULTS / "batched_streams")
    args = parser.parse_args()

    from vae_deploy.runtime import load_runner
    from vae_deploy.runtime.registry import runner_class
    from vae_deploy.video.default_model import DEFAULT_MODEL_DIR

    models = {"packaged": DEFAULT_MODEL_DIR, **dict(m.split("=", 1) for m in args.model)}
    started, load_before = time.time(), os.getloadavg()[0]
    clip = clip_frames(8 * args.rounds + 8)
    rows = []
    for model, folder in models.items():
        for backend in args.backends.split(","):
            options = runner_class(backend).thread_options(args.threads, os.cpu_count() or 1)
            with load_runner(folder, backend, **options) as runner:  # as the streaming commands open it
                for graph in ("encoder", "decoder"):
                    stateful = bool(runner.graph(graph).state)
                    for name, lengths in LENGTHS.items():
                        chunks = workload(runner, graph, args.streams, args.size, args.rounds + 1, lengths,
                                          clip, np.random.default_rng(0))
                        cases = [c for c in CASES if not (c == "pad" and (stateful or name == "equal"))]
                        times: dict[str, list[float]] = {c: [] for c in cases}
                        frames = 0
                        for _ in range(args.repeats):
                            for case in cases:
                                seconds, frames = run_case(runner, case, graph, chunks)
                                times[case].append(seconds)
                        row = {"model": model, "backend": backend, "graph": graph, "stateful": stateful,
                               "lengths": name, "frames": frames,
                               "fps": {c: frames / statistics.median(t) for c, t in times.items()},
                               "seconds": times}
                        rows.append(row)
                        print(f"{model:10s} {backend:8s} {graph:8s} {name:6s} "
                              + "  ".join(f"{c} {v:8.1f} fps" for c, v in row["fps"].items()), flush=True)
    lines = ["# Batched streams: grouped or padded chunk lengths, against each stream alone", "",
             f"Command: `{' '.join(['.venv/bin/python', *sys.argv])}` "
             f"({(time.time() - started) / 60:.1f} min; benchmarks/batched_streams.py). {os.cpu_count()} "
             f"CPUs, {args.threads} runner thread(s); load average {load_before:.1f} before / "
             f"{os.getloadavg()[0]:.1f} after (the cores are shared with other jobs).",
             f"{args.streams} streams of {args.size}x{args.size} frames, {args.rounds} timed rounds after a "
             f"warm-up; frames/s of all streams together, median of {args.repeats} repeats, cases "
             f"alternating. Lengths per round: equal = {LENGTHS['equal'][0]} frames each, mixed = "
             f"{', '.join(map(str, LENGTHS['mixed']))} frames (cycled over the streams). \"pad\" only on "
             f"stateless graphs with mixed lengths (a stateful graph is never padded).", "",
             "| model | backend | graph | state | lengths | alone fps | group fps | pad fps | group vs alone "
             "| pad vs group |", "|---|---|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        fps = r["fps"]
        pad = f"{fps['pad']:.0f}" if "pad" in fps else "-"
        vs_pad = f"{fps['pad'] / fps['group']:.2f}x" if "pad" in fps else "-"
        lines.append(f"| {r['model']} | {r['backend']} | {r['graph']} | {'yes' if r['stateful'] else 'no'} "
                     f"| {r['lengths']} | {fps['alone']:.0f} | {fps['group']:.0f} | {pad} | "
                     f"{fps['group'] / fps['alone']:.2f}x | {vs_pad} |")
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
