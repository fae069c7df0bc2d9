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
excluded, and reports the median and 95th percentile. Every row names the input shape it timed. The work is
video/jobs.py's bench_job; this module parses the options and prints. benchmarks/runtime_speed.py and
benchmarks/pipeline_speed.py compare backends.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from vae_deploy.cli.options import BackendOption, ThreadsOption, parse_sizes
from vae_deploy.runtime.registry import DEFAULT_BACKEND


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
    from vae_deploy.video.jobs import bench_job

    result = bench_job(model_dir, backend=backend, batch_sizes=parse_sizes(batch_sizes, "--batch-sizes"),
                       chunk=chunk, size=size, repeats=repeats, warmup=warmup, threads=threads)
    if json_out:
        typer.echo(json.dumps({"backend": backend, "model_dir": str(model_dir), "kind": result.kind,
                               "timed": result.timed, "runner_options": result.runner_options,
                               "repeats": repeats, "warmup": warmup,
                               "results": [r.to_dict() for r in result.timings]}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    per = "chunk" if result.video else "call"
    table = Table(title=f"{model_dir} on {backend}: {result.timed}; ms per {per}, {repeats} timed after "
                        f"{warmup} warm-up", title_justify="left")
    for column in ("graph", "input shape", "median ms", "p95 ms", "frames/s" if result.video else "items/s"):
        left = column in ("graph", "input shape")
        table.add_column(column, justify="left" if left else "right", no_wrap=True)
    for r in result.timings:
        table.add_row(r.graph, str(r.shape), f"{r.median_ms:.3f}", f"{r.p95_ms:.3f}", f"{r.per_s:,.1f}")
    Console().print(table)
