"""`vae-deploy evaluate RUN_DIR`: test loss of a run's best checkpoint and its pictures (for a video run, a
report page per test clip: training/video_evaluation.py, video/report.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

# The report's own numbers (shown above or bookkeeping); numbers a task adds get a row each.
_BASE_KEYS = {"epoch", "steps", "test_loss", "test_recon", "test_kl", "test_samples", "seed"}


def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by `vae-deploy train`.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    data_dir: Annotated[Path | None, typer.Option(
        "--data-dir", help="Where the run's data lies now, if it moved.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Folder for the pictures (default RUN_DIR/eval).")
                   ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sampling noise in the loss.")] = 0,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N.")] = "auto",
    threads: Annotated[int | None, typer.Option(
        "--threads", min=1, help="CPU threads for torch (default: the recipe's train.threads).")] = None,
) -> None:
    """Test loss, recon and KL per sample; writes loss curves, reconstructions and (2-D latent) the latent
    scatter and the decoded manifold; video runs: per test clip a side-by-side video, a strip and a report
    page (report_<clip>/report.html, docs/report.md)."""
    from vae_deploy.cli.extras import train_extra

    with train_extra("evaluate"):
        from vae_deploy.training.evaluation import evaluate_run

        report = evaluate_run(run_dir, data_dir=data_dir, out_dir=out, seed=seed, device=device,
                              threads=threads)
    if json_out:
        print(json.dumps(report, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    which = (f"partial checkpoint, {report['steps']} steps" if report["partial"]
             else f"best epoch {report['epoch']}")
    table = Table(title=f"{report['run']} ({which})")
    table.add_column("test set")
    table.add_column("value", justify="right")
    for name in ("test_loss", "test_recon", "test_kl"):
        if report[name] is not None:
            table.add_row(f"{name[5:]} (nats per sample)", f"{report[name]:.3f}")
    for name, value in report.items():  # numbers a task adds (e.g. video PSNR)
        if name not in _BASE_KEYS and isinstance(value, (int, float)) and not isinstance(value, bool):
            table.add_row(name, f"{value:.4g}")
    console = Console()
    console.print(table)
    if report.get("clips"):  # video tasks: one row per test clip (vae_deploy.training.video_evaluation)
        clips = Table(title="test clips (never trained on), streamed (mu, no sampling)")
        for column in ("clip", "frames", "WxH", "PSNR", "SSIM", "flicker", "ratio", "fps"):
            clips.add_column(column, justify="left" if column == "clip" else "right", overflow="fold")
        for c in report["clips"]:
            clips.add_row(c["name"], str(c["frames"]), f"{c['width']}x{c['height']}", f"{c['psnr']:.2f}",
                          f"{c['ssim']:.4f}", f"{c['flicker']:.4f}", f"{c['compression_ratio']:.1f}",
                          f"{c['fps']:.1f}")
        console.print(clips)
    for name, path in report["pictures"].items():
        console.print(f"{name}: {path}", highlight=False)
