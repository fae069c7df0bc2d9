"""`vae-deploy run SOURCE`: stream a video through the model's encoder and decoder, chunk by chunk.

    vae-deploy run clip.mp4 --out recon.mp4 --side-by-side both.mp4 --latents clip.vaelat --metrics m.json

SOURCE is a video file, a folder of images, a camera index (0) or an RTSP/HTTP URL or GStreamer pipeline.
Without --model the packaged default model runs. Frames are fitted to the model (video/fit.py: working
short side, the model's multiple), encoded, rounded to fp16 latents (what `encode` stores, so `encode` then
`decode` gives these exact frames), decoded and written at the source frame rate. A progress bar shows
frames/s on stderr. Ctrl-C or SIGTERM stops cleanly: the outputs keep the frames done, the exit code is
130 (Ctrl-C) or 143 (SIGTERM).

Also home of what encode/decode/demo share (opening the model, the progress bar, the summary).
No torch is imported: everything here runs on the edge install.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

ModelOption = Annotated[Path | None, typer.Option(
    "--model", "-m", help="Model folder (default: the model packaged with vae-deploy).")]
BackendOption = Annotated[str, typer.Option("--backend", "-b", help="Backend: ort-cpu, ort-cuda, torch.")]
ChunkOption = Annotated[int, typer.Option(
    "--chunk", help="Frames per model call; a multiple of the model's temporal factor.")]
SizeOption = Annotated[int | None, typer.Option(
    "--size", help="Working short side in pixels (default: the model's; 0: the source's own size).")]
FitOption = Annotated[str, typer.Option(
    "--fit", help="How frames reach the model's size multiple: snap (resize) or pad (keep aspect).")]
MaxFramesOption = Annotated[int | None, typer.Option(
    "--max-frames", help="Stop after this many frames (a camera runs until Ctrl-C otherwise).")]
FpsOption = Annotated[float | None, typer.Option(
    "--fps", help="Frame rate of the output (default: the source's; 25 for an image folder).")]
ThreadsOption = Annotated[int | None, typer.Option(
    "--threads", min=1, help="Inference threads (default for ort-cpu: one fewer than the CPUs, at least 1).")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]


def open_runner(model: Path | None, backend: str, threads: int | None):
    from vae_deploy.runtime.registry import load_runner
    from vae_deploy.video.default_model import resolve_model
    from vae_deploy.video.pipeline import runner_options

    return load_runner(resolve_model(model), backend, **runner_options(backend, threads))


def stream_options(chunk: int, size: int | None, fit: str, max_frames: int | None, fps: float | None,
                   measure: bool = True):
    from vae_deploy.errors import ConfigError
    from vae_deploy.video.io import check_output_fps
    from vae_deploy.video.pipeline import StreamOptions

    if max_frames is not None and max_frames < 1:
        raise ConfigError(f"--max-frames must be at least 1, got {max_frames}")
    if fps is not None:
        check_output_fps(fps)
    return StreamOptions(chunk=chunk, short_side=size, fit=fit, max_frames=max_frames, fps=fps,
                         measure=measure)


@contextlib.contextmanager
def progress_bar(total: int | None, what: str, quiet: bool) -> Iterator[Any]:
    """A frames/s progress bar on stderr; yields the callback the pipeline calls with frames done.

    The bar appears with the first finished chunk, so an error found while setting up prints alone.
    """
    if quiet:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    class Rate(TextColumn):
        def render(self, task):
            speed = task.finished_speed or task.speed
            return super().render(task) if speed is None else f"{speed:6.1f} frames/s"

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Rate(""),
                        TimeElapsedColumn(), console=Console(stderr=True))
    task = progress.add_task(what, total=total, start=False)

    def update(done: int) -> None:
        if not progress.live.is_started:
            progress.start()
            progress.start_task(task)
        progress.update(task, completed=done)

    try:
        yield update
    finally:
        if progress.live.is_started:
            progress.stop()


@contextlib.contextmanager
def streaming_job(source: str, model: Path | None, backend: str, threads: int | None,
                  max_frames: int | None, what: str, quiet: bool) -> Iterator[tuple[Any, Any, Any]]:
    """(runner, frame source, progress bar) for a command that streams SOURCE through a model."""
    from vae_deploy.video.io import open_source

    with open_runner(model, backend, threads) as runner, open_source(source) as frames:
        total = frames.frame_count
        if max_frames is not None:
            total = min(total or max_frames, max_frames)
        with progress_bar(total, what, quiet) as progress:
            yield runner, frames, progress


def _num(value: float | None, fmt: str) -> str:
    if value is None:
        return "-"
    return "inf" if isinstance(value, float) and math.isinf(value) else format(value, fmt)


def print_summary(report, verb: str) -> None:
    """Results in a line or two, warnings on stderr, then one line per output written."""
    w, h = report.working_size
    line = (f"{verb} {report.frames} frames in {report.seconds:.1f} s ({report.frames_per_s:.1f} frames/s) "
            f"at {w}x{h}, compression {_num(report.compression_ratio, '.1f')}x, backend {report.backend}")
    if report.chunk_latency_ms:
        line += (f", chunk of {report.chunk}: p50 {report.chunk_latency_ms['p50']:.0f} ms, p95 "
                 f"{report.chunk_latency_ms['p95']:.0f} ms")
    typer.echo(line)
    if report.psnr is not None:
        sw, sh = report.source_size
        quality = (f"PSNR {_num(report.psnr, '.2f')} dB, SSIM {_num(report.ssim, '.4f')}, "
                   f"flicker {_num(report.flicker, '.4f')}")
        typer.echo(f"quality at {w}x{h}: {quality}; PSNR at the source size {sw}x{sh}: "
                   f"{_num(report.psnr_source, '.2f')} dB")
    if report.truncated:
        n = report.frames
        typer.echo(f"warning: the source ended after {n} of the {report.expected_frames} frames it announced "
                   f"(truncated or damaged); the {n} frames that decode were processed", err=True)
    for name, path in report.outputs.items():
        typer.echo(f"wrote {name.replace('_', '-')}: {path}")


def write_metrics(path: Path | None, report) -> None:
    if path is None:
        return
    from vae_deploy.files import write_json_atomic

    write_json_atomic(path, report.to_dict())
    typer.echo(f"wrote metrics: {path}")


def check_metrics_path(path: Path | None) -> None:
    if path is not None:
        from vae_deploy.video.pipeline import check_output_path

        check_output_path(path, "the metrics")


def check_outputs(source: str | Path | None, model: Path | None, **outputs: Path | None) -> None:
    """Refuse outputs that are the input, lie in the model folder, or share a file (named as options)."""
    from vae_deploy.video.default_model import resolve_model
    from vae_deploy.video.pipeline import check_distinct_outputs

    options = {f"--{name.replace('_', '-')}": path for name, path in outputs.items()}
    check_distinct_outputs(options, {"the input": source}, {"the model folder": resolve_model(model)})


def finish(report, metrics: Path | None, verb: str) -> None:
    """Summary, metrics file, and exit 130 / 143 after Ctrl-C / SIGTERM (outputs were kept)."""
    print_summary(report, verb)
    write_metrics(metrics, report)
    if report.interrupted:
        interrupted(f"{report.frames} frames done were kept")


def interrupted(what: str = "no output was written") -> None:
    """Report a Ctrl-C or SIGTERM and exit 130 / 143 (vae_deploy/interrupts.py)."""
    from vae_deploy import interrupts

    # SystemExit, not KeyboardInterrupt: typer turns the latter into a return value that would exit 0.
    print(f"{interrupts.stop_word()}: {what}", file=sys.stderr)
    raise SystemExit(interrupts.exit_code())


def run(
    source: Annotated[str, typer.Argument(
        help="Video file, image folder, camera index, or RTSP/HTTP URL / GStreamer pipeline.")],
    model: ModelOption = None,
    backend: BackendOption = "ort-cpu",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Reconstruction video to write.")] = None,
    side_by_side: Annotated[Path | None, typer.Option(
        "--side-by-side", help="Video of source and reconstruction side by side.")] = None,
    latents: Annotated[Path | None, typer.Option("--latents", help=".vaelat file of the latents.")] = None,
    metrics: Annotated[Path | None, typer.Option(
        "--metrics", help="JSON: frames/s, chunk latency, PSNR, SSIM, flicker, compression (measuring "
                          "quality costs a few ms per frame, so it is done only when asked).")] = None,
    chunk: ChunkOption = 8,
    size: SizeOption = None,
    fit: FitOption = "snap",
    max_frames: MaxFramesOption = None,
    fps: FpsOption = None,
    threads: ThreadsOption = None,
    quiet: QuietOption = False,
) -> None:
    """Encode and decode a video chunk by chunk; write the reconstruction, latents and metrics."""
    from vae_deploy.video.pipeline import VideoOutputs, run_video

    try:
        options = stream_options(chunk, size, fit, max_frames, fps, measure=metrics is not None)
        check_outputs(source, model, out=out, side_by_side=side_by_side, latents=latents, metrics=metrics)
        check_metrics_path(metrics)
        with streaming_job(source, model, backend, threads, max_frames, "run", quiet) as (runner, frames,
                                                                                          progress):
            report = run_video(runner, frames, options, VideoOutputs(out, side_by_side, latents), progress)
    except KeyboardInterrupt:
        interrupted()
    finish(report, metrics, "ran")
