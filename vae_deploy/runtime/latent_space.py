"""Latent normalization: the latent space a diffusion model works in, recorded as data in the manifest and
applied here, outside the graphs (no torch).

A diffusers VAE's encoder gives raw latents z; the diffusion model that uses it consumes
`(z - shift) * scale` (AutoencoderKL: shift_factor and scaling_factor, e.g. 0.18215 for SD 1.x; Wan:
per-channel latents_mean and 1 / latents_std). The manifest's preprocessing["latent_normalization"] holds
{"scale": [one per latent channel], "shift": [...]}. `encode` stores normalized latents (what a diffusion
pipeline caches), `decode` undoes the normalization before the decoder; `--raw-latents` stores raw ones.
A .vaelat header says which space its latents are in (`latent_space`), so decode never guesses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vae_deploy.errors import ConfigError, ModelFormatError

RAW = "raw"
NORMALIZED = "normalized"
LATENT_SPACES = (RAW, NORMALIZED)


def _per_channel(value: float | Sequence[float], channels: int, name: str) -> list[float]:
    values = [float(value)] * channels if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(values) != channels:
        raise ConfigError(f"latent normalization {name} has {len(values)} values for {channels} latent "
                          f"channels")
    if not all(math.isfinite(v) for v in values):
        raise ConfigError(f"latent normalization {name} must be finite numbers, got {values}")
    return values


def latent_normalization_record(norm: dict, channels: int) -> dict[str, list[float]]:
    """A model's `latent_normalization` ({"scale": s, "shift": m}, numbers or per channel) as the
    manifest stores it: one float per latent channel each."""
    scale = _per_channel(norm.get("scale", 1.0), channels, "scale")
    shift = _per_channel(norm.get("shift", 0.0), channels, "shift")
    if any(s == 0 for s in scale):
        raise ConfigError(f"latent normalization scale must not be 0, got {scale}")
    return {"scale": scale, "shift": shift}


@dataclass(frozen=True)
class LatentNormalization:
    scale: np.ndarray  # (C,) float32
    shift: np.ndarray  # (C,) float32

    @classmethod
    def from_preprocessing(cls, preprocessing: dict, channels: int) -> LatentNormalization | None:
        """The normalization a manifest's preprocessing records, or None (latents are used raw)."""
        record = preprocessing.get("latent_normalization")
        if not record:
            return None
        try:
            checked = latent_normalization_record(record, channels)
        except (ConfigError, TypeError, ValueError, AttributeError) as exc:
            raise ModelFormatError(f"the manifest's latent_normalization is malformed: {exc}") from exc
        return cls(np.asarray(checked["scale"], np.float32), np.asarray(checked["shift"], np.float32))

    def _shape(self, a: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
        shape = [1] * a.ndim
        shape[axis] = -1
        return self.scale.reshape(shape), self.shift.reshape(shape)

    def normalize(self, z: np.ndarray, channel_axis: int = 1) -> np.ndarray:
        """Raw latents -> the diffusion model's space, (z - shift) * scale (float32)."""
        scale, shift = self._shape(z, channel_axis)
        return (z.astype(np.float32) - shift) * scale

    def denormalize(self, latents: np.ndarray, channel_axis: int = 1) -> np.ndarray:
        """The diffusion model's space -> raw latents for the decoder, latents / scale + shift (float32)."""
        scale, shift = self._shape(latents, channel_axis)
        return latents.astype(np.float32) / scale + shift
