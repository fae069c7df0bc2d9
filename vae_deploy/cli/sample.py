"""`vae-deploy sample MODEL_DIR -n 64 --out grid.png [--seed S]`: decode prior draws, write a PNG grid.

Generation without PyTorch: the runtime decodes N(0, I) draws and numpy + OpenCV write the grid
(runtime/sampling.py write_sample_grid).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vae_deploy.cli.options import BackendOption
from vae_deploy.runtime.registry import DEFAULT_BACKEND

MAX_SAMPLES = 10_000  # one grid image: 10,000 MNIST tiles are already 3000 px wide; more only exhausts memory


def sample(
    model_dir: Annotated[Path, typer.Argument(help="Model folder.")],
    n: Annotated[int, typer.Option("-n", "--n", min=1, max=MAX_SAMPLES, help="Number of samples.")] = 64,
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG file to write.")] = Path("grid.png"),
    seed: Annotated[int | None, typer.Option(
        "--seed", help="Seed of the prior draws (default: random).")] = None,
    backend: BackendOption = DEFAULT_BACKEND,
    columns: Annotated[int | None, typer.Option(
        "--columns", min=1, help="Grid columns (default: square).")] = None,
) -> None:
    """Decode n draws from the prior and save them as one image grid."""
    from vae_deploy.runtime.sampling import write_sample_grid

    width, height = write_sample_grid(model_dir, out, n, seed, backend, columns)
    typer.echo(f"wrote {out} ({n} samples, {width}x{height} px, seed {seed})")
