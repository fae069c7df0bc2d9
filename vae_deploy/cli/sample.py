"""`vae-deploy sample MODEL_DIR -n 64 --out grid.png [--seed S]`: decode prior draws, write a PNG grid.

Generation without PyTorch: the runtime decodes N(0, I) draws and numpy + OpenCV write the grid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vae_deploy.errors import VaeDeployError

MAX_SAMPLES = 10_000  # one grid image: 10,000 MNIST tiles are already 3000 px wide; more only exhausts memory


def sample(
    model_dir: Annotated[Path, typer.Argument(help="Model folder.")],
    n: Annotated[int, typer.Option("-n", "--n", min=1, max=MAX_SAMPLES, help="Number of samples.")] = 64,
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG file to write.")] = Path("grid.png"),
    seed: Annotated[int | None, typer.Option(
        "--seed", help="Seed of the prior draws (default: random).")] = None,
    backend: Annotated[str, typer.Option("--backend", "-b", help="Backend that decodes.")] = "ort-cpu",
    columns: Annotated[int | None, typer.Option(
        "--columns", min=1, help="Grid columns (default: square).")] = None,
) -> None:
    """Decode n draws from the prior and save them as one image grid."""
    import cv2

    from vae_deploy.errors import OutputError
    from vae_deploy.files import atomic_path, unwritten_cause
    from vae_deploy.runtime.registry import load_runner
    from vae_deploy.runtime.sampling import image_grid, sample_prior

    if out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"):
        raise VaeDeployError(f"--out must be an image file (.png), got {out}")
    with load_runner(model_dir, backend) as runner:
        images = sample_prior(runner, n, seed)
    grid = image_grid(images, columns=columns)
    if grid.shape[2] == 3:
        grid = cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)  # OpenCV writes BGR
    with atomic_path(out) as tmp:
        if not cv2.imwrite(str(tmp), grid):  # OpenCV says only that it failed
            raise OutputError(f"cannot write {out}: {unwritten_cause(tmp.parent)}")
    typer.echo(f"wrote {out} ({n} samples, {grid.shape[1]}x{grid.shape[0]} px, seed {seed})")
