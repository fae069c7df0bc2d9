"""`vae-deploy encode SOURCE -o clip.vaelat`: a video's latents as fp16 in the .vaelat container.

The container (vae_deploy/runtime/latents.py) records the model's sha256, fps, frame count, source size,
fit policy and chunk, so `vae-deploy decode` can refuse another model and reproduce `vae-deploy run`'s
frames exactly. Without --model the packaged default model encodes. No torch is imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vae_deploy.cli.run import (
    BackendOption,
    ChunkOption,
    FitOption,
    FpsOption,
    MaxFramesOption,
    ModelOption,
    QuietOption,
    SizeOption,
    ThreadsOption,
    check_metrics_path,
    check_outputs,
    finish,
    interrupted,
    stream_options,
    streaming_job,
)


def encode(
    source: Annotated[str, typer.Argument(
        help="Video file, image folder, camera index, or RTSP/HTTP URL / GStreamer pipeline.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The .vaelat file to write.")],
    model: ModelOption = None,
    backend: BackendOption = "ort-cpu",
    metrics: Annotated[Path | None, typer.Option(
        "--metrics", help="JSON: frames, frames/s, chunk latency, compression.")] = None,
    chunk: ChunkOption = 8,
    size: SizeOption = None,
    fit: FitOption = "snap",
    max_frames: MaxFramesOption = None,
    fps: FpsOption = None,
    threads: ThreadsOption = None,
    quiet: QuietOption = False,
) -> None:
    """Encode a video into a latent file (fp16 latents plus what decoding needs)."""
    from vae_deploy.video.pipeline import encode_video

    try:
        options = stream_options(chunk, size, fit, max_frames, fps, measure=False)
        check_outputs(source, model, out=out, metrics=metrics)
        check_metrics_path(metrics)
        with streaming_job(source, model, backend, threads, max_frames, "encode", quiet) as (runner, frames,
                                                                                             progress):
            report = encode_video(runner, frames, out, options, progress)
    except KeyboardInterrupt:
        interrupted()
    finish(report, metrics, "encoded")
