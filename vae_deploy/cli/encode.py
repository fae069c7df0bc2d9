"""`vae-deploy encode SOURCE -o clip.vaelat`: a video's latents as fp16 in the .vaelat container.

The container (vae_deploy/runtime/latents.py) records the model's fingerprint, fps, frame count, source
size, fit policy, chunk and a checksum of the latents, so `vae-deploy decode` can refuse another model or a
damaged file and reproduce `vae-deploy run`'s frames exactly. Without --model the packaged default model
encodes (video/jobs.py encode_job); with --server ws://HOST:PORT a running `vae-deploy serve` does, and
writes the same file (docs/serve.md). No torch is imported.
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
    ServerOption,
    ServerTokenOption,
    SizeOption,
    SourceArgument,
    ThreadsOption,
    TileBudgetOption,
    TileOption,
    interrupted,
    model_server,
    print_report,
    progress_bar,
    tile_request,
)
from vae_deploy.runtime.registry import DEFAULT_BACKEND


def encode(
    ctx: typer.Context,
    source: SourceArgument,
    out: Annotated[Path, typer.Option("--out", "-o", help="The .vaelat file to write.")],
    model: ModelOption = None,
    backend: BackendOption = DEFAULT_BACKEND,
    metrics: Annotated[Path | None, typer.Option(
        "--metrics", help="JSON: frames, frames/s, chunk latency, compression.")] = None,
    chunk: ChunkOption = 8,
    size: SizeOption = None,
    fit: FitOption = "snap",
    max_frames: MaxFramesOption = None,
    fps: FpsOption = None,
    threads: ThreadsOption = None,
    quiet: QuietOption = False,
    raw_latents: RawLatentsOption = False,
    tile: TileOption = "auto",
    tile_budget: TileBudgetOption = None,
    server: ServerOption = None,
    token: ServerTokenOption = None,
) -> None:
    """Encode a video into a latent file (fp16 latents plus what decoding needs)."""
    from vae_deploy.video.jobs import encode_job
    from vae_deploy.video.model_open import ModelChoice
    from vae_deploy.video.pipeline import StreamOptions

    try:
        remote = model_server(ctx, server, token)
        options = StreamOptions(chunk=chunk, short_side=size, fit=fit, max_frames=max_frames, fps=fps,
                                measure=False, raw_latents=raw_latents,
                                tile=tile_request(tile, tile_budget))
        with progress_bar("encode", quiet) as progress:
            report = encode_job(source, out, options=options, model=ModelChoice(model, backend, threads),
                                metrics=metrics, progress=progress, server=remote)
    except KeyboardInterrupt:
        interrupted()
    print_report(report, "encoded")
