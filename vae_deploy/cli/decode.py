"""`vae-deploy decode clip.vaelat -o out.mp4`: latents back to video, with the model that encoded them.

The file names its model (its fingerprint: a sha256 over the model files' hashes); another model is
refused, and so is a file whose latent data fails its checksum. Frames are decoded in the chunks `encode`
used and the fit is undone (back to the source size), so the result equals `vae-deploy run` on the same
source (video/jobs.py decode_job). Without --model the packaged default model decodes; with --server
ws://HOST:PORT a running `vae-deploy serve` of the model that encoded the file does (docs/serve.md). No torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vae_deploy.cli.options import (
    BackendOption,
    CodecOption,
    FpsOption,
    ModelOption,
    QuietOption,
    ServerOption,
    ServerTokenOption,
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


def decode(
    ctx: typer.Context,
    latents: Annotated[Path, typer.Argument(help="The .vaelat file to decode.")],
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Video file to write (an image, e.g. .png, for a one-frame clip).")],
    model: ModelOption = None,
    backend: BackendOption = DEFAULT_BACKEND,
    metrics: Annotated[Path | None, typer.Option(
        "--metrics", help="JSON: frames, frames/s, chunk latency.")] = None,
    fps: FpsOption = None,
    threads: ThreadsOption = None,
    quiet: QuietOption = False,
    codec: CodecOption = None,
    tile: TileOption = "auto",
    tile_budget: TileBudgetOption = None,
    server: ServerOption = None,
    token: ServerTokenOption = None,
) -> None:
    """Decode a latent file to a video at the source's size and frame rate."""
    from vae_deploy.video.jobs import decode_job
    from vae_deploy.video.model_open import ModelChoice

    try:
        remote = model_server(ctx, server, token)
        tiles = tile_request(tile, tile_budget)
        with progress_bar("decode", quiet) as progress:
            report = decode_job(latents, out, model=ModelChoice(model, backend, threads), fps=fps,
                                metrics=metrics, progress=progress, codec=codec, tile=tiles,
                                server=remote)
    except KeyboardInterrupt:
        interrupted()
    print_report(report, "decoded")
