"""Generation without PyTorch: prior draws, the reparameterization with an explicit seed, image grids.

Sampling never happens inside an exported graph (docs/architecture.md): encoders give (mu, logvar) and the
runtime draws `z = mu + eps * exp(logvar / 2)` here, seeded, so a result can be reproduced.
`write_sample_grid` is `vae-deploy sample`: prior draws decoded by a backend, written as one image grid.

Two kinds of model sample:
- image models (decoder input (batch, fixed dims...), the MLP): n draws z ~ N(0, I), one call.
- frame VAEs (video models whose decoder carries no state: the frame kind, diffusers AutoencoderKL and
  AutoencoderTiny): n latent frames of a square frame of a chosen side, decoded as clips
  (1, t, C_lat, h, w) of up to SAMPLE_DECODE_CHUNK latent frames, every frame on its own. With a latent
  normalization in the manifest (runtime/latent_space.py) the draws are N(0, I) in the normalized space,
  the diffusion model's, where the scaling factor gives the latents unit variance (what the factor is
  for), and are denormalized before the decoder: raw latents have another variance (about 1 / 0.18215**2
  for SD 1.x), so N(0, I) drawn raw would be the wrong prior. Causal video VAEs (causal3d, Wan) carry state
  from frame to frame: their latent frames are no independent draws, and they are refused.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from vae_deploy.errors import ConfigError, InputShapeError, OutputError, VaeDeployError
from vae_deploy.files import atomic_path, unwritten_cause
from vae_deploy.runtime.latent_space import LatentNormalization
from vae_deploy.runtime.registry import DEFAULT_BACKEND, load_runner
from vae_deploy.runtime.runner import Runner

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")  # what the grid is written as
# Latent frames per decoder call when sampling a frame VAE: its frames are independent, so the clip is
# decoded in pieces to bound memory (a large decoder at 512 px needs GBs per dozen frames).
SAMPLE_DECODE_CHUNK = 8
# The grid is one image in memory: n frames of side s take about n * s * s pixels. Past this many pixels
# (768 MiB of RGB) the allocation would exhaust an ordinary machine before anything is written.
MAX_GRID_PIXELS = 2**28


def reparameterize(mu: np.ndarray, logvar: np.ndarray, seed: int | None = None) -> np.ndarray:
    """z = mu + eps * sigma, eps ~ N(0, I) (Kingma & Welling, 2014, section 2.4)."""
    eps = np.random.default_rng(seed).standard_normal(mu.shape).astype(mu.dtype)
    return mu + eps * np.exp(logvar / 2)


def sample_prior(runner: Runner, n: int, seed: int | None = None, short_side: int | None = None,
                 default_short_side: int | None = None) -> np.ndarray:
    """Decode n draws from the prior N(0, I) through `runner`; returns the decoded images (N, C, H, W).

    Image models (decoder input (batch, fixed dims...)): n latent vectors. Frame VAEs (a video decoder
    without state): n latent frames, N(0, I) in the normalized space when the manifest has a latent
    normalization (module docstring), of square frames whose side is `short_side` (else the manifest's
    preprocessing short_side, else `default_short_side`) snapped to the model's spatial multiple.
    """
    if n < 1:
        raise InputShapeError(f"the number of samples must be at least 1, got {n}")
    z_spec = runner.graph("decoder").inputs[0]
    rest = z_spec.shape[1:]
    if z_spec.shape[:1] == ("batch",) and all(isinstance(d, int) for d in rest):
        if short_side is not None:
            raise ConfigError(f"--size is for video models; this {runner.manifest.kind!r} model decodes "
                              f"latents of fixed shape {tuple(rest)} into images of one size")
        z = np.random.default_rng(seed).standard_normal((n, *rest)).astype(z_spec.dtype)
        return runner.decode(z)
    return _sample_frames(runner, n, seed, short_side, default_short_side)


def _sample_frames(runner: Runner, n: int, seed: int | None, short_side: int | None,
                   default_short_side: int | None) -> np.ndarray:
    """`sample_prior` for a frame VAE: (n, C, H, W) frames decoded from n latent frames."""
    manifest = runner.manifest
    decoder, encoder = runner.graph("decoder"), runner.graph("encoder")
    z_spec = decoder.inputs[0]
    if decoder.state or decoder.first_graph:
        raise ConfigError(f"sampling needs a model without streaming state; this {manifest.kind!r} model's "
                          f"decoder carries state from frame to frame (a causal video VAE), so its latent "
                          f"frames are no independent draws from N(0, I): sample a frame VAE (frame, "
                          f"AutoencoderKL, AutoencoderTiny)")
    channels = z_spec.shape[2] if len(z_spec.shape) == 5 else None
    if z_spec.layout != "NTCHW" or not isinstance(channels, int):
        raise ConfigError(f"sampling needs a decoder input (batch, fixed dims...) or video latents "
                          f"(batch, frames, channels, height, width); this model's is {z_spec.shape}")
    side = short_side or manifest.preprocessing.get("short_side") or default_short_side
    if not side or side < 1:
        raise ConfigError("give the side of the sampled frames in pixels (--size)")
    multiple = max(encoder.dim_multiples.get("height", 1), encoder.dim_multiples.get("width", 1))
    side = max(multiple, int(round(side / multiple)) * multiple)  # snapped like `run` fits frames
    if n * side * side > MAX_GRID_PIXELS:
        raise ConfigError(f"{n} frames of {side}x{side} make a grid of {n * side * side / 1e6:.0f} "
                          f"megapixels, over the limit of {MAX_GRID_PIXELS / 1e6:.0f}: ask for fewer samples "
                          f"(-n) or a smaller --size")
    latent = side // multiple
    z = np.random.default_rng(seed).standard_normal((1, n, channels, latent, latent)).astype(np.float32)
    normalization = LatentNormalization.from_preprocessing(manifest.preprocessing, channels)
    if normalization is not None:  # the draws are in the diffusion model's space: back to raw latents
        z = normalization.denormalize(z, channel_axis=2)
    z = z.astype(z_spec.dtype)
    frames = [runner.decode(z[:, i:i + SAMPLE_DECODE_CHUNK])[0] for i in range(0, n, SAMPLE_DECODE_CHUNK)]
    return np.concatenate(frames)


def image_grid(images: np.ndarray, columns: int | None = None, pad: int = 2,
               pad_value: float = 0.0) -> np.ndarray:
    """NCHW float images in [0, 1] -> one uint8 (H, W, C) grid, C = 1 or 3 (RGB), `pad` pixels of
    `pad_value` (in [0, 1]: 0 black) between and around the images.

    columns defaults to ceil(sqrt(N)), the square-ish layout torchvision's make_grid gives for 64 images.
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise InputShapeError(f"image grid needs images (N, 1 or 3, H, W), got {images.shape}")
    n, c, h, w = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = np.full((pad + rows * (h + pad), pad + columns * (w + pad), c), _to_uint8(np.float32(pad_value)))
    pixels = _to_uint8(images.astype(np.float32))
    pixels = pixels.transpose(0, 2, 3, 1)  # NCHW -> NHWC
    for i in range(n):
        r, col = divmod(i, columns)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[top:top + h, left:left + w] = pixels[i]
    return grid


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)


