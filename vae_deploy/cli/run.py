"""`vae-deploy run SOURCE`: stream a video through the model's encoder and decoder, chunk by chunk.

    vae-deploy run clip.mp4 --out recon.mp4 --side-by-side both.mp4 --latents clip.vaelat --metrics m.json

SOURCE is a video file, a folder of images, a camera index (0) or an RTSP/HTTP URL or GStreamer pipeline.
Without --model the packaged default model runs. Frames are fitted to the model (video/fit.py: working
short side, the model's multiple), encoded, rounded to fp16 latents (what `encode` stores, so `encode` then
`decode` gives these exact frames), decoded and written at the source frame rate (video/jobs.py run_job).
A progress bar shows frames/s on stderr. Ctrl-C or SIGTERM stops cleanly: the outputs keep the frames done,
the exit code is 130 (Ctrl-C) or 143 (SIGTERM). No torch is imported: this runs on the edge install.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vae_deploy.cli.options import (
    BackendOption,
    ChunkOption,
    CodecOption,
    FitOption,
    FpsOption,
    MaxFramesOption,
    ModelOption,
    QuietOption,
    RawLatentsOption,
    SizeOption,
    SourceArgument,
    ThreadsOption,
    TileBudgetOption,
    TileOption,
    interrupted,
    print_report,
    progress_bar,
    tile_request,
)
from vae_deploy.runtime.registry import DEFAULT_BACKEND


def run(
    source: SourceArgument,
    model: ModelOption = None,
    backend: BackendOption = DEFAULT_BACKEND,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Reconstruction to write: a video, or an image (.png) for a one-frame source.")
    ] = None,
    side_by_side: Annotated[Path | None, typer.Option(
        "--side-by-side", help="Video of source and reconstruction side by side.")] = None,
    latents: Annotated[Path | None, typer.Option("--latents", help=".vaelat file of the latents.")] = None,
    metrics: Annotated[Path | None, typer.Option(
        "--metrics", help="JSON: frames/s, chunk latency, PSNR, SSIM, flicker, compression (measuring "
                          "quality costs a few ms per frame, so it is done only when asked).")] = None,
    report: Annotated[Path | None, typer.Option(
        "--report", help="Folder for report.html: source and reconstruction playing together, the metrics, "
                         "per-frame plots (opens offline in a browser; docs/report.md).")] = None,
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
    codec: CodecOption = None,
) -> None:
    """Encode and decode a video chunk by chunk; write the reconstruction, latents and metrics."""
    from vae_deploy.video.jobs import run_job
    from vae_deploy.video.model_open import ModelChoice
    from vae_deploy.video.pipeline import StreamOptions, VideoOutputs

    try:
        options = StreamOptions(chunk=chunk, short_side=size, fit=fit, max_frames=max_frames, fps=fps,
                                measure=metrics is not None or report is not None, raw_latents=raw_latents,
                                tile=tile_request(tile, tile_budget))
        with progress_bar("run", quiet) as progress:
            result = run_job(source, VideoOutputs(out, side_by_side, latents, codec=codec), options=options,
                             model=ModelChoice(model, backend, threads), metrics=metrics, progress=progress,
                             report_dir=report)
    except KeyboardInterrupt:
        interrupted()
    print_report(result, "ran")
