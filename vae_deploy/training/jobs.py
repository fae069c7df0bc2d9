"""`vae-deploy train` as a function: a recipe file and its overrides -> a trained run folder.

(`vae-deploy evaluate` is training/evaluation.py's evaluate_run.) The CLI only parses options, calls the
function and prints its result; a program can call it the same way.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from vae_deploy.training.config import load_recipe
from vae_deploy.training.trainer import TrainResult, train

RUNS_DIR = Path("runs")  # where a run folder goes by default: runs/<recipe name>


def train_job(recipe: Path, out: Path | None = None, *, data_dir: Path | None = None, resume: bool = False,
              epochs: int | None = None, seed: int | None = None, max_steps: int | None = None,
              device: str | None = None, threads: int | None = None, max_minutes: float | None = None,
              init_from: Path | None = None, console: Console | None = None) -> TrainResult:
    """Train the recipe file `recipe` into `out` (default RUNS_DIR/<recipe name>); `resume` continues the
    run there. The keyword overrides replace the recipe's [train] values where given (None keeps them);
    `data_dir` replaces the data folder. `console` shows progress (trainer.train)."""
    spec = load_recipe(recipe).with_overrides(
        epochs=epochs, seed=seed, max_steps=max_steps, device=device, threads=threads,
        max_minutes=max_minutes, init_from=str(init_from) if init_from is not None else None)
    # An absolute data folder in the run's recipe, so `evaluate` and `--resume` work from any directory.
    spec = spec.with_data_dir(data_dir.resolve() if data_dir is not None else None)
    out_dir = out if out is not None else RUNS_DIR / spec.name
    return train(spec, out_dir, resume=resume, console=console)