def write_image(out: Path, image: np.ndarray) -> None:
    """Write a uint8 (H, W, 1 or 3) RGB image to the image file `out` (its suffix picks the format),
    atomically; an unwritable target is one OutputError."""
    import cv2

    if image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)  # OpenCV writes BGR
    with atomic_path(out) as tmp:
        if not cv2.imwrite(str(tmp), image):  # OpenCV says only that it failed
            raise OutputError(f"cannot write {out}: {unwritten_cause(Path(out).parent)}")


def write_sample_grid(model_dir: Path, out: Path, n: int, seed: int | None = None,
                      backend: str = DEFAULT_BACKEND, columns: int | None = None,
                      short_side: int | None = None,
                      default_short_side: int | None = None) -> tuple[int, int]:
    """Decode n prior draws of the model folder with `backend` and write them to the image file `out`
    (atomically) as one grid (`image_grid`); returns the grid's (width, height) in pixels. `short_side`
    and `default_short_side`: the frame side of a frame VAE's draws (`sample_prior`)."""
    out = Path(out)
    if out.suffix.lower() not in IMAGE_SUFFIXES:
        raise VaeDeployError(f"--out must be an image file (.png), got {out}")
    with load_runner(model_dir, backend) as runner:
        images = sample_prior(runner, n, seed, short_side, default_short_side)
    grid = image_grid(images, columns=columns)
    write_image(out, grid)
    return grid.shape[1], grid.shape[0]
