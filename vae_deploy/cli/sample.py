"""`vae-deploy sample MODEL_DIR -n 64 --out grid.png [--seed S] [--size S]`: decode prior draws, write a grid.

Generation without PyTorch: the runtime decodes N(0, I) draws and numpy + OpenCV write the grid
(runtime/sampling.py write_sample_grid). Image models (the MLP) draw latent vectors; frame VAEs (video
models without streaming state: the frame kind, diffusers AutoencoderKL and AutoencoderTiny) draw n latent
frames of square frames of side --size, N(0, I) in the normalized latent space when the model has a latent
normalization (the diffusion model's space, where the scaling factor gives the latents unit variance), then
denormalized for the decoder. Causal video models (causal3d, Wan) carry state from frame to frame and are
refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vae_deploy.cli.options import BackendOption
from vae_deploy.runtime.registry import DEFAULT_BACKEND

MAX_SAMPLES = 10_000  # one grid image: 10,000 MNIST tiles are already 3000 px wide; more only exhausts memory
MAX_SAMPLE_SIDE = 8192  # the largest frame side `run` feeds a model (video/fit.py MAX_MODEL_SIDE)


def sample(
    model_dir: Annotated[Path, typer.Argument(help="Model folder.")],
    n: Annotated[int, typer.Option("-n", "--n", min=1, max=MAX_SAMPLES, help="Number of samples.")] = 64,
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG file to write.")] = Path("grid.png"),
    seed: Annotated[int | None, typer.Option(
        "--seed", help="Seed of the prior draws (default: random).")] = None,
    backend: BackendOption = DEFAULT_BACKEND,
    columns: Annotated[int | None, typer.Option(
        "--columns", min=1, help="Grid columns (default: square).")] = None,
    size: Annotated[int | None, typer.Option(
        "--size", min=1, max=MAX_SAMPLE_SIDE,
        help="Frame VAEs: the side of the square frames drawn, in pixels, snapped to the model's spatial "
             "multiple (default: the model's working short side, else 128). Draws are N(0, I) in the "
             "normalized latent space when the model has a latent normalization (its scaling factor gives "
             "the latents unit variance) and are denormalized before the decoder.")] = None,
) -> None:
    """Decode n draws from the prior and save them as one image grid.

    Image models draw latent vectors. Frame VAEs (video models without streaming state: the frame kind,
    AutoencoderKL, AutoencoderTiny) draw n latent frames of --size, in the normalized latent space when the
    model has one, denormalized before the decoder. Causal video models (causal3d, Wan) are refused.
    """
    from vae_deploy.runtime.sampling import write_sample_grid
    from vae_deploy.video.fit import DEFAULT_SHORT_SIDE

    width, height = write_sample_grid(model_dir, out, n, seed, backend, columns, size, DEFAULT_SHORT_SIDE)
    typer.echo(f"wrote {out} ({n} samples, {width}x{height} px, seed {seed})")
