"""One session's codec: the local `LatentCodec` (fp16 latents, the first-chunk rule, the last chunk's
padding, the latent normalization) over a slot of the server's batched streams, plus the session's limits.

The codec is reused as is rather than rewritten: it opens its stream through `runner.open_stream()`, so it is
given a stand-in runner whose stream hands each chunk to the batcher and waits for that chunk's round. A
session alone therefore computes exactly what `vae-deploy encode`/`decode` compute for the same chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vae_deploy.errors import InputShapeError
from vae_deploy.runtime.latent_space import NORMALIZED
from vae_deploy.runtime.manifest import Manifest
from vae_deploy.serve.batcher import Batcher
from vae_deploy.video.latent_codec import LatentCodec, VideoModelInfo

MODES = ("encode", "decode")


@dataclass(frozen=True)
class Limits:
    """What one chunk may hold: a frame's pixels (H * W, at the model's input) and frames per chunk."""

    max_frame_pixels: int = 1920 * 1088
    max_chunk_frames: int = 64


class _SlotStream:
    """A `Stream` look-alike whose steps run in the batcher's rounds, in this session's slot."""

    def __init__(self, batcher: Batcher, stream: int):
        self.batcher, self.stream = batcher, stream

    def encode(self, chunk: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(self.batcher.submit(self.stream, "encoder", chunk).result().values())

    def decode(self, chunk: np.ndarray) -> np.ndarray:
        return next(iter(self.batcher.submit(self.stream, "decoder", chunk).result().values()))


class _SlotRunner:
    """What LatentCodec asks of a runner when it is given the model's info and no tiling: the manifest and
    `open_stream()`."""

    def __init__(self, manifest: Manifest, stream: _SlotStream):
        self.manifest, self._stream = manifest, stream

    def open_stream(self) -> _SlotStream:
        return self._stream


class Session:
    """One client's stream: `encode` (float32 frames (T, C, H, W) in [0, 1] -> fp16 latents) or `decode`
    (fp16 latents (t, C_lat, h, w) -> float32 frames), chunk by chunk; `close()` frees its state.
    `latent_space`: the space its latents are in, as the local codec takes it (normalized: the model's
    diffusion space when it has one, else raw; raw: the encoder's own, `--raw-latents`)."""

    def __init__(self, batcher: Batcher, info: VideoModelInfo, mode: str, limits: Limits,
                 latent_space: str = NORMALIZED):
        if mode not in MODES:
            raise InputShapeError(f"mode must be {' or '.join(MODES)}, got {mode!r}")
        self.batcher, self.info, self.mode, self.limits = batcher, info, mode, limits
        self.stream = batcher.add()
        try:
            self._codec = LatentCodec(_SlotRunner(batcher.runner.manifest,
                                                  _SlotStream(batcher, self.stream)), info, latent_space)
        except BaseException:
            batcher.remove(self.stream)
            raise

    @property
    def latent_space(self) -> str:
        """The space this session's latents are in (raw for a model without a normalization)."""
        return self._codec.latent_space

    def run(self, array: np.ndarray) -> np.ndarray:
        """One chunk through the codec (blocking: it waits for its round)."""
        self._check(array)
        return self._codec.encode(array) if self.mode == "encode" else self._codec.decode(array)

    def _check(self, array: np.ndarray) -> None:
        """The session's limits, before any work; the codec and the runner check the rest (shapes against
        the model, the state held), each in one line."""
        info, want = self.info, ("float32" if self.mode == "encode" else "float16")
        what = "frames" if self.mode == "encode" else "latents"
        if array.dtype.name != want:
            raise InputShapeError(f"{self.mode} takes {want} {what}, got {array.dtype.name}")
        if array.ndim != 4:
            raise InputShapeError(f"{what} must be 4-D (T, C, H, W), got shape {tuple(array.shape)}")
        scale = 1 if self.mode == "encode" else info.spatial_factor
        pixels = array.shape[2] * array.shape[3] * scale * scale
        if pixels > self.limits.max_frame_pixels:
            raise InputShapeError(f"a frame of {array.shape[3] * scale}x{array.shape[2] * scale} is "
                                  f"{pixels} pixels, beyond this server's {self.limits.max_frame_pixels}")
        frames = array.shape[0] * (1 if self.mode == "encode" else info.temporal_factor)
        if frames > self.limits.max_chunk_frames:
            raise InputShapeError(f"a chunk of {frames} frames is beyond this server's "
                                  f"{self.limits.max_chunk_frames}")
        if array.shape[0] == 0:
            raise InputShapeError(f"a chunk holds at least one frame, got shape {tuple(array.shape)}")
        if self.mode == "decode" and array.shape[1] != info.latent_channels:
            raise InputShapeError(f"latents must have this model's {info.latent_channels} channels, got "
                                  f"{array.shape[1]} (latents from another model?)")

    def close(self) -> None:
        self.batcher.remove(self.stream)
