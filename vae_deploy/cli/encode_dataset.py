"""`vae-deploy encode-dataset SOURCE... --out DIR`: one .vaelat per video of a collection (or, with
`--format webdataset`, WebDataset tar shards of --shard-size videos: batch/shards.py), plus DIR/index.jsonl.

Thin: parses, calls vae_deploy/batch/jobs.py encode_dataset_job with a progress bar over videos, prints
the summary. Exit 1 when any video failed (the index says why) or a worker died (one line), 130 / 143 when
stopped (what finished is in the index). No torch is imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vae_deploy.cli.options import (
    BackendOption,
    ChunkOption,
    FitOption,
    FpsOption,
    MaxFramesOption,
    ModelOption,
    QuietOption,
    RawLatentsOption,
    SizeOption,
    TileOption,
    interrupted,
    progress_bar,
    tile_request,
)
from vae_deploy.runtime.registry import DEFAULT_BACKEND


def encode_dataset(
    sources: Annotated[list[str], typer.Argument(
        help="Video files, folders (searched recursively for videos) or .txt files listing one path a "
             "line.",
        show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: one .vaelat per video (mirroring "
                                                          "the paths under each folder) or tar shards, and "
                                                          "index.jsonl.")],
    model: ModelOption = None,
    backend: BackendOption = DEFAULT_BACKEND,
    engine: Annotated[str, typer.Option(
        "--engine", help="local: worker processes on this machine; ray: a Ray actor pool (local Ray, or the "
                         "cluster at --address; needs vae-deploy\\[ray]).")] = "local",
    workers: Annotated[int | None, typer.Option(
        "--workers", "-w", help="Workers (processes or Ray actors), each with its own runner (default: half "
                                "the CPUs, at least 1).")] = None,
    threads: Annotated[int | None, typer.Option(
        "--threads", help="Inference threads per worker (default: the CPUs split between the "
                          "workers).")] = None,
    address: Annotated[str | None, typer.Option(
        "--address", help="Ray cluster address (host:port or ray://host:port) for --engine ray.")] = None,
    output_format: Annotated[str, typer.Option(
        "--format", help="vaelat: one .vaelat per video; webdataset: tar shards DIR/shard-000000.tar... of "
                         "<key>.vaelat + <key>.json samples.")] = "vaelat",
    shard_size: Annotated[int | None, typer.Option(
        "--shard-size", help="Videos per shard with --format webdataset (default 1000).",
        show_default=False)] = None,
    index_format: Annotated[str, typer.Option(
        "--index", help="jsonl: DIR/index.jsonl; parquet: also a Parquet copy, DIR/index.parquet, written at "
                        "the end of the run (needs vae-deploy\\[parquet]).")] = "jsonl",
    chunk: ChunkOption = 8,
    size: SizeOption = None,
    fit: FitOption = "snap",
    max_frames: MaxFramesOption = None,
    fps: FpsOption = None,
    quiet: QuietOption = False,
    raw_latents: RawLatentsOption = False,
    tile: TileOption = "auto",
    tile_budget: Annotated[str | None, typer.Option(
        "--tile-budget", help="Working memory one step of a frame may take in each worker before --tile auto "
                              "tiles it, e.g. 2GB (default: half of this machine's memory, split between "
                              "the workers).")] = None,
) -> None:
    """Encode a collection of videos into latent files, on worker processes or a Ray cluster; resumable."""
    from vae_deploy.batch.jobs import encode_dataset_job
    from vae_deploy.video.model_open import ModelChoice
    from vae_deploy.video.pipeline import StreamOptions

    try:
        options = StreamOptions(chunk=chunk, short_side=size, fit=fit, max_frames=max_frames, fps=fps,
                                measure=False, raw_latents=raw_latents, tile=tile_request(tile, tile_budget))
        with progress_bar("encode-dataset", quiet, unit="videos") as progress:
            choice = ModelChoice(model, backend, threads)
            result = encode_dataset_job(sources, out, options=options, model=choice, engine=engine,
                                        workers=workers, address=address, progress=progress,
                                        output_format=output_format, shard_size=shard_size,
                                        index_format=index_format)
    except KeyboardInterrupt:
        index = out / "index.jsonl"  # (removed by a batch stopped before its first video finished)
        interrupted(f"the videos finished are kept and listed in {index}" if index.exists() else
                    "no video was finished; nothing was written")
    typer.echo(result.summary())
    if result.failed:
        raise SystemExit(1)
