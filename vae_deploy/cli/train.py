"""`vae-deploy train RECIPE.toml`: train a recipe into a run folder (training/jobs.py train_job)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def train(
    recipe: Annotated[Path, typer.Argument(help="Training recipe, e.g. train/mnist_mlp.toml.")],
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, help="Override [train] epochs.")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Run folder (default: runs/<recipe name>).")] = None,
    data_dir: Annotated[Path | None, typer.Option(
        "--data-dir", help="A torchvision-style MNIST_DATA/ folder (MNIST/raw/*-ubyte) instead of the "
                           "shipped copy.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Override [train] seed.")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue the run in --out from its last finished epoch.")] = False,
    max_steps: Annotated[int | None, typer.Option(
        "--max-steps", min=1, help="Stop after this many optimizer steps in total (smoke runs).")] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda, cuda:N.")] = None,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="CPU threads for torch.")] = None,
    max_minutes: Annotated[float | None, typer.Option(
        "--max-minutes", min=0.001, help="Override [train] max_minutes (wall-clock budget).")] = None,
    init_from: Annotated[Path | None, typer.Option(
        "--init-from", help="Override [train] init_from: a trained model folder to start from (a FrameVAE "
                            "run for the temporal and causal3d designs).")] = None,
    nproc: Annotated[int | None, typer.Option(
        "--nproc", help="Train data-parallel on N processes: runs `torchrun --nproc-per-node N -m vae_deploy "
                        "train ...` (the recipe's batch_size is per process).")] = None,
) -> None:
    """Train a VAE from a recipe; keeps the best epoch by validation loss, resumable."""
    from rich.console import Console

    from vae_deploy.cli.extras import train_extra

    if nproc is not None:
        with train_extra("train"):
            from vae_deploy.training.jobs import launch_distributed

            code = launch_distributed(nproc, recipe, resume=resume, out=out, data_dir=data_dir, epochs=epochs,
                                      seed=seed, max_steps=max_steps, device=device, threads=threads,
                                      max_minutes=max_minutes, init_from=init_from)
        raise typer.Exit(code)
    with train_extra("train"):
        from vae_deploy.training.distributed import World
        from vae_deploy.training.jobs import train_job

        result = train_job(recipe, out, data_dir=data_dir, resume=resume, epochs=epochs, seed=seed,
                           max_steps=max_steps, device=device, threads=threads, max_minutes=max_minutes,
                           init_from=init_from, console=Console(stderr=True))
    best = (f"best epoch {result.best_epoch} (valid loss {result.best_valid_loss:.3f})"
            if result.best_epoch is not None else "no finished epoch yet")
    if World.from_env().is_main:  # torchrun: rank 0 reports for all
        print(f"{result.run_dir}: {result.epochs_done} epochs, {result.steps} steps, {best}")
