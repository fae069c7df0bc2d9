"""What the CLI's commands share: option types and parsing, the progress bar, the printed report, the
interrupt exit.

Presentation only: the work itself is in the layers below (video/jobs.py for the streaming commands).
Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from vae_deploy.errors import ConfigError, MissingBackendError
from vae_deploy.runtime.registry import BACKENDS, DEFAULT_BACKEND


def backend_help(what: str = "Backend") -> str:
    """Help of a backend option: every registered backend and the default."""
    return f"{what}: {', '.join(BACKENDS)} (default {DEFAULT_BACKEND}; see the README's backends table)."


BACKEND_HELP = backend_help()
BackendOption = Annotated[str, typer.Option("--backend", "-b", help=BACKEND_HELP)]
ParityBackendOption = Annotated[str, typer.Option(
    "--parity-backend", help=backend_help("Backend the parity check runs"))]
ModelOption = Annotated[Path | None, typer.Option(
    "--model", "-m", help="Model folder (default: the model packaged with vae-deploy).")]
ChunkOption = Annotated[int, typer.Option(
    "--chunk", help="Frames per model call; a multiple of the model's temporal factor.")]
SizeOption = Annotated[int | None, typer.Option(
    "--size", help="Working short side in pixels (default: the model's; 0: the source's own size). "
                   "Memory grows with the frame's area: the packaged model needs about 1 KB per pixel at "
                   "--chunk 1.")]
FitOption = Annotated[str, typer.Option(
    "--fit", help="How frames reach the model's size multiple: snap (resize) or pad (keep aspect).")]
MaxFramesOption = Annotated[int | None, typer.Option(
    "--max-frames", help="Stop after this many frames (a camera runs until Ctrl-C otherwise).")]
FpsOption = Annotated[float | None, typer.Option(
    "--fps", help="Frame rate of the output (default: the source's; 25 for an image folder).")]
ThreadsOption = Annotated[int | None, typer.Option(
    "--threads", min=1, help="Inference threads (default for ort-cpu: one per CPU, idle threads sleeping).")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
# The names are video/writers.py's CODECS (kept literal here: importing the writers would import PyAV for
# every command; tests/video/test_writers.py checks the two agree).
CODEC_NAMES = ("h264", "hevc", "av1", "ffv1")
CodecOption = Annotated[str | None, typer.Option(
    "--codec", help=f"Video codec: {', '.join(CODEC_NAMES)} (default by suffix: .mp4/.mov "
    f"H.264, playable in browsers; .mkv lossless FFV1, exact pixels and sizes; .avi Motion JPEG). Where "
    f"FFmpeg lacks the encoder a note says what is written instead.")]
RawLatentsOption = Annotated[bool, typer.Option(
    "--raw-latents", help="Store the encoder's raw latents. By default a model with a latent normalization "
                          "(diffusers' scaling_factor/shift_factor, Wan's latents_mean/std) stores them in "
                          "the space its diffusion model consumes; decode undoes either.")]
TileOption = Annotated[str, typer.Option(
    "--tile", help="Spatial tiles: a size in pixels (a multiple of the model's spatial factor), auto (tile "
                   "only when one step of a frame would not fit --tile-budget) or off. Exact where the "
                   "model's manifest says so; a blended model says so in a note (docs/tiling.md).")]
TileBudgetOption = Annotated[str | None, typer.Option(
    "--tile-budget", help="Working memory one step of a frame may take before --tile auto tiles it, e.g. "
                          "4GB or 512MB (default: half of this machine's memory).")]
ServerOption = Annotated[str | None, typer.Option(
    "--server", help="A running `vae-deploy serve` to use instead of a local model folder: "
                     "ws://HOST:PORT. Its model, backend and threads run the codec, so --model, --backend, "
                     "--threads and a --tile size are refused beside it; the outputs are the local "
                     "command's (docs/serve.md).")]
ServerTokenOption = Annotated[str | None, typer.Option(
    "--token", envvar="VAE_DEPLOY_TOKEN", help="The token the --server requires, when it has one (as given "
                                               "to `vae-deploy serve --token`).")]
SourceArgument = Annotated[str, typer.Argument(
    help="Video file, image file, image folder, camera index, or RTSP/HTTP URL / GStreamer pipeline.")]


def parse_sizes(text: str | None, option: str) -> tuple[int, ...] | None:
    """"1,7,128" -> (1, 7, 128) for the comma-separated sizes of `option`; None stays None."""
    if text is None:
        return None
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as err:
        raise ConfigError(f"{option} must be comma-separated integers, got {text!r}") from err
    if not sizes or min(sizes) < 1:
        raise ConfigError(f"{option} must list positive integers, got {text!r}")
    return sizes


LOCAL_MODEL_OPTIONS = {"model": "--model", "backend": "--backend", "threads": "--threads"}


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether the user gave option `name` (on the command line or in its environment variable), not its
    default."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")


def model_server(ctx: typer.Context, server: str | None, token: str | None):
    """--server as the job's ModelServer (serve/remote_codec.py), None without it. Refused in one line:
    --server beside a local model choice (--model, --backend or --threads given), a malformed address, and
    --token on the command line without --server."""
    if server is None:
        source = ctx.get_parameter_source("token")
        if token is not None and source is not None and source.name == "COMMANDLINE":
            raise ConfigError("--token is the token of a --server; a local model needs none")
        return None
    given = [flag for name, flag in LOCAL_MODEL_OPTIONS.items() if _given(ctx, name)]
    if given:
        raise ConfigError(f"--server runs the server's model: {' and '.join(given)} "
                          f"choose{'s' if len(given) == 1 else ''} a local one; give one or the other")
    try:
        from vae_deploy.serve.remote_codec import RemoteServer
    except ImportError as err:
        raise MissingBackendError(f"--server needs the serve extra ({err.name} is missing): pip install "
                                  f"'vae-deploy[serve]'") from err
    return RemoteServer(server, token)


def tile_request(tile: str, budget: str | None):
    """--tile and --tile-budget as a runtime TileRequest; a bad value is one ConfigError line."""
    from vae_deploy.runtime.tile_plan import TileRequest

    return TileRequest(tile, budget)


@contextlib.contextmanager
def progress_bar(what: str, quiet: bool, unit: str = "frames") -> Iterator:
    """A progress bar on stderr counting `unit` (frames, or videos for a batch) with its rate; yields the
    callback a job calls with (done, total or None).

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
            return super().render(task) if speed is None else f"{speed:6.1f} {unit}/s"

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Rate(""),
                        TimeElapsedColumn(), console=Console(stderr=True))
    task = progress.add_task(what, total=None, start=False)

    def update(done: int, total: int | None) -> None:
        if not progress.live.is_started:
            progress.start()
            progress.start_task(task)
        progress.update(task, completed=done, total=total)

    try:
        yield update
    finally:
        if progress.live.is_started:
            progress.stop()


def _num(value: float | None, fmt: str) -> str:
    if value is None:
        return "-"
    return "inf" if isinstance(value, float) and math.isinf(value) else format(value, fmt)


def print_report(report, verb: str) -> None:
    """Results in a line or two, warnings on stderr, one line per output written; then exit 130 / 143 when
    Ctrl-C / SIGTERM stopped the job (the outputs hold the frames done)."""
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
    if report.interrupted:
        interrupted(f"{report.frames} frames done were kept")


def interrupted(what: str = "no output was written") -> None:
    """Report a Ctrl-C or SIGTERM and exit 130 / 143 (vae_deploy/interrupts.py)."""
    from vae_deploy import interrupts

    # SystemExit, not KeyboardInterrupt: typer turns the latter into a return value that would exit 0.
    print(f"{interrupts.stop_word()}: {what}", file=sys.stderr)
    raise SystemExit(interrupts.exit_code())
