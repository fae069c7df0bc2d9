"""Generation without PyTorch: prior draws, the reparameterization with an explicit seed, image grids.

Sampling never happens inside an exported graph (docs/architecture.md): encoders give (mu, logvar) and the
runtime draws `z = mu + eps * exp(logvar / 2)` here, seeded, so a result can be reproduced.
`write_sample_grid` is `vae-deploy sample`: prior draws decoded by a backend, written as one image grid.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from vae_deploy.errors import InputShapeError, OutputError, VaeDeployError
from vae_deploy.files import atomic_path, unwritten_cause
from vae_deploy.runtime.registry import DEFAULT_BACKEND, load_runner
from vae_deploy.runtime.runner import Runner

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")  # what the grid is written as


def reparameterize(mu: np.ndarray, logvar: np.ndarray, seed: int | None = None) -> np.ndarray:
    """z = mu + eps * sigma, eps ~ N(0, I) (Kingma & Welling, 2014, section 2.4)."""
    eps = np.random.default_rng(seed).standard_normal(mu.shape).astype(mu.dtype)
    return mu + eps * np.exp(logvar / 2)


def sample_prior(runner: Runner, n: int, seed: int | None = None) -> np.ndarray:
    """Decode n draws from the prior N(0, I) through `runner`; returns the decoder's images.

    Only for image models (decoder input (batch, ...) with every other dimension fixed).
    """
    if n < 1:
        raise InputShapeError(f"the number of samples must be at least 1, got {n}")
    z_spec = runner.graph("decoder").inputs[0]
    rest = z_spec.shape[1:]
    if z_spec.shape[:1] != ("batch",) or not all(isinstance(d, int) for d in rest):
        raise InputShapeError(f"sampling needs a decoder input (batch, fixed dims...); this model's is "
                              f"{z_spec.shape}: use `vae-deploy decode` for video models")
    z = np.random.default_rng(seed).standard_normal((n, *rest)).astype(z_spec.dtype)
    return runner.decode(z)


def image_grid(images: np.ndarray, columns: int | None = None, pad: int = 2) -> np.ndarray:
    """NCHW float images in [0, 1] -> one uint8 (H, W, C) grid, C = 1 or 3 (RGB), `pad` pixels of black.

    columns defaults to ceil(sqrt(N)), the square-ish layout torchvision's make_grid gives for 64 images.
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise InputShapeError(f"image grid needs images (N, 1 or 3, H, W), got {images.shape}")
    n, c, h, w = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = np.zeros((pad + rows * (h + pad), pad + columns * (w + pad), c), dtype=np.uint8)
    pixels = np.clip(np.rint(images.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    pixels = pixels.transpose(0, 2, 3, 1)  # NCHW -> NHWC
    for i in range(n):
        r, col = divmod(i, columns)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[top:top + h, left:left + w] = pixels[i]
    return grid


def write_sample_grid(model_dir: Path, out: Path, n: int, seed: int | None = None,
                      backend: str = DEFAULT_BACKEND, columns: int | None = None) -> tuple[int, int]:
    """Decode n prior draws of the model folder with `backend` and write them to the image file `out`
    (atomically) as one grid (`image_grid`); returns the grid's (width, height) in pixels."""
    import cv2

    out = Path(out)
    if out.suffix.lower() not in IMAGE_SUFFIXES:
        raise VaeDeployError(f"--out must be an image file (.png), got {out}")
    with load_runner(model_dir, backend) as runner:
        images = sample_prior(runner, n, seed)
    grid = image_grid(images, columns=columns)
    if grid.shape[2] == 3:
        grid = cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)  # OpenCV writes BGR
    with atomic_path(out) as tmp:
        if not cv2.imwrite(str(tmp), grid):  # OpenCV says only that it failed
            raise OutputError(f"cannot write {out}: {unwritten_cause(tmp.parent)}")
    return grid.shape[1], grid.shape[0]
