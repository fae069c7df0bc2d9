"""`vae-deploy decode clip.vaelat -o out.mp4`: latents back to video, with the model that encoded them.

The file names its model (its fingerprint: a sha256 over the model files' hashes); another model is
refused, and so is a file whose latent data fails its checksum. Frames are
decoded in the chunks `encode` used and the fit is undone (back to the source size), so the result equals
`vae-deploy run` on the same source. Without --model the packaged default model decodes. No torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vae_deploy.cli.run import (
    BackendOption,
    FpsOption,
    ModelOption,
    QuietOption,
    ThreadsOption,
    check_metrics_path,
    check_outputs,
    finish,
    interrupted,
    open_runner,
    progress_bar,
)


def decode(
    latents: Annotated[Path, typer.Argument(help="The .vaelat file to decode.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Video file to write.")],
    model: ModelOption = None,
    backend: BackendOption = "ort-cpu",
    metrics: Annotated[Path | None, typer.Option(
        "--metrics", help="JSON: frames, frames/s, chunk latency.")] = None,
    fps: FpsOption = None,
    threads: ThreadsOption = None,
    quiet: QuietOption = False,
) -> None:
    """Decode a latent file to a video at the source's size and frame rate."""
    from vae_deploy.runtime.latents import LatentReader
    from vae_deploy.video.io import check_output_fps
    from vae_deploy.video.pipeline import StreamOptions, VideoOutputs, decode_latents

    try:
        if fps is not None:
            check_output_fps(fps)
        check_outputs(latents, model, out=out, metrics=metrics)
        check_metrics_path(metrics)
        total = LatentReader(latents).header.frame_count  # also refuses a non-latent file before loading
        with open_runner(model, backend, threads) as runner, progress_bar(total, "decode", quiet) as progress:
            report = decode_latents(runner, latents, VideoOutputs(video=out), StreamOptions(fps=fps),
                                    progress)
    except KeyboardInterrupt:
        interrupted()
    finish(report, metrics, "decoded")
