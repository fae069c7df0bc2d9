"""Fitting source frames to a video model and undoing it on output (numpy + OpenCV, no torch).

Layout: source frames are RGB uint8 (H, W, 3) (what `video.sources` sources yield); fitted frames are float32
(C, H', W') in [0, 1], C the model's channels, H' and W' multiples of the model's spatial factor.

The policy, in three steps, recorded in every latent file so that `decode` undoes exactly what `encode` did:

1. Scale to the working resolution: the short side becomes `short_side` pixels (0: keep the source size).
   INTER_AREA when shrinking (averages, no aliasing), INTER_LINEAR when enlarging: the resize the training
   data uses (vae_deploy.data.video.resize_short_side).
2. Reach the model's multiple (a conv VAE with spatial factor 8 needs H and W divisible by 8), by one of:
     "snap" (default)  the scaled size is rounded to the nearest multiple on each side, so the scale of each
                       axis changes by at most half a multiple (under 3% at 128 px): every latent describes
                       picture, none describes padding, and the working frame is the model input itself;
     "pad"             the aspect ratio is kept exactly and the bottom and right edges are padded by
                       repeating the last row/column (edge content rather than black, so the border does
                       not disturb the convolutions near it); latents also cover the padding.
3. Channels: RGB for 3-channel models; 1-channel models get luma (OpenCV's RGB2GRAY, BT.601 weights).

Undoing (`unfit`): crop the padding, back to RGB, resize to the source size (INTER_AREA / INTER_LINEAR).

The working frame (`content`) is the fitted frame without padding. Quality (PSNR, SSIM, flicker) and the
compression ratio are measured there: fitted frames against their reconstruction, raw uint8 bytes of the
working frame against the fp16 latent bytes (padding, when there is any, counts against compression).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from vae_deploy.errors import ConfigError, DataError
from vae_deploy.runtime.spec import GraphSpec

DEFAULT_SHORT_SIDE = 128  # working short side when neither the user nor the model's manifest gives one
# Largest side of the frame fed to the model, and of the source frames (outputs are written at their size).
# Above it a single chunk's tensors need tens of GB, OpenCV fails inside its resize ("out of memory") and
# FFmpeg refuses 16384-pixel frames ("Invalid argument") rather than saying so: refuse it up front, in one
# line. A .vaelat header claims at most these sizes too (runtime/latents.py MAX_FRAME_SIDE).
MAX_MODEL_SIDE = 8192


def _fit_snap(w: float, h: float, multiple: int) -> tuple[int, int, int, int]:
    sw, sh = (max(multiple, int(round(s / multiple)) * multiple) for s in (w, h))
    return sw, sh, sw, sh


def _fit_pad(w: float, h: float, multiple: int) -> tuple[int, int, int, int]:
    cw, ch = (max(1, int(round(s))) for s in (w, h))
    return cw, ch, -(-cw // multiple) * multiple, -(-ch // multiple) * multiple


# mode -> (scaled width, scaled height, multiple) -> (content w, content h, model input w, model input h)
FIT_MODES: dict[str, Callable[[float, float, int], tuple[int, int, int, int]]] = {
    "snap": _fit_snap,
    "pad": _fit_pad,
}


def _resize(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize (H, W[, C]) to size (w, h); area averaging when shrinking, bilinear when enlarging."""
    h, w = frame.shape[:2]
    if (w, h) == tuple(size):
        return frame
    shrink = size[0] * size[1] < w * h
    return cv2.resize(frame, tuple(size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


@dataclass
class FitPolicy:
    """How frames of one source size are fitted to the model (see the module docstring)."""

    mode: str  # "snap" or "pad"
    short_side: int  # working short side asked for (0: the source's own size)
    source_size: tuple[int, int]  # (width, height) of the source frames
    content_size: tuple[int, int]  # (width, height) of the picture at the working resolution
    model_size: tuple[int, int]  # (width, height) fed to the model: content plus padding
    channels: int  # model channels: 3 (RGB) or 1 (luma)

    def __post_init__(self):
        self.source_size = tuple(int(v) for v in self.source_size)
        self.content_size = tuple(int(v) for v in self.content_size)
        self.model_size = tuple(int(v) for v in self.model_size)

    @property
    def padding(self) -> tuple[int, int]:
        """(right, bottom) pixels of padding."""
        return (self.model_size[0] - self.content_size[0], self.model_size[1] - self.content_size[1])

    def fit(self, frame: np.ndarray) -> np.ndarray:
        """RGB uint8 (H, W, 3) at the source size -> float32 (C, H', W') in [0, 1] for the model."""
        if (frame.shape[1], frame.shape[0]) != self.source_size:
            raise DataError(f"frame of {frame.shape[1]}x{frame.shape[0]} in a source of "
                            f"{self.source_size[0]}x{self.source_size[1]}: the frame size changed mid-stream")
        content = self.content(frame)
        right, bottom = self.padding
        if right or bottom:
            content = cv2.copyMakeBorder(content, 0, bottom, 0, right, cv2.BORDER_REPLICATE)
        if content.ndim == 2:
            content = content[:, :, None]
        return np.ascontiguousarray(content.transpose(2, 0, 1), dtype=np.float32) * np.float32(1 / 255)

    def content(self, frame: np.ndarray) -> np.ndarray:
        """The working frame, uint8 (h, w, C) (C = 3) or (h, w) (C = 1): scaled, converted, not padded."""
        resized = _resize(frame, self.content_size)
        return cv2.cvtColor(resized, cv2.COLOR_RGB2GRAY) if self.channels == 1 else resized

    def crop(self, recon: np.ndarray) -> np.ndarray:
        """Model output (C, H', W') float -> the working-resolution reconstruction (h, w, C) float32."""
        w, h = self.content_size
        return np.ascontiguousarray(recon[:, :h, :w].transpose(1, 2, 0))

    def unfit(self, recon: np.ndarray) -> np.ndarray:
        """Model output (C, H', W') float in [0, 1] -> RGB uint8 (H, W, 3) at the source size."""
        frame = self.crop(recon)
        frame = (np.clip(frame, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        if frame.shape[2] == 1:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
        return _resize(frame, self.source_size)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> FitPolicy:
        try:
            policy = cls(**data)
        except TypeError as exc:
            raise DataError(f"the fit record is malformed: {exc}") from exc
        if policy.mode not in FIT_MODES:
            raise DataError(f"unknown fit mode {policy.mode!r} (known: {', '.join(FIT_MODES)})")
        return policy


def plan_fit(source_size: tuple[int, int], short_side: int, multiple: int, channels: int,
             mode: str = "snap") -> FitPolicy:
    """The fit of frames of `source_size` (width, height) to a model with spatial `multiple`."""
    if mode not in FIT_MODES:
        raise ConfigError(f"unknown fit mode {mode!r} (known: {', '.join(FIT_MODES)})")
    if short_side < 0:
        raise ConfigError(f"--size must be 0 (the source's size) or a positive short side, got {short_side}")
    if channels not in (1, 3):
        raise ConfigError(f"models with {channels} channels cannot take video frames (1 or 3 channels)")
    w, h = source_size
    if w < 1 or h < 1:
        raise DataError(f"frames of {w}x{h} pixels hold no picture")
    if max(w, h) > MAX_MODEL_SIDE:
        raise DataError(f"frames of {w}x{h} pixels are over the limit of {MAX_MODEL_SIDE} pixels per side")
    scale = short_side / min(w, h) if short_side else 1.0
    cw, ch, mw, mh = FIT_MODES[mode](w * scale, h * scale, multiple)
    if max(mw, mh) > MAX_MODEL_SIDE:
        asked = f"short side {short_side}" if short_side else "the source's own size"
        raise ConfigError(f"{asked} makes {w}x{h} frames {mw}x{mh} for the model, over the limit of "
                          f"{MAX_MODEL_SIDE} pixels per side: give a smaller --size")
    return FitPolicy(mode, short_side, (w, h), (cw, ch), (mw, mh), channels)


def fitted_clip(path: Path, encoder: GraphSpec, max_frames: int, short_side: int = DEFAULT_SHORT_SIDE,
                ) -> np.ndarray:
    """The first frames of a video as one encoder input: float32 (1, T, C, H, W), fitted like `run` fits
    them ("snap") and cut to a whole clip for the encoder (GraphSpec.whole_length). For the checks that
    need real frames rather than noise: int8 calibration (export/quantize.py) and the parity check's real
    case."""
    from vae_deploy.video.sources import open_source

    with open_source(path) as source:
        frames = source.read(max_frames)  # RGB uint8 (T, H, W, 3)
    frames = frames[:encoder.whole_length(len(frames))]
    if not len(frames):
        raise DataError(f"{path} has fewer than the {encoder.whole_length(max_frames)} frames the model "
                        f"takes at a time")
    channels = int(encoder.inputs[0].shape[2])
    policy = plan_fit((frames.shape[2], frames.shape[1]), short_side, encoder.dim_multiples.get("height", 1),
                      channels)
    return np.stack([policy.fit(f) for f in frames])[None]
