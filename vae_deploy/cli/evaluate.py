"""`vae-deploy evaluate RUN_DIR`: test loss of a run's best checkpoint and its pictures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by `vae-deploy train`.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    data_dir: Annotated[Path | None, typer.Option(
        "--data-dir", help="Where the run's data lies now, if it moved.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Folder for the pictures (default RUN_DIR/eval).")
                   ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sampling noise in the loss.")] = 0,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N.")] = "auto",
) -> None:
    """Test loss, recon and KL per sample; writes loss curves, reconstructions and (2-D latent) the latent
    scatter and the decoded manifold."""
    from vae_deploy.training.evaluation import evaluate_run

    report = evaluate_run(run_dir, data_dir=data_dir, out_dir=out, seed=seed, device=device)
    if json_out:
        print(json.dumps(report, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    partial = ", partial" if report["partial"] else ""
    table = Table(title=f"{report['run']} (epoch {report['epoch']}{partial})")
    table.add_column("per test sample")
    table.add_column("nats", justify="right")
    for name in ("test_loss", "test_recon", "test_kl"):
        if report[name] is not None:
            table.add_row(name[5:], f"{report[name]:.3f}")
    console = Console()
    console.print(table)
    for name, path in report["pictures"].items():
        console.print(f"{name}: {path}", highlight=False)
