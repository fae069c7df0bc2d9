"""`vae-deploy run SOURCE`: stream a video through the model's encoder and decoder, chunk by chunk.

    vae-deploy run clip.mp4 --out recon.mp4 --side-by-side both.mp4 --latents clip.vaelat --metrics m.json

SOURCE is a video file, a folder of images, a camera index (0) or an RTSP/HTTP URL or GStreamer pipeline.
Without --model the packaged default model runs. Frames are fitted to the model (video/fit.py: working
short side, the model's multiple), encoded, rounded to fp16 latents (what `encode` stores, so `encode` then
`decode` gives these exact frames), decoded and written at the source frame rate (video/jobs.py run_job).
A progress bar shows frames/s on stderr. Ctrl-C or SIGTERM stops cleanly: the outputs keep the frames done,
the exit code is 130 (Ctrl-C) or 143 (SIGTERM). No torch is imported: this runs on the edge install.

Several sources (or --out-dir) run through one model in one batched pipeline (video/multi_jobs.py):

    vae-deploy run a.mp4 b.mp4 0 --out-dir runs/ [--metrics] [--with-latents]

Each source gets DIR/<name>/ (its reconstruction and metrics.json), DIR/metrics.json the aggregate. A source
that fails or ends early leaves the others running; each failed source is one `error:` line and the exit
code is 1. The single-output options (--out, --side-by-side, --latents, --report) take one source.
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
    ServerOption,
    ServerTokenOption,
    SizeOption,
    ThreadsOption,
    TileBudgetOption,
    TileOption,
    interrupted,
    model_server,
    print_report,
    progress_bar,
    tile_request,
)
from vae_deploy.errors import ConfigError
from vae_deploy.runtime.registry import DEFAULT_BACKEND

SourcesArgument = Annotated[list[str], typer.Argument(
    help="Video file, image file, image folder, camera index, or RTSP/HTTP URL / GStreamer pipeline; several "
         "run together through one model with --out-dir.", show_default=False)]


def run(
    ctx: typer.Context,
    sources: SourcesArgument,
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
                          "quality costs a few ms per frame, so it is done only when asked). With --out-dir "
                          "every source's DIR/<name>/metrics.json and the aggregate (totals, aggregate "
                          "frames/s, each source's status) are always written, the aggregate to "
                          "DIR/metrics.json; --metrics PATH adds the quality measures and writes the "
                          "aggregate to PATH instead.")] = None,
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
    out_dir: Annotated[Path | None, typer.Option(
        "--out-dir", help="With several sources (required then): one model, one batched pipeline, each "
                          "source's outputs in DIR/<name>/ (reconstruction.mp4, metrics.json; <name> from "
                          "the file's stem, camera0, ...; a repeated name gets -2), the aggregate metrics in "
                          "DIR/metrics.json. A source that fails or ends early leaves the others running; "
                          "exit 1 when any failed. --tile works as for one source: each (source, tile) pair "
                          "has its own state, tiles of equal shape share calls (one tile per source per "
                          "call), and auto counts every source sharing a call against --tile-budget.")
    ] = None,
    with_latents: Annotated[bool, typer.Option(
        "--with-latents", help="With --out-dir: also each source's latents, DIR/<name>/latents.vaelat.")
    ] = False,
    server: ServerOption = None,
    token: ServerTokenOption = None,
) -> None:
    """Encode and decode a video chunk by chunk; write the reconstruction, latents and metrics."""
    from vae_deploy.video.jobs import run_job
    from vae_deploy.video.model_open import ModelChoice
    from vae_deploy.video.pipeline import StreamOptions, VideoOutputs

    single = {"--out": out, "--side-by-side": side_by_side, "--latents": latents, "--report": report}
    if out_dir is not None or len(sources) > 1 or with_latents:
        _check_many(sources, out_dir, with_latents, [name for name, value in single.items() if value])
    remote = model_server(ctx, server, token)
    if remote is not None and out_dir is not None:
        raise ConfigError("--server runs one source; several sources (--out-dir) run through a local model")
    try:
        options = StreamOptions(chunk=chunk, short_side=size, fit=fit, max_frames=max_frames, fps=fps,
                                measure=metrics is not None or report is not None, raw_latents=raw_latents,
                                tile=tile_request(tile, tile_budget))
        if out_dir is not None:
            _run_many(sources, out_dir, options, ModelChoice(model, backend, threads), metrics, codec,
                      with_latents, quiet)
            return
        source = sources[0]
        with progress_bar("run", quiet) as progress:
            result = run_job(source, VideoOutputs(out, side_by_side, latents, codec=codec), options=options,
                             model=ModelChoice(model, backend, threads), metrics=metrics, progress=progress,
                             report_dir=report, server=remote)
    except KeyboardInterrupt:
        interrupted()
    print_report(result, "ran")


def _check_many(sources: list[str], out_dir: Path | None, with_latents: bool, single: list[str]) -> None:
    """One line for options that do not go together with several sources, before any work."""
    if out_dir is None:
        if with_latents:
            raise ConfigError("--with-latents is for --out-dir (each source's DIR/<name>/latents.vaelat); "
                              "one source takes --latents FILE")
        verb = "is" if len(single) == 1 else "are"
        given = f" ({', '.join(single)} {verb} for one source)" if single else ""
        raise ConfigError(f"{len(sources)} sources need --out-dir DIR, where each gets a folder of its "
                          f"own{given}")
    if single:
        verb = "is" if len(single) == 1 else "are"
        raise ConfigError(f"{', '.join(single)} {verb} for a single source without --out-dir; with --out-dir "
                          f"each source's outputs go to DIR/<name>/")


def _run_many(sources: list[str], out_dir: Path, options, model, metrics: Path | None, codec: str | None,
              with_latents: bool, quiet: bool) -> None:
    from vae_deploy.video.multi_jobs import run_many_job

    try:
        with progress_bar("run", quiet) as progress:
            result = run_many_job(sources, out_dir, options=options, model=model, metrics=metrics,
                                  codec=codec, latents=with_latents, progress=progress)
    except KeyboardInterrupt:
        interrupted()
    _print_many(result)


def _print_many(result) -> None:
    """A line per source (and its warnings and outputs), the totals, then one `error:` line per failed
    source (exit 1), or the interrupt's exit."""
    from vae_deploy.video.multi_source import FAILED

    for source in result.sources:
        report = source.report
        if source.status == FAILED or report is None:
            continue
        w, h = report.working_size
        typer.echo(f"{source.name}: {source.status}, {report.frames} frames in {report.seconds:.1f} s "
                   f"({report.frames_per_s:.1f} frames/s) at {w}x{h} from {report.source}")
        if report.psnr is not None:
            typer.echo(f"{source.name}: PSNR {report.psnr:.2f} dB, SSIM {report.ssim:.4f} at {w}x{h}")
        if report.truncated:
            typer.echo(f"warning: {source.name}: the source ended after {report.frames} of the "
                       f"{report.expected_frames} frames it announced (truncated or damaged); the "
                       f"{report.frames} frames that decode were processed", err=True)
        for name, path in report.outputs.items():
            typer.echo(f"wrote {source.name} {name.replace('_', '-')}: {path}")
    done = len(result.sources) - len(result.failed)
    typer.echo(f"ran {result.frames} frames of {done} of {len(result.sources)} sources in "
               f"{result.seconds:.1f} s ({result.frames_per_s:.1f} frames/s in aggregate), backend "
               f"{result.backend}")
    typer.echo(f"wrote metrics: {result.outputs['metrics']}")
    for source in result.failed:
        typer.echo(f"error: source {source.name} ({source.spec}) failed: {source.error}", err=True)
    if result.interrupted:
        interrupted(f"{result.frames} frames done were kept")
    if result.failed:
        raise SystemExit(1)
