"""`vae-deploy bench MODEL_DIR [--backend NAME] [--json]`: encode/decode latency, with the shapes timed.

Image models (the MLP): one call of each graph per batch size (--batch-sizes, default 1 and 128) on random
inputs of the model's example size; items per second.

Video models (an encoder with a stream axis) are timed as `vae-deploy run` uses them: chunks of --chunk
frames (default the pipeline's chunk, 8) of one stream (batch 1), each chunk a `step` of an open stream so
the state is carried, at the working size `run` gives a 16:9 source: short side --size (default the
manifest's working short side), fitted to the model's multiple like `run` fits it ("snap", video/fit.py);
ort-cpu gets the pipeline's thread count unless --threads says otherwise. The decoder is timed on the latents
of that chunk. Reported per chunk (ms) and as frames per second.

Times the runner's public calls (input validation included, as an application pays it), warm-up calls
excluded, and reports the median and 95th percentile. Every row names the input shape it timed.
benchmarks/runtime_speed.py and benchmarks/pipeline_speed.py compare backends.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from vae_deploy.cli.options import BackendOption, ThreadsOption
from vae_deploy.runtime.registry import DEFAULT_BACKEND

# The source aspect the frame size of a video model's bench stands for: 16:9, the shape of most video.
BENCH_SOURCE_SIZE = (1920, 1080)


def bench(
    model_dir: Annotated[Path, typer.Argument(help="Model folder.")],
    backend: BackendOption = DEFAULT_BACKEND,
    json_out: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
    batch_sizes: Annotated[str | None, typer.Option(
        "--batch-sizes", help="Image models: comma-separated batch sizes (default 1,128).")] = None,
    chunk: Annotated[int | None, typer.Option(
        "--chunk", min=1, help="Video models: frames per chunk (default the pipeline's, 8).")] = None,
    size: Annotated[int | None, typer.Option(
        "--size", min=1, help="Video models: short side of the timed frames, a 16:9 source fitted like `run` "
                              "fits it (default the model's working size).")] = None,
    repeats: Annotated[int, typer.Option("--repeats", help="Timed calls per case.", min=1)] = 50,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed calls before timing.", min=0)] = 5,
    threads: ThreadsOption = None,
) -> None:
    """Time encode and decode: median and p95 ms per call (video: per chunk), warm-up excluded."""
    from vae_deploy.errors import ConfigError
    from vae_deploy.runtime.manifest import read_manifest
    from vae_deploy.runtime.registry import load_runner

    manifest = read_manifest(model_dir)
    video = bool(manifest.graph("encoder").stream_axis)
    if video and batch_sizes is not None:
        raise ConfigError("--batch-sizes is for image models; a video model is timed as `run` streams it "
                          "(batch 1, chunks of --chunk frames at --size)")
    if not video and (chunk is not None or size is not None):
        raise ConfigError(f"--chunk and --size are for video models; this {manifest.kind!r} model takes "
                          f"batches of images (--batch-sizes)")
    if video:
        from vae_deploy.runtime.benchmark import bench_stream
        from vae_deploy.video.pipeline import runner_options

        shape, what = _video_case(manifest, chunk, size)
        options = runner_options(backend, threads)
        with load_runner(model_dir, backend, manifest=manifest, **options) as runner:
            results = bench_stream(runner, shape, repeats=repeats, warmup=warmup)
    else:
        from vae_deploy.cli.options import parse_sizes
        from vae_deploy.runtime.benchmark import bench_runner

        sizes = parse_sizes(batch_sizes or "1,128", "--batch-sizes")
        options = {} if threads is None else {"threads": threads}
        what = "one call per batch size, random inputs at the model's example size"
        with load_runner(model_dir, backend, manifest=manifest, **options) as runner:
            results = bench_runner(runner, list(sizes), repeats=repeats, warmup=warmup)
    if json_out:
        typer.echo(json.dumps({"backend": backend, "model_dir": str(model_dir), "kind": manifest.kind,
                               "timed": what, "runner_options": options, "repeats": repeats, "warmup": warmup,
                               "results": [r.to_dict() for r in results]}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    per = "chunk" if video else "call"
    table = Table(title=f"{model_dir} on {backend}: {what}; ms per {per}, {repeats} timed after {warmup} "
                        f"warm-up", title_justify="left")
    for column in ("graph", "input shape", "median ms", "p95 ms", "frames/s" if video else "items/s"):
        left = column in ("graph", "input shape")
        table.add_column(column, justify="left" if left else "right", no_wrap=True)
    for r in results:
        table.add_row(r.graph, str(r.shape), f"{r.median_ms:.3f}", f"{r.p95_ms:.3f}", f"{r.per_s:,.1f}")
    Console().print(table)


def _video_case(manifest, chunk: int | None, size: int | None) -> tuple[tuple[int, ...], str]:
    """The encoder input timed for a video model, (1, T, C, H, W), and a sentence saying what it is."""
    from vae_deploy.video.codec import VideoModelInfo
    from vae_deploy.video.fit import plan_fit
    from vae_deploy.video.pipeline import DEFAULT_CHUNK

    info = VideoModelInfo.from_manifest(manifest)
    frames = DEFAULT_CHUNK if chunk is None else chunk
    info.check_chunk(frames)
    short = info.short_side if size is None else size
    policy = plan_fit(BENCH_SOURCE_SIZE, short, info.spatial_factor, info.channels, "snap")
    w, h = policy.model_size
    source = "" if size is not None else ", the model's working size"
    what = (f"streamed chunks of {frames} frames at {w}x{h} (a 16:9 source at short side {short}{source}, "
            f"fitted like `run`), state carried")
    return (1, frames, info.channels, h, w), what
